"""Microsoft.Resources: subscriptions (implicit: any id answers), resource groups, the ``/resources`` listing."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from . import errors
from .model import STORAGE_TYPE, UAI_TYPE, VAULT_TYPE, ResourceGroup, compact
from .routing import RG, SUB, Request, Route

CANONICAL_TYPES = {t.lower(): t for t in (STORAGE_TYPE, VAULT_TYPE, UAI_TYPE)}


class ResourceGroups:
    """Subscriptions and resource groups; ``resources`` gives every resource in Resource Graph's row shape."""

    def __init__(self, tenant_id: str, resources: Callable[[], list[dict[str, Any]]]) -> None:
        self.tenant_id = tenant_id
        self.resources = resources
        self.groups: dict[tuple[str, str], ResourceGroup] = {}  # (subscription lower, name lower)

    def routes(self) -> list[Route]:
        return [
            (("GET",), r"/subscriptions", self._list_subscriptions),
            (("GET",), SUB, self._subscription),
            (("GET",), rf"{SUB}/resourcegroups", self._list_resource_groups),
            (("GET", "HEAD", "PUT", "PATCH"), RG, self._resource_group),
            (("GET",), rf"{SUB}/resources", self._list_resources),
        ]

    def get(self, subscription: str, name: str) -> ResourceGroup:
        """The resource group, or ARM's ResourceGroupNotFound."""
        group = self.groups.get((subscription.lower(), name.lower()))
        if group is None:
            raise errors.resource_group_not_found(name)
        return group

    def ensure(self, subscription: str, name: str, location: str = "westeurope") -> ResourceGroup:
        key = (subscription.lower(), name.lower())
        if key not in self.groups:
            self.groups[key] = ResourceGroup(subscription, name, location)
        return self.groups[key]

    def containers_snapshot(self) -> list[dict[str, Any]]:
        """Resource groups in Resource Graph's ``resourcecontainers`` shape."""
        return [
            {
                "id": g.id,
                "name": g.name,
                "type": "microsoft.resources/subscriptions/resourcegroups",
                "tenantId": self.tenant_id,
                "location": g.location,
                "resourceGroup": g.name.lower(),
                "subscriptionId": g.subscription_id,
                "properties": {"provisioningState": "Succeeded"},
                "tags": dict(g.tags),
            }
            for g in self.groups.values()
        ]

    def _subscription_json(self, subscription: str) -> dict[str, Any]:
        return {
            "id": f"/subscriptions/{subscription}",
            "subscriptionId": subscription,
            "tenantId": self.tenant_id,
            "displayName": f"sandbox {subscription}",
            "state": "Enabled",
        }

    def _list_subscriptions(self, req: Request) -> tuple[int, Any]:
        subs = sorted({g.subscription_id for g in self.groups.values()})
        return 200, {"value": [self._subscription_json(s) for s in subs]}

    def _subscription(self, req: Request, subscription: str) -> tuple[int, Any]:
        return 200, self._subscription_json(subscription)

    def _list_resource_groups(self, req: Request, subscription: str) -> tuple[int, Any]:
        groups = [g.to_json() for (s, _), g in self.groups.items() if s == subscription.lower()]
        return 200, {"value": groups}

    def _resource_group(self, req: Request, subscription: str, name: str) -> tuple[int, Any]:
        key = (subscription.lower(), name.lower())
        if req.method in ("GET", "HEAD", "PATCH"):
            group = self.get(subscription, name)
            if req.method == "HEAD":
                return 204, None
            if req.method == "PATCH" and isinstance((req.body or {}).get("tags"), dict):
                group.tags = dict(req.body["tags"])
            return 200, group.to_json()
        body = req.body or {}
        if not body.get("location"):
            raise errors.ArmError(400, "LocationRequired", "The location property is required for this definition.")
        existed = key in self.groups
        group = self.groups.get(key) or ResourceGroup(subscription, name, str(body["location"]))
        group.tags = dict(body.get("tags") or {})
        self.groups[key] = group
        return (200 if existed else 201), group.to_json()

    def _list_resources(self, req: Request, subscription: str) -> tuple[int, Any]:
        wanted = None
        match = re.search(r"resourceType eq '([^']+)'", req.query.get("$filter", ""), flags=re.IGNORECASE)
        if match:
            wanted = match.group(1).lower()
        rows = []
        for row in self.resources():
            if row["subscriptionId"].lower() != subscription.lower() or (wanted and row["type"] != wanted):
                continue
            if row["type"].count("/") > 1:
                continue  # a child resource (an encryption scope): ARM lists top-level resources only
            fields = {k: row[k] for k in ("id", "name", "location", "tags", "kind", "sku", "identity")}
            rows.append(compact(fields | {"type": CANONICAL_TYPES.get(row["type"], row["type"])}))
        return 200, {"value": rows}
