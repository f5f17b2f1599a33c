"""Key Vault error responses: status code, error code, message and optional inner error."""

from __future__ import annotations

from typing import Any


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
