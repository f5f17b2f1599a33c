"""Azure's built-in role definitions the sandbox knows: the Key Vault data-plane roles and Reader.

One table for both emulators: ARM serves these definitions, and the Key Vault emulator enforces their
data actions, so the sandbox cannot grant what Azure's published role does not. Ids are Azure's fixed
built-in ids. Role names, descriptions, actions and data actions were checked against published copies
of the built-in definitions (Crypto Service Encryption User and Crypto User verbatim; Administrator,
Crypto Officer and Reader by their action lists and data-action counts).
"""

from __future__ import annotations

from typing import Any

KV = "Microsoft.KeyVault/vaults"

BUILTIN_ROLES: dict[str, dict[str, Any]] = {
    "00482a5a-887f-4fb3-b363-3b7fe8e74483": {
        "roleName": "Key Vault Administrator",
        "description": "Perform all data plane operations on a key vault and all objects in it, including certificates,"
        " keys, and secrets. Cannot manage key vault resources or manage role assignments. Only works for key vaults"
        " that use the 'Azure role-based access control' permission model.",
        "actions": [
            "Microsoft.Authorization/*/read",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Support/*",
            "Microsoft.KeyVault/checkNameAvailability/read",
            "Microsoft.KeyVault/deletedVaults/read",
            "Microsoft.KeyVault/locations/*/read",
            "Microsoft.KeyVault/vaults/*/read",
            "Microsoft.KeyVault/operations/read",
        ],
        "dataActions": [f"{KV}/*"],
    },
    "14b46e9e-c2b7-41b4-b07b-48a6ebf60603": {
        "roleName": "Key Vault Crypto Officer",
        "description": "Perform any action on the keys of a key vault, except manage permissions. Only works for key"
        " vaults that use the 'Azure role-based access control' permission model.",
        "actions": [
            "Microsoft.Authorization/*/read",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Support/*",
            "Microsoft.KeyVault/checkNameAvailability/read",
            "Microsoft.KeyVault/deletedVaults/read",
            "Microsoft.KeyVault/locations/*/read",
            "Microsoft.KeyVault/vaults/*/read",
            "Microsoft.KeyVault/operations/read",
        ],
        "dataActions": [f"{KV}/keys/*", f"{KV}/keyrotationpolicies/*"],
    },
    "e147488a-f6f5-4113-8e2d-b22465e65bf6": {
        "roleName": "Key Vault Crypto Service Encryption User",
        "description": "Read metadata of keys and perform wrap/unwrap operations. Only works for key vaults that use"
        " the 'Azure role-based access control' permission model.",
        "actions": [
            "Microsoft.EventGrid/eventSubscriptions/write",
            "Microsoft.EventGrid/eventSubscriptions/read",
            "Microsoft.EventGrid/eventSubscriptions/delete",
        ],
        "dataActions": [f"{KV}/keys/read", f"{KV}/keys/wrap/action", f"{KV}/keys/unwrap/action"],
    },
    "12338af0-0e69-4776-bea7-57ae8d297424": {
        "roleName": "Key Vault Crypto User",
        "description": "Perform cryptographic operations using keys. Only works for key vaults that use the 'Azure"
        " role-based access control' permission model.",
        "actions": [],
        "dataActions": [
            f"{KV}/keys/read",
            f"{KV}/keys/update/action",
            f"{KV}/keys/backup/action",
            f"{KV}/keys/encrypt/action",
            f"{KV}/keys/decrypt/action",
            f"{KV}/keys/wrap/action",
            f"{KV}/keys/unwrap/action",
            f"{KV}/keys/sign/action",
            f"{KV}/keys/verify/action",
        ],
    },
    "21090545-7ca7-4776-b22c-e363652d74d2": {
        "roleName": "Key Vault Reader",
        "description": "Read metadata of key vaults and its certificates, keys, and secrets. Cannot read sensitive"
        " values such as secret contents or key material. Only works for key vaults that use the 'Azure role-based"
        " access control' permission model.",
        "actions": [
            "Microsoft.Authorization/*/read",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Support/*",
            "Microsoft.KeyVault/checkNameAvailability/read",
            "Microsoft.KeyVault/deletedVaults/read",
            "Microsoft.KeyVault/locations/*/read",
            "Microsoft.KeyVault/vaults/*/read",
            "Microsoft.KeyVault/operations/read",
        ],
        "dataActions": [f"{KV}/*/read", f"{KV}/secrets/readMetadata/action"],
    },
    "acdd72a7-3385-48ef-bd42-f606fba81ae7": {
        "roleName": "Reader",
        "description": "View all resources, but does not allow you to make any changes.",
        "actions": ["*/read"],
        "dataActions": [],
    },
}
