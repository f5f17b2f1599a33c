"""Hostile input: generated (hypothesis) and mutated (the recorded corpus) payloads through the HTTP
``events`` function, the Event Grid webhook of the local Functions host and the work queue.

Promise: no 5xx, no unhandled exception in the host, no action (no ARM write, no Key Vault write, no
alert but the one telling of each item parked on the poison queue), and no outbound request at all to
what hostile events name: loopback listeners stand where other hosts, userinfo tricks and plain http
point, and must see no connection. Forged but well-formed events about the managed keys are checked
against the vault and change nothing. Oversized and deeply nested bodies are refused with a 4xx (a
queue item goes to poison at once, with its reason).
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings

from tests.reliability.conftest import VAULT, Estate, Size, key_name, post
from tests.reliability.hostile_payloads import Mutator, Targets, deliveries, forged_events
from tests.support.loopback_listener import LoopbackListener

pytestmark = pytest.mark.reliability

#: Key Vault operations that change a key: none may follow from hostile input. (Wrap and unwrap are not
#: among them: the re-wrap work of an earlier scenario may still be finishing in the background.)
VAULT_WRITES = frozenset({"KeyCreate", "KeyRotate", "KeyUpdate", "KeyDelete", "KeyImport", "KeyRestore",
                          "KeyRecover", "KeyPurge", "KeyBackup", "KeyUpdateRotationPolicy"})
#: What the Azure queue service takes (64 KiB of message text, here base64).
QUEUE_MESSAGE_LIMIT = 48 * 1024


def vault_writes(operations: Counter[str]) -> dict[str, int]:
    return {operation: count for operation, count in operations.items() if operation in VAULT_WRITES}


def vault_operations(estate: Estate) -> Counter[str]:
    return Counter(estate.counters()["keyvault"][VAULT]["byOperation"])


def wait_until_handled(estate: Estate, log_offset: int, poison_before: int, items: int, timeout: float = 300) -> None:
    """Until the host has processed or parked ``items`` work items since ``log_offset``, every item it
    alerted as parked is on the poison queue (the host sends it there after the invocation) and none is
    visible (a re-check another scenario scheduled for later stays invisible and is not waited for)."""
    queue, poison = estate.queue(), estate.poison_queue()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = estate.host_log_since(log_offset)
        parked = poison.get_queue_properties().approximate_message_count - poison_before
        alerted = log.count("alert opened: work item")
        if (parked >= alerted and log.count("work item processed") + parked >= items
                and not list(queue.peek_messages(max_messages=1))):
            return
        time.sleep(0.5)
    raise AssertionError("the hostile work items were not all handled in time")


def test_hostile_payloads_get_4xx_or_2xx_cause_no_action_and_reach_nothing_outside(estate, size: Size,
                                                                                    report_figures):
    started = time.perf_counter()
    with LoopbackListener("127.0.0.1") as first, LoopbackListener("127.0.0.2") as second:
        targets = Targets(vault_origin=estate.vault_origin, vault_topic=estate.seeded["vaults"][VAULT]["id"],
                          keys=tuple(key_name(index) for index in range(size.keys)),
                          listeners=(first.origin, second.origin))
        arm_writes_before = estate.controller_arm_writes()
        alerts_before = len(estate.alerts())
        vault_before = vault_operations(estate)
        log_offset = estate.host_log_size()
        poison_before = estate.poison_queue().get_queue_properties().approximate_message_count
        statuses: dict[str, Counter[int]] = {"events": Counter(), "webhook": Counter()}
        rejected: Counter[str] = Counter()

        def send(body: bytes, index: int) -> None:
            status, answer = post(estate.events_url, body)
            statuses["events"][status] += 1
            assert status < 500, (status, body[:300], answer[:300])
            if status == 400:
                with_reasons = json.loads(answer)
                reasons = [item.get("reason") for item in with_reasons.get("rejected", [])] or \
                    [with_reasons.get("error", {}).get("code")]
                rejected.update(str(reason) for reason in reasons)
            kind = "SubscriptionValidation" if index % 5 == 0 else "Notification"
            status, answer = post(estate.eventgrid_webhook(), body, {"aeg-event-type": kind})
            statuses["webhook"][status] += 1
            assert status < 500, (status, body[:300], answer[:300])

        generated = size.hostile_payloads // 2
        counter = iter(range(10**9))

        @settings(max_examples=generated, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(deliveries(targets))
        def generated_payloads(payload: object) -> None:
            send(json.dumps(payload).encode(), next(counter))

        generated_payloads()
        mutator = Mutator(targets, seed=14)
        for index in range(size.hostile_payloads - generated):
            send(mutator.next(), index)

        # Forged but well-formed: the controller checks each against the vault (reads) and changes nothing.
        versions = {name: estate.seeded["keys"][f"{VAULT}/{name}"]["version"] for name in targets.keys}
        forged = forged_events(targets, versions, count=max(12, size.hostile_payloads // 40), seed=14)
        for index, event in enumerate(forged):
            url = estate.events_url if index % 2 else estate.eventgrid_webhook()
            status, answer = post(url, json.dumps([event]).encode(), {"aeg-event-type": "Notification"})
            assert status == 200, (status, answer[:300])

        refusals = {
            "oversized": (b'[{"id": "' + b"x" * (1024 * 1024) + b'"}]', 413),
            "nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, 400),
            "nested objects": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, 400),
        }
        for label, (body, expected) in refusals.items():
            assert post(estate.events_url, body)[0] == expected, label
            assert post(estate.eventgrid_webhook(), body, {"aeg-event-type": "Notification"})[0] == expected, label

        queued = 0
        queue_offset = estate.host_log_size()
        queue_mutator = Mutator(targets, seed=1414)
        for index in range(size.hostile_queue_items):
            mutated = queue_mutator.next()
            try:
                delivery = json.loads(mutated)
                body = json.dumps({"kind": "key_event", "delivery": delivery}).encode() if index % 2 else mutated
            except (ValueError, RecursionError):
                body = mutated
            if len(base64.b64encode(body)) <= QUEUE_MESSAGE_LIMIT:
                estate.send_work(body)
                queued += 1
        estate.send_work(b"[" * 20_000 + b"]" * 20_000)
        estate.send_work(b'{"kind": "key_event", "delivery": ' + b"[" * 5_000 + b"]" * 5_000 + b"}")
        queued += 2
        wait_until_handled(estate, queue_offset, poison_before, queued)

        log = estate.host_log_since(log_offset)
        connections = first.connections + second.connections
        arm_writes = estate.controller_arm_writes() - arm_writes_before
        alerts_raised = [record["body"] for record in estate.alerts()[alerts_before:]]
        vault_delta = vault_operations(estate) - vault_before
        poisoned = estate.poison_queue().get_queue_properties().approximate_message_count - poison_before

    figures = {
        "payloads": size.hostile_payloads, "generated": generated, "mutated": size.hostile_payloads - generated,
        "forged_events": len(forged), "queue_items": queued, "poisoned": poisoned,
        "events_statuses": dict(sorted(statuses["events"].items())),
        "webhook_statuses": dict(sorted(statuses["webhook"].items())),
        "rejected_by_reason": dict(rejected.most_common()),
        "outbound_connections": len(connections), "arm_writes": arm_writes,
        "alerts": dict(Counter(str(alert.get("reason")) for alert in alerts_raised)),
        "vault_operations": dict(vault_delta),
        "unhandled_exceptions": log.count("Traceback"), "failed_invocations": log.count("(Failed"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    report_figures(figures)
    assert connections == [], connections[:5]
    assert arm_writes == 0
    # The only alerts: each item parked on the poison queue, told once (nothing is dropped silently).
    poison_alerts = [alert["title"] for alert in alerts_raised if alert.get("reason") == "WorkItemPoisoned"]
    assert len(poison_alerts) == len(alerts_raised), [alert["title"] for alert in alerts_raised][:5]
    assert len(poison_alerts) == len(set(poison_alerts)) == poisoned
    assert vault_writes(vault_delta) == {}, vault_delta
    assert vault_delta["KeyListVersions"] > 0  # the forged events were checked against the vault, not trusted
    assert "Traceback" not in log, log[log.index("Traceback") - 500:][:3000]
    assert "(Failed" not in log
    assert "failed on attempt" not in log  # a hostile queue item goes to poison at once, never retried
