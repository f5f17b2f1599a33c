"""The controller's real adapters against an adoption estate (emulators/adoption_estate.py) and Azurite.

Shared by tests/integration/test_adoption_scale.py and bench/adoption_scale.py: the emulated ARM
with Resource Graph mounted and Azure's limits scaled, the controller's inventory, storage control,
pacer, Table ledger and Storage queue, wired as controller/bootstrap.py wires them (the clock is the
sandbox's, so that key versions and budgets are read on one time line).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient

from controller import reconciler, rotation
from controller.adapters.alert_ledger import TableAlertLedger
from controller.adapters.credentials import ArmConnection
from controller.adapters.http_transport import pooled_transport
from controller.adapters.inventory import ConsumerDirectory, Inventory
from controller.adapters.key_vault import KeyVaults
from controller.adapters.rotation_ledger import TableRotationLedger
from controller.adapters.storage_control import StorageControl
from controller.adapters.work_queue import StorageWorkQueue, work_queue_client
from controller.alert_desk import AlertDesk
from controller.model import KeyRef, parse_vault_origin
from controller.vault_policy import VaultPolicy
from emulators.adoption_estate import AdoptionEstate, build
from emulators.arm import ArmEmulator
from emulators.arm.throttling import LimitsSettings
from emulators.bus import SandboxBus
from emulators.clock import SandboxClock
from emulators.keyvault import KeyVaultEmulator
from emulators.query_endpoints import mount_resource_graph

CONTROLLER = "c0000000-0000-4000-8000-00000000c0de"


@contextmanager
def scaled_arm(directory: Path, *, scale: float, middlewares: Sequence[Any] = ()) -> Iterator[ArmEmulator]:
    """An emulated ARM (and vaults) whose sandbox clock runs ``scale`` times faster, Resource Graph
    mounted, limits still off (``set_limits`` after building the estate). ``middlewares`` run inside
    the emulator's own (after a request was admitted)."""
    keyvault = KeyVaultEmulator(SandboxClock(rate=scale), SandboxBus(), directory=directory)
    arm = ArmEmulator(keyvault=keyvault, storage_tick_seconds=3600)
    arm.app.middlewares.extend(middlewares)
    graph = mount_resource_graph(arm.app, arm.resources_snapshot,
                                 resource_containers=arm.resource_containers_snapshot, clock=arm.clock)
    try:
        with arm:
            yield arm
    finally:
        graph.close()


def azure_limits(arm: ArmEmulator, **latency: float) -> LimitsSettings:
    """Azure's published limits and default latencies, at the ARM clock's scale."""
    settings = LimitsSettings(scale=arm.clock.rate)
    return LimitsSettings(settings.limits, {**settings.latency, **latency}, settings.scale, settings.region)


@dataclass
class Instance:
    """One controller instance: its own adapters and pacer, the shared ledger table and queue."""

    deps: reconciler.ReconcileDeps
    connection: ArmConnection
    inventory: Inventory
    closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for closer in self.closers:
            closer.close()


def instance(estate: AdoptionEstate, connection_string: str, *, table: str, queue: str, owner: str,
             concurrency: int = 16, time_budget: timedelta | None = None,
             refresh_every: int = reconciler.REFRESH_EVERY) -> Instance:
    arm = estate.arm
    origin = parse_vault_origin(estate.vault_uri.rstrip("/"), custom_origins=[estate.vault_uri.rstrip("/")])
    policy = VaultPolicy.of([origin.url])
    credential = arm.credential(CONTROLLER)
    connection = ArmConnection(credential, endpoint=arm.url, connection_verify=arm.ca_path, retry_total=8)
    storage = StorageControl(connection, policy=policy)
    inventory = Inventory(connection, storage, subscriptions=[estate.subscription], policy=policy)
    ledger_table = TableClient.from_connection_string(connection_string, table_name=table,
                                                      transport=pooled_transport(concurrency))
    alert_table = TableClient.from_connection_string(connection_string, table_name=table)
    queue_client = work_queue_client(connection_string, queue)
    deps = reconciler.ReconcileDeps(
        # The scale estate's vault is at its loopback origin, which no challenge resource can match.
        keys=KeyVaults(credential, connection_verify=arm.ca_path, verify_challenge_resource=False),
        inventory=ConsumerDirectory(inventory, connection),
        control=storage,
        ledger=TableRotationLedger(ledger_table),
        queue=StorageWorkQueue(queue_client),
        notifier=AlertDesk(TableAlertLedger(alert_table), {}, arm.clock, realert_after=timedelta(hours=24)),
        clock=arm.clock,
        planner=rotation.PlannerSettings(force_versionless_after=timedelta(0)),
        limits=reconciler.ExecutionLimits(concurrency=concurrency, time_budget=time_budget, owner=owner,
                                          refresh_every=refresh_every),
    )
    return Instance(deps, connection, inventory,
                    [storage, inventory, ledger_table, alert_table, queue_client, connection])


def key_of(estate: AdoptionEstate) -> KeyRef:
    origin = parse_vault_origin(estate.vault_uri.rstrip("/"), custom_origins=[estate.vault_uri.rstrip("/")])
    return KeyRef(origin, estate.key_name)


def continuations(connection_string: str, queue: str) -> list[dict[str, Any]]:
    """Take every visible work item off the queue (as the queue trigger would) and return them."""
    client = work_queue_client(connection_string, queue)
    items = []
    with client:
        try:
            messages = list(client.receive_messages(max_messages=32))
        except ResourceNotFoundError:
            return []  # nothing was ever enqueued
        for message in messages:
            items.append(json.loads(message.content))
            client.delete_message(message)
    return items


def new_names() -> tuple[str, str]:
    """A fresh ledger table and work queue name."""
    suffix = uuid.uuid4().hex[:12]
    return f"ledger{suffix}", f"work-{suffix}"


__all__ = ["CONTROLLER", "AdoptionEstate", "Instance", "azure_limits", "build", "continuations", "instance",
           "key_of", "new_names", "scaled_arm"]
