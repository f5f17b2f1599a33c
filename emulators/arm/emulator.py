"""The emulated ARM endpoint: one HTTPS origin, the routes the unmodified mgmt SDK clients call."""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web

from emulators.background import ServerThread
from emulators.bus import SandboxBus
from emulators.clock import SandboxClock
from emulators.keyvault import KeyVaultEmulator, SandboxCA, VaultState
from emulators.keyvault.credential import DEFAULT_TENANT_ID, InvalidToken, SandboxCredential, decode_token
from emulators.keyvault.state import AccessPolicy, RoleAssignment

from . import errors, roles
from .blobproxy import BlobProxy, azurite_account_sas, endpoints_of
from .model import (
    KEY_SOURCE_KEYVAULT,
    KEY_SOURCE_STORAGE,
    STORAGE_TYPE,
    UAI_TYPE,
    VAULT_TYPE,
    EncryptionScope,
    ResourceGroup,
    StorageAccount,
    UserAssignedIdentity,
    compact,
    vault_json,
)
from .storage import KeyBinding, Principal, StorageKeyService, iso, normalise_vault_uri, split_key_uri

log = logging.getLogger(__name__)

SEG = r"([^/]+)"
SUB = rf"/subscriptions/{SEG}"
RG = rf"{SUB}/resourcegroups/{SEG}"
STORAGE = rf"{RG}/providers/microsoft\.storage/storageaccounts/{SEG}"
VAULT = rf"{RG}/providers/microsoft\.keyvault/vaults/{SEG}"
UAI = rf"{RG}/providers/microsoft\.managedidentity/userassignedidentities"
AUTHZ = r"(.*?)/providers/microsoft\.authorization"
INSIGHTS = r"(.*?)/providers/microsoft\.insights/diagnosticsettings"
ACCESS_POLICY_KINDS = ("add", "replace", "remove")
STORAGE_NAME_RE = re.compile(r"^[a-z0-9]{3,24}$")
VAULT_NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$")
SCOPE_NAME_RE = re.compile(r"^[a-zA-Z0-9]{3,63}$")
CANONICAL_TYPES = {t.lower(): t for t in (STORAGE_TYPE, VAULT_TYPE, UAI_TYPE)}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class RoleAssignmentRecord:
    name: str
    scope: str
    role_definition_id: str
    principal_id: str
    principal_type: str
    created: str
    description: str | None = None

    def to_json(self) -> dict[str, Any]:
        return compact(
            {
                "id": f"{self.scope}/providers/Microsoft.Authorization/roleAssignments/{self.name}",
                "name": self.name,
                "type": "Microsoft.Authorization/roleAssignments",
                "properties": {
                    "roleDefinitionId": self.role_definition_id,
                    "principalId": self.principal_id,
                    "principalType": self.principal_type,
                    "scope": self.scope,
                    "description": self.description,
                    "createdOn": self.created,
                    "updatedOn": self.created,
                },
            }
        )


def _within(scope: str, resource: str) -> bool:
    scope, resource = scope.rstrip("/").lower(), resource.rstrip("/").lower()
    return scope in ("", "/") or resource == scope or resource.startswith(scope + "/")


def _guid_of(role_definition_id: str) -> str:
    return role_definition_id.rstrip("/").rsplit("/", 1)[-1].lower()


class ArmEmulator:
    """Emulated Azure Resource Manager over HTTPS for the sandbox (see the package docstring)."""

    def __init__(
        self,
        clock: SandboxClock | None = None,
        bus: SandboxBus | None = None,
        ca: SandboxCA | None = None,
        *,
        keyvault: KeyVaultEmulator | None = None,
        azurite: Any = None,
        audit: Any = None,
        tenant_id: str = DEFAULT_TENANT_ID,
        host: str = "127.0.0.1",
        port: int = 0,
        blob_host: str = "127.0.0.1",
        key_poll_interval: timedelta = timedelta(days=1),
        unwrap_interval: timedelta = timedelta(hours=1),
        storage_tick_seconds: float = 1.0,
    ) -> None:
        if keyvault is None:
            keyvault = KeyVaultEmulator(clock, bus, ca, tenant_id=tenant_id)
        self.keyvault = keyvault
        self.clock = keyvault.clock
        self.bus = keyvault.bus
        self.ca = ca or keyvault.ca
        self.tenant_id = tenant_id
        self.host = host
        self.port = port
        # azure-storage-blob reads the account name from the path only for hosts starting with 127.0.0.1 or
        # localhost (path-style, like Azurite), so the blob endpoints stay there whatever ARM's host is.
        self.blob_host = blob_host
        self.audit = audit
        self.azurite = azurite
        self.storage = StorageKeyService(
            keyvault, self.clock, key_poll_interval=key_poll_interval, unwrap_interval=unwrap_interval
        )
        self.storage.bindings = self._bindings
        self.storage_tick_seconds = storage_tick_seconds
        self.origin = ""
        self._lock = threading.RLock()
        self.resource_groups: dict[tuple[str, str], ResourceGroup] = {}
        self.accounts: dict[str, StorageAccount] = {}  # account names are global
        self.identities: dict[str, UserAssignedIdentity] = {}  # lower-case resource id -> identity
        self.role_assignments: dict[str, RoleAssignmentRecord] = {}  # name (guid) -> assignment
        self.custom_roles: dict[str, dict[str, Any]] = {}
        self._known_vaults: set[str] = set()
        self._arm_assignment_names: set[str] = set()  # every assignment ARM ever fed to the vaults
        self.diagnostic_settings: dict[tuple[str, str], dict[str, Any]] = {}  # (resource id lower, name lower)
        self.vault_tags: dict[str, dict[str, str]] = {}
        self._proxies: dict[str, BlobProxy] = {}
        self._proxy_runners: dict[str, web.AppRunner] = {}  # lower-case account name -> its blob proxy
        self._azurite_sas: str | None = None
        self._server = ServerThread("arm-emulator", timeout=60.0)
        self._tick_task: asyncio.Task[None] | None = None
        self._started_keyvault = False
        self._request_counts: dict[str, dict[str, int]] = {}
        self._request_counts_lock = threading.Lock()
        self.app = web.Application(client_max_size=16 * 1024 * 1024, middlewares=[self._middleware])

    # ---- lifecycle ----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The ARM base URL for the mgmt clients' ``base_url``."""
        return self.origin

    @property
    def ca_path(self) -> str:
        return str(self.ca.ca_path)

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        """Mount extra routes (e.g. Resource Graph) on the ARM origin; call before ``start``.

        They run behind the same middleware (bearer token required, ARM error shape for ArmError).
        """
        if self._server.running:
            raise RuntimeError("add_routes must be called before start()")
        self.app.add_routes(list(routes))

    def start(self) -> ArmEmulator:
        if self._server.running:
            return self
        if not self.keyvault.running:
            self.keyvault.start()
            self._started_keyvault = True
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        port = self._server.listen(
            self.app, self.host, self.port, ssl_context=self.ca.server_ssl_context(self.host), handle_signals=False
        )
        self.port = port
        self.origin = f"https://{self.host}:{port}"
        self._tick_task = self._start_tick()
        log.info("ARM emulator listening at %s", self.origin)
        return self

    def stop(self) -> None:
        if not self._server.running:
            return
        self._server.stop(self._shutdown())  # cancels the tick first
        self._tick_task = None
        self.storage.close()
        if self._started_keyvault:
            self.keyvault.stop()
            self._started_keyvault = False

    def __enter__(self) -> ArmEmulator:
        return self.start()

    def __exit__(self, *args: object) -> None:
        self.stop()

    async def _serve(self, app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
        return await self._server.serve(
            app, host, port, ssl_context=self.ca.server_ssl_context(host), handle_signals=False
        )

    def _start_tick(self) -> asyncio.Task[None]:
        return self._server.every(
            lambda: self.storage_tick_seconds,
            lambda: self.storage.run_cycle(),  # noqa: PLW0108 - looked up at each tick
            what="storage key cycle",
            logger=log,
        )

    async def _shutdown(self) -> None:
        for proxy in self._proxies.values():
            await proxy.close()
        self._proxy_runners.clear()  # the server thread cleans up every runner when it stops

    # ---- public helpers -----------------------------------------------------------------------------
    def credential(self, oid: str | None = None, **kwargs: Any) -> SandboxCredential:
        """A TokenCredential for a principal (e.g. the controller) that ARM and the vaults accept."""
        return self.keyvault.credential(oid, **kwargs)

    def identity_credential(self, identity: str, *, trusted_service: bool = False) -> SandboxCredential:
        """A TokenCredential acting as a managed identity.

        ``identity``: a user-assigned identity's resource id, its principalId or clientId, or a storage
        account name (its system-assigned identity).
        """
        with self._lock:
            wanted = identity.lower()
            for uai in self.identities.values():
                if wanted in (uai.id.lower(), uai.principal_id, uai.client_id):
                    return self.keyvault.credential(
                        uai.principal_id, appid=uai.client_id, trusted_service=trusted_service, name=uai.name
                    )
            account = self.accounts.get(wanted)
            if account is not None and account.system_principal_id:
                return self.keyvault.credential(
                    account.system_principal_id, trusted_service=trusted_service, name=account.name
                )
            for account in self.accounts.values():
                if account.system_principal_id == wanted:
                    return self.keyvault.credential(wanted, trusted_service=trusted_service, name=account.name)
        raise KeyError(f"no managed identity {identity!r} in the sandbox")

    def blob_endpoint(self, account: str) -> str:
        with self._lock:
            return self.accounts[account.lower()].blob_endpoint

    def account_key(self, account: str) -> str:
        with self._lock:
            return self.accounts[account.lower()].keys["key1"]

    def poll_storage(self, *, force: bool = True) -> int:
        """Run the storage service's key cycle now: poll versions and unwrap (all bindings when forced)."""
        return self.storage.run_cycle(force_poll=force, force_unwrap=force)

    def check_storage_keys(self) -> int:
        """Unwrap every CMK root key now (no version polling): revocation shows up immediately."""
        return self.storage.run_cycle(force_unwrap=True)

    def set_storage_tick(self, seconds: float) -> None:
        """Change how often (real seconds) the storage service's timer looks for due polls and unwraps."""
        self.storage_tick_seconds = seconds
        if self._server.running:
            if self._tick_task is not None:
                self._server.cancel(self._tick_task)
            self._tick_task = self._start_tick()

    def advance_clock(self, delta: timedelta) -> None:
        """Advance sandbox time; the vaults evaluate their time-driven state and due storage polls run."""
        self.keyvault.advance_clock(delta)
        self.storage.run_cycle()

    def _bindings(self) -> Iterator[tuple[KeyBinding, Callable[[], Principal | None]]]:
        with self._lock:
            items: list[tuple[KeyBinding, Callable[[], Principal | None]]] = []
            for account in self.accounts.values():
                resolver = functools.partial(self._principal_by_name, account.name)
                if account.binding is not None and account.key_source == KEY_SOURCE_KEYVAULT:
                    items.append((account.binding, resolver))
                items.extend((s.binding, resolver) for s in account.scopes.values() if s.binding is not None)
        return iter(items)

    def _principal_by_name(self, name: str) -> Principal | None:
        with self._lock:
            account = self.accounts.get(name)
            return self._encryption_principal(account) if account is not None else None

    # ---- Resource Graph ------------------------------------------------------------------------------
    def resources_snapshot(self) -> list[dict[str, Any]]:
        """Every resource in Resource Graph's ``resources`` table shape."""
        rows: list[dict[str, Any]] = []
        with self._lock:
            self._sync_vaults()
            documents: list[tuple[dict[str, Any], str, str]] = []
            documents += [(a.to_json(), a.subscription_id, a.resource_group) for a in self.accounts.values()]
            documents += [(i.to_json(), i.subscription_id, i.resource_group) for i in self.identities.values()]
            for state in list(self.keyvault.vaults.values()):
                documents.append(
                    (
                        vault_json(state, self.vault_tags.get(state.resource_id.lower())),
                        state.subscription_id,
                        state.resource_group,
                    )
                )
        for doc, subscription, group in documents:
            rows.append(
                {
                    "id": doc["id"],
                    "name": doc["name"],
                    "type": doc["type"].lower(),
                    "tenantId": self.tenant_id,
                    "kind": doc.get("kind", ""),
                    "location": doc.get("location", ""),
                    "resourceGroup": group.lower(),
                    "subscriptionId": subscription,
                    "managedBy": "",
                    "sku": doc.get("sku"),
                    "plan": None,
                    "properties": doc.get("properties", {}),
                    "tags": doc.get("tags") or {},
                    "identity": doc.get("identity"),
                    "zones": None,
                    "extendedLocation": None,
                }
            )
        return rows

    def resource_containers_snapshot(self) -> list[dict[str, Any]]:
        """Resource groups in Resource Graph's ``resourcecontainers`` shape."""
        with self._lock:
            self._sync_vaults()
            return [
                {
                    "id": g.id,
                    "name": g.name,
                    "type": "microsoft.resources/subscriptions/resourcegroups",
                    "tenantId": self.tenant_id,
                    "location": g.location,
                    "resourceGroup": g.name.lower(),
                    "subscriptionId": g.subscription_id,
                    "properties": {"provisioningState": "Succeeded"},
                    "tags": dict(g.tags),
                }
                for g in self.resource_groups.values()
            ]

    # ---- HTTP ---------------------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        headers = {"x-ms-request-id": _new_id(), "x-ms-correlation-request-id": _new_id()}
        try:
            principal = self._authenticate(request)
            self._count(principal, request.method)
            response = await handler(request)
        except errors.ArmError as exc:
            return web.json_response(exc.body(), status=exc.status, headers=headers)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("ARM emulator failed on %s %s", request.method, request.path)
            failure = errors.ArmError(500, "InternalServerError", "The server encountered an internal error.")
            return web.json_response(failure.body(), status=500, headers=headers)
        response.headers.update(headers)
        return response

    def _count(self, principal: str, method: str) -> None:
        with self._request_counts_lock:
            per_principal = self._request_counts.setdefault(principal, {})
            per_principal[method.upper()] = per_principal.get(method.upper(), 0) + 1

    def request_counts(self) -> dict[str, dict[str, int]]:
        """ARM requests per caller (object id) and HTTP method, so benchmarks can count management calls."""
        with self._request_counts_lock:
            return {principal: dict(methods) for principal, methods in self._request_counts.items()}

    def reset_request_counts(self) -> None:
        with self._request_counts_lock:
            self._request_counts.clear()

    def _authenticate(self, request: web.Request) -> str:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.ArmError(
                401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing."
            )
        try:
            return decode_token(token.strip()).oid
        except InvalidToken as exc:
            raise errors.ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.") from exc

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if "api-version" not in request.query:
            raise errors.ArmError(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError as exc:
            raise errors.ArmError(
                400, "InvalidRequestContent", "The request content was invalid and could not be deserialized."
            ) from exc
        req = Request(request.method, request.path, dict(request.query), body)
        loop = asyncio.get_running_loop()
        status, payload = await loop.run_in_executor(None, self.dispatch, req)
        if payload is None:
            return web.Response(status=status)
        return web.json_response(payload, status=status)

    def dispatch_json(self, method: str, path: str, body: Any = None) -> Any:
        """Serve one ARM request in-process (no HTTP) and return its JSON body; raises ArmError."""
        return self.dispatch(Request(method, path, {"api-version": "2025-01-01"}, body))[1]

    def dispatch(self, req: Request) -> tuple[int, Any]:
        path = req.path.rstrip("/")
        for methods, pattern, handler in self._routes():
            match = re.fullmatch(pattern, path, flags=re.IGNORECASE)
            if match is None:
                continue
            if req.method not in methods:
                raise errors.ArmError(405, "MethodNotAllowed", f"The method '{req.method}' is not allowed on '{path}'.")
            with self._lock:
                self._sync_vaults()
                return handler(req, *match.groups())
        raise errors.ArmError(
            404, "InvalidResourceType", f"The resource type could not be found for the request path '{req.path}'."
        )

    def _routes(self) -> list[tuple[tuple[str, ...], str, Callable[..., tuple[int, Any]]]]:
        return [
            (("GET", "PUT", "DELETE"), rf"{INSIGHTS}/{SEG}", self._diagnostic_setting),
            (("GET",), INSIGHTS, self._list_diagnostic_settings),
            (("GET", "PUT", "DELETE"), rf"{AUTHZ}/roleassignments/{SEG}", self._role_assignment),
            (("GET",), rf"{AUTHZ}/roleassignments", self._list_role_assignments),
            (("GET", "PUT"), rf"{AUTHZ}/roledefinitions/{SEG}", self._role_definition),
            (("GET",), rf"{AUTHZ}/roledefinitions", self._list_role_definitions),
            (("GET",), r"/subscriptions", self._list_subscriptions),
            (("GET",), SUB, self._subscription),
            (("GET",), rf"{SUB}/resourcegroups", self._list_resource_groups),
            (("GET", "HEAD", "PUT", "PATCH"), RG, self._resource_group),
            (("GET",), rf"{SUB}/resources", self._list_resources),
            (("GET",), rf"{SUB}/providers/microsoft\.storage/storageaccounts", self._list_accounts),
            (("GET",), rf"{RG}/providers/microsoft\.storage/storageaccounts", self._list_accounts),
            (("GET", "PUT", "PATCH", "DELETE"), STORAGE, self._account),
            (("POST",), rf"{STORAGE}/listkeys", self._list_keys),
            (("GET",), rf"{STORAGE}/encryptionscopes", self._list_scopes),
            (("GET", "PUT", "PATCH"), rf"{STORAGE}/encryptionscopes/{SEG}", self._scope),
            (("GET",), rf"{SUB}/providers/microsoft\.keyvault/vaults", self._list_vaults),
            (("GET",), rf"{RG}/providers/microsoft\.keyvault/vaults", self._list_vaults),
            (("GET", "PUT", "PATCH"), VAULT, self._vault),
            (("PUT",), rf"{VAULT}/accesspolicies/{SEG}", self._access_policy),
            (("GET",), rf"{SUB}/providers/microsoft\.managedidentity/userassignedidentities", self._list_identities),
            (("GET",), UAI, self._list_identities),
            (("GET", "PUT", "PATCH", "DELETE"), rf"{UAI}/{SEG}", self._identity),
        ]

    # ---- subscriptions and resource groups ----------------------------------------------------------
    def _subscription_json(self, subscription: str) -> dict[str, Any]:
        return {
            "id": f"/subscriptions/{subscription}",
            "subscriptionId": subscription,
            "tenantId": self.tenant_id,
            "displayName": f"sandbox {subscription}",
            "state": "Enabled",
        }

    def _list_subscriptions(self, req: Request) -> tuple[int, Any]:
        subs = sorted({g.subscription_id for g in self.resource_groups.values()})
        return 200, {"value": [self._subscription_json(s) for s in subs]}

    def _subscription(self, req: Request, subscription: str) -> tuple[int, Any]:
        return 200, self._subscription_json(subscription)

    def _group(self, subscription: str, name: str) -> ResourceGroup:
        group = self.resource_groups.get((subscription.lower(), name.lower()))
        if group is None:
            raise errors.resource_group_not_found(name)
        return group

    def _list_resource_groups(self, req: Request, subscription: str) -> tuple[int, Any]:
        groups = [g.to_json() for (s, _), g in self.resource_groups.items() if s == subscription.lower()]
        return 200, {"value": groups}

    def _resource_group(self, req: Request, subscription: str, name: str) -> tuple[int, Any]:
        key = (subscription.lower(), name.lower())
        if req.method in ("GET", "HEAD", "PATCH"):
            group = self._group(subscription, name)
            if req.method == "HEAD":
                return 204, None
            if req.method == "PATCH" and isinstance((req.body or {}).get("tags"), dict):
                group.tags = dict(req.body["tags"])
            return 200, group.to_json()
        body = req.body or {}
        if not body.get("location"):
            raise errors.ArmError(400, "LocationRequired", "The location property is required for this definition.")
        existed = key in self.resource_groups
        group = self.resource_groups.get(key) or ResourceGroup(subscription, name, str(body["location"]))
        group.tags = dict(body.get("tags") or {})
        self.resource_groups[key] = group
        return (200 if existed else 201), group.to_json()

    def ensure_resource_group(self, subscription: str, name: str, location: str = "westeurope") -> ResourceGroup:
        """Create a resource group directly (sandbox setup without an ARM request)."""
        with self._lock:
            key = (subscription.lower(), name.lower())
            if key not in self.resource_groups:
                self.resource_groups[key] = ResourceGroup(subscription, name, location)
            return self.resource_groups[key]

    def _list_resources(self, req: Request, subscription: str) -> tuple[int, Any]:
        wanted = None
        match = re.search(r"resourceType eq '([^']+)'", req.query.get("$filter", ""), flags=re.IGNORECASE)
        if match:
            wanted = match.group(1).lower()
        rows = []
        for row in self.resources_snapshot():
            if row["subscriptionId"].lower() != subscription.lower() or (wanted and row["type"] != wanted):
                continue
            fields = {k: row[k] for k in ("id", "name", "location", "tags", "kind", "sku", "identity")}
            rows.append(compact(fields | {"type": CANONICAL_TYPES.get(row["type"], row["type"])}))
        return 200, {"value": rows}

    # ---- managed identities -------------------------------------------------------------------------
    def _list_identities(self, req: Request, subscription: str, group: str | None = None) -> tuple[int, Any]:
        return 200, {
            "value": [
                i.to_json()
                for i in self.identities.values()
                if i.subscription_id.lower() == subscription.lower()
                and (group is None or i.resource_group.lower() == group.lower())
            ]
        }

    def _identity(self, req: Request, subscription: str, group: str, name: str) -> tuple[int, Any]:
        resource_id = f"/subscriptions/{subscription}/resourceGroups/{group}/providers/{UAI_TYPE}/{name}".lower()
        identity = self.identities.get(resource_id)
        if req.method == "PUT":
            rg = self._group(subscription, group)
            body = req.body or {}
            created = identity is None
            if identity is None:
                identity = UserAssignedIdentity(
                    subscription, rg.name, name, str(body.get("location") or rg.location), self.tenant_id
                )
                self.identities[resource_id] = identity
            identity.tags = dict(body.get("tags") or {})
            return (201 if created else 200), identity.to_json()
        if identity is None:
            self._group(subscription, group)
            raise errors.resource_not_found(UAI_TYPE, name, group)
        if req.method == "PATCH":
            if isinstance((req.body or {}).get("tags"), dict):
                identity.tags = dict(req.body["tags"])
            return 200, identity.to_json()
        if req.method == "DELETE":
            del self.identities[resource_id]
            return 200, None
        return 200, identity.to_json()

    def add_identity(
        self, subscription: str, group: str, name: str, location: str = "westeurope"
    ) -> UserAssignedIdentity:
        """Create a user-assigned identity directly (sandbox setup without an ARM request)."""
        with self._lock:
            self.ensure_resource_group(subscription, group, location)
            identity = UserAssignedIdentity(subscription, group, name, location, self.tenant_id)
            self.identities[identity.id.lower()] = identity
            return identity

    # ---- storage accounts ---------------------------------------------------------------------------
    def _list_accounts(self, req: Request, subscription: str, group: str | None = None) -> tuple[int, Any]:
        if group is not None:
            self._group(subscription, group)
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
            self._group(subscription, group)
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
                self._server.run(self._stop_proxy(name.lower(), proxy))
            return 200, None
        if req.method == "PATCH":
            updated = copy.deepcopy(account)
            self._apply_account(updated, req.body or {}, creating=False)
            self.accounts[name.lower()] = updated
            return 200, updated.to_json()
        return 200, account.to_json()

    def _put_account(self, req: Request, subscription: str, group: str, name: str) -> tuple[int, Any]:
        rg = self._group(subscription, group)
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
            updated = copy.deepcopy(existing)
            self._apply_account(updated, body, creating=False)
            self.accounts[name.lower()] = updated
            return 200, updated.to_json()
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
        self._apply_account(account, body, creating=True)
        if self.azurite is not None:
            account.blob_endpoint = self._server.run(self._start_proxy(account.name))
        self.accounts[name.lower()] = account
        return 200, account.to_json()

    def _apply_account(self, account: StorageAccount, body: dict[str, Any], *, creating: bool) -> None:
        """Apply a create/update body to ``account`` (a copy when updating); validates CMK as Azure does."""
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
            return
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
        self.storage.bind(
            candidate,
            self._encryption_principal(account),
            keyname_path="encryption.keyvaultproperties.keyname",
            previous=current,
        )
        account.key_source = KEY_SOURCE_KEYVAULT
        account.binding = candidate

    def _apply_identity(self, account: StorageAccount, identity: dict[str, Any], *, replace: bool) -> None:
        kinds = {k.strip().lower() for k in str(identity.get("type") or "None").split(",")}
        if "systemassigned" in kinds:
            account.system_principal_id = account.system_principal_id or _new_id()
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
            uai = self.identities.get(resource_id.lower())
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

    def _scope(self, req: Request, subscription: str, group: str, name: str, scope_name: str) -> tuple[int, Any]:
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
            if updated.binding is not None:
                candidate.root_key = updated.binding.root_key
            self.storage.bind(
                candidate,
                self._encryption_principal(account),
                keyname_path="properties.keyVaultProperties.keyUri",
                previous=updated.binding,
            )
            updated.source, updated.binding = "Microsoft.KeyVault", candidate
        else:
            raise errors.invalid_request_parameters("properties.source")
        updated.modified = now
        account.scopes[scope_name.lower()] = updated
        return 200, updated.to_json(account.id)

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
        runner, port = await self._serve(proxy.app, self.blob_host, 0)
        proxy.origin = f"https://{self.blob_host}:{port}"
        self._proxies[account_name.lower()] = proxy
        self._proxy_runners[account_name.lower()] = runner
        return proxy.endpoint

    async def _stop_proxy(self, key: str, proxy: BlobProxy) -> None:
        await proxy.close()
        runner = self._proxy_runners.pop(key, None)
        if runner is not None:
            await self._server.unserve(runner)

    # ---- vaults -------------------------------------------------------------------------------------
    def _sync_vaults(self) -> None:
        """Vaults created directly in the Key Vault emulator appear in ARM (and their resource groups)."""
        new_vault = False
        for state in list(self.keyvault.vaults.values()):
            key = (state.subscription_id.lower(), state.resource_group.lower())
            if key not in self.resource_groups:
                self.resource_groups[key] = ResourceGroup(state.subscription_id, state.resource_group, state.location)
            if state.name.lower() not in self._known_vaults:
                self._known_vaults.add(state.name.lower())
                new_vault = True
        if new_vault and self.role_assignments:
            self._sync_role_assignments()

    def _find_vault(self, subscription: str, group: str, name: str) -> VaultState | None:
        state = self.keyvault.vaults.get(name.lower())
        if state is None:
            return None
        if state.subscription_id.lower() != subscription.lower() or state.resource_group.lower() != group.lower():
            return None
        return state

    def _vault_json(self, state: VaultState) -> dict[str, Any]:
        return vault_json(state, self.vault_tags.get(state.resource_id.lower()))

    def _list_vaults(self, req: Request, subscription: str, group: str | None = None) -> tuple[int, Any]:
        if group is not None:
            self._group(subscription, group)
        return 200, {
            "value": [
                self._vault_json(s)
                for s in list(self.keyvault.vaults.values())
                if s.subscription_id.lower() == subscription.lower()
                and (group is None or s.resource_group.lower() == group.lower())
            ]
        }

    def _vault(self, req: Request, subscription: str, group: str, name: str) -> tuple[int, Any]:
        state = self._find_vault(subscription, group, name)
        if req.method == "GET":
            if state is None:
                self._group(subscription, group)
                raise errors.resource_not_found(VAULT_TYPE, name, group)
            return 200, self._vault_json(state)
        body = req.body or {}
        props = body.get("properties") or {}
        if req.method == "PATCH":
            if state is None:
                self._group(subscription, group)
                raise errors.resource_not_found(VAULT_TYPE, name, group)
            self._update_vault(state, props)
            if isinstance(body.get("tags"), dict):
                self.vault_tags[state.resource_id.lower()] = dict(body["tags"])
            return 200, self._vault_json(state)
        rg = self._group(subscription, group)
        if state is None:
            if name.lower() in self.keyvault.vaults:
                raise errors.ArmError(409, "VaultAlreadyExists", f"The vault name '{name}' is already in use.")
            if not VAULT_NAME_RE.fullmatch(name):
                raise errors.ArmError(400, "VaultNameNotValid", f"The vault name '{name}' is not valid.")
            state = self._create_vault(subscription, rg, name, body)
            created = True
        else:
            self._update_vault(state, props)
            created = False
        self.vault_tags[state.resource_id.lower()] = dict(body.get("tags") or {})
        return (201 if created else 200), self._vault_json(state)

    def _create_vault(self, subscription: str, rg: ResourceGroup, name: str, body: dict[str, Any]) -> VaultState:
        props = body.get("properties") or {}
        if not props.get("tenantId") or not props.get("sku"):
            raise errors.ArmError(400, "BadRequest", "The properties tenantId and sku are required.")
        retention = int(props.get("softDeleteRetentionInDays") or 90)
        if not 7 <= retention <= 90:
            raise errors.ArmError(
                400, "BadRequest", 'The property "softDeleteRetentionInDays" must be between 7 and 90.'
            )  # unverified wording
        sku = props["sku"]
        try:
            state = self.keyvault.add_vault(
                name,
                subscription_id=subscription,
                resource_group=rg.name,
                soft_delete_retention_days=retention,
                purge_protection=bool(props.get("enablePurgeProtection")),
                enable_soft_delete=props.get("enableSoftDelete") is not False,
                rbac=bool(props.get("enableRbacAuthorization")),
                tenant_id=str(props["tenantId"]),
                location=str(body.get("location") or rg.location).replace(" ", "").lower(),
                sku=str(sku.get("name") if isinstance(sku, dict) else sku).lower(),
                access_policies=list(props.get("accessPolicies") or []),
                network_acls=props.get("networkAcls"),
            )
        except ValueError as exc:
            raise errors.ArmError(400, "BadRequest", str(exc)) from exc
        self._sync_role_assignments()
        return state

    def _update_vault(self, state: VaultState, props: dict[str, Any]) -> None:
        with state.lock:
            if state.purge_protection and props.get("enablePurgeProtection") is False:
                # Verified message (Azure/ai-hub #241).
                raise errors.ArmError(
                    400,
                    "BadRequest",
                    'The property "enablePurgeProtection" cannot be set to false. Enabling the purge protection '
                    "for a vault is an irreversible action.",
                )
            if state.enable_soft_delete and props.get("enableSoftDelete") is False:
                raise errors.ArmError(
                    400,
                    "BadRequest",
                    'The property "enableSoftDelete" cannot be set to false. Enabling the soft delete for a vault '
                    "is an irreversible action.",
                )  # unverified wording, same form as the purge protection message
            try:
                state.apply_json({"properties": {k: v for k, v in props.items() if v is not None}})
            except (ValueError, KeyError) as exc:
                raise errors.ArmError(400, "BadRequest", str(exc)) from exc

    def _access_policy(self, req: Request, subscription: str, group: str, name: str, kind: str) -> tuple[int, Any]:
        state = self._find_vault(subscription, group, name)
        if state is None:
            self._group(subscription, group)
            raise errors.resource_not_found(VAULT_TYPE, name, group)
        if kind.lower() not in ACCESS_POLICY_KINDS:
            raise errors.ArmError(400, "BadRequest", f"Invalid operation kind '{kind}': add, replace or remove.")
        entries = ((req.body or {}).get("properties") or {}).get("accessPolicies") or []
        try:
            policies = [AccessPolicy.from_json(e, state.tenant_id) for e in entries]
        except ValueError as exc:
            raise errors.ArmError(400, "BadRequest", str(exc)) from exc
        with state.lock:
            current = list(state.access_policies)
        for policy in policies:
            match = next(
                (
                    p
                    for p in current
                    if p.object_id.lower() == policy.object_id.lower()
                    and p.tenant_id.lower() == policy.tenant_id.lower()
                    and (p.application_id or "") == (policy.application_id or "")
                ),
                None,
            )
            if kind.lower() == "replace" or match is None:
                if kind.lower() != "remove":
                    current = [p for p in current if p is not match] + [policy]
                continue
            if kind.lower() == "add":
                merged = AccessPolicy(
                    match.object_id,
                    match.tenant_id,
                    match.application_id,
                    _union(match.keys, policy.keys),
                    {c: _union(match.other.get(c, []), policy.other.get(c, [])) for c in {*match.other, *policy.other}},
                )
                current = [merged if p is match else p for p in current]
            else:  # remove: take the listed permissions away; an entry left with none disappears
                keys = _minus(match.keys, policy.keys)
                other = {c: _minus(v, policy.other.get(c, [])) for c, v in match.other.items()}
                remaining = AccessPolicy(match.object_id, match.tenant_id, match.application_id, keys, other)
                keep = bool(keys) or any(other.values())
                current = [p for p in current if p is not match] + ([remaining] if keep else [])
        state.set_access_policies(current)
        return 200, {
            "id": f"{state.resource_id}/accessPolicies/{kind.lower()}",
            "name": kind.lower(),
            "type": "Microsoft.KeyVault/vaults/accessPolicies",
            "location": state.location,
            "properties": {"accessPolicies": [p.to_json() for p in current]},
        }

    # ---- authorization ------------------------------------------------------------------------------
    def _role(self, guid: str) -> tuple[dict[str, Any], bool] | None:
        if guid in roles.BUILTIN_ROLES:
            return roles.BUILTIN_ROLES[guid], False
        if guid in self.custom_roles:
            return self.custom_roles[guid], True
        return None

    def _role_definition(self, req: Request, scope: str, guid: str) -> tuple[int, Any]:
        guid = guid.lower()
        if req.method == "PUT":
            props = (req.body or {}).get("properties") or {}
            permissions = (props.get("permissions") or [{}])[0]
            if not props.get("roleName"):
                raise errors.ArmError(
                    400, "RoleDefinitionNameNullOrEmpty", "The role definition name cannot be null or empty."
                )
            definition = {
                "roleName": props["roleName"],
                "description": props.get("description", ""),
                "assignableScopes": list(props.get("assignableScopes") or [scope or "/"]),
                "actions": list(permissions.get("actions") or []),
                "notActions": list(permissions.get("notActions") or []),
                "dataActions": list(permissions.get("dataActions") or []),
                "notDataActions": list(permissions.get("notDataActions") or []),
            }
            self.custom_roles[guid] = definition
            for state in list(self.keyvault.vaults.values()):
                with state.lock:
                    state.role_definitions[guid] = definition
            return 201, roles.role_definition_json(guid, definition, scope, custom=True)
        found = self._role(guid)
        if found is None:
            raise errors.ArmError(
                404, "RoleDefinitionDoesNotExist", f"The specified role definition with ID '{guid}' does not exist."
            )
        return 200, roles.role_definition_json(guid, found[0], scope, custom=found[1])

    def _list_role_definitions(self, req: Request, scope: str) -> tuple[int, Any]:
        match = re.search(r"roleName eq '([^']+)'", req.query.get("$filter", ""), flags=re.IGNORECASE)
        wanted = match.group(1).lower() if match else None
        out = []
        for guid, definition in [*roles.BUILTIN_ROLES.items(), *self.custom_roles.items()]:
            if wanted and definition["roleName"].lower() != wanted:
                continue
            out.append(roles.role_definition_json(guid, definition, scope, custom=guid in self.custom_roles))
        return 200, {"value": out}

    def _role_assignment(self, req: Request, scope: str, name: str) -> tuple[int, Any]:
        record = self.role_assignments.get(name.lower())
        if req.method == "PUT":
            props = (req.body or {}).get("properties") or {}
            role_id, principal = props.get("roleDefinitionId"), props.get("principalId")
            if not role_id or not principal:
                raise errors.ArmError(
                    400, "InvalidRoleAssignmentRequest", "roleDefinitionId and principalId are required."
                )
            if self._role(_guid_of(str(role_id))) is None:
                raise errors.ArmError(
                    400,
                    "RoleDefinitionDoesNotExist",
                    f"The specified role definition with ID '{_guid_of(role_id)}' does not exist.",
                )
            for other in self.role_assignments.values():
                same = (other.scope.lower(), _guid_of(other.role_definition_id), other.principal_id.lower())
                if other.name != name.lower() and same == (scope.lower(), _guid_of(role_id), str(principal).lower()):
                    # Verified: ARM answers 409 RoleAssignmentExists for a duplicate assignment.
                    raise errors.ArmError(409, "RoleAssignmentExists", "The role assignment already exists.")
            record = RoleAssignmentRecord(
                name=name.lower(),
                scope=scope,
                role_definition_id=str(role_id),
                principal_id=str(principal),
                principal_type=str(props.get("principalType") or "ServicePrincipal"),
                created=iso(self.clock.now()) or "",
                description=props.get("description"),
            )
            self.role_assignments[name.lower()] = record
            self._arm_assignment_names.add(record.name)
            self._sync_role_assignments()
            return 201, record.to_json()
        if record is None or record.scope.lower() != scope.lower():
            if req.method == "DELETE":
                return 204, None
            raise errors.ArmError(404, "RoleAssignmentNotFound", f"The role assignment '{name}' is not found.")
        if req.method == "DELETE":
            del self.role_assignments[name.lower()]
            self._sync_role_assignments()
        return 200, record.to_json()

    def _list_role_assignments(self, req: Request, scope: str) -> tuple[int, Any]:
        filter_text = req.query.get("$filter", "")
        principal = re.search(r"principalId eq '([^']+)'", filter_text, flags=re.IGNORECASE)
        at_scope = "atscope()" in filter_text.lower()
        out = []
        for record in self.role_assignments.values():
            if principal and record.principal_id.lower() != principal.group(1).lower():
                continue
            above = _within(record.scope, scope)
            below = _within(scope, record.scope)
            if above or (below and not at_scope):
                out.append(record.to_json())
        return 200, {"value": out}

    def _sync_role_assignments(self) -> None:
        """Feed ARM role assignments to each vault (those at or above the vault, or on its keys)."""
        for state in list(self.keyvault.vaults.values()):
            relevant = [
                RoleAssignment(r.principal_id, r.role_definition_id, r.scope, id=r.name)
                for r in self.role_assignments.values()
                if _within(r.scope, state.resource_id) or _within(state.resource_id, r.scope)
            ]
            with state.lock:
                own = [a for a in state.role_assignments if a.id not in self._arm_assignment_names]
                state.role_assignments = own + relevant
                for guid, definition in self.custom_roles.items():
                    state.role_definitions.setdefault(guid, definition)

    # ---- diagnostic settings ------------------------------------------------------------------------
    def _resource_exists(self, resource_id: str) -> bool:
        lowered = resource_id.lower()
        if any(s.resource_id.lower() == lowered for s in self.keyvault.vaults.values()):
            return True
        return any(a.id.lower() == lowered for a in self.accounts.values())

    def _diagnostic_setting(self, req: Request, resource_id: str, name: str) -> tuple[int, Any]:
        if not self._resource_exists(resource_id):
            raise errors.ArmError(404, "ResourceNotFound", f"The Resource '{resource_id}' was not found.")
        key = (resource_id.lower(), name.lower())
        if req.method == "DELETE":
            self.diagnostic_settings.pop(key, None)
            self._apply_audit_setting(resource_id)
            return 200, None
        if req.method == "GET":
            if key not in self.diagnostic_settings:
                raise errors.ArmError(404, "ResourceNotFound", f"The diagnostic setting '{name}' doesn't exist.")
            return 200, self.diagnostic_settings[key]
        props = dict((req.body or {}).get("properties") or {})
        if not any(
            props.get(k)
            for k in ("storageAccountId", "workspaceId", "eventHubAuthorizationRuleId", "marketplacePartnerId")
        ):
            raise errors.ArmError(
                400, "BadRequest", "At least one of storage account, event hub, workspace or partner must be set."
            )
        setting = compact(
            {
                "id": f"{resource_id}/providers/microsoft.insights/diagnosticSettings/{name}",
                "name": name,
                "type": "Microsoft.Insights/diagnosticSettings",
                "properties": props,
            }
        )
        self.diagnostic_settings[key] = setting
        self._apply_audit_setting(resource_id)
        return 200, setting

    def _list_diagnostic_settings(self, req: Request, resource_id: str) -> tuple[int, Any]:
        return 200, {"value": [v for (r, _), v in self.diagnostic_settings.items() if r == resource_id.lower()]}

    def _apply_audit_setting(self, resource_id: str) -> None:
        """Tell the audit sink (emulators/audit.py) where the vault's AuditEvent records go now."""
        if self.audit is None or "/providers/microsoft.keyvault/vaults/" not in resource_id.lower():
            return
        archive = workspace = False
        destinations: set[str] = set()
        for (rid, _), setting in self.diagnostic_settings.items():
            if rid != resource_id.lower():
                continue
            props = setting.get("properties", {})
            logs = props.get("logs") or []
            audited = any(
                entry.get("enabled")
                and (
                    str(entry.get("category") or "").lower() == "auditevent"
                    or str(entry.get("categoryGroup") or "").lower() in ("audit", "alllogs")
                )
                for entry in logs
            )
            if not audited:
                continue
            archive = archive or bool(props.get("storageAccountId"))
            if props.get("workspaceId"):
                workspace = True
                destinations.add(
                    "Dedicated" if props.get("logAnalyticsDestinationType") == "Dedicated" else "AzureDiagnostics"
                )
        if not (archive or workspace):
            self.audit.disable_diagnostics(resource_id)
            return
        destination = destinations.pop() if len(destinations) == 1 else None
        self.audit.enable_diagnostics(resource_id, archive=archive, workspace=workspace, destination_type=destination)


def _union(a: list[str], b: list[str]) -> list[str]:
    seen = {p.lower() for p in a}
    return list(a) + [p for p in b if p.lower() not in seen]


def _minus(a: list[str], b: list[str]) -> list[str]:
    drop = {p.lower() for p in b}
    return [p for p in a if p.lower() not in drop]


def _new_id() -> str:
    import uuid

    return str(uuid.uuid4())
