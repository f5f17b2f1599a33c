"""Composition root: builds the real adapters from settings once per process; tests override it.

Credentials are managed identity only in Azure (identity-based AzureWebJobsStorage__* settings with
AzureWebJobsStorage__credential=managedidentity and __clientId); a connection string is accepted
only for the local storage emulator (Azurite), where there is no identity to use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from datetime import UTC, datetime

from azure.data.tables import TableClient
from azure.identity import ManagedIdentityCredential

from controller.adapters.table_ledger import TableEventLedger
from controller.errors import SettingsError
from controller.ports import EventLedger
from controller.service import Dependencies
from controller.settings import load_settings

_lock = threading.Lock()
_dependencies: Dependencies | None = None


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def dependencies() -> Dependencies:
    """The process-wide dependencies, built on first use from the environment."""
    global _dependencies  # noqa: PLW0603 - one composition root per worker process
    with _lock:
        if _dependencies is None:
            _dependencies = build(os.environ)
        return _dependencies


def override(deps: Dependencies | None) -> None:
    """Replace the process-wide dependencies (tests, the local sandbox); None rebuilds on next use."""
    global _dependencies  # noqa: PLW0603
    with _lock:
        _dependencies = deps


def build(environ: Mapping[str, str]) -> Dependencies:
    settings = load_settings(environ)
    return Dependencies(settings=settings, clock=SystemClock(), ledger=_table_ledger(environ, settings.ledger_table))


def _table_ledger(environ: Mapping[str, str], table_name: str) -> EventLedger:
    connection = environ.get("AzureWebJobsStorage", "").strip()
    if connection:
        if "AccountKey=" in connection and not _is_local_emulator(connection):
            raise SettingsError(
                "AzureWebJobsStorage",
                "a shared-key connection string is only accepted for the local emulator; use the "
                "identity-based AzureWebJobsStorage__* settings in Azure",
            )
        return TableEventLedger(TableClient.from_connection_string(connection, table_name=table_name))
    endpoint = environ.get("AzureWebJobsStorage__tableServiceUri", "").strip()
    account = environ.get("AzureWebJobsStorage__accountName", "").strip()
    if not endpoint and account:
        endpoint = f"https://{account}.table.core.windows.net"
    if not endpoint:
        raise SettingsError(
            "AzureWebJobsStorage",
            "is not configured: set AzureWebJobsStorage__accountName (identity-based) or, locally, "
            "the emulator's connection string",
        )
    client_id = environ.get("AzureWebJobsStorage__clientId") or None
    return TableEventLedger(
        TableClient(endpoint, table_name=table_name, credential=ManagedIdentityCredential(client_id=client_id))
    )


def _is_local_emulator(connection: str) -> bool:
    lowered = connection.lower()
    return "usedevelopmentstorage=true" in lowered or "devstoreaccount1" in lowered or "127.0.0.1" in lowered
