"""Alerts with a lifecycle (controller/alerts.py) and the desk that delivers them (controller/alert_desk.py)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from controller import alerts
from controller.alert_desk import COMMIT_ATTEMPTS, AlertDesk
from controller.alerts import AlertStatus, ChannelKind, ChannelRoute, Transition
from controller.errors import Conflict, PermanentError, TransientError
from controller.model import Alert, Severity
from controller.reasons import Reason
from tests.unit.fakes import FakeAlertLedger, FakeChannel, FakeClock

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 1, 9, tzinfo=UTC)
DAY = timedelta(hours=24)
SCOPE = "reconcile https://kv.vault.azure.net/keys/k"


def alert(name: str = "st1", severity: Severity = Severity.CRITICAL, message: str = "identity cannot unwrap") -> Alert:
    return Alert(severity=severity, title=f"{name}: IdentityLacksAccess", resource=f"/subscriptions/s/{name}",
                 reason=Reason.IDENTITY_LACKS_ACCESS, message=message, fingerprint=f"fp-{name}",
                 details={"key": "https://kv.vault.azure.net/keys/k"})


# ---- lifecycle (pure) ----------------------------------------------------------------------------------


def test_a_new_alert_opens_once_and_stays_quiet_inside_the_interval():
    opened = alerts.evaluate(SCOPE, [alert()], [], now=T0, realert_after=DAY)
    assert [(notice.transition, notice.notifications) for notice in opened.notices] == [(Transition.OPENED, 1)]
    [state] = opened.states
    assert (state.status, state.opened_at, state.last_notified_at) == (AlertStatus.OPEN, T0, T0)

    again = alerts.evaluate(SCOPE, [alert()], opened.states, now=T0 + DAY - timedelta(seconds=1), realert_after=DAY)
    assert again.notices == () and again.states == () and again.quiet == 1


def test_a_persisting_alert_is_reminded_after_the_interval():
    opened = alerts.evaluate(SCOPE, [alert()], [], now=T0, realert_after=DAY)
    reminded = alerts.evaluate(SCOPE, [alert()], opened.states, now=T0 + DAY, realert_after=DAY)
    [notice] = reminded.notices
    assert (notice.transition, notice.notifications, notice.opened_at, notice.at) == (
        Transition.REMINDER, 2, T0, T0 + DAY)
    assert reminded.states[0].last_notified_at == T0 + DAY


def test_a_rising_severity_is_notified_at_once_a_falling_one_is_not():
    opened = alerts.evaluate(SCOPE, [alert(severity=Severity.MEDIUM)], [], now=T0, realert_after=DAY)
    escalated = alerts.evaluate(SCOPE, [alert(severity=Severity.CRITICAL)], opened.states,
                                now=T0 + timedelta(minutes=5), realert_after=DAY)
    assert [notice.transition for notice in escalated.notices] == [Transition.ESCALATED]
    calmer = alerts.evaluate(SCOPE, [alert(severity=Severity.LOW)], escalated.states,
                             now=T0 + timedelta(minutes=10), realert_after=DAY)
    assert calmer.notices == ()
    assert calmer.states[0].alert.severity is Severity.LOW  # remembered, so a later rise is noticed


def test_new_details_are_remembered_without_a_notice():
    opened = alerts.evaluate(SCOPE, [alert()], [], now=T0, realert_after=DAY)
    changed = alerts.evaluate(SCOPE, [alert(message="2 identities cannot unwrap")], opened.states,
                              now=T0 + timedelta(hours=1), realert_after=DAY)
    assert changed.notices == ()
    assert changed.states[0].alert.message == "2 identities cannot unwrap"
    assert changed.states[0].last_notified_at == T0


def test_an_alert_that_clears_is_resolved_once_and_a_recurrence_opens_again():
    opened = alerts.evaluate(SCOPE, [alert("st1"), alert("st2")], [], now=T0, realert_after=DAY)
    resolved = alerts.evaluate(SCOPE, [alert("st2")], opened.states, now=T0 + timedelta(hours=2), realert_after=DAY)
    [notice] = resolved.notices
    assert (notice.transition, notice.alert.fingerprint, notice.notifications) == (Transition.RESOLVED, "fp-st1", 2)
    [state] = resolved.states
    assert (state.status, state.resolved_at) == (AlertStatus.RESOLVED, T0 + timedelta(hours=2))

    held = [*resolved.states, *(s for s in opened.states if s.fingerprint == "fp-st2")]
    assert alerts.evaluate(SCOPE, [alert("st2")], held, now=T0 + timedelta(hours=3), realert_after=DAY).notices == ()
    back = alerts.evaluate(SCOPE, [alert("st1"), alert("st2")], held, now=T0 + timedelta(hours=4),
                           realert_after=DAY)
    assert [(notice.transition, notice.notifications) for notice in back.notices] == [(Transition.OPENED, 3)]


def test_other_scopes_are_never_resolved_by_an_evaluation():
    other = alerts.evaluate("sweep", [alert("st9")], [], now=T0, realert_after=DAY)
    result = alerts.evaluate(SCOPE, [], other.states, now=T0 + DAY, realert_after=DAY)
    assert result.notices == () and result.states == ()


def test_a_partial_evaluation_resolves_only_the_alerts_within_what_it_evaluated():
    opened = alerts.evaluate(SCOPE, [alert("st1"), alert("st2")], [], now=T0, realert_after=DAY)
    partial = alerts.evaluate(SCOPE, [], opened.states, now=T0 + timedelta(hours=1), realert_after=DAY,
                              within=lambda held: held.resource.endswith("/st1"))
    assert [(notice.transition, notice.alert.fingerprint) for notice in partial.notices] == [
        (Transition.RESOLVED, "fp-st1")]
    new = alerts.evaluate(SCOPE, [alert("st3")], opened.states, now=T0 + timedelta(hours=1), realert_after=DAY,
                          within=lambda held: False)
    assert [(notice.transition, notice.alert.fingerprint) for notice in new.notices] == [
        (Transition.OPENED, "fp-st3")]  # a partial evaluation still opens what it found


def test_duplicate_fingerprints_in_one_evaluation_keep_the_most_severe():
    result = alerts.evaluate(SCOPE, [alert(severity=Severity.LOW), alert(severity=Severity.HIGH)], [], now=T0,
                             realert_after=DAY)
    assert [notice.alert.severity for notice in result.notices] == [Severity.HIGH]


def test_one_shot_alerts_are_deduplicated_within_the_interval_and_never_resolved():
    first = alerts.fire(alert(), None, now=T0, realert_after=DAY)
    assert [notice.transition for notice in first.notices] == [Transition.OPENED]
    assert alerts.fire(alert(), first.states[0], now=T0 + DAY / 2, realert_after=DAY).notices == ()
    later = alerts.fire(alert(), first.states[0], now=T0 + DAY, realert_after=DAY)
    assert [notice.transition for notice in later.notices] == [Transition.REMINDER]
    with pytest.raises(ValueError, match="one-shot"):
        alerts.evaluate(alerts.ONE_SHOT_SCOPE, [], [], now=T0, realert_after=DAY)


def test_routes_take_notices_at_or_above_their_minimum_severity():
    notices = alerts.evaluate(SCOPE, [alert("a", Severity.CRITICAL), alert("b", Severity.MEDIUM),
                                      alert("c", Severity.INFO)], [], now=T0, realert_after=DAY).notices
    routes = [ChannelRoute(ChannelKind.TEAMS, Severity.HIGH), ChannelRoute(ChannelKind.WEBHOOK, Severity.INFO)]
    owed = sorted((delivery.channel.value, delivery.notice.alert.fingerprint)
                  for delivery in alerts.deliveries(notices, routes))
    assert owed == [("teams", "fp-a"), ("webhook", "fp-a"), ("webhook", "fp-b"), ("webhook", "fp-c")]


def test_back_off_doubles_and_is_capped_at_an_hour():
    [delivery] = alerts.deliveries(alerts.fire(alert(), None, now=T0, realert_after=DAY).notices,
                                   [ChannelRoute(ChannelKind.WEBHOOK)])
    delays = []
    for _ in range(10):
        delivery = alerts.after_failure(delivery, "HTTP 503", T0)
        assert delivery.next_attempt is not None
        delays.append(delivery.next_attempt - T0)
    assert delays[:3] == [timedelta(seconds=30), timedelta(seconds=60), timedelta(seconds=120)]
    assert delays[-1] == timedelta(hours=1)
    assert delivery.attempts == 10 and delivery.last_error == "HTTP 503"


# ---- payloads ----------------------------------------------------------------------------------------


def notice(transition: Transition = Transition.OPENED, **changes: object):
    opened = alerts.fire(replace(alert(), **changes), None, now=T0, realert_after=DAY).notices[0]
    return replace(opened, transition=transition)


def test_the_teams_payload_is_a_message_with_one_adaptive_card():
    card = alerts.teams_card(notice())
    assert card["type"] == "message"
    [attachment] = card["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    content = attachment["content"]
    assert (content["type"], content["version"]) == ("AdaptiveCard", "1.4")
    texts = [block["text"] for block in content["body"] if block["type"] == "TextBlock"]
    assert texts == ["Alert [critical] st1: IdentityLacksAccess", "identity cannot unwrap"]
    facts = {fact["title"]: fact["value"] for block in content["body"] if block["type"] == "FactSet"
             for fact in block["facts"]}
    assert facts == {"Severity": "critical", "Resource": "/subscriptions/s/st1", "Reason": "IdentityLacksAccess",
                     "Open since": T0.isoformat()}
    assert content["body"][0]["color"] == "Attention"
    assert alerts.teams_card(notice(Transition.RESOLVED))["attachments"][0]["content"]["body"][0]["color"] == "Good"


def test_the_slack_payload_is_block_kit_with_a_fallback_and_escaped_text():
    message = alerts.slack_message(notice(message="<!channel> & <https://evil|click>"))
    assert message["text"] == "Alert [critical] st1: IdentityLacksAccess"
    kinds = [block["type"] for block in message["blocks"]]
    assert kinds == ["header", "section", "section", "context"]
    assert message["blocks"][1]["text"]["text"] == "&lt;!channel&gt; &amp; &lt;https://evil|click&gt;"
    assert len(message["blocks"][0]["text"]["text"]) <= 150
    fields = [field["text"] for field in message["blocks"][2]["fields"]]
    assert fields[0] == "*Severity*\ncritical"


def test_long_texts_are_clipped_for_chat_channels_but_whole_in_json():
    long = "x" * 10_000
    assert len(alerts.slack_message(notice(message=long))["blocks"][1]["text"]["text"]) <= 3000
    assert alerts.notice_json(notice(message=long))["message"] == long


def test_the_generic_json_carries_the_whole_notice():
    body = alerts.notice_json(notice(Transition.REMINDER))
    assert body == {
        "transition": "reminder", "severity": "critical", "title": "st1: IdentityLacksAccess",
        "resource": "/subscriptions/s/st1", "reason": "IdentityLacksAccess", "message": "identity cannot unwrap",
        "fingerprint": "fp-st1", "scope": alerts.ONE_SHOT_SCOPE, "openedAt": T0.isoformat(), "at": T0.isoformat(),
        "notifications": 1, "details": {"key": "https://kv.vault.azure.net/keys/k"},
    }
    assert json.loads(json.dumps(body)) == body


def test_an_alert_round_trips_through_its_persisted_form_and_unknown_ones_are_refused():
    original = alert()
    assert alerts.alert_from_json(alerts.alert_to_json(original)) == original
    with pytest.raises(ValueError):
        alerts.alert_from_json({**alerts.alert_to_json(original), "reason": "SomethingNewer"})


# ---- the desk over fakes ----------------------------------------------------------------------------


def desk(ledger: FakeAlertLedger, clock: FakeClock, **channels: tuple[Severity, FakeChannel]) -> AlertDesk:
    return AlertDesk(ledger, {ChannelKind(name): (ChannelRoute(ChannelKind(name), minimum), channel)
                              for name, (minimum, channel) in channels.items()},
                     clock, realert_after=DAY)


def test_open_remind_and_resolve_reach_the_channels_and_the_log(caplog):
    ledger, clock, teams = FakeAlertLedger(), FakeClock(T0), FakeChannel()
    alert_desk = desk(ledger, clock, teams=(Severity.HIGH, teams))
    with caplog.at_level(logging.INFO, logger="controller.alerts"):
        alert_desk.sync(SCOPE, [alert()])
        alert_desk.sync(SCOPE, [alert()])  # quiet
        clock.advance(DAY)
        alert_desk.sync(SCOPE, [alert()])
        clock.advance(timedelta(hours=1))
        alert_desk.sync(SCOPE, [])
    assert [notice.transition for notice in teams.received] == [
        Transition.OPENED, Transition.REMINDER, Transition.RESOLVED]
    records = [record for record in caplog.records if getattr(record, "custom_dimensions", {}).get("kind") == "alert"]
    assert [record.custom_dimensions["transition"] for record in records] == ["opened", "reminder", "resolved"]
    assert [record.levelno for record in records] == [logging.CRITICAL, logging.CRITICAL, logging.INFO]
    assert ledger.pending() == []


def test_a_receiver_that_fails_twice_gets_the_notice_on_the_third_dispatch_and_nothing_is_lost():
    ledger, clock, webhook = FakeAlertLedger(), FakeClock(T0), FakeChannel(failures=2)
    alert_desk = desk(ledger, clock, webhook=(Severity.INFO, webhook))
    alert_desk.send(alert())  # first attempt fails
    assert webhook.received == [] and len(ledger.pending()) == 1
    assert alert_desk.dispatch().delivered == 0  # not due yet: back-off
    clock.advance(timedelta(seconds=30))
    report = alert_desk.dispatch()  # second attempt fails
    assert (report.delivered, report.pending) == (0, 1)
    assert report.errors == ("webhook: HTTP 503",)
    clock.advance(timedelta(seconds=60))
    assert alert_desk.dispatch().delivered == 1
    assert [notice.transition for notice in webhook.received] == [Transition.OPENED]
    assert webhook.attempts == 3 and ledger.pending() == []


def test_a_refusing_channel_keeps_the_notice_pending_and_others_still_get_theirs():
    class Refusing(FakeChannel):
        def deliver(self, notice):  # type: ignore[no-untyped-def]
            self.attempts += 1
            raise PermanentError("the slack webhook refused the alert: HTTP 404")

    ledger, clock, slack, teams = FakeAlertLedger(), FakeClock(T0), Refusing(), FakeChannel()
    desk(ledger, clock, slack=(Severity.INFO, slack), teams=(Severity.INFO, teams)).send(alert())
    assert len(teams.received) == 1
    [owed] = ledger.pending()
    assert (owed.channel, owed.attempts) == (ChannelKind.SLACK, 1)
    assert "HTTP 404" in owed.last_error


def test_a_concurrent_instance_that_opened_the_alert_first_means_we_do_not_notify_it_again():
    ledger, clock, channel = FakeAlertLedger(), FakeClock(T0), FakeChannel()
    first = desk(ledger, clock, webhook=(Severity.INFO, channel))
    second = desk(ledger, clock, webhook=(Severity.INFO, channel))
    original_save = ledger.save

    def save_after_the_other_instance(states, deliveries):  # type: ignore[no-untyped-def]
        ledger.save = original_save
        first.sync(SCOPE, [alert()])  # the other instance wins the race and delivers
        original_save(states, deliveries)

    ledger.load_scope(SCOPE)
    ledger.save = save_after_the_other_instance
    second.sync(SCOPE, [alert()])
    assert [notice.transition for notice in channel.received] == [Transition.OPENED]


def test_many_instances_deciding_one_scope_at_once_each_decide_again_until_theirs_is_recorded(caplog):
    """Many resource events at once: each invocation re-evaluates drift and syncs the one compliance
    scope. Each one that loses the race to save decides again, after a short pause that spreads the
    contenders, on what the winners wrote, until its own save goes through (one winner per round):
    the invocation succeeds, and the notice is sent once."""
    ledger, clock, channel = FakeAlertLedger(), FakeClock(T0), FakeChannel()
    pauses: list[float] = []
    alert_desk = AlertDesk(ledger, {ChannelKind.WEBHOOK: (ChannelRoute(ChannelKind.WEBHOOK), channel)}, clock,
                           realert_after=DAY, pause=pauses.append)
    original_save = ledger.save
    lost_races = [Conflict("another instance saved first")] * 5

    def another_instance_saves_first(states, deliveries):  # type: ignore[no-untyped-def]
        if lost_races:
            raise lost_races.pop()
        original_save(states, deliveries)

    ledger.save = another_instance_saves_first
    with caplog.at_level(logging.INFO, logger="controller.alerts"):
        alert_desk.sync(SCOPE, [alert()])
    assert lost_races == [] and len(pauses) == 5 and all(0 < pause <= 2.0 for pause in pauses)
    assert [notice.transition for notice in channel.received] == [Transition.OPENED]
    assert sum("alert opened" in record.message for record in caplog.records) == 1


def test_a_ledger_that_keeps_changing_is_a_transient_failure():
    ledger, clock = FakeAlertLedger(), FakeClock(T0)
    pauses: list[float] = []

    def always_conflict(states, deliveries):  # type: ignore[no-untyped-def]
        raise Conflict("changed")

    ledger.save = always_conflict
    with pytest.raises(TransientError, match="kept changing"):
        AlertDesk(ledger, {}, clock, realert_after=DAY, pause=pauses.append).sync(SCOPE, [alert()])
    assert len(pauses) == COMMIT_ATTEMPTS - 1  # bounded: the invocation fails and is retried later


def test_an_unconfigured_channel_keeps_its_owed_notice():
    ledger, clock, channel = FakeAlertLedger(), FakeClock(T0), FakeChannel(failures=1)
    desk(ledger, clock, teams=(Severity.INFO, channel)).send(alert())
    clock.advance(timedelta(minutes=5))
    report = desk(ledger, clock).dispatch()  # Teams was removed from the settings since
    assert report.errors == ("teams: channel no longer configured",)
    assert len(ledger.pending()) == 1
