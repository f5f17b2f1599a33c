"""Rotation planner: given one key, its consumers and the ledger, decide what to do. Pure: no I/O.

The service gathers everything once (the key's versions, every storage account and encryption scope
configured with the key, the ledger's forced-adoption intents and previous conditions), calls
``plan`` and executes the decisions; ``retirement`` says, with evidence, which old versions are safe
to disable. Both are deterministic functions of their inputs and of the injected ``now``.

Target version
    The newest enabled version by creation time, or the event's version if it is newer: a stale or
    out-of-order event for an older version never moves a consumer backwards. A target that is
    disabled, not yet valid or expired blocks every consumer (with a re-check at its not-before time
    when that is what blocks it); an event version the vault listing does not show yet blocks with a
    short re-check.

Ordered checks per consumer (the first that applies decides; see ``_CHECKS``)
    1. its version is unknown to the key listing          -> BLOCKED ConsumerVersionUnknown
    2. its version is newer than the target               -> BLOCKED ConsumerAheadOfTarget
    3. its identity is denied access to the key           -> BLOCKED IdentityLacksAccess
    4. a forced adoption of ours is in flight             -> FORCE_ADOPTION verify / restore / pin
    5. it uses the target                                 -> ADOPTED (or RECHECK to verify a pin)
    6. pinned to an older version                         -> ALERT, or UPDATE_PINNED (policy, tag)
    7. versionless and lagging                            -> RECHECK inside the window, then
                                                             FORCE_ADOPTION pin, or ALERT if forcing
                                                             is off
    Nothing is ever written on IdentityAccess.UNKNOWN: such writes become BLOCKED AccessNotEvaluated.

Forced adoption of a versionless consumer (crash-safe, three steps)
    PIN      write intent(step=pinned) to the ledger FIRST, then set the versioned key URI.
    VERIFY   the consumer is pinned to the target but currentVersionedKeyIdentifier is not yet the
             target: re-read it shortly.
    RESTORE  currentVersionedKeyIdentifier is the target: set the versionless URI back (automatic
             updates stay on), THEN write intent(step=restored).
    A crash between the intent and the pin re-pins; a crash between the pin and the restore finds
    the intent and the pin and restores; a crash after the restore finds the consumer adopted and
    completes the record. A pin to the target without an intent of ours is the user's: it is left
    alone (pinned-consumer policy).

``force_versionless_after`` (trade-off)
    Azure Storage polls the vault for a versionless key about once a day, so a new version may be
    ignored for up to 24 h; during that time the old version must stay enabled and the account is
    out of compliance (CMK-012). Forcing (pin + restore) closes the gap within seconds, at the cost
    of two control-plane writes per consumer per rotation (each re-wraps only the account's root key,
    no data is re-encrypted), a write role for the controller on every consumer, and a few seconds
    during which the account is pinned. 0 forces as soon as the version is available; the default,
    the adoption window, only forces consumers Azure has not moved on its own; None never forces and
    alerts once the window has passed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from controller.model import (
    Condition,
    ConditionStatus,
    Consumer,
    ForceAdoptionIntent,
    ForceAdoptionStep,
    IdentityAccess,
    KeyRef,
    KeyState,
    KeyVersionInfo,
)
from controller.reasons import Reason
from controller.settings import Settings

#: Where client-side-encrypted containers are registered (for re-wrap and blob evidence).
REWRAP_REGISTRATION = "CMK_REWRAP_TARGETS, or the account tag cmk-rewrap-containers"
#: Account tag that overrides CMK_PINNED_POLICY for one account (and its encryption scopes).
PINNED_POLICY_TAG = "cmk-pinned-policy"


class PinnedPolicy(enum.StrEnum):
    ALERT = "alert"
    UPDATE = "update"


class Action(enum.StrEnum):
    ADOPTED = "adopted"  # nothing to do (a ledger record may still need completing)
    RECHECK = "recheck"  # nothing to do now; look again at recheck_at
    FORCE_ADOPTION = "force_adoption"  # see ForceStep
    UPDATE_PINNED = "update_pinned"  # set the pinned version to the target
    ALERT = "alert"  # a human has to act; nothing is written
    BLOCKED = "blocked"  # cannot proceed; nothing is written


class ForceStep(enum.StrEnum):
    PIN = "pin"
    VERIFY = "verify"
    RESTORE = "restore"


class ConditionType(enum.StrEnum):
    ADOPTED = "Adopted"  # consumer: currentVersionedKeyIdentifier is the target; version: all adopted it
    KEY_ACCESSIBLE = "KeyAccessible"  # consumer: its identity can use the key
    PINNED_CURRENT = "PinnedCurrent"  # consumer: versionless, or pinned to the target
    USABLE = "Usable"  # version: enabled and inside its validity window
    #: consumer, recorded by the reconciler only while our write of it fails transiently (retried)
    SYNCED = "Synced"


@dataclass(frozen=True, slots=True)
class PlannerSettings:
    """Policy knobs. ``force_versionless_after``: see the module docstring for the trade-off."""

    adoption_window: timedelta = timedelta(hours=24)
    force_versionless_after: timedelta | None = timedelta(hours=24)
    pinned_policy: PinnedPolicy = PinnedPolicy.ALERT
    #: How often a pending consumer is looked at again (Azure may adopt before the window ends).
    recheck_interval: timedelta = timedelta(hours=1)
    #: How soon a pin is re-read when currentVersionedKeyIdentifier did not follow it yet.
    verify_interval: timedelta = timedelta(minutes=1)

    def __post_init__(self) -> None:
        if self.adoption_window <= timedelta(0):
            raise ValueError("adoption_window must be positive")
        if self.force_versionless_after is not None and not (
            timedelta(0) <= self.force_versionless_after <= self.adoption_window
        ):
            # Forcing later than the window would leave consumers non-compliant with nothing done.
            raise ValueError("force_versionless_after must be between 0 and the adoption window")
        if self.recheck_interval <= timedelta(0) or self.verify_interval <= timedelta(0):
            raise ValueError("recheck_interval and verify_interval must be positive")

    @classmethod
    def from_settings(cls, settings: Settings) -> PlannerSettings:
        window = timedelta(hours=settings.adoption_window_hours)
        force_after = (None if settings.force_adoption_after_minutes is None
                       else timedelta(minutes=settings.force_adoption_after_minutes))
        return cls(adoption_window=window, force_versionless_after=force_after,
                   pinned_policy=PinnedPolicy(settings.pinned_policy))


@dataclass(frozen=True, slots=True)
class LedgerView:
    """What the ledger holds for one key: the latest forced-adoption intent per consumer and the
    conditions the previous run recorded, per consumer and per version. Keys are normalised to
    lower case (ARM ids compare case-insensitively)."""

    intents: Mapping[str, ForceAdoptionIntent] = field(default_factory=dict)
    consumer_conditions: Mapping[str, tuple[Condition, ...]] = field(default_factory=dict)
    version_conditions: Mapping[str, tuple[Condition, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "intents", {key.lower(): value for key, value in self.intents.items()})
        object.__setattr__(self, "consumer_conditions",
                           {key.lower(): tuple(value) for key, value in self.consumer_conditions.items()})
        object.__setattr__(self, "version_conditions",
                           {key.lower(): tuple(value) for key, value in self.version_conditions.items()})

    @classmethod
    def of(
        cls,
        intents: Iterable[ForceAdoptionIntent] = (),
        consumer_conditions: Mapping[str, Iterable[Condition]] | None = None,
        version_conditions: Mapping[str, Iterable[Condition]] | None = None,
    ) -> LedgerView:
        return cls(
            intents={intent.consumer_id: intent for intent in intents},
            consumer_conditions={key: tuple(value) for key, value in (consumer_conditions or {}).items()},
            version_conditions={key: tuple(value) for key, value in (version_conditions or {}).items()},
        )

    def intent_for(self, consumer_id: str) -> ForceAdoptionIntent | None:
        return self.intents.get(consumer_id.lower())

    def conditions_for(self, consumer_id: str) -> tuple[Condition, ...]:
        return self.consumer_conditions.get(consumer_id.lower(), ())

    def conditions_for_version(self, version: str) -> tuple[Condition, ...]:
        return self.version_conditions.get(version.lower(), ())


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one consumer, and the conditions to record for it.

    Execute in this order: write ``intent_before`` to the ledger, set ``set_key`` on the consumer
    (a versioned URI pins, a versionless one restores), then write ``intent_after``.
    """

    consumer: Consumer
    action: Action
    reason: Reason
    message: str
    conditions: tuple[Condition, ...]
    target_version: str | None = None
    step: ForceStep | None = None
    set_key: KeyRef | None = None
    recheck_at: datetime | None = None
    intent_before: ForceAdoptionIntent | None = None
    intent_after: ForceAdoptionIntent | None = None

    @property
    def writes_consumer(self) -> bool:
        return self.set_key is not None

    @property
    def writes_ledger(self) -> bool:
        return self.intent_before is not None or self.intent_after is not None


@dataclass(frozen=True, slots=True)
class VersionStatus:
    version: str
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    key: KeyRef
    target: KeyVersionInfo | None
    decisions: tuple[Decision, ...]
    versions: tuple[VersionStatus, ...]
    #: The earliest recheck_at of any decision: when the service should plan this key again.
    next_check: datetime | None

    @property
    def writes(self) -> tuple[Decision, ...]:
        """Decisions that change a consumer or the ledger's intents."""
        return tuple(decision for decision in self.decisions if decision.writes_consumer or decision.writes_ledger)

    def decision_for(self, consumer_id: str) -> Decision:
        wanted = consumer_id.lower()
        return next(decision for decision in self.decisions if decision.consumer.id == wanted)


# --- planning ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Verdict:
    """A check's outcome before conditions are attached."""

    action: Action
    reason: Reason
    message: str
    step: ForceStep | None = None
    set_key: KeyRef | None = None
    recheck_at: datetime | None = None
    intent_before: ForceAdoptionIntent | None = None
    intent_after: ForceAdoptionIntent | None = None


@dataclass(frozen=True, slots=True)
class _Context:
    key: KeyState
    target: KeyVersionInfo
    ledger: LedgerView
    now: datetime
    settings: PlannerSettings

    def older_than_target(self, version: str) -> bool:
        info = self.key.version(version)
        return info is not None and self.key.order(info) < self.key.order(self.target)


def plan(
    key: KeyState,
    consumers: Sequence[Consumer],
    records: LedgerView,
    *,
    target_version: str | None,
    now: datetime,
    settings: PlannerSettings,
) -> Plan:
    """Decide, for every consumer of ``key``, what to do now. ``target_version`` is the event's
    version (None for the sweep); it can only move the target forward, never backwards."""
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    for consumer in consumers:
        if not consumer.key.same_key(key.key):
            raise ValueError(f"{consumer.resource_id} is configured with {consumer.key.uri}, not {key.key.uri}")
    ordered = sorted(consumers, key=lambda consumer: consumer.id)
    if len({consumer.id for consumer in ordered}) != len(ordered):
        raise ValueError("each consumer may appear only once")

    target_or_block = _choose_target(key, target_version, now, settings)
    if isinstance(target_or_block, KeyVersionInfo):
        context = _Context(key, target_or_block, records, now, settings)
        decisions = tuple(_decide(consumer, context) for consumer in ordered)
        target: KeyVersionInfo | None = target_or_block
    else:
        decisions = tuple(_blocked_by_key(consumer, target_or_block, key, records, now) for consumer in ordered)
        target = None
    rechecks = [decision.recheck_at for decision in decisions if decision.recheck_at is not None]
    return Plan(
        key=key.key,
        target=target,
        decisions=decisions,
        versions=_version_statuses(key, target, decisions, records, now),
        next_check=min(rechecks) if rechecks else None,
    )


def _choose_target(
    key: KeyState, requested: str | None, now: datetime, settings: PlannerSettings
) -> KeyVersionInfo | _Verdict:
    if not key.reachable:
        detail = f": {key.unreachable_detail}" if key.unreachable_detail else ""
        return _Verdict(Action.BLOCKED, Reason.VAULT_UNREACHABLE,
                        f"vault {key.key.vault} could not be read{detail}; nothing is changed")
    candidates = [info for info in (key.latest_enabled,) if info is not None]
    if requested is not None:
        named = key.version(requested.lower())
        if named is None:
            return _Verdict(Action.BLOCKED, Reason.TARGET_VERSION_UNKNOWN,
                            f"the event names version {requested} of {key.key.uri}, which the vault listing "
                            "does not show yet; re-checking", recheck_at=now + settings.verify_interval)
        candidates.append(named)
    if not candidates:
        return _Verdict(Action.BLOCKED, Reason.NO_USABLE_VERSION, f"{key.key.uri} has no enabled version")
    # Key Vault reports creation times to the second: on a tie the vault's current version wins (the
    # truth), then the event's version (announced, so at least as new as a listed one of the same second).
    target = max(candidates, key=lambda info: (info.created, info.version == key.current_version,
                                               info.version == requested, info.version))
    if not target.enabled:
        return _Verdict(Action.BLOCKED, Reason.TARGET_VERSION_DISABLED,
                        f"target version {target.version} (created {_at(target.created)}) is disabled")
    if target.not_before is not None and now < target.not_before:
        return _Verdict(Action.BLOCKED, Reason.TARGET_VERSION_NOT_YET_VALID,
                        f"target version {target.version} is not valid before {_at(target.not_before)}",
                        recheck_at=target.not_before)
    if target.expires is not None and target.expires <= now:
        return _Verdict(Action.BLOCKED, Reason.TARGET_VERSION_EXPIRED,
                        f"target version {target.version} expired at {_at(target.expires)}")
    return target


def _decide(consumer: Consumer, context: _Context) -> Decision:
    verdict = next(
        verdict for check in _CHECKS if (verdict := check(consumer, context)) is not None
    )
    return Decision(
        consumer=consumer,
        action=verdict.action,
        reason=verdict.reason,
        message=verdict.message,
        conditions=_consumer_conditions(consumer, context, verdict),
        target_version=context.target.version,
        step=verdict.step,
        set_key=verdict.set_key,
        recheck_at=verdict.recheck_at,
        intent_before=verdict.intent_before,
        intent_after=verdict.intent_after,
    )


def _check_version_known(consumer: Consumer, context: _Context) -> _Verdict | None:
    for label, version in (("pinned", consumer.pinned_version), ("current", consumer.current_version)):
        if version is not None and context.key.version(version) is None:
            return _Verdict(Action.BLOCKED, Reason.CONSUMER_VERSION_UNKNOWN,
                            f"{_name(consumer)}: {label} version {version} is not in the listing of "
                            f"{context.key.key.uri}; nothing is changed")
    return None


def _check_not_ahead(consumer: Consumer, context: _Context) -> _Verdict | None:
    for label, version in (("pinned", consumer.pinned_version), ("current", consumer.current_version)):
        info = context.key.version(version)
        if info is not None and context.key.order(info) > context.key.order(context.target):
            return _Verdict(Action.BLOCKED, Reason.CONSUMER_AHEAD_OF_TARGET,
                            f"{_name(consumer)}: {label} version {info.version} (created {_at(info.created)}) is "
                            f"newer than the target {context.target.version}; a consumer is never moved back")
    return None


def _check_access_denied(consumer: Consumer, context: _Context) -> _Verdict | None:
    if consumer.identity_access is IdentityAccess.DENIED:
        return _Verdict(Action.BLOCKED, Reason.IDENTITY_LACKS_ACCESS,
                        f"{_name(consumer)}: its encryption identity lacks get/wrapKey/unwrapKey on "
                        f"{context.key.key.uri}; changing its key would make its data unreadable")
    return None


def _check_forced_adoption(consumer: Consumer, context: _Context) -> _Verdict | None:
    intent = context.ledger.intent_for(consumer.id)
    if intent is None or intent.step is not ForceAdoptionStep.PINNED:
        return None
    target = context.target.version
    if consumer.pinned_version == intent.target_version:  # our pin
        if intent.target_version != target:  # a newer version arrived while we were pinned
            return _force_pin(consumer, context, resumed=False)
        if consumer.current_version == target:
            return _Verdict(Action.FORCE_ADOPTION, Reason.RESTORING_VERSIONLESS,
                            f"{_name(consumer)}: adopted {target} through the controller's pin "
                            f"(intent of {_at(intent.started_at)}); restoring the versionless key URI",
                            step=ForceStep.RESTORE, set_key=consumer.key.versionless,
                            intent_after=replace(intent, step=ForceAdoptionStep.RESTORED))
        return _Verdict(Action.FORCE_ADOPTION, Reason.AWAITING_VERIFICATION,
                        f"{_name(consumer)}: pinned to {target} but currentVersionedKeyIdentifier is "
                        f"{consumer.current_version or 'not reported'}; verifying again",
                        step=ForceStep.VERIFY, recheck_at=context.now + context.settings.verify_interval)
    if consumer.pinned_version is None:
        if consumer.current_version == target:  # restored, but the record was not completed
            return _Verdict(Action.ADOPTED, Reason.ADOPTED,
                            f"{_name(consumer)}: versionless and using {target}; completing the forced "
                            "adoption record", intent_after=replace(intent, step=ForceAdoptionStep.RESTORED))
        if intent.target_version == target:  # the intent was written, the pin never happened
            return _force_pin(consumer, context, resumed=True)
    # Someone else changed the consumer since our intent: the intent no longer describes it.
    # Mark it abandoned, or a later pin of the user's to that version would be taken for ours.
    verdict = _next_check(consumer, context, after=_check_forced_adoption)
    if verdict.intent_before is not None:  # a new forced adoption replaces the stale intent
        return verdict
    return replace(verdict, intent_after=replace(intent, step=ForceAdoptionStep.ABANDONED))


def _check_adopted(consumer: Consumer, context: _Context) -> _Verdict | None:
    target = context.target.version
    if consumer.pinned_version not in (None, target):
        return None
    if consumer.current_version == target:
        how = "versionless" if consumer.pinned_version is None else "pinned"
        return _Verdict(Action.ADOPTED, Reason.ADOPTED,
                        f"{_name(consumer)}: {how}, currentVersionedKeyIdentifier is version {target}")
    if consumer.pinned_version == target:
        return _Verdict(Action.RECHECK, Reason.AWAITING_VERIFICATION,
                        f"{_name(consumer)}: pinned to {target} but currentVersionedKeyIdentifier is "
                        f"{consumer.current_version or 'not reported'}; verifying again",
                        recheck_at=context.now + context.settings.verify_interval)
    return None


def _check_pinned(consumer: Consumer, context: _Context) -> _Verdict | None:
    pinned = consumer.pinned_version
    if pinned is None or not context.older_than_target(pinned):
        return None
    policy, source = _pinned_policy(consumer, context.settings)
    evidence = (f"{_name(consumer)}: pinned to {pinned}, target {context.target.version} "
                f"(created {_at(context.target.created)}); pinned policy {policy.value} ({source})")
    if policy is PinnedPolicy.ALERT:
        return _Verdict(Action.ALERT, Reason.PINNED_TO_OLD_VERSION, f"{evidence}: update the key version")
    if consumer.identity_access is not IdentityAccess.GRANTED:
        return _access_not_evaluated(consumer, evidence)
    return _Verdict(Action.UPDATE_PINNED, Reason.UPDATING_PINNED_VERSION, f"{evidence}: updating",
                    set_key=consumer.key.with_version(context.target.version))


def _check_versionless_lagging(consumer: Consumer, context: _Context) -> _Verdict:
    settings, target = context.settings, context.target
    rotated = f" (last key rotation {_at(consumer.last_key_rotation)})" if consumer.last_key_rotation else ""
    lag = (f"{_name(consumer)}: versionless, currentVersionedKeyIdentifier is "
           f"{consumer.current_version or 'not reported'}{rotated}, target {target.version} "
           f"available since {_at(target.available_from)}")
    force_at = None if settings.force_versionless_after is None else (
        target.available_from + settings.force_versionless_after)
    if force_at is not None and force_at <= context.now:
        return _force_pin(consumer, context, resumed=False)
    deadline = force_at if force_at is not None else target.available_from + settings.adoption_window
    if context.now < deadline:
        return _Verdict(Action.RECHECK, Reason.ADOPTION_PENDING,
                        f"{lag}; inside the adoption window until {_at(deadline)}",
                        recheck_at=min(deadline, context.now + settings.recheck_interval))
    return _Verdict(Action.ALERT, Reason.ADOPTION_OVERDUE,
                    f"{lag}; the adoption window ended at {_at(deadline)} and forcing is off")


def _force_pin(consumer: Consumer, context: _Context, *, resumed: bool) -> _Verdict:
    target = context.target.version
    evidence = (f"{_name(consumer)}: currentVersionedKeyIdentifier is {consumer.current_version or 'not reported'}, "
                f"target {target}")
    if consumer.identity_access is not IdentityAccess.GRANTED:
        return _access_not_evaluated(consumer, evidence)
    if resumed:
        return _Verdict(Action.FORCE_ADOPTION, Reason.FORCING_ADOPTION,
                        f"{evidence}; resuming the recorded forced adoption: pinning", step=ForceStep.PIN,
                        set_key=consumer.key.with_version(target))
    intent = ForceAdoptionIntent(consumer.id, target, ForceAdoptionStep.PINNED, context.now)
    return _Verdict(Action.FORCE_ADOPTION, Reason.FORCING_ADOPTION,
                    f"{evidence}; forcing adoption: pin, verify, restore versionless", step=ForceStep.PIN,
                    set_key=consumer.key.with_version(target), intent_before=intent)


def _access_not_evaluated(consumer: Consumer, evidence: str) -> _Verdict:
    return _Verdict(Action.BLOCKED, Reason.ACCESS_NOT_EVALUATED,
                    f"{evidence}; the identity's access to the key could not be evaluated, so nothing is changed")


def _pinned_policy(consumer: Consumer, settings: PlannerSettings) -> tuple[PinnedPolicy, str]:
    tag = consumer.tag(PINNED_POLICY_TAG)
    if tag is None:
        return settings.pinned_policy, "CMK_PINNED_POLICY"
    try:
        return PinnedPolicy(tag.strip().lower()), f"tag {PINNED_POLICY_TAG}"
    except ValueError:
        # An unreadable override must not authorise a write.
        return PinnedPolicy.ALERT, f"tag {PINNED_POLICY_TAG}={tag!r} is not alert or update"


_Check = Callable[[Consumer, _Context], _Verdict | None]

#: The ordered chain: the first check that returns a verdict decides.
_CHECKS: tuple[_Check, ...] = (
    _check_version_known,
    _check_not_ahead,
    _check_access_denied,
    _check_forced_adoption,
    _check_adopted,
    _check_pinned,
    _check_versionless_lagging,
)


def _next_check(consumer: Consumer, context: _Context, *, after: _Check) -> _Verdict:
    """The verdict of the checks that follow ``after`` in the chain."""
    rest = _CHECKS[_CHECKS.index(after) + 1:]
    return next(verdict for check in rest if (verdict := check(consumer, context)) is not None)


def _blocked_by_key(
    consumer: Consumer, block: _Verdict, key: KeyState, records: LedgerView, now: datetime
) -> Decision:
    previous = records.conditions_for(consumer.id)
    adopted_status = ConditionStatus.UNKNOWN if block.reason is Reason.VAULT_UNREACHABLE else ConditionStatus.FALSE
    pinned_status, pinned_reason, pinned_message = ConditionStatus.UNKNOWN, block.reason, block.message
    if consumer.pinned_version is None:
        pinned_status, pinned_reason, pinned_message = _versionless_condition()
    conditions = (
        _condition(previous, ConditionType.ADOPTED, (adopted_status, block.reason, block.message), now=now),
        _access_condition(previous, consumer, key, now),
        _condition(previous, ConditionType.PINNED_CURRENT, (pinned_status, pinned_reason, pinned_message), now=now),
    )
    return Decision(consumer=consumer, action=Action.BLOCKED, reason=block.reason,
                    message=f"{_name(consumer)}: {block.message}", conditions=conditions,
                    recheck_at=block.recheck_at)


def _consumer_conditions(consumer: Consumer, context: _Context, verdict: _Verdict) -> tuple[Condition, ...]:
    previous = context.ledger.conditions_for(consumer.id)
    target, now = context.target.version, context.now
    if consumer.current_version == target:
        adopted = (ConditionStatus.TRUE, Reason.ADOPTED,
                   f"currentVersionedKeyIdentifier is version {target}")
    else:
        adopted = (ConditionStatus.FALSE, verdict.reason, verdict.message)
    pinned = consumer.pinned_version
    if pinned is None:
        pinned_current = _versionless_condition()
    elif pinned == target:
        pinned_current = (ConditionStatus.TRUE, Reason.PINNED_TO_TARGET, f"pinned to the target version {target}")
    elif context.older_than_target(pinned):
        pinned_current = (ConditionStatus.FALSE, Reason.PINNED_TO_OLD_VERSION,
                          f"pinned to {pinned}, older than the target {target}")
    else:
        pinned_current = (ConditionStatus.FALSE, verdict.reason, verdict.message)
    return (
        _condition(previous, ConditionType.ADOPTED, adopted, now=now, observed_version=target),
        _access_condition(previous, consumer, context.key, now),
        _condition(previous, ConditionType.PINNED_CURRENT, pinned_current, now=now, observed_version=target),
    )


def _versionless_condition() -> tuple[ConditionStatus, Reason, str]:
    return ConditionStatus.TRUE, Reason.VERSIONLESS, "versionless key URI: automatic version updates are on"


def _access_condition(previous: Sequence[Condition], consumer: Consumer, key: KeyState, now: datetime) -> Condition:
    if not key.reachable:
        status, reason, message = (ConditionStatus.UNKNOWN, Reason.VAULT_UNREACHABLE,
                                   f"vault {key.key.vault} could not be read")
    elif consumer.identity_access is IdentityAccess.GRANTED:
        status, reason, message = (ConditionStatus.TRUE, Reason.ACCESS_GRANTED,
                                   f"the encryption identity can get, wrapKey and unwrapKey {key.key.uri}")
    elif consumer.identity_access is IdentityAccess.DENIED:
        status, reason, message = (ConditionStatus.FALSE, Reason.IDENTITY_LACKS_ACCESS,
                                   f"the encryption identity lacks get, wrapKey or unwrapKey on {key.key.uri}")
    else:
        status, reason, message = (ConditionStatus.UNKNOWN, Reason.ACCESS_NOT_EVALUATED,
                                   f"the encryption identity's access to {key.key.uri} could not be evaluated")
    return _condition(previous, ConditionType.KEY_ACCESSIBLE, (status, reason, message), now=now)


def _condition(
    previous: Sequence[Condition],
    kind: ConditionType,
    state: tuple[ConditionStatus, Reason, str],
    *,
    now: datetime,
    observed_version: str | None = None,
) -> Condition:
    """The new condition of ``kind``; its last transition moves only when its status changes."""
    status, reason, message = state
    before = next((condition for condition in previous if condition.type == kind.value), None)
    if before is None:
        return Condition(kind.value, status, reason, message, now, observed_version)
    return replace(before.transition(status, reason, message, now), observed_version=observed_version)


def _version_statuses(
    key: KeyState,
    target: KeyVersionInfo | None,
    decisions: Sequence[Decision],
    records: LedgerView,
    now: datetime,
) -> tuple[VersionStatus, ...]:
    statuses = []
    for info in sorted(key.versions, key=key.order):
        previous = records.conditions_for_version(info.version)
        conditions = [_condition(previous, ConditionType.USABLE, _usability(info, now), now=now,
                                 observed_version=info.version)]
        if target is not None and info.version == target.version:
            adopted = sum(1 for decision in decisions if decision.consumer.current_version == info.version)
            lagging = sorted(decision.consumer.resource_id for decision in decisions
                             if decision.consumer.current_version != info.version)
            if lagging:
                state = (ConditionStatus.FALSE, Reason.ADOPTION_PENDING,
                         f"{adopted} of {len(decisions)} consumers use it; not yet: {_some(lagging)}")
            else:
                state = (ConditionStatus.TRUE, Reason.ADOPTED, f"all {len(decisions)} consumers use it")
            conditions.append(_condition(previous, ConditionType.ADOPTED, state, now=now,
                                         observed_version=info.version))
        statuses.append(VersionStatus(info.version, tuple(conditions)))
    return tuple(statuses)


#: Consumers a condition message names before "and N more": the record of a key with thousands of
#: consumers stays a small ledger row (an Azure Table string property holds at most 32K characters).
MESSAGE_NAMES = 20


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MESSAGE_NAMES])
    return shown if len(names) <= MESSAGE_NAMES else f"{shown} and {len(names) - MESSAGE_NAMES} more"


def _usability(info: KeyVersionInfo, now: datetime) -> tuple[ConditionStatus, Reason, str]:
    if not info.enabled:
        return ConditionStatus.FALSE, Reason.VERSION_DISABLED, f"version {info.version} is disabled"
    if info.not_before is not None and now < info.not_before:
        return (ConditionStatus.FALSE, Reason.VERSION_NOT_YET_VALID,
                f"version {info.version} is not valid before {_at(info.not_before)}")
    if info.expires is not None and info.expires <= now:
        return ConditionStatus.FALSE, Reason.VERSION_EXPIRED, f"version {info.version} expired at {_at(info.expires)}"
    return ConditionStatus.TRUE, Reason.VERSION_USABLE, f"version {info.version} is enabled and valid"


# --- retirement ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VersionUsage:
    """Who still uses one key version, and whether it is safe to disable, with the evidence."""

    version: str
    enabled: bool
    created: datetime
    consumers: tuple[str, ...]  # ARM ids of consumers pinned to it or reporting it as current
    #: Client-side-encrypted blobs of the registered containers still wrapped by it; None when no
    #: container is registered (blobs were not counted: no evidence either way).
    blob_count: int | None
    last_unwrap: datetime | None  # last successful KeyUnwrap with it (audit logs), None if none seen
    audit_available: bool
    safe: bool
    reason: Reason
    message: str


def retirement(
    key: KeyState,
    consumers: Sequence[Consumer],
    rewrap_counts: Mapping[str, int] | None,
    last_unwraps: Mapping[str, datetime] | None,
    *,
    now: datetime,
    window: timedelta,
) -> list[VersionUsage]:
    """Per version (oldest first): is it safe to disable? ``last_unwraps`` is None when no audit logs
    are available, ``rewrap_counts`` None when no client-side-encrypted container is registered (then
    that activity is not evidence either way, and the message says so).

    Ordered checks: vault unreachable; used by a consumer; a consumer whose version is unknown (it
    could be any); blobs still wrapped; a successful unwrap within ``window``; it is the newest usable
    version (or there is none); already disabled (safe); newer than the newest usable version: kept
    when not valid yet (it is the next version), safe when expired (nothing will move to it); its
    successor became available less than ``window`` ago (versionless consumers poll about once a
    day); otherwise safe.
    """
    target = _newest_usable(key, now)
    unknown = sorted(consumer.resource_id for consumer in consumers
                     if consumer.pinned_version is None and consumer.current_version is None)
    usages = []
    for info in sorted(key.versions, key=key.order):
        users = tuple(sorted(consumer.resource_id for consumer in consumers
                             if info.version in (consumer.pinned_version, consumer.current_version)))
        blobs = None if rewrap_counts is None else rewrap_counts.get(info.version, 0)
        unwrap = None if last_unwraps is None else last_unwraps.get(info.version)
        evidence = _Evidence(users, tuple(unknown), blobs or 0, unwrap)
        safe, reason, message = _retirement_verdict(info, target, evidence, key, now=now, window=window)
        if rewrap_counts is None:
            message += (f"; no client-side-encrypted container is registered ({REWRAP_REGISTRATION}): "
                        "blobs were not counted")
        if last_unwraps is None:
            message += "; no audit logs available: unwrap activity was not checked"
        usages.append(VersionUsage(info.version, info.enabled, info.created, users, blobs, unwrap,
                                   last_unwraps is not None, safe, reason, message))
    return usages


def _newest_usable(key: KeyState, now: datetime) -> KeyVersionInfo | None:
    usable = [info for info in key.versions if info.usable_at(now)]
    return max(usable, key=key.order) if usable else None


@dataclass(frozen=True, slots=True)
class _Evidence:
    users: tuple[str, ...]
    unknown: tuple[str, ...]  # versionless consumers that report no current version
    blobs: int
    unwrap: datetime | None


def _retirement_verdict(
    info: KeyVersionInfo,
    target: KeyVersionInfo | None,
    evidence: _Evidence,
    key: KeyState,
    *,
    now: datetime,
    window: timedelta,
) -> tuple[bool, Reason, str]:
    version = info.version
    users, unknown, blobs, unwrap = evidence.users, evidence.unknown, evidence.blobs, evidence.unwrap
    if not key.reachable:
        return False, Reason.VAULT_UNREACHABLE, f"vault {key.key.vault} could not be read"
    if users:
        return False, Reason.IN_USE, f"version {version} is used by {', '.join(users)}"
    if unknown and info.enabled:
        return (False, Reason.CONSUMER_VERSION_UNKNOWN,
                f"versionless consumers report no current version: {', '.join(unknown)}")
    if blobs > 0:
        return False, Reason.BLOBS_STILL_WRAPPED, f"{blobs} blobs are still wrapped by version {version}"
    if unwrap is not None and now - unwrap < window:
        return (False, Reason.RECENT_UNWRAP,
                f"version {version} unwrapped successfully at {_at(unwrap)}, less than {window} ago")
    if target is None:
        return False, Reason.NO_USABLE_VERSION, f"{key.key.uri} has no usable version to move to"
    if version == target.version:
        return False, Reason.CURRENT_VERSION, f"version {version} is the newest usable version"
    if not info.enabled:
        return True, Reason.ALREADY_DISABLED, f"version {version} is already disabled and nothing uses it"
    if key.order(info) > key.order(target):
        if info.expires is not None and info.expires <= now:
            # It can never become the target, and nothing moves to it: there is no successor to wait for.
            return True, Reason.NOT_IN_USE, (
                f"no consumer, no wrapped blob and no recent unwrap use version {version}; it expired at "
                f"{_at(info.expires)}, so nothing moves to it from {target.version}")
        return (False, Reason.VERSION_NOT_YET_VALID,
                f"version {version} is newer than {target.version} and not valid yet: it is the next version")
    successor = min((other for other in key.versions
                     if other.enabled and key.order(info) < key.order(other) <= key.order(target)), key=key.order)
    safe_from = successor.available_from + window
    if now < safe_from:
        return (False, Reason.INSIDE_ADOPTION_WINDOW,
                f"nothing uses version {version}, but its successor {successor.version} is available only "
                f"since {_at(successor.available_from)}; versionless consumers may not have polled: wait until "
                f"{_at(safe_from)}")
    return True, Reason.NOT_IN_USE, (
        f"no consumer, no wrapped blob and no recent unwrap use version {version}; its successor "
        f"{successor.version} is available since {_at(successor.available_from)}")


def _name(consumer: Consumer) -> str:
    if consumer.scope_name:
        return f"scope {consumer.account_name}/{consumer.scope_name}"
    return f"account {consumer.account_name}"


def _at(moment: datetime) -> str:
    return moment.isoformat()
