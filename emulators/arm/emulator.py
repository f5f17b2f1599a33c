"""The emulated ARM endpoint: one HTTPS origin, the routes the unmodified mgmt SDK clients call.

``ArmEmulator`` is the router: authentication, request counting, ARM's error shape, and dispatch to one
module per resource provider, each holding its own resources and routes (``routing.py`` says how):

* ``resource_groups``  Microsoft.Resources: subscriptions, resource groups, the ``/resources`` listing
* ``identities``       Microsoft.ManagedIdentity: user-assigned identities
* ``storage_accounts`` Microsoft.Storage: accounts, encryption scopes, listKeys, blob endpoints
* ``vaults``           Microsoft.KeyVault: vaults and access policies
* ``authorization``    Microsoft.Authorization: role definitions and assignments
* ``insights``         Microsoft.Insights: diagnostic settings
* ``management_groups`` Microsoft.Management: the management-group hierarchy and ``getEntities``
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

from aiohttp import web

from emulators.background import ServerThread
from emulators.bus import SandboxBus
from emulators.clock import SandboxClock
from emulators.faults import FaultInjector
from emulators.keyvault import KeyVaultEmulator, SandboxCA
from emulators.keyvault.credential import DEFAULT_TENANT_ID, InvalidToken, SandboxCredential, decode_token

from . import errors
from .authorization import Authorization
from .identities import Identities
from .insights import DiagnosticSettings
from .management_groups import ManagementGroups
from .model import ResourceGroup, StorageAccount, UserAssignedIdentity
from .resource_events import resource_event
from .resource_groups import ResourceGroups
from .routing import Deferred, Request, Route, new_id
from .storage import KeyBinding, Principal, StorageKeyService
from .storage_accounts import StorageAccounts
from .throttling import ArmThrottling, LimitsSettings, OperationKind, operation_kind
from .vaults import Vaults

log = logging.getLogger(__name__)

#: A storage account's name in a request path (account names are global), for its change lock.
_STORAGE_ACCOUNT_PATH = re.compile(r"^/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.storage"
                                   r"/storageaccounts/([^/]+)", re.IGNORECASE)


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
        limits: LimitsSettings | None = None,
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
        self.azurite = azurite
        self.storage = StorageKeyService(
            keyvault, self.clock, key_poll_interval=key_poll_interval, unwrap_interval=unwrap_interval
        )
        self.storage_tick_seconds = storage_tick_seconds
        self.origin = ""
        self._lock = threading.RLock()
        self._resource_locks: dict[str, threading.Lock] = {}  # storage account name -> its change lock
        self._resource_locks_lock = threading.Lock()
        self._server = ServerThread("arm-emulator", timeout=60.0)
        self.resource_groups = ResourceGroups(tenant_id, self.resources_snapshot)
        self.identities = Identities(self.resource_groups, tenant_id)
        self.storage_accounts = StorageAccounts(
            self.resource_groups,
            self.identities,
            self.storage,
            clock=self.clock,
            tenant_id=tenant_id,
            azurite=azurite,
            server=self._server,
            ca=self.ca,
            blob_host=blob_host,
        )
        self.storage.bindings = self._bindings
        self.authorization = Authorization(keyvault, self.clock)
        self.management_groups = ManagementGroups(
            tenant_id, lambda: {subscription for subscription, _ in self.resource_groups.groups})
        self.authorization.management_group_covers = self.management_groups.covers
        self.management_groups.on_change = self._hierarchy_changed
        self.vaults = Vaults(self.resource_groups, keyvault, self.authorization)
        self.diagnostic_settings = DiagnosticSettings(audit, self._resource_exists)
        self._tick_task: asyncio.Task[None] | None = None
        self._started_keyvault = False
        self._request_counts: dict[str, dict[str, int]] = {}
        self._request_counts_lock = threading.Lock()
        # Azure's throttling and latency (throttling.py); None: every request is answered at once.
        self.throttling: ArmThrottling | None = None
        self.set_limits(limits)
        #: The sandbox's ARM faults (emulators/faults.py); None: none.
        self.faults: FaultInjector | None = None
        self.app = web.Application(client_max_size=16 * 1024 * 1024, middlewares=[self._middleware])

    def set_limits(self, limits: LimitsSettings | None) -> ArmThrottling | None:
        """Switch Azure's throttling and latency on (fresh, full buckets) or off, e.g. after building an estate."""
        if limits is not None and limits.scale != self.clock.rate:
            raise ValueError(f"ARM limits scaled {limits.scale}x need a sandbox clock at that rate "
                             f"(it runs at {self.clock.rate}x)")
        self.throttling = ArmThrottling(limits, self.clock) if limits is not None else None
        return self.throttling

    @property
    def accounts(self) -> dict[str, StorageAccount]:
        return self.storage_accounts.accounts

    @property
    def audit(self) -> Any:
        """The vaults' audit sink that diagnostic settings configure (None: settings are only recorded)."""
        return self.diagnostic_settings.audit

    @audit.setter
    def audit(self, sink: Any) -> None:
        with self._lock:
            self.diagnostic_settings.audit = sink

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
        if self._started_keyvault:
            self.keyvault.stop()
            self._started_keyvault = False

    def __enter__(self) -> ArmEmulator:
        return self.start()

    def __exit__(self, *args: object) -> None:
        self.stop()

    def _start_tick(self) -> asyncio.Task[None]:
        return self._server.every(
            lambda: self.storage_tick_seconds,
            lambda: self.storage.run_cycle(),  # noqa: PLW0108 - looked up at each tick
            what="storage key cycle",
            logger=log,
        )

    async def _shutdown(self) -> None:
        await self.storage_accounts.close()

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
            for uai in self.identities.all():
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
            return self.storage_accounts.bindings()

    def _principal_by_name(self, name: str) -> Principal | None:
        with self._lock:
            return self.storage_accounts.principal_by_name(name)

    # ---- Resource Graph ------------------------------------------------------------------------------
    def resources_snapshot(self) -> list[dict[str, Any]]:
        """Every resource in Resource Graph's ``resources`` table shape, encryption scopes included
        (type ``microsoft.storage/storageaccounts/encryptionscopes``, name the scope's own)."""
        rows: list[dict[str, Any]] = []
        with self._lock:
            self.vaults.sync()
            documents: list[tuple[dict[str, Any], str, str]] = []
            documents += [(a.to_json(), a.subscription_id, a.resource_group) for a in self.accounts.values()]
            # Child resources Resource Graph indexes too (``GET /resources`` lists only top-level ones).
            documents += [
                (scope.to_json(a.id), a.subscription_id, a.resource_group)
                for a in self.accounts.values()
                for scope in a.scopes.values()
            ]
            documents += [
                (i.to_json(), i.subscription_id, i.resource_group) for i in self.identities.all()
            ]
            for state in list(self.keyvault.vaults.values()):
                documents.append(
                    (
                        self.vaults.to_json(state),
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
            self.vaults.sync()
            return self.resource_groups.containers_snapshot()

    # ---- HTTP ---------------------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        headers = {"x-ms-request-id": new_id(), "x-ms-correlation-request-id": new_id()}
        try:
            principal = self._authenticate(request)
            self._count(principal, request.method)
            admission = self.throttling.admit(request.method, request.path, self.tenant_id) if self.throttling else None
            if admission is not None:
                headers.update(admission.headers)
                if admission.throttled:
                    return web.json_response(admission.throttled_body(), status=429,
                                             headers={**headers, **admission.throttled_headers()})
            await self._sandbox_fault(request)
            response = await handler(request)
            if admission is not None and admission.delay > 0:
                await asyncio.sleep(admission.delay)  # the operation's latency: concurrent callers overlap
        except errors.ArmError as exc:
            return web.json_response(exc.body(), status=exc.status, headers={**headers, **exc.headers})
        except web.HTTPException:
            raise
        except Exception:
            log.exception("ARM emulator failed on %s %s", request.method, request.path)
            failure = errors.ArmError(500, "InternalServerError", "The server encountered an internal error.")
            return web.json_response(failure.body(), status=500, headers=headers)
        response.headers.update(headers)
        return response

    async def _sandbox_fault(self, request: web.Request) -> None:
        """The sandbox's seeded ARM faults (emulators/faults.py): latency, then maybe an error for this request."""
        injector = self.faults
        if injector is None:
            return
        delay = injector.latency()
        if delay > 0:
            await asyncio.sleep(delay)
        fault = injector.draw(write=operation_kind(request.method, request.path) is not OperationKind.READS)
        if fault is not None:
            raise errors.sandbox_fault(fault)

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
        caller = decode_token(request.headers["Authorization"].partition(" ")[2].strip())  # checked by _middleware
        req = Request(request.method, request.path, dict(request.query), body, caller=caller, url=str(request.url))
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
            with self._resource_lock(req.method, path):
                with self._lock:
                    self.vaults.sync()
                    answer = handler(req, *match.groups())
                if isinstance(answer, Deferred):
                    answer.check()  # e.g. the storage service calling the vault: never under ARM's lock
                    with self._lock:
                        answer = answer.commit()
            status, payload = answer
            self._publish_resource_event(req, status)
            return status, payload
        raise errors.ArmError(
            404, "InvalidResourceType", f"The resource type could not be found for the request path '{req.path}'."
        )

    def _resource_lock(self, method: str, path: str) -> threading.Lock | contextlib.nullcontext[None]:
        """Azure applies one change of a storage account at a time: a change whose check runs outside
        ARM's lock (``Deferred``) holds its account's own lock from preparing to committing."""
        match = _STORAGE_ACCOUNT_PATH.match(path)
        if method in ("GET", "HEAD") or match is None:
            return contextlib.nullcontext()
        with self._resource_locks_lock:
            return self._resource_locks.setdefault(match.group(1).lower(), threading.Lock())

    def _publish_resource_event(self, req: Request, status: int) -> None:
        """ARM's resource event for a successful change (a DELETE answering 204 deleted nothing)."""
        succeeded = status in (200, 201, 202) if req.method != "DELETE" else status in (200, 202)
        if req.method not in ("PUT", "PATCH", "DELETE", "POST") or not succeeded:
            return
        event = resource_event(method=req.method, path=req.path, url=req.url or req.path, caller=req.caller,
                               tenant_id=self.tenant_id, now=self.clock.now())
        if event is not None:
            self.bus.publish_event(event)

    def _routes(self) -> list[Route]:
        # Diagnostic settings and authorization hang below any resource id: matched before everything else.
        return [
            *self.diagnostic_settings.routes(),
            *self.authorization.routes(),
            *self.resource_groups.routes(),
            *self.storage_accounts.routes(),
            *self.vaults.routes(),
            *self.identities.routes(),
            *self.management_groups.routes(),
        ]

    def _hierarchy_changed(self) -> None:
        """A group or subscription moved: the vaults' RBAC sees management-group assignments anew."""
        if self.authorization.role_assignments:
            self.authorization.sync()

    # ---- direct set-up (sandbox and tests, without an ARM request) -------------------------------------
    def ensure_resource_group(self, subscription: str, name: str, location: str = "westeurope") -> ResourceGroup:
        """Create a resource group directly (sandbox setup without an ARM request)."""
        with self._lock:
            return self.resource_groups.ensure(subscription, name, location)

    def add_identity(
        self, subscription: str, group: str, name: str, location: str = "westeurope"
    ) -> UserAssignedIdentity:
        """Create a user-assigned identity directly (sandbox setup without an ARM request)."""
        with self._lock:
            return self.identities.add(subscription, group, name, location)

    def seed_copies(self, template: str, names: Sequence[str], *, tags: Mapping[str, str]) -> None:
        """Bulk seeding for scale estates, without an ARM request: storage accounts ``names`` configured
        as the existing account ``template`` (same identity and key binding, as validated when the
        template was created), each with ``tags`` and its own account keys. Validating each one's key
        in the vault would take three vault calls per account; the copies share the template's
        validated (wrapped) root key instead. No resource events, no audit records, as for any seeding."""
        with self._lock:
            source = self.accounts[template.lower()]
            for name in names:
                if name.lower() in self.accounts:
                    raise ValueError(f"storage account {name} already exists")
                account = copy.deepcopy(source)
                account.name, account.tags, account.created = name, dict(tags), self.clock.now()
                account.keys = StorageAccount(account.subscription_id, account.resource_group, name,
                                              account.location, account.kind, account.sku_name, account.created,
                                              account.tenant_id).keys
                self.accounts[name.lower()] = account

    def _resource_exists(self, resource_id: str) -> bool:
        lowered = resource_id.lower()
        if any(s.resource_id.lower() == lowered for s in self.keyvault.vaults.values()):
            return True
        return any(a.id.lower() == lowered for a in self.accounts.values())
