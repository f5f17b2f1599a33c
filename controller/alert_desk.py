"""The alert desk: the Notifier every use case sends through (controller/alerts.py decides, this acts).

For each alert or scope evaluation it reads what the ledger remembers, lets controller/alerts.py
decide which notices are due, writes the deliveries (the outbox) and then the states to the ledger,
and delivers what is due. Ordering is what makes it safe:

* deliveries are written before the states, so a crash in between re-sends a notice (receivers
  dedupe on ``Notice.key``) but never loses one;
* a delivery leaves the outbox only when its channel accepted it; a failure is retried with
  back-off on every later dispatch (every invocation and the timer), so nothing is ever dropped;
* a dispatch claims each due delivery in the ledger before delivering it (a lease: an instance that
  dies holding one only delays it), so concurrent invocations deliver a notice once, not once each;
* a concurrent instance (or invocation) that changed the same states first makes our save fail with
  Conflict: we re-read and decide again, so two instances never both notify the same transition.
  Many at once (a burst of resource events, each re-evaluating drift into the one compliance scope)
  each win in turn: a loser pauses for a random, growing moment (spreading the contenders) and
  decides again, up to ``COMMIT_ATTEMPTS`` times before its invocation fails to be retried later.

Every notice is also one structured log record ("kind": "alert"), so Application Insights alert
rules can use it without any channel configured.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta

from controller import alerts
from controller.alerts import ChannelKind, ChannelRoute, DeliveryReport, Evaluation, Notice
from controller.errors import Conflict, PermanentError, TransientError
from controller.logs import log_record
from controller.model import Alert, Severity
from controller.ports import AlertChannel, AlertLedger, Clock

log = logging.getLogger("controller.alerts")

_LEVELS = {Severity.CRITICAL: logging.CRITICAL, Severity.HIGH: logging.ERROR, Severity.MEDIUM: logging.WARNING}
#: Deliveries attempted per dispatch; the rest wait for the next one (an invocation stays short).
DISPATCH_BATCH = 50
#: How long a claimed delivery is this instance's: longer than a channel's slowest answer.
CLAIM_LEASE = timedelta(minutes=5)
#: Decisions made per evaluation when other instances keep saving the same states first; every round
#: has a winner, so this many contenders all get through.
COMMIT_ATTEMPTS = 8
#: The first pause after a lost race is up to this long, doubling with each further one, at most 2 s.
FIRST_PAUSE_SECONDS = 0.05
MAX_PAUSE_SECONDS = 2.0


class AlertDesk:
    def __init__(self, ledger: AlertLedger, channels: Mapping[ChannelKind, tuple[ChannelRoute, AlertChannel]],
                 clock: Clock, *, realert_after: timedelta, pause: Callable[[float], None] = time.sleep) -> None:
        self._ledger = ledger
        self._pause = pause
        self._channels = dict(channels)
        self._routes = tuple(route for route, _ in self._channels.values())
        self._clock = clock
        self._realert_after = realert_after

    # ---- Notifier --------------------------------------------------------------------------------
    def send(self, alert: Alert) -> None:
        self._decide_and_commit(lambda: alerts.fire(
            alert, self._ledger.load(alerts.ONE_SHOT_SCOPE, alert.fingerprint),
            now=self._clock.now(), realert_after=self._realert_after))

    def sync(self, scope: str, current: Sequence[Alert], *, within: Callable[[Alert], bool] | None = None) -> None:
        self._decide_and_commit(lambda: alerts.evaluate(
            scope, current, self._ledger.load_scope(scope), now=self._clock.now(),
            realert_after=self._realert_after, within=within))

    # ---- delivery ------------------------------------------------------------------------------------
    def dispatch(self, *, limit: int = DISPATCH_BATCH) -> DeliveryReport:
        """Deliver what is due; a failed delivery stays in the outbox with its next attempt time."""
        now = self._clock.now()
        delivered, errors = 0, []
        due = self._ledger.due(now, limit=limit)
        for delivery in due:
            _, channel = self._channels.get(delivery.channel, (None, None))
            if channel is None:
                # The channel was unconfigured since: the notice stays owed, and someone must know.
                errors.append(f"{delivery.channel.value}: channel no longer configured")
                self._ledger.reschedule(alerts.after_failure(delivery, "channel not configured", now))
                continue
            if not self._ledger.claim(delivery, now + CLAIM_LEASE):
                continue  # another instance is delivering it
            try:
                channel.deliver(delivery.notice)
            except (TransientError, PermanentError) as err:
                errors.append(f"{delivery.channel.value}: {err}")
                retry = alerts.after_failure(delivery, str(err), now)
                self._ledger.reschedule(retry)
                log_record(log, logging.WARNING, "alert delivery failed; it stays pending", {
                    "channel": delivery.channel.value, "fingerprint": delivery.notice.alert.fingerprint,
                    "transition": delivery.notice.transition.value, "attempts": retry.attempts,
                    "next_attempt": retry.next_attempt.isoformat() if retry.next_attempt else None,
                    "error": str(err)})
            else:
                self._ledger.delivered(delivery)
                delivered += 1
        return DeliveryReport(delivered=delivered, pending=len(due) - delivered, errors=tuple(errors))

    # ---- internals -----------------------------------------------------------------------------------
    def _decide_and_commit(self, decide: Callable[[], Evaluation]) -> None:
        for attempt in range(COMMIT_ATTEMPTS):
            evaluation = decide()
            try:
                self._ledger.save(evaluation.states, alerts.deliveries(evaluation.notices, self._routes))
            except Conflict:
                if attempt + 1 == COMMIT_ATTEMPTS:
                    raise TransientError("the alert ledger kept changing concurrently; retry") from None
                # Another instance decided first: decide again on what it wrote, after a pause drawn at
                # random so that the contenders of this round do not all meet again in the next.
                ceiling = min(MAX_PAUSE_SECONDS, FIRST_PAUSE_SECONDS * 2**attempt)
                self._pause(ceiling * (0.5 + random.random() / 2))  # noqa: S311 - spreading, not secrecy
                continue
            for notice in evaluation.notices:
                _log_notice(notice)
            break
        self.dispatch()


def _log_notice(notice: Notice) -> None:
    level = logging.INFO if notice.transition is alerts.Transition.RESOLVED else _LEVELS.get(
        notice.alert.severity, logging.INFO)
    log_record(log, level, f"alert {notice.transition.value}: {notice.alert.title}",
               {"kind": "alert", **alerts.notice_json(notice)})

