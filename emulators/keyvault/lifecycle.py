"""Key versions and time-driven state: new versions, rotation policies, near-expiry, expiry, purge.

Everything here runs under ``state.lock`` and collects what to publish in an ``Outbox``; the caller
flushes the outbox to the bus after releasing the lock (publishing never runs under the vault lock).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from emulators.bus import AuditRecord, VaultEvent

from . import crypto, records

if TYPE_CHECKING:
    from .state import KeyEntry, KeyVersion, VaultState

_DURATION = re.compile(
    r"^P(?!$)(?:(?P<y>\d+)Y)?(?:(?P<mo>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<h>\d+)H)?(?:(?P<mi>\d+)M)?(?:(?P<s>\d+)S)?)?$"
)
DAY = 86400
MIN_ROTATE_AFTER_CREATE = 7 * DAY
MIN_EXPIRY_TIME = 28 * DAY
MIN_TIME_BEFORE_EXPIRY = 7 * DAY
FAR_FUTURE = 2**62


def parse_duration(text: str) -> int:
    """ISO 8601 duration -> seconds (a year is 365 days, a month 30 days)."""
    match = _DURATION.match(str(text).strip().upper())
    if not match:
        raise ValueError(f"invalid ISO 8601 duration {text!r}")
    g = {k: int(v) if v else 0 for k, v in match.groupdict().items()}
    return (
        g["y"] * 365 * DAY
        + g["mo"] * 30 * DAY
        + g["w"] * 7 * DAY
        + g["d"] * DAY
        + g["h"] * 3600
        + g["mi"] * 60
        + g["s"]
    )


@dataclass
class Outbox:
    events: list[VaultEvent] = field(default_factory=list)
    audits: list[AuditRecord] = field(default_factory=list)

    def flush(self, state: VaultState) -> int:
        bus = state.bus
        count = len(self.events)
        if bus is not None:
            for event in self.events:
                bus.publish_event(event)
            for record in self.audits:
                bus.publish_audit(record)
        self.events.clear()
        self.audits.clear()
        return count


def new_version_id() -> str:
    return secrets.token_hex(16)


def add_version(
    state: VaultState,
    entry: KeyEntry,
    material: crypto.KeyMaterial,
    *,
    key_ops: list[str] | None,
    enabled: bool = True,
    nbf: int | None = None,
    exp: int | None = None,
    tags: dict[str, str] | None = None,
    exportable: bool | None = None,
    outbox: Outbox,
    when: datetime | None = None,
) -> KeyVersion:
    from .state import KeyVersion

    when = when or state.clock.now()
    now = int(when.timestamp())
    kv = KeyVersion(
        version=new_version_id(),
        material=material,
        key_ops=list(key_ops) if key_ops is not None else crypto.default_key_ops(material.kty),
        enabled=enabled,
        nbf=nbf,
        exp=exp,
        created=now,
        updated=now,
        tags=dict(tags or {}),
        exportable=exportable,
    )
    entry.versions.append(kv)
    event = records.key_event(state, records.KEY_NEW_VERSION, entry.name, kv, when)
    outbox.events.append(event)
    outbox.audits.append(records.notification_audit(state, event))
    return kv


def policy_expiry_seconds(policy: dict[str, Any] | None) -> int | None:
    if not policy:
        return None
    expiry = (policy.get("attributes") or {}).get("expiryTime")
    return parse_duration(expiry) if expiry else None


def rotate(state: VaultState, entry: KeyEntry, *, outbox: Outbox, when: datetime | None = None) -> KeyVersion:
    """A new version with the current version's type, size/curve, key_ops and tags; exp from the policy."""
    current = entry.current
    material = current.material
    size = material.size if material.family != "EC" else None
    new_material = crypto.generate(material.kty, size=size, crv=material.crv)
    when = when or state.clock.now()
    expiry = policy_expiry_seconds(entry.rotation_policy)
    exp = int(when.timestamp()) + expiry if expiry else None
    return add_version(
        state,
        entry,
        new_material,
        key_ops=list(current.key_ops),
        tags=dict(current.tags),
        exp=exp,
        exportable=current.exportable,
        outbox=outbox,
        when=when,
    )


def _actions(policy: dict[str, Any] | None) -> list[tuple[str, str, int]]:
    """[(action type lower, trigger kind, seconds)] from a stored policy."""
    out = []
    for action in (policy or {}).get("lifetimeActions") or []:
        kind = str((action.get("action") or {}).get("type", "")).lower()
        trigger = action.get("trigger") or {}
        if trigger.get("timeAfterCreate"):
            out.append((kind, "timeAfterCreate", parse_duration(trigger["timeAfterCreate"])))
        elif trigger.get("timeBeforeExpiry"):
            out.append((kind, "timeBeforeExpiry", parse_duration(trigger["timeBeforeExpiry"])))
    return out


def default_policy() -> dict[str, Any]:
    """What Key Vault applies to a key without a rotation policy: Notify 30 days before expiry."""
    return {
        "lifetimeActions": [{"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}],
        "attributes": {},
    }


def _due(entry: KeyEntry, kv: KeyVersion) -> list[tuple[int, str]]:
    """(due epoch, what) for the current version: 'rotate', 'notify', 'expired'."""
    due: list[tuple[int, str]] = []
    policy = entry.rotation_policy or default_policy()
    for kind, trigger, seconds in _actions(policy):
        if trigger == "timeAfterCreate":
            at = kv.created + seconds
        elif kv.exp is not None:
            at = kv.exp - seconds
        else:
            continue
        if kind == "rotate" and entry.rotation_policy is not None:
            due.append((at, "rotate"))
        elif kind == "notify" and "near_expiry" not in kv.notified:
            due.append((at, "notify"))
    if kv.exp is not None and "expired" not in kv.notified:
        due.append((kv.exp, "expired"))
    return due


def evaluate(state: VaultState, outbox: Outbox) -> None:
    """Bring time-driven state up to the sandbox clock. Idempotent; each notification once per version."""
    with state.lock:
        now = int(state.clock.now().timestamp())
        if now < state.next_due:
            return
        for name in [n for n, d in state.deleted.items() if d.scheduled_purge_date <= now]:
            del state.deleted[name]
        for entry in list(state.keys.values()):
            for _ in range(100):  # each rotation moves the next trigger >= 7 days on; the rest waits a call
                kv = entry.current
                due = sorted((at, what) for at, what in _due(entry, kv) if at <= now)
                if not due:
                    break
                at, what = due[0]
                # what Azure would have done at that moment: replay it at the due time, but never before
                # the version existed or the policy was set (a new policy acts from now on)
                floor = kv.created
                if what == "rotate" and entry.rotation_policy:
                    floor = max(floor, int((entry.rotation_policy.get("attributes") or {}).get("updated") or 0))
                when = datetime.fromtimestamp(min(max(at, floor), now), UTC)
                if what == "rotate":
                    rotate(state, entry, outbox=outbox, when=when)
                    outbox.audits.append(
                        records.audit_record(
                            state,
                            operation="KeyRotate",
                            api_version="",
                            status=200,
                            description="Rotated by the key's rotation policy",
                            object_id=state.key_id(entry.name, entry.current.version),
                            trusted_service=True,
                            when=when,
                        )
                    )
                    continue
                event_type = records.KEY_NEAR_EXPIRY if what == "notify" else records.KEY_EXPIRED
                kv.notified.add("near_expiry" if what == "notify" else "expired")
                if what == "expired":
                    kv.notified.add("near_expiry")  # an expired version is past near-expiry too
                event = records.key_event(state, event_type, entry.name, kv, when)
                outbox.events.append(event)
                outbox.audits.append(records.notification_audit(state, event))
        upcoming = [d.scheduled_purge_date for d in state.deleted.values()]
        for entry in state.keys.values():
            upcoming.extend(at for at, _what in _due(entry, entry.current))
        state.next_due = min(upcoming, default=FAR_FUTURE)


def publish_access_policy_changed(state: VaultState) -> None:
    when = state.clock.now()
    event = records.vault_event(state, records.ACCESS_POLICY_CHANGED, when)
    outbox = Outbox(events=[event], audits=[records.notification_audit(state, event)])
    outbox.flush(state)


def validate_policy(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a rotation policy the way Key Vault does; returns the stored form. Raises ValueError."""
    actions = body.get("lifetimeActions") or []
    if not isinstance(actions, list) or len(actions) > 2:
        raise ValueError("lifetimeActions must be a list of at most two actions (one Rotate, one Notify)")
    attributes = body.get("attributes") or {}
    expiry = attributes.get("expiryTime")
    expiry_s = parse_duration(expiry) if expiry else None
    if expiry_s is not None and expiry_s < MIN_EXPIRY_TIME:
        raise ValueError("expiryTime must be at least 28 days (P28D)")
    kinds = []
    stored_actions = []
    for action in actions:
        kind = str((action.get("action") or {}).get("type", ""))
        if kind.lower() not in ("rotate", "notify"):
            raise ValueError(f"invalid lifetime action type {kind!r}")
        trigger = action.get("trigger") or {}
        after, before = trigger.get("timeAfterCreate"), trigger.get("timeBeforeExpiry")
        if bool(after) == bool(before):
            raise ValueError("a lifetime action needs exactly one of timeAfterCreate and timeBeforeExpiry")
        if after:
            if kind.lower() != "rotate":
                raise ValueError("timeAfterCreate applies only to Rotate")
            if parse_duration(after) < MIN_ROTATE_AFTER_CREATE:
                raise ValueError("timeAfterCreate must be at least 7 days (P7D)")
            if expiry_s is not None and parse_duration(after) > expiry_s - MIN_TIME_BEFORE_EXPIRY:
                raise ValueError("timeAfterCreate must be at least 7 days shorter than expiryTime")
        if before:
            seconds = parse_duration(before)
            if seconds < MIN_TIME_BEFORE_EXPIRY:
                raise ValueError("timeBeforeExpiry must be at least 7 days (P7D)")
            if kind.lower() == "rotate" and expiry_s is None:
                raise ValueError("a Rotate action with timeBeforeExpiry requires attributes.expiryTime")
            if expiry_s is not None and seconds > expiry_s - MIN_TIME_BEFORE_EXPIRY:
                raise ValueError("timeBeforeExpiry must leave at least 7 days after creation")
        kinds.append(kind.lower())
        stored_actions.append(
            {"trigger": {k: v for k, v in trigger.items() if v}, "action": {"type": kind.capitalize()}}
        )
    if len(set(kinds)) != len(kinds):
        raise ValueError("at most one Rotate and one Notify action")
    stored_attrs: dict[str, Any] = {}
    if expiry:
        stored_attrs["expiryTime"] = str(expiry)
    return {"lifetimeActions": stored_actions, "attributes": stored_attrs}
