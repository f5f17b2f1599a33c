"""controller.rotation: decisions at the exact instants where they change.

A version is valid from its not-before time inclusive and expired from its expiry inclusive; forcing
starts exactly at available_from + force_versionless_after; the adoption window ends exactly at its
deadline; an unwrap exactly one window ago is no longer recent; a successor available exactly one
window ago no longer holds its predecessor.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from controller.model import KeyState
from controller.rotation import (
    Action,
    Decision,
    ForceStep,
    LedgerView,
    PlannerSettings,
    Reason,
    VersionUsage,
    plan,
    retirement,
)
from tests.unit.test_rotation import CREATED, KEY, T0, V1, V2, V3, V4, WINDOW, account, key_state, kv

pytestmark = pytest.mark.unit

TICK = timedelta(microseconds=1)
FORCE_AFTER = timedelta(hours=1)


def decide(key: KeyState, now: datetime, settings: PlannerSettings | None = None) -> Decision:
    return plan(key, [account()], LedgerView(), target_version=None, now=now,
                settings=settings or PlannerSettings()).decisions[0]


def test_a_target_becomes_valid_at_its_not_before_time() -> None:
    valid_from = T0 + timedelta(hours=2)
    key = key_state(kv(V2), kv(V3, not_before=valid_from))
    assert decide(key, valid_from - TICK).reason == Reason.TARGET_VERSION_NOT_YET_VALID
    assert decide(key, valid_from).reason == Reason.ADOPTION_PENDING


def test_a_target_expires_at_its_expiry_time() -> None:
    expires = T0 + timedelta(hours=2)
    key = key_state(kv(V2), kv(V3, expires=expires))
    assert decide(key, expires - TICK).reason == Reason.ADOPTION_PENDING
    blocked = decide(key, expires)
    assert (blocked.action, blocked.reason) == (Action.BLOCKED, Reason.TARGET_VERSION_EXPIRED)
    assert blocked.message == f"account acct1: target version {V3} expired at {expires.isoformat()}"


def test_forcing_starts_exactly_when_the_force_delay_has_passed() -> None:
    settings = PlannerSettings(force_versionless_after=FORCE_AFTER)
    force_at = CREATED[V3] + FORCE_AFTER
    waiting = decide(key_state(), force_at - TICK, settings)
    assert (waiting.action, waiting.recheck_at) == (Action.RECHECK, force_at)
    assert waiting.message.endswith(f"inside the adoption window until {force_at.isoformat()}")
    forced = decide(key_state(), force_at, settings)
    assert (forced.action, forced.step, forced.set_key) == (Action.FORCE_ADOPTION, ForceStep.PIN, KEY.with_version(V3))


def test_forcing_counts_from_the_targets_not_before_when_later_than_its_creation() -> None:
    valid_from = CREATED[V3] + timedelta(minutes=30)
    settings = PlannerSettings(force_versionless_after=FORCE_AFTER)
    key = key_state(kv(V2), kv(V3, not_before=valid_from))
    assert decide(key, valid_from + FORCE_AFTER - TICK, settings).action is Action.RECHECK
    assert decide(key, valid_from + FORCE_AFTER, settings).action is Action.FORCE_ADOPTION


def test_with_forcing_off_the_alert_starts_exactly_at_the_end_of_the_window() -> None:
    never = PlannerSettings(force_versionless_after=None)
    deadline = CREATED[V3] + WINDOW
    assert decide(key_state(), deadline - TICK, never).action is Action.RECHECK
    alert = decide(key_state(), deadline, never)
    assert (alert.action, alert.reason, alert.recheck_at) == (Action.ALERT, Reason.ADOPTION_OVERDUE, None)


def test_recheck_is_an_interval_away_while_the_deadline_is_further() -> None:
    settings = PlannerSettings(recheck_interval=timedelta(minutes=10))
    assert decide(key_state(), T0, settings).recheck_at == T0 + timedelta(minutes=10)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"adoption_window": timedelta(0)}, "adoption_window must be positive"),
        ({"adoption_window": -WINDOW}, "adoption_window must be positive"),
        ({"force_versionless_after": WINDOW + TICK},
         "force_versionless_after must be between 0 and the adoption window"),
        ({"recheck_interval": timedelta(0)}, "recheck_interval and verify_interval must be positive"),
        ({"verify_interval": -TICK}, "recheck_interval and verify_interval must be positive"),
    ],
)
def test_planner_settings_refuse_out_of_range_values(settings: dict[str, timedelta], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        PlannerSettings(**settings)  # type: ignore[arg-type]


def test_planner_settings_accept_the_edges_of_their_ranges() -> None:
    assert PlannerSettings(force_versionless_after=WINDOW).force_versionless_after == WINDOW
    assert PlannerSettings(force_versionless_after=timedelta(0)).force_versionless_after == timedelta(0)
    tiny = PlannerSettings(adoption_window=TICK, force_versionless_after=None, recheck_interval=TICK,
                           verify_interval=TICK)
    assert tiny.adoption_window == TICK


def usage_of(version: str, key: KeyState, now: datetime, unwraps: dict[str, datetime] | None = None) -> VersionUsage:
    usages = retirement(key, (account(current=V3),), {}, unwraps or {}, now=now, window=WINDOW)
    return next(usage for usage in usages if usage.version == version)


def test_an_unwrap_exactly_one_window_ago_is_no_longer_recent() -> None:
    now = CREATED[V3] + WINDOW + timedelta(days=1)
    recent = usage_of(V2, key_state(), now, {V2: now - WINDOW + TICK})
    assert (recent.safe, recent.reason) == (False, Reason.RECENT_UNWRAP)
    assert recent.message == (f"version {V2} unwrapped successfully at {(now - WINDOW + TICK).isoformat()}, "
                              f"less than {WINDOW} ago")
    old = usage_of(V2, key_state(), now, {V2: now - WINDOW})
    assert (old.safe, old.reason) == (True, Reason.NOT_IN_USE)


def test_a_predecessor_is_held_until_exactly_one_window_after_its_successor() -> None:
    safe_from = CREATED[V3] + WINDOW
    held = usage_of(V2, key_state(), safe_from - TICK)
    assert (held.safe, held.reason) == (False, Reason.INSIDE_ADOPTION_WINDOW)
    freed = usage_of(V2, key_state(), safe_from)
    assert (freed.safe, freed.reason) == (True, Reason.NOT_IN_USE)
    assert freed.message == (f"no consumer, no wrapped blob and no recent unwrap use version {V2}; its successor "
                             f"{V3} is available since {CREATED[V3].isoformat()}")


def test_the_successor_is_the_next_enabled_version_not_a_disabled_one() -> None:
    key = key_state(kv(V1), kv(V2, enabled=False), kv(V3))
    held = usage_of(V1, key, CREATED[V3] + WINDOW - TICK)
    assert held.message.startswith(f"nothing uses version {V1}, but its successor {V3} is available only since ")


def test_an_expired_version_newer_than_the_target_is_safe_to_disable() -> None:
    # It was a defect: retirement raised ValueError (no successor between it and an older target).
    expired_at = T0 - timedelta(minutes=1)
    usage = usage_of(V4, key_state(kv(V2), kv(V3), kv(V4, expires=expired_at)), T0)
    assert (usage.safe, usage.reason) == (True, Reason.NOT_IN_USE)
    assert usage.message.startswith(
        f"no consumer, no wrapped blob and no recent unwrap use version {V4}; it expired at "
        f"{expired_at.isoformat()}, so nothing moves to it from {V3}")


def test_a_newer_version_not_valid_yet_is_the_next_one_and_kept() -> None:
    usage = usage_of(V4, key_state(kv(V3), kv(V4, not_before=T0 + timedelta(days=1))), T0)
    assert (usage.safe, usage.reason) == (False, Reason.VERSION_NOT_YET_VALID)
    assert usage.message.startswith(f"version {V4} is newer than {V3} and not valid yet: it is the next version")


def test_a_newer_version_expiring_exactly_now_is_expired() -> None:
    usage = usage_of(V4, key_state(kv(V2), kv(V3), kv(V4, expires=T0)), T0)
    assert (usage.safe, usage.reason) == (True, Reason.NOT_IN_USE)
