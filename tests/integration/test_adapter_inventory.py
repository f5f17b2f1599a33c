"""Inventory through the unmodified ResourceGraphClient / StorageManagementClient / KeyVaultManagementClient
against the ARM emulator (Resource Graph mounted on its origin) over HTTPS."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.mgmt.storage.models import EncryptionScope, StorageAccount, StorageAccountUpdateParameters

from controller.adapters import storage_control
from controller.adapters.inventory import ConsumerDirectory, Inventory
from controller.adapters.storage_control import StorageControl
from controller.errors import TransientError
from controller.model import IdentityAccess, InventorySource, parse_vault_resource_id
from tests.integration.adapter_world import RG, SUB_A, SUB_B, World, running_arm

pytestmark = pytest.mark.integration


class CountingStorageControl(StorageControl):
    """Counts the ARM listings the inventory causes (the issue's target: O(accounts))."""

    scope_listings = 0
    account_listings = 0

    def list_scopes(self, account: StorageAccount) -> list[EncryptionScope]:
        self.scope_listings += 1
        return super().list_scopes(account)

    def list_accounts(self, subscription_id: str) -> list[StorageAccount]:
        self.account_listings += 1
        return super().list_accounts(subscription_id)


@dataclass
class Estate:
    world: World
    expected: set[str]  # consumer ids of kv-inv/cmk, lower case
    cmk_accounts: int  # accounts (both subscriptions) whose own encryption uses a Key Vault key
    scoped: list[Any]  # the accounts with Key Vault scopes (one per subscription)


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    with running_arm(Path(tmp_path_factory.mktemp("inventory"))) as (arm, faults):
        world = World(arm, faults)
        world.create_vault("kv-inv")
        world.create_vault("kv-inv-b", subscription=SUB_B)
        keys = world.key_client("kv-inv")
        keys.create_rsa_key("cmk", size=2048)
        keys.create_rsa_key("other", size=2048)
        uai = world.create_identity("uai-inv")
        world.grant_policy("kv-inv", uai.principal_id)
        expected: set[str] = set()
        cmk_accounts = 0
        scoped = []
        for subscription in (SUB_A, SUB_B):
            for index in range(3):
                account = world.create_account(uai="uai-inv", subscription=subscription)
                world.enable_cmk(account, "kv-inv", "cmk", uai="uai-inv", subscription=subscription)
                expected.add(account.id.lower())
                cmk_accounts += 1
                if index == 0:
                    scope = world.create_scope(
                        account, "scopecmk", world.key("kv-inv", "cmk").uri, subscription=subscription
                    )
                    expected.add(scope.id.lower())
                    other_uri = world.key("kv-inv", "other").uri
                    world.create_scope(account, "scopeother", other_uri, subscription=subscription)
                    scoped.append(account)
            other = world.create_account(uai="uai-inv", subscription=subscription)
            world.enable_cmk(other, "kv-inv", "other", uai="uai-inv", subscription=subscription)
            cmk_accounts += 1
            world.create_account(subscription=subscription)  # Microsoft-managed keys: never a candidate
        yield Estate(world, expected, cmk_accounts, scoped)


@contextlib.contextmanager
def resource_graph_answering(estate: Estate, status: int | None) -> Iterator[None]:
    """Within the block Resource Graph answers ``status`` (an error) to every query; None: it answers normally."""
    estate.world.faults.resource_graph_status = status
    try:
        yield
    finally:
        estate.world.faults.resource_graph_status = None


def inventory(estate: Estate, **kwargs: Any) -> tuple[Inventory, CountingStorageControl]:
    world = estate.world
    storage = CountingStorageControl(world.connection(), policy=world.policy)
    kwargs.setdefault("subscriptions", [SUB_A, SUB_B])
    return Inventory(world.connection(), storage, policy=world.policy, **kwargs), storage


def test_resource_graph_finds_consumers_across_subscriptions(estate: Estate) -> None:
    found, storage = inventory(estate)
    with found:
        listing = found.list_consumers(estate.world.key("kv-inv", "cmk"))
        assert listing.source is InventorySource.RESOURCE_GRAPH
        assert listing.fallback_reason == ""
        assert {observed.consumer.resource_id.lower() for observed in listing.consumers} == estate.expected
        assert {observed.subscription_id for observed in listing.consumers} == {SUB_A, SUB_B}
        # Resource Graph rows carry the same properties as ARM: timestamps, current version, identity.
        for observed in listing.consumers:
            assert observed.consumer.last_key_rotation is not None
            assert observed.consumer.current_version is not None
            assert observed.identity.principal_id == estate.world.identities["uai-inv"].principal_id
        assert found.resource_graph_queries == 1
    assert storage.account_listings == 0
    assert storage.scope_listings == estate.cmk_accounts  # one scope listing per CMK account: O(accounts)


def test_resource_graph_pages_with_skip_tokens(estate: Estate) -> None:
    found, _ = inventory(estate, page_rows=2)
    with found:
        listing = found.list_consumers(estate.world.key("kv-inv", "cmk"))
        assert {observed.consumer.resource_id.lower() for observed in listing.consumers} == estate.expected
        assert found.resource_graph_queries == 4  # 8 CMK accounts, 2 a page


def test_more_than_a_thousand_subscriptions_are_queried_in_batches_of_a_thousand(estate: Estate) -> None:
    # Resource Graph takes at most 1,000 subscriptions per query: 1,001 configured ones are two queries.
    others = [f"{index:08x}-0000-4000-8000-000000000000" for index in range(999)]
    found, _ = inventory(estate, subscriptions=[SUB_A, *others, SUB_B])
    estate.world.faults.resource_graph_subscriptions.clear()
    with found:
        listing = found.list_consumers(estate.world.key("kv-inv", "cmk"))
        assert {observed.consumer.resource_id.lower() for observed in listing.consumers} == estate.expected
    assert estate.world.faults.resource_graph_subscriptions == [1000, 1]


def test_subscriptions_limit_the_inventory(estate: Estate) -> None:
    found, _ = inventory(estate, subscriptions=[SUB_B])
    with found:
        listing = found.list_consumers(estate.world.key("kv-inv", "cmk"))
    assert {observed.subscription_id for observed in listing.consumers} == {SUB_B}
    assert len(listing.consumers) == 4


def test_falls_back_to_subscription_listing_when_resource_graph_is_forbidden(estate: Estate) -> None:
    with resource_graph_answering(estate, 403):
        found, storage = inventory(estate)
        with found:
            listing = found.list_consumers(estate.world.key("kv-inv", "cmk"))
    assert listing.source is InventorySource.SUBSCRIPTION_LISTING
    assert "403" in listing.fallback_reason
    assert {observed.consumer.resource_id.lower() for observed in listing.consumers} == estate.expected
    assert storage.account_listings == 2
    assert storage.scope_listings == estate.cmk_accounts


def test_fallback_without_configured_subscriptions_lists_the_readable_ones(estate: Estate) -> None:
    with resource_graph_answering(estate, 404):
        found, _ = inventory(estate, subscriptions=[])
        with found:
            assert set(found.subscriptions()) >= {SUB_A, SUB_B}
            listing = found.list_consumers(estate.world.key("kv-inv", "cmk"))
    assert listing.source is InventorySource.SUBSCRIPTION_LISTING
    assert {observed.consumer.resource_id.lower() for observed in listing.consumers} == estate.expected


def test_without_configured_subscriptions_resource_graph_covers_every_readable_one(estate: Estate) -> None:
    found, _ = inventory(estate, subscriptions=[])
    with found:
        listing = found.list_consumers(estate.world.key("kv-inv", "cmk"))
    assert listing.source is InventorySource.RESOURCE_GRAPH
    assert {observed.consumer.resource_id.lower() for observed in listing.consumers} == estate.expected


def test_throttled_resource_graph_is_transient_not_a_fallback(estate: Estate) -> None:
    with resource_graph_answering(estate, 429):
        found, storage = inventory(estate)
        with found, pytest.raises(TransientError):
            found.list_consumers(estate.world.key("kv-inv", "cmk"))
    assert storage.account_listings == 0


def consumer_ids(listing: Any) -> set[str]:
    return {observed.consumer.resource_id.lower() for observed in listing.consumers}


def test_a_search_soon_after_another_lists_only_the_accounts_with_key_vault_scopes_again(estate: Estate) -> None:
    """Key events come in bursts and each looks through every candidate account: an account whose listing
    just found no Key Vault scope is not listed again within NO_KEY_VAULT_SCOPES_FOR."""
    found, storage = inventory(estate)
    key = estate.world.key("kv-inv", "cmk")
    with found:
        first = found.list_consumers(key)
        listed_first = storage.scope_listings
        second = found.list_consumers(estate.world.key("kv-inv", "other"))
        third = found.list_consumers(key)
    assert listed_first == estate.cmk_accounts
    assert storage.scope_listings - listed_first == 2 * len(estate.scoped)
    assert consumer_ids(first) == consumer_ids(third) == estate.expected
    assert {f"{account.id.lower()}/encryptionscopes/scopeother" for account in estate.scoped} <= consumer_ids(second)


def test_once_the_window_has_passed_every_candidate_account_is_listed_again(
        estate: Estate, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_control, "NO_KEY_VAULT_SCOPES_FOR", 0.0)
    found, storage = inventory(estate)
    with found:
        found.list_consumers(estate.world.key("kv-inv", "cmk"))
        found.list_consumers(estate.world.key("kv-inv", "cmk"))
    assert storage.scope_listings == 2 * estate.cmk_accounts


def test_a_scope_changed_on_an_account_with_key_vault_scopes_is_found_by_the_next_search(estate: Estate) -> None:
    world = estate.world
    account = estate.scoped[0]
    key = world.key("kv-inv", "cmk")
    moved = f"{account.id.lower()}/encryptionscopes/scopeother"
    found, _ = inventory(estate)
    with found:
        before = found.list_consumers(key)
        world.create_scope(account, "scopeother", key.uri)  # someone moves the scope onto the key
        try:
            after = found.list_consumers(key)
        finally:
            world.create_scope(account, "scopeother", world.key("kv-inv", "other").uri)
    assert moved not in consumer_ids(before)
    assert moved in consumer_ids(after)


def test_an_account_changed_since_the_last_search_is_read_as_it_is_now(estate: Estate) -> None:
    """Rows are parsed once per content: a row that changed is parsed again."""
    world = estate.world
    account = estate.scoped[0]
    key = world.key("kv-inv", "cmk")
    storage = world.storage(SUB_A).storage_accounts
    found, _ = inventory(estate)
    with found:
        before = {observed.consumer.resource_id.lower(): observed.consumer for observed in
                  found.list_consumers(key).consumers}
        storage.update(RG, account.name, StorageAccountUpdateParameters(tags={"owner": "payments"}))
        try:
            after = {observed.consumer.resource_id.lower(): observed.consumer for observed in
                     found.list_consumers(key).consumers}
        finally:
            storage.update(RG, account.name, StorageAccountUpdateParameters(tags={}))
    assert before[account.id.lower()].tags == ()
    assert after[account.id.lower()].tags == (("owner", "payments"),)
    assert {resource_id: consumer for resource_id, consumer in after.items() if resource_id != account.id.lower()
            and not resource_id.startswith(account.id.lower() + "/")} == \
        {resource_id: consumer for resource_id, consumer in before.items() if resource_id != account.id.lower()
         and not resource_id.startswith(account.id.lower() + "/")}


@pytest.mark.parametrize("graph_status", [None, 403])
def test_vaults_map_origins_to_arm_ids(estate: Estate, graph_status: int | None) -> None:
    world = estate.world
    with resource_graph_answering(estate, graph_status):
        found, _ = inventory(estate)
        with found:
            vaults = found.list_vaults()
    assert vaults[world.origin("kv-inv")] == parse_vault_resource_id(world.vaults["kv-inv"].id)
    assert vaults[world.origin("kv-inv-b")] == parse_vault_resource_id(world.vaults["kv-inv-b"].id)
    assert vaults[world.origin("kv-inv-b")].subscription_id == SUB_B
    assert vaults[world.origin("kv-inv")].resource_group.lower() == RG


# ---- the reconciler's port (ports.ConsumerInventory) --------------------------------------------------------
def test_consumer_directory_sets_each_consumers_key_access(estate: Estate) -> None:
    world = estate.world
    found, _ = inventory(estate)
    directory = ConsumerDirectory(found, world.connection())
    with found:
        consumers = directory.consumers_of(world.key("kv-inv", "cmk").with_version("0" * 32))
    assert {consumer.resource_id.lower() for consumer in consumers} == estate.expected
    assert {consumer.identity_access for consumer in consumers} == {IdentityAccess.GRANTED}
    assert directory.last_listing is not None
    assert directory.last_listing.source is InventorySource.RESOURCE_GRAPH


@pytest.mark.parametrize("graph_status", [None, 403])
def test_keys_in_use_of_a_vault(estate: Estate, graph_status: int | None) -> None:
    world = estate.world
    with resource_graph_answering(estate, graph_status):
        found, _ = inventory(estate)
        with found:
            in_use = ConsumerDirectory(found, world.connection()).keys_in_use(world.origin("kv-inv"))
            unused_vault = found.keys_in_use(world.origin("kv-inv-b"))
    assert in_use == [world.key("kv-inv", "cmk"), world.key("kv-inv", "other")]
    assert unused_vault == []


@pytest.mark.parametrize("graph_status", [None, 403])
def test_identity_principals_map_to_the_accounts_using_them(estate: Estate, graph_status: int | None) -> None:
    """For the audit analysis: a failed unwrap's caller (object id) named as the storage account(s) it is."""
    world = estate.world
    own = next((a for a in world.storage(SUB_A).storage_accounts.list() if a.tags.get("audit") == "system"), None)
    if own is None:
        own = world.create_account(system=True, tags={"audit": "system"})
    found, _ = inventory(estate)
    with found, resource_graph_answering(estate, graph_status):
        principals = found.identity_principals()
    assert principals[own.identity.principal_id.lower()] == (own.name,)
    shared = principals[world.identities["uai-inv"].principal_id.lower()]
    assert len(shared) == estate.cmk_accounts  # the user-assigned identity of every CMK account
