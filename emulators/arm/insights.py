"""Microsoft.Insights: diagnostic settings on any resource; for vaults they configure the audit sink
(``emulators.audit.AuditSink``): where the vault's AuditEvent records go."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
        archive = workspace = False
        destinations: set[str] = set()
        for (rid, _), setting in self.settings.items():
            if rid != resource_id.lower():
                continue
            props = setting.get("properties", {})
            logs = props.get("logs") or []
            audited = any(
                entry.get("enabled")
                and (
                    str(entry.get("category") or "").lower() == "auditevent"
                    or str(entry.get("categoryGroup") or "").lower() in ("audit", "alllogs")
                )
                for entry in logs
            )
            if not audited:
                continue
            archive = archive or bool(props.get("storageAccountId"))
            if props.get("workspaceId"):
                workspace = True
                destinations.add(
                    "Dedicated" if props.get("logAnalyticsDestinationType") == "Dedicated" else "AzureDiagnostics"
                )
        if not (archive or workspace):
            self.audit.disable_diagnostics(resource_id)
            return
        destination = destinations.pop() if len(destinations) == 1 else None
        self.audit.enable_diagnostics(resource_id, archive=archive, workspace=workspace, destination_type=destination)
