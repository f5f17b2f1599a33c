"""The HTTPS front of one emulated vault: challenge authentication, firewall, authorization,
fault injection, throttling, operation counters and one AuditEvent record per request."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from emulators.faults import LOST_ANSWER, RESET, FaultInjector

from . import authz, records
from .credential import InvalidToken, Principal, decode_token
from .dataplane import Result, Route, bucket_for, execute, resolve
from .errors import KeyVaultError, bad_parameter, sandbox_fault_error
from .state import VaultState

log = logging.getLogger(__name__)
VAULT_AUDIENCES = ("https://vault.azure.net", "https://vault.azure.net/", "cfa8b339-82a2-471a-a3c9-0fc0be7a4093")
SERVICE_VERSION = "1.9.2750.1"


class _ConnectionReset(Exception):
    """Fault injection: drop the connection without a response."""


class _LostAnswer(Exception):
    """Fault injection: the operation took effect; drop the connection before its answer."""

    def __init__(self, result: Result) -> None:
        super().__init__("answer lost")
        self.result = result


class VaultUnreachable(Exception):
    """An in-process call (``VaultServer.call``) got no answer: the fault injection reset the connection
    or lost the answer (the operation then took effect), where an HTTPS client sees a connection error."""


@dataclass
class _Context:
    started: float
    method: str
    path: str
    api_version: str
    correlation_id: str
    route: Route | None
    caller_ip: str
    request_uri: str
    client_info: str
    tls_version: str | None
    operation: str = "Unknown"
    principal: Principal | None = None
    decision: authz.Decision = field(default_factory=lambda: authz.Decision(False))

    def __post_init__(self) -> None:
        if self.route is not None:
            self.operation = self.route.operation


def _challenge(state: VaultState) -> dict[str, str]:
    return {
        "WWW-Authenticate": (
            f'Bearer authorization="https://login.microsoftonline.com/{state.tenant_id}", '
            'resource="https://vault.azure.net"'
        )
    }


def _unauthorized(state: VaultState, message: str) -> KeyVaultError:
    return KeyVaultError(401, "Unauthorized", message, headers=_challenge(state))


def _tls_version(request: web.Request) -> str | None:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    version = ssl_object.version() if ssl_object is not None else None
    return version.replace("v", "").replace(".", "_") if version else None


async def _pause(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def _wait(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


class VaultServer:
    """Request handling for one vault (one origin): over HTTPS (``handle``, aiohttp) and, for the Azure
    services the sandbox runs in this process (Azure Storage's key validation), in-process (``call``).
    Both run the same pipeline: authentication, firewall, authorization, faults, throttling, the
    operation, counters, one audit record and the events."""

    def __init__(
        self,
        state: VaultState,
        *,
        rng: random.Random | None = None,
        sandbox_faults: Callable[[], FaultInjector | None] = lambda: None,
    ) -> None:
        self.state = state
        self.rng = rng or random.Random()
        self.sandbox_faults = sandbox_faults
        self.app = web.Application(client_max_size=4 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        with self.state.serving(request.host):
            return await self._handle(request)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        ctx = _Context(
            started=time.perf_counter(),
            method=request.method,
            path=request.path,
            api_version=request.query.get("api-version", ""),
            correlation_id=request.headers.get("x-ms-client-request-id") or str(uuid.uuid4()),
            route=resolve(request.method, request.path),
            caller_ip=request.remote or "",
            request_uri=str(request.url),
            client_info=request.headers.get("User-Agent", ""),
            tls_version=_tls_version(request),
        )
        result: Result | None = None
        error: KeyVaultError | None = None
        try:
            with state.counters.serving(ctx.operation):
                result = await self._pipeline(request, ctx)
        except (_ConnectionReset, _LostAnswer) as unanswered:
            self._unanswered(ctx, unanswered)
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError from None
        except Exception as exc:  # KeyVaultError, or an emulator bug answered 500
            error = self._error(ctx, exc)
        status = result.status if result else (error.status if error else 500)
        headers = {
            "x-ms-request-id": str(uuid.uuid4()),
            "x-ms-client-request-id": ctx.correlation_id,
            "x-ms-keyvault-service-version": SERVICE_VERSION,
            "x-ms-keyvault-region": state.location,
            "x-ms-keyvault-network-info": f"conn_type=Ipv4;addr={ctx.caller_ip};act_addr_fam=InterNetwork;",
            "Cache-Control": "no-cache",
        }
        if error is not None:
            headers.update(error.headers)
            response = web.json_response(error.body(), status=status, headers=headers)
        elif result is not None and result.body is not None:
            response = web.json_response(result.body, status=status, headers=headers)
        else:
            response = web.Response(status=status, headers=headers)
        self._conclude(ctx, result, error)
        return response

    def call(
        self,
        method: str,
        path: str,
        *,
        authorization: str,
        host: str,
        api_version: str,
        caller_ip: str,
        client_info: str,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Serve one request of an Azure service running in this process, as the HTTPS front would serve
        it from ``host`` (the vault's Azure host name or its loopback origin), minus TLS, the proxy and
        the SDK: the same authentication (``authorization`` is the Authorization header), firewall,
        authorization, faults, throttling, counters, audit record and events. Returns the JSON body;
        raises KeyVaultError for an error answer and VaultUnreachable when there is no answer."""
        with self.state.serving(host):
            ctx = _Context(
                started=time.perf_counter(),
                method=method,
                path=path,
                api_version=api_version,
                correlation_id=str(uuid.uuid4()),
                route=resolve(method, path),
                caller_ip=caller_ip,
                request_uri=f"https://{host}{path}?api-version={api_version}",
                client_info=client_info,
                # What the vault's listener negotiates with this machine's clients (Azure's services reach
                # Key Vault over TLS 1.2 or later): the records keep the shape they have over HTTPS.
                tls_version="TLS1_3",
            )
            try:
                with self.state.counters.serving(ctx.operation):
                    result = self._in_process_pipeline(ctx, authorization, body)
            except (_ConnectionReset, _LostAnswer) as unanswered:
                self._unanswered(ctx, unanswered)
                raise VaultUnreachable(str(unanswered)) from None
            except Exception as exc:  # KeyVaultError, or an emulator bug answered 500
                error = self._error(ctx, exc)
                self._conclude(ctx, None, error)
                raise error from exc
            self._conclude(ctx, result, None)
            return result.body

    def _error(self, ctx: _Context, exc: Exception) -> KeyVaultError:
        if isinstance(exc, KeyVaultError):
            return exc
        log.error("vault %s: internal error in %s", self.state.name, ctx.operation, exc_info=exc)
        return KeyVaultError(500, "InternalServerError", f"Internal error in the sandbox vault: {exc!r}")

    def _unanswered(self, ctx: _Context, unanswered: _ConnectionReset | _LostAnswer) -> None:
        if isinstance(unanswered, _LostAnswer):
            self._account(ctx, status=0, description="Injected fault: answer lost",
                          object_id=unanswered.result.object_id)
            unanswered.result.outbox.flush(self.state)  # it happened: its events are published as for any success
        else:
            self._account(ctx, status=0, description="Injected fault: connection reset")

    def _conclude(self, ctx: _Context, result: Result | None, error: KeyVaultError | None) -> None:
        """The request's counters and audit record, then the events of what it did."""
        if error is not None and error.status == 401:
            ctx.operation = "Authentication"
        status = result.status if result else (error.status if error else 500)
        self._account(ctx, status=status, description=error.message if error else "",
                      object_id=result.object_id if result else None)
        if result is not None:
            result.outbox.flush(self.state)

    def _admit(self, ctx: _Context, authorization: str) -> Route:
        """Authentication, the request's shape, the firewall and authorization: the admitted route."""
        principal = self._authenticate(authorization)
        ctx.principal = principal
        ctx.caller_ip = principal.ip or ctx.caller_ip
        route = ctx.route
        if not ctx.api_version:
            raise bad_parameter("The api-version query parameter is required")
        if route is None:
            raise KeyVaultError(400, "BadParameter", f"Unsupported request {ctx.method} {ctx.path}")
        ctx.operation = route.operation
        self._firewall(principal, ctx.caller_ip)
        ctx.decision = authz.authorize(self.state, principal, route.operation, route.key_name)
        if not ctx.decision.allowed:
            raise self._forbidden(principal, ctx.decision, route)
        return route

    async def _pipeline(self, request: web.Request, ctx: _Context) -> Result:
        route = self._admit(ctx, request.headers.get("Authorization", ""))
        body = await self._body(request)
        await _pause(self._fault_latency(route))
        self._injected_fault(route)
        await _pause(self._sandbox_latency())
        lose_answer = self._sandbox_fault(route, request.method)
        self._throttle(route, body)
        run = functools.partial(
            execute, self.state, route, body=body, query=dict(request.query), api_version=ctx.api_version
        )
        if route.crypto_op and self._nothing_due():
            # A crypto operation with no time-driven change pending is one short CPU-bound call (an
            # RSA private operation holds the GIL anyway): run it here rather than pay a thread
            # hand-off per request, and without the loop waiting on the state lock the worker holds.
            # Anything that may rotate keys (RSA generation) still goes to the executor.
            result = run()
        else:
            # The worker thread builds ids too: it runs in this request's context (VaultState.serving).
            result = await asyncio.get_running_loop().run_in_executor(None, contextvars.copy_context().run, run)
        if lose_answer:
            raise _LostAnswer(result)
        return result

    def _in_process_pipeline(self, ctx: _Context, authorization: str, body: dict[str, Any] | None) -> Result:
        """``_pipeline`` for ``call``: the caller's own thread waits and runs the operation."""
        route = self._admit(ctx, authorization)
        _wait(self._fault_latency(route))
        self._injected_fault(route)
        _wait(self._sandbox_latency())
        lose_answer = self._sandbox_fault(route, ctx.method)
        self._throttle(route, body)
        result = execute(self.state, route, body=body, query={"api-version": ctx.api_version},
                         api_version=ctx.api_version)
        if lose_answer:
            raise _LostAnswer(result)
        return result

    def _nothing_due(self) -> bool:
        # Unlocked read of one int: a stale value only sends this request to the executor, or
        # lets execute() run the (then due) evaluation itself, as it always does.
        due = self.state.next_due
        return due > 0 and self.state.clock.now().timestamp() < due

    # ---- pipeline steps -------------------------------------------------------------------------------
    def _authenticate(self, header: str) -> Principal:
        state = self.state
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("bearer", "pop") or not token.strip():
            raise _unauthorized(state, "AKV10000: Request is missing a Bearer or PoP token.")
        try:
            principal = decode_token(token.strip())
        except InvalidToken as exc:
            raise _unauthorized(state, f"AKV10001: The token is invalid: {exc}.") from exc
        if principal.aud and principal.aud.rstrip("/") not in {a.rstrip("/") for a in VAULT_AUDIENCES}:
            raise _unauthorized(
                state, f"AKV10022: Invalid audience. Expected https://vault.azure.net, found: {principal.aud}."
            )
        if principal.tid.lower() != state.tenant_id.lower():
            raise _unauthorized(
                state,
                f"AKV10032: Invalid issuer. Expected one of https://sts.windows.net/{state.tenant_id}/, found "
                f"https://sts.windows.net/{principal.tid}/.",
            )
        return principal

    def _firewall(self, principal: Principal, caller_ip: str) -> None:
        state = self.state
        with state.lock:
            admitted = state.network_acls.admits(caller_ip, principal.trusted_service)
        if not admitted:
            raise KeyVaultError(
                403,
                "Forbidden",
                "Client address is not authorized and caller is not a trusted service.\r\n"
                f"Client address: {caller_ip}\r\nCaller: {authz.caller_description(principal)}\r\n"
                f"Vault: {state.name};location={state.location}",
                "ForbiddenByFirewall",
            )

    def _forbidden(self, principal: Principal, decision: authz.Decision, route: Route) -> KeyVaultError:
        state = self.state
        if state.rbac:
            resource = state.resource_id + (f"/keys/{route.key_name}" if route.key_name else "")
            return KeyVaultError(
                403,
                "Forbidden",
                "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments "
                "or role definitions were changed recently, please observe propagation time.\r\n"
                f"Caller: {authz.caller_description(principal)}\r\nAction: '{decision.action}'\r\n"
                f"Resource: '{resource.lower()}'\r\nAssignment: (not found)\r\n"
                f"DecisionReason: 'DeniedWithNoValidRBAC' \r\nVault: {state.name};location={state.location}\r\n",
                "ForbiddenByRbac",
            )
        return KeyVaultError(
            403,
            "Forbidden",
            f"The user, group or application '{authz.caller_description(principal)}' does not have keys "
            f"{decision.permission or route.operation} permission on key vault "
            f"'{state.name};location={state.location}'. For help resolving this issue, please see "
            "https://go.microsoft.com/fwlink/?linkid=2125287",
            "AccessDenied",
        )

    async def _body(self, request: web.Request) -> dict[str, Any] | None:
        if request.method not in ("POST", "PUT", "PATCH"):
            return None
        raw = await request.read()
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise bad_parameter("The request body is not valid JSON") from exc
        if not isinstance(body, dict):
            raise bad_parameter("The request body must be a JSON object")
        return body

    def _fault_latency(self, route: Route) -> float:
        """The vault's own fault injection (admin API): the latency to add to this request, in seconds."""
        faults = self.state.faults
        if faults.operations and route.operation not in faults.operations:
            return 0.0
        return faults.latency_ms / 1000

    def _injected_fault(self, route: Route) -> None:
        """The vault's own fault injection, after its latency: maybe a connection reset or an error."""
        faults = self.state.faults
        if faults.operations and route.operation not in faults.operations:
            return
        if faults.reset_rate > 0 and self.rng.random() < faults.reset_rate:
            raise _ConnectionReset
        if faults.error_rate > 0 and self.rng.random() < faults.error_rate:
            status = faults.error_status
            code = {500: "InternalServerError", 503: "ServiceUnavailable", 429: "Throttled"}.get(status, "Fault")
            headers = {"Retry-After": "1"} if status in (429, 503) else {}
            raise KeyVaultError(status, code, f"Injected fault ({status}) for {route.operation}", headers=headers)

    def _sandbox_latency(self) -> float:
        """The sandbox's seeded Key Vault faults (emulators/faults.py): this request's latency, in seconds."""
        injector = self.sandbox_faults()
        return injector.latency() if injector is not None else 0.0

    def _sandbox_fault(self, route: Route, method: str) -> bool:
        """The sandbox's seeded Key Vault faults, after their latency, in Key Vault's error shape; True when
        the request is to be carried out and its answer lost."""
        injector = self.sandbox_faults()
        if injector is None:
            return False
        fault = injector.draw(write=method != "GET")
        if fault is None:
            return False
        if fault.kind == RESET:
            raise _ConnectionReset
        if fault.kind == LOST_ANSWER:
            return True
        raise sandbox_fault_error(fault, route.operation)

    def _throttle(self, route: Route, body: dict[str, Any] | None) -> None:
        state = self.state
        config = state.throttling
        if not config.enabled:
            return
        bucket, tier = bucket_for(state, route, body)
        limits = config.limits.get(bucket) or config.limits.get("vault") or {}
        limit = limits.get(tier)
        if limit is None:
            return
        wait = state.throttle.admit(f"{bucket}/{tier}", int(limit), config.window_seconds)
        if wait is not None:
            raise KeyVaultError(
                429,
                "Throttled",
                f"Request was not processed because too many requests were received. Reason: "
                f"{bucket} {tier} keys allow {limit} operations per {config.window_seconds:g} seconds.",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

    # ---- bookkeeping -----------------------------------------------------------------------------------
    def _object_id(self, route: Route | None) -> str:
        state = self.state
        if route is None:
            return state.uri
        if route.key_name:
            return state.key_id(route.key_name, route.version or None)
        return state.origin + ("/deletedkeys" if "Deleted" in route.operation else "/keys")

    def _account(self, ctx: _Context, *, status: int, description: str, object_id: str | None = None) -> None:
        state = self.state
        route = ctx.route
        principal = ctx.principal
        key = route.key_name.lower() if route and route.key_name else None
        state.counters.record(ctx.operation, key, status)
        record = records.audit_record(
            state,
            operation=ctx.operation,
            api_version=ctx.api_version,
            status=status,
            description=description,
            duration_ms=int((time.perf_counter() - ctx.started) * 1000),
            caller_ip=ctx.caller_ip,
            correlation_id=ctx.correlation_id,
            principal=principal,
            object_id=object_id or self._object_id(route),
            request_uri=ctx.request_uri,
            client_info=ctx.client_info,
            access_policy_match=ctx.decision.access_policy_match,
            trusted_service=bool(principal and principal.trusted_service),
            tls_version=ctx.tls_version,
        )
        if state.bus is not None:
            state.bus.publish_audit(record)
