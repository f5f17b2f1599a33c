"""Use cases: what the function triggers and the CLI do, over ports only (no SDK, no I/O of its own)."""

from __future__ import annotations

import enum
import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta

from controller.errors import InvalidEvent, InvalidInput
from controller.events import IntakeResult, parse_delivery
from controller.logs import log_record
from controller.model import KeyEvent
from controller.ports import Clock, EventLedger
from controller.settings import Settings

log = logging.getLogger("controller.service")

#: Work items larger than this are not ours: Azure Storage queue messages are at most 64 KiB.
MAX_WORK_ITEM_BYTES = 64 * 1024


class Outcome(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class HandledEvent:
    event: KeyEvent
    outcome: Outcome


@dataclass(slots=True)
class IntakeReport:
    """What one delivery produced: handled events, ignored (non-key) events and rejections."""

    handled: list[HandledEvent] = field(default_factory=list)
    ignored: int = 0
    rejected: list[InvalidEvent] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "accepted": sum(1 for item in self.handled if item.outcome is Outcome.ACCEPTED),
            "duplicates": sum(1 for item in self.handled if item.outcome is Outcome.DUPLICATE),
            "ignored": self.ignored,
            "rejected": [{"reason": error.reason, "detail": error.detail} for error in self.rejected],
        }


@dataclass(frozen=True, slots=True)
class Dependencies:
    settings: Settings
    clock: Clock
    ledger: EventLedger


def handle_key_event(event: KeyEvent, deps: Dependencies) -> HandledEvent:
    """Claim the event id (idempotent under redelivery) and record the event.

    The rotation planner (a later capability) plugs in after the claim; until then a claimed event
    is recorded as one structured log record and a redelivered one is dropped.
    """
    now = deps.clock.now()
    ttl = timedelta(hours=deps.settings.event_dedupe_hours)
    outcome = Outcome.ACCEPTED if deps.ledger.claim_event(event.event_id, now=now, ttl=ttl) else Outcome.DUPLICATE
    log_record(log, logging.INFO, f"key event {outcome.value}", {**event.as_json(), "outcome": outcome.value})
    return HandledEvent(event, outcome)


def handle_intake(result: IntakeResult, deps: Dependencies) -> IntakeReport:
    """Handle every accepted event of a delivery; count ignored ones and keep the rejection reasons.

    Events are handled in delivery order: correctness never depends on it, because Event Grid
    delivers unordered and every handler converges whatever the order.
    """
    for error in result.rejected:
        log_record(log, logging.WARNING, "key event rejected",
                   {"reason": error.reason, "detail": error.detail, "event_id": error.event_id})
    if result.ignored:
        log_record(log, logging.INFO, "events ignored (not key events)", {"count": result.ignored})
    report = IntakeReport(ignored=result.ignored, rejected=list(result.rejected))
    report.handled.extend(handle_key_event(event, deps) for event in result.events)
    return report


@dataclass(frozen=True, slots=True)
class SweepReport:
    expired_event_claims_purged: int

    def as_json(self) -> dict[str, object]:
        return {"expired_event_claims_purged": self.expired_event_claims_purged}


def run_sweep(deps: Dependencies) -> SweepReport:
    """The periodic sweep. Today: ledger housekeeping (expired event claims). The compliance rule
    catalogue and audit-log scan join here when they are built."""
    purged = deps.ledger.purge_expired(now=deps.clock.now())
    report = SweepReport(expired_event_claims_purged=purged)
    log_record(log, logging.INFO, "sweep finished", report.as_json())
    return report


class InvalidWorkItem(InvalidInput):
    """A queue message that no handler can process; retrying cannot help."""


@dataclass(frozen=True, slots=True)
class WorkReport:
    kind: str
    intake: IntakeReport

    def as_json(self) -> dict[str, object]:
        return {"kind": self.kind, **self.intake.as_json()}


def process_work(body: str, deps: Dependencies) -> WorkReport:
    """Process one work-queue item.

    Kinds: ``key_event`` carries an Event Grid delivery (one event or an array) to handle exactly as
    if Event Grid had pushed it (replays of dead-lettered events; deferred handling). Raises
    InvalidWorkItem for anything malformed or unknown.
    """
    if len(body.encode("utf-8", errors="replace")) > MAX_WORK_ITEM_BYTES:
        raise InvalidWorkItem("work item exceeds 64 KiB")
    try:
        item = json.loads(body)
    except ValueError as err:
        raise InvalidWorkItem("work item is not JSON") from err
    if not isinstance(item, dict) or not isinstance(item.get("kind"), str):
        raise InvalidWorkItem("work item must be a JSON object with a string 'kind'")
    kind = item["kind"]
    if kind != "key_event":
        raise InvalidWorkItem(f"unknown work item kind {kind[:64]!r}")
    if "delivery" not in item:
        raise InvalidWorkItem("key_event work item has no 'delivery'")
    try:
        result = parse_delivery(json.dumps(item["delivery"]), vaults=deps.settings.vaults)
    except InvalidEvent as err:
        raise InvalidWorkItem(f"key_event work item: {err}") from err
    return WorkReport(kind=kind, intake=handle_intake(result, deps))
