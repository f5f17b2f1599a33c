"""The estate gatherer against the emulated ARM and vaults: what it reads, how often, and what it does
when something cannot be read."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from azure.keyvault.keys import KeyRotationLifetimeAction, KeyRotationPolicy, KeyRotationPolicyAction
from azure.mgmt.keyvault.models import NetworkRuleSet, VaultPatchParameters, VaultPatchProperties

from controller.adapters.estate_gatherer import EstateGatherer
from controller.compliance.access import key_access
from controller.compliance.drift import DriftFocus
from controller.compliance.estate import Estate, ReadAspect
from controller.errors import Forbidden
from controller.model import IdentityAccess
from controller.ports import BlobPage
from controller.resource_events import DriftTarget, TargetKind
from controller.settings import RewrapTarget
from tests.integration.adapter_world import CRYPTO_SERVICE_USER, RG, SUB_A, SUB_FORBIDDEN, World, running_arm

pytestmark = pytest.mark.integration


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with running_arm(tmp_path) as (arm, faults):
        yield World(arm, faults)


def gather(world: World, *subscriptions: str) -> Estate:
    origins = [world.origin(name).url for name in world.vaults]
    gatherer = EstateGatherer(world.connection(), key_vault_credential=world.cred, policy=world.policy,
                              custom_origins=origins, key_vault_verify=world.arm.ca_path)
    return gatherer.gather(list(subscriptions), datetime.now(UTC))


def build_shared_key_estate(world: World, accounts: int) -> None:
    """One access-policy vault with two keys; ``accounts`` accounts all on the first key; one RBAC vault."""
    world.create_vault("kv-shared")
    keys = world.key_client("kv-shared")
    keys.create_rsa_key("cmk", size=3072)
    keys.create_rsa_key("spare", size=2048)
    keys.update_key_rotation_policy("cmk", KeyRotationPolicy(expires_in="P1Y", lifetime_actions=[
        KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P90D")]))
    keys.rotate_key("cmk")
    identity = world.create_identity("id-shared")
    world.grant_policy("kv-shared", identity.principal_id)
    for _ in range(accounts):
        account = world.create_account(uai="id-shared")
        world.enable_cmk(account, "kv-shared", "cmk", uai="id-shared")
    world.create_vault("kv-rbac", rbac=True)
    world.key_client("kv-rbac").create_rsa_key("cmk", size=2048)
    world.assign_role(world.vaults["kv-rbac"].id, identity.principal_id, CRYPTO_SERVICE_USER)


def test_each_vault_and_key_is_read_once_however_many_accounts_use_it(world: World) -> None:
    build_shared_key_estate(world, accounts=6)
    world.faults.requests.clear()

    estate = gather(world, SUB_A)

    assert estate.read_failures == ()
    assert len(estate.storage_accounts) == 6
    requests = world.faults.requests_matching
    assert requests("GET", "/providers/microsoft.keyvault/vaults/kv-shared/keys") == 1 + 2  # list, 2 x versions
    assert requests("GET", "/vaults/kv-shared/keys/cmk/versions") == 1
    assert requests("GET", "/vaults/kv-shared/keys/spare/versions") == 1
    assert requests("GET", "/vaults/kv-rbac/providers/microsoft.authorization/roleassignments") == 1
    assert requests("GET", "/vaults/kv-shared/providers/microsoft.insights/diagnosticsettings") == 1
    paths = [path for verb, path in world.faults.requests if verb == "GET"]
    assert sum(path.endswith("/providers/microsoft.keyvault/vaults") for path in paths) == 1
    assert sum(path.endswith("/providers/microsoft.storage/storageaccounts") for path in paths) == 1
    assert sum("/keys" in path and "/kv-rbac/" in path for path in paths) == 1 + 1  # list, 1 x versions
    assert requests("GET", "/encryptionscopes") == 6  # each account's scopes: ARM's listing, the documented source
    definitions = [path for verb, path in world.faults.requests if "/roledefinitions/" in path]
    assert len(definitions) == len(set(definitions))  # each role definition once


def scope_view(estate: Estate) -> dict[str, list[tuple[str, str, str, str | None, str | None]]]:
    return {account.name: [(scope.id, scope.name, scope.source, scope.key_uri, scope.current_versioned_key_identifier)
                           for scope in account.encryption_scopes or ()]
            for account in estate.storage_accounts}


def test_encryption_scopes_come_from_each_accounts_listing_never_from_resource_graph(world: World) -> None:
    """Resource Graph is not documented to index encryption scopes: an unindexed type would answer "none"."""
    build_shared_key_estate(world, accounts=3)
    first, second, _ = sorted(world.storage().storage_accounts.list(), key=lambda account: account.name)
    key_uri = f"{world.origin('kv-shared').url}/keys/cmk"
    world.create_scope(first, "scopea", key_uri)
    world.create_scope(first, "scopeb", key_uri)
    world.create_scope(second, "scopec", key_uri)
    world.faults.requests.clear()

    estate = gather(world, SUB_A)

    assert world.faults.requests_matching("GET", "/encryptionscopes") == 3
    assert world.faults.resource_graph_queries == 0
    assert estate.read_failures == ()
    assert sorted(len(scopes) for scopes in scope_view(estate).values()) == [0, 1, 2]
    assert all(scope[4] for scopes in scope_view(estate).values() for scope in scopes)  # versioned key id


def test_keys_versions_rotation_policy_and_vault_properties_come_through_arm(world: World) -> None:
    build_shared_key_estate(world, accounts=1)

    estate = gather(world, SUB_A)

    vault = next(vault for vault in estate.vaults if vault.name == "kv-shared")
    cmk = vault.key("cmk")
    assert cmk is not None and cmk.kty == "RSA" and cmk.key_size == 3072
    assert cmk.versions is not None and len(cmk.versions) == 2
    # The key's own version (what orders two versions made within one second): the rotated one.
    rotated = world.key_client("kv-shared").get_key("cmk").properties.version
    assert cmk.current_version == rotated and rotated in {info.version for info in cmk.versions}
    assert cmk.rotation_policy is not None and cmk.rotation_policy.expires_after == "P1Y"
    assert [(action.action.lower(), action.time_after_create) for action in cmk.rotation_policy.lifetime_actions] == [
        ("rotate", "P90D")]
    spare = vault.key("spare")
    assert spare is not None and spare.rotation_policy is not None and spare.rotation_policy.lifetime_actions == ()
    assert (vault.enable_soft_delete, vault.soft_delete_retention_in_days, vault.enable_purge_protection) == (
        True, 7, True)
    assert vault.access_policies and vault.deleted_keys == () and vault.diagnostic_settings == ()
    rbac = next(vault for vault in estate.vaults if vault.name == "kv-rbac")
    assert rbac.enable_rbac_authorization
    assert {assignment.role_definition_id.rsplit("/", 1)[-1] for assignment in rbac.role_assignments or ()} >= {
        CRYPTO_SERVICE_USER}
    assert CRYPTO_SERVICE_USER in {definition.guid for definition in estate.role_definitions}
    (account,) = estate.storage_accounts
    assert account.encryption.uses_key_vault and account.encryption.key_vault_properties is not None
    assert estate.user_assigned_identities[0].principal_id == world.identities["id-shared"].principal_id
    assert estate.subscriptions[0].tenant_id == world.tenant


def test_a_firewall_blinds_the_data_plane_only_and_a_refused_listing_is_a_read_failure(world: World) -> None:
    build_shared_key_estate(world, accounts=1)
    world.keyvault_mgmt().vaults.update(RG, "kv-shared", VaultPatchParameters(properties=VaultPatchProperties(
        network_acls=NetworkRuleSet(default_action="Deny", bypass="None"))))

    estate = gather(world, SUB_A, SUB_FORBIDDEN)

    vault = next(vault for vault in estate.vaults if vault.name == "kv-shared")
    assert vault.keys is not None and vault.key("cmk") is not None  # read through ARM despite the firewall
    assert vault.deleted_keys is None  # only the data plane lists them
    failures = {(failure.aspect, failure.status_code) for failure in estate.read_failures}
    assert failures == {(ReadAspect.DELETED_KEYS, 403), (ReadAspect.STORAGE_ACCOUNTS, 403)}
    refused = next(failure for failure in estate.read_failures if failure.aspect is ReadAspect.STORAGE_ACCOUNTS)
    assert refused.resource == f"/subscriptions/{SUB_FORBIDDEN}"
    assert "403" in refused.reason
    assert len(estate.storage_accounts) == 1  # the readable subscription was swept all the same


class ListingOnly:
    """A customer account's blob service that holds no blob (the census counts nothing) or refuses."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse

    def list_blobs(self, container: str, *, prefix: str | None, marker: str | None) -> BlobPage:
        if self.refuse:
            raise Forbidden(f"list blobs of {container}: HTTP 403 AuthorizationPermissionMismatch")
        return BlobPage(items=(), next_marker=None)


def test_registered_containers_are_counted_and_a_refused_census_is_a_read_failure(world: World) -> None:
    build_shared_key_estate(world, accounts=2)
    readable, refusing = sorted(account.name for account in world.storage().storage_accounts.list())
    origins = [world.origin(name).url for name in world.vaults]
    gatherer = EstateGatherer(
        world.connection(), key_vault_credential=world.cred, policy=world.policy, custom_origins=origins,
        key_vault_verify=world.arm.ca_path,
        registered_containers=[RewrapTarget(readable, "secrets"), RewrapTarget(refusing, "secrets")],
        blob_stores=lambda account: ListingOnly(refuse=account == refusing))  # type: ignore[arg-type,return-value]

    estate = gatherer.gather([SUB_A], datetime.now(UTC))

    census = {entry.account: entry for entry in estate.container_census}
    assert census[readable].blobs_per_version == {}
    assert census[refusing].blobs_per_version is None
    assert census[readable].key_uri == f"{world.origin('kv-shared').url}/keys/cmk"
    (failure,) = estate.read_failures
    assert (failure.resource, failure.aspect, failure.status_code) == (
        f"{refusing}/secrets", ReadAspect.BLOB_CENSUS, None)
    assert "403" in failure.reason


def gatherer_for(world: World) -> EstateGatherer:
    origins = [world.origin(name).url for name in world.vaults]
    return EstateGatherer(world.connection(), key_vault_credential=world.cred, policy=world.policy,
                          custom_origins=origins, key_vault_verify=world.arm.ca_path)


def test_a_focused_gather_reads_only_the_touched_vault_and_its_consumers_in_full(world: World) -> None:
    build_shared_key_estate(world, accounts=3)
    rbac_user = world.create_identity("id-rbac")
    other = world.create_account(uai="id-rbac")
    world.assign_role(world.vaults["kv-rbac"].id, rbac_user.principal_id, CRYPTO_SERVICE_USER)
    world.enable_cmk(other, "kv-rbac", "cmk", uai="id-rbac")
    world.faults.requests.clear()

    focus = DriftFocus.of([DriftTarget(TargetKind.VAULT, world.vaults["kv-rbac"].id.lower())])
    focused = gatherer_for(world).gather_focus([SUB_A], focus, datetime.now(UTC))

    estate = focused.estate
    assert estate.read_failures == ()
    assert [vault.name for vault in estate.vaults] == ["kv-rbac"]
    assert [account.name for account in estate.storage_accounts] == [other.name]
    assert estate.storage_accounts[0].encryption_scopes == ()  # read in full: its scopes listed
    requests = world.faults.requests_matching
    assert requests("GET", "/vaults/kv-shared/keys") == 0  # the untouched vault is only listed
    assert requests("GET", "/encryptionscopes") == 1
    assert focused.coverage.covers("CMK-006", other.id)
    shared_consumer = next(account.id for account in gather(world, SUB_A).storage_accounts
                           if account.name != other.name)  # every other account uses kv-shared
    assert not focused.coverage.covers("CMK-006", shared_consumer)
    assert not focused.coverage.covers("CMK-017", world.vaults["kv-rbac"].id)
def test_a_grant_at_a_management_group_counts_once_the_ancestry_is_read(world: World) -> None:
    world.create_vault("kv-rbac", rbac=True)
    world.key_client("kv-rbac").create_rsa_key("cmk", size=2048)
    identity = world.create_identity("id-mg")
    world.faults.requests.clear()
    before = gather(world, SUB_A)
    assert world.faults.requests_matching("POST", "/getentities") == 0  # no MG-scope grant: not read
    assert before.subscriptions[0].management_groups is None

    scope = world.place_in_management_group("mg-data")
    world.assign_role(scope, identity.principal_id, CRYPTO_SERVICE_USER)
    world.faults.requests.clear()

    estate = gather(world, SUB_A)

    assert world.faults.requests_matching("POST", "/getentities") == 1
    assert estate.read_failures == ()
    assert estate.subscriptions[0].management_groups == ("mg-data", world.tenant)  # nearest first
    vault = next(vault for vault in estate.vaults if vault.name == "kv-rbac")
    assert scope in {assignment.scope for assignment in vault.role_assignments or ()}
    result = key_access(vault, "cmk", identity.principal_id,
                        role_definitions={definition.guid: definition for definition in estate.role_definitions},
                        subscription=estate.subscriptions[0])
    assert result.access is IdentityAccess.GRANTED
    assert any(scope in grant for grant in result.granted_by)
