"""Test helpers that drive the emulated vaults with the real SDK clients (only tests use them)."""

from __future__ import annotations

import json
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from emulators.bus import AuditRecord, SandboxBus, VaultEvent
from emulators.keyvault.dataplane import resolve
from emulators.keyvault.emulator import KeyVaultEmulator


@dataclass
class Recorder:
    """Collects what the vaults publish on a bus (thread-safe appends)."""

    events: list[VaultEvent] = field(default_factory=list)
    audits: list[AuditRecord] = field(default_factory=list)

    def attach(self, bus: SandboxBus) -> Recorder:
        bus.on_event(self.events.append)
        bus.on_audit(self.audits.append)
        return self

    def events_of(self, event_type: str, subject: str | None = None) -> list[VaultEvent]:
        suffix = event_type.rsplit(".", 1)[-1]
        return [
            e
            for e in list(self.events)
            if e.event_type.rsplit(".", 1)[-1] == suffix and (subject is None or e.subject == subject)
        ]

    def audits_of(self, operation: str, *, status: int | None = None) -> list[AuditRecord]:
        return [
            a
            for a in list(self.audits)
            if a["operationName"] == operation and (status is None or a["properties"]["httpStatusCode"] == status)
        ]


@dataclass
class Exchange:
    method: str
    url: str
    status: int
    body: Any
    operation: str | None


class ResponseLog:
    """An azure-core ``raw_response_hook``: records every response (method, url, status, JSON body)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.exchanges: list[Exchange] = []

    def __call__(self, pipeline_response: Any) -> None:
        request = pipeline_response.http_request
        response = pipeline_response.http_response
        text = response.text() if response.status_code != 204 else ""
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = text
        path = urlsplit(request.url).path
        route = resolve(request.method, path)
        with self._lock:
            self.exchanges.append(
                Exchange(request.method, request.url, response.status_code, body, route.operation if route else None)
            )


class Admin:
    """A tiny synchronous client of the admin API."""

    def __init__(self, emulator: KeyVaultEmulator) -> None:
        self.emulator = emulator
        self._ssl = ssl.create_default_context(cafile=emulator.ca_path)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - https to the local admin origin
            self.emulator.admin_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, context=self._ssl, timeout=30) as response:  # noqa: S310
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = self.call(method, path, body)
        if status >= 300:
            raise AssertionError(f"admin {method} {path} -> {status} {payload}")
        return payload


def client_kwargs(emulator: KeyVaultEmulator, **extra: Any) -> dict[str, Any]:
    """Keyword arguments for KeyClient / CryptographyClient against the sandbox: through its proxy (the vault's
    Azure host name, the challenge check on) where the emulator has one, else at the loopback origin."""
    return {**emulator.sdk_options(), **extra}

