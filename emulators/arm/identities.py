"""Microsoft.ManagedIdentity: user-assigned identities (principalId / clientId)."""

from __future__ import annotations

from typing import Any

from . import errors
from .model import UAI_TYPE, UserAssignedIdentity
from .resource_groups import ResourceGroups
from .routing import RG, SEG, SUB, Request, Route

UAI = rf"{RG}/providers/microsoft\.managedidentity/userassignedidentities"


class Identities:
    def __init__(self, groups: ResourceGroups, tenant_id: str) -> None:
        self.groups = groups
        self.tenant_id = tenant_id
        self.identities: dict[str, UserAssignedIdentity] = {}  # lower-case resource id -> identity

    def routes(self) -> list[Route]:
        return [
            (("GET",), rf"{SUB}/providers/microsoft\.managedidentity/userassignedidentities", self._list_identities),
            (("GET",), UAI, self._list_identities),
            (("GET", "PUT", "PATCH", "DELETE"), rf"{UAI}/{SEG}", self._identity),
        ]

    def add(self, subscription: str, group: str, name: str, location: str = "westeurope") -> UserAssignedIdentity:
        self.groups.ensure(subscription, group, location)
        identity = UserAssignedIdentity(subscription, group, name, location, self.tenant_id)
        self.identities[identity.id.lower()] = identity
        return identity

    def get(self, resource_id: str) -> UserAssignedIdentity | None:
        return self.identities.get(resource_id.lower())

    def all(self) -> list[UserAssignedIdentity]:
        return list(self.identities.values())

    def _list_identities(self, req: Request, subscription: str, group: str | None = None) -> tuple[int, Any]:
        return 200, {
            "value": [
                i.to_json()
                for i in self.identities.values()
                if i.subscription_id.lower() == subscription.lower()
                and (group is None or i.resource_group.lower() == group.lower())
            ]
        }

    def _identity(self, req: Request, subscription: str, group: str, name: str) -> tuple[int, Any]:
        resource_id = f"/subscriptions/{subscription}/resourceGroups/{group}/providers/{UAI_TYPE}/{name}".lower()
        identity = self.identities.get(resource_id)
        if req.method == "PUT":
            rg = self.groups.get(subscription, group)
            body = req.body or {}
            created = identity is None
            if identity is None:
                identity = UserAssignedIdentity(
                    subscription, rg.name, name, str(body.get("location") or rg.location), self.tenant_id
                )
                self.identities[resource_id] = identity
            identity.tags = dict(body.get("tags") or {})
            return (201 if created else 200), identity.to_json()
        if identity is None:
            self.groups.get(subscription, group)
            raise errors.resource_not_found(UAI_TYPE, name, group)
        if req.method == "PATCH":
            if isinstance((req.body or {}).get("tags"), dict):
                identity.tags = dict(req.body["tags"])
            return 200, identity.to_json()
        if req.method == "DELETE":
            del self.identities[resource_id]
            return 200, None
        return 200, identity.to_json()
