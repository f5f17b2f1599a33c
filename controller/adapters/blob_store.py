"""BlobStore on azure-storage-blob: listing with metadata, ETag-conditional metadata writes, rewrite.

The SDK's own retries are turned off for the clients built here (``retry_total=0``): the re-wrap
walker owns retrying, with one back-off shared by all its workers that honours Retry-After. A retried
conditional write whose first attempt did land answers 412, which the walker resolves by reading the
blob again (it is then already on the target version): nothing is written twice.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, unquote
from xml.etree import ElementTree

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.storage.blob import BlobClient, BlobServiceClient, ContainerClient, ContentSettings

from controller.adapters.azure_errors import translated
from controller.adapters.http_transport import pooled_transport
from controller.envelope import parse_envelope
from controller.errors import Conflict, ControllerError, NotFound, PermanentError, TransientError
from controller.ports import BlobItem, BlobPage
from controller.rewrap.strategies import STAGING_PREFIX

log = logging.getLogger(__name__)
#: Attempts to delete a rewrite's staging copy, and the longest Retry-After honoured between two.
STAGING_DELETE_ATTEMPTS = 4
STAGING_DELETE_MAX_WAIT = 5.0

#: Azure returns at most 5,000 blobs per List Blobs page.
MAX_PAGE_SIZE = 5000
#: The first page of a listing is short, so that work starts at once: the re-wrap walker lists each
#: following (full) page while it works on the one before.
FIRST_PAGE_SIZE = 250


def blob_service_client(
    endpoint: str | None = None,
    *,
    credential: Any = None,
    connection_string: str | None = None,
    connections: int = 16,
    **client_kwargs: Any,
) -> BlobServiceClient:
    """A BlobServiceClient without SDK retries, with a connection pool sized for ``connections`` workers.

    Give either ``connection_string`` (the local emulator) or ``endpoint`` with a token ``credential``.
    """
    kwargs: dict[str, Any] = {"retry_total": 0, "transport": pooled_transport(connections), **client_kwargs}
    if connection_string:
        return BlobServiceClient.from_connection_string(connection_string, **kwargs)
    if not endpoint:
        raise ValueError("a blob endpoint or a connection string is required")
    return BlobServiceClient(endpoint, credential=credential, **kwargs)


def _blob_page(body: bytes) -> BlobPage:
    """The blobs (name, ETag, metadata) and next marker of a List Blobs response body."""
    try:
        # The storage service's own response over the authenticated pipeline; expat resolves no external
        # entities and bounds entity expansion.
        root = ElementTree.fromstring(body)  # noqa: S314 # nosec B314
    except ElementTree.ParseError as err:
        raise PermanentError("list blobs: the response is not XML") from err
    items: list[BlobItem] = []
    for blob in root.iterfind("Blobs/Blob"):
        name_element = blob.find("Name")
        etag = blob.findtext("Properties/Etag")
        if name_element is None or name_element.text is None or not etag:
            raise PermanentError("list blobs: a blob without a name or an ETag")
        name = name_element.text
        if name_element.get("Encoded") == "true":  # names with characters XML cannot carry
            name = unquote(name)
        metadata = {entry.tag: entry.text or "" for entry in blob.iterfind("Metadata/*")}
        items.append(BlobItem(name=name, etag=_quoted(etag), metadata=metadata))
    return BlobPage(items=tuple(items), next_marker=root.findtext("NextMarker") or None)


def _quoted(etag: str) -> str:
    # List Blobs returns ETags without quotes on some services, the blob headers with them; an
    # If-Match header wants the quoted form.
    return etag if etag.startswith('"') else f'"{etag}"'


class AzureBlobStore:
    """The BlobStore port over one storage account's blob endpoint."""

    def __init__(self, service: BlobServiceClient, *, page_size: int = MAX_PAGE_SIZE) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1-{MAX_PAGE_SIZE}")
        self._service = service
        self._page_size = page_size
        self._containers: dict[str, ContainerClient] = {}
        self._lock = threading.Lock()

    @property
    def service(self) -> BlobServiceClient:
        return self._service

    def _container(self, container: str) -> ContainerClient:
        # A client per call would rebuild its pipeline every time: keep one per container.
        with self._lock:
            client = self._containers.get(container)
            if client is None:
                client = self._containers[container] = self._service.get_container_client(container)
            return client

    def list_blobs(self, container: str, *, prefix: str | None, marker: str | None) -> BlobPage:
        """One List Blobs page with metadata, read from the response's XML directly.

        The SDK's generic model deserializer costs about as much CPU per listed blob as a whole
        metadata write does; ElementTree reads the same response in a small fraction of that. The
        request still goes through the client's own pipeline (authentication, transport, no retries).
        """
        page_size = self._page_size if marker else min(self._page_size, FIRST_PAGE_SIZE)
        client = self._container(container)
        params = {"restype": "container", "comp": "list", "include": "metadata", "maxresults": str(page_size)}
        # Query values go into the URL as given (and into the shared-key signature as decoded):
        # quote them as the SDK's own operations do.
        if prefix:
            params["prefix"] = quote(prefix, safe="")
        if marker:
            params["marker"] = quote(marker, safe="")
        request = HttpRequest("GET", client.url, params=params,
                              headers={"x-ms-version": client.api_version, "Accept": "application/xml"})
        with translated(f"list blobs of {container}"):
            # The generated client's documented way to send a request it has no operation for.
            response = client._client._send_request(request)
            if response.status_code != 200:
                raise HttpResponseError(response=response)
            body = response.read()
        return _blob_page(body)

    def get_properties(self, container: str, name: str) -> BlobItem:
        with translated(f"read properties of {container}/{name}"):
            properties = self._container(container).get_blob_client(name).get_blob_properties()
        return BlobItem(name=name, etag=_quoted(properties.etag), metadata=dict(properties.metadata or {}))

    def set_metadata(self, container: str, name: str, metadata: Mapping[str, str], *, if_match: str) -> str:
        with translated(f"write metadata of {container}/{name}"):
            result = (
                self._container(container)
                .get_blob_client(name)
                .set_blob_metadata(dict(metadata), etag=if_match, match_condition=MatchConditions.IfNotModified)
            )
        return _quoted(str(result["etag"]))


class AzureBlobRewriter:
    """The BlobRewriter port over azure-storage-blob's client-side encryption (protocol 2.0).

    See controller.rewrap.strategies (rewrite mode) for the procedure and its guarantees. The plaintext of
    one blob is held in memory per worker: lower the concurrency for very large blobs. Key Vault
    calls per blob: one unwrap to read the blob, one to verify the new copy (the wrap is local).

    ``encryption_scope`` writes the new copy, and swaps it in, under that encryption scope (a
    synchronous Copy Blob From URL; ``source_authorization`` returns "Bearer <token>" for the source
    when the account is reached with Entra ID rather than a shared key).
    """

    def __init__(
        self,
        service: BlobServiceClient,
        *,
        target_kek: Any,
        key_resolver: Callable[[str], Any],
        encryption_scope: str | None = None,
        source_authorization: Callable[[], str] | None = None,
        copy_poll_seconds: float = 0.5,
        copy_timeout_seconds: float = 300.0,
    ) -> None:
        self._service = service
        self._target_kek = target_kek
        self._key_resolver = key_resolver
        self._scope = encryption_scope
        self._source_authorization = source_authorization
        self._copy_poll = copy_poll_seconds
        self._copy_timeout = copy_timeout_seconds

    def _client(self, container: str, name: str, *, writer: bool) -> BlobClient:
        client = self._service.get_blob_client(container, name)
        client.require_encryption = True
        if writer:
            client.key_encryption_key = self._target_kek
            client.encryption_version = "2.0"
        else:
            client.key_resolver_function = self._key_resolver
        return client

    def rewrite(self, container: str, item: BlobItem) -> None:
        where = f"{container}/{item.name}"
        reader = self._client(container, item.name, writer=False)
        with translated(f"read {where}"):
            downloader = reader.download_blob(etag=item.etag, match_condition=MatchConditions.IfNotModified)
            plaintext = downloader.readall()
        properties = downloader.properties
        digest = hashlib.sha256(plaintext).digest()
        metadata = {key: value for key, value in properties.metadata.items() if key.lower() != "encryptiondata"}

        staging_name = STAGING_PREFIX + hashlib.sha256(item.name.encode("utf-8")).hexdigest()
        staging = self._client(container, staging_name, writer=True)
        with translated(f"write the new copy of {where}"):
            staged = staging.upload_blob(
                plaintext,
                overwrite=True,
                metadata=metadata,
                content_settings=_without_md5(properties.content_settings),
                encryption_scope=self._scope,
            )
        del plaintext
        staged_etag = str(staged["etag"])
        try:
            staged_envelope = self._verify(container, staging_name, staged_etag, digest, where)
            self._swap(container, item, staging, staged_etag=staged_etag, envelope=staged_envelope, where=where)
        except NotFound:
            # The blob, or only our staging copy? Another worker rewriting the same blob at the same time (a
            # scale-out page taken over while its first worker still ran) shares the staging name and may
            # have replaced or deleted our copy: a lost race, not a vanished blob.
            if self._exists(container, item.name):
                raise Conflict(f"the new copy of {where} was replaced by another rewrite of it") from None
            raise
        finally:
            # The staging copy is only ever a duplicate: of the verified data once swapped in, or of
            # data that was not swapped in (failed verification, lost race) and is discarded.
            self._delete_staging(staging, staged_etag, where)

    def _exists(self, container: str, name: str) -> bool:
        try:
            with translated(f"read {container}/{name}"):
                self._service.get_blob_client(container, name).get_blob_properties()
        except NotFound:
            return False
        return True

    def _delete_staging(self, staging: BlobClient, etag: str, where: str) -> None:
        """Delete the staging copy, retrying a transient failure a few times (no SDK retries here, and no
        later attempt of a blob rewritten already would delete it): a copy left behind is a stray blob in
        the customer's container."""
        for attempt in range(STAGING_DELETE_ATTEMPTS):
            try:
                with translated(f"delete the copy of {where}"):
                    staging.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
            except TransientError as err:
                if attempt + 1 == STAGING_DELETE_ATTEMPTS:
                    log.warning("staging copy of %s left behind: %s", where, err)
                    return
                wait = err.retry_after if err.retry_after is not None else 0.2 * 2**attempt
                time.sleep(min(wait, STAGING_DELETE_MAX_WAIT))
            except ControllerError:  # gone already (a lost answer to an earlier delete), or replaced
                return
            else:
                return

    def _verify(self, container: str, staging_name: str, etag: str, digest: bytes, where: str) -> str:
        verifier = self._client(container, staging_name, writer=False)
        with translated(f"verify the new copy of {where}"):
            check = verifier.download_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
            if hashlib.sha256(check.readall()).digest() != digest:
                raise PermanentError(f"the new copy of {where} does not decrypt to the original data")
        envelope = str(check.properties.metadata.get("encryptiondata", ""))
        if parse_envelope(envelope).wrapped_key.key_id != self._target_kek.get_kid():
            raise PermanentError(f"the new copy of {where} is not wrapped by the target key")
        return envelope

    def _swap(
        self, container: str, item: BlobItem, staging: BlobClient, *, staged_etag: str, envelope: str, where: str
    ) -> None:
        destination = self._service.get_blob_client(container, item.name)
        options: dict[str, Any] = {
            "etag": item.etag,
            "match_condition": MatchConditions.IfNotModified,
            "source_etag": staged_etag,
            "source_match_condition": MatchConditions.IfNotModified,
        }
        if self._scope is not None:
            options.update(requires_sync=True, encryption_scope=self._scope)
            if self._source_authorization is not None:
                options["source_authorization"] = self._source_authorization()
        with translated(f"swap in the new copy of {where}"):
            copy = destination.start_copy_from_url(staging.url, **options)
            status, landed = copy.get("copy_status"), copy.get("etag")
            deadline = time.monotonic() + self._copy_timeout
            while status == "pending":
                # Same-account copies complete at once in practice; Azure may still answer pending.
                if time.monotonic() > deadline:
                    raise TransientError(f"copy onto {where} still pending")
                time.sleep(self._copy_poll)
                copied = destination.get_blob_properties()
                status, landed = copied.copy.status, copied.etag
            after = destination.get_blob_properties()
        if status != "success":
            raise PermanentError(f"swapping in the new copy of {where} ended {status}")
        # Another ETag: the application wrote the blob after the copy landed. That write is theirs and
        # stands; the swap itself succeeded, so it is not a failure (nothing of theirs was replaced).
        if after.etag == landed and after.metadata.get("encryptiondata") != envelope:
            raise PermanentError(f"the blob swapped in for {where} is not the verified copy")


def _without_md5(settings: ContentSettings) -> ContentSettings:
    # The stored Content-MD5 is the digest of the old ciphertext: the new copy has its own.
    return ContentSettings(
        content_type=settings.content_type,
        content_encoding=settings.content_encoding,
        content_language=settings.content_language,
        content_disposition=settings.content_disposition,
        cache_control=settings.cache_control,
    )
