"""Inventory across the subscriptions in CMK_SUBSCRIPTIONS: Resource Graph first, per-subscription listing as fallback.

Resource Graph (azure-mgmt-resourcegraph) answers "every storage account that uses a Key Vault key"
and "every vault" in one paged query over all subscriptions (1,000 rows a page, continued with skip
tokens). The key is matched here, not in KQL: ``keyvaulturi`` is stored as the customer wrote it
(trailing slash, case, an explicit :443), so it is compared as a normalised origin. Encryption scopes
are listed per candidate account through StorageControl (O(accounts) ARM calls, see
storage_control.ScopeSearch).

When Resource Graph refuses (403: the identity lacks Microsoft.ResourceGraph/resources/read, or the
cloud has no Resource Graph: 400/404) the same answer comes from listing each subscription's
storage accounts (and vaults). Throttling (429) and service errors stay TransientError: the caller
retries rather than switching to the slower path. With no CMK_SUBSCRIPTIONS, Resource Graph covers
every subscription the identity can read, and the fallback lists them first (GET /subscriptions).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from azure.core.rest import HttpRequest
from azure.mgmt.keyvault import KeyVaultManagementClient
from azure.mgmt.resourcegraph import ResourceGraphClient
from azure.mgmt.storage.models import StorageAccount

from controller.adapters.azure_errors import translated
from controller.adapters.credentials import ArmConnection
from controller.adapters.key_access import KeyAccess
from controller.adapters.resource_graph import PAGE_ROWS, query_rows
from controller.adapters.storage_control import ScopeSearch, StorageControl
from controller.audit import principal_accounts
from controller.errors import InvalidInput, InvalidKeyId, InvalidResourceId, NotFound, PermanentError
from controller.model import (
    Consumer,
    ConsumerListing,
    InventorySource,
    KeyRef,
    VaultOrigin,
    VaultResourceId,
    normalise_origin,
    parse_vault_resource_id,
)
from controller.vault_policy import VaultPolicy

_SUBSCRIPTIONS_API_VERSION = "2022-12-01"
# Listing subscriptions needs only an ARM pipeline (azure-mgmt-resource is not a dependency): a management
# client's send_request provides one; the subscription id it is built with is not part of that request.
_NO_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"

CMK_ACCOUNTS_QUERY = (
    "resources"
    " | where type =~ 'microsoft.storage/storageaccounts'"
    " | where tostring(properties.encryption.keySource) =~ 'Microsoft.Keyvault'"
    " | project id, name, type, location, tags, identity, properties"
    " | order by id asc"
)
ALL_ACCOUNTS_QUERY = (
    "resources"
    " | where type =~ 'microsoft.storage/storageaccounts'"
    " | project id, name, type, location, tags, identity, properties"
    " | order by id asc"
)
ACCOUNT_IDENTITIES_QUERY = (
    "resources"
    " | where type =~ 'microsoft.storage/storageaccounts'"
    " | project id, name, identity"
    " | order by id asc"
)
VAULTS_QUERY = (
    "resources"
    " | where type =~ 'microsoft.keyvault/vaults'"
    " | project id, vaultUri = tostring(properties.vaultUri)"
    " | order by id asc"
)


class Inventory:
    """Finds consumers of keys and vaults' ARM ids across the configured subscriptions."""

    def __init__(
        self,
        arm: ArmConnection,
        storage: StorageControl,
        *,
        subscriptions: Sequence[str] = (),
        policy: VaultPolicy,
        page_rows: int = PAGE_ROWS,
    ) -> None:
        if not 1 <= page_rows <= PAGE_ROWS:
            raise ValueError(f"page_rows must be 1-{PAGE_ROWS}")
        self._page_rows = page_rows
        self._arm = arm
        self.storage = storage
        self._subscriptions = tuple(subscription.lower() for subscription in subscriptions)
        self._policy = policy
        self._graph = ResourceGraphClient(arm.credential, **arm.client_options())
        self._vault_clients: dict[str, KeyVaultManagementClient] = {}
        self.resource_graph_queries = 0  # requests sent (pages), for cost checks
        # account id (lower case) -> (its row's content, that row as a model): see _account
        self._accounts: dict[str, tuple[str, StorageAccount]] = {}
        self._accounts_lock = threading.Lock()

    def close(self) -> None:
        self._graph.close()
        for client in self._vault_clients.values():
            client.close()
        self._vault_clients.clear()

    def __enter__(self) -> Inventory:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    # ---- consumers ----------------------------------------------------------------------------------
    def list_consumers(self, key: KeyRef, *, scopes: ScopeSearch = ScopeSearch.CMK_ACCOUNTS) -> ConsumerListing:
        """Every storage account and encryption scope configured with ``key`` (any version)."""
        query = ALL_ACCOUNTS_QUERY if scopes is ScopeSearch.ALL_ACCOUNTS else CMK_ACCOUNTS_QUERY
        try:
            rows = list(self.query(query))
        except PermanentError as err:  # 403, 404, 400 (unsupported): the slower path still works
            consumers = [
                observed
                for subscription in self.subscriptions()
                for observed in self.storage.list_consumers(key, subscription_id=subscription, scopes=scopes)
            ]
            return ConsumerListing(key, tuple(consumers), InventorySource.SUBSCRIPTION_LISTING, str(err))
        accounts = [self._account(row) for row in rows]
        consumers = list(self.storage.consumers_among(key, accounts, scopes=scopes))
        return ConsumerListing(key, tuple(consumers), InventorySource.RESOURCE_GRAPH)

    def keys_in_use(self, vault: VaultOrigin, *, scopes: ScopeSearch = ScopeSearch.CMK_ACCOUNTS) -> list[KeyRef]:
        """The versionless keys of ``vault`` that at least one account or encryption scope is configured with."""
        query = ALL_ACCOUNTS_QUERY if scopes is ScopeSearch.ALL_ACCOUNTS else CMK_ACCOUNTS_QUERY
        try:
            accounts = [self._account(row) for row in self.query(query)]
        except PermanentError:
            accounts = [
                account
                for subscription in self.subscriptions()
                for account in self.storage.list_accounts(subscription)
            ]
        in_vault = self.storage.consumers_matching(lambda key: key.vault == vault, accounts, scopes=scopes)
        keys: dict[str, KeyRef] = {}
        for observed in in_vault:
            keys.setdefault(observed.consumer.key.name.lower(), observed.consumer.key.versionless)
        return sorted(keys.values(), key=lambda key: key.name.lower())

    def _account(self, row: Mapping[str, Any]) -> StorageAccount:
        """A Resource Graph row as the SDK's model, parsed once per content: every key event reads every CMK
        account's row, and parsing a row into the model costs twenty times comparing its content. The controller
        only reads the model, so one row content answers many searches, concurrent ones too."""
        content = json.dumps(row, sort_keys=True, default=str)
        account_id = str(row.get("id") or "").lower()
        with self._accounts_lock:
            held = self._accounts.get(account_id)
        if held is not None and held[0] == content:
            return held[1]
        account = StorageAccount(row)
        with self._accounts_lock:
            self._accounts[account_id] = (content, account)
        return account

    # ---- identities ---------------------------------------------------------------------------------
    def identity_principals(self) -> dict[str, tuple[str, ...]]:
        """Principal id -> the storage accounts that authenticate as it: an account's system-assigned
        identity, or a user-assigned identity the account uses (several accounts may share one)."""
        try:
            pairs = [(str(row.get("name") or ""), _mapping(row.get("identity"))) for row in
                     self.query(ACCOUNT_IDENTITIES_QUERY)]
        except PermanentError:
            pairs = [(account.name or "", account.identity.as_dict() if account.identity else None)
                     for subscription in self.subscriptions() for account in self.storage.list_accounts(subscription)]
        return principal_accounts(pairs)

    # ---- vaults -------------------------------------------------------------------------------------
    def list_vaults(self) -> dict[VaultOrigin, VaultResourceId]:
        """Vault origin (from ARM's properties.vaultUri) -> ARM id, for every vault in scope.

        Vaults whose URI is not a cloud vault host nor a configured custom origin are left out.
        """
        try:
            pairs = [(str(row.get("id", "")), str(row.get("vaultUri") or "")) for row in self.query(VAULTS_QUERY)]
        except PermanentError:
            pairs = list(self._list_vaults_per_subscription())
        vaults: dict[VaultOrigin, VaultResourceId] = {}
        for resource_id, vault_uri in pairs:
            try:
                origin = normalise_origin(vault_uri.rstrip("/"))
                vaults[self._policy.parse_vault_origin(origin)] = parse_vault_resource_id(
                    resource_id
                )
            except (InvalidKeyId, InvalidResourceId):
                continue
        return vaults

    def _list_vaults_per_subscription(self) -> Iterator[tuple[str, str]]:
        for subscription in self.subscriptions():
            client = self._vault_client(subscription)
            with translated(f"list vaults of subscription {subscription}"):
                for vault in client.vaults.list_by_subscription():
                    uri = vault.properties.vault_uri if vault.properties else None
                    if vault.id and uri:
                        yield vault.id, uri

    def _vault_client(self, subscription: str) -> KeyVaultManagementClient:
        client = self._vault_clients.get(subscription)
        if client is None:
            client = KeyVaultManagementClient(self._arm.credential, subscription, **self._arm.client_options())
            self._vault_clients[subscription] = client
        return client

    # ---- Resource Graph and subscriptions -----------------------------------------------------------
    def query(self, kql: str) -> Iterator[Mapping[str, Any]]:
        """Rows of a Resource Graph query over the configured subscriptions, every page."""
        yield from query_rows(self._graph, kql, self._subscriptions, page_rows=self._page_rows,
                              on_page=self._count_graph_query)

    def _count_graph_query(self) -> None:
        self.resource_graph_queries += 1

    def subscriptions(self) -> tuple[str, ...]:
        """CMK_SUBSCRIPTIONS, or (when empty) every subscription the identity can read."""
        if self._subscriptions:
            return self._subscriptions
        found: list[str] = []
        url: str | None = f"/subscriptions?api-version={_SUBSCRIPTIONS_API_VERSION}"
        while url:
            with translated("list subscriptions"):
                response = self._vault_client(_NO_SUBSCRIPTION).send_request(HttpRequest("GET", url))
                response.raise_for_status()
                page = response.json()
            found += [str(item["subscriptionId"]).lower() for item in page.get("value", []) if "subscriptionId" in item]
            url = page.get("nextLink")
        return tuple(found)


class ConsumerDirectory:
    """ports.ConsumerInventory for the rotation reconciler: consumers with their identity's key access.

    Each ``consumers_of`` call is one run for KeyAccess: every vault's grants are read once for all
    of the key's consumers, and the vault ids come from one Resource Graph query (or vault listing).
    """

    def __init__(
        self, inventory: Inventory, arm: ArmConnection, *, scopes: ScopeSearch = ScopeSearch.CMK_ACCOUNTS
    ) -> None:
        self._inventory = inventory
        self._arm = arm
        self._scopes = scopes
        self.last_listing: ConsumerListing | None = None  # how the last consumers were found (source, fallback)

    def consumers_of(self, key: KeyRef) -> list[Consumer]:
        listing = self._inventory.list_consumers(key.versionless, scopes=self._scopes)
        self.last_listing = listing
        with KeyAccess(self._arm, self._inventory.list_vaults) as access:
            return [access.with_access(observed) for observed in listing.consumers]

    def keys_in_use(self, vault: VaultOrigin) -> list[KeyRef]:
        return self._inventory.keys_in_use(vault, scopes=self._scopes)

    def refresh(self, consumers: Sequence[Consumer]) -> list[Consumer | None]:
        states = self._inventory.storage.current_states([consumer.resource_id for consumer in consumers])
        return [None if observed is None else replace(observed.consumer, identity_access=consumer.identity_access)
                for consumer, observed in zip(consumers, states, strict=True)]

    def reread(self, consumer: Consumer) -> Consumer | None:
        try:
            observed = self._inventory.storage.get_consumer(consumer.resource_id)
        except NotFound:
            return None
        if observed is None:
            return None
        with KeyAccess(self._arm, self._inventory.list_vaults) as access:
            return access.with_access(observed)


if TYPE_CHECKING:  # mypy proves the adapter satisfies its port
    from controller.ports import ConsumerInventory

    def _implements_port(adapter: ConsumerDirectory) -> ConsumerInventory:
        return adapter


_STORAGE_ACCOUNT_NAME = re.compile(r"^[a-z0-9]{3,24}$")


class BlobEndpoints:
    """Storage account name -> its blob endpoint, as ARM reports it (``primaryEndpoints.blob``).

    Never built from the name: sovereign clouds, DNS zone endpoints and the local sandbox all have
    their own endpoints. Looked up once per account per process (one Resource Graph query).
    """

    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, account: str) -> str:
        name = account.lower()
        if not _STORAGE_ACCOUNT_NAME.match(name):
            raise InvalidInput(f"{account[:64]!r} is not a storage account name")
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None:
            return cached
        rows = list(self._inventory.query(
            "resources | where type =~ 'microsoft.storage/storageaccounts' "
            f"| where name =~ '{name}' | project blob = tostring(properties.primaryEndpoints.blob)"
        ))
        endpoints = {str(row.get("blob") or "") for row in rows} - {""}
        if len(endpoints) != 1:
            raise NotFound(f"storage account {name}: {len(endpoints)} blob endpoints found in the inventory")
        endpoint = endpoints.pop().rstrip("/")
        with self._lock:
            self._cache[name] = endpoint
        return endpoint


def _mapping(value: object) -> Mapping[str, object] | None:
    return value if isinstance(value, Mapping) else None
