"""Microsoft.KeyVault: vaults (create/update/get/list) and access policies (add/replace/remove), backed by
``KeyVaultEmulator``: creating a vault through ARM starts its HTTPS origin; ``properties.vaultUri`` is that
origin. Vaults created directly in the Key Vault emulator appear here too (``sync``)."""

from __future__ import annotations

import re
from typing import Any

from emulators.keyvault import KeyVaultEmulator, VaultState
from emulators.keyvault.state import AccessPolicy

from . import errors
from .authorization import Authorization
from .model import VAULT_TYPE, ResourceGroup, vault_json
from .resource_groups import ResourceGroups
from .routing import RG, SEG, SUB, Request, Route

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

    def routes(self) -> list[Route]:
        return [
            (("GET",), rf"{SUB}/providers/microsoft\.keyvault/vaults", self._list_vaults),
            (("GET",), rf"{RG}/providers/microsoft\.keyvault/vaults", self._list_vaults),
            (("GET", "PUT", "PATCH"), VAULT, self._vault),
            (("PUT",), rf"{VAULT}/accesspolicies/{SEG}", self._access_policy),
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


def _union(a: list[str], b: list[str]) -> list[str]:
    seen = {p.lower() for p in a}
    return list(a) + [p for p in b if p.lower() not in seen]


def _minus(a: list[str], b: list[str]) -> list[str]:
    drop = {p.lower() for p in b}
    return [p for p in a if p.lower() not in drop]
