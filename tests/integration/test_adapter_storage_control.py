"""StorageControl through the unmodified StorageManagementClient against the ARM emulator over HTTPS."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.storage_control import ScopeSearch, StorageControl, parse_storage_resource_id
from controller.errors import Conflict, Forbidden, InvalidKeyId, InvalidResourceId, NotFound, TransientError
from controller.model import ConsumerKind, IdentityKind, ObservedConsumer
from tests.integration.adapter_world import RG, SUB_A, SUB_FORBIDDEN, SUB_THROTTLED, World, running_arm

pytestmark = pytest.mark.integration


@dataclass
class Estate:
    world: World
    control: StorageControl
    key_v1: str
    key_v2: str
    versionless: Any  # account, user-assigned identity, versionless
    pinned: Any  # account, system-assigned identity, pinned to v1
    other_key: Any  # account on another key of the same vault
    mmk: Any  # Microsoft-managed keys, with a Key Vault scope


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    with running_arm(Path(tmp_path_factory.mktemp("storage-control"))) as (arm, faults):
        world = World(arm, faults)
        world.create_vault("kv-sc")
        keys = world.key_client("kv-sc")
        v1 = keys.create_rsa_key("cmk", size=2048).properties.version or ""
        keys.create_rsa_key("other", size=2048)
        uai = world.create_identity("uai-sc")
        world.grant_policy("kv-sc", uai.principal_id)

        versionless = world.create_account(uai="uai-sc", tags={"cmk-pinned-policy": "update", "env": "prod"})
        world.enable_cmk(versionless, "kv-sc", "cmk", uai="uai-sc")
        world.create_scope(versionless, "scopeauto", world.key("kv-sc", "cmk").uri)
        world.create_scope(versionless, "scopepinned", world.key("kv-sc", "cmk", v1).uri)
        world.create_scope(versionless, "scopeother", world.key("kv-sc", "other").uri)

        pinned = world.create_account(system=True)
        world.grant_policy("kv-sc", pinned.identity.principal_id)
        world.enable_cmk(pinned, "kv-sc", "cmk", version=v1)

        other_key = world.create_account(uai="uai-sc")
        world.enable_cmk(other_key, "kv-sc", "other", uai="uai-sc")

        mmk = world.create_account(system=True)  # scopes reach the vault through the account's identity
        world.grant_policy("kv-sc", mmk.identity.principal_id)
        world.create_scope(mmk, "scopemmk", world.key("kv-sc", "cmk").uri)

        v2 = keys.create_rsa_key("cmk", size=2048).properties.version or ""
        with StorageControl(world.connection(), policy=world.policy) as control:
            yield Estate(world, control, v1, v2, versionless, pinned, other_key, mmk)


def by_id(consumers: tuple[ObservedConsumer, ...]) -> dict[str, ObservedConsumer]:
    return {observed.consumer.resource_id.lower(): observed for observed in consumers}


def test_consumers_of_a_key_are_accounts_and_scopes_configured_with_it(estate: Estate) -> None:
    world = estate.world
    key = world.key("kv-sc", "cmk")
    found = by_id(estate.control.list_consumers(key, subscription_id=SUB_A))

    versionless_id = estate.versionless.id.lower()
    assert set(found) == {
        versionless_id,
        estate.pinned.id.lower(),
        f"{versionless_id}/encryptionscopes/scopeauto",
        f"{versionless_id}/encryptionscopes/scopepinned",
    }
    account = found[versionless_id]
    assert account.consumer.kind is ConsumerKind.ACCOUNT
    assert account.consumer.key == key
    assert account.consumer.current_key == key.with_version(estate.key_v1)
    assert account.consumer.last_key_rotation is not None
    assert account.consumer.tag("CMK-Pinned-Policy") == "update"
    assert account.identity.kind is IdentityKind.USER_ASSIGNED
    assert account.identity.principal_id == world.identities["uai-sc"].principal_id
    assert account.location == "westeurope"

    pinned = found[estate.pinned.id.lower()]
    assert pinned.consumer.pinned_version == estate.key_v1
    assert pinned.consumer.current_version == estate.key_v1
    assert pinned.identity.kind is IdentityKind.SYSTEM_ASSIGNED
    assert pinned.identity.principal_id == estate.pinned.identity.principal_id

    scope = found[f"{versionless_id}/encryptionscopes/scopepinned"]
    assert scope.consumer.kind is ConsumerKind.SCOPE
    assert scope.consumer.scope_name == "scopepinned"
    assert scope.consumer.account_name == estate.versionless.name
    assert scope.consumer.pinned_version == estate.key_v1
    assert scope.consumer.current_version == estate.key_v1
    assert scope.identity == account.identity
    assert scope.consumer.tags == account.consumer.tags
    assert found[f"{versionless_id}/encryptionscopes/scopeauto"].consumer.key == key


def test_scopes_of_accounts_on_microsoft_managed_keys_are_found_when_asked(estate: Estate) -> None:
    key = estate.world.key("kv-sc", "cmk")
    found = by_id(estate.control.list_consumers(key, subscription_id=SUB_A, scopes=ScopeSearch.ALL_ACCOUNTS))
    assert f"{estate.mmk.id.lower()}/encryptionscopes/scopemmk" in found
    assert len(found) == 5


def test_another_key_has_its_own_consumers(estate: Estate) -> None:
    found = by_id(estate.control.list_consumers(estate.world.key("kv-sc", "other"), subscription_id=SUB_A))
    assert set(found) == {estate.other_key.id.lower(), f"{estate.versionless.id.lower()}/encryptionscopes/scopeother"}


def test_pin_and_restore_an_account_round_trip(estate: Estate) -> None:
    control, world = estate.control, estate.world
    observed = control.get_consumer(estate.versionless.id)
    assert observed is not None
    assert observed.consumer.pinned_version is None

    world.faults.writes.clear()
    pinned = control.pin_key_version(observed.consumer, estate.key_v2)
    assert pinned.consumer.pinned_version == estate.key_v2
    assert pinned.consumer.current_version == estate.key_v2  # Azure adopts a pinned version on the write
    # One PATCH carrying only the encryption block: key source, vault URI, key name, version, identity.
    assert world.faults.writes == [
        (
            "PATCH",
            estate.versionless.id.lower(),
            {
                "properties": {
                    "encryption": {
                        "keySource": "Microsoft.Keyvault",
                        "keyvaultproperties": {
                            "keyname": "cmk",
                            "keyversion": estate.key_v2,
                            "keyvaulturi": world.vaults["kv-sc"].properties.vault_uri,
                        },
                        "identity": {"userAssignedIdentity": world.identities["uai-sc"].id},
                    }
                }
            },
        )
    ]
    reread = control.get_consumer(estate.versionless.id)
    assert reread is not None
    assert reread.consumer.key == world.key("kv-sc", "cmk", estate.key_v2)
    assert reread.consumer.current_version == estate.key_v2

    world.faults.writes.clear()
    restored = control.set_versionless(reread.consumer)
    assert restored.consumer.pinned_version is None
    [(_, _, body)] = world.faults.writes
    assert body["properties"]["encryption"]["keyvaultproperties"]["keyversion"] == ""  # explicit: automatic updates
    again = control.get_consumer(estate.versionless.id)
    assert again is not None
    assert again.consumer.key == world.key("kv-sc", "cmk")
    assert again.consumer.current_version == estate.key_v2
    # Only the encryption block changed: the identities and the encryption identity are as they were.
    account = world.storage().storage_accounts.get_properties(RG, estate.versionless.name)
    assert set(account.identity.user_assigned_identities) == {world.identities["uai-sc"].id}
    assert account.encryption.encryption_identity.encryption_user_assigned_identity == world.identities["uai-sc"].id
    assert again.identity == observed.identity


def test_pin_and_restore_a_scope_round_trip(estate: Estate) -> None:
    control = estate.control
    scope_id = f"{estate.versionless.id}/encryptionScopes/scopeauto"
    observed = control.get_consumer(scope_id)
    assert observed is not None
    estate.world.faults.writes.clear()
    pinned = control.pin_key_version(observed.consumer, estate.key_v2)
    assert pinned.consumer.pinned_version == estate.key_v2
    assert [body for _, _, body in estate.world.faults.writes] == [
        {
            "properties": {
                "source": "Microsoft.KeyVault",
                "keyVaultProperties": {"keyUri": estate.world.key("kv-sc", "cmk", estate.key_v2).uri},
            }
        }
    ]
    reread = control.get_consumer(scope_id)
    assert reread is not None
    assert reread.consumer.pinned_version == estate.key_v2
    assert reread.consumer.current_version == estate.key_v2
    control.set_versionless(reread.consumer)
    again = control.get_consumer(scope_id)
    assert again is not None
    assert again.consumer.key == estate.world.key("kv-sc", "cmk")


def test_a_system_assigned_pinned_account_moves_to_the_new_version(estate: Estate) -> None:
    control = estate.control
    observed = control.get_consumer(estate.pinned.id)
    assert observed is not None
    moved = control.pin_key_version(observed.consumer, estate.key_v2)
    assert control.get_consumer(estate.pinned.id) == moved
    assert moved.consumer.current_version == estate.key_v2
    account = estate.world.storage().storage_accounts.get_properties(RG, estate.pinned.name)
    assert account.identity.principal_id == estate.pinned.identity.principal_id
    control.pin_key_version(moved.consumer, estate.key_v1)  # back, for the other tests


def test_a_consumer_changed_by_someone_else_is_not_written(estate: Estate) -> None:
    control, world = estate.control, estate.world
    observed = control.get_consumer(estate.other_key.id)
    assert observed is not None
    world.enable_cmk(estate.other_key, "kv-sc", "other", version="", uai="uai-sc")
    stale = observed.consumer
    someone_pinned = world.key_client("kv-sc").get_key("other").properties.version or ""
    world.enable_cmk(estate.other_key, "kv-sc", "other", version=someone_pinned, uai="uai-sc")
    with pytest.raises(Conflict, match="changed since it was read"):
        control.set_versionless(stale)
    reread = control.get_consumer(estate.other_key.id)
    assert reread is not None
    assert reread.consumer.pinned_version == someone_pinned



def test_a_consumer_another_instance_already_moved_is_not_written_again(estate: Estate) -> None:
    """Found by the delivery reliability scenario: a reconciler working from a consumer read before another
    instance's forced adoption (pin, then versionless again) pinned and restored it a second time, since
    the key it is configured with looked unchanged. The version in use is part of what was read."""
    control, world = estate.control, estate.world
    world.enable_cmk(estate.other_key, "kv-sc", "other", version="", uai="uai-sc")
    observed = control.get_consumer(estate.other_key.id)
    assert observed is not None
    stale = observed.consumer
    newer = world.key_client("kv-sc").create_rsa_key("other", size=2048).properties.version or ""
    world.enable_cmk(estate.other_key, "kv-sc", "other", version=newer, uai="uai-sc")  # the other instance: pin
    world.enable_cmk(estate.other_key, "kv-sc", "other", version="", uai="uai-sc")  # ... and restore
    world.faults.writes.clear()
    with pytest.raises(Conflict, match="changed since it was read"):
        control.pin_key_version(stale, newer)
    assert world.faults.writes == []
    reread = control.get_consumer(estate.other_key.id)
    assert reread is not None
    assert (reread.consumer.pinned_version, reread.consumer.current_version) == (None, newer)

def test_get_consumer_of_a_missing_account_or_scope_is_not_found(estate: Estate) -> None:
    missing = f"/subscriptions/{SUB_A}/resourceGroups/{RG}/providers/Microsoft.Storage/storageAccounts/stmissing0000"
    with pytest.raises(NotFound):
        estate.control.get_consumer(missing)
    with pytest.raises(NotFound):
        estate.control.get_consumer(f"{estate.versionless.id}/encryptionScopes/nosuchscope")
    assert estate.control.get_consumer(estate.mmk.id) is None  # exists, uses Microsoft-managed keys
    with pytest.raises(InvalidResourceId):
        estate.control.get_consumer("/subscriptions/x/resourceGroups/y")


def test_throttled_listing_is_transient_with_retry_after(estate: Estate) -> None:
    with pytest.raises(TransientError) as caught:
        estate.control.list_consumers(estate.world.key("kv-sc", "cmk"), subscription_id=SUB_THROTTLED)
    assert caught.value.retry_after == 7


def test_forbidden_listing_is_forbidden(estate: Estate) -> None:
    with pytest.raises(Forbidden, match="403"):
        estate.control.list_consumers(estate.world.key("kv-sc", "cmk"), subscription_id=SUB_FORBIDDEN)


def test_resource_ids_parse_case_insensitively() -> None:
    ids = parse_storage_resource_id(
        f"/SUBSCRIPTIONS/{SUB_A.upper()}/resourcegroups/RG-x/providers/microsoft.storage/storageaccounts/Acct01"
        "/encryptionScopes/Scope-1"
    )
    assert (ids.subscription_id, ids.resource_group, ids.account, ids.scope) == (SUB_A, "RG-x", "acct01", "Scope-1")
    assert ids.account_id.endswith("/providers/Microsoft.Storage/storageAccounts/acct01")


def test_last_key_rotation_moves_when_azure_adopts_a_new_version(estate: Estate) -> None:
    before = estate.control.get_consumer(f"{estate.versionless.id}/encryptionScopes/scopeauto")
    assert before is not None
    estate.world.arm.advance_clock(timedelta(days=1, minutes=1))
    after = estate.control.get_consumer(f"{estate.versionless.id}/encryptionScopes/scopeauto")
    assert after is not None
    assert after.consumer.current_version == estate.key_v2


def test_set_key_is_the_reconcilers_write(estate: Estate) -> None:
    """ports.ConsumerControl: a versioned key pins, the versionless key turns automatic updates on."""
    control, world = estate.control, estate.world
    scope_id = f"{estate.versionless.id}/encryptionScopes/scopepinned"
    observed = control.get_consumer(scope_id)
    assert observed is not None
    versionless = control.set_key(observed.consumer, world.key("kv-sc", "cmk"))
    assert versionless.pinned_version is None
    pinned = control.set_key(versionless, world.key("kv-sc", "cmk", estate.key_v1))
    assert pinned.pinned_version == estate.key_v1
    reread = control.get_consumer(scope_id)
    assert reread is not None
    assert reread.consumer == pinned
    with pytest.raises(InvalidKeyId):
        control.set_key(pinned, world.key("kv-sc", "other"))


def test_the_clients_of_one_connection_reuse_its_connections_across_more_workers_than_requests_keeps(
        estate: Estate) -> None:
    """requests keeps 10 connections per host: with more workers, each extra request opened (and
    discarded) a TLS connection, the largest share of a rotation's CPU. One pool, shared by every client
    of the connection and sized for its workers, opens each connection once."""
    world, workers, rounds = estate.world, 24, 3
    connection = world.connection()
    ids = [estate.versionless.id, estate.pinned.id, estate.other_key.id] * (workers // 3)
    with StorageControl(connection, policy=world.policy) as first, \
            StorageControl(connection, policy=world.policy) as second, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in range(rounds):
            accounts = list(pool.map(lambda pair: pair[0].get_account(pair[1]),
                                     zip([first, second] * (workers // 2), ids, strict=True)))
            assert [account.id for account in accounts] == ids
    pools = connection.transport.session.get_adapter(world.arm.url).poolmanager.pools
    opened = sum(pools[key].num_connections for key in pools.keys())  # noqa: SIM118 - it refuses iteration
    assert 1 <= opened <= workers  # each worker's connection is opened once and reused in the later rounds
    connection.close()


def test_current_states_read_the_consumers_about_to_be_written_with_one_listing(estate: Estate) -> None:
    """From LIST_FROM consumers of one subscription on, their accounts come from the subscription's paged
    listing (a scope is still read on its own), in order, None for an account that is gone: the same
    states as one read each."""
    world = estate.world
    gone = estate.pinned.id.replace(estate.pinned.name, "stgone000")
    ids = [estate.versionless.id, estate.pinned.id, estate.other_key.id,
           f"{estate.versionless.id}/encryptionScopes/scopeauto", gone]
    connection = world.connection()
    with StorageControl(connection, policy=world.policy) as control:
        states = control.current_states(ids)
        assert connection.pacer.stats.by_kind == {"reads": 2}  # the listing's one page, the scope
        assert states[-1] is None
        assert states[:-1] == [control.get_consumer(resource_id) for resource_id in ids[:-1]]
    connection.close()


def test_the_sdk_models_are_prepared_before_the_first_request_of_a_fresh_process() -> None:
    """azure-mgmt-storage maps a model's fields on its first use, unsafely across threads (the writers and
    scope listings start at once): a fresh process's first rotation failed with "dictionary changed size
    during iteration". The first client StorageControl hands out has used every model class once."""
    script = textwrap.dedent("""
        from azure.identity import DefaultAzureCredential
        from azure.mgmt.storage import models
        from controller.adapters.credentials import ArmConnection
        from controller.adapters.storage_control import StorageControl
        from controller.vault_policy import VaultPolicy

        classes = [model for model in vars(models).values()
                   if isinstance(model, type) and getattr(model, "_is_model", False)]
        prepared = lambda: [f"{model.__module__}.{model.__qualname__}" in model._calculated for model in classes]
        assert not all(prepared())
        control = StorageControl(ArmConnection(DefaultAzureCredential()), policy=VaultPolicy.of([]))
        control._client("00000000-0000-0000-0000-000000000000")
        assert classes and all(prepared()), "a model class was not prepared"
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,  # noqa: S603
                          check=False, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
