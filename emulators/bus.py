"""In-process wiring between the emulators of one sandbox.

The Key Vault emulator publishes what Azure would emit: Key Vault system events (to Event Grid)
and AuditEvent records (to diagnostic settings). Event Grid delivery and the audit sinks subscribe
here. Publishing never blocks on subscribers' I/O: subscribers queue and deliver on their own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class VaultEvent:
    """A system event before it is put in a delivery schema (Event Grid or CloudEvents): a Key Vault
    event (topic: the vault; ``data`` exactly Key Vault's: Id, VaultName, ObjectType, ObjectName,
    Version, NBF, EXP) or an Azure Resource Manager resource event (topic: ``/subscriptions/{id}``;
    subject: the resource id; ``data`` ARM's, ``data_version`` 2), published by emulators/arm.
    """

    event_id: str
    event_type: str  # e.g. Microsoft.KeyVault.KeyNewVersionCreated
    topic: str  # the vault's ARM resource id
    subject: str  # the object name (key name; vault name for VaultAccessPolicyChanged)
    event_time: datetime
    data: dict[str, Any]
    data_version: str = "1"


AuditRecord = dict[str, Any]
"""One Key Vault AuditEvent in the diagnostic-log (resource log) shape: time, resourceId,
operationName, operationVersion, category, resultType, resultSignature, resultDescription,
durationMs, callerIpAddress, correlationId, identity{claim{...}}, properties{id, requestUri,
httpStatusCode, clientInfo, isRbacAuthorized, isAccessPolicyMatch, trustedService ...}."""


class SandboxBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event_subscribers: list[Callable[[VaultEvent], None]] = []
        self._audit_subscribers: list[Callable[[AuditRecord], None]] = []

    def on_event(self, callback: Callable[[VaultEvent], None]) -> None:
        with self._lock:
            self._event_subscribers.append(callback)

    def on_audit(self, callback: Callable[[AuditRecord], None]) -> None:
        with self._lock:
            self._audit_subscribers.append(callback)

    def publish_event(self, event: VaultEvent) -> None:
        with self._lock:
            subscribers = list(self._event_subscribers)
        for callback in subscribers:
            callback(event)

    def publish_audit(self, record: AuditRecord) -> None:
        with self._lock:
            subscribers = list(self._audit_subscribers)
        for callback in subscribers:
            callback(record)
