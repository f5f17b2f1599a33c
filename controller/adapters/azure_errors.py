"""Translate azure-core exceptions into the controller's hierarchy, once, at the adapter boundary."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from controller.errors import (
    Conflict,
    ConnectionLost,
    Forbidden,
    NotAuthenticated,
    NotFound,
    PermanentError,
    TransientError,
    Unreachable,
)

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def retry_after_seconds(err: HttpResponseError) -> float | None:
    """Retry-After (seconds) or x-ms-retry-after-ms from the failed response, if the service sent one."""
    response = err.response
    if response is None:
        return None
    headers = getattr(response, "headers", None) or {}
    for header, scale in (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001), ("Retry-After", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue
    return None


_NETWORK_CAUSES = (
    (("CERTIFICATE_VERIFY_FAILED", "certificate verify failed"),
     "TLS: the server's certificate is not trusted (a private CA goes in REQUESTS_CA_BUNDLE)"),
    (("SSL", "TLS"), "TLS handshake failed"),
    (("Name or service not known", "getaddrinfo", "nodename nor servname", "No address associated"),
     "DNS: the host name does not resolve"),
    (("Connection refused",), "connection refused: nothing listens there"),
    (("timed out", "Timeout"), "the connection timed out"),
    (("Connection reset", "Connection aborted", "RemoteDisconnected"), "the connection was reset"),
)
#: How http.client (and urllib3) report a CONNECT the HTTPS proxy refused: only its status line is kept,
#: so that is what the operator is shown (a proxy that cannot resolve the host says so there).
_PROXY_REFUSAL = re.compile(r"Tunnel connection failed: (\d{3}[^'\"]*)")
#: urllib3's NameResolutionError: the host a direct connection could not resolve.
_UNRESOLVED_HOST = re.compile(r"Failed to resolve '([^']+)'")


def network_failure(err: Exception) -> str:
    """What went wrong on the network, in a few words an operator can act on."""
    text = str(err)
    if refusal := _PROXY_REFUSAL.search(text):
        return f"the HTTPS proxy refused the connection: {refusal.group(1).strip()}"
    if unresolved := _UNRESOLVED_HOST.search(text):
        return f"DNS: {unresolved.group(1)} does not resolve"
    for needles, cause in _NETWORK_CAUSES:
        if any(needle in text for needle in needles):
            return cause
    return f"cannot connect ({type(err).__name__})"


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Run an SDK call; re-raise its failure as a controller error whose message names ``what``."""
    try:
        yield
    except (ResourceModifiedError, ResourceExistsError) as err:
        raise Conflict(f"{what}: {err.reason or 'conflict'}") from err
    except ResourceNotFoundError as err:
        raise NotFound(f"{what}: not found") from err
    except ClientAuthenticationError as err:
        if err.status_code is None:  # no token at all: the credential's own words say why
            raise NotAuthenticated(f"{what}: not logged in: {err.message}") from err
        raise Forbidden(f"{what}: authentication failed ({err.status_code})") from err
    except ServiceResponseError as err:  # sent, then the connection dropped: the service may have acted
        raise ConnectionLost(f"{what}: {network_failure(err)}") from err
    except ServiceRequestError as err:  # never sent: refused, DNS, TLS
        raise Unreachable(f"{what}: {network_failure(err)}") from err
    except HttpResponseError as err:
        transient = _transient_cause(err)
        if transient is not None:
            # Our own adapter failed inside an SDK callback (the key resolver during client-side decryption,
            # which azure-storage-blob reports as "Decryption failed."): still that failure, to be retried.
            raise type(transient)(f"{what}: {transient}", retry_after=transient.retry_after) from err
        status = err.status_code or 0
        code = getattr(err, "error_code", None) or ""
        if status in _TRANSIENT_STATUS:
            message = f"{what}: HTTP {status} {code}".rstrip()
            raise TransientError(message, retry_after=retry_after_seconds(err)) from err
        if status == 403:
            raise Forbidden(f"{what}: HTTP 403 {code}".rstrip()) from err
        if status == 404:
            raise NotFound(f"{what}: HTTP 404 {code}".rstrip()) from err
        if status in (409, 412):
            raise Conflict(f"{what}: HTTP {status} {code}".rstrip()) from err
        raise PermanentError(f"{what}: HTTP {status} {code}".rstrip()) from err


def _transient_cause(err: BaseException) -> TransientError | None:
    """The TransientError an SDK error was raised from (its chain of causes and inner exceptions), if any."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, TransientError):
            return current
        seen.add(id(current))
        current = current.__cause__ or getattr(current, "inner_exception", None)
    return None
