"""The sandbox admin API (JSON over HTTPS on its own origin, ``KeyVaultEmulator.admin_url``).

No authentication: the sandbox listens on loopback only. Errors answer ``{"error": "<message>"}``.

  GET    /_admin/clock                           {"now", "offsetSeconds"}
  POST   /_admin/clock/advance                   {"seconds": n} or {"duration": "P1D"} -> {"now", "events"}
  POST   /_admin/evaluate                        evaluate time-driven state now -> {"events"}
  GET    /_admin/vaults                          [vault JSON]
  GET    /_admin/counters                        {vault name: counters} for every vault
  POST   /_admin/vaults                          {"name", "subscriptionId", "resourceGroup", "location",
                                                 "tenantId", "sku", "properties": {ARM vault properties}}
  GET    /_admin/vaults/{name}                   vault JSON (ARM shape + "sandbox" extras)
  DELETE /_admin/vaults/{name}                   stop the vault's origin and forget it
  PATCH  /_admin/vaults/{name}                   ARM vault properties: enableSoftDelete,
                                                 softDeleteRetentionInDays, enablePurgeProtection,
                                                 enableRbacAuthorization, tenantId, sku, networkAcls,
                                                 accessPolicies
  GET|PUT /_admin/vaults/{name}/accessPolicies   [AccessPolicyEntry]   (PUT replaces; emits
  POST   /_admin/vaults/{name}/accessPolicies    AccessPolicyEntry      VaultAccessPolicyChanged)
  DELETE /_admin/vaults/{name}/accessPolicies/{objectId}
  GET|PUT /_admin/vaults/{name}/roleAssignments  [{principalId, roleDefinitionId, scope?}]
  POST   /_admin/vaults/{name}/roleAssignments   {principalId, roleDefinitionId, scope?} -> with "id"
  DELETE /_admin/vaults/{name}/roleAssignments/{id}
  PUT    /_admin/vaults/{name}/roleDefinitions/{id}  {roleName, dataActions, notDataActions}
  GET|PUT /_admin/vaults/{name}/networkAcls      {defaultAction, bypass, ipRules: [{value}]}
  GET|PUT /_admin/vaults/{name}/throttling       {enabled, windowSeconds, limits: {bucket: {software, hsm}}}
  GET|PUT /_admin/vaults/{name}/faults           {errorRate, errorStatus, latencyMs, resetRate, operations,
                                                 seed}  (operations: operationNames; empty = all)
  GET    /_admin/vaults/{name}/counters          {total, throttled, byOperation, byStatus, byKey}
  DELETE /_admin/vaults/{name}/counters          reset
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import lifecycle
from .state import DEFAULT_THROTTLE_LIMITS, AccessPolicy, FaultConfig, NetworkAcls, RoleAssignment, VaultState

if TYPE_CHECKING:
    from .emulator import KeyVaultEmulator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _guard(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except KeyError as exc:
            return _error(404, f"not found: {exc.args[0]}")
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))

    return wrapped


async def _json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ValueError("request body is not valid JSON") from exc


def build_admin_app(emulator: KeyVaultEmulator) -> web.Application:
    app = web.Application()

    def vault(request: web.Request) -> VaultState:
        return emulator.vault(request.match_info["name"])

    async def get_clock(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"now": emulator.clock.now().isoformat(), "offsetSeconds": emulator.clock.offset.total_seconds()}
        )

    async def advance_clock(request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        if "duration" in body:
            seconds = float(lifecycle.parse_duration(str(body["duration"])))
        else:
            seconds = float(body.get("seconds", 0))
        loop = asyncio.get_running_loop()
        events = await loop.run_in_executor(None, emulator.advance_clock, timedelta(seconds=seconds))
        return web.json_response({"now": emulator.clock.now().isoformat(), "events": events})

    async def evaluate(request: web.Request) -> web.StreamResponse:
        events = await asyncio.get_running_loop().run_in_executor(None, emulator.evaluate)
        return web.json_response({"events": events})

    async def list_vaults(request: web.Request) -> web.StreamResponse:
        return web.json_response([v.to_json() for v in emulator.vaults.values()])

    async def create_vault(request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        props = body.get("properties") or {}
        name = str(body["name"])
        state = await emulator.add_vault_async(
            name,
            subscription_id=str(body.get("subscriptionId") or "00000000-0000-0000-0000-000000000000"),
            resource_group=str(body.get("resourceGroup") or "rg-sandbox"),
            location=str(body.get("location") or "westeurope"),
            tenant_id=props.get("tenantId") or body.get("tenantId"),
            soft_delete_retention_days=int(props.get("softDeleteRetentionInDays", 90)),
            purge_protection=bool(props.get("enablePurgeProtection", True)),
            enable_soft_delete=bool(props.get("enableSoftDelete", True)),
            rbac=bool(props.get("enableRbacAuthorization", False)),
            sku=str((props.get("sku") or {}).get("name", "premium")),
            access_policies=props.get("accessPolicies") or [],
            role_assignments=body.get("roleAssignments") or [],
            network_acls=props.get("networkAcls"),
            host=body.get("host"),
            port=int(body.get("port") or 0),
        )
        return web.json_response(state.to_json(), status=201)

    async def get_vault(request: web.Request) -> web.StreamResponse:
        return web.json_response(vault(request).to_json())

    async def delete_vault(request: web.Request) -> web.StreamResponse:
        await emulator.remove_vault_async(request.match_info["name"])
        return web.Response(status=204)

    async def patch_vault(request: web.Request) -> web.StreamResponse:
        state = vault(request)
        state.apply_json(await _json(request))
        return web.json_response(state.to_json())

    async def get_policies(request: web.Request) -> web.StreamResponse:
        state = vault(request)
        with state.lock:
            return web.json_response([p.to_json() for p in state.access_policies])

    async def put_policies(request: web.Request) -> web.StreamResponse:
        state = vault(request)
        body = await _json(request)
        if not isinstance(body, list):
            raise TypeError("expected a list of access policies")
        state.set_access_policies([AccessPolicy.from_json(p, state.tenant_id) for p in body])
        return await get_policies(request)

    async def add_policy(request: web.Request) -> web.StreamResponse:
        state = vault(request)
        state.upsert_access_policy(AccessPolicy.from_json(await _json(request), state.tenant_id))
        return await get_policies(request)

    async def delete_policy(request: web.Request) -> web.StreamResponse:
        state = vault(request)
        if not state.remove_access_policy(request.match_info["oid"]):
            raise KeyError(request.match_info["oid"])
        return web.Response(status=204)

    async def get_assignments(request: web.Request) -> web.StreamResponse:
        state = vault(request)
        with state.lock:
            return web.json_response([a.to_json() for a in state.role_assignments])

    async def put_assignments(request: web.Request) -> web.StreamResponse:
        state = vault(request)
        body = await _json(request)
        if not isinstance(body, list):
            raise TypeError("expected a list of role assignments")
        assignments = [RoleAssignment.from_json(a, state.resource_id) for a in body]
        with state.lock:
            state.role_assignments = assignments
        return await get_assignments(request)

    async def add_assignment(request: web.Request) -> web.StreamResponse:
        state = vault(request)
        assignment = state.add_role_assignment(RoleAssignment.from_json(await _json(request), state.resource_id))
        return web.json_response(assignment.to_json(), status=201)

    async def delete_assignment(request: web.Request) -> web.StreamResponse:
        if not vault(request).remove_role_assignment(request.match_info["id"]):
            raise KeyError(request.match_info["id"])
        return web.Response(status=204)

    async def put_role_definition(request: web.Request) -> web.StreamResponse:
        state = vault(request)
        body = await _json(request)
        definition = {
            "roleName": str(body.get("roleName") or request.match_info["id"]),
            "dataActions": [str(a) for a in body.get("dataActions") or []],
            "notDataActions": [str(a) for a in body.get("notDataActions") or []],
        }
        with state.lock:
            state.role_definitions[request.match_info["id"].lower()] = definition
        return web.json_response(definition)

    async def get_acls(request: web.Request) -> web.StreamResponse:
        state = vault(request)
        with state.lock:
            return web.json_response(state.network_acls.to_json())

    async def put_acls(request: web.Request) -> web.StreamResponse:
        state = vault(request)
        acls = NetworkAcls.from_json(await _json(request))
        with state.lock:
            state.network_acls = acls
        return await get_acls(request)

    async def get_throttling(request: web.Request) -> web.StreamResponse:
        return web.json_response(vault(request).throttling.to_json())

    async def put_throttling(request: web.Request) -> web.StreamResponse:
        state = vault(request)
        body = await _json(request)
        with state.lock:
            config = state.throttling
            config.enabled = bool(body.get("enabled", True))
            config.window_seconds = float(body.get("windowSeconds", config.window_seconds))
            if "limits" in body:
                limits = {k: dict(v) for k, v in DEFAULT_THROTTLE_LIMITS.items()}
                for bucket, tiers in (body["limits"] or {}).items():
                    limits[str(bucket)] = {str(t): int(n) for t, n in tiers.items()}
                config.limits = limits
            state.throttle.reset()
        return await get_throttling(request)

    async def get_faults(request: web.Request) -> web.StreamResponse:
        return web.json_response(vault(request).faults.to_json())

    async def put_faults(request: web.Request) -> web.StreamResponse:
        state = vault(request)
        config = FaultConfig.from_json(await _json(request))
        if config.seed is not None:
            emulator.server(state.name).rng.seed(config.seed)
        state.faults = config
        return await get_faults(request)

    async def get_counters(request: web.Request) -> web.StreamResponse:
        return web.json_response(vault(request).counters.snapshot())

    async def all_counters(request: web.Request) -> web.StreamResponse:
        return web.json_response({v.name: v.counters.snapshot() for v in emulator.vaults.values()})

    async def reset_counters(request: web.Request) -> web.StreamResponse:
        vault(request).counters.reset()
        return web.Response(status=204)

    r = app.router
    base = "/_admin/vaults/{name}"
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/_admin/clock", get_clock),
        ("POST", "/_admin/clock/advance", advance_clock),
        ("POST", "/_admin/evaluate", evaluate),
        ("GET", "/_admin/vaults", list_vaults),
        ("GET", "/_admin/counters", all_counters),
        ("POST", "/_admin/vaults", create_vault),
        ("GET", base, get_vault),
        ("PATCH", base, patch_vault),
        ("DELETE", base, delete_vault),
        ("GET", base + "/accessPolicies", get_policies),
        ("PUT", base + "/accessPolicies", put_policies),
        ("POST", base + "/accessPolicies", add_policy),
        ("DELETE", base + "/accessPolicies/{oid}", delete_policy),
        ("GET", base + "/roleAssignments", get_assignments),
        ("PUT", base + "/roleAssignments", put_assignments),
        ("POST", base + "/roleAssignments", add_assignment),
        ("DELETE", base + "/roleAssignments/{id}", delete_assignment),
        ("PUT", base + "/roleDefinitions/{id}", put_role_definition),
        ("GET", base + "/networkAcls", get_acls),
        ("PUT", base + "/networkAcls", put_acls),
        ("GET", base + "/throttling", get_throttling),
        ("PUT", base + "/throttling", put_throttling),
        ("GET", base + "/faults", get_faults),
        ("PUT", base + "/faults", put_faults),
        ("GET", base + "/counters", get_counters),
        ("DELETE", base + "/counters", reset_counters),
    ]
    for method, path, handler in routes:
        r.add_route(method, path, _guard(handler))
    return app
