"""Key deletion from the audit logs and the audit timer's checkpoint, over fakes: the pure analysis
(controller/audit_watch.py, the archive's aggregation in controller/audit.py) and the use case
(service.scheduled_audit) with the real alert desk over the fake ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller import audit, audit_watch, service
from controller.alert_desk import AlertDesk
from controller.alerts import ChannelKind, ChannelRoute, Transition
from controller.audit import AuditFailureGroup, FailureClass, KeyOperation
from controller.audit_watch import AuditWatch, KeyStatus
from controller.model import Consumer, ConsumerKind, Severity
from controller.reasons import Reason
from controller.settings import load_settings
from tests.unit.fakes import (
    FakeAlertLedger,
    FakeAuditCheckpoint,
    FakeAuditLog,
    FakeChannel,
    FakeClock,
    FakeNotifier,
    FakeStorage,
    fake_dependencies,
    fake_reconcile_deps,
)

pytestmark = pytest.mark.unit

VAULT = "https://kv-cmk.vault.azure.net"
VAULT_ID = "/subscriptions/s1/resourcegroups/rg/providers/microsoft.keyvault/vaults/kv-cmk"
KEY_ID = f"{VAULT}/keys/storage-cmk"
OPERATOR = "a0000000-0000-4000-8000-0000000000ff"
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
WINDOW = timedelta(hours=24)


def operation(name: str, at: datetime, key: str = "storage-cmk") -> KeyOperation:
    return KeyOperation(VAULT, VAULT_ID, key, name, at, OPERATOR, "", audit.AZKV_AUDIT_LOGS)


def report(*operations: KeyOperation, start: datetime = T0 - WINDOW, end: datetime = T0,
           groups: tuple[AuditFailureGroup, ...] = (), partial: str | None = None) -> audit.AuditReport:
    return audit.report_of(start, end, groups, managed_vaults=[VAULT], key_operations=operations,
                           sources=[audit.VaultSource(VAULT, audit.AZKV_AUDIT_LOGS, 10)], partial_detail=partial)


def failure(at: datetime, *, failure_class: FailureClass = FailureClass.PERMISSION,
            count: int = 3) -> AuditFailureGroup:
    return AuditFailureGroup(
        vault=VAULT, vault_resource_id=VAULT_ID, key="storage-cmk", version="0" * 32, caller="b1",
        caller_app_id="", operations=("KeyUnwrap",), status_code=403, result_signature="Forbidden",
        failure_class=failure_class, cause="the vault's access policy lacks the permission", count=count,
        first_seen=at - timedelta(minutes=5), last_seen=at, sample_description="does not have keys unwrapKey",
        source=audit.AZKV_AUDIT_LOGS, storage_accounts=("stcmk",))


# --- the pure analysis ----------------------------------------------------------------------------------------


def test_a_delete_makes_the_key_missing_and_a_recover_takes_it_back():
    deleted = audit_watch.advance(AuditWatch(), report(operation(audit.KEY_DELETE, T0 - timedelta(minutes=3))),
                                  window=WINDOW).watch
    (missing,) = deleted.missing_keys.values()
    assert (missing.key_id, missing.status, missing.by) == (KEY_ID, KeyStatus.DELETED, OPERATOR)
    assert deleted.scanned_until == T0

    later = T0 + timedelta(minutes=15)
    recovered = audit_watch.advance(deleted, report(operation(audit.KEY_RECOVER, later - timedelta(minutes=1)),
                                                    start=T0, end=later), window=WINDOW).watch
    assert recovered.missing_keys == {}


def test_rereading_the_overlap_changes_nothing_and_a_later_scan_keeps_the_level():
    first = audit_watch.advance(AuditWatch(), report(operation(audit.KEY_DELETE, T0 - timedelta(minutes=3))),
                                window=WINDOW).watch
    start, end = audit_watch.scan_window(first, T0 + timedelta(minutes=15), WINDOW)
    assert start == T0 - audit_watch.INGESTION_GRACE and end == T0 + timedelta(minutes=15)
    # the overlap brings the same KeyDelete again; a scan with nothing new keeps the key missing
    again = audit_watch.advance(first, report(operation(audit.KEY_DELETE, T0 - timedelta(minutes=3)),
                                              start=start, end=end), window=WINDOW)
    quiet = audit_watch.advance(again.watch, report(start=end, end=end + timedelta(minutes=15)), window=WINDOW)
    assert again.watch.missing_keys == first.missing_keys == quiet.watch.missing_keys
    assert again.newly_purged == quiet.newly_purged == ()


def test_a_purge_after_a_delete_is_reported_once_and_a_recover_older_than_the_delete_is_ignored():
    deleted = audit_watch.advance(AuditWatch(), report(operation(audit.KEY_DELETE, T0 - timedelta(hours=1))),
                                  window=WINDOW).watch
    purge = operation(audit.KEY_PURGE, T0 + timedelta(minutes=5))
    step = audit_watch.advance(deleted, report(purge, end=T0 + timedelta(minutes=10)), window=WINDOW)
    (purged,) = step.newly_purged
    assert purged.status is KeyStatus.PURGED and step.watch.missing_keys[KEY_ID].status is KeyStatus.PURGED
    assert audit_watch.advance(step.watch, report(purge, end=T0 + timedelta(minutes=20)),
                               window=WINDOW).newly_purged == ()
    stale = audit_watch.advance(deleted, report(operation(audit.KEY_RECOVER, T0 - timedelta(hours=2))),
                                window=WINDOW).watch
    assert KEY_ID in stale.missing_keys


def test_a_partial_answer_does_not_move_the_checkpoint():
    first = audit_watch.advance(AuditWatch(), report(), window=WINDOW).watch
    partial = audit_watch.advance(first, report(start=T0, end=T0 + timedelta(minutes=15), partial="E_TIMEOUT"),
                                  window=WINDOW).watch
    assert partial.scanned_until == first.scanned_until == T0


def test_the_first_scan_reads_the_audit_window_and_a_long_pause_at_most_thirty_days():
    assert audit_watch.scan_window(AuditWatch(), T0, WINDOW) == (T0 - WINDOW, T0)
    long_ago = AuditWatch(scanned_until=T0 - timedelta(days=90))
    assert audit_watch.scan_window(long_ago, T0, WINDOW) == (T0 - audit.MAX_WINDOW, T0)
    ahead = AuditWatch(scanned_until=T0 + timedelta(minutes=30))  # saved by an instance whose clock runs ahead
    assert audit_watch.scan_window(ahead, T0, WINDOW) == (T0 - audit_watch.INGESTION_GRACE, T0)


def test_failure_alerts_stay_open_within_the_window_and_expire_after_it():
    step = audit_watch.advance(AuditWatch(), report(groups=(failure(T0 - timedelta(minutes=2)),)), window=WINDOW)
    ((alert, last_seen),) = audit_watch.failure_alerts(report(groups=(failure(T0 - timedelta(minutes=2)),)))
    assert (alert.severity, alert.reason, alert.resource) == (Severity.HIGH, Reason.KEY_OPERATIONS_FAILED, KEY_ID)
    assert "stcmk" in alert.message and "az keyvault set-policy --name kv-cmk" in alert.message
    assert step.watch.failures[alert.fingerprint].last_seen == last_seen
    still = audit_watch.advance(step.watch, report(start=T0, end=T0 + timedelta(hours=23)), window=WINDOW).watch
    assert alert.fingerprint in still.failures
    gone = audit_watch.advance(still, report(start=T0, end=T0 + timedelta(hours=25)), window=WINDOW).watch
    assert gone.failures == {}


def test_the_alert_names_the_key_its_consumers_and_the_remedy():
    watch = audit_watch.advance(AuditWatch(), report(operation(audit.KEY_DELETE, T0)), window=WINDOW).watch
    (alert,) = audit_watch.current_alerts(watch, lambda missing: ["account stcmk", "scope data of account stlake"])
    assert (alert.severity, alert.reason, alert.resource) == (Severity.CRITICAL, Reason.KEY_SOFT_DELETED, KEY_ID)
    assert "az keyvault key recover --vault-name kv-cmk --name storage-cmk" in alert.message
    assert "account stcmk, scope data of account stlake" in alert.message
    assert alert.details["consumers"] == ["account stcmk", "scope data of account stlake"]
    assert audit_watch.current_alerts(watch, lambda missing: []) == []  # nobody uses it: no alert


def test_the_checkpoint_survives_its_json_form():
    step = audit_watch.advance(AuditWatch(), report(operation(audit.KEY_PURGE, T0 - timedelta(minutes=1)),
                                                    groups=(failure(T0),)), window=WINDOW)
    assert AuditWatch.from_json(step.watch.as_json()) == step.watch
    with pytest.raises(ValueError, match="version"):
        AuditWatch.from_json({**step.watch.as_json(), "version": 99})


def test_the_archive_keeps_each_keys_latest_deletion_operation():
    aggregator = audit.FailureAggregator([VAULT], T0 - WINDOW, T0)

    def record(name: str, path: str, at: datetime, status: int = 200) -> dict[str, object]:
        return {"time": at.isoformat(), "resourceId": VAULT_ID.upper(), "operationName": name,
                "resultSignature": "OK", "identity": {"claim": {"oid": OPERATOR}},
                "properties": {"id": VAULT + path, "httpStatusCode": status}}

    aggregator.add_record(record("KeyDelete", "/keys/Storage-CMK/" + "a" * 32, T0 - timedelta(minutes=30)))
    aggregator.add_record(record("KeyPurge", "/deletedkeys/storage-cmk", T0 - timedelta(minutes=20)))
    aggregator.add_record(record("KeyPurge", "/deletedkeys/other", T0 - timedelta(minutes=20), status=403))
    aggregator.add_record(record("KeyDelete", "/keys/recovered", T0 - timedelta(minutes=20)))
    aggregator.add_record(record("KeyRecover", "/keys/recovered/" + "b" * 32, T0 - timedelta(minutes=10)))
    latest = {op.key: op.operation for op in aggregator.key_operations()}
    assert latest == {"storage-cmk": "KeyPurge", "recovered": "KeyRecover"}  # a refused purge changes nothing
    assert aggregator.groups() == []


# --- the use case ------------------------------------------------------------------------------------------------


def consumer(account: str) -> Consumer:
    settings = load_settings({"CMK_VAULTS": VAULT})
    return Consumer(ConsumerKind.ACCOUNT, f"/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Storage/"
                    f"storageAccounts/{account}", account, settings.vault_policy.parse_key_id(KEY_ID), None)


def audit_deps(log: FakeAuditLog, checkpoint: FakeAuditCheckpoint, clock: FakeClock, notifier=None):
    settings = load_settings({"CMK_VAULTS": VAULT})
    storage = FakeStorage({c.id: c for c in (consumer("stcmk"), consumer("stlake"))})
    notifier = notifier or FakeNotifier()
    return fake_dependencies(settings, clock=clock, notifier=notifier, audit=log, audit_checkpoint=checkpoint,
                             reconcile=fake_reconcile_deps(storage, clock=clock, notifier=notifier)), notifier


def test_a_deleted_key_in_use_is_alerted_critical_then_resolved_by_its_recovery():
    clock, checkpoint = FakeClock(T0), FakeAuditCheckpoint()
    ledger, channel = FakeAlertLedger(), FakeChannel()
    desk = AlertDesk(ledger, {ChannelKind.WEBHOOK: (ChannelRoute(ChannelKind.WEBHOOK), channel)}, clock,
                     realert_after=timedelta(hours=24))
    log = FakeAuditLog(failure_groups=[], key_operations=[operation(audit.KEY_DELETE, T0 - timedelta(minutes=4))])
    deps, _ = audit_deps(log, checkpoint, clock, notifier=desk)

    first = service.scheduled_audit(deps)
    clock.advance(timedelta(minutes=15))
    quiet = service.scheduled_audit(deps)  # the key is still deleted: no new notice, no resolution
    log.key_operations.append(operation(audit.KEY_RECOVER, clock.now() - timedelta(minutes=1)))
    clock.advance(timedelta(minutes=15))
    recovered = service.scheduled_audit(deps)

    assert (first.outcome, first.missing_keys, quiet.missing_keys, recovered.missing_keys) == (
        service.AuditScanOutcome.SCANNED, (KEY_ID,), (KEY_ID,), ())
    assert [(n.transition, n.alert.severity) for n in channel.received] == [
        (Transition.OPENED, Severity.CRITICAL), (Transition.RESOLVED, Severity.CRITICAL)]
    assert "account stcmk, account stlake" in channel.received[0].alert.message
    # each scan read from the previous scan's end, less the ingestion grace: no gap
    assert [(start, end) for _, start, end in log.asked] == [
        (T0 - WINDOW, T0), (T0 - audit_watch.INGESTION_GRACE, T0 + timedelta(minutes=15)),
        (T0 + timedelta(minutes=5), T0 + timedelta(minutes=30))]


def test_an_instance_that_lost_the_checkpoint_race_sends_nothing():
    clock = FakeClock(T0)
    checkpoint = FakeAuditCheckpoint(race_after_load=True)  # another instance saves while this one reads the logs
    log = FakeAuditLog(failure_groups=[], key_operations=[operation(audit.KEY_DELETE, T0 - timedelta(minutes=4))])
    deps, notifier = audit_deps(log, checkpoint, clock)
    result = service.scheduled_audit(deps)
    assert result.outcome is service.AuditScanOutcome.SUPERSEDED
    assert checkpoint.saves == 0 and notifier.alerts == [] and notifier.scopes == {}


def test_a_key_of_a_vault_no_longer_managed_is_not_alerted():
    clock, checkpoint = FakeClock(T0), FakeAuditCheckpoint()
    gone = KeyOperation("https://kv-gone.vault.azure.net", "/x", "cmk", audit.KEY_DELETE, T0, OPERATOR, "", "archive")
    deps, notifier = audit_deps(FakeAuditLog(failure_groups=[], key_operations=[gone]), checkpoint, clock)
    service.scheduled_audit(deps)
    assert notifier.scopes == {audit_watch.AUDIT_ALERT_SCOPE: []}


def test_a_purge_after_the_deletion_alert_adds_a_one_shot_notice():
    clock, checkpoint = FakeClock(T0), FakeAuditCheckpoint()
    log = FakeAuditLog(failure_groups=[], key_operations=[operation(audit.KEY_DELETE, T0 - timedelta(minutes=4))])
    deps, notifier = audit_deps(log, checkpoint, clock)
    service.scheduled_audit(deps)
    log.key_operations.append(operation(audit.KEY_PURGE, T0 + timedelta(minutes=2)))
    clock.advance(timedelta(minutes=15))
    service.scheduled_audit(deps)
    (current,) = notifier.scopes[audit_watch.AUDIT_ALERT_SCOPE]
    assert current.reason is Reason.KEY_PURGED and "cannot be recovered" in current.message
    one_shots = [alert for alert in notifier.alerts if "can no longer be recovered" in alert.title]
    assert len(one_shots) == 1


def test_without_an_audit_log_the_timer_says_so_and_keeps_no_checkpoint():
    clock, checkpoint = FakeClock(T0), FakeAuditCheckpoint()
    deps, notifier = audit_deps(FakeAuditLog(), checkpoint, clock)
    assert service.scheduled_audit(deps).outcome is service.AuditScanOutcome.NOT_CONFIGURED
    assert checkpoint.saves == 0 and notifier.scopes == {}
