"""Rules about client-side-encrypted data: CMK-018 (blobs still wrapped by an old key version)."""

from __future__ import annotations

from controller.compliance.estate import ReadAspect
from controller.compliance.findings import Finding
from controller.compliance.resolve import KeyStatus, latest_usable, parse_configured_key
from controller.compliance.rules.context import (
    RuleContext,
    Unevaluable,
    finding,
    iso,
    lookup_not_evaluable,
    not_evaluable,
    not_read,
)
from controller.reasons import Reason


def cmk_018_blobs_rewrapped(context: RuleContext) -> list[Finding]:
    findings = []
    for census in sorted(context.estate.container_census, key=lambda census: census.name.lower()):
        resource = census.name
        if census.blobs_per_version is None:
            findings.append(not_evaluable("CMK-018", resource, not_read(
                context.estate, resource, ReadAspect.BLOB_CENSUS, f"the blobs of {resource} were not counted")))
            continue
        parsed = parse_configured_key(census.key_uri, context.estate.custom_origins)
        if parsed.ref is None:
            findings.append(not_evaluable("CMK-018", resource, Unevaluable(
                Reason.KEY_URI_INVALID, parsed.error, extra={"key_uri": census.key_uri})))
            continue
        key = parsed.ref.versionless
        lookup = context.index.lookup(key)
        if lookup.status is KeyStatus.NOT_EVALUABLE:
            findings.append(not_evaluable("CMK-018", resource, lookup_not_evaluable(lookup)))
            continue
        located = lookup.located
        if located is None:
            continue  # CMK-013 reports the missing or soft-deleted key with this container
        versions = located[1].versions
        if versions is None:
            findings.append(not_evaluable("CMK-018", resource, not_read(
                context.estate, key.uri, ReadAspect.KEY_VERSIONS, f"the versions of {key.uri} were not read")))
            continue
        latest = latest_usable(located[1], context.now)
        if latest is None:
            findings.append(not_evaluable("CMK-018", resource, Unevaluable(
                Reason.NO_USABLE_VERSION, f"{key.uri} has no enabled, valid version to re-wrap to")))
            continue
        counts = {version.lower(): count for version, count in sorted(census.blobs_per_version.items()) if count > 0}
        stale = {version: count for version, count in counts.items() if version != latest.version.lower()}
        overdue = context.now - latest.available_from > context.settings.rewrap_window
        if not stale or not overdue:
            continue
        findings.append(finding(
            "CMK-018", resource,
            f"{sum(stale.values())} blobs in {resource} are still wrapped by an old version of {key.name}",
            {"reason": Reason.BLOBS_WRAPPED_BY_OLD_VERSION.value, "key": key.uri, "latest_version": latest.version,
             "latest_available_since": iso(latest.available_from), "blobs_per_version": counts,
             "stale_blobs": sum(stale.values()),
             "rewrap_window_hours": context.settings.rewrap_window.total_seconds() / 3600},
            f"cmkctl rewrap --account {census.account} --container {census.container} --key {key.uri} "
            f"--to-version {latest.version}"))
    return findings
