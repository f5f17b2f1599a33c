"""controller.events: the Event Grid subscription handshake, whose code is echoed back and whose URL is
followed by an operator. Only a plausible code and a plain https URL pass; the URL is never echoed."""

from __future__ import annotations

import pytest

from controller.events import RejectReason, SubscriptionValidation, parse_event
from tests.unit.test_events import POLICY, rejection

pytestmark = pytest.mark.unit

HANDSHAKE_ID = "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66"
URL = "https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/cmk/validate?id=512d&t=2026&token=abc"


def handshake(data: dict[str, object]) -> dict[str, object]:
    return {"id": HANDSHAKE_ID, "topic": "/subscriptions/x", "subject": "", "data": data,
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": "2026-11-29T09:30:00Z", "dataVersion": "1", "metadataVersion": "1"}


def test_a_code_of_the_longest_accepted_length_is_answered() -> None:
    code = "c" * 256
    assert parse_event(handshake({"validationCode": code}), policy=POLICY) == SubscriptionValidation(
        validation_code=code, validation_url=None, event_id=HANDSHAKE_ID
    )


@pytest.mark.parametrize("code", ["c" * 257, "ab\ncd", "abc\x00def"], ids=["257 characters", "newline", "NUL"])
def test_an_implausible_code_is_refused(code: str) -> None:
    error = rejection(handshake({"validationCode": code}))
    assert (error.reason, error.detail, error.event_id) == (
        RejectReason.BAD_VALIDATION, "data.validationCode is not a plausible validation code", HANDSHAKE_ID
    )


def test_the_code_and_url_are_read_stripped_under_any_spelling_of_their_names() -> None:
    parsed = parse_event(handshake({" ValidationCode": " abc ", "validationurl": f" {URL} "}), policy=POLICY)
    assert parsed == SubscriptionValidation(validation_code="abc", validation_url=URL, event_id=HANDSHAKE_ID)


@pytest.mark.parametrize(
    "url",
    [URL, URL.replace("https", "HTTPS"), "https://rp.example/validate", "https://rp.example:443/"],
    ids=["documented", "scheme in capitals", "no port", "port 443"],
)
def test_a_plain_https_url_is_kept(url: str) -> None:
    parsed = parse_event(handshake({"validationCode": "abc", "validationUrl": url}), policy=POLICY)
    assert isinstance(parsed, SubscriptionValidation) and parsed.validation_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://rp.example/validate",
        "https://user@rp.example/validate",
        "https://user:secret@rp.example/validate",
        "https:///validate",
        "https://rp.example:99999/validate",
        "https://rp.example:port/validate",
        "https://[rp.example/validate",
        "https://rp.example/vali date",
        "https://rp.ex\tample/validate",
        "https://rp.exam\u00e9ple/validate",
        "https://rp.example/\x7fvalidate",
        "ftp://rp.example/validate",
        "rp.example/validate",
    ],
    ids=["http", "userinfo", "user and password", "no host", "port out of range", "port not a number",
         "open bracket", "space", "tab inside", "non-ASCII", "DEL", "ftp", "no scheme"],
)
def test_a_url_that_is_not_plain_https_is_refused_without_being_echoed(url: str) -> None:
    error = rejection(handshake({"validationCode": "abc", "validationUrl": url}))
    assert (error.reason, error.detail, error.event_id) == (
        RejectReason.BAD_VALIDATION, "data.validationUrl is not an https URL", HANDSHAKE_ID
    )


@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        ({}, RejectReason.MISSING_FIELD, "validationCode is missing or empty"),
        ({"validationCode": 42}, RejectReason.WRONG_TYPE, "validationCode is a string, not a number"),
        ({"validationCode": "abc", "validationUrl": 7}, RejectReason.WRONG_TYPE,
         "validationUrl is a string, not a number"),
        ({"validationCode": "abc", "ValidationCode": "abd"}, RejectReason.DUPLICATE_FIELD,
         "validationCode is given twice with different values"),
    ],
)
def test_a_malformed_handshake_names_the_member(data: dict[str, object], reason: RejectReason, detail: str) -> None:
    error = rejection(handshake(data))
    assert (error.reason, error.detail, error.event_id) == (reason, detail, HANDSHAKE_ID)


def test_a_handshake_without_data_is_refused_under_its_id() -> None:
    event = handshake({})
    del event["data"]
    error = rejection(event)
    assert (error.reason, error.detail, error.event_id) == (RejectReason.MISSING_FIELD, "data is missing", HANDSHAKE_ID)


def test_a_handshake_with_a_bad_id_is_refused_before_its_data_is_read() -> None:
    event = handshake({"validationCode": "abc"})
    event["id"] = "x" * 300
    error = rejection(event)
    assert (error.reason, error.event_id) == (RejectReason.BAD_EVENT_ID, None)


def test_a_handshake_with_its_data_given_twice_is_refused_under_its_id() -> None:
    event = {**handshake({"validationCode": "abc"}), "Data": {"validationCode": "abd"}}
    error = rejection(event)
    assert (error.reason, error.detail, error.event_id) == (
        RejectReason.DUPLICATE_FIELD, "data is given twice with different values", HANDSHAKE_ID)


def test_a_handshake_with_its_id_given_twice_is_refused_without_an_id() -> None:
    event = {**handshake({"validationCode": "abc"}), "ID": "another"}
    error = rejection(event)
    assert (error.reason, error.detail, error.event_id) == (
        RejectReason.DUPLICATE_FIELD, "id is given twice with different values", None)
