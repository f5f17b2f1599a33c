"""controller.events.parse_functions_event: the Functions trigger's argument, read by its attributes only.

The worker hands over an azure.functions.EventGridEvent or CloudEvent; these small stand-ins carry only
the attributes named, so an attribute the intake must not require can be left out.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from controller.errors import InvalidEvent
from controller.events import RejectReason, parse_functions_event
from tests.unit.test_events import KEY_ID, POLICY, TOPIC, VERSION

pytestmark = pytest.mark.unit

EVENT_ID = "00eccf70-95a7-4e7c-8299-2eb17ee9ad64"
DATA = {"Id": KEY_ID, "VaultName": "sample-kv", "ObjectType": "Key", "ObjectName": "cmk-storage",
        "Version": VERSION, "NBF": None, "EXP": None}
WHEN = datetime(2026, 11, 29, 9, 30, tzinfo=UTC)


class Attributes:
    """An object with exactly the given attributes (get_json returns ``data`` when given)."""

    def __init__(self, **attributes: Any) -> None:
        data = attributes.pop("data", DATA)
        for name, value in attributes.items():
            setattr(self, name, value)
        if "get_json" not in attributes:
            self.get_json = lambda: data


def grid(**changes: Any) -> Attributes:
    attributes = {"id": EVENT_ID, "topic": TOPIC, "subject": "cmk-storage",
                  "event_type": "Microsoft.KeyVault.KeyNewVersionCreated", "event_time": WHEN, **changes}
    return Attributes(**{name: value for name, value in attributes.items() if value is not OMIT})


def cloud(**changes: Any) -> Attributes:
    attributes = {"id": EVENT_ID, "source": TOPIC, "subject": "cmk-storage", "specversion": "1.0",
                  "type": "Microsoft.KeyVault.KeyNewVersionCreated", "time": WHEN, **changes}
    return Attributes(**{name: value for name, value in attributes.items() if value is not OMIT})


OMIT = object()


def refusal(event: object) -> tuple[str, str, str | None]:
    with pytest.raises(InvalidEvent) as caught:
        parse_functions_event(event, policy=POLICY)  # type: ignore[arg-type]
    return caught.value.reason, caught.value.detail, caught.value.event_id


@pytest.mark.parametrize("build", [grid, cloud], ids=["EventGridEvent", "CloudEvent"])
def test_an_event_without_subject_is_read(build: Any) -> None:
    parsed = parse_functions_event(build(subject=OMIT), policy=POLICY)  # type: ignore[arg-type]
    assert parsed is not None and parsed.event_time == WHEN and parsed.key is not None


def test_an_event_grid_event_is_read_in_its_schema() -> None:
    parsed = parse_functions_event(grid(), policy=POLICY)  # type: ignore[arg-type]
    assert parsed is not None and (parsed.schema, parsed.event_id) == ("EventGrid", EVENT_ID)


def test_a_cloud_event_keeps_its_time() -> None:
    parsed = parse_functions_event(cloud(), policy=POLICY)  # type: ignore[arg-type]
    assert parsed is not None and (parsed.schema, parsed.event_time) == ("CloudEvents", WHEN)


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (grid(topic=TOPIC.replace("sample-kv", "other-kv")),
         (RejectReason.TOPIC_MISMATCH, "topic names vault 'other-kv', data.VaultName 'sample-kv'", EVENT_ID)),
        (cloud(source=TOPIC.replace("sample-kv", "other-kv")),
         (RejectReason.TOPIC_MISMATCH, "source names vault 'other-kv', data.VaultName 'sample-kv'", EVENT_ID)),
        (grid(topic=OMIT), (RejectReason.MISSING_FIELD, "topic is missing or empty", EVENT_ID)),
        (cloud(source=OMIT), (RejectReason.MISSING_FIELD, "source is missing or empty", EVENT_ID)),
        (grid(event_time=OMIT), (RejectReason.MISSING_FIELD, "eventTime is missing", EVENT_ID)),
        (grid(event_time="soon"), (RejectReason.BAD_EVENT_TIME, "eventTime 'soon' is not an RFC 3339 date-time",
                                   EVENT_ID)),
        (cloud(time="soon"), (RejectReason.BAD_EVENT_TIME, "time 'soon' is not an RFC 3339 date-time", EVENT_ID)),
        (grid(event_type=" "), (RejectReason.MISSING_FIELD, "eventType is missing or empty", None)),
        (cloud(type=" "), (RejectReason.MISSING_FIELD, "type is missing or empty", None)),
        (cloud(type=OMIT), (RejectReason.MISSING_FIELD, "type is missing or empty", None)),
        (grid(id=OMIT), (RejectReason.MISSING_FIELD, "id is missing or empty", None)),
        (grid(subject="other-key"),
         (RejectReason.SUBJECT_MISMATCH, "subject 'other-key' is not the object 'cmk-storage'", EVENT_ID)),
        (grid(get_json=None), (RejectReason.MISSING_FIELD, "data is missing", EVENT_ID)),
        (cloud(specversion="0.3"),
         (RejectReason.UNSUPPORTED_SPEC_VERSION, "CloudEvents specversion '0.3' is not 1.0", None)),
        (cloud(specversion=1), (RejectReason.WRONG_TYPE, "specversion is a string, not a number", None)),
        (Attributes(id=EVENT_ID, specversion=None),
         (RejectReason.UNKNOWN_SCHEMA, "a Attributes is neither an EventGridEvent nor a CloudEvent (no event type)",
          None)),
    ],
    ids=["topic mismatch", "source mismatch", "no topic", "no source", "no event_time", "event_time text",
         "time text", "blank event_type", "blank type", "no type", "no id", "subject mismatch", "no get_json",
         "specversion 0.3", "specversion number", "neither"],
)
def test_a_refused_trigger_event_names_the_attribute(event: object, expected: tuple[str, str, str | None]) -> None:
    assert refusal(event) == expected


def test_a_cloud_event_without_time_or_event_time_is_read() -> None:
    parsed = parse_functions_event(cloud(time=OMIT), policy=POLICY)  # type: ignore[arg-type]
    assert parsed is not None and parsed.event_time is None


@pytest.fixture
def local_zone_new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone is not UTC (a Functions app may set WEBSITE_TIME_ZONE)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_zone_new_york")
def test_trigger_times_are_utc_whatever_the_local_time_zone() -> None:
    naive = parse_functions_event(grid(event_time=datetime(2026, 11, 29, 9, 30)), policy=POLICY)  # type: ignore[arg-type]
    assert naive is not None and naive.event_time is not None
    assert (naive.event_time, naive.event_time.utcoffset()) == (WHEN, timedelta(0))
    east = datetime(2026, 11, 29, 11, 30, tzinfo=timezone(timedelta(hours=2)))
    aware = parse_functions_event(grid(event_time=east), policy=POLICY)  # type: ignore[arg-type]
    assert aware is not None and aware.event_time is not None
    assert (aware.event_time, aware.event_time.utcoffset()) == (WHEN, timedelta(0))


class WithoutGetJson:
    """An EventGridEvent-like object without get_json at all."""

    id = EVENT_ID
    topic = TOPIC
    subject = "cmk-storage"
    event_type = "Microsoft.KeyVault.KeyNewVersionCreated"
    event_time = WHEN


def test_an_event_without_get_json_has_no_data() -> None:
    assert refusal(WithoutGetJson()) == (RejectReason.MISSING_FIELD, "data is missing", EVENT_ID)


@pytest.mark.usefixtures("local_zone_new_york")
def test_event_times_in_text_are_utc_whatever_the_local_time_zone() -> None:
    from tests.unit.test_events import key_event, parse_one

    (event,) = parse_one(key_event(eventTime="2026-11-29T11:30:00+02:00")).events
    assert event.event_time is not None
    assert (event.event_time, event.event_time.utcoffset()) == (WHEN, timedelta(0))
