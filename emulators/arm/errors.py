"""ARM error responses: ``{"error": {"code", "message"}}`` with the status Azure uses.

Where a code or message was checked against public material, the comment says so; the others follow
ARM's conventions and are marked unverified.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emulators.faults import Fault


class ArmError(Exception):
    def __init__(
        self, status: int, code: str, message: str, *, target: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.target = target
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target:
            error["target"] = self.target
        return {"error": error}


def resource_not_found(resource_type: str, name: str, resource_group: str) -> ArmError:
    # ARM's generic 404 wording (seen in countless SDK issue threads).
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{resource_type}/{name}' under resource group '{resource_group}' was not found. "
        "For more details please go to https://aka.ms/ARMResourceNotFoundFix",
    )


def resource_group_not_found(name: str) -> ArmError:
    return ArmError(404, "ResourceGroupNotFound", f"Resource group '{name}' could not be found.")


def invalid_request_parameters(*parameters: str, link: str = "https://aka.ms/storagecmkconfiguration") -> ArmError:
    # Verified shape (azure-cli #10242, Azure PowerShell tests): storage RP answers 400
    # InvalidValuesForRequestParameters "Values for request parameters are invalid: <json path>."
    # For an EC key the path is encryption.keyvaultproperties.keyname (azure-cli #10242).
    return ArmError(
        400,
        "InvalidValuesForRequestParameters",
        f"Values for request parameters are invalid: {', '.join(parameters)}. For more information, see - {link}",
    )


def keyvault_policy_error() -> ArmError:
    # Verified (azure-cli #12346, #17914): a vault without soft delete / purge protection gives
    # "(KeyVaultPolicyError) Keyvault policy recoverable is not set".
    return ArmError(400, "KeyVaultPolicyError", "Keyvault policy recoverable is not set")


def keyvault_authentication_failure() -> ArmError:
    # Message verified (azure-docs #84096: enabling CMK with an inaccessible key); the code
    # KeyVaultAuthenticationFailure is what deployment logs report with it (third-party notes, not a
    # Microsoft page). Azure gives it when the identity lacks get/wrapKey/unwrapKey, the key is disabled or
    # expired, or the vault firewall refuses the storage service.
    return ArmError(
        400, "KeyVaultAuthenticationFailure", "The operation failed because of authentication issue on the keyvault."
    )


def keyvault_key_not_found(key_name: str, vault_uri: str) -> ArmError:
    # Wording as Azure documents it for CMK configuration ("The operation failed because the specified key vault
    # key was not found", Azure NetApp Files' CMK troubleshooting table); the storage RP's exact text and the
    # code are unverified.
    return ArmError(
        400,
        "KeyVaultKeyNotFound",
        f"The operation failed because the specified key vault key was not found. Key '{key_name}', vault "
        f"'{vault_uri}'.",
    )


def keyvault_vault_not_found(vault_uri: str) -> ArmError:
    # Unverified: ARM answer for a keyvaulturi that does not resolve to a vault.
    return ArmError(
        400,
        "KeyVaultVaultNotFound",
        f"The operation failed because the specified key vault '{vault_uri}' was not found.",
    )


#: An injected fault's status -> ARM's code and message (emulators/faults.py).
_FAULTS = {
    # ARM's answer to a write while another operation holds the resource (the wording SDK issue threads quote).
    409: ("AnotherOperationInProgress", "Another operation is in progress on the selected item. If there is an "
                                        "in-progress operation, please retry after it has finished."),
    # ARM's answer to a failed If-Match / If-None-Match.
    412: ("PreconditionFailed", "The condition specified using HTTP conditional header(s) is not met."),
    429: ("SubscriptionRequestsThrottled", "Number of requests for this subscription exceeded the limit. Please "
                                           "try again later."),
    500: ("InternalServerError", "The server encountered an internal error."),
    # Unverified wording.
    503: ("ServiceUnavailable", "The service is temporarily unavailable. Please try again later."),
}


def sandbox_fault(fault: Fault) -> ArmError:
    """An injected fault in ARM's error shape (the CloudError of the vendored storage.json), with Retry-After
    where Azure sends one."""
    status = fault.status or 500
    code, message = _FAULTS[status]
    return ArmError(status, code, message, headers=fault.retry_after_headers())
