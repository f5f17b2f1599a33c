"""service wiring of the reconciler: event claims around it and the 'reconcile' work kind."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from controller import service
from controller.errors import Conflict, TransientError
from controller.model import KeyEventKind, KeyRef, KeyVersionInfo, Severity
from controller.reasons import Reason
from controller.settings import load_settings
from tests.unit.fakes import FakeLedger, FakeQueue, Killed, fake_dependencies
from tests.unit.test_reconciler import KEY, NEW, OLD, account, event, state, world

pytestmark = pytest.mark.unit


def dependencies(w, ledger: FakeLedger) -> service.Dependencies:
    settings = load_settings({"CMK_VAULTS": KEY.vault.url})
    return fake_dependencies(settings, clock=w.clock, ledger=ledger, reconcile=w.deps, notifier=w.notifier,
                             work_queue=w.queue)


def test_a_new_version_event_converges_consumers_and_a_redelivery_does_nothing_more():
    w = world(account("stfree"), account("stpinned", pinned=OLD))
    deps = dependencies(w, FakeLedger())
    handled = service.handle_key_event(event(KeyEventKind.NEW_VERSION), deps)
    assert handled.outcome is service.Outcome.ACCEPTED
    assert state(w, "stfree").current_version == NEW
    assert state(w, "stpinned").key.version == NEW
    writes = len(w.storage.writes)
    assert service.handle_key_event(event(KeyEventKind.NEW_VERSION), deps).outcome is service.Outcome.DUPLICATE
    assert len(w.storage.writes) == writes


def test_a_transient_failure_releases_the_claim_so_the_redelivery_is_processed():
    w = world(account("stpinned", pinned=OLD))
    ledger = FakeLedger()
    deps = dependencies(w, ledger)
    w.vault.fail = TransientError("HTTP 429")
    with pytest.raises(TransientError):
        service.handle_key_event(event(KeyEventKind.NEW_VERSION), deps)
    assert ledger.released == ["e"]
    w.vault.fail = None
    assert service.handle_key_event(event(KeyEventKind.NEW_VERSION), deps).outcome is service.Outcome.ACCEPTED
    assert state(w, "stpinned").key.version == NEW


def test_a_consumer_write_failing_transiently_does_not_fail_the_event_and_its_retry_finishes_it():
    w = world(account("stthrottled", pinned=OLD), account("stfine", tags=(("cmk-rewrap-containers", "docs"),)))
    ledger = FakeLedger()
    deps = dependencies(w, ledger)
    w.storage.fail_for[state(w, "stthrottled").id] = TransientError("HTTP 503")
    assert service.handle_key_event(event(KeyEventKind.NEW_VERSION), deps).outcome is service.Outcome.ACCEPTED
    assert ledger.released == []  # handled: Event Grid does not deliver it again
    assert state(w, "stfine").current_version == NEW
    assert [message["container"] for message, _ in w.queue.items if message.get("kind") == "rewrap"] == ["docs"]
    [continuation] = [message for message, _ in w.queue.items if message.get("continuation")]
    del w.storage.fail_for[state(w, "stthrottled").id]
    report = service.process_work(json.dumps(continuation), deps)
    assert report.reconcile is not None and report.reconcile.retrying == []
    assert state(w, "stthrottled").key.version == NEW


def test_the_reconcile_work_kind_rechecks_a_key():
    w = world(account("stpinned", pinned=OLD))
    report = service.process_work(json.dumps({"kind": "reconcile", "key": KEY.uri}), dependencies(w, FakeLedger()))
    assert report.as_json()["kind"] == "reconcile"
    assert state(w, "stpinned").key.version == NEW


@pytest.mark.parametrize("item", [
    {"kind": "reconcile"},
    {"kind": "reconcile", "key": 5},
    {"kind": "reconcile", "key": "https://evil.vault.azure.net/keys/k"},
    {"kind": "reconcile", "key": "not a key"},
    {"kind": "reconcile", "key": KEY.uri, "retry": "1"},
    {"kind": "reconcile", "key": KEY.uri, "retry": -1},
    {"kind": "reconcile", "key": KEY.uri, "retry": True},
    {"kind": "reconcile", "key": KEY.uri, "retry": 10**9},
    {"kind": "reconcile", "key": KEY.uri, "claims": 5},
    {"kind": "reconcile", "key": KEY.uri, "claims": ""},
    {"kind": "reconcile", "key": KEY.uri, "claims": "run one"},
    {"kind": "reconcile", "key": KEY.uri, "claims": "x" * 201},
    {"kind": "reconcile", "key": KEY.uri, "claims": "controller/1\n"},
    {"kind": "reconcile", "key": KEY.uri, "worklist": True},
    {"kind": "reconcile", "key": KEY.uri, "worklist": "f" * 31},
    {"kind": "reconcile", "key": KEY.uri, "worklist": "F" * 32},
    {"kind": "reconcile", "key": KEY.uri, "worklist": "../" + "f" * 29},
])
def test_malformed_or_foreign_reconcile_items_are_invalid(item):
    w = world()
    with pytest.raises(service.InvalidWorkItem):
        service.process_work(json.dumps(item), dependencies(w, FakeLedger()))


def test_the_sweep_reconciles_every_key_in_use_and_survives_a_failing_one():
    w = world(account("stpinned", pinned=OLD))
    ledger = FakeLedger()
    report = service.run_sweep(dependencies(w, ledger))
    assert report.keys_reconciled == (KEY.uri,)
    assert state(w, "stpinned").key.version == NEW

    w.vault.fail = TransientError("HTTP 503")
    w.vault.versions.append(KeyVersionInfo("c" * 32, enabled=True, created=w.clock.now()))
    failed = service.run_sweep(dependencies(w, ledger))
    assert failed.keys_reconciled == ()
    assert len(failed.failures) == 1


def test_a_new_version_fans_out_rewrap_of_registered_and_tagged_containers():
    w = world(account("stfree", tags=(("cmk-rewrap-containers", "docs; images"),)), account("stplain"))
    queue = FakeQueue()
    settings = load_settings({"CMK_VAULTS": KEY.vault.url, "CMK_REWRAP_TARGETS": "starchive/backups"})
    deps = fake_dependencies(settings, clock=w.clock, reconcile=w.deps, work_queue=queue)
    service.handle_key_event(event(KeyEventKind.NEW_VERSION), deps)
    items = [message for message, _ in queue.items if message.get("kind") == "rewrap"]
    assert sorted((item["account"], item["container"]) for item in items) == [
        ("starchive", "backups"), ("stfree", "docs"), ("stfree", "images")]
    assert {item["key_id"] for item in items} == {KEY.with_version(NEW).uri}


def test_no_rewrap_is_fanned_out_for_other_event_kinds():
    w = world(account("stfree", tags=(("cmk-rewrap-containers", "docs"),)))
    queue = FakeQueue()
    deps = fake_dependencies(load_settings({"CMK_VAULTS": KEY.vault.url}), clock=w.clock, reconcile=w.deps,
                             work_queue=queue)
    service.handle_key_event(event(KeyEventKind.EXPIRED, OLD), deps)
    assert [message for message, _ in queue.items if message.get("kind") == "rewrap"] == []


def test_a_permanent_failure_is_alerted_and_not_retried():
    from controller.errors import NotFound

    w = world(account("stfree"))

    def deleted(_key):
        raise NotFound("get versions of storage-cmk: HTTP 404 KeyNotFound")

    w.vault.get_key_state = deleted  # the key was deleted (no Event Grid event exists for that)
    ledger = FakeLedger()
    handled = service.handle_key_event(event(KeyEventKind.NEW_VERSION), dependencies(w, ledger))
    assert handled.outcome is service.Outcome.ACCEPTED
    assert ledger.released == []
    [alert] = [alert for alert in w.notifier.alerts if alert.reason is Reason.EVENT_FAILED]
    assert alert.severity is Severity.CRITICAL
    assert "KeyNotFound" in alert.message
    assert alert.details["consumers"] == [state(w, "stfree").resource_id]


def test_a_deleted_key_that_nobody_uses_is_a_low_severity_alert():
    from controller.errors import NotFound

    w = world()

    def deleted(_key):
        raise NotFound("get versions of storage-cmk: HTTP 404 KeyNotFound")

    w.vault.get_key_state = deleted
    service.handle_key_event(event(KeyEventKind.NEW_VERSION), dependencies(w, FakeLedger()))
    [alert] = w.notifier.alerts
    assert (alert.severity, alert.reason, alert.details["consumers"]) == (Severity.LOW, Reason.EVENT_FAILED, [])


def test_a_failed_event_whose_blast_radius_cannot_be_read_is_critical():
    from controller.errors import NotFound

    w = world(account("stfree"))

    def deleted(_key):
        raise NotFound("HTTP 404 KeyNotFound")

    def unreadable(_key):
        raise TransientError("Resource Graph HTTP 503")

    w.vault.get_key_state = deleted
    w.storage.consumers_of = unreadable
    service.handle_key_event(event(KeyEventKind.NEW_VERSION), dependencies(w, FakeLedger()))
    [alert] = w.notifier.alerts
    assert (alert.severity, alert.details["consumers"]) == (Severity.CRITICAL, None)


def test_the_sweep_goes_on_when_a_key_or_a_vault_raises_conflict():
    """A Conflict (a lost race) is neither transient nor permanent: it must not abort the sweep."""
    w = world(account("stpinned", pinned=OLD))
    other = "https://contoso-other.vault.azure.net"
    settings = load_settings({"CMK_VAULTS": f"{other},{KEY.vault.url}"})
    original = w.storage.keys_in_use

    def keys_in_use(vault):
        if vault.url == other:
            raise Conflict("the vault listing changed while it was read")
        return original(vault)

    w.storage.keys_in_use = keys_in_use
    report = service.run_sweep(fake_dependencies(settings, clock=w.clock, reconcile=w.deps))
    assert report.keys_reconciled == (KEY.uri,)
    assert report.failures == (f"{other}: the vault listing changed while it was read",)
    assert state(w, "stpinned").key.version == NEW


def test_the_sweep_goes_on_when_one_key_raises_conflict():
    w = world(account("stpinned", pinned=OLD))
    second = KEY.vault.url + "/keys/second-key"
    original = w.vault.get_key_state

    def get_key_state(key):
        if key.name == "second-key":
            raise Conflict("the key changed while it was read")
        return original(key)

    w.vault.get_key_state = get_key_state
    w.storage.keys_in_use = lambda vault: [KeyRef(KEY.vault, "second-key"), KEY]
    report = service.run_sweep(dependencies(w, FakeLedger()))
    assert report.keys_reconciled == (KEY.uri,)
    assert report.failures == (f"{second}: the key changed while it was read",)
    assert state(w, "stpinned").key.version == NEW


def test_a_conflict_while_handling_an_event_releases_the_claim_for_a_retry():
    w = world(account("stpinned", pinned=OLD))
    ledger = FakeLedger()

    def conflicting(_key):
        raise Conflict("the rotation record changed concurrently")

    w.vault.get_key_state = conflicting
    with pytest.raises(TransientError, match="changed concurrently"):
        service.handle_key_event(event(KeyEventKind.NEW_VERSION), dependencies(w, ledger))
    assert ledger.released == ["e"]
    assert w.notifier.alerts == []


@pytest.mark.parametrize("body", ["[" * 30_000 + "]" * 30_000, '{"kind": ' * 6_000 + "1" + "}" * 6_000])
def test_a_deeply_nested_work_item_is_invalid_not_a_crash(body):
    """RecursionError would be retried five times with tracebacks; it belongs in the poison queue at once."""
    w = world()
    with pytest.raises(service.InvalidWorkItem, match="nested too deeply"):
        service.process_work(body, dependencies(w, FakeLedger()))


def test_a_host_killed_mid_adoption_leaves_a_recheck_that_restores_the_consumer_after_the_claim_lease():
    """The redelivery of a claimed event is dropped as a duplicate, so a host that dies between pinning
    and restoring must have queued the key's re-check before it claimed the event."""
    w = world(account("stfree"))
    w.storage.kill_after_writes = 1  # the host dies after pinning, before restoring
    deps = dependencies(w, FakeLedger())
    with pytest.raises(Killed):
        service.handle_key_event(event(KeyEventKind.NEW_VERSION), deps)
    assert state(w, "stfree").key == KEY.with_version(NEW)  # pinned by accident
    [(item, delay)] = w.queue.items
    assert item == {"kind": "reconcile", "key": KEY.uri}
    lease = w.deps.limits.claim_for
    assert delay is not None and delay > lease  # once the dead instance's write claims have lapsed

    w.storage.kill_after_writes = None
    w.clock.advance(delay)
    restarted = replace(w.deps, limits=replace(w.deps.limits, owner="restarted-host"))
    service.process_work(json.dumps(item), replace(deps, reconcile=restarted))
    assert state(w, "stfree").key == KEY  # versionless again
    assert state(w, "stfree").current_version == NEW


def test_a_handled_or_duplicate_event_withdraws_its_recheck():
    w = world(account("stpinned", pinned=OLD))
    deps = dependencies(w, FakeLedger())
    assert service.handle_key_event(event(KeyEventKind.NEW_VERSION), deps).outcome is service.Outcome.ACCEPTED
    assert service.handle_key_event(event(KeyEventKind.NEW_VERSION), deps).outcome is service.Outcome.DUPLICATE
    assert w.queue.items == []
    assert len(w.queue.withdrawn) == 2


def test_the_end_of_an_event_is_logged_with_its_outcome_and_duration(caplog: pytest.LogCaptureFixture):
    w = world(account("stpinned", pinned=OLD))
    deps = dependencies(w, FakeLedger())
    with caplog.at_level("INFO", logger="controller.service"):
        service.handle_key_event(event(KeyEventKind.NEW_VERSION), deps)
    [handled] = [record for record in caplog.records if record.getMessage().startswith("handled key event ")]
    fields = json.loads(handled.getMessage().removeprefix("handled key event "))
    assert fields == {"event_id": "e", "key": KEY.with_version(NEW).uri, "outcome": "accepted", "seconds": 0.0}
