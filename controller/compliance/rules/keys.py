"""Rules about keys: CMK-005, 009, 010, 013, 020. A key is evaluated when a consumer is configured with it
(CMK-013 also when a registered container's blobs are wrapped by it); the finding's resource is the
versionless key URI with the vault host in lower case."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta

from controller.compliance.estate import ReadAspect, VaultKey, same_name
from controller.compliance.findings import Finding
from controller.compliance.resolve import (
    ConsumerView,
    KeyStatus,
    KeyUse,
    find_version,
    key_order,
    parse_configured_key,
)
from controller.compliance.rules.context import (
    RuleContext,
    Unevaluable,
    finding,
    iso,
    lookup_not_evaluable,
    not_evaluable,
    not_read,
)
from controller.model import KeyRef, KeyVersionInfo, Severity
from controller.reasons import Reason

#: Key types Azure Storage accepts for a customer-managed key.
SUPPORTED_KEY_TYPES = ("RSA", "RSA-HSM")
SUPPORTED_RSA_SIZES = (2048, 3072, 4096)

_DURATION = re.compile(
    r"P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?",
    re.IGNORECASE | re.ASCII,
)


def parse_duration(text: str) -> timedelta:
    """An ISO 8601 duration as Key Vault writes them (``P90D``, ``P2Y``, ``P1Y6M``, ``PT12H``).

    Years count 365 days and months 30 (Key Vault's own rounding for rotation policies). Raises
    ValueError for anything else.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None or not any(match.groupdict().values()):
        raise ValueError(f"{text!r} is not an ISO 8601 duration")
    parts = {name: int(value) for name, value in match.groupdict().items() if value}
    return timedelta(days=parts.get("years", 0) * 365 + parts.get("months", 0) * 30 + parts.get("weeks", 0) * 7
                     + parts.get("days", 0), hours=parts.get("hours", 0), minutes=parts.get("minutes", 0),
                     seconds=parts.get("seconds", 0))


def _found_keys(context: RuleContext, rule: str) -> Iterable[tuple[KeyUse, VaultKey] | Finding]:
    """Each key in use with its lookup when it is found; a CMK-000 when it cannot be looked up. Missing
    and soft-deleted keys are CMK-013's."""
    for use in context.index.key_uses:
        lookup = context.index.lookup(use.key)
        located = lookup.located
        if lookup.status is KeyStatus.NOT_EVALUABLE:
            yield not_evaluable(rule, use.uri, lookup_not_evaluable(lookup))
        elif located is not None:
            yield use, located[1]


def _vault_name(use: KeyUse) -> str:
    return use.key.vault.name or use.key.vault.host


def cmk_005_key_type_and_size(context: RuleContext) -> list[Finding]:
    findings: list[Finding] = []
    minimum = context.settings.min_rsa_key_size
    for item in _found_keys(context, "CMK-005"):
        if isinstance(item, Finding):
            findings.append(item)
            continue
        use, key = item
        rsa = any(same_name(key.kty, supported) for supported in SUPPORTED_KEY_TYPES)
        if rsa and key.key_size is None:
            findings.append(not_evaluable("CMK-005", use.uri, Unevaluable(
                Reason.NOT_READ, f"the size of RSA key {key.name} was not reported")))
            continue
        if not rsa:
            reason = Reason.UNSUPPORTED_KEY_TYPE
        elif key.key_size not in SUPPORTED_RSA_SIZES:
            reason = Reason.UNSUPPORTED_KEY_SIZE
        elif key.key_size is not None and key.key_size < minimum:
            reason = Reason.KEY_SIZE_BELOW_MINIMUM
        else:
            continue
        kty = "RSA-HSM" if key.kty.upper().endswith("-HSM") else "RSA"
        findings.append(finding(
            "CMK-005", use.uri, f"key {key.name} is {key.kty} {key.key_size or ''}".rstrip()
            + f": storage needs RSA of {', '.join(map(str, SUPPORTED_RSA_SIZES))} bits, at least {minimum}",
            {"reason": reason.value, "kty": key.kty, "key_size": key.key_size, "minimum_size": minimum},
            f"az keyvault key create --vault-name {_vault_name(use)} --name {key.name} --kty {kty} --size {minimum} "
            "(a new version of the same key; versionless consumers adopt it, pinned ones must be updated)"))
    return findings


def _version_problem(info: KeyVersionInfo, now: datetime, warning: timedelta) -> Reason | None:
    if not info.enabled:
        return Reason.VERSION_DISABLED
    if info.expires is not None and info.expires <= now:
        return Reason.VERSION_EXPIRED
    if info.not_before is not None and now < info.not_before:
        return Reason.VERSION_NOT_YET_VALID
    if info.expires is not None and info.expires - now <= warning:
        return Reason.VERSION_EXPIRES_SOON
    return None


def cmk_009_version_in_use_valid(context: RuleContext) -> list[Finding]:
    findings: list[Finding] = []
    for item in _found_keys(context, "CMK-009"):
        if isinstance(item, Finding):
            findings.append(item)
            continue
        use, key = item
        versions = key.versions
        if versions is None:
            findings.append(not_evaluable("CMK-009", use.uri, not_read(
                context.estate, use.uri, ReadAspect.KEY_VERSIONS, f"the versions of {use.uri} were not read")))
            continue
        users: dict[str, list[str]] = {}
        unknown: list[str] = []
        for consumer in use.consumers:
            version = consumer.version_in_use
            if version is None:
                unknown.append(consumer.resource_id)
            else:
                users.setdefault(version.lower(), []).append(consumer.resource_id)
        problems: list[dict[str, object]] = []
        unlisted: list[str] = []
        for version in sorted(users):
            info = find_version(versions, version)
            if info is None:
                unlisted.append(version)
                continue
            reason = _version_problem(info, context.now, context.settings.expiry_warning)
            if reason is not None:
                problems.append({"version": info.version, "reason": reason.value, "enabled": info.enabled,
                                 "not_before": iso(info.not_before), "expires": iso(info.expires),
                                 "used_by": tuple(users[version])})
        if unknown:
            findings.append(not_evaluable("CMK-009", use.uri, Unevaluable(
                Reason.CURRENT_VERSION_UNKNOWN, "consumers report no version of the key in use",
                extra={"consumers": tuple(unknown)})))
        if unlisted:
            findings.append(not_evaluable("CMK-009", use.uri, Unevaluable(
                Reason.VERSION_NOT_LISTED, "versions in use are not among the versions the vault lists",
                extra={"versions": tuple(unlisted),
                       "consumers": tuple(user for version in unlisted for user in users[version])})))
        if problems:
            findings.append(_version_finding(use, problems))
    return findings


def _version_finding(use: KeyUse, problems: list[dict[str, object]]) -> Finding:
    critical = [problem for problem in problems if problem["reason"] != Reason.VERSION_EXPIRES_SOON.value]
    severity = Severity.CRITICAL if critical else Severity.MEDIUM
    vault = _vault_name(use)
    steps = []
    for problem in problems:
        version, reason = problem["version"], problem["reason"]
        if reason == Reason.VERSION_DISABLED.value:
            steps.append(f"az keyvault key set-attributes --vault-name {vault} --name {use.key.name} "
                         f"--version {version} --enabled true")
        elif reason == Reason.VERSION_NOT_YET_VALID.value:
            steps.append(f"move the consumers of {version} to a valid version, or az keyvault key set-attributes "
                         f"--vault-name {vault} --name {use.key.name} --version {version} --not-before <now>")
        else:
            steps.append(f"az keyvault key rotate --vault-name {vault} --name {use.key.name} and let the consumers "
                         f"of {version} adopt the new version (update pinned ones)")
    title = ("the key version in use is disabled, expired or not yet valid" if critical
             else "the key version in use expires soon")
    return finding("CMK-009", use.uri, f"{use.key.name}: {title}",
                   {"reason": critical[0]["reason"] if critical else Reason.VERSION_EXPIRES_SOON.value,
                    "versions": tuple(problems)},
                   "; ".join(steps), severity=severity)


def cmk_010_rotation_policy(context: RuleContext) -> list[Finding]:
    findings: list[Finding] = []
    max_age = context.settings.rotation_max_age
    for item in _found_keys(context, "CMK-010"):
        if isinstance(item, Finding):
            findings.append(item)
            continue
        use, key = item
        if key.rotation_policy is None or key.versions is None:
            aspect = ReadAspect.ROTATION_POLICY if key.rotation_policy is None else ReadAspect.KEY_VERSIONS
            findings.append(not_evaluable("CMK-010", use.uri, not_read(
                context.estate, use.uri, aspect, f"the {aspect.value} of {use.uri} was not read")))
            continue
        policy = key.rotation_policy
        try:
            periods = [_rotation_period(action.time_after_create, action.time_before_expiry, policy.expires_after)
                       for action in policy.rotate_actions]
        except ValueError as err:
            findings.append(not_evaluable("CMK-010", use.uri, Unevaluable(Reason.DURATION_INVALID, str(err))))
            continue
        if any(period is not None and period <= max_age for period in periods):
            continue
        enabled = [info for info in key.versions if info.enabled]
        if not enabled:
            continue  # no version in use can be rotated away from: CMK-009 reports it
        current = max(enabled, key=key_order(key))
        age = context.now - current.created
        if age <= max_age:
            continue
        days = max_age.days
        findings.append(finding(
            "CMK-010", use.uri,
            f"key {key.name} is not rotated within {days} days and its version is {age.days} days old",
            {"reason": Reason.NO_TIMELY_ROTATION.value,
             "rotate_actions": tuple({"timeAfterCreate": action.time_after_create,
                                      "timeBeforeExpiry": action.time_before_expiry}
                                     for action in policy.rotate_actions),
             "expiryTime": policy.expires_after, "current_version": current.version,
             "current_version_created": iso(current.created), "age_days": age.days, "max_age_days": days},
            f"az keyvault key rotation-policy update --vault-name {_vault_name(use)} --name {key.name} --value "
            f"'{{\"lifetimeActions\":[{{\"trigger\":{{\"timeAfterCreate\":\"P{days}D\"}},\"action\":{{\"type\":\"Rotate\"}}}},"
            "{\"trigger\":{\"timeBeforeExpiry\":\"P30D\"},\"action\":{\"type\":\"Notify\"}}],"
            "\"attributes\":{\"expiryTime\":\"P2Y\"}}'"))
    return findings


def _rotation_period(
    after_create: str | None, before_expiry: str | None, expires_after: str | None
) -> timedelta | None:
    """How long after a version's creation a Rotate action fires; None when it never does."""
    if after_create:
        return parse_duration(after_create)
    if before_expiry and expires_after:
        return parse_duration(expires_after) - parse_duration(before_expiry)
    return None


def _keys_to_locate(context: RuleContext) -> list[tuple[KeyRef, tuple[ConsumerView, ...], tuple[str, ...]]]:
    """Every key consumers or registered containers use, with them, sorted by URI."""
    located: dict[str, tuple[KeyRef, list[ConsumerView], list[str]]] = {}
    for use in context.index.key_uses:
        located[use.uri.lower()] = (use.key, list(use.consumers), [])
    for census in context.estate.container_census:
        ref = parse_configured_key(census.key_uri, context.estate.custom_origins).ref
        if ref is None:
            continue  # CMK-018 reports the unparseable URI
        entry = located.setdefault(ref.versionless.uri.lower(), (ref.versionless, [], []))
        entry[2].append(census.name)
    return [(ref, tuple(consumers), tuple(containers)) for _, (ref, consumers, containers) in sorted(located.items())]


def cmk_013_key_exists(context: RuleContext) -> list[Finding]:
    findings = []
    for ref, consumers, containers in _keys_to_locate(context):
        lookup = context.index.lookup(ref)
        if lookup.status is KeyStatus.FOUND:
            continue
        if lookup.status is KeyStatus.NOT_EVALUABLE:
            findings.append(not_evaluable("CMK-013", ref.uri, lookup_not_evaluable(lookup)))
            continue
        evidence: dict[str, object] = {"consumers": tuple(consumer.resource_id for consumer in consumers),
                                       "containers": containers, "vault": ref.vault.url}
        vault_name = ref.vault.name or ref.vault.host
        if lookup.deleted_key is not None:
            purge = lookup.deleted_key.scheduled_purge
            evidence.update(reason=Reason.KEY_SOFT_DELETED.value, deleted_on=iso(lookup.deleted_key.deleted_on),
                            scheduled_purge=iso(purge), days_until_purge=_days_until(purge, context.now))
            title = f"key {ref.name} is soft-deleted: its consumers cannot reach it"
            remediation = f"az keyvault key recover --vault-name {vault_name} --name {ref.name}"
        elif lookup.deleted_vault is not None:
            deleted = lookup.deleted_vault
            purge = deleted.scheduled_purge_date
            evidence.update(reason=Reason.VAULT_SOFT_DELETED.value, vault_id=deleted.vault_id,
                            deletion_date=iso(deleted.deletion_date), scheduled_purge=iso(purge),
                            days_until_purge=_days_until(purge, context.now))
            title = f"the vault of key {ref.name} is soft-deleted: its consumers cannot reach it"
            remediation = f"az keyvault recover --name {deleted.name} --location {deleted.location}"
        elif lookup.status is KeyStatus.KEY_MISSING:
            evidence.update(reason=Reason.KEY_MISSING.value)
            title = f"key {ref.name} does not exist (purged or never created): data is inaccessible"
            remediation = (f"restore the key from a backup (az keyvault key restore --vault-name {vault_name} "
                           "--file <backup>), or point the consumers at an existing key")
        else:
            evidence.update(reason=Reason.VAULT_MISSING.value)
            title = f"the vault {ref.vault.url} of key {ref.name} does not exist (purged or never created)"
            remediation = ("restore the vault's keys from backups into a vault (az keyvault key restore), or point "
                           "the consumers at an existing key")
        findings.append(finding("CMK-013", ref.uri, title, evidence, remediation))
    return findings


def _days_until(moment: datetime | None, now: datetime) -> int | None:
    return None if moment is None else (moment - now).days


def cmk_020_key_isolation(context: RuleContext) -> list[Finding]:
    findings = []
    limit = context.settings.max_accounts_per_key
    for use in context.index.key_uses:
        accounts = sorted({consumer.account.id.lower() for consumer in use.consumers})
        subscriptions = sorted({consumer.account.subscription_id for consumer in use.consumers})
        tenants = sorted({tenant.lower() for subscription in subscriptions
                          if (tenant := _tenant(context, subscription)) is not None})
        reasons = []
        if len(tenants) > 1:
            reasons.append(Reason.KEY_SHARED_ACROSS_TENANTS.value)
        if len(subscriptions) > 1:
            reasons.append(Reason.KEY_SHARED_ACROSS_SUBSCRIPTIONS.value)
        if len(accounts) > limit:
            reasons.append(Reason.KEY_SHARED_BY_TOO_MANY_ACCOUNTS.value)
        if not reasons:
            continue
        findings.append(finding(
            "CMK-020", use.uri,
            f"key {use.key.name} protects {len(accounts)} accounts in {len(subscriptions)} subscriptions",
            {"reasons": tuple(reasons), "accounts": len(accounts), "max_accounts": limit,
             "subscriptions": tuple(subscriptions), "tenants": tuple(tenants)},
            f"use one key per tenant and subscription, shared by at most {limit} accounts: az keyvault key create "
            f"--vault-name <vault> --name <key> --kty RSA --size 3072, then move accounts to it (az storage account "
            "update --encryption-key-name <key>)"))
    return findings


def _tenant(context: RuleContext, subscription_id: str) -> str | None:
    subscription = context.estate.subscription(subscription_id)
    return subscription.tenant_id if subscription is not None else None
