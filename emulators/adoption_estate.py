"""One key with many consumers in the emulated ARM, for the adoption-at-scale tests and benchmark.

Half the storage accounts are versionless (automatic version updates), half pinned to the key's
current version and tagged ``cmk-pinned-policy=update`` (the controller may move them). All use one
user-assigned identity that the vault's access policy allows get/wrapKey/unwrapKey. The accounts
are created in-process (no HTTP, no throttling, no latency): the first of each kind through
``ArmEmulator.dispatch_json`` (its key validated in the vault), the others as copies of it
(``ArmEmulator.seed_copies``), so that building ten thousand of them takes seconds rather than ARM's
write budget or thirty thousand vault calls; switch ARM's limits on afterwards (``arm.set_limits``).
``rotate`` adds a key version through the vault's HTTPS API; ``adoption`` reads each account's state
in-process (it costs no ARM budget).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.keyvault.keys import KeyClient

from emulators.arm import ArmEmulator

SUBSCRIPTION = "5ca1e000-0000-4000-8000-00000000ad0b"
RESOURCE_GROUP = "rg-adoption"
VAULT = "kv-adoption"
KEY = "cmk-adoption"
IDENTITY = "uai-adoption"
PINNED_POLICY_TAG = "cmk-pinned-policy"
STORAGE_KEY_PERMISSIONS = ["get", "wrapKey", "unwrapKey"]
_LONG_AGO = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Adoption:
    """How many accounts use a version: configured as intended (adopted) or not yet."""

    adopted: int
    pinned_adopted: int
    versionless_adopted: int
    total: int

    @property
    def complete(self) -> bool:
        return self.adopted == self.total


@dataclass
class AdoptionEstate:
    arm: ArmEmulator
    controller_oid: str
    vault_uri: str
    pinned: tuple[str, ...]
    versionless: tuple[str, ...]
    subscription: str = SUBSCRIPTION
    resource_group: str = RESOURCE_GROUP
    key_name: str = KEY
    #: When the newest version was created (sandbox time).
    last_version_at: datetime = _LONG_AGO

    @property
    def accounts(self) -> tuple[str, ...]:
        return self.pinned + self.versionless

    def account_id(self, name: str) -> str:
        return (f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
                f"/providers/Microsoft.Storage/storageAccounts/{name}")

    def key_client(self) -> KeyClient:
        return KeyClient(self.vault_uri, self.arm.credential(self.controller_oid), verify_challenge_resource=False,
                         connection_verify=self.arm.ca_path, retry_total=0)

    def rotate(self) -> str:
        """A new version of the key (what an operator's rotation does); returns it. Key Vault reports
        creation times to the second: the new version is created in a later (sandbox) second than the
        one before, as an operator's rotation is, so that the two are never a creation-time tie."""
        while self.arm.clock.now().replace(microsecond=0) <= self.last_version_at.replace(microsecond=0):
            time.sleep(0.01)
        with self.key_client() as client:
            version = client.rotate_key(self.key_name).properties.version
        if not version:
            raise RuntimeError("the vault returned a rotated key without a version")
        self.last_version_at = self.arm.clock.now()
        return version

    def adoption(self, version: str) -> Adoption:
        """Accounts whose current key is ``version`` and that are configured as intended: the pinned
        ones pinned to it, the versionless ones versionless again."""
        pinned = versionless = 0
        for name in self.accounts:
            binding = self.arm.accounts[name].binding
            if binding is None or not binding.current_kid.rstrip("/").endswith(f"/{version}"):
                continue
            if name in self.pinned and binding.key_version == version:
                pinned += 1
            elif name not in self.pinned and binding.versionless:
                versionless += 1
        return Adoption(pinned + versionless, pinned, versionless, len(self.accounts))


def build(arm: ArmEmulator, *, consumers: int, controller_oid: str) -> AdoptionEstate:
    """``consumers`` accounts on one key (see the module docstring); ARM's limits must be off."""
    if arm.throttling is not None:
        raise RuntimeError("build the estate before switching ARM's limits on")
    arm.ensure_resource_group(SUBSCRIPTION, RESOURCE_GROUP)
    identity = arm.add_identity(SUBSCRIPTION, RESOURCE_GROUP, IDENTITY)
    vault = arm.dispatch_json("PUT", f"{_group_path()}/providers/Microsoft.KeyVault/vaults/{VAULT}", {
        "location": "westeurope",
        "properties": {
            "tenantId": arm.tenant_id,
            "sku": {"family": "A", "name": "standard"},
            "enableSoftDelete": True,
            "enablePurgeProtection": True,
            "accessPolicies": [
                _policy(arm.tenant_id, controller_oid, ["all"]),
                _policy(arm.tenant_id, identity.principal_id, STORAGE_KEY_PERMISSIONS),
            ],
        },
    })
    vault_uri = str(vault["properties"]["vaultUri"])
    estate = AdoptionEstate(arm, controller_oid, vault_uri, pinned=(), versionless=())
    with estate.key_client() as client:
        version = client.create_rsa_key(KEY, size=2048).properties.version or ""
    estate.last_version_at = arm.clock.now()
    half = consumers // 2
    pinned = tuple(f"stadp{index:06d}" for index in range(half))
    versionless = tuple(f"stadv{index:06d}" for index in range(consumers - half))
    # One account of each kind through ARM (its key validated in the vault), the rest seeded as copies.
    for names, key_version, tags in ((pinned, version, {PINNED_POLICY_TAG: "update"}), (versionless, "", {})):
        if names:
            _create_account(arm, names[0], vault_uri, identity.id, version=key_version, tags=tags)
            arm.seed_copies(names[0], names[1:], tags=tags)
    estate.pinned, estate.versionless = pinned, versionless
    return estate


def _group_path() -> str:
    return f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"


def _policy(tenant: str, principal: str, keys: Sequence[str]) -> dict[str, Any]:
    return {"tenantId": tenant, "objectId": principal, "permissions": {"keys": list(keys)}}


def _create_account(arm: ArmEmulator, name: str, vault_uri: str, identity_id: str, *, version: str,
                    tags: dict[str, str]) -> None:
    arm.dispatch_json("PUT", f"{_group_path()}/providers/Microsoft.Storage/storageAccounts/{name}", {
        "sku": {"name": "Standard_LRS"},
        "kind": "StorageV2",
        "location": "westeurope",
        "tags": tags,
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {identity_id: {}}},
        "properties": {"encryption": {
            "keySource": "Microsoft.Keyvault",
            "keyvaultproperties": {"keyname": KEY, "keyversion": version, "keyvaulturi": vault_uri},
            "identity": {"userAssignedIdentity": identity_id},
        }},
    })
