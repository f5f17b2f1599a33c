"""controller.events: eventTime / time and the NBF / EXP epochs, at their edges.

An event's instant must survive any UTC offset (west of Greenwich too), seven fractional digits and a
space instead of "T"; NBF and EXP are epoch seconds from 1970-01-01 to 9999-12-31T23:59:59 inclusive.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from controller.events import RejectReason, parse_delivery
from tests.unit.test_events import POLICY, cloud_event, key_event, parse_one, rejection, with_data

pytestmark = pytest.mark.unit

EVENT_ID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
LAST_SECOND = 253_402_300_799


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2026-11-29T04:30:00-05:00", datetime(2026, 11, 29, 9, 30, tzinfo=UTC)),
        ("2026-11-29T04:00:00-05:30", datetime(2026, 11, 29, 9, 30, tzinfo=UTC)),
        ("2026-11-29T15:15:00+05:45", datetime(2026, 11, 29, 9, 30, tzinfo=UTC)),
        ("2026-11-29t09:30:00z", datetime(2026, 11, 29, 9, 30, tzinfo=UTC)),
        ("2026-11-29 09:30:00Z", datetime(2026, 11, 29, 9, 30, tzinfo=UTC)),
        (" 2026-11-29T09:30:00.1234567Z ", datetime(2026, 11, 29, 9, 30, 0, 123456, tzinfo=UTC)),
        ("2026-11-29T09:30:00.5Z", datetime(2026, 11, 29, 9, 30, 0, 500000, tzinfo=UTC)),
        ("2026-11-29T09:30:00.000001Z", datetime(2026, 11, 29, 9, 30, 0, 1, tzinfo=UTC)),
        ("2026-11-29T09:30:00-00:00", datetime(2026, 11, 29, 9, 30, tzinfo=UTC)),
    ],
    ids=["west of UTC", "west with minutes", "east with minutes", "lower case", "space separator",
         "seven digits", "one digit", "microsecond", "minus zero"],
)
def test_the_event_time_is_the_same_instant_in_utc(text: str, instant: datetime) -> None:
    (event,) = parse_one(key_event(eventTime=text)).events
    assert event.event_time == instant
    assert event.event_time is not None and event.event_time.utcoffset() is not None
    assert event.event_time.tzinfo == UTC


def test_a_cloud_event_time_is_read_like_an_event_grid_one() -> None:
    (event,) = parse_one(cloud_event(time="2026-11-29T04:30:00-05:00")).events
    assert event.event_time == datetime(2026, 11, 29, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    ["2026-11-29T09:30:00.1234567890Z", "2026-11-29T09:30:00+0100", "2026-11-29T09:30Z", "26-11-29T09:30:00Z",
     "2026-11-29T09:30:00Z" + " " * 60 + "x", "x2026-11-29T09:30:00Z", "2026-11-29T09:30:00ZZ"],
    ids=["ten digits", "offset without colon", "no seconds", "two-digit year", "too long", "prefix", "suffix"],
)
def test_text_that_is_not_rfc_3339_is_refused(text: str) -> None:
    error = rejection(key_event(eventTime=text))
    assert (error.reason, error.event_id) == (RejectReason.BAD_EVENT_TIME, EVENT_ID)
    assert error.detail.endswith("is not an RFC 3339 date-time")


def test_a_padded_time_with_nine_fractional_digits_is_read() -> None:
    text = "2026-11-29T09:30:00.123456789+01:00"
    padded = text + " " * (64 - len(text))  # stripped before the length is checked
    (event,) = parse_one(key_event(eventTime=padded)).events
    assert event.event_time == datetime(2026, 11, 29, 8, 30, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "instant"),
    [
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        ("0", datetime(1970, 1, 1, tzinfo=UTC)),
        (0.0, datetime(1970, 1, 1, tzinfo=UTC)),
        (LAST_SECOND, datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        (str(LAST_SECOND), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("1764408600.25", datetime(2025, 11, 29, 9, 30, 0, 250000, tzinfo=UTC)),
    ],
    ids=["zero", "zero as text", "zero float", "last second", "last second as text", "fraction as text"],
)
def test_nbf_and_exp_accept_the_whole_range(value: object, instant: datetime) -> None:
    (event,) = parse_one(with_data(NBF=value, EXP=value)).events
    assert (event.not_before, event.expires) == (instant, instant)


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (-1, "data.EXP -1 is outside 1970-9999"),
        (-0.5, "data.EXP -0.5 is outside 1970-9999"),
        (LAST_SECOND + 1, f"data.EXP {LAST_SECOND + 1} is outside 1970-9999"),
        (LAST_SECOND + 0.5, f"data.EXP {LAST_SECOND + 0.5} is outside 1970-9999"),
        ("1" * 13, f"data.EXP '{'1' * 13}' is not epoch seconds"),
        ("1.", "data.EXP '1.' is not epoch seconds"),
        ("1e3", "data.EXP '1e3' is not epoch seconds"),
        ([1], "data.EXP is epoch seconds, not an array"),
    ],
    ids=["minus one", "minus a half", "past the last second", "half past", "13 digits", "trailing dot",
         "exponent", "array"],
)
def test_nbf_and_exp_outside_the_range_are_refused_with_the_value(value: object, detail: str) -> None:
    error = rejection(with_data(EXP=value))
    assert (error.reason, error.detail, error.event_id) == (RejectReason.BAD_TIMESTAMP, detail, EVENT_ID)


def test_an_exp_too_large_for_a_float_is_not_a_finite_number() -> None:
    text = json.dumps([with_data(EXP="__huge__")]).replace('"__huge__"', "1e400")
    (error,) = parse_delivery(text, policy=POLICY).rejected
    assert (error.reason, error.detail, error.event_id) == (
        RejectReason.BAD_TIMESTAMP, "data.EXP is not a finite number", EVENT_ID)


def test_a_blank_exp_is_absent() -> None:
    (event,) = parse_one(with_data(EXP="   ")).events
    assert event.expires is None
