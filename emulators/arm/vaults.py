"""Microsoft.KeyVault: vaults (create/update/get/list), access policies (add/replace/remove), the deleted-vault
listing and the keys and key versions of a vault (read-only: ``Keys_Get``, ``Keys_List``, ``Keys_GetVersion``,
``Keys_ListVersions``), backed by ``KeyVaultEmulator``: creating a vault through ARM starts its HTTPS origin;
``properties.vaultUri`` is that origin. Vaults created directly in the Key Vault emulator appear here too
(``sync``).

Keys through ARM are the control plane's view of the vault's real keys: ARM answers them whatever the
vault's firewall and data-plane permissions say (ARM RBAC, not the vault's, governs them), lists no
soft-deleted key, and carries the key's rotation policy in ``properties.rotationPolicy`` (omitted when the
key has none; action types in ARM's lower case)."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

from emulators.keyvault import KeyVaultEmulator, VaultState
from emulators.keyvault.state import AccessPolicy, KeyEntry, KeyVersion

from . import errors
from .authorization import Authorization
from .model import VAULT_TYPE, ResourceGroup, vault_json
from .resource_groups import ResourceGroups
from .routing import RG, SEG, SUB, Request, Route
from .storage import iso

VAULT = rf"{RG}/providers/microsoft\.keyvault/vaults/{SEG}"
ACCESS_POLICY_KINDS = ("add", "replace", "remove")
VAULT_NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$")


class Vaults:
    def __init__(self, groups: ResourceGroups, keyvault: KeyVaultEmulator, authorization: Authorization) -> None:
        self.groups = groups
        self.keyvault = keyvault
        self.authorization = authorization
        self.tags: dict[str, dict[str, str]] = {}  # lower-case resource id -> the vault's ARM tags
        self._known: set[str] = set()
        self.deleted: dict[str, dict[str, Any]] = {}  # lower-case name -> the soft-deleted vault (DeletedVault)

    def routes(self) -> list[Route]:
        return [
            (("GET",), rf"{SUB}/providers/microsoft\.keyvault/vaults", self._list_vaults),
            (("GET",), rf"{RG}/providers/microsoft\.keyvault/vaults", self._list_vaults),
            (("GET", "PUT", "PATCH", "DELETE"), VAULT, self._vault),
            (("PUT",), rf"{VAULT}/accesspolicies/{SEG}", self._access_policy),
            (("GET",), rf"{SUB}/providers/microsoft\.keyvault/deletedvaults", self._list_deleted_vaults),
            (("GET",), rf"{VAULT}/keys", self._list_keys),
            (("GET",), rf"{VAULT}/keys/{SEG}", self._key),
            (("GET",), rf"{VAULT}/keys/{SEG}/versions", self._list_key_versions),
            (("GET",), rf"{VAULT}/keys/{SEG}/versions/{SEG}", self._key_version),
        ]

    def sync(self) -> None:
        """Vaults created directly in the Key Vault emulator appear in ARM (and their resource groups)."""
        new_vault = False
        for state in list(self.keyvault.vaults.values()):
            self.groups.ensure(state.subscription_id, state.resource_group, state.location)
            if state.name.lower() not in self._known:
                self._known.add(state.name.lower())
                new_vault = True
        if new_vault and self.authorization.role_assignments:
            self.authorization.sync()

    def to_json(self, state: VaultState) -> dict[str, Any]:
        return vault_json(state, self.tags.get(state.resource_id.lower()))

    def _find_vault(self, subscription: str, group: str, name: str) -> VaultState | None:
        state = self.keyvault.vaults.get(name.lower())
        if state is None:
            return None
        if state.subscription_id.lower() != subscription.lower() or state.resource_group.lower() != group.lower():
            return None
        return state

    def _list_vaults(self, req: Request, subscription: str, group: str | None = None) -> tuple[int, Any]:
        if group is not None:
            self.groups.get(subscription, group)
        return 200, {
            "value": [
                self.to_json(s)
                for s in list(self.keyvault.vaults.values())
                if s.subscription_id.lower() == subscription.lower()
                and (group is None or s.resource_group.lower() == group.lower())
            ]
        }

    def _vault(self, req: Request, subscription: str, group: str, name: str) -> tuple[int, Any]:
        state = self._find_vault(subscription, group, name)
        if req.method == "DELETE":
            if state is None:
                self.groups.get(subscription, group)
                return 204, None  # Vaults_Delete: 204 when there was nothing to delete
            self._delete_vault(state)
            return 200, None
        if req.method == "GET":
            if state is None:
                self.groups.get(subscription, group)
                raise errors.resource_not_found(VAULT_TYPE, name, group)
            return 200, self.to_json(state)
        body = req.body or {}
        props = body.get("properties") or {}
        if req.method == "PATCH":
            if state is None:
                self.groups.get(subscription, group)
                raise errors.resource_not_found(VAULT_TYPE, name, group)
            self._update_vault(state, props)
            if isinstance(body.get("tags"), dict):
                self.tags[state.resource_id.lower()] = dict(body["tags"])
            return 200, self.to_json(state)
        rg = self.groups.get(subscription, group)
        if state is None:
            if name.lower() in self.keyvault.vaults:
                raise errors.ArmError(409, "VaultAlreadyExists", f"The vault name '{name}' is already in use.")
            if not VAULT_NAME_RE.fullmatch(name):
                raise errors.ArmError(400, "VaultNameNotValid", f"The vault name '{name}' is not valid.")
            state = self._create_vault(subscription, rg, name, body)
            created = True
        else:
            self._update_vault(state, props)
            created = False
        self.tags[state.resource_id.lower()] = dict(body.get("tags") or {})
        return (201 if created else 200), self.to_json(state)

    def _create_vault(self, subscription: str, rg: ResourceGroup, name: str, body: dict[str, Any]) -> VaultState:
        props = body.get("properties") or {}
        if not props.get("tenantId") or not props.get("sku"):
            raise errors.ArmError(400, "BadRequest", "The properties tenantId and sku are required.")
        retention = int(props.get("softDeleteRetentionInDays") or 90)
        if not 7 <= retention <= 90:
            raise errors.ArmError(
                400, "BadRequest", 'The property "softDeleteRetentionInDays" must be between 7 and 90.'
            )  # unverified wording
        sku = props["sku"]
        try:
            state = self.keyvault.add_vault(
                name,
                subscription_id=subscription,
                resource_group=rg.name,
                soft_delete_retention_days=retention,
                purge_protection=bool(props.get("enablePurgeProtection")),
                enable_soft_delete=props.get("enableSoftDelete") is not False,
                rbac=bool(props.get("enableRbacAuthorization")),
                tenant_id=str(props["tenantId"]),
                location=str(body.get("location") or rg.location).replace(" ", "").lower(),
                sku=str(sku.get("name") if isinstance(sku, dict) else sku).lower(),
                access_policies=list(props.get("accessPolicies") or []),
                network_acls=props.get("networkAcls"),
            )
        except ValueError as exc:
            raise errors.ArmError(400, "BadRequest", str(exc)) from exc
        self.authorization.sync()
        return state

    def _update_vault(self, state: VaultState, props: dict[str, Any]) -> None:
        with state.lock:
            if state.purge_protection and props.get("enablePurgeProtection") is False:
                # Verified message (Azure/ai-hub #241).
                raise errors.ArmError(
                    400,
                    "BadRequest",
                    'The property "enablePurgeProtection" cannot be set to false. Enabling the purge protection '
                    "for a vault is an irreversible action.",
                )
            if state.enable_soft_delete and props.get("enableSoftDelete") is False:
                raise errors.ArmError(
                    400,
                    "BadRequest",
                    'The property "enableSoftDelete" cannot be set to false. Enabling the soft delete for a vault '
                    "is an irreversible action.",
                )  # unverified wording, same form as the purge protection message
            try:
                state.apply_json({"properties": {k: v for k, v in props.items() if v is not None}})
            except (ValueError, KeyError) as exc:
                raise errors.ArmError(400, "BadRequest", str(exc)) from exc

    def _existing_vault(self, subscription: str, group: str, name: str) -> VaultState:
        state = self._find_vault(subscription, group, name)
        if state is None:
            self.groups.get(subscription, group)
            raise errors.resource_not_found(VAULT_TYPE, name, group)
        return state

    def _delete_vault(self, state: VaultState) -> None:
        """Vaults_Delete: the vault goes (its origin stops answering) and, soft delete being always on,
        is listed as deleted until its scheduled purge date (purge is not emulated)."""
        now = self.keyvault.clock.now()
        self.deleted[state.name.lower()] = {
            "id": f"/subscriptions/{state.subscription_id}/providers/Microsoft.KeyVault/locations/{state.location}"
                  f"/deletedVaults/{state.name}",
            "name": state.name,
            "type": "Microsoft.KeyVault/deletedVaults",
            "properties": {
                "vaultId": state.resource_id,
                "location": state.location,
                "deletionDate": iso(now),
                "scheduledPurgeDate": iso(now + timedelta(days=state.soft_delete_retention_days)),
                "purgeProtectionEnabled": bool(state.purge_protection),
                "tags": dict(self.tags.get(state.resource_id.lower(), {})),
            },
        }
        self._known.discard(state.name.lower())
        self.keyvault.remove_vault(state.name)

    def _list_deleted_vaults(self, req: Request, subscription: str) -> tuple[int, Any]:
        prefix = f"/subscriptions/{subscription.lower()}/"
        return 200, {"value": [entry for entry in self.deleted.values()
                               if entry["properties"]["vaultId"].lower().startswith(prefix)]}

    def _list_keys(self, req: Request, subscription: str, group: str, name: str) -> tuple[int, Any]:
        state = self._existing_vault(subscription, group, name)
        with state.lock:
            return 200, {"value": [key_json(state, entry, entry.current) for entry in state.keys.values()
                                   if _served(entry)]}

    def _key(self, req: Request, subscription: str, group: str, name: str, key: str) -> tuple[int, Any]:
        state = self._existing_vault(subscription, group, name)
        with state.lock:
            entry = state.keys.get(key.lower())
            if entry is None or not _served(entry):
                raise errors.resource_not_found(KEY_TYPE, f"{name}/{key}", group)
            return 200, key_json(state, entry, entry.current)

    def _list_key_versions(self, req: Request, subscription: str, group: str, name: str, key: str) -> tuple[int, Any]:
        state = self._existing_vault(subscription, group, name)
        with state.lock:
            entry = state.keys.get(key.lower())
            if entry is None or not _served(entry):
                raise errors.resource_not_found(KEY_TYPE, f"{name}/{key}", group)
            return 200, {"value": [key_json(state, entry, version, versioned=True) for version in entry.versions]}

    def _key_version(self, req: Request, *path: str) -> tuple[int, Any]:
        subscription, group, name, key, version = path
        state = self._existing_vault(subscription, group, name)
        with state.lock:
            entry = state.keys.get(key.lower())
            found = entry.find(version) if entry is not None and _served(entry) and version else None
            if entry is None or found is None:
                raise errors.resource_not_found(KEY_VERSION_TYPE, f"{name}/{key}/{version}", group)
            return 200, key_json(state, entry, found, versioned=True)

    def _access_policy(self, req: Request, subscription: str, group: str, name: str, kind: str) -> tuple[int, Any]:
        state = self._find_vault(subscription, group, name)
        if state is None:
            self.groups.get(subscription, group)
            raise errors.resource_not_found(VAULT_TYPE, name, group)
        if kind.lower() not in ACCESS_POLICY_KINDS:
            raise errors.ArmError(400, "BadRequest", f"Invalid operation kind '{kind}': add, replace or remove.")
        entries = ((req.body or {}).get("properties") or {}).get("accessPolicies") or []
        try:
            policies = [AccessPolicy.from_json(e, state.tenant_id) for e in entries]
        except ValueError as exc:
            raise errors.ArmError(400, "BadRequest", str(exc)) from exc
        with state.lock:
            current = list(state.access_policies)
        for policy in policies:
            match = next(
                (
                    p
                    for p in current
                    if p.object_id.lower() == policy.object_id.lower()
                    and p.tenant_id.lower() == policy.tenant_id.lower()
                    and (p.application_id or "") == (policy.application_id or "")
                ),
                None,
            )
            if kind.lower() == "replace" or match is None:
                if kind.lower() != "remove":
                    current = [p for p in current if p is not match] + [policy]
                continue
            if kind.lower() == "add":
                merged = AccessPolicy(
                    match.object_id,
                    match.tenant_id,
                    match.application_id,
                    _union(match.keys, policy.keys),
                    {c: _union(match.other.get(c, []), policy.other.get(c, [])) for c in {*match.other, *policy.other}},
                )
                current = [merged if p is match else p for p in current]
            else:  # remove: take the listed permissions away; an entry left with none disappears
                keys = _minus(match.keys, policy.keys)
                other = {c: _minus(v, policy.other.get(c, [])) for c, v in match.other.items()}
                remaining = AccessPolicy(match.object_id, match.tenant_id, match.application_id, keys, other)
                keep = bool(keys) or any(other.values())
                current = [p for p in current if p is not match] + ([remaining] if keep else [])
        state.set_access_policies(current)
        return 200, {
            "id": f"{state.resource_id}/accessPolicies/{kind.lower()}",
            "name": kind.lower(),
            "type": "Microsoft.KeyVault/vaults/accessPolicies",
            "location": state.location,
            "properties": {"accessPolicies": [p.to_json() for p in current]},
        }


KEY_TYPE = "Microsoft.KeyVault/vaults/keys"
KEY_VERSION_TYPE = "Microsoft.KeyVault/vaults/keys/versions"


def _served(entry: KeyEntry) -> bool:
    """A key with a version that is not still being recovered (the data plane does not serve it yet either)."""
    return bool(entry.versions) and entry.recovering_until <= time.monotonic()


def key_json(state: VaultState, entry: KeyEntry, version: KeyVersion, *, versioned: bool = False) -> dict[str, Any]:
    """A key (its current version) or one key version as ARM returns it (keys.json 2024-11-01 Key)."""
    material = version.material
    attributes: dict[str, Any] = {"enabled": version.enabled, "created": version.created, "updated": version.updated,
                                  "recoveryLevel": state.recovery_level}
    if version.nbf is not None:
        attributes["nbf"] = version.nbf
    if version.exp is not None:
        attributes["exp"] = version.exp
    if version.exportable is not None:
        attributes["exportable"] = version.exportable
    properties: dict[str, Any] = {
        "attributes": attributes,
        "kty": material.kty,
        "keyOps": list(version.key_ops),
        "keyUri": state.key_id(entry.name),
        "keyUriWithVersion": state.key_id(entry.name, version.version),
    }
    if material.family == "RSA":
        properties["keySize"] = material.size
    elif material.family == "EC":
        properties["curveName"] = material.crv
    if entry.rotation_policy is not None:
        properties["rotationPolicy"] = _arm_rotation_policy(entry.rotation_policy)
    key_id = f"{state.resource_id}/keys/{entry.name}"
    return {
        "id": f"{key_id}/versions/{version.version}" if versioned else key_id,
        "name": version.version if versioned else entry.name,
        "type": KEY_VERSION_TYPE if versioned else KEY_TYPE,
        "location": state.location,
        "tags": dict(version.tags),
        "properties": properties,
    }


def _arm_rotation_policy(policy: dict[str, Any]) -> dict[str, Any]:
    stored = policy.get("attributes") or {}
    attributes = {name: stored[name] for name in ("created", "updated", "expiryTime") if stored.get(name) is not None}
    actions = []
    for action in policy.get("lifetimeActions") or []:
        trigger = {name: value for name, value in (action.get("trigger") or {}).items() if value is not None}
        kind = str((action.get("action") or {}).get("type") or "")
        actions.append({"trigger": trigger, "action": {"type": kind.lower()}})
    return {"attributes": attributes, "lifetimeActions": actions}


def _union(a: list[str], b: list[str]) -> list[str]:
    seen = {p.lower() for p in a}
    return list(a) + [p for p in b if p.lower() not in seen]


def _minus(a: list[str], b: list[str]) -> list[str]:
    drop = {p.lower() for p in b}
    return [p for p in a if p.lower() not in drop]
