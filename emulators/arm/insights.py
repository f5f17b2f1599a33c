"""Microsoft.Insights: diagnostic settings on any resource; for vaults they configure the audit sink
(``emulators.audit.AuditSink``): where the vault's AuditEvent records go, as in Azure. A vault without
a setting that enables the AuditEvent category (or the category group audit or allLogs) logs nowhere;
each such setting sends the records to its workspace (``logAnalyticsDestinationType`` Dedicated:
AZKVAuditLogs, otherwise AzureDiagnostics) and to its storage account's insights-logs-auditevent
archive."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emulators.audit import DEDICATED, DiagnosticRoute

from . import errors
from .model import compact
from .routing import SEG, Request, Route

INSIGHTS = r"(.*?)/providers/microsoft\.insights/diagnosticsettings"


class DiagnosticSettings:
    def __init__(self, audit: Any, resource_exists: Callable[[str], bool]) -> None:
        self.audit = audit
        self.resource_exists = resource_exists
        self.settings: dict[tuple[str, str], dict[str, Any]] = {}  # (resource id lower, name lower)

    def routes(self) -> list[Route]:
        return [
            (("GET", "PUT", "DELETE"), rf"{INSIGHTS}/{SEG}", self._diagnostic_setting),
            (("GET",), INSIGHTS, self._list_diagnostic_settings),
        ]

    def _diagnostic_setting(self, req: Request, resource_id: str, name: str) -> tuple[int, Any]:
        if not self.resource_exists(resource_id):
            raise errors.ArmError(404, "ResourceNotFound", f"The Resource '{resource_id}' was not found.")
        key = (resource_id.lower(), name.lower())
        if req.method == "DELETE":
            self.settings.pop(key, None)
            self._apply_audit_setting(resource_id)
            return 200, None
        if req.method == "GET":
            if key not in self.settings:
                raise errors.ArmError(404, "ResourceNotFound", f"The diagnostic setting '{name}' doesn't exist.")
            return 200, self.settings[key]
        props = dict((req.body or {}).get("properties") or {})
        if not any(
            props.get(k)
            for k in ("storageAccountId", "workspaceId", "eventHubAuthorizationRuleId", "marketplacePartnerId")
        ):
            raise errors.ArmError(
                400, "BadRequest", "At least one of storage account, event hub, workspace or partner must be set."
            )
        setting = compact(
            {
                "id": f"{resource_id}/providers/microsoft.insights/diagnosticSettings/{name}",
                "name": name,
                "type": "Microsoft.Insights/diagnosticSettings",
                "properties": props,
            }
        )
        self.settings[key] = setting
        self._apply_audit_setting(resource_id)
        return 200, setting

    def _list_diagnostic_settings(self, req: Request, resource_id: str) -> tuple[int, Any]:
        return 200, {"value": [v for (r, _), v in self.settings.items() if r == resource_id.lower()]}

    def _apply_audit_setting(self, resource_id: str) -> None:
        """Tell the audit sink (emulators/audit.py) where the vault's AuditEvent records go now."""
        if self.audit is None or "/providers/microsoft.keyvault/vaults/" not in resource_id.lower():
            return
        routes = []
        for (rid, _), setting in self.settings.items():
            props = setting.get("properties", {})
            if rid != resource_id.lower() or not _sends_audit_events(props.get("logs") or []):
                continue
            storage = str(props.get("storageAccountId") or "")
            routes.append(DiagnosticRoute(
                workspace=str(props.get("workspaceId") or "") or None,
                dedicated=str(props.get("logAnalyticsDestinationType") or "").lower() == DEDICATED.lower(),
                archive_account=storage.rstrip("/").rsplit("/", 1)[-1] or None,
            ))
        self.audit.set_routes(resource_id, routes)


def _sends_audit_events(logs: list[Any]) -> bool:
    return any(
        isinstance(entry, dict) and entry.get("enabled")
        and (str(entry.get("category") or "").lower() == "auditevent"
             or str(entry.get("categoryGroup") or "").lower() in ("audit", "alllogs"))
        for entry in logs
    )
