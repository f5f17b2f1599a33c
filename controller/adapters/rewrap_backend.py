"""The RewrapBackend for Azure: per work item, the ports over one account's blob endpoint and the vault.

Shared across items of one process: the Key Vault clients and unwrapper (so each old key version's
public key is fetched once per process, not once per item), the target wrappers (one get per target
version) and the checkpoint table. Blob service clients are built per account.

Endpoints: ``https://<account>.blob.core.windows.net`` with the given token credential in Azure; for
the local emulator (Azurite serves one account) a connection string instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from azure.core.credentials import TokenCredential
from azure.data.tables import TableClient
from azure.storage.blob import BlobServiceClient

from controller.adapters.blob_store import AzureBlobRewriter, AzureBlobStore, blob_service_client, pooled_transport
from controller.adapters.key_vault_crypto import (
    VaultClients,
    VaultKeyEncryptionKey,
    VaultKeyUnwrapper,
    fetch_public_wrapper,
    key_resolver,
)
from controller.adapters.rewrap_checkpoint import TableRewrapCheckpoint
from controller.ports import RewrapCheckpoint
from controller.rewrap import RsaPublicKeyWrapper
from controller.rewrap_jobs import MAX_CONCURRENCY, RewrapMode, RewrapPorts, RewrapWorkItem

#: Blobs per listing page in rewrite mode (re-wrap pages are Azure's maximum, 5,000).
REWRITE_PAGE_SIZE = 100


def azure_blob_endpoint(account: str) -> str:
    return f"https://{account}.blob.core.windows.net"


class AzureRewrapBackend:
    def __init__(
        self,
        *,
        vault_clients: VaultClients,
        blob_service: Callable[[str, int], BlobServiceClient],
        checkpoint: RewrapCheckpoint,
        page_size: int = 5000,
    ) -> None:
        self._vault_clients = vault_clients
        self._blob_service = blob_service
        self._checkpoint = checkpoint
        self._page_size = page_size
        self._unwrapper = VaultKeyUnwrapper(vault_clients)
        self._wrappers: dict[str, RsaPublicKeyWrapper] = {}
        self._lock = threading.Lock()

    def open(self, item: RewrapWorkItem) -> RewrapPorts:
        service = self._blob_service(item.account, item.concurrency)
        wrapper = self.wrapper(item.key_id)
        rewriter = None
        if item.mode is RewrapMode.REWRITE:
            rewriter = AzureBlobRewriter(
                service,
                target_kek=VaultKeyEncryptionKey(wrapper.key_id, self._unwrapper, wrapper=wrapper),
                key_resolver=key_resolver(self._unwrapper),
            )
        # The budget is checked between pages: a rewrite moves whole blobs, so its pages stay small
        # enough to finish well inside the function timeout.
        page_size = self._page_size if rewriter is None else min(self._page_size, REWRITE_PAGE_SIZE)
        return RewrapPorts(
            store=AzureBlobStore(service, page_size=page_size),
            unwrapper=self._unwrapper,
            wrapper=wrapper,
            checkpoint=self._checkpoint,
            rewriter=rewriter,
        )

    def wrapper(self, key_id: str) -> RsaPublicKeyWrapper:
        with self._lock:
            cached = self._wrappers.get(key_id)
        if cached is not None:
            return cached
        wrapper = fetch_public_wrapper(self._vault_clients, key_id)
        with self._lock:
            self._wrappers[key_id] = wrapper
        return wrapper


def token_blob_services(
    credential: TokenCredential, *, endpoint: Callable[[str], str] = azure_blob_endpoint
) -> Callable[[str, int], BlobServiceClient]:
    """Blob service clients for any account, authenticated with a token credential (no keys)."""

    def build(account: str, connections: int) -> BlobServiceClient:
        return blob_service_client(endpoint(account), credential=credential, connections=connections)

    return build


def emulator_blob_services(connection_string: str) -> Callable[[str, int], BlobServiceClient]:
    """The local emulator's one account, whatever account the item names."""

    def build(account: str, connections: int) -> BlobServiceClient:
        return blob_service_client(connection_string=connection_string, connections=connections)

    return build


def build_rewrap_backend(
    *,
    credential: TokenCredential,
    vaults: Sequence[str],
    checkpoint_table: TableClient,
    emulator_connection_string: str | None = None,
    page_size: int = 5000,
    vault_ca_bundle: str | None = None,
) -> AzureRewrapBackend:
    """The backend the composition root wires into Dependencies.rewrap.

    ``credential`` reaches the vaults and (in Azure) the customer accounts' blob endpoints; locally,
    ``emulator_connection_string`` (Azurite's, whose one account stands for every account) replaces
    the blob side. Checkpoints go to ``checkpoint_table`` (the ledger table). ``vault_ca_bundle``
    trusts the local sandbox's vault CA (which also turns off the challenge's resource check, since
    sandbox vaults live on loopback origins).
    """
    client_kwargs: dict[str, Any] = {}
    transport_kwargs: dict[str, Any] = {}
    if vault_ca_bundle:
        client_kwargs["verify_challenge_resource"] = False
        transport_kwargs["connection_verify"] = vault_ca_bundle
    blob_service = (
        emulator_blob_services(emulator_connection_string)
        if emulator_connection_string
        else token_blob_services(credential)
    )
    return AzureRewrapBackend(
        vault_clients=VaultClients(
            credential,
            allowed_origins=vaults,
            custom_origins=vaults,
            transport=pooled_transport(MAX_CONCURRENCY, **transport_kwargs),
            **client_kwargs,
        ),
        blob_service=blob_service,
        checkpoint=TableRewrapCheckpoint(checkpoint_table),
        page_size=page_size,
    )
