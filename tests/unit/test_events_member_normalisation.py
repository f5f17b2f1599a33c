"""controller.events: members compared by normalised name, duplicates that must agree, schema detection.

A member given twice (in the JSON text, or twice after stripping and lower-casing its name) is read
only when both values agree: strings after stripping, anything else by type and value (1, 1.0 and
true are three different values). A disagreement is a DUPLICATE_FIELD, never a guess.
"""

from __future__ import annotations

import json

import pytest

from controller.events import RejectReason, parse_delivery, parse_event
from controller.model import KeyEvent
from tests.unit.test_events import POLICY, TOPIC, key_event, parse_one, rejection, with_data

pytestmark = pytest.mark.unit

EVENT_ID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
NBF = 1764408600


def with_json_duplicate(member: str, first: object, second: object) -> str:
    """A one-event delivery whose data gives ``member`` twice in the JSON text."""
    event = with_data(**{member: "__first__"})
    text = json.dumps([event])
    return text.replace(f'"{member}": "__first__"',
                        f'"{member}": {json.dumps(first)}, "{member}": {json.dumps(second)}')


@pytest.mark.parametrize(
    ("first", "second"),
    [(NBF, NBF), (NBF + 0.5, NBF + 0.5), (" 1764408600", "1764408600 ")],
    ids=["integers", "floats", "strings differing in spaces"],
)
def test_a_json_member_given_twice_with_one_value_is_read(first: object, second: object) -> None:
    (event,) = parse_delivery(with_json_duplicate("NBF", first, second), policy=POLICY).events
    assert event.not_before is not None


@pytest.mark.parametrize(
    ("first", "second"),
    [(NBF, NBF + 1), (NBF, float(NBF)), (NBF, str(NBF)), (1, True), (None, NBF), ("1", "2")],
    ids=["two integers", "integer and float", "integer and string", "one and true", "null and number",
         "two strings"],
)
def test_a_json_member_given_twice_with_two_values_is_a_duplicate(first: object, second: object) -> None:
    (error,) = parse_delivery(with_json_duplicate("NBF", first, second), policy=POLICY).rejected
    assert (error.reason, error.detail, error.event_id) == (
        RejectReason.DUPLICATE_FIELD, "data.NBF is given twice with different values", EVENT_ID)


def test_a_member_given_three_times_stays_a_conflict() -> None:
    text = json.dumps([key_event()]).replace(
        '"VaultName": "sample-kv"', '"VaultName": "sample-kv", "VaultName": "other-kv", "VaultName": "sample-kv"')
    (error,) = parse_delivery(text, policy=POLICY).rejected
    assert error.reason == RejectReason.DUPLICATE_FIELD


def test_a_conflict_then_a_normalised_twin_stays_a_conflict() -> None:
    text = json.dumps([with_data(**{"vaultName ": "sample-kv"})]).replace(
        '"VaultName": "sample-kv"', '"VaultName": "sample-kv", "VaultName": "other-kv"')
    (error,) = parse_delivery(text, policy=POLICY).rejected
    assert (error.reason, error.detail) == (
        RejectReason.DUPLICATE_FIELD, "data.VaultName is given twice with different values")


def test_a_normalised_twin_then_a_conflict_stays_a_conflict() -> None:
    event = key_event()
    data = event.pop("data")
    text = json.dumps([event])[:-2] + ', "data": {' + ", ".join(
        ['"vaultName ": "sample-kv"', '"VaultName": "sample-kv"', '"VaultName": "other-kv"']
        + [f"{json.dumps(name)}: {json.dumps(value)}" for name, value in data.items() if name != "VaultName"]
    ) + "}}]"
    (error,) = parse_delivery(text, policy=POLICY).rejected
    assert (error.reason, error.detail) == (
        RejectReason.DUPLICATE_FIELD, "data.VaultName is given twice with different values")


@pytest.mark.parametrize(
    ("twin", "value"),
    [("nbf", NBF), (" NBF ", NBF), ("Nbf", NBF)],
)
def test_normalised_twins_with_the_same_number_are_read(twin: str, value: object) -> None:
    (event,) = parse_one(with_data(**{twin: value})).events
    assert event.not_before is not None


@pytest.mark.parametrize("value", [NBF + 1, float(NBF), str(NBF), [NBF]], ids=["other", "float", "string", "array"])
def test_normalised_twins_with_different_values_are_a_duplicate(value: object) -> None:
    error = rejection(with_data(nbf=value))
    assert (error.reason, error.detail) == (
        RejectReason.DUPLICATE_FIELD, "data.NBF is given twice with different values")


def test_member_names_that_are_not_strings_are_skipped() -> None:
    event: dict[object, object] = {7: "ignored", **key_event()}
    data: dict[object, object] = {None: "ignored", **key_event()["data"]}
    event["data"] = data
    assert isinstance(parse_event(event, policy=POLICY), KeyEvent)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "event",
    [
        {"id": "1", "type": "Microsoft.KeyVault.KeyExpired", "data": {}},
        {"id": "1", "source": TOPIC, "data": {}},
        {"id": "1", "data": {}, "subject": "cmk-storage"},
    ],
    ids=["type without source", "source without type", "neither"],
)
def test_an_event_with_half_of_the_cloud_events_members_has_no_schema(event: dict[str, object]) -> None:
    error = rejection(event)
    assert (error.reason, error.event_id) == (RejectReason.UNKNOWN_SCHEMA, "1")


def test_type_and_source_without_specversion_are_cloud_events() -> None:
    event = {"id": "1", "type": "Contoso.Custom.Event", "source": TOPIC}
    assert parse_one(event).ignored_types == ["Contoso.Custom.Event"]


def test_specversion_alone_makes_a_cloud_event() -> None:
    result = parse_one({"id": "1", "specversion": "1.0", "type": "Contoso.Custom.Event"})
    assert (result.ignored_types, result.rejected) == (["Contoso.Custom.Event"], [])


def test_an_event_grid_event_with_a_source_member_is_still_event_grid() -> None:
    (event,) = parse_one(key_event(source="anything")).events
    assert event.schema == "EventGrid"


def test_a_dead_letter_record_is_reported_as_such_with_its_attempts() -> None:
    (event,) = parse_one(key_event(deadLetterReason="MaxDeliveryAttemptsExceeded", deliveryAttempts=30)).events
    assert event.schema == "DeadLetter"
    (event,) = parse_one(key_event(deadLetterReason="TTL", deliveryAttempts=None)).events
    assert event.schema == "DeadLetter"
