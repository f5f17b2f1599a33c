"""Alerts with a lifecycle: opened once, reminded while they persist, resolved when they clear. Pure.

Two kinds of alert reach the desk (controller/alert_desk.py drives this module over the ledger):

* Level-based ones belong to a *scope*, the set of problems one evaluation sees completely (the
  consumers of one key after a reconcile, the findings of a compliance sweep). Each evaluation
  passes the alerts that hold now; an alert not yet open is opened, an open one is reminded of
  once ``realert_after`` has passed since it was last notified (or at once if its severity rose),
  and an open one that is no longer there is resolved.
* One-shot ones have no condition that could clear (an event that could not be handled, a work item
  moved to the poison queue): they are notified once per fingerprint, again only after
  ``realert_after``, and never resolved.

Every transition becomes one ``Notice`` per channel whose minimum severity it reaches (resolved
notices go wherever the opening went). Nothing here does I/O; ``now`` is passed in.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from controller.model import Alert, Severity
from controller.reasons import Reason

#: The scope of one-shot alerts (they are never resolved by an evaluation).
ONE_SHOT_SCOPE = "one-shot"


class AlertStatus(enum.StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


class Transition(enum.StrEnum):
    OPENED = "opened"
    REMINDER = "reminder"
    ESCALATED = "escalated"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class AlertState:
    """What the ledger remembers of one alert (keyed by scope and fingerprint)."""

    scope: str
    alert: Alert
    status: AlertStatus
    opened_at: datetime
    last_notified_at: datetime
    notifications: int = 1
    resolved_at: datetime | None = None

    @property
    def fingerprint(self) -> str:
        return self.alert.fingerprint


@dataclass(frozen=True, slots=True)
class Notice:
    """One transition of one alert, to be delivered (the payload of every channel is built from it)."""

    transition: Transition
    alert: Alert
    scope: str
    opened_at: datetime
    at: datetime
    #: How many times this alert has been notified, this notice included.
    notifications: int

    @property
    def key(self) -> str:
        """Identifies the notice for receivers that dedupe: the alert and which notification it is."""
        return f"{self.alert.fingerprint}:{self.notifications}:{self.transition.value}"


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The desk's decision for one scope: the states to persist and the notices to deliver."""

    states: tuple[AlertState, ...] = ()
    notices: tuple[Notice, ...] = ()
    #: Open alerts still within their reminder interval (counted so a report can say so).
    quiet: int = 0


def evaluate(scope: str, current: Iterable[Alert], known: Iterable[AlertState], *, now: datetime,
             realert_after: timedelta, within: Callable[[Alert], bool] | None = None) -> Evaluation:
    """Level-based: ``current`` is every alert of ``scope`` that holds now; ``known`` what the ledger has.

    ``within`` narrows a partial evaluation (drift: a few resources re-read): only open alerts it
    accepts are resolved when missing from ``current``; the others were not looked at. None: the
    evaluation saw the whole scope."""
    if scope == ONE_SHOT_SCOPE:
        raise ValueError("one-shot alerts go through fire(), not evaluate()")
    by_fingerprint = {state.fingerprint: state for state in known if state.scope == scope}
    states: list[AlertState] = []
    notices: list[Notice] = []
    quiet = 0
    seen: set[str] = set()
    for alert in _unique(current):
        seen.add(alert.fingerprint)
        decided = _decide(scope, alert, by_fingerprint.get(alert.fingerprint), now=now, realert_after=realert_after)
        if decided is None:
            quiet += 1
            continue
        state, notice = decided
        states.append(state)
        if notice is not None:
            notices.append(notice)
    for fingerprint, state in sorted(by_fingerprint.items()):
        if fingerprint in seen or state.status is not AlertStatus.OPEN:
            continue
        if within is not None and not within(state.alert):
            continue
        resolved = replace(state, status=AlertStatus.RESOLVED, resolved_at=now, last_notified_at=now,
                           notifications=state.notifications + 1)
        states.append(resolved)
        notices.append(_notice(Transition.RESOLVED, resolved, now))
    return Evaluation(tuple(states), tuple(notices), quiet)


def fire(alert: Alert, known: AlertState | None, *, now: datetime, realert_after: timedelta) -> Evaluation:
    """One-shot: notify unless the same alert was notified less than ``realert_after`` ago."""
    decided = _decide(ONE_SHOT_SCOPE, alert, known, now=now, realert_after=realert_after)
    if decided is None:
        return Evaluation(quiet=1)
    state, notice = decided
    return Evaluation((state,), (notice,) if notice else ())


def _decide(scope: str, alert: Alert, state: AlertState | None, *, now: datetime,
            realert_after: timedelta) -> tuple[AlertState, Notice | None] | None:
    """The new state and notice for an alert that holds now; None when nothing changes."""
    if state is None or state.status is AlertStatus.RESOLVED:
        opened = AlertState(scope, alert, AlertStatus.OPEN, opened_at=now, last_notified_at=now,
                            notifications=(state.notifications + 1) if state else 1)
        return opened, _notice(Transition.OPENED, opened, now)
    transition: Transition | None = None
    if alert.severity.rank < state.alert.severity.rank:
        transition = Transition.ESCALATED
    elif now - state.last_notified_at >= realert_after:
        transition = Transition.REMINDER
    if transition is None:
        if alert == state.alert:
            return None
        # Same problem, new details (a count, a message): remember them without notifying again.
        return replace(state, alert=alert), None
    updated = replace(state, alert=alert, last_notified_at=now, notifications=state.notifications + 1)
    return updated, _notice(transition, updated, now)


def _notice(transition: Transition, state: AlertState, now: datetime) -> Notice:
    return Notice(transition, state.alert, state.scope, state.opened_at, now, state.notifications)


def _unique(alerts: Iterable[Alert]) -> list[Alert]:
    """One alert per fingerprint (the most severe, then the first) in a stable order."""
    chosen: dict[str, Alert] = {}
    for alert in alerts:
        held = chosen.get(alert.fingerprint)
        if held is None or alert.severity.rank < held.severity.rank:
            chosen[alert.fingerprint] = alert
    return sorted(chosen.values(), key=lambda alert: (alert.severity.rank, alert.fingerprint))


# ---- channels ---------------------------------------------------------------------------------------


class ChannelKind(enum.StrEnum):
    TEAMS = "teams"
    SLACK = "slack"
    WEBHOOK = "webhook"
    EVENT_GRID = "eventgrid"


@dataclass(frozen=True, slots=True)
class ChannelRoute:
    """A channel and the least severe alert it takes. A resolved notice follows its opening."""

    kind: ChannelKind
    min_severity: Severity = Severity.INFO

    def takes(self, notice: Notice) -> bool:
        return notice.alert.severity.at_least(self.min_severity)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One notice owed to one channel: kept in the ledger until the channel accepted it."""

    channel: ChannelKind
    notice: Notice
    attempts: int = 0
    next_attempt: datetime | None = None
    last_error: str = ""

    @property
    def key(self) -> str:
        return f"{self.channel.value}:{self.notice.key}"


def deliveries(notices: Sequence[Notice], routes: Sequence[ChannelRoute]) -> list[Delivery]:
    return [Delivery(route.kind, notice, next_attempt=notice.at)
            for notice in notices for route in routes if route.takes(notice)]


#: Back-off between delivery attempts: 30 s doubling, at most an hour. Nothing is ever dropped.
FIRST_RETRY = timedelta(seconds=30)
MAX_RETRY = timedelta(hours=1)


def after_failure(delivery: Delivery, error: str, now: datetime) -> Delivery:
    delay = min(FIRST_RETRY * (2 ** min(delivery.attempts, 16)), MAX_RETRY)
    return replace(delivery, attempts=delivery.attempts + 1, next_attempt=now + delay, last_error=error[:500])


# ---- payloads -----------------------------------------------------------------------------------------

_HEADLINE = {
    Transition.OPENED: "Alert",
    Transition.REMINDER: "Still failing",
    Transition.ESCALATED: "Escalated",
    Transition.RESOLVED: "Resolved",
}
_TEAMS_COLOUR = {Severity.CRITICAL: "Attention", Severity.HIGH: "Attention", Severity.MEDIUM: "Warning",
                 Severity.LOW: "Default", Severity.INFO: "Default"}
#: Slack and Teams cap a text block; the full text stays in the log record and the JSON channels.
_MAX_TEXT = 2900


def headline(notice: Notice) -> str:
    alert = notice.alert
    return f"{_HEADLINE[notice.transition]} [{alert.severity.value}] {alert.title}"


def notice_json(notice: Notice) -> dict[str, object]:
    """The generic webhook's body and the Event Grid event's data: everything, as plain JSON."""
    alert = notice.alert
    return {
        "transition": notice.transition.value,
        "severity": alert.severity.value,
        "title": alert.title,
        "resource": alert.resource,
        "reason": alert.reason.value,
        "message": alert.message,
        "fingerprint": alert.fingerprint,
        "scope": notice.scope,
        "openedAt": notice.opened_at.isoformat(),
        "at": notice.at.isoformat(),
        "notifications": notice.notifications,
        "details": dict(alert.details),
    }


def teams_card(notice: Notice) -> dict[str, object]:
    """A message with one Adaptive Card, as a Teams Workflows ("Post to a channel when a webhook
    request is received") webhook expects it."""
    alert = notice.alert
    facts = [{"title": "Severity", "value": alert.severity.value},
             {"title": "Resource", "value": alert.resource},
             {"title": "Reason", "value": alert.reason.value},
             {"title": "Open since", "value": notice.opened_at.isoformat()}]
    colour = "Good" if notice.transition is Transition.RESOLVED else _TEAMS_COLOUR[alert.severity]
    return {
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": None,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": True, "color": colour,
                     "text": _clip(headline(notice))},
                    {"type": "TextBlock", "wrap": True, "text": _clip(alert.message)},
                    {"type": "FactSet", "facts": facts},
                ],
            },
        }],
    }


def slack_message(notice: Notice) -> dict[str, object]:
    """Block Kit for a Slack incoming webhook; ``text`` is the notification's fallback."""
    alert = notice.alert
    return {
        "text": _clip(headline(notice)),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": _clip(headline(notice), 150)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip(_slack_escape(alert.message))}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": f"*Severity*\n{alert.severity.value}"},
                {"type": "mrkdwn", "text": f"*Reason*\n{alert.reason.value}"},
                {"type": "mrkdwn", "text": _clip(f"*Resource*\n{_slack_escape(alert.resource)}", 2000)},
                {"type": "mrkdwn", "text": f"*Open since*\n{notice.opened_at.isoformat()}"},
            ]},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"fingerprint {alert.fingerprint} · notification {notice.notifications}"},
            ]},
        ],
    }


def cloud_event_type(notice: Notice) -> str:
    return f"CmkController.Alert.{notice.transition.value.capitalize()}"


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn treats these three as control characters (links, mentions).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int = _MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- persisted form ------------------------------------------------------------------------------------


def alert_to_json(alert: Alert) -> dict[str, object]:
    return {"severity": alert.severity.value, "title": alert.title, "resource": alert.resource,
            "reason": alert.reason.value, "message": alert.message, "fingerprint": alert.fingerprint,
            "details": dict(alert.details)}


def alert_from_json(document: Mapping[str, object]) -> Alert:
    """Raises ValueError (KeyError, TypeError) when the document is not an alert this version knows."""
    details = document.get("details") or {}
    if not isinstance(details, dict):
        raise TypeError("alert details must be an object")
    return Alert(severity=Severity(str(document["severity"])), title=str(document["title"]),
                 resource=str(document["resource"]), reason=Reason(str(document["reason"])),
                 message=str(document["message"]), fingerprint=str(document["fingerprint"]),
                 details=details)


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What one dispatch did: delivered, still pending (with the channels' errors), per channel."""

    delivered: int = 0
    pending: int = 0
    errors: tuple[str, ...] = field(default_factory=tuple)
