"""Failed KeyWrap / KeyUnwrap / KeyGet in the vaults' audit logs: classified, grouped, reported (CMK-017).

Key Vault writes one AuditEvent per request; a storage account that can no longer wrap or unwrap
its key shows up there first (the account's own operations only fail later, and less clearly). This
module is the pure half of the audit analysis:

* the failure model: ``FailureClass`` (with a severity and a remediation naming the az command or
  property to fix), ``classify`` from what Key Vault writes (status code, result signature, result
  description, operation);
* the KQL both table forms of a workspace are read with (resource-specific ``AZKVAuditLogs`` and the
  legacy ``AzureDiagnostics``), aggregating IN KQL so the rows returned stay O(groups), and the query
  that detects which table holds each vault's logs;
* the aggregation of archived AuditEvent records (the storage-account archive, read by the adapter)
  into the same groups, in O(groups) memory;
* ``AuditReport`` and its renderings for ``cmkctl audit`` (an 80-column table, one JSON document).

The classification reads the result description first because a 403 means three different things
(firewall, access policy / RBAC, disabled or expired key) and only the description tells them apart;
the status code decides when the description says nothing known.
"""

from __future__ import annotations

import enum
import json
import re
import textwrap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from controller.errors import InvalidInput
from controller.model import Severity

#: The operations whose failure means a consumer cannot use its key (wrap, unwrap, or read it to start).
WATCHED_OPERATIONS: tuple[str, ...] = ("KeyWrap", "KeyUnwrap", "KeyGet")
#: The operations that take a key away from its consumers or give it back (Key Vault publishes no event for them).
KEY_DELETE, KEY_PURGE, KEY_RECOVER = "KeyDelete", "KeyPurge", "KeyRecover"
DELETION_OPERATIONS: tuple[str, ...] = (KEY_DELETE, KEY_PURGE, KEY_RECOVER)
#: The audit window: default and bounds (hours), shared by CMK_AUDIT_WINDOW_HOURS and ``--since``.
DEFAULT_WINDOW = timedelta(hours=24)
MIN_WINDOW = timedelta(hours=1)
MAX_WINDOW = timedelta(hours=720)

AZKV_AUDIT_LOGS = "AZKVAuditLogs"
AZURE_DIAGNOSTICS = "AzureDiagnostics"
ARCHIVE = "archive"
_OBJECT_ID_CLAIM = "http://schemas.microsoft.com/identity/claims/objectidentifier"


class FailureClass(enum.StrEnum):
    PERMISSION = "permission"
    FIREWALL = "firewall"
    KEY_DISABLED = "key_disabled"
    KEY_EXPIRED = "key_expired"
    KEY_DELETED = "key_deleted"
    THROTTLED = "throttled"
    OTHER = "other"

    @property
    def severity(self) -> Severity:
        """How urgent: a consumer that cannot unwrap its key loses access to its data."""
        if self is FailureClass.KEY_DELETED:
            return Severity.CRITICAL
        if self in (FailureClass.THROTTLED, FailureClass.OTHER):
            return Severity.MEDIUM
        return Severity.HIGH

    @property
    def remediation(self) -> str:
        return _REMEDIATION[self]


_REMEDIATION: Mapping[FailureClass, str] = {
    FailureClass.PERMISSION: (
        "Grant the caller get, wrapKey and unwrapKey on the key. Access-policy vault: az keyvault set-policy "
        "--name <vault> --object-id <caller> --key-permissions get wrapKey unwrapKey. RBAC vault "
        "(properties.enableRbacAuthorization true): az role assignment create --role \"Key Vault Crypto Service "
        "Encryption User\" --assignee-object-id <caller> --assignee-principal-type ServicePrincipal --scope "
        "<vault resource id>."
    ),
    FailureClass.FIREWALL: (
        "The vault firewall (properties.networkAcls) refused the caller. For Azure Storage let trusted services "
        "through: az keyvault update --name <vault> --bypass AzureServices; for another client add its address: "
        "az keyvault network-rule add --name <vault> --ip-address <caller ip>."
    ),
    FailureClass.KEY_DISABLED: (
        "The key version is disabled (attributes.enabled false). Re-enable it: az keyvault key set-attributes "
        "--vault-name <vault> --name <key> --version <version> --enabled true, or move the consumer to an "
        "enabled version first."
    ),
    FailureClass.KEY_EXPIRED: (
        "The key version is expired (attributes.exp) or not yet active (attributes.nbf). Rotate it "
        "(az keyvault key rotate --vault-name <vault> --name <key>) and move the consumer to the new version, "
        "or fix the dates: az keyvault key set-attributes --vault-name <vault> --name <key> --version <version> "
        "--expires <date>."
    ),
    FailureClass.KEY_DELETED: (
        "The key (or this version) is not in the vault. Recover a soft-deleted key before its purge date: "
        "az keyvault key recover --vault-name <vault> --name <key>; otherwise point the consumer at an existing "
        "key: az storage account update --encryption-key-name <key> --encryption-key-vault <vault uri>."
    ),
    FailureClass.THROTTLED: (
        "The vault throttled the caller (429, service limits per vault per 10 s). Back off and retry (1, 2, 4, "
        "8, 16 s), spread the load over more vaults, or reduce the request rate of the caller."
    ),
    FailureClass.OTHER: (
        "Read the sample description; see the Key Vault troubleshooting guide for the status code."
    ),
}


@dataclass(frozen=True, slots=True)
class Classification:
    failure_class: FailureClass
    #: One short phrase: why the request failed ("access policy lacks the permission", ...).
    cause: str


@dataclass(frozen=True, slots=True)
class _Marker:
    phrase: str  # lower case; matched as a case-insensitive substring (KQL ``contains``)
    failure_class: FailureClass
    cause: str


# What Key Vault writes in resultDescription (the error message of the response). Order matters:
# the first phrase found decides.
_MARKERS: tuple[_Marker, ...] = (
    _Marker("client address is not authorized and caller is not a trusted service", FailureClass.FIREWALL,
            "the vault firewall refused the caller's address"),
    _Marker("public network access is disabled", FailureClass.FIREWALL,
            "public network access to the vault is disabled"),
    _Marker("is not allowed on a disabled key", FailureClass.KEY_DISABLED, "the key version is disabled"),
    _Marker("is not allowed on an expired key", FailureClass.KEY_EXPIRED, "the key version is expired"),
    _Marker("not yet valid", FailureClass.KEY_EXPIRED, "the key version is not yet active"),
    _Marker("caller is not authorized to perform action on resource", FailureClass.PERMISSION,
            "no RBAC role assignment grants the action"),
    _Marker("does not have keys", FailureClass.PERMISSION, "the vault's access policy lacks the permission"),
    _Marker("was not found in this key vault", FailureClass.KEY_DELETED, "the key or version is not in the vault"),
    _Marker("too many requests", FailureClass.THROTTLED, "the vault throttled the caller"),
    _Marker("is not permitted on this key", FailureClass.OTHER, "the key's permitted operations exclude it"),
)

_SIGNATURE_STATUS: Mapping[str, int] = {
    "unauthorized": 401, "forbidden": 403, "notfound": 404, "toomanyrequests": 429, "throttled": 429,
}


def classify(status_code: int | None, result_signature: str, result_description: str,
             operation: str = "") -> Classification:
    """The failure class of one failed request, from the fields Key Vault writes in its audit log."""
    description = (result_description or "").lower()
    for marker in _MARKERS:
        if marker.phrase in description:
            return Classification(marker.failure_class, marker.cause)
    status = status_code or _SIGNATURE_STATUS.get(re.sub(r"\s", "", result_signature or "").lower(), 0)
    if status == 429:
        return Classification(FailureClass.THROTTLED, "the vault throttled the caller")
    if status == 404:
        return Classification(FailureClass.KEY_DELETED, "the key or version is not in the vault")
    if status == 403:
        return Classification(FailureClass.PERMISSION, "access denied")
    if status == 401:
        return Classification(FailureClass.OTHER, "the caller's token was refused")
    what = f"{operation} " if operation else ""
    return Classification(FailureClass.OTHER, f"{what}failed with status {status or result_signature or 'unknown'}")


def _marker_index(description: str) -> str:
    """The partition key the KQL computes (``Marker``), for records aggregated here (the archive)."""
    lowered = (description or "").lower()
    return next((f"m{i}" for i, marker in enumerate(_MARKERS) if marker.phrase in lowered), "")


# --------------------------------------------------------------------------------------------------
# The failure groups
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AuditFailureGroup:
    """Failed requests of one caller on one key version, alike in status and cause, over the window.

    vault: the vault origin (``https://contoso.vault.azure.net``), as in CMK_VAULTS.
    vault_resource_id: the vault's ARM id as logged (lower case), "" when the record had none.
    key / version: the key name and version the request named ("" when it named none).
    caller: the caller's object id (managed identity principal id), "" when not logged.
    caller_app_id: the caller's application (client) id, "" when not logged.
    operations: the failed operations (KeyWrap, KeyUnwrap, KeyGet), sorted.
    status_code / result_signature: what Key Vault answered (403 / "Forbidden" ...).
    failure_class / cause: the classification (``classify``) and its one-line reason.
    count / first_seen / last_seen: how many in the window, the earliest and latest (UTC).
    storage_accounts: the storage accounts whose identity the caller is (a user-assigned identity
    may serve several); empty when the inventory does not know the principal.
    sample_description: one of the group's result descriptions, verbatim.
    source: where the records were read: AZKVAuditLogs, AzureDiagnostics or archive.
    """

    vault: str
    vault_resource_id: str
    key: str
    version: str
    caller: str
    caller_app_id: str
    operations: tuple[str, ...]
    status_code: int
    result_signature: str
    failure_class: FailureClass
    cause: str
    count: int
    first_seen: datetime
    last_seen: datetime
    sample_description: str
    source: str
    storage_accounts: tuple[str, ...] = ()

    @property
    def storage_account(self) -> str | None:
        """The one storage account the caller belongs to; None when unknown or shared by several."""
        return self.storage_accounts[0] if len(self.storage_accounts) == 1 else None

    @property
    def severity(self) -> Severity:
        return self.failure_class.severity

    @property
    def remediation(self) -> str:
        """The class's remediation with this group's vault, key, version and caller filled in."""
        vault_name = self.vault_resource_id.rstrip("/").rsplit("/", 1)[-1] if self.vault_resource_id else ""
        values = {
            "<vault>": vault_name or _short_vault(self.vault), "<vault uri>": self.vault,
            "<vault resource id>": self.vault_resource_id or "<vault resource id>",
            "<key>": self.key or "<key>", "<version>": self.version or "<version>",
            "<caller>": self.caller or "<caller>",
        }
        return re.sub("|".join(re.escape(p) for p in values), lambda m: values[m.group(0)],
                      self.failure_class.remediation)

    @property
    def key_id(self) -> str:
        """The key URI the requests named (versioned when they named a version)."""
        if not self.key:
            return self.vault
        return f"{self.vault}/keys/{self.key}" + (f"/{self.version}" if self.version else "")

    def as_json(self) -> dict[str, object]:
        return {
            "vault": self.vault, "vaultResourceId": self.vault_resource_id, "key": self.key,
            "version": self.version, "keyId": self.key_id, "caller": self.caller,
            "callerAppId": self.caller_app_id, "storageAccounts": list(self.storage_accounts),
            "operations": list(self.operations), "statusCode": self.status_code,
            "resultSignature": self.result_signature, "class": self.failure_class.value,
            "severity": self.severity.value, "cause": self.cause, "count": self.count,
            "firstSeen": _iso(self.first_seen), "lastSeen": _iso(self.last_seen),
            "sampleDescription": self.sample_description, "source": self.source,
            "remediation": self.remediation,
        }


def _group_order(group: AuditFailureGroup) -> tuple[int, int, str]:
    return (group.severity.rank, -group.count, group.key_id)


@dataclass(frozen=True, slots=True)
class KeyOperation:
    """The latest successful KeyDelete, KeyPurge or KeyRecover of one key in the window.

    Only the latest matters: it says where the key stands (deleted, purged, back). ``key`` is the key's
    name in lower case (Key Vault names are case-insensitive); ``caller`` / ``caller_app_id`` who did it.
    """

    vault: str
    vault_resource_id: str
    key: str
    operation: str
    at: datetime
    caller: str
    caller_app_id: str
    source: str

    @property
    def key_id(self) -> str:
        return f"{self.vault}/keys/{self.key}"

    def as_json(self) -> dict[str, object]:
        return {"vault": self.vault, "vaultResourceId": self.vault_resource_id, "key": self.key,
                "keyId": self.key_id, "operation": self.operation, "at": _iso(self.at), "caller": self.caller,
                "callerAppId": self.caller_app_id, "source": self.source}


@dataclass(frozen=True, slots=True)
class VaultSource:
    """Where one vault's audit records were found in the window, and how many."""

    vault: str
    source: str
    records: int


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The failures of the window over the managed vaults.

    ``partial``: the answer is incomplete (Log Analytics returned a partial result, or an archive
    blob could not be read); ``partial_detail`` says why. The groups are those that were read.
    ``sources``: per vault, the table (or the archive) its records were read from.
    ``vaults_without_logs``: managed vaults with no audit record at all in the window (no diagnostic
    setting, or one that sends elsewhere): their failures cannot be seen.
    ``key_operations``: per key, the latest successful KeyDelete / KeyPurge / KeyRecover in the window.
    """

    start: datetime
    end: datetime
    groups: tuple[AuditFailureGroup, ...]
    partial: bool = False
    partial_detail: str | None = None
    sources: tuple[VaultSource, ...] = ()
    vaults_without_logs: tuple[str, ...] = ()
    key_operations: tuple[KeyOperation, ...] = ()

    @property
    def window(self) -> timedelta:
        return self.end - self.start

    @property
    def failures(self) -> int:
        return sum(group.count for group in self.groups)

    @property
    def missing_keys(self) -> tuple[KeyOperation, ...]:
        """The keys whose latest operation in the window deleted or purged them."""
        return tuple(op for op in self.key_operations if op.operation in (KEY_DELETE, KEY_PURGE))

    def as_json(self) -> dict[str, object]:
        by_class: dict[str, int] = {}
        for group in self.groups:
            by_class[group.failure_class.value] = by_class.get(group.failure_class.value, 0) + group.count
        return {
            "window": {"start": _iso(self.start), "end": _iso(self.end),
                       "hours": round(self.window.total_seconds() / 3600, 3)},
            "partial": self.partial, "partialDetail": self.partial_detail,
            "failures": self.failures, "byClass": by_class,
            "sources": [{"vault": s.vault, "source": s.source, "records": s.records} for s in self.sources],
            "vaultsWithoutLogs": list(self.vaults_without_logs),
            "groups": [group.as_json() for group in self.groups],
            "keyOperations": [operation.as_json() for operation in self.key_operations],
        }


def report_of(start: datetime, end: datetime, groups: Iterable[AuditFailureGroup], *,
              sources: Iterable[VaultSource] = (), managed_vaults: Iterable[str] = (),
              partial_detail: str | None = None, key_operations: Iterable[KeyOperation] = ()) -> AuditReport:
    """An AuditReport: groups ordered most severe first, vaults with no record listed, key operations by time."""
    source_list = tuple(sorted(sources, key=lambda s: (s.vault, s.source)))
    seen = {s.vault for s in source_list if s.records > 0}
    return AuditReport(
        start=start, end=end, groups=tuple(sorted(groups, key=_group_order)),
        partial=partial_detail is not None, partial_detail=partial_detail, sources=source_list,
        vaults_without_logs=tuple(sorted(v for v in dict.fromkeys(managed_vaults) if v not in seen)),
        key_operations=tuple(sorted(key_operations, key=lambda op: (op.at, op.key_id))),
    )


def merge_reports(primary: AuditReport, fallback: AuditReport) -> AuditReport:
    """The workspace's report, completed with the archive's for the vaults the workspace has no logs of."""
    missing = set(primary.vaults_without_logs)
    extra_groups = [g for g in fallback.groups if g.vault in missing]
    extra_sources = [s for s in fallback.sources if s.vault in missing]
    extra_operations = [op for op in fallback.key_operations if op.vault in missing]
    details = [d for d in (primary.partial_detail, fallback.partial_detail if extra_sources else None) if d]
    return report_of(
        primary.start, primary.end, [*primary.groups, *extra_groups],
        sources=[*primary.sources, *extra_sources],
        managed_vaults=[*primary.vaults_without_logs, *(s.vault for s in primary.sources)],
        partial_detail="; ".join(details) if details else None,
        key_operations=[*primary.key_operations, *extra_operations],
    )


def choose_sources(found: Iterable[VaultSource]) -> dict[str, VaultSource]:
    """Per vault, the table its logs are read from: AZKVAuditLogs when it has records, else AzureDiagnostics.

    A vault with two diagnostic settings sends each record to both tables; reading one avoids counting
    every failure twice.
    """
    chosen: dict[str, VaultSource] = {}
    for candidate in found:
        if candidate.records <= 0:
            continue
        current = chosen.get(candidate.vault)
        if current is None or (candidate.source == AZKV_AUDIT_LOGS and current.source != AZKV_AUDIT_LOGS):
            chosen[candidate.vault] = candidate
    return chosen


def attribute_storage_accounts(groups: Iterable[AuditFailureGroup],
                               principals: Mapping[str, Sequence[str]]) -> list[AuditFailureGroup]:
    """Name the storage accounts behind each caller: ``principals`` maps a principal (object) id to the
    accounts using it (an account's system-assigned identity, or a user-assigned identity it uses)."""
    lowered = {principal.lower(): tuple(sorted(set(accounts))) for principal, accounts in principals.items()}
    return [replace(group, storage_accounts=lowered.get(group.caller.lower(), ())) if group.caller else group
            for group in groups]


def principal_accounts(accounts: Iterable[tuple[str, Mapping[str, object] | None]]) -> dict[str, tuple[str, ...]]:
    """Principal id -> storage accounts, from (account name, its ``identity``) pairs.

    ``identity`` as ARM writes it (``principalId``, ``userAssignedIdentities.{id}.principalId``) or as
    the management SDK's ``as_dict()`` does (``principal_id``, ``user_assigned_identities``).
    """
    found: dict[str, set[str]] = {}
    for name, identity in accounts:
        if not name or not isinstance(identity, Mapping):
            continue
        principals = [identity.get("principalId") or identity.get("principal_id")]
        assigned = identity.get("userAssignedIdentities") or identity.get("user_assigned_identities")
        if isinstance(assigned, Mapping):
            principals += [(item.get("principalId") or item.get("principal_id")) if isinstance(item, Mapping)
                           else None for item in assigned.values()]
        for principal in principals:
            if isinstance(principal, str) and principal:
                found.setdefault(principal.lower(), set()).add(name)
    return {principal: tuple(sorted(names)) for principal, names in found.items()}


# --------------------------------------------------------------------------------------------------
# KQL (Log Analytics): both table forms, aggregated in KQL
# --------------------------------------------------------------------------------------------------

def _kql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _kql_list(values: Iterable[str]) -> str:
    return ", ".join(_kql_string(value) for value in values)


def _normalised_union(vaults: Sequence[str], *, operations: Sequence[str] = (), failed: bool | None = None) -> str:
    """Both table forms projected to one shape, restricted to the managed vaults (by the key URI's origin),
    and to ``operations`` (all when empty) that failed (True: status >= 400), succeeded (False) or either (None).

    AzureDiagnostics spreads the identity claim over typed columns (…_g for guids) and stores the status
    as a real; AZKVAuditLogs keeps the claim as a dynamic Identity column and the status as an int.
    """
    if not vaults:
        raise InvalidInput("no vaults to query the audit logs of")

    def where(status_column: str) -> str:
        conditions = [f"OperationName in ({_kql_list(operations)})"] if operations else []
        if failed is not None:
            conditions.append(f"{status_column} {'>=' if failed else '<'} 400")
        return f"| where {' and '.join(conditions)}\n   " if conditions else ""

    dedicated_filter, legacy_filter = where("HttpStatusCode"), where("httpStatusCode_d")
    return f"""union isfuzzy=true
  ({AZKV_AUDIT_LOGS}
   {dedicated_filter}| project Source = '{AZKV_AUDIT_LOGS}', TimeGenerated, VaultResourceId = tolower(_ResourceId),
       OperationName, StatusCode = toint(HttpStatusCode), ResultSignature, ResultDescription, ObjectId = Id,
       Caller = coalesce(tostring(Identity.claim.oid), tostring(Identity.claim['{_OBJECT_ID_CLAIM}'])),
       CallerApp = tostring(Identity.claim.appid)),
  ({AZURE_DIAGNOSTICS}
   | where ResourceProvider == 'MICROSOFT.KEYVAULT' and Category == 'AuditEvent'
   {legacy_filter}| project Source = '{AZURE_DIAGNOSTICS}', TimeGenerated, VaultResourceId = tolower(ResourceId),
       OperationName, StatusCode = toint(httpStatusCode_d), ResultSignature, ResultDescription, ObjectId = id_s,
       Caller = coalesce(tostring(identity_claim_oid_g),
                         tostring(identity_claim_http_schemas_microsoft_com_identity_claims_objectidentifier_g)),
       CallerApp = tostring(identity_claim_appid_g))
| extend Vault = tolower(extract('^(https://[^/]+)', 1, ObjectId))
| where Vault in ({_kql_list(vaults)})"""


def detection_query(vaults: Sequence[str]) -> str:
    """Per table form and managed vault: how many audit records it holds in the window."""
    return _normalised_union(vaults) + "\n| summarize Records = count() by Source, Vault"


def failure_query(vaults: Sequence[str]) -> str:
    """The failed watched operations of the managed vaults, aggregated in KQL: one row per group.

    ``Marker`` partitions by the description phrases ``classify`` reads (the descriptions themselves
    name the caller and its address, so grouping by them would not bound the rows); one description
    per group is kept as the sample.
    """
    marker = "case(" + ", ".join(
        f"ResultDescription contains {_kql_string(m.phrase)}, 'm{i}'" for i, m in enumerate(_MARKERS)) + ", '')"
    return (
        _normalised_union(vaults, operations=WATCHED_OPERATIONS, failed=True)
        + "\n| extend KeyName = extract('/keys/([^/?]+)', 1, ObjectId),"
        + " KeyVersion = extract('/keys/[^/?]+/([^/?]+)', 1, ObjectId),"
        + f"\n         Marker = {marker}"
        + "\n| summarize Count = count(), FirstSeen = min(TimeGenerated), LastSeen = max(TimeGenerated),"
        + "\n            Operations = make_set(OperationName), SampleDescription = take_any(ResultDescription),"
        + "\n            CallerApp = take_any(CallerApp)"
        + "\n    by Source, Vault, VaultResourceId, KeyName, KeyVersion, Caller, StatusCode, ResultSignature, Marker"
    )


#: The key a KeyDelete (``/keys/<name>``), KeyRecover (``/keys/<name>/<version>``) or KeyPurge
#: (``/deletedkeys/<name>``) names in its ``id``.
_DELETION_KEY_KQL = "'/(?:deleted)?keys/([^/?]+)'"
_DELETION_KEY = re.compile(r"^/(?:deleted)?keys/(?P<name>[^/?]+)", re.IGNORECASE)


def deletion_query(vaults: Sequence[str]) -> str:
    """Per key of the managed vaults: its latest successful KeyDelete, KeyPurge or KeyRecover, aggregated
    in KQL (one row per key that was deleted, purged or recovered in the window)."""
    return (
        _normalised_union(vaults, operations=DELETION_OPERATIONS, failed=False)
        + f"\n| extend KeyName = tolower(extract({_DELETION_KEY_KQL}, 1, ObjectId))"
        + "\n| where isnotempty(KeyName)"
        + "\n| summarize arg_max(TimeGenerated, OperationName, Caller, CallerApp)"
        + " by Source, Vault, VaultResourceId, KeyName"
    )


def key_operations_from_rows(rows: Iterable[Mapping[str, object]]) -> list[KeyOperation]:
    """Key operations from the rows of ``deletion_query``; a row without a time or a known operation is skipped."""
    found: list[KeyOperation] = []
    for row in rows:
        when, operation = _time(row.get("TimeGenerated")), _text(row.get("OperationName"))
        if when is None or operation not in DELETION_OPERATIONS:
            continue
        found.append(KeyOperation(
            vault=_text(row.get("Vault")), vault_resource_id=_text(row.get("VaultResourceId")),
            key=_text(row.get("KeyName")).lower(), operation=operation, at=when,
            caller=_text(row.get("Caller")).lower(), caller_app_id=_text(row.get("CallerApp")).lower(),
            source=_text(row.get("Source")),
        ))
    return found


def sources_from_rows(rows: Iterable[Mapping[str, object]]) -> list[VaultSource]:
    return [VaultSource(str(row.get("Vault") or ""), str(row.get("Source") or ""), _int(row.get("Records")))
            for row in rows]


def groups_from_rows(rows: Iterable[Mapping[str, object]]) -> list[AuditFailureGroup]:
    """Groups from the rows of ``failure_query`` (column name -> value)."""
    groups: list[AuditFailureGroup] = []
    for row in rows:
        status = _int(row.get("StatusCode"))
        signature = _text(row.get("ResultSignature"))
        description = _text(row.get("SampleDescription"))
        operations = tuple(sorted(str(op) for op in _list(row.get("Operations"))))
        verdict = classify(status, signature, description, operations[0] if operations else "")
        first, last = _time(row.get("FirstSeen")), _time(row.get("LastSeen"))
        if first is None or last is None:
            continue  # a group always has times; a row without is not one of ours
        groups.append(AuditFailureGroup(
            vault=_text(row.get("Vault")), vault_resource_id=_text(row.get("VaultResourceId")),
            key=_text(row.get("KeyName")), version=_text(row.get("KeyVersion")).lower(),
            caller=_text(row.get("Caller")).lower(), caller_app_id=_text(row.get("CallerApp")).lower(),
            operations=operations, status_code=status, result_signature=signature,
            failure_class=verdict.failure_class, cause=verdict.cause, count=_int(row.get("Count")),
            first_seen=first, last_seen=last, sample_description=description, source=_text(row.get("Source")),
        ))
    return groups


# --------------------------------------------------------------------------------------------------
# Archived AuditEvent records (storage account): aggregated here, streaming
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AuditEventView:
    """The fields of one AuditEvent record the analysis reads."""

    time: datetime
    vault: str
    vault_resource_id: str
    operation: str
    status_code: int
    result_signature: str
    result_description: str
    object_id: str
    caller: str
    caller_app_id: str


_KEY_PATH = re.compile(r"^/keys/(?P<name>[^/?]+)(?:/(?P<version>[^/?]+))?")
_ORIGIN = re.compile(r"^(https://[^/]+)", re.IGNORECASE)


def event_view(record: Mapping[str, object]) -> AuditEventView | None:
    """The view of an archived AuditEvent record; None when it lacks a time or an object id."""
    when = _time(record.get("time"))
    properties = _dict(record.get("properties"))
    object_id = _text(properties.get("id"))
    origin = _ORIGIN.match(object_id)
    if when is None or origin is None:
        return None
    claim = _dict(_dict(record.get("identity")).get("claim"))
    return AuditEventView(
        time=when, vault=origin.group(1).lower(), vault_resource_id=_text(record.get("resourceId")).lower(),
        operation=_text(record.get("operationName")), status_code=_int(properties.get("httpStatusCode")),
        result_signature=_text(record.get("resultSignature")),
        result_description=_text(record.get("resultDescription")), object_id=object_id,
        caller=_text(claim.get("oid") or claim.get(_OBJECT_ID_CLAIM)).lower(),
        caller_app_id=_text(claim.get("appid")).lower(),
    )


@dataclass(slots=True)
class _Accumulator:
    count: int
    first_seen: datetime
    last_seen: datetime
    operations: set[str]
    caller_app_id: str
    sample_description: str


class FailureAggregator:
    """Groups failed watched operations one record at a time: memory grows with the groups, not the records.

    The grouping is the KQL's (``failure_query``): vault, vault id, key, version, caller, status,
    signature and the description's marker; records outside [start, end] or the vaults are skipped.
    """

    def __init__(self, vaults: Iterable[str], start: datetime, end: datetime, *, source: str = ARCHIVE) -> None:
        self._vaults = {vault.lower() for vault in vaults}
        self._start, self._end = start, end
        self._source = source
        self._groups: dict[tuple[str, ...], _Accumulator] = {}
        self._latest: dict[tuple[str, str, str], KeyOperation] = {}  # (vault, vault id, key) -> latest deletion op
        self.records: dict[str, int] = {}  # vault -> records seen in the window (any operation)
        self.unreadable = 0  # records that were not JSON objects with a time and an object id

    def add_record(self, record: object) -> None:
        """Add one archived record (parsed JSON); anything that is not an AuditEvent is counted as unreadable."""
        view = event_view(record) if isinstance(record, Mapping) else None
        if view is None:
            self.unreadable += 1
        else:
            self.add(view)

    def add(self, event: AuditEventView) -> None:
        if event.vault not in self._vaults or not self._start <= event.time <= self._end:
            return
        self.records[event.vault] = self.records.get(event.vault, 0) + 1
        path = event.object_id[len(event.vault):] if event.object_id.lower().startswith(event.vault) else ""
        if event.operation in DELETION_OPERATIONS and event.status_code < 400:
            self._add_key_operation(event, path)
            return
        if event.operation not in WATCHED_OPERATIONS or event.status_code < 400:
            return
        key_match = _KEY_PATH.match(path)
        name = key_match.group("name") if key_match else ""
        version = (key_match.group("version") or "") if key_match else ""
        group_key = (event.vault, event.vault_resource_id, name, version.lower(), event.caller,
                     str(event.status_code), event.result_signature, _marker_index(event.result_description))
        found = self._groups.get(group_key)
        if found is None:
            self._groups[group_key] = _Accumulator(1, event.time, event.time, {event.operation},
                                                   event.caller_app_id, event.result_description)
            return
        found.count += 1
        found.first_seen = min(found.first_seen, event.time)
        found.last_seen = max(found.last_seen, event.time)
        found.operations.add(event.operation)

    def _add_key_operation(self, event: AuditEventView, path: str) -> None:
        named = _DELETION_KEY.match(path)
        if named is None:
            return
        key = named.group("name").lower()
        held = self._latest.get((event.vault, event.vault_resource_id, key))
        if held is None or event.time >= held.at:
            self._latest[(event.vault, event.vault_resource_id, key)] = KeyOperation(
                vault=event.vault, vault_resource_id=event.vault_resource_id, key=key, operation=event.operation,
                at=event.time, caller=event.caller, caller_app_id=event.caller_app_id, source=self._source)

    def key_operations(self) -> list[KeyOperation]:
        return list(self._latest.values())

    def groups(self) -> list[AuditFailureGroup]:
        rows = [
            {"Source": self._source, "Vault": key[0], "VaultResourceId": key[1], "KeyName": key[2],
             "KeyVersion": key[3], "Caller": key[4], "StatusCode": int(key[5]), "ResultSignature": key[6],
             "Count": acc.count, "FirstSeen": acc.first_seen, "LastSeen": acc.last_seen,
             "Operations": sorted(acc.operations), "SampleDescription": acc.sample_description,
             "CallerApp": acc.caller_app_id}
            for key, acc in self._groups.items()
        ]
        return groups_from_rows(rows)

    def sources(self) -> list[VaultSource]:
        return [VaultSource(vault, self._source, records) for vault, records in self.records.items()]


_WRAPPED = re.compile(rb'^\s*\{\s*"records"\s*:')


def archived_records(chunks: Iterable[bytes]) -> Iterator[object]:
    """The records of one PT1H.json blob, given in chunks: JSON lines, streamed line by line, or the
    older ``{"records": [...]}`` document (one hour of one vault: read whole). A line that is not JSON
    is yielded as None, so the caller can count it."""
    stream = iter(chunks)
    pending = b""
    for chunk in stream:
        pending += chunk
        if len(pending.lstrip()) >= 16:  # enough to tell the two layouts apart
            break
    if _WRAPPED.match(pending):
        document = _json(pending + b"".join(stream))
        records = document.get("records") if isinstance(document, Mapping) else None
        yield from (records if isinstance(records, list) else [None])
        return
    while True:
        *lines, pending = pending.split(b"\n")
        yield from (_json(line) for line in lines if line.strip())
        following = next(stream, None)
        if following is None:
            break
        pending += following
    if pending.strip():
        yield _json(pending)


def _json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def archive_hours(start: datetime, end: datetime) -> list[datetime]:
    """The hours (UTC, on the hour) whose PT1H.json blobs can hold records of [start, end]."""
    hour = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    hours: list[datetime] = []
    while hour <= end:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


def archive_prefix(vault_resource_id: str, hour: datetime) -> str:
    """Azure Monitor's blob name (in insights-logs-auditevent) of one vault's hour of AuditEvent records."""
    utc = hour.astimezone(UTC)
    return (f"resourceId={vault_resource_id.upper()}"
            f"/y={utc:%Y}/m={utc:%m}/d={utc:%d}/h={utc:%H}/m=00/PT1H.json")


# --------------------------------------------------------------------------------------------------
# The window and the renderings
# --------------------------------------------------------------------------------------------------

_SINCE = re.compile(r"^\s*(?P<number>[0-9]{1,6})\s*(?P<unit>[hd])\s*$", re.IGNORECASE)


def parse_since(text: str) -> timedelta:
    """``--since``: ``<n>h`` or ``<n>d``, between 1 hour and 30 days."""
    match = _SINCE.match(text or "")
    if match is None:
        raise InvalidInput(f"--since {text!r}: expected hours or days, such as 24h or 7d")
    number = int(match["number"])
    window = timedelta(hours=number) if match["unit"].lower() == "h" else timedelta(days=number)
    return checked_window(window, what=f"--since {text.strip()}")


def checked_window(window: timedelta, *, what: str = "the audit window") -> timedelta:
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise InvalidInput(f"{what}: must be between 1 hour and 720 hours (30 days)")
    return window


_WIDTH = 80
#: A wide table's lines are as long as their content.
_UNBOUNDED = 10_000


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _short_vault(vault: str) -> str:
    host = vault.split("://", 1)[-1]
    return host.split(".", 1)[0] if ".vault." in host or ".managedhsm." in host else host


def render_table(report: AuditReport, *, wide: bool = False) -> str:
    """The report for a terminal: at most 80 columns, most severe groups first, one remediation per class.
    ``wide``: vaults, versions and callers whole, each column as wide as its longest value."""
    width = _UNBOUNDED if wide else _WIDTH
    vault_name = (lambda vault: vault) if wide else _short_vault
    lines = [
        f"Key Vault audit failures, {_iso(report.start)} .. {_iso(report.end)}",
        f"{report.failures} failed request(s) in {len(report.groups)} group(s)",
    ]
    if report.partial:
        lines += textwrap.wrap(f"PARTIAL RESULT: {report.partial_detail}", width)
    for source in report.sources:
        lines.append(_fit(f"  {vault_name(source.vault)}: {source.records} record(s) in {source.source}", width))
    if report.vaults_without_logs:
        lines += textwrap.wrap("No audit records in the window for: " + ", ".join(report.vaults_without_logs)
                               + " (check the vaults' diagnostic settings)", width)
    for operation in report.key_operations:
        lines.append(_fit(f"  {operation.operation:<10} {_short_vault(operation.vault)}/{operation.key} at "
                          f"{operation.at.astimezone(UTC):%m-%d %H:%M} by {operation.caller or '-'}", width))
    if not report.groups:
        lines.append("No failed KeyWrap, KeyUnwrap or KeyGet.")
        return "\n".join(lines) + "\n"
    header = ("CLASS", "COUNT", "VAULT/KEY/VERSION", "CALLER", "LAST (UTC)")
    rows = [(group.failure_class.value, str(group.count),
             "/".join(part for part in (vault_name(group.vault), group.key,
                                        group.version if wide else group.version[:8]) if part),
             ", ".join(group.storage_accounts) or group.caller or group.caller_app_id or "-",
             f"{group.last_seen.astimezone(UTC):%m-%d %H:%M}") for group in report.groups]
    widths = ([max(len(row[column]) for row in (header, *rows)) for column in range(len(header))] if wide
              else [12, 6, 26, 18, 11])
    lines += ["", _table_row(header, widths).rstrip()]
    lines += [_table_row(row, widths) for row in rows]
    lines.append("")
    for failure_class in dict.fromkeys(group.failure_class for group in report.groups):
        lines += textwrap.wrap(f"{failure_class.value}: {failure_class.remediation}", width,
                               subsequent_indent="  ", break_on_hyphens=False)
    return "\n".join(lines) + "\n"


def _table_row(cells: tuple[str, ...], widths: list[int]) -> str:
    """CLASS, COUNT (right-aligned), VAULT/KEY/VERSION, CALLER, LAST: each cell cut to its column."""
    fitted = [_fit(cell, width) for cell, width in zip(cells, widths, strict=True)]
    count = f"{fitted[1]:>{widths[1]}}"
    return f"{fitted[0]:<{widths[0]}} {count}  " + "  ".join(
        f"{cell:<{width}}" for cell, width in zip(fitted[2:], widths[2:], strict=True))


def render_json(report: AuditReport) -> str:
    return json.dumps(report.as_json(), indent=2, sort_keys=True) + "\n"


# --------------------------------------------------------------------------------------------------
# Values as they come from Log Analytics (JSON) or an archived record
# --------------------------------------------------------------------------------------------------

def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _int(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    try:
        return int(float(str(value))) if value not in (None, "") else 0
    except ValueError:
        return 0


def _dict(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[object]:
    """A dynamic array: Log Analytics sends it as JSON text, the archive as a list."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return [value] if value else []
    return list(value) if isinstance(value, list | tuple) else []


def _time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value:
        text = value.strip().replace("Z", "+00:00")
        # Azure writes seven fractional digits; Python's parser takes at most six.
        text = re.sub(r"(\.\d{6})\d+", r"\1", text)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


