"""KeyAccess (CMK-006) through the unmodified KeyVaultManagementClient / AuthorizationManagementClient against
the ARM emulator over HTTPS: access-policy and RBAC vaults, granted and denied, and what cannot be read."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.mgmt.authorization.models import Permission, RoleDefinition

from controller.adapters.inventory import Inventory
from controller.adapters.key_access import KeyAccess
from controller.adapters.storage_control import StorageControl
from controller.model import (
    EncryptionIdentity,
    IdentityAccess,
    IdentityKind,
    KeyRef,
    VaultOrigin,
    VaultResourceId,
    parse_vault_resource_id,
)
from tests.integration.adapter_world import CRYPTO_SERVICE_USER, KV_ADMIN, RG, SUB_A, SUB_B, World, running_arm

pytestmark = pytest.mark.integration

READER = "21090545-7ca7-4776-b22c-e363652d74d2"


def principal() -> str:
    return str(uuid.uuid4())


def identity(principal_id: str | None) -> EncryptionIdentity:
    return EncryptionIdentity(IdentityKind.SYSTEM_ASSIGNED, principal_id, problem="" if principal_id else "off")


@dataclass
class Estate:
    world: World
    vault_ids: dict[VaultOrigin, VaultResourceId]
    custom_role: str  # keys/* but not unwrap

    def access(self) -> KeyAccess:
        return KeyAccess(self.world.connection(), lambda: self.vault_ids)

    def key(self, vault: str, name: str = "cmk") -> KeyRef:
        return self.world.key(vault, name)


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    with running_arm(Path(tmp_path_factory.mktemp("key-access"))) as (arm, faults):
        world = World(arm, faults)
        world.create_vault("kv-ap")
        world.create_vault("kv-rbac", rbac=True)
        world.create_vault("kv-rbac-b", rbac=True, subscription=SUB_B)
        for vault in ("kv-ap", "kv-rbac"):
            world.key_client(vault).create_rsa_key("cmk", size=2048)
            world.key_client(vault).create_rsa_key("cmk2", size=2048)
        custom = str(uuid.uuid4())
        world.authz().role_definitions.create_or_update(
            f"/subscriptions/{SUB_A}",
            custom,
            RoleDefinition(
                role_name="keys but no unwrap",
                assignable_scopes=[f"/subscriptions/{SUB_A}"],
                permissions=[
                    Permission(
                        data_actions=["Microsoft.KeyVault/vaults/keys/*"],
                        not_data_actions=["Microsoft.KeyVault/vaults/keys/unwrap/action"],
                    )
                ],
            ),
        )
        with Inventory(
            world.connection(),
            StorageControl(world.connection(), policy=world.policy),
            subscriptions=[SUB_A, SUB_B],
            policy=world.policy,
        ) as inventory:
            vault_ids = inventory.list_vaults()
        yield Estate(world, vault_ids, custom)


# ---- access-policy vaults -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("permissions", "expected"),
    [
        (["get", "wrapKey", "unwrapKey"], IdentityAccess.GRANTED),
        (["Get", "WRAPKEY", "unwrapkey", "list"], IdentityAccess.GRANTED),
        (["all"], IdentityAccess.GRANTED),
        (["get", "wrapKey"], IdentityAccess.DENIED),
        (["encrypt", "decrypt"], IdentityAccess.DENIED),
    ],
)
def test_access_policy_permissions(estate: Estate, permissions: list[str], expected: IdentityAccess) -> None:
    oid = principal()
    estate.world.grant_policy("kv-ap", oid, permissions)
    with estate.access() as access:
        verdict = access.evaluate(estate.key("kv-ap"), identity(oid))
    assert verdict.access is expected, verdict.reason
    if expected is IdentityAccess.DENIED:
        assert "lacks" in verdict.reason


def test_access_policy_of_another_principal_does_not_grant(estate: Estate) -> None:
    estate.world.grant_policy("kv-ap", principal(), ["all"])
    with estate.access() as access:
        verdict = access.evaluate(estate.key("kv-ap"), identity(principal()))
    assert verdict.access is IdentityAccess.DENIED


def test_unresolved_identity_is_denied_with_its_problem(estate: Estate) -> None:
    with estate.access() as access:
        verdict = access.evaluate(
            estate.key("kv-ap"), EncryptionIdentity(IdentityKind.USER_ASSIGNED, None, "/x/uai", problem="not attached")
        )
    assert (verdict.access, verdict.reason) == (IdentityAccess.DENIED, "not attached")


# ---- RBAC vaults ----------------------------------------------------------------------------------------------
def rbac_scope(estate: Estate, where: str) -> str:
    vault_id = estate.world.vaults["kv-rbac"].id
    return {
        "key": f"{vault_id}/keys/cmk",
        "vault": vault_id,
        "group": f"/subscriptions/{SUB_A}/resourceGroups/{RG}",
        "subscription": f"/subscriptions/{SUB_A}",
    }[where]


@pytest.mark.parametrize("where", ["key", "vault", "group", "subscription"])
def test_crypto_service_encryption_user_grants_at_every_scope(estate: Estate, where: str) -> None:
    oid = principal()
    estate.world.assign_role(rbac_scope(estate, where), oid, CRYPTO_SERVICE_USER)
    with estate.access() as access:
        verdict = access.evaluate(estate.key("kv-rbac"), identity(oid))
        other_key = access.evaluate(estate.key("kv-rbac", "cmk2"), identity(oid))
    assert verdict.access is IdentityAccess.GRANTED, verdict.reason
    assert CRYPTO_SERVICE_USER in verdict.reason
    # A key-scoped assignment grants that key only.
    assert other_key.access is (IdentityAccess.DENIED if where == "key" else IdentityAccess.GRANTED)


def test_wildcard_data_actions_grant(estate: Estate) -> None:
    oid = principal()
    estate.world.assign_role(rbac_scope(estate, "vault"), oid, KV_ADMIN)  # Microsoft.KeyVault/vaults/*
    with estate.access() as access:
        assert access.evaluate(estate.key("kv-rbac"), identity(oid)).access is IdentityAccess.GRANTED


def test_not_data_actions_subtract(estate: Estate) -> None:
    oid = principal()
    estate.world.assign_role(rbac_scope(estate, "vault"), oid, estate.custom_role)
    with estate.access() as access:
        verdict = access.evaluate(estate.key("kv-rbac"), identity(oid))
    assert verdict.access is IdentityAccess.DENIED
    assert verdict.reason.endswith("lacks Microsoft.KeyVault/vaults/keys/unwrap/action")


def test_a_role_without_data_actions_and_other_scopes_do_not_grant(estate: Estate) -> None:
    oid = principal()
    estate.world.assign_role(rbac_scope(estate, "vault"), oid, READER)
    estate.world.assign_role(estate.world.vaults["kv-rbac-b"].id, oid, CRYPTO_SERVICE_USER, subscription=SUB_B)
    with estate.access() as access:
        verdict = access.evaluate(estate.key("kv-rbac"), identity(oid))
    assert verdict.access is IdentityAccess.DENIED


def test_a_grant_at_a_management_group_above_the_subscription_counts(estate: Estate) -> None:
    oid = principal()
    scope = estate.world.place_in_management_group("mg-keys")
    estate.world.assign_role(scope, oid, CRYPTO_SERVICE_USER)
    estate.world.faults.requests.clear()
    with estate.access() as access:
        verdict = access.evaluate(estate.key("kv-rbac"), identity(oid))
        unrelated = access.evaluate(estate.key("kv-rbac"), identity(principal()))
    assert verdict.access is IdentityAccess.GRANTED, verdict.reason
    assert CRYPTO_SERVICE_USER in verdict.reason and scope in verdict.reason
    assert unrelated.access is IdentityAccess.DENIED
    assert estate.world.faults.requests_matching("POST", "/getentities") == 1  # the ancestry, once


def test_an_access_policy_does_not_count_on_an_rbac_vault(estate: Estate) -> None:
    oid = principal()
    with estate.access() as access:
        assert access.evaluate(estate.key("kv-rbac"), identity(oid)).access is IdentityAccess.DENIED


# ---- unknown and cost -------------------------------------------------------------------------------------
def test_a_vault_outside_the_inventory_is_unknown(estate: Estate) -> None:
    with KeyAccess(estate.world.connection(), dict) as access:
        verdict = access.evaluate(estate.key("kv-ap"), identity(principal()))
    assert verdict.access is IdentityAccess.UNKNOWN
    assert "not found" in verdict.reason


def test_an_unreadable_vault_is_unknown_with_the_reason(estate: Estate) -> None:
    origin = estate.world.origin("kv-ap")
    gone = parse_vault_resource_id(
        f"/subscriptions/{SUB_A}/resourceGroups/{RG}/providers/Microsoft.KeyVault/vaults/kv-gone"
    )
    with KeyAccess(estate.world.connection(), lambda: {origin: gone}) as access:
        verdict = access.evaluate(estate.key("kv-ap"), identity(principal()))
    assert verdict.access is IdentityAccess.UNKNOWN
    assert "kv-gone: not found" in verdict.reason


def test_each_vault_and_role_is_read_once_per_run(estate: Estate) -> None:
    world = estate.world
    principals = [principal() for _ in range(5)]
    for oid in principals:
        world.assign_role(rbac_scope(estate, "vault"), oid, CRYPTO_SERVICE_USER)
        world.grant_policy("kv-ap", oid)
    world.faults.requests.clear()
    with estate.access() as access:
        verdicts = [
            access.evaluate(estate.key(vault, name), identity(oid))
            for oid in principals
            for vault in ("kv-ap", "kv-rbac")
            for name in ("cmk", "cmk2")
        ]
    assert {verdict.access for verdict in verdicts} == {IdentityAccess.GRANTED}
    vault_reads = [path.rsplit("/", 1)[-1] for verb, path in world.faults.requests if "/vaults/kv-" in path]
    assert sorted(vault_reads) == ["kv-ap", "kv-rbac", "roleassignments"]  # each vault once, one listing
    assert world.faults.requests_matching("GET", "/roleassignments") == 1
    assert world.faults.requests_matching("GET", "/roledefinitions/") == 1
    assert len(world.faults.requests) == 4
