"""For the report tests: sample reports (one of every shape a sweep produces) and a reader of the HTML page."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

from controller.compliance.findings import Finding
from controller.compliance.report import ComplianceReport, KeyReport, VersionReport
from controller.model import Severity

SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
ACCOUNTS = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-data/providers/Microsoft.Storage/storageAccounts"
ACCOUNT_SALES = f"{ACCOUNTS}/sales"
ACCOUNT_HR = f"{ACCOUNTS}/hr"
VAULT = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-keys/providers/Microsoft.KeyVault/vaults/contoso"
KEY = "https://contoso.vault.azure.net/keys/sales"
GENERATED_AT = datetime(2026, 12, 3, 13, 0, 0, 123456, tzinfo=UTC)
LATEST_VERSION = "0123456789abcdef0123456789abcdef"
OLD_VERSION = "fedcba9876543210fedcba9876543210"
OLDEST_VERSION = "00000000000000000000000000000001"


def sample_findings() -> list[Finding]:
    """Findings of every severity, given in no particular order (the report sorts them)."""
    return [
        Finding("CMK-011", Severity.LOW, ACCOUNT_HR, "The account pins a key version",
                {"keyVersion": OLD_VERSION}, "az storage account update --encryption-key-version ''"),
        Finding("CMK-006", Severity.CRITICAL, ACCOUNT_SALES, "The encryption identity lacks unwrapKey on the key",
                {"identity": "sales-cmk-identity", "missing": ["unwrapKey"], "vaultModel": "rbac"},
                "az role assignment create --role e147488a-f6f5-4113-8e2d-b22465e65bf6 --scope " + VAULT),
        Finding("CMK-008", Severity.MEDIUM, ACCOUNT_SALES, "The vault is in another region than the account",
                {"vaultRegion": "northeurope", "accountRegion": "westeurope"},
                "Move the key to a vault in westeurope"),
        Finding("CMK-014", Severity.INFO, ACCOUNT_HR, "Queue and table services are not covered by the CMK",
                {"queue": "Service", "table": "Service"}, "Recreate the account with keyType Account"),
        Finding("CMK-012", Severity.HIGH, ACCOUNT_HR, "The account has not adopted the latest key version",
                {"current": OLD_VERSION, "latest": LATEST_VERSION, "ageHours": 72},
                "az storage account update --encryption-key-version " + LATEST_VERSION),
        Finding("CMK-006", Severity.CRITICAL, ACCOUNT_HR, "The encryption identity lacks get on the key",
                {"identity": "hr-cmk-identity", "missing": ["get"]},
                "az keyvault set-policy --key-permissions get wrapKey unwrapKey"),
        Finding("CMK-000", Severity.HIGH, VAULT, "Could not read the vault's diagnostic settings",
                {"status": 403, "rule": "CMK-016"}, "Grant the controller Reader on the vault"),
    ]


def sample_keys() -> tuple[KeyReport, ...]:
    return (
        KeyReport(
            key=KEY,
            versions=(
                VersionReport(LATEST_VERSION, enabled=True, created=GENERATED_AT - timedelta(days=3), expires=None,
                              latest=True, used_by=(ACCOUNT_SALES,), blobs=120, safe_to_disable=False,
                              why="the latest version: accounts follow it"),
                VersionReport(OLD_VERSION, enabled=True, created=GENERATED_AT - timedelta(days=95),
                              expires=GENERATED_AT + timedelta(days=20), latest=False,
                              used_by=(ACCOUNT_HR, "sales/invoices"), blobs=7, safe_to_disable=False,
                              why="the hr account and 7 blobs in sales/invoices still use it"),
                VersionReport(OLDEST_VERSION, enabled=False, created=GENERATED_AT - timedelta(days=400),
                              expires=None, latest=False, used_by=(), blobs=0, safe_to_disable=True,
                              why="no account, scope or blob uses it"),
            ),
        ),
        KeyReport(key="https://contoso.vault.azure.net/keys/empty", versions=()),
    )


def sample_report() -> ComplianceReport:
    return ComplianceReport(
        generated_at=GENERATED_AT,
        findings=tuple(sample_findings()),
        resources_evaluated=5,
        not_evaluable=1,
        keys=sample_keys(),
        subscriptions=(SUBSCRIPTION,),
    )


@dataclass
class Element:
    tag: str
    attrs: dict[str, str | None]
    text: list[str] = field(default_factory=list)


class PageParser(HTMLParser):
    """Every element with its attributes and direct text, as the browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, dict(attrs))
        self.elements.append(element)
        if tag not in {"meta", "br", "input", "img", "link"}:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1].text.append(data)


def parse_page(page: str) -> list[Element]:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser.elements


def text_of(element: Element) -> str:
    return "".join(element.text)
