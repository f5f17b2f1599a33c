"""Key Vault error responses: status code, error code, message and optional inner error."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emulators.faults import Fault


class KeyVaultError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        inner: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner = inner
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner:
            error["innererror"] = {"code": self.inner}
        return {"error": error}


def bad_parameter(message: str) -> KeyVaultError:
    return KeyVaultError(400, "BadParameter", message)


def key_not_found(name: str, version: str = "") -> KeyVaultError:
    what = f"{name}/{version}" if version else name
    return KeyVaultError(
        404,
        "KeyNotFound",
        f"A key with (name/id) {what} was not found in this key vault. If you recently deleted this key you "
        "may be able to recover it using the correct recovery command. For help resolving this issue, please "
        "see https://go.microsoft.com/fwlink/?linkid=2125182",
    )


def deleted_key_not_found(name: str) -> KeyVaultError:
    return KeyVaultError(404, "KeyNotFound", f"Deleted Key not found: {name}")


def forbidden(message: str, inner: str) -> KeyVaultError:
    return KeyVaultError(403, "Forbidden", message, inner)


def sandbox_fault_error(fault: Fault, operation: str) -> KeyVaultError:
    """An injected fault (emulators/faults.py) as Key Vault answers it: the KeyVaultError body of the vendored
    keys.json. The 429 wording is Key Vault's documented throttling answer; the 500 and 503 codes and messages
    are unverified."""
    if fault.status == 429:
        message = ("Request was not processed because too many requests were received. Reason: the sandbox's "
                   f"injected throttling of {operation}.")
        return KeyVaultError(429, "Throttled", message, headers=fault.retry_after_headers())
    if fault.status == 503:
        return KeyVaultError(503, "ServiceUnavailable", "The service is temporarily unavailable. Please retry.",
                             headers=fault.retry_after_headers())
    return KeyVaultError(500, "InternalServerError", "The server encountered an internal error. Please retry.")
