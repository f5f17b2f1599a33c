"""The RewrapBackend for Azure: per work item, the ports over one account's blob endpoint and the vault.

Shared across items of one process: the Key Vault clients and unwrapper (so each old key version's
public key is fetched once per process, not once per item), the target wrappers (one get per target
version) and the checkpoint table. Blob service clients are built per account.

Endpoints: the account's blob endpoint (as the inventory reports it, or the operator gives it) with the
given token credential; for the local emulator (Azurite serves one account) a connection string instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from azure.core.credentials import TokenCredential
from azure.storage.blob import BlobServiceClient

from controller.adapters.blob_store import AzureBlobRewriter, AzureBlobStore, blob_service_client
from controller.adapters.key_vault_crypto import (
    VaultClients,
    VaultKeyEncryptionKey,
    VaultKeyUnwrapper,
    fetch_public_wrapper,
    key_resolver,
)
from controller.model import KeyRef
from controller.ports import RewrapCheckpoint, RewrapPorts
from controller.rewrap.work import RewrapMode, RewrapWorkItem
from controller.rewrap.wrapping import RsaPublicKeyWrapper

#: Blobs per listing page in rewrite mode (re-wrap pages are Azure's maximum, 5,000).
REWRITE_PAGE_SIZE = 100
#: Blobs per listing page of a scale-out job: one listing page becomes one page item (whose names
#: and ETags fit a queue message), which a worker reads back with one List Blobs call at its marker.
SCALE_OUT_PAGE_SIZE = 250


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
                encryption_scope=item.encryption_scope,
            )
        # The budget is checked between pages: a rewrite moves whole blobs, so its pages stay small
        # enough to finish well inside the function timeout.
        page_size = self._page_size if rewriter is None else min(self._page_size, REWRITE_PAGE_SIZE)
        if item.scale_out:
            page_size = min(page_size, SCALE_OUT_PAGE_SIZE)
        return RewrapPorts(
            store=AzureBlobStore(service, page_size=page_size),
            unwrapper=self._unwrapper,
            wrapper=wrapper,
            checkpoint=self._checkpoint,
            rewriter=rewriter,
        )

    def target_version(self, key: KeyRef) -> KeyRef:
        return self._vault_clients.key_ref(self.wrapper(key.uri).key_id)

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
    credential: TokenCredential, *, endpoint: Callable[[str], str]
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
