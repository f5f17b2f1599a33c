"""Alert delivery for real: the Table alert ledger on Azurite and the webhook channels against the sink."""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableClient

from controller.adapters.alert_channels import EventGridTopicChannel, WebhookChannel
from controller.adapters.alert_ledger import TableAlertLedger
from controller.alert_desk import AlertDesk
from controller.alerts import ChannelKind, ChannelRoute, after_failure, deliveries, evaluate
from controller.errors import Conflict, PermanentError, TransientError
from controller.model import Alert, Severity
from controller.reasons import Reason
from emulators.eventgrid_topic import EventGridTopicEmulator
from emulators.keyvault.ca import SandboxCA
from emulators.keyvault.credential import SandboxCredential
from emulators.webhook_sink import WebhookSink
from tests.unit.fakes import FakeClock

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 1, 9, tzinfo=UTC)
DAY = timedelta(hours=24)
SCOPE = "reconcile https://kv.vault.azure.net/keys/k"
ALERT = Alert(severity=Severity.CRITICAL, title="st1: IdentityLacksAccess", resource="/subscriptions/s/st1",
              reason=Reason.IDENTITY_LACKS_ACCESS, message="identity cannot unwrap", fingerprint="f" * 32,
              details={"key": "https://kv.vault.azure.net/keys/k"})


@pytest.fixture
def table(azurite) -> Iterator[TableClient]:
    client = TableClient.from_connection_string(azurite.connection_string, table_name=f"a{uuid.uuid4().hex[:12]}")
    yield client
    client.delete_table()


def notice():
    [opened] = evaluate(SCOPE, [ALERT], [], now=T0, realert_after=DAY).notices
    return opened


# ---- the ledger ------------------------------------------------------------------------------------


def test_states_and_the_outbox_round_trip_and_a_delivered_notice_is_never_owed_again(table):
    ledger = TableAlertLedger(table)
    evaluation = evaluate(SCOPE, [ALERT], ledger.load_scope(SCOPE), now=T0, realert_after=DAY)
    owed = deliveries(evaluation.notices, [ChannelRoute(ChannelKind.TEAMS)])
    ledger.save(evaluation.states, owed)

    fresh = TableAlertLedger(table)
    assert fresh.load_scope(SCOPE) == list(evaluation.states)
    assert fresh.load(SCOPE, ALERT.fingerprint) == evaluation.states[0]
    assert fresh.load("another scope", ALERT.fingerprint) is None
    [due] = fresh.due(T0, limit=10)
    assert due == owed[0]
    assert fresh.due(T0 - timedelta(seconds=1), limit=10) == []

    fresh.delivered(due)
    assert fresh.due(T0 + DAY, limit=10) == []
    TableAlertLedger(table).save([], owed)  # the same transition decided again elsewhere
    assert TableAlertLedger(table).due(T0 + DAY, limit=10) == []


def test_a_failed_delivery_is_rescheduled_with_its_attempts(table):
    ledger = TableAlertLedger(table)
    evaluation = evaluate(SCOPE, [ALERT], [], now=T0, realert_after=DAY)
    [owed] = deliveries(evaluation.notices, [ChannelRoute(ChannelKind.SLACK)])
    ledger.save(evaluation.states, [owed])
    retry = after_failure(owed, "HTTP 503", T0)
    ledger.reschedule(retry)
    assert ledger.due(T0, limit=10) == []
    [due] = ledger.due(T0 + timedelta(seconds=30), limit=10)
    assert (due.attempts, due.last_error, due.next_attempt) == (1, "HTTP 503", T0 + timedelta(seconds=30))


def test_two_instances_cannot_both_record_the_same_transition(table):
    first, second = TableAlertLedger(table), TableAlertLedger(table)
    assert first.load_scope(SCOPE) == [] and second.load_scope(SCOPE) == []
    opened = evaluate(SCOPE, [ALERT], [], now=T0, realert_after=DAY)
    first.save(opened.states, [])
    with pytest.raises(Conflict):
        second.save(opened.states, [])
    later = evaluate(SCOPE, [ALERT], first.load_scope(SCOPE), now=T0 + DAY, realert_after=DAY)
    first.save(later.states, [])  # its own ETag is current: the update goes through
    assert TableAlertLedger(table).load(SCOPE, ALERT.fingerprint) == later.states[0]


def test_two_invocations_sharing_one_instances_ledger_cannot_both_record_a_change(table):
    """The Functions host runs invocations on threads that share the process's ledger. Each saves
    against the ETags it read itself: the invocation whose read went stale while another recorded a
    change loses (Conflict), as between two instances, instead of overwriting that change."""
    ledger = TableAlertLedger(table)
    ledger.save(evaluate(SCOPE, [ALERT], [], now=T0, realert_after=DAY).states, [])
    first_read, second_saved = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def reminds() -> None:  # the alert is still there a day later: remind
        states = ledger.load_scope(SCOPE)
        first_read.set()
        second_saved.wait(timeout=30)
        try:
            ledger.save(evaluate(SCOPE, [ALERT], states, now=T0 + DAY, realert_after=DAY).states, [])
        except Conflict:
            outcome["reminds"] = "conflict"
        else:
            outcome["reminds"] = "saved"

    def resolves() -> None:  # meanwhile another invocation found it fixed: resolve
        first_read.wait(timeout=30)
        resolved = evaluate(SCOPE, [], ledger.load_scope(SCOPE), now=T0 + DAY, realert_after=DAY)
        ledger.save(resolved.states, [])
        outcome["resolved"] = resolved.states[0]
        second_saved.set()

    threads = [threading.Thread(target=reminds), threading.Thread(target=resolves)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert outcome["reminds"] == "conflict"
    assert TableAlertLedger(table).load(SCOPE, ALERT.fingerprint) == outcome["resolved"]



class _CountingChannel:
    """Records each notice; while delivering the first, another instance dispatches (as two function
    invocations of the host do at the same moment)."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.while_delivering: AlertDesk | None = None

    def deliver(self, notice) -> None:
        self.received.append(notice.key)
        other, self.while_delivering = self.while_delivering, None
        if other is not None:
            other.dispatch()


def test_two_instances_dispatching_at_once_deliver_each_notice_once(table):
    """Found by the hostile-input reliability scenario: concurrent invocations each read the same owed
    row and each posted it (one poisoned work item alerted 7 times)."""
    clock = FakeClock(T0)
    channel = _CountingChannel()
    channels = {ChannelKind.WEBHOOK: (ChannelRoute(ChannelKind.WEBHOOK), channel)}
    evaluation = evaluate(SCOPE, [ALERT], [], now=T0, realert_after=DAY)
    TableAlertLedger(table).save(evaluation.states, deliveries(evaluation.notices, [ChannelRoute(ChannelKind.WEBHOOK)]))
    first = AlertDesk(TableAlertLedger(table), channels, clock, realert_after=DAY)
    channel.while_delivering = AlertDesk(TableAlertLedger(table), channels, clock, realert_after=DAY)
    first.dispatch()
    assert len(channel.received) == 1
    clock.advance(DAY)  # long after any claim: delivered is delivered
    assert AlertDesk(TableAlertLedger(table), channels, clock, realert_after=DAY).dispatch().delivered == 0
    assert len(channel.received) == 1


def test_a_claim_left_by_a_crashed_instance_expires_and_the_notice_is_delivered(table):
    evaluation = evaluate(SCOPE, [ALERT], [], now=T0, realert_after=DAY)
    [owed] = deliveries(evaluation.notices, [ChannelRoute(ChannelKind.WEBHOOK)])
    TableAlertLedger(table).save(evaluation.states, [owed])
    crashed = TableAlertLedger(table)
    [due] = crashed.due(T0, limit=10)
    assert crashed.claim(due, T0 + timedelta(minutes=5))  # then the instance dies before delivering
    other = TableAlertLedger(table)
    assert other.due(T0 + timedelta(minutes=1), limit=10) == []
    [again] = other.due(T0 + timedelta(minutes=5), limit=10)
    assert other.claim(again, T0 + timedelta(minutes=10))
    assert not crashed.claim(due, T0 + timedelta(minutes=10))  # its read is stale: it lost the row

# ---- the channels --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [ChannelKind.TEAMS, ChannelKind.SLACK, ChannelKind.WEBHOOK])
def test_each_channel_posts_its_payload(kind):
    with WebhookSink() as sink:
        WebhookChannel(kind, f"{sink.url}/hook").deliver(notice())
        [record] = sink.wait_for(1)
    body = record.body
    if kind is ChannelKind.TEAMS:
        assert body["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
        assert body["attachments"][0]["content"]["type"] == "AdaptiveCard"
    elif kind is ChannelKind.SLACK:
        assert body["text"].startswith("Alert [critical]")
        assert body["blocks"][0]["type"] == "header"
    else:
        assert (body["fingerprint"], body["transition"], body["reason"]) == ("f" * 32, "opened", "IdentityLacksAccess")


def test_a_failing_webhook_is_transient_and_a_refusing_one_permanent_without_echoing_the_url():
    with WebhookSink() as sink:
        sink.respond_with(503)
        with pytest.raises(TransientError, match="HTTP 503"):
            WebhookChannel(ChannelKind.WEBHOOK, f"{sink.url}/alerts").deliver(notice())
        sink.respond_with(404)
        with pytest.raises(PermanentError) as caught:
            WebhookChannel(ChannelKind.WEBHOOK, f"{sink.url}/secret-token").deliver(notice())
    assert "secret-token" not in str(caught.value)


@pytest.fixture
def redirector() -> Iterator[tuple[str, list[str]]]:
    """A webhook that answers every POST with 307 to ``target`` (set by the test)."""
    target: list[str] = []

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(307)
            self.send_header("Location", target[0])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", target
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("kind", [ChannelKind.TEAMS, ChannelKind.SLACK, ChannelKind.WEBHOOK])
def test_no_channel_ever_follows_a_redirect(redirector, kind):
    """A receiver (or whoever took over its name) must not be able to send our alert elsewhere."""
    url, target = redirector
    with WebhookSink() as elsewhere:
        target.append(f"{elsewhere.url}/stolen")
        with pytest.raises(PermanentError, match="redirect") as caught:
            WebhookChannel(kind, f"{url}/alerts").deliver(notice())
        assert elsewhere.records == []
    assert "stolen" not in str(caught.value)


# ---- the desk end to end ------------------------------------------------------------------------------


def test_open_remind_resolve_reach_teams_and_slack_and_a_failing_receiver_gets_it_later(table):
    clock = FakeClock(T0)
    with WebhookSink() as teams, WebhookSink() as slack:
        channels = {
            ChannelKind.TEAMS: (ChannelRoute(ChannelKind.TEAMS, Severity.HIGH),
                                WebhookChannel(ChannelKind.TEAMS, f"{teams.url}/teams")),
            ChannelKind.SLACK: (ChannelRoute(ChannelKind.SLACK, Severity.HIGH),
                                WebhookChannel(ChannelKind.SLACK, f"{slack.url}/slack")),
        }
        desk = AlertDesk(TableAlertLedger(table), channels, clock, realert_after=DAY)
        slack.respond_with(503)
        desk.sync(SCOPE, [ALERT])
        desk.sync(SCOPE, [ALERT])  # quiet: no second notice
        assert len(teams.wait_for(1)) == 1
        slack.respond_with(200)
        clock.advance(timedelta(seconds=30))
        assert desk.dispatch().delivered == 1
        clock.advance(DAY)
        desk.sync(SCOPE, [ALERT])
        clock.advance(timedelta(hours=1))
        AlertDesk(TableAlertLedger(table), channels, clock, realert_after=DAY).sync(SCOPE, [])  # a restart
        teams_bodies = [record.body for record in teams.wait_for(3)]
        slack_bodies = [record.body for record in slack.records]  # the first answered 503
    headlines = [body["attachments"][0]["content"]["body"][0]["text"] for body in teams_bodies]
    words = ("Alert", "Still failing", "Resolved")
    assert headlines == [f"{word} [critical] st1: IdentityLacksAccess" for word in words]
    assert [body["text"].split(" [")[0] for body in slack_bodies] == ["Alert", "Alert", "Still failing", "Resolved"]


# ---- the Event Grid custom topic ----------------------------------------------------------------------


@pytest.fixture
def topic(tmp_path) -> Iterator[tuple[EventGridTopicEmulator, SandboxCA]]:
    ca = SandboxCA(tmp_path / "ca")
    with EventGridTopicEmulator(ca) as emulator:
        yield emulator, ca


def test_the_unmodified_publisher_client_sends_the_notice_as_a_cloud_event_with_the_managed_identity(topic):
    emulator, ca = topic
    controller = SandboxCredential()
    emulator.senders.add(controller.object_id)
    EventGridTopicChannel(emulator.endpoint, controller, connection_verify=str(ca.ca_path)).deliver(notice())
    [published] = emulator.wait_for(1)
    event = published.event
    assert (published.schema, published.sender) == ("CloudEvents", controller.object_id)
    assert (event["type"], event["source"], event["subject"], event["specversion"]) == (
        "CmkController.Alert.Opened", "/cmk-controller/alerts", "/subscriptions/s/st1", "1.0")
    assert event["id"] == notice().key  # a re-sent notice is the same event to subscribers
    assert event["data"]["fingerprint"] == "f" * 32
    assert event["data"]["reason"] == "IdentityLacksAccess"


def test_a_principal_without_the_sender_role_is_refused_and_nothing_is_published(topic):
    emulator, ca = topic
    with pytest.raises(PermanentError, match="403"):
        channel = EventGridTopicChannel(emulator.endpoint, SandboxCredential(), connection_verify=str(ca.ca_path))
        channel.deliver(notice())
    assert emulator.events == [] and emulator.refused == [403]
