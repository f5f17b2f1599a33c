"""Property-based tests of controller.events: whatever arrives, the intake answers with a result or an
InvalidEvent carrying a known reason, and never lets an event from outside the allowlist through."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from controller.errors import InvalidEvent
from controller.events import (
    IntakeResult,
    RejectReason,
    SubscriptionValidation,
    parse_delivery,
    parse_event,
    parse_functions_event,
)
from controller.model import KeyEvent, normalise_origin
from controller.vault_policy import VaultPolicy

pytestmark = pytest.mark.unit

EVENTS_DIR = Path(__file__).resolve().parents[1] / "data" / "events"
POLICY = VaultPolicy.of(["https://sample-kv.vault.azure.net", "https://127.0.0.1:8443"])
REASONS = frozenset(RejectReason)
VERSION = "ee059b2bb5bc48398a53b168c6cdcb10"
PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def fixture_events() -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for path in sorted(EVENTS_DIR.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        events.extend(document if isinstance(document, list) else [document])
    return events


VALID_EVENTS = fixture_events()

# Values that lead the parser deep into its checks, mixed with arbitrary ones.
DOMAIN_STRINGS = st.sampled_from(
    [
        "Microsoft.KeyVault.KeyNewVersionCreated",
        "Microsoft.KeyVault.KeyNearExpiry",
        "microsoft.keyvault.keyexpired",
        "Microsoft.KeyVault.VaultAccessPolicyChanged",
        "Microsoft.EventGrid.SubscriptionValidationEvent",
        "Microsoft.KeyVault.SecretNewVersionCreated",
        f"https://sample-kv.vault.azure.net/keys/cmk-storage/{VERSION}",
        f"https://other-kv.vault.azure.net/keys/cmk-storage/{VERSION}",
        f"https://127.0.0.1:8443/keys/cmk-storage/{VERSION}",
        f"https://127.0.0.1:9443/keys/cmk-storage/{VERSION}",
        f"http://sample-kv.vault.azure.net/keys/cmk-storage/{VERSION}",
        f"https://sample-kv.vault.azure.net.evil.example/keys/cmk-storage/{VERSION}",
        f"https://user@sample-kv.vault.azure.net/keys/cmk-storage/{VERSION}",
        "https://sample-kv.vault.azure.net/",
        "https://other-kv.vault.azure.net/",
        "/subscriptions/6a0c5b2e-1b5f-4c7e-9d3a-2f8e4b1c7d90/resourceGroups/sample-rg/providers/"
        "Microsoft.KeyVault/vaults/sample-kv",
        "/subscriptions/6a0c5b2e-1b5f-4c7e-9d3a-2f8e4b1c7d90/resourceGroups/sample-rg/providers/"
        "Microsoft.KeyVault/vaults/other-kv",
        "sample-kv",
        "other-kv",
        "kv1",
        "cmk-storage",
        "Key",
        "Vault",
        "Secret",
        VERSION,
        "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "1559081980",
        "-1",
        "1e999",
        "2019-07-25T01:08:33.1036736Z",
        "2019-02-30T01:08:33Z",
        "1.0",
        "",
        " ",
    ]
)
MEMBER_NAMES = st.sampled_from(
    [
        "id", "Id", "ID", " id", "topic", "source", "subject", "eventType", "type", "eventTime", "time",
        "data", "specversion", "dataVersion", "deadLetterReason", "deliveryAttempts", "data_base64",
        "VaultName", "vaultName", "ObjectType", "ObjectName", "ObjectName ", "Version", " Version",
        "NBF", "EXP", "validationCode", "validationUrl",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | DOMAIN_STRINGS
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(MEMBER_NAMES | st.text(max_size=8), children, max_size=6),
    max_leaves=25,
)


def assert_sound(result: IntakeResult, delivered: int | None = None) -> None:
    """The invariants of any IntakeResult."""
    for accepted in result.events:
        assert isinstance(accepted, KeyEvent)
        assert accepted.vault.url in POLICY.vaults
        if accepted.key is not None:
            assert accepted.key.vault == accepted.vault
            assert accepted.key.version is not None
    for error in result.rejected:
        assert isinstance(error, InvalidEvent)
        assert error.reason in REASONS
        assert len(error.detail) < 400
    assert result.ignored == len(result.ignored_types)
    if delivered is not None:
        handled = len(result.events) + len(result.rejected) + result.ignored
        assert handled + (result.validation is not None) == delivered


def intake(call: Callable[[], IntakeResult], delivered: int | None = None) -> IntakeResult | None:
    try:
        result = call()
    except InvalidEvent as err:
        assert err.reason in REASONS
        event(f"delivery rejected: {err.reason}")
        return None
    assert_sound(result, delivered)
    event(f"events={len(result.events)} ignored={result.ignored} validation={result.validation is not None}")
    for error in result.rejected:
        event(f"event rejected: {error.reason}")
    return result


@PROPERTY_SETTINGS
@given(JSON_VALUES)
def test_any_json_delivery_gives_a_sound_result_or_invalid_event(document: object) -> None:
    delivered = len(document) if isinstance(document, list) else 1
    intake(lambda: parse_delivery(json.dumps(document), policy=POLICY), delivered)


@PROPERTY_SETTINGS
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_any_bytes_or_text_give_a_sound_result_or_invalid_event(body: bytes | str) -> None:
    intake(lambda: parse_delivery(body, policy=POLICY))


@dataclass
class Mutation:
    path: tuple[str, ...]
    action: str
    value: object


def containers(event: dict[str, Any]) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = [()]
    if isinstance(event.get("data"), dict):
        paths.append(("data",))
    return paths


def apply(event: dict[str, Any], path: tuple[str, ...], action: str, name: str, value: object) -> None:
    target: Any = event
    for part in path:
        target = target[part]
    members = list(target)
    pick = sum(map(ord, name))  # deterministic, unlike hash(), so hypothesis can replay failures
    existing = members[pick % len(members)] if members else name
    if action == "delete":
        target.pop(existing, None)
    elif action == "replace":
        target[existing] = value
    elif action == "rename" and existing in target:  # an emptied object has nothing to rename
        target[f" {existing.upper()} " if pick % 2 else existing.lower()] = target.pop(existing)
    elif action == "duplicate":
        target[f"{existing} "] = value
    elif action == "add":
        target[name] = value
    elif action == "edit" and isinstance(target.get(existing), str):
        text = target[existing]
        target[existing] = text[: len(text) // 2] + str(value) + text[len(text) // 2 :]


@PROPERTY_SETTINGS
@given(
    st.sampled_from(range(len(VALID_EVENTS))),
    st.lists(
        st.tuples(
            st.booleans(),
            st.sampled_from(["delete", "replace", "rename", "duplicate", "add", "edit"]),
            MEMBER_NAMES | st.text(min_size=1, max_size=6),
            JSON_VALUES,
        ),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
)
def test_mutated_real_payloads_give_a_sound_result_or_invalid_event(
    index: int, mutations: list[tuple[bool, str, str, object]], batch: bool
) -> None:
    event = copy.deepcopy(VALID_EVENTS[index])
    for in_data, action, name, value in mutations:
        paths = containers(event)
        apply(event, paths[-1] if in_data else paths[0], action, name, value)
    body = json.dumps([event, VALID_EVENTS[0]] if batch else event)
    intake(lambda: parse_delivery(body, policy=POLICY), 2 if batch else 1)
    try:
        outcome = parse_event(event, policy=POLICY)
    except InvalidEvent as err:
        assert err.reason in REASONS
    else:
        assert outcome is None or isinstance(outcome, KeyEvent | SubscriptionValidation)
        if isinstance(outcome, KeyEvent):
            assert outcome.vault.url in POLICY.vaults


HOSTS = st.sampled_from(
    [
        "sample-kv.vault.azure.net", "SAMPLE-KV.vault.azure.net", "sample-kv.vault.azure.net:443",
        "other-kv.vault.azure.net", "sample-kv.vault.azure.cn", "sample-kv.managedhsm.azure.net",
        "127.0.0.1:8443", "127.0.0.1:8444", "127.0.0.1", "localhost:8443", "sample-kv.vault.azure.net.",
        "sample-kv.vault.azure.net:8443", "u@sample-kv.vault.azure.net", "[::1]:8443",
    ]
) | st.text(max_size=40)


@PROPERTY_SETTINGS
@given(HOSTS, st.sampled_from(["https", "http", "HTTPS", ""]))
def test_only_allowlisted_vault_origins_produce_events(host: str, scheme: str) -> None:
    event = copy.deepcopy(VALID_EVENTS[0])
    key_id = f"{scheme}://{host}/keys/cmk-storage/{VERSION}"
    event["data"]["Id"] = key_id
    result = intake(lambda: parse_delivery(json.dumps(event), policy=POLICY), 1)
    assert result is not None
    if result.events:
        assert normalise_origin(f"{scheme}://{host}") in POLICY.vaults


@dataclass
class FakeEventGridEvent:
    id: Any
    topic: Any
    subject: Any
    event_type: Any
    event_time: Any
    data_version: Any
    data: Any

    def get_json(self) -> Any:
        return self.data


@PROPERTY_SETTINGS
@given(
    st.sampled_from([event for event in VALID_EVENTS if "eventType" in event]),
    st.dictionaries(
        st.sampled_from(["id", "topic", "subject", "event_type", "event_time", "data_version", "data"]),
        JSON_VALUES | st.datetimes() | st.just(datetime.max),
        max_size=3,
    ),
)
def test_functions_events_give_a_key_event_none_or_invalid_event(
    template: dict[str, Any], overrides: dict[str, Any]
) -> None:
    arguments = {
        "id": template["id"],
        "topic": template["topic"],
        "subject": template["subject"],
        "event_type": template["eventType"],
        "event_time": datetime(2026, 11, 29, tzinfo=UTC),
        "data_version": template.get("dataVersion"),
        "data": copy.deepcopy(template["data"]),
    }
    arguments.update(overrides)
    try:
        outcome = parse_functions_event(FakeEventGridEvent(**arguments), policy=POLICY)
    except InvalidEvent as err:
        assert err.reason in REASONS
        return
    assert outcome is None or outcome.vault.url in POLICY.vaults
