"""Microsoft.Storage: storage accounts (create, get, list, update with identity and encryption, listKeys,
delete), encryption scopes (put, patch, get, list) and the per-account blob endpoints (``blobproxy.py``).

CMK is validated the way Azure does it, by the storage service (``storage.StorageKeyService``) calling the
vault as the account's encryption identity."""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web

from emulators.background import ServerThread
from emulators.clock import SandboxClock
from emulators.keyvault import SandboxCA

from . import errors
from .blobproxy import BlobProxy, azurite_account_sas, endpoints_of
from .identities import Identities
from .model import KEY_SOURCE_KEYVAULT, KEY_SOURCE_STORAGE, STORAGE_TYPE, EncryptionScope, StorageAccount
from .resource_groups import ResourceGroups
from .routing import RG, SEG, SUB, Deferred, Request, Route, new_id
from .storage import KeyBinding, Principal, StorageKeyService, iso, normalise_vault_uri, split_key_uri

STORAGE = rf"{RG}/providers/microsoft\.storage/storageaccounts/{SEG}"
STORAGE_NAME_RE = re.compile(r"^[a-z0-9]{3,24}$")
SCOPE_NAME_RE = re.compile(r"^[a-zA-Z0-9]{3,63}$")


class StorageAccounts:
    def __init__(
        self,
        groups: ResourceGroups,
        identities: Identities,
        storage: StorageKeyService,
        *,
        clock: SandboxClock,
        tenant_id: str,
        azurite: Any,
        server: ServerThread,
        ca: SandboxCA,
        blob_host: str,
    ) -> None:
        self.groups = groups
        self.identities = identities
        self.storage = storage
        self.clock = clock
        self.tenant_id = tenant_id
        self.azurite = azurite
        self.server = server
        self.ca = ca
        # azure-storage-blob reads the account name from the path only for hosts starting with 127.0.0.1 or
        # localhost (path-style, like Azurite), so the blob endpoints stay there whatever ARM's host is.
        self.blob_host = blob_host
        self.accounts: dict[str, StorageAccount] = {}  # account names are global
        self._proxies: dict[str, BlobProxy] = {}
        self._proxy_runners: dict[str, web.AppRunner] = {}  # lower-case account name -> its blob proxy
        self._azurite_sas: str | None = None

    def routes(self) -> list[Route]:
        return [
            (("GET",), rf"{SUB}/providers/microsoft\.storage/storageaccounts", self._list_accounts),
            (("GET",), rf"{RG}/providers/microsoft\.storage/storageaccounts", self._list_accounts),
            (("GET", "PUT", "PATCH", "DELETE"), STORAGE, self._account),
            (("POST",), rf"{STORAGE}/listkeys", self._list_keys),
            (("GET",), rf"{STORAGE}/encryptionscopes", self._list_scopes),
            (("GET", "PUT", "PATCH"), rf"{STORAGE}/encryptionscopes/{SEG}", self._scope),
        ]

    def bindings(self) -> Iterator[tuple[KeyBinding, Callable[[], Principal | None]]]:
        """Every CMK binding (accounts and encryption scopes) with how to find the principal that unwraps it."""
        items: list[tuple[KeyBinding, Callable[[], Principal | None]]] = []
        for account in self.accounts.values():
            resolver = functools.partial(self.principal_by_name, account.name)
            if account.binding is not None and account.key_source == KEY_SOURCE_KEYVAULT:
                items.append((account.binding, resolver))
            items.extend((s.binding, resolver) for s in account.scopes.values() if s.binding is not None)
        return iter(items)

    def principal_by_name(self, name: str) -> Principal | None:
        account = self.accounts.get(name)
        return self._encryption_principal(account) if account is not None else None

    async def close(self) -> None:
        """Close every blob proxy (the server thread cleans up their runners when it stops)."""
        for proxy in self._proxies.values():
            await proxy.close()
        self._proxy_runners.clear()

    # ---- storage accounts ---------------------------------------------------------------------------
    def _list_accounts(self, req: Request, subscription: str, group: str | None = None) -> tuple[int, Any]:
        if group is not None:
            self.groups.get(subscription, group)
        return 200, {
            "value": [
                a.to_json()
                for a in self.accounts.values()
                if a.subscription_id.lower() == subscription.lower()
                and (group is None or a.resource_group.lower() == group.lower())
            ]
        }

    def _get_account(self, subscription: str, group: str, name: str) -> StorageAccount:
        account = self.accounts.get(name.lower())
        if (
            account is None
            or account.subscription_id.lower() != subscription.lower()
            or account.resource_group.lower() != group.lower()
        ):
            self.groups.get(subscription, group)
            raise errors.resource_not_found(STORAGE_TYPE, name, group)
        return account

    def _account(self, req: Request, subscription: str, group: str, name: str) -> tuple[int, Any]:
        if req.method == "PUT":
            return self._put_account(req, subscription, group, name)
        account = self._get_account(subscription, group, name)
        if req.method == "DELETE":
            del self.accounts[name.lower()]
            proxy = self._proxies.pop(name.lower(), None)
            if proxy is not None:
                self.server.run(self._stop_proxy(name.lower(), proxy))
            return 200, None
        if req.method == "PATCH":
            return self._update_account(account, req.body or {})
        return 200, account.to_json()

    def _update_account(self, account: StorageAccount, body: dict[str, Any]) -> tuple[int, Any] | Deferred:
        updated = copy.deepcopy(account)  # private until committed: readers see the account as it was
        check = self._apply_account(updated, body, creating=False)
        return _deferred(check, functools.partial(self._commit_account, updated))

    def _commit_account(self, account: StorageAccount) -> tuple[int, Any]:
        self.accounts[account.name.lower()] = account
        return 200, account.to_json()

    def _put_account(self, req: Request, subscription: str, group: str, name: str) -> tuple[int, Any] | Deferred:
        rg = self.groups.get(subscription, group)
        body = req.body or {}
        existing = self.accounts.get(name.lower())
        if existing is not None and existing.resource_group.lower() != group.lower():
            raise errors.ArmError(
                409, "StorageAccountAlreadyTaken", f"The storage account named {name} is already taken."
            )
        if not STORAGE_NAME_RE.fullmatch(name):
            raise errors.ArmError(
                400,
                "AccountNameInvalid",
                f"{name} is not a valid storage account name. Storage account name must be between 3 and 24 "
                "characters in length and use numbers and lower-case letters only.",
            )
        if existing is not None:
            return self._update_account(existing, body)
        sku = (body.get("sku") or {}).get("name")
        if not sku or not body.get("kind") or not body.get("location"):
            raise errors.invalid_request_parameters("sku, kind, location", link="https://aka.ms/storageaccounttypes")
        account = StorageAccount(
            subscription_id=subscription,
            resource_group=rg.name,
            name=name,
            location=str(body["location"]).replace(" ", "").lower(),
            kind=str(body["kind"]),
            sku_name=str(sku),
            created=self.clock.now(),
            tenant_id=self.tenant_id,
        )
        check = self._apply_account(account, body, creating=True)
        return _deferred(check, functools.partial(self._commit_new_account, account))

    def _commit_new_account(self, account: StorageAccount) -> tuple[int, Any]:
        if self.azurite is not None:
            account.blob_endpoint = self.server.run(self._start_proxy(account.name))
        return self._commit_account(account)

    def _apply_account(self, account: StorageAccount, body: dict[str, Any], *,
                       creating: bool) -> Callable[[], None] | None:
        """Apply a create/update body to ``account`` (a private copy when updating). A customer-managed key
        is validated as Azure does, by the storage service calling the vault: the returned check (None
        when the key configuration is not touched) does that, outside ARM's lock, and completes ``account``."""
        if isinstance(body.get("tags"), dict):
            account.tags = {str(k): str(v) for k, v in body["tags"].items()}
        if isinstance(body.get("identity"), dict):
            self._apply_identity(account, body["identity"], replace=creating)
        props = body.get("properties") or {}
        encryption = props.get("encryption")
        if not isinstance(encryption, dict):
            return
        if "requireInfrastructureEncryption" in encryption and creating:
            account.require_infrastructure_encryption = bool(encryption["requireInfrastructureEncryption"])
        services = encryption.get("services") or {}
        if creating and any((services.get(s) or {}).get("keyType") == "Account" for s in ("queue", "table")):
            account.queue_table_key_type = "Account"
        identity = encryption.get("identity")
        if isinstance(identity, dict):
            if "userAssignedIdentity" in identity:
                account.encryption_identity = identity.get("userAssignedIdentity") or None
            if "federatedIdentityClientId" in identity:
                account.federated_identity_client_id = identity.get("federatedIdentityClientId") or None
        source = str(encryption.get("keySource") or account.key_source)
        if source.lower() == KEY_SOURCE_STORAGE.lower():
            account.key_source = KEY_SOURCE_STORAGE
            account.binding = None
            return None
        if source.lower() != KEY_SOURCE_KEYVAULT.lower():
            raise errors.invalid_request_parameters("encryption.keySource")
        kvp = encryption.get("keyvaultproperties") or encryption.get("keyVaultProperties") or {}
        current = account.binding
        vault_uri = kvp.get("keyvaulturi") or (current.vault_uri if current else None)
        key_name = kvp.get("keyname") or (current.key_name if current else None)
        key_version = kvp.get("keyversion") if "keyversion" in kvp else (current.key_version if current else "")
        if not vault_uri:
            raise errors.invalid_request_parameters("encryption.keyvaultproperties.keyvaulturi")
        if not key_name:
            raise errors.invalid_request_parameters("encryption.keyvaultproperties.keyname")
        candidate = KeyBinding(normalise_vault_uri(str(vault_uri)), str(key_name), str(key_version or ""))
        if current is not None:
            candidate.root_key = current.root_key  # a key change re-wraps the same account root key
        principal = self._encryption_principal(account)

        def check() -> None:
            self.storage.bind(candidate, principal, keyname_path="encryption.keyvaultproperties.keyname",
                              previous=current)
            account.key_source = KEY_SOURCE_KEYVAULT
            account.binding = candidate

        return check

    def _apply_identity(self, account: StorageAccount, identity: dict[str, Any], *, replace: bool) -> None:
        kinds = {k.strip().lower() for k in str(identity.get("type") or "None").split(",")}
        if "systemassigned" in kinds:
            account.system_principal_id = account.system_principal_id or new_id()
        else:
            account.system_principal_id = None
        if "userassigned" not in kinds:
            account.user_assigned = {}
            return
        requested = identity.get("userAssignedIdentities") or {}
        attached = {} if replace else dict(account.user_assigned)
        for resource_id, value in requested.items():
            existing_key = next((k for k in attached if k.lower() == resource_id.lower()), None)
            if value is None:  # PATCH semantics: null detaches
                if existing_key:
                    attached.pop(existing_key)
                continue
            uai = self.identities.get(resource_id)
            if uai is None:
                # Unverified wording; ARM refuses unknown user-assigned identities with 400.
                raise errors.ArmError(
                    400, "InvalidIdentity", f"The user assigned identity '{resource_id}' could not be found."
                )
            attached[existing_key or uai.id] = {"principalId": uai.principal_id, "clientId": uai.client_id}
        account.user_assigned = attached

    def _encryption_principal(self, account: StorageAccount) -> Principal | None:
        if account.encryption_identity:
            wanted = account.encryption_identity.lower()
            if not any(k.lower() == wanted for k in account.user_assigned):
                return None
            uai = self.identities.get(wanted)
            if uai is None:
                return None
            return Principal(uai.principal_id, uai.client_id, uai.tenant_id, uai.id)
        if account.system_principal_id:
            return Principal(account.system_principal_id, None, account.tenant_id, f"{account.id} (system-assigned)")
        return None

    def _list_keys(self, req: Request, subscription: str, group: str, name: str) -> tuple[int, Any]:
        account = self._get_account(subscription, group, name)
        created = iso(account.created)
        return 200, {
            "keys": [
                {"keyName": k, "value": v, "permissions": "Full", "creationTime": created}
                for k, v in sorted(account.keys.items())
            ]
        }

    # ---- encryption scopes --------------------------------------------------------------------------
    def _list_scopes(self, req: Request, subscription: str, group: str, name: str) -> tuple[int, Any]:
        account = self._get_account(subscription, group, name)
        return 200, {"value": [s.to_json(account.id) for s in account.scopes.values()]}

    def _scope(self, req: Request, subscription: str, group: str, name: str,
               scope_name: str) -> tuple[int, Any] | Deferred:
        account = self._get_account(subscription, group, name)
        scope = account.scopes.get(scope_name.lower())
        if req.method == "GET":
            if scope is None:
                raise errors.ArmError(
                    404, "EncryptionScopeNotFound", f"The encryption scope '{scope_name}' was not found."
                )  # unverified wording
            return 200, scope.to_json(account.id)
        if not SCOPE_NAME_RE.fullmatch(scope_name):
            raise errors.invalid_request_parameters("encryptionScopeName")
        props = (req.body or {}).get("properties") or {}
        if scope is None and req.method == "PATCH":
            raise errors.ArmError(404, "EncryptionScopeNotFound", f"The encryption scope '{scope_name}' was not found.")
        now = self.clock.now()
        updated = (
            copy.deepcopy(scope)
            if scope
            else EncryptionScope(
                scope_name,
                "Microsoft.Storage",
                "Enabled",
                now,
                now,
                require_infrastructure_encryption=bool(props.get("requireInfrastructureEncryption", False)),
            )
        )
        if props.get("state"):
            state = str(props["state"]).capitalize()
            if state not in ("Enabled", "Disabled"):
                raise errors.invalid_request_parameters("properties.state")
            updated.state = state
        source = str(props.get("source") or updated.source)
        check: Callable[[], None] | None = None
        if source.lower() == "microsoft.storage":
            updated.source, updated.binding = "Microsoft.Storage", None
        elif source.lower() == "microsoft.keyvault":
            key_uri = (props.get("keyVaultProperties") or {}).get("keyUri") or (
                updated.binding.key_uri if updated.binding else None
            )
            if not key_uri:
                raise errors.invalid_request_parameters("properties.keyVaultProperties.keyUri")
            vault_uri, key_name, key_version = split_key_uri(str(key_uri))
            candidate = KeyBinding(normalise_vault_uri(vault_uri), key_name, key_version)
            previous = updated.binding
            if previous is not None:
                candidate.root_key = previous.root_key
            principal = self._encryption_principal(account)

            def validate() -> None:
                self.storage.bind(candidate, principal, keyname_path="properties.keyVaultProperties.keyUri",
                                  previous=previous)
                updated.source, updated.binding = "Microsoft.KeyVault", candidate

            check = validate
        else:
            raise errors.invalid_request_parameters("properties.source")
        updated.modified = now

        def commit() -> tuple[int, Any]:
            account.scopes[scope_name.lower()] = updated
            return 200, updated.to_json(account.id)

        return _deferred(check, commit)

    # ---- blob endpoints -----------------------------------------------------------------------------
    def _gate(self, account_name: str, scope_name: str | None) -> tuple[str, str] | None:
        account = self.accounts.get(account_name)
        if account is None:
            return ("ResourceNotFound", "The specified resource does not exist.")
        binding = account.binding
        if account.key_source == KEY_SOURCE_KEYVAULT and binding is not None and not binding.accessible:
            return binding.error
        if scope_name:
            scope = account.scopes.get(scope_name.lower())
            if scope is not None and scope.binding is not None and not scope.binding.accessible:
                return scope.binding.error
        return None

    def _keys(self, account_name: str) -> list[str]:
        account = self.accounts.get(account_name)
        return list(account.keys.values()) if account is not None else []

    async def _start_proxy(self, account_name: str) -> str:
        blob, azurite_account, azurite_key = endpoints_of(self.azurite)
        if self._azurite_sas is None:
            self._azurite_sas = azurite_account_sas(azurite_account, azurite_key)
        key = account_name.lower()
        proxy = BlobProxy(
            account_name,
            blob,
            self._azurite_sas,
            functools.partial(self._gate, key),
            functools.partial(self._keys, key),
        )
        runner, port = await self.server.serve(
            proxy.app, self.blob_host, 0, ssl_context=self.ca.server_ssl_context(self.blob_host), handle_signals=False
        )
        proxy.origin = f"https://{self.blob_host}:{port}"
        self._proxies[account_name.lower()] = proxy
        self._proxy_runners[account_name.lower()] = runner
        return proxy.endpoint

    async def _stop_proxy(self, key: str, proxy: BlobProxy) -> None:
        await proxy.close()
        runner = self._proxy_runners.pop(key, None)
        if runner is not None:
            await self.server.unserve(runner)


def _deferred(check: Callable[[], None] | None, commit: Callable[[], tuple[int, Any]]) -> tuple[int, Any] | Deferred:
    """Commit at once when nothing needs checking outside ARM's lock."""
    return commit() if check is None else Deferred(check, commit)
