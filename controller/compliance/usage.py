"""Per key of the estate, each version: who uses it and whether it is safe to disable (pure).

The verdict is the reconciler's own (``controller.rotation.retirement``), fed from the estate instead of
fresh reads: the consumers the sweep found configured with the key, the version census of the
registered containers, and the audit log's last successful unwraps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from controller import rotation
from controller.compliance.report import KeyReport, VersionReport
from controller.compliance.resolve import ConsumerView, EstateIndex, KeyUse, latest_usable
from controller.model import Consumer, KeyRef, KeyState

#: The audit evidence of one key: last successful unwrap per version, None when there is no audit log.
LastUnwraps = Callable[[KeyRef], Mapping[str, datetime] | None]


def key_reports(lookups: EstateIndex, last_unwraps: LastUnwraps, *, now: datetime,
                window: timedelta) -> tuple[KeyReport, ...]:
    """One KeyReport per key a consumer is configured with, in key URI order. A key whose versions
    were not read (or that is missing) has no version rows: its CMK-000 / CMK-013 finding says why."""
    return tuple(_key_report(lookups, use, last_unwraps, now=now, window=window) for use in lookups.key_uses)


def _key_report(lookups: EstateIndex, use: KeyUse, last_unwraps: LastUnwraps, *, now: datetime,
                window: timedelta) -> KeyReport:
    located = lookups.lookup(use.key).located
    if located is None or located[1].versions is None:
        return KeyReport(key=use.uri, versions=())
    versions = located[1].versions
    state = KeyState(key=use.key.versionless, versions=versions, current_version=located[1].current_version)
    consumers = [_consumer(view) for view in use.consumers]
    blobs, containers = _census(lookups, use.key)
    counted = _counted(lookups, use.key)
    usages = rotation.retirement(state, consumers, blobs, last_unwraps(use.key), now=now, window=window)
    latest = latest_usable(located[1], now)
    by_version = {info.version: info for info in versions}
    return KeyReport(key=use.uri, versions=tuple(
        VersionReport(
            version=usage.version,
            enabled=usage.enabled,
            created=usage.created,
            expires=by_version[usage.version].expires,
            latest=latest is not None and latest.version == usage.version,
            used_by=tuple(usage.consumers) + tuple(containers.get(usage.version, ())),
            blobs=blobs.get(usage.version, 0) if counted else None,
            safe_to_disable=usage.safe,
            why=usage.message,
        )
        for usage in usages
    ))


def _consumer(view: ConsumerView) -> Consumer:
    """The reconciler's Consumer of an estate consumer (its key parsed: only those are in key_uses)."""
    assert view.key.ref is not None  # noqa: S101 - key_uses holds parsed keys only
    current = view.current.ref if view.current is not None else None
    return Consumer(
        kind=view.kind,
        resource_id=view.resource_id,
        account_name=view.account.name,
        key=view.key.ref,
        current_key=current,
        scope_name=view.scope.name if view.scope is not None else None,
        last_key_rotation=view.last_key_rotation,
    )


def _census(lookups: EstateIndex, key: KeyRef) -> tuple[Counter[str], dict[str, list[str]]]:
    """Blobs per version of ``key`` over the registered containers, and which containers hold each."""
    blobs: Counter[str] = Counter()
    holders: dict[str, list[str]] = {}
    for census in lookups.estate.container_census:
        if census.blobs_per_version is None or not _same_key(census.key_uri, key):
            continue
        for version, count in census.blobs_per_version.items():
            if count > 0:
                blobs[version] += count
                holders.setdefault(version, []).append(census.name)
    return blobs, holders


def _counted(lookups: EstateIndex, key: KeyRef) -> bool:
    """Whether any container registered with ``key`` was counted (else blobs are unknown, not zero)."""
    return any(census.blobs_per_version is not None and _same_key(census.key_uri, key)
               for census in lookups.estate.container_census)


def _same_key(uri: str, key: KeyRef) -> bool:
    return uri.strip().rstrip("/").lower() == key.versionless.uri.lower()
