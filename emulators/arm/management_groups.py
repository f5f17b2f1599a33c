"""Microsoft.Management: the management-group hierarchy, as azure-mgmt-managementgroups 2.x calls it.

The tenant root group is named after the tenant id and exists from the start; a subscription sits under
the root until it is moved. Routes (api-version 2023-04-01 shapes; any version is accepted):

* ``PUT /providers/Microsoft.Management/managementGroups/{group}`` (``management_groups.begin_create_or_update``;
  ``properties.details.parent.id`` names the parent, the root by default): 200 with the final body, so
  the SDK's poller completes at once;
* ``GET`` of the same path (``management_groups.get``; ``$expand=ancestors`` adds
  ``properties.details.managementGroupAncestors``, ``$expand=path`` ``properties.details.path``,
  ``$expand=children`` the direct children);
* ``PUT``/``GET`` ``.../managementGroups/{group}/subscriptions/{subscription}``
  (``management_group_subscriptions.create`` moves the subscription, ``get_subscription``);
* ``POST /providers/Microsoft.Management/getEntities`` (``entities.list``): every group and every known
  subscription with ``parent`` and ``parentNameChain`` (root first, nearest parent last), one page.

``covers(scope, resource)`` tells the authorization provider whether an assignment at a management-group
scope applies to a resource: the group is the resource's subscription's ancestor (or the resource's own
group's). Not emulated: deleting groups, hierarchy settings, name availability, permissions per entity
(every entity is ``view``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import errors
from .model import compact
from .routing import SEG, Request, Route

GROUP_TYPE = "Microsoft.Management/managementGroups"
SUBSCRIPTION_ENTITY_TYPE = "/subscriptions"
_MG = r"/providers/microsoft\.management/managementgroups"
_MG_SCOPE_PREFIX = "/providers/microsoft.management/managementgroups/"


@dataclass
class ManagementGroup:
    name: str
    display_name: str
    parent: str | None  # the parent group's name; None for the tenant root group

    @property
    def id(self) -> str:
        return f"/providers/{GROUP_TYPE}/{self.name}"


def group_of_scope(scope: str) -> str | None:
    """The group name when ``scope`` is exactly a management-group scope."""
    lowered = scope.rstrip("/").lower()
    if not lowered.startswith(_MG_SCOPE_PREFIX):
        return None
    rest = scope.rstrip("/")[len(_MG_SCOPE_PREFIX):]
    return rest if rest and "/" not in rest else None


class ManagementGroups:
    def __init__(self, tenant_id: str, known_subscriptions: Callable[[], Iterable[str]]) -> None:
        self.tenant_id = tenant_id
        self.known_subscriptions = known_subscriptions
        root = ManagementGroup(tenant_id, "Tenant Root Group", None)
        self.groups: dict[str, ManagementGroup] = {tenant_id.lower(): root}
        self.placements: dict[str, str] = {}  # subscription lower -> group name lower (absent: the root)
        self.on_change: Callable[[], None] = lambda: None

    def routes(self) -> list[Route]:
        return [
            (("POST",), r"/providers/microsoft\.management/getentities", self._entities),
            (("GET", "PUT", "DELETE"), rf"{_MG}/{SEG}/subscriptions/{SEG}", self._subscription),
            (("GET", "PUT"), rf"{_MG}/{SEG}", self._group),
        ]

    # ---- the hierarchy --------------------------------------------------------------------------------
    def ancestors_of_subscription(self, subscription: str) -> list[str]:
        """The subscription's groups, nearest first, up to the tenant root group."""
        parent = self.placements.get(subscription.lower(), self.tenant_id.lower())
        return [parent_name.name for parent_name in self._chain(parent)]

    def covers(self, scope: str, resource: str) -> bool:
        """Does an assignment at management-group ``scope`` apply to ``resource``?"""
        group = group_of_scope(scope)
        if group is None:
            return False
        segments = resource.strip("/").split("/")
        if len(segments) >= 2 and segments[0].lower() == "subscriptions":
            chain = self.ancestors_of_subscription(segments[1])
        else:
            own = group_of_scope("/" + "/".join(segments[:4]))
            chain = [] if own is None else [g.name for g in self._chain(own.lower())]
        return any(name.lower() == group.lower() for name in chain)

    def _chain(self, name: str) -> list[ManagementGroup]:
        chain: list[ManagementGroup] = []
        current = self.groups.get(name.lower())
        while current is not None and len(chain) <= len(self.groups):
            chain.append(current)
            current = self.groups.get(current.parent.lower()) if current.parent else None
        return chain

    def _get(self, name: str) -> ManagementGroup:
        group = self.groups.get(name.lower())
        if group is None:
            # Unverified wording; ARM answers 404 for a group the caller cannot see or that does not exist.
            raise errors.ArmError(404, "NotFound", f"'{name}' not found")
        return group

    # ---- JSON -----------------------------------------------------------------------------------------
    def _group_json(self, group: ManagementGroup, expand: str) -> dict[str, Any]:
        ancestors = self._chain(group.parent.lower()) if group.parent else []
        details: dict[str, Any] = {
            "version": 1,
            "parent": None if not ancestors else {
                "id": ancestors[0].id, "name": ancestors[0].name, "displayName": ancestors[0].display_name},
        }
        if expand == "ancestors":
            details["managementGroupAncestors"] = [g.name for g in ancestors]
            details["managementGroupAncestorsChain"] = [
                {"name": g.name, "displayName": g.display_name} for g in ancestors]
        if expand == "path":
            details["path"] = [{"name": g.name, "displayName": g.display_name} for g in reversed(ancestors)]
        properties: dict[str, Any] = {"tenantId": self.tenant_id, "displayName": group.display_name,
                                      "details": details}
        if expand == "children":
            properties["children"] = [
                {"type": GROUP_TYPE, "id": child.id, "name": child.name, "displayName": child.display_name}
                for child in self.groups.values() if (child.parent or "").lower() == group.name.lower()
            ] + [
                {"type": SUBSCRIPTION_ENTITY_TYPE, "id": f"/subscriptions/{sub}", "name": sub, "displayName": sub}
                for sub in self._subscriptions() if self._parent_of(sub) == group.name.lower()
            ]
        return {"id": group.id, "type": GROUP_TYPE, "name": group.name, "properties": properties}

    def _parent_of(self, subscription: str) -> str:
        return self.placements.get(subscription.lower(), self.tenant_id.lower())

    def _subscriptions(self) -> list[str]:
        return sorted({sub.lower() for sub in self.known_subscriptions()} | set(self.placements))

    def _subscription_json(self, subscription: str) -> dict[str, Any]:
        parent = self._get(self._parent_of(subscription))
        return {
            "id": f"{parent.id}/subscriptions/{subscription}",
            "type": f"{GROUP_TYPE}/subscriptions",
            "name": subscription,
            "properties": {"tenant": self.tenant_id, "displayName": subscription, "parent": {"id": parent.id},
                           "state": "Active"},
        }

    def _entity_json(self, entity_id: str, name: str, entity_type: str, display_name: str,
                     parent: str | None) -> dict[str, Any]:
        chain = list(reversed(self._chain(parent))) if parent else []  # root first
        return {
            "id": entity_id,
            "type": entity_type,
            "name": name,
            "properties": compact({
                "tenantId": self.tenant_id,
                "displayName": display_name,
                "parent": {"id": chain[-1].id} if chain else None,
                "permissions": "view",
                "inheritedPermissions": "view",
                "parentDisplayNameChain": [g.display_name for g in chain],
                "parentNameChain": [g.name for g in chain],
            }),
        }

    def _counts(self, group: ManagementGroup) -> dict[str, int]:
        """numberOfChildren / numberOfChildGroups / numberOfDescendants of a group entity."""
        name = group.name.lower()
        child_groups = [g for g in self.groups.values() if (g.parent or "").lower() == name]
        subscriptions = [sub for sub in self._subscriptions() if self._parent_of(sub) == name]
        below = [g for g in self.groups.values() if g is not group and group in self._chain(g.name)]
        below_subscriptions = [sub for sub in self._subscriptions()
                               if any(g.name.lower() == name for g in self._chain(self._parent_of(sub)))]
        return {"numberOfDescendants": len(below) + len(below_subscriptions),
                "numberOfChildren": len(child_groups) + len(subscriptions),
                "numberOfChildGroups": len(child_groups)}

    # ---- routes ---------------------------------------------------------------------------------------
    def _group(self, req: Request, name: str) -> tuple[int, Any]:
        if req.method == "PUT":
            props = (req.body or {}).get("properties") or {}
            parent_id = ((props.get("details") or {}).get("parent") or {}).get("id") or ""
            parent = group_of_scope(parent_id) if parent_id else self.tenant_id
            if parent is None:
                raise errors.ArmError(400, "BadRequest", f"Invalid parent id '{parent_id}'.")  # unverified
            parent_group = self._get(parent)
            if name.lower() == self.tenant_id.lower():
                raise errors.ArmError(400, "BadRequest", "The root management group cannot be changed.")
            if any(g.name.lower() == name.lower() for g in self._chain(parent_group.name)):
                raise errors.ArmError(400, "BadRequest", "A management group cannot be its own ancestor.")
            existing = self.groups.get(name.lower())
            group = ManagementGroup(existing.name if existing else name,
                                    str(props.get("displayName") or name), parent_group.name)
            self.groups[name.lower()] = group
            self.on_change()
            return 200, self._group_json(group, "")
        expand = str(req.query.get("$expand", "")).lower()
        return 200, self._group_json(self._get(name), expand)

    def _subscription(self, req: Request, group: str, subscription: str) -> tuple[int, Any]:
        target = self._get(group)
        if req.method == "PUT":
            self.placements[subscription.lower()] = target.name.lower()
            self.on_change()
            return 200, self._subscription_json(subscription.lower())
        if self._parent_of(subscription) != target.name.lower():
            raise errors.ArmError(404, "NotFound", f"Subscription '{subscription}' is not under '{group}'.")
        if req.method == "DELETE":  # back under the root group
            self.placements.pop(subscription.lower(), None)
            self.on_change()
            return 200, None
        return 200, self._subscription_json(subscription.lower())

    def _entities(self, req: Request) -> tuple[int, Any]:
        entities = []
        for group in self.groups.values():
            entity = self._entity_json(group.id, group.name, GROUP_TYPE, group.display_name, group.parent)
            entity["properties"].update(self._counts(group))
            entities.append(entity)
        entities += [
            self._entity_json(f"/subscriptions/{sub}", sub, SUBSCRIPTION_ENTITY_TYPE, sub, self._parent_of(sub))
            for sub in self._subscriptions()
        ]
        return 200, {"value": entities, "count": len(entities)}
