"""Run one or many emulated vaults in-process: an aiohttp server per vault in a background thread."""

from __future__ import annotations

import logging
import tempfile
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from emulators.background import ServerThread
from emulators.bus import SandboxBus
from emulators.clock import SandboxClock
from emulators.egress_proxy import EgressProxy
from emulators.faults import FaultInjector

from . import lifecycle
from .ca import SandboxCA
from .credential import DEFAULT_CALLER_IP, DEFAULT_TENANT_ID, SandboxCredential
from .server import VaultServer
from .state import AccessPolicy, NetworkAcls, RoleAssignment, VaultState

log = logging.getLogger(__name__)
#: Azure public cloud's Key Vault DNS suffix: a vault's host name is <name>.vault.azure.net.
PUBLIC_VAULT_SUFFIX = "vault.azure.net"


class KeyVaultEmulator:
    """Emulated Key Vault data planes, one HTTPS origin per vault, plus an HTTPS admin API.

    Usage (synchronous, e.g. in a pytest fixture)::

        with KeyVaultEmulator(clock, bus, ca) as kv:
            vault = kv.add_vault("kv1", subscription_id=SUB, resource_group="rg")
            client = KeyClient(vault.uri, kv.credential(oid), verify_challenge_resource=False,
                               connection_verify=kv.ca_path)

    With a ``proxy`` (emulators/egress_proxy.py) every vault also has its Azure host name,
    ``https://<name>.vault.azure.net``: ARM reports it as the vault URI, events carry it, and clients that use
    the proxy reach the vault under it with the challenge check on (``sdk_options()``). The loopback origin
    keeps answering, with ids built from it.

    ``start()`` / ``stop()`` do the same as the context manager. Vaults added before ``start()`` begin
    listening at start. Time-driven state is evaluated on every request, every ``tick_seconds`` and
    immediately in ``advance_clock``.
    """

    def __init__(
        self,
        clock: SandboxClock | None = None,
        bus: SandboxBus | None = None,
        ca: SandboxCA | None = None,
        *,
        tenant_id: str = DEFAULT_TENANT_ID,
        host: str = "127.0.0.1",
        admin_port: int = 0,
        tick_seconds: float = 1.0,
        directory: str | Path | None = None,
        proxy: EgressProxy | None = None,
    ) -> None:
        self.clock = clock or SandboxClock()
        self.proxy = proxy
        if proxy is not None:
            proxy.add_route(self.listener_for)
        self.bus = bus or SandboxBus()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if ca is None:
            if directory is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="kv-sandbox-")
                directory = self._tmp.name
            ca = SandboxCA(directory)
        self.ca = ca
        self.tenant_id = tenant_id
        self.host = host
        self.admin_port = admin_port
        self.tick_seconds = tick_seconds
        self.vaults: dict[str, VaultState] = {}
        self._servers: dict[str, VaultServer] = {}
        #: The sandbox's Key Vault faults (emulators/faults.py), shared by every vault; None: none.
        self.faults: FaultInjector | None = None
        self._runners: dict[str, web.AppRunner] = {}
        self._lock = threading.RLock()
        self._server = ServerThread("keyvault-emulator", timeout=60.0)
        self.admin_origin = ""

    # ---- lifecycle ------------------------------------------------------------------------------------
    @property
    def ca_path(self) -> str:
        return str(self.ca.ca_path)

    @property
    def admin_url(self) -> str:
        return self.admin_origin + "/_admin"

    @property
    def running(self) -> bool:
        return self._server.running

    def listener_for(self, host: str, port: int) -> tuple[str, int] | None:
        """The proxy's route: the loopback listener of the vault ``host`` names (``<name>.vault.azure.net:443``)."""
        name, _, suffix = host.lower().partition(".")
        if self.proxy is None or port != 443 or suffix != PUBLIC_VAULT_SUFFIX:
            return None
        state = self.vaults.get(name)
        if state is None or not state.port:
            return None
        return state.host, state.port

    def sdk_options(self) -> dict[str, Any]:
        """Keyword arguments for an SDK client (KeyClient, CryptographyClient) of the sandbox's own services:
        the CA, and either the proxy (Azure host names, challenge check on) or no challenge check (loopback)."""
        if self.proxy is not None:
            return {"connection_verify": self.ca_path, "proxies": {"https": self.proxy.url}}
        return {"connection_verify": self.ca_path, "verify_challenge_resource": False}

    def start(self) -> KeyVaultEmulator:
        if self._server.running:
            return self
        self._server.start()
        self._server.run(self._start_admin())
        for name in list(self.vaults):
            self._server.run(self._start_vault(name))
        self._server.every(
            lambda: self.tick_seconds,
            lambda: self.evaluate(),  # noqa: PLW0108 - looked up at each tick
            what="time-driven evaluation",
            logger=log,
        )
        return self

    def stop(self) -> None:
        if not self._server.running:
            return
        try:
            self._server.stop()  # cancels the tick, then cleans up the admin and vault runners
        finally:
            self._runners.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> KeyVaultEmulator:
        return self.start()

    def __exit__(self, *args: object) -> None:
        self.stop()

    # ---- vaults ---------------------------------------------------------------------------------------
    def add_vault(
        self,
        name: str,
        *,
        subscription_id: str = "00000000-0000-0000-0000-000000000000",
        resource_group: str = "rg-sandbox",
        soft_delete_retention_days: int = 90,
        purge_protection: bool = True,
        enable_soft_delete: bool = True,
        rbac: bool = False,
        tenant_id: str | None = None,
        location: str = "westeurope",
        sku: str = "premium",
        access_policies: list[AccessPolicy] | list[dict[str, Any]] | None = None,
        role_assignments: list[RoleAssignment] | list[dict[str, Any]] | None = None,
        network_acls: NetworkAcls | dict[str, Any] | None = None,
        host: str | None = None,
        port: int = 0,
    ) -> VaultState:
        """Create a vault and (when the emulator runs) start its HTTPS origin; returns its state."""
        state = self._register(
            name,
            subscription_id=subscription_id,
            resource_group=resource_group,
            soft_delete_retention_days=soft_delete_retention_days,
            purge_protection=purge_protection,
            enable_soft_delete=enable_soft_delete,
            rbac=rbac,
            tenant_id=tenant_id,
            location=location,
            sku=sku,
            access_policies=access_policies,
            role_assignments=role_assignments,
            network_acls=network_acls,
            host=host,
            port=port,
        )
        if self._server.running:
            self._server.run(self._start_vault(name.lower()))
        return state

    def _register(
        self,
        name: str,
        *,
        subscription_id: str = "00000000-0000-0000-0000-000000000000",
        resource_group: str = "rg-sandbox",
        soft_delete_retention_days: int = 90,
        purge_protection: bool = True,
        enable_soft_delete: bool = True,
        rbac: bool = False,
        tenant_id: str | None = None,
        location: str = "westeurope",
        sku: str = "premium",
        access_policies: list[AccessPolicy] | list[dict[str, Any]] | None = None,
        role_assignments: list[RoleAssignment] | list[dict[str, Any]] | None = None,
        network_acls: NetworkAcls | dict[str, Any] | None = None,
        host: str | None = None,
        port: int = 0,
    ) -> VaultState:
        tenant = tenant_id or self.tenant_id
        with self._lock:
            if name.lower() in self.vaults:
                raise ValueError(f"vault {name!r} already exists")
        state = VaultState(
            name,
            subscription_id=subscription_id,
            resource_group=resource_group,
            clock=self.clock,
            bus=self.bus,
            tenant_id=tenant,
            location=location,
            sku=sku,
            enable_soft_delete=enable_soft_delete,
            soft_delete_retention_days=soft_delete_retention_days,
            purge_protection=purge_protection,
            rbac=rbac,
            access_policies=[
                p if isinstance(p, AccessPolicy) else AccessPolicy.from_json(p, tenant) for p in access_policies or []
            ],
            role_assignments=[
                a if isinstance(a, RoleAssignment) else RoleAssignment.from_json(a, "") for a in role_assignments or []
            ],
            network_acls=(
                network_acls
                if isinstance(network_acls, NetworkAcls) or network_acls is None
                else NetworkAcls.from_json(network_acls)
            ),
        )
        for assignment in state.role_assignments:
            if not assignment.scope:
                assignment.scope = state.resource_id
        state.host = host or self.host
        state.port = port
        if self.proxy is not None:
            state.public_host = f"{name.lower()}.{PUBLIC_VAULT_SUFFIX}"
        with self._lock:
            if name.lower() in self.vaults:
                raise ValueError(f"vault {name!r} already exists")
            self.vaults[name.lower()] = state
            self._servers[name.lower()] = VaultServer(state, sandbox_faults=lambda: self.faults)
        return state

    async def add_vault_async(self, name: str, **kwargs: Any) -> VaultState:
        """add_vault for code running on the emulator's loop (the admin API)."""
        state = self._register(name, **kwargs)
        await self._start_vault(name.lower())
        return state

    def remove_vault(self, name: str) -> None:
        """Stop a vault's origin and forget it (ARM deleted the vault)."""
        key = name.lower()
        if self._server.running:
            self._server.run(self._stop_vault(key))
        with self._lock:
            del self.vaults[key]
            del self._servers[key]

    async def remove_vault_async(self, name: str) -> None:
        key = name.lower()
        await self._stop_vault(key)
        with self._lock:
            del self.vaults[key]
            del self._servers[key]

    async def _stop_vault(self, key: str) -> None:
        if key not in self.vaults:
            raise KeyError(key)
        runner = self._runners.pop(key, None)
        if runner is not None:
            await self._server.unserve(runner)

    def vault(self, name: str) -> VaultState:
        return self.vaults[name.lower()]

    def server(self, name: str) -> VaultServer:
        return self._servers[name.lower()]

    def credential(
        self,
        oid: str | None = None,
        *,
        appid: str | None = None,
        ip: str = DEFAULT_CALLER_IP,
        trusted_service: bool = False,
        tenant_id: str | None = None,
        name: str | None = None,
    ) -> SandboxCredential:
        """A TokenCredential for a principal (the controller, a managed identity ...) of this sandbox."""
        return SandboxCredential(
            oid, appid=appid, tenant_id=tenant_id or self.tenant_id, ip=ip, trusted_service=trusted_service, name=name
        )

    # ---- time -----------------------------------------------------------------------------------------
    def evaluate(self) -> int:
        """Bring every vault's time-driven state up to the sandbox clock; returns the events published."""
        published = 0
        for state in list(self.vaults.values()):
            outbox = lifecycle.Outbox()
            lifecycle.evaluate(state, outbox)
            published += outbox.flush(state)
        return published

    def advance_clock(self, delta: timedelta) -> int:
        """Advance the sandbox clock and evaluate immediately; returns the number of events published."""
        self.clock.advance(delta)
        return self.evaluate()

    # ---- coroutines on the emulator loop ----------------------------------------------------------------
    async def _serve(self, app: web.Application, host: str, port: int, *names: str) -> tuple[web.AppRunner, int]:
        context = self.ca.server_ssl_context(host, *names)  # names: the vault's Azure host name, if it has one
        return await self._server.serve(
            app, host, port, ssl_context=context, handle_signals=False, shutdown_timeout=0.5
        )

    async def _start_vault(self, key: str) -> None:
        state = self.vaults[key]
        if key in self._runners:
            return
        names = (state.public_host,) if state.public_host else ()
        runner, port = await self._serve(self._servers[key].app, state.host, state.port, *names)
        self._runners[key] = runner
        with state.lock:
            state.port = port
            state.listen_origin = f"https://{state.host}:{port}"
        log.info("vault %s listening at %s", state.name, state.origin)

    async def _start_admin(self) -> None:
        from .admin import build_admin_app

        runner, port = await self._serve(build_admin_app(self), self.host, self.admin_port)
        self._runners["\0admin"] = runner
        self.admin_origin = f"https://{self.host}:{port}"
