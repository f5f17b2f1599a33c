"""controller.events: the strict intake of Key Vault events, table-driven over real payload shapes."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft4Validator

from controller.errors import InvalidEvent
from controller.events import (
    MAX_DELIVERY_BYTES,
    MAX_EVENTS_PER_DELIVERY,
    IntakeResult,
    RejectReason,
    SubscriptionValidation,
    parse_delivery,
    parse_event,
    parse_functions_event,
)
from controller.model import KeyEvent, KeyEventKind
from controller.vault_policy import VaultPolicy
from emulators.specs import SPECS_ROOT

pytestmark = pytest.mark.unit

EVENTS_DIR = Path(__file__).resolve().parents[1] / "data" / "events"
EVENT_GRID_SPECS = SPECS_ROOT / "eventgrid" / "data-plane"
KEY_VAULT_SCHEMA = EVENT_GRID_SPECS / "Microsoft.KeyVault/stable/2018-01-01/KeyVault.json"
POLICY = VaultPolicy.of(["https://sample-kv.vault.azure.net", "https://127.0.0.1:8443"])
SUBSCRIPTION = "6a0c5b2e-1b5f-4c7e-9d3a-2f8e4b1c7d90"
TOPIC = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/sample-rg/providers/Microsoft.KeyVault/vaults/sample-kv"
VERSION = "ee059b2bb5bc48398a53b168c6cdcb10"
KEY_ID = f"https://sample-kv.vault.azure.net/keys/cmk-storage/{VERSION}"


def fixture_text(name: str) -> str:
    return (EVENTS_DIR / name).read_text(encoding="utf-8")


def fixture_json(name: str) -> Any:
    return json.loads(fixture_text(name))


def key_event(**changes: object) -> dict[str, Any]:
    """A valid Event Grid KeyNewVersionCreated event; ``changes`` set top-level members (None deletes)."""
    event: dict[str, Any] = {
        "id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        "topic": TOPIC,
        "subject": "cmk-storage",
        "eventType": "Microsoft.KeyVault.KeyNewVersionCreated",
        "eventTime": "2026-11-29T09:30:00.1234567Z",
        "data": {
            "Id": KEY_ID,
            "VaultName": "sample-kv",
            "ObjectType": "Key",
            "ObjectName": "cmk-storage",
            "Version": VERSION,
            "NBF": 1764408600,
            "EXP": 1796031000,
        },
        "dataVersion": "1",
        "metadataVersion": "1",
    }
    for name, value in changes.items():
        if value is None:
            event.pop(name, None)
        else:
            event[name] = value
    return event


def with_data(**changes: object) -> dict[str, Any]:
    """key_event() with data members changed (None deletes)."""
    event = key_event()
    for name, value in changes.items():
        if value is None:
            event["data"].pop(name, None)
        else:
            event["data"][name] = value
    return event


def access_policy_event(**data_changes: object) -> dict[str, Any]:
    event = key_event(eventType="Microsoft.KeyVault.VaultAccessPolicyChanged", subject="sample-kv")
    event["data"] = {"Id": "https://sample-kv.vault.azure.net/", "VaultName": "sample-kv",
                     "ObjectType": "Vault", "ObjectName": "sample-kv"}
    for name, value in data_changes.items():
        if value is None:
            event["data"].pop(name, None)
        else:
            event["data"][name] = value
    return event


def cloud_event(**changes: object) -> dict[str, Any]:
    event = key_event()
    converted: dict[str, Any] = {
        "id": event["id"], "source": TOPIC, "subject": event["subject"], "type": event["eventType"],
        "time": event["eventTime"], "data": event["data"], "specversion": "1.0",
    }
    for name, value in changes.items():
        if value is None:
            converted.pop(name, None)
        else:
            converted[name] = value
    return converted


def parse_one(event: object, policy: VaultPolicy = POLICY) -> IntakeResult:
    return parse_delivery(json.dumps([event]), policy=policy)


def rejection(event: object, policy: VaultPolicy = POLICY) -> InvalidEvent:
    result = parse_one(event, policy)
    assert not result.events, "expected a rejection, got an event"
    assert len(result.rejected) == 1
    return result.rejected[0]


# --- Real payload shapes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kinds", "schema", "ignored"),
    [
        ("eventgrid_key_new_version_created.json", ["new_version"], "EventGrid", 0),
        ("eventgrid_key_near_expiry.json", ["near_expiry"], "EventGrid", 0),
        ("eventgrid_key_expired.json", ["expired"], "EventGrid", 0),
        ("eventgrid_vault_access_policy_changed.json", ["access_policy_changed"], "EventGrid", 0),
        ("eventgrid_mixed_batch.json", ["new_version"], "EventGrid", 2),
        ("eventgrid_sandbox_custom_origin.json", ["new_version"], "EventGrid", 0),
        ("cloudevents_key_new_version_created.json", ["new_version"], "CloudEvents", 0),
        ("cloudevents_batch.json", ["near_expiry", "expired"], "CloudEvents", 1),
        ("deadletter_key_new_version_created.json", ["new_version"], "DeadLetter", 0),
        ("deadletter_blob.json", ["new_version"], "DeadLetter", 1),
        ("cloudevents_deadletter_key_expired.json", ["expired"], "DeadLetter", 0),
    ],
)
def test_documented_payload_shapes_are_accepted(name: str, kinds: list[str], schema: str, ignored: int) -> None:
    result = parse_delivery(fixture_text(name), policy=POLICY)
    assert result.rejected == []
    assert [event.kind.value for event in result.events] == kinds
    assert {event.schema for event in result.events} == {schema}
    assert result.ignored == ignored == len(result.ignored_types)
    assert result.validation is None


def test_the_documentation_sample_with_its_defects_normalises_exactly() -> None:
    # "ObjectName " with a trailing space, " <version>" with a leading space, NBF/EXP as strings and a
    # seven-digit fraction of a second: all from the published Key Vault event sample.
    result = parse_delivery(fixture_text("eventgrid_key_new_version_created.json").encode(), policy=POLICY)
    (event,) = result.events
    assert event.as_json() == {
        "event_id": "00eccf70-95a7-4e7c-8299-2eb17ee9ad64",
        "kind": "new_version",
        "event_type": "Microsoft.KeyVault.KeyNewVersionCreated",
        "vault": "https://sample-kv.vault.azure.net",
        "vault_resource_id": TOPIC,
        "key": KEY_ID,
        "key_name": "cmk-storage",
        "key_version": VERSION,
        "event_time": "2019-07-25T01:08:33.103673+00:00",
        "not_before": "2019-05-28T22:19:40+00:00",
        "expires": "2019-05-28T22:21:42+00:00",
        "schema": "EventGrid",
    }


def test_camel_case_member_names_are_read_like_pascal_case() -> None:
    (event,) = parse_delivery(fixture_text("eventgrid_key_expired.json"), policy=POLICY).events
    assert event.key is not None
    assert event.key.uri == KEY_ID
    assert event.expires == datetime.fromtimestamp(1796083200, tz=UTC)


def test_vault_access_policy_changed_names_the_vault_and_no_key() -> None:
    (event,) = parse_delivery(fixture_text("eventgrid_vault_access_policy_changed.json"), policy=POLICY).events
    assert event.kind is KeyEventKind.ACCESS_POLICY_CHANGED
    assert event.key is None
    assert event.vault.url == "https://sample-kv.vault.azure.net"
    assert event.not_before is None and event.expires is None


def test_custom_origin_keeps_its_port_and_checks_the_vault_name_against_the_topic() -> None:
    (event,) = parse_delivery(fixture_text("eventgrid_sandbox_custom_origin.json"), policy=POLICY).events
    assert event.vault.url == "https://127.0.0.1:8443"
    assert event.vault_resource_id is not None and event.vault_resource_id.name == "kv1"
    delivery = fixture_json("eventgrid_sandbox_custom_origin.json")
    delivery[0]["data"]["VaultName"] = "kv2"
    assert rejection(delivery[0]).reason == RejectReason.TOPIC_MISMATCH


def test_a_cloud_event_may_omit_time() -> None:
    (event,) = parse_one(cloud_event(time=None)).events
    assert event.event_time is None
    assert event.schema == "CloudEvents"


def test_cloud_events_dead_letter_without_specversion_is_read_as_in_the_documentation() -> None:
    record = fixture_json("cloudevents_deadletter_key_expired.json")
    assert "specversion" not in record
    assert parse_event(record, policy=POLICY) is not None


def test_event_time_keeps_the_instant_across_offsets() -> None:
    (event,) = parse_one(key_event(eventTime="2026-11-29T10:30:00.5+01:00")).events
    assert event.event_time == datetime(2026, 11, 29, 9, 30, 0, 500000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("nbf", "expected"),
    [
        (1764408600, datetime(2025, 11, 29, 9, 30, tzinfo=UTC)),
        ("1764408600", datetime(2025, 11, 29, 9, 30, tzinfo=UTC)),
        (" 1764408600 ", datetime(2025, 11, 29, 9, 30, tzinfo=UTC)),
        (1764408600.5, datetime(2025, 11, 29, 9, 30, 0, 500000, tzinfo=UTC)),
        (None, None),
        ("", None),
    ],
)
def test_nbf_accepts_numbers_numeric_strings_and_null(nbf: object, expected: datetime | None) -> None:
    event = with_data(NBF=0)
    event["data"]["NBF"] = nbf
    (parsed,) = parse_one(event).events
    assert parsed.not_before == expected


def test_event_types_compare_case_insensitively_and_are_reported_canonically() -> None:
    (event,) = parse_one(key_event(eventType="MICROSOFT.KEYVAULT.keynearexpiry")).events
    assert event.kind is KeyEventKind.NEAR_EXPIRY
    assert event.event_type == "Microsoft.KeyVault.KeyNearExpiry"


def test_managed_hsm_key_events_need_a_managed_hsm_topic() -> None:
    hsm_key = f"https://contoso-hsm.managedhsm.azure.net/keys/cmk-storage/{VERSION}"
    hsm_topic = (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/sample-rg/providers/Microsoft.KeyVault/managedHSMs/contoso-hsm"
    )
    event = key_event(topic=hsm_topic)
    event["data"].update(Id=hsm_key, VaultName="contoso-hsm")
    hsm = VaultPolicy.of(["https://contoso-hsm.managedhsm.azure.net"])
    (parsed,) = parse_one(event, hsm).events
    assert parsed.vault.is_managed_hsm
    event["topic"] = hsm_topic.replace("managedHSMs", "vaults")
    assert rejection(event, hsm).reason == RejectReason.TOPIC_MISMATCH


def test_allowlist_entries_may_be_host_names_or_origins_in_any_case() -> None:
    assert parse_one(key_event(), VaultPolicy.of(["SAMPLE-KV.vault.azure.net"])).events
    assert parse_one(key_event(), VaultPolicy.of(["https://sample-kv.vault.azure.net:443/"])).events
    assert rejection(key_event(), VaultPolicy.of(["other-kv.vault.azure.net"])).reason == RejectReason.VAULT_NOT_ALLOWED
    assert rejection(key_event(), VaultPolicy(())).reason == RejectReason.VAULT_NOT_ALLOWED  # nothing allowed


# --- Ignored events ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event_type",
    [
        "Microsoft.KeyVault.SecretNewVersionCreated",
        "Microsoft.KeyVault.SecretNearExpiry",
        "Microsoft.KeyVault.SecretExpired",
        "Microsoft.KeyVault.CertificateNewVersionCreated",
        "Microsoft.KeyVault.CertificateNearExpiry",
        "Microsoft.KeyVault.CertificateExpired",
        "Microsoft.Storage.BlobCreated",
        "Microsoft.EventGrid.SubscriptionDeletedEvent",
        "Contoso.Custom.Event",
    ],
)
def test_other_event_types_are_ignored_not_rejected(event_type: str) -> None:
    # Nothing but the type is read: an ignored event may lack everything else.
    result = parse_delivery(json.dumps([{"eventType": event_type}, key_event()]), policy=POLICY)
    assert result.ignored == 1
    assert result.ignored_types == [event_type]
    assert result.rejected == []
    assert len(result.events) == 1
    assert parse_event({"eventType": event_type}, policy=POLICY) is None


def test_ignored_types_are_clipped_for_logging() -> None:
    result = parse_one({"eventType": "X" * 5000 + "\x00"})
    (logged,) = result.ignored_types
    assert len(logged) <= 110


# --- Subscription validation -------------------------------------------------------------------------


def test_subscription_validation_is_returned_for_the_handshake() -> None:
    result = parse_delivery(fixture_text("subscription_validation.json"), policy=POLICY)
    assert result.validation is not None
    assert result.validation.validation_code == "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"
    assert result.validation.validation_url is not None
    assert result.validation.validation_url.startswith("https://rp-eastus2.eventgrid.azure.net:553/")
    assert result.validation.event_id == "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66"
    assert result.events == [] and result.rejected == [] and result.ignored == 0
    assert "token" not in repr(result.validation)


def test_parse_event_returns_the_validation_request() -> None:
    (event,) = fixture_json("subscription_validation.json")
    assert isinstance(parse_event(event, policy=POLICY), SubscriptionValidation)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({}, RejectReason.MISSING_FIELD),
        ({"validationCode": 42}, RejectReason.WRONG_TYPE),
        ({"validationCode": "x" * 300}, RejectReason.BAD_VALIDATION),
        ({"validationCode": "abc", "validationUrl": "http://rp.example/validate"}, RejectReason.BAD_VALIDATION),
        ({"validationCode": "abc", "validationUrl": "https://user@rp.example/"}, RejectReason.BAD_VALIDATION),
    ],
)
def test_defective_validation_events_are_rejected(data: dict[str, object], reason: RejectReason) -> None:
    (event,) = fixture_json("subscription_validation.json")
    event["data"] = data
    error = rejection(event)
    assert error.reason == reason
    assert "rp.example" not in str(error)  # the validation URL (and its token) is never echoed


def test_a_validation_event_inside_a_batch_is_rejected() -> None:
    (validation,) = fixture_json("subscription_validation.json")
    result = parse_delivery(json.dumps([validation, key_event()]), policy=POLICY)
    assert result.validation is None
    assert [error.reason for error in result.rejected] == [RejectReason.UNEXPECTED_VALIDATION]
    assert len(result.events) == 1


def test_validation_events_are_only_honoured_in_the_event_grid_schema() -> None:
    (validation,) = fixture_json("subscription_validation.json")
    dead_lettered = {**validation, "deadLetterReason": "MaxDeliveryAttemptsExceeded"}
    assert parse_one(dead_lettered).validation is None
    as_cloud_event = {"id": "1", "source": TOPIC, "type": validation["eventType"], "specversion": "1.0",
                      "data": validation["data"]}
    assert parse_one(as_cloud_event).ignored == 1


# --- Whole-delivery defects --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" + b" " * MAX_DELIVERY_BYTES + b"]", RejectReason.TOO_LARGE),
        ("[" + " " * MAX_DELIVERY_BYTES + "]", RejectReason.TOO_LARGE),
        ("[" + "\u00e9" * (MAX_DELIVERY_BYTES // 2) + "]", RejectReason.TOO_LARGE),  # small in characters
        (b"\xff\xfe[]", RejectReason.NOT_UTF8),
        (b'[{"id": "\xc3\x28"}]', RejectReason.NOT_UTF8),
        ('[{"id": "\ud800"}]', RejectReason.NOT_UTF8),
        (b"", RejectReason.NOT_JSON),
        (b"   \n", RejectReason.NOT_JSON),
        (b"{", RejectReason.NOT_JSON),
        (b"[1,]", RejectReason.NOT_JSON),
        (b"NaN", RejectReason.NOT_JSON),
        (b'[{"NBF": Infinity}]', RejectReason.NOT_JSON),
        (b"<xml/>", RejectReason.NOT_JSON),
        (b'{"a": 1} {"b": 2}', RejectReason.NOT_JSON),
        (b"[" + b"9" * 5000 + b"]", RejectReason.NOT_JSON),  # past Python's integer digit limit
        (b"5", RejectReason.WRONG_TYPE),
        (b'"Microsoft.KeyVault.KeyNewVersionCreated"', RejectReason.WRONG_TYPE),
        (b"null", RejectReason.WRONG_TYPE),
        (b"true", RejectReason.WRONG_TYPE),
        (b"[]", RejectReason.EMPTY_BATCH),
        (b"[" * 40 + b"]" * 40, RejectReason.TOO_DEEP),
        (b"[" * 200_000 + b"]" * 200_000, RejectReason.TOO_DEEP),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, RejectReason.TOO_DEEP),
        (("[" + ",".join(["{}"] * (MAX_EVENTS_PER_DELIVERY + 1)) + "]").encode(), RejectReason.TOO_MANY_EVENTS),
    ],
    ids=lambda value: value.value if isinstance(value, RejectReason) else None,
)
def test_whole_delivery_defects_raise_with_a_specific_reason(body: bytes | str, reason: RejectReason) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_delivery(body, policy=POLICY)
    assert caught.value.reason == reason
    assert len(str(caught.value)) < 300


def test_a_body_that_is_neither_bytes_nor_text_is_the_wrong_type() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_delivery(12345, policy=POLICY)  # type: ignore[arg-type]
    assert caught.value.reason == RejectReason.WRONG_TYPE


def test_a_delivery_of_exactly_the_limit_is_read() -> None:
    event = json.dumps([key_event()])
    body = event + " " * (MAX_DELIVERY_BYTES - len(event))
    assert len(body.encode()) == MAX_DELIVERY_BYTES
    assert len(parse_delivery(body, policy=POLICY).events) == 1


def test_a_byte_order_mark_and_bytearray_bodies_are_accepted() -> None:
    body = b"\xef\xbb\xbf" + json.dumps(key_event()).encode()
    assert len(parse_delivery(bytearray(body), policy=POLICY).events) == 1


# --- Per-event defects -------------------------------------------------------------------------------

VERSION_2 = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"

Mutation = Callable[[], object]

PER_EVENT_DEFECTS: list[tuple[str, Mutation, RejectReason]] = [
    # Shape.
    ("not an object", lambda: "Microsoft.KeyVault.KeyNewVersionCreated", RejectReason.WRONG_TYPE),
    ("no schema", lambda: {"id": "1", "data": {}}, RejectReason.UNKNOWN_SCHEMA),
    ("both schemas", lambda: key_event(specversion="1.0"), RejectReason.UNKNOWN_SCHEMA),
    ("cloud events 0.3", lambda: cloud_event(specversion="0.3"), RejectReason.UNSUPPORTED_SPEC_VERSION),
    ("specversion number", lambda: cloud_event(specversion=1.0), RejectReason.WRONG_TYPE),
    ("event type number", lambda: key_event(eventType=7), RejectReason.WRONG_TYPE),
    ("event type empty", lambda: key_event(eventType=" "), RejectReason.MISSING_FIELD),
    ("no id", lambda: key_event(id=None), RejectReason.MISSING_FIELD),
    ("id number", lambda: key_event(id=17), RejectReason.WRONG_TYPE),
    ("id too long", lambda: key_event(id="a" * 257), RejectReason.BAD_EVENT_ID),
    ("id control character", lambda: key_event(id="ab\nc\x00"), RejectReason.BAD_EVENT_ID),
    ("no data", lambda: key_event(data=None), RejectReason.MISSING_FIELD),
    ("data string", lambda: key_event(data=json.dumps(key_event()["data"])), RejectReason.WRONG_TYPE),
    ("data array", lambda: key_event(data=[key_event()["data"]]), RejectReason.WRONG_TYPE),
    ("data_base64", lambda: cloud_event(data=None, data_base64="e30="), RejectReason.MISSING_FIELD),
    ("dead-letter reason number", lambda: key_event(deadLetterReason=3), RejectReason.WRONG_TYPE),
    ("dead-letter attempts text", lambda: key_event(deadLetterReason="x", deliveryAttempts="30"),
     RejectReason.WRONG_TYPE),
    # The key identifier and the allowlist.
    ("no Id", lambda: with_data(Id=None), RejectReason.MISSING_FIELD),
    ("Id number", lambda: with_data(Id=5), RejectReason.WRONG_TYPE),
    ("Id http", lambda: with_data(Id=KEY_ID.replace("https", "http")), RejectReason.BAD_KEY_ID),
    ("Id relative", lambda: with_data(Id="/keys/cmk-storage/" + VERSION), RejectReason.BAD_KEY_ID),
    ("Id secret", lambda: with_data(Id=KEY_ID.replace("/keys/", "/secrets/")), RejectReason.BAD_KEY_ID),
    ("Id versionless", lambda: with_data(Id=KEY_ID.rsplit("/", 1)[0]), RejectReason.BAD_KEY_ID),
    ("Id bad version", lambda: with_data(Id=KEY_ID[:-1] + "g"), RejectReason.BAD_KEY_ID),
    ("Id query", lambda: with_data(Id=KEY_ID + "?api-version=7.4"), RejectReason.BAD_KEY_ID),
    ("Id userinfo", lambda: with_data(Id=KEY_ID.replace("https://", "https://u:p@")), RejectReason.BAD_KEY_ID),
    ("Id newline", lambda: with_data(Id=KEY_ID.replace("cmk-", "cmk\n-")), RejectReason.BAD_KEY_ID),
    ("Id other vault", lambda: with_data(Id=KEY_ID.replace("sample-kv", "other-kv")),
     RejectReason.VAULT_NOT_ALLOWED),
    ("Id other host", lambda: with_data(Id=f"https://evil.example.com/keys/cmk-storage/{VERSION}"),
     RejectReason.VAULT_NOT_ALLOWED),
    ("Id other port", lambda: with_data(Id=f"https://127.0.0.1:9443/keys/cmk-storage/{VERSION}"),
     RejectReason.VAULT_NOT_ALLOWED),
    ("Id port on cloud host", lambda: with_data(Id=KEY_ID.replace(".net/", ".net:8443/")),
     RejectReason.VAULT_NOT_ALLOWED),
    # Agreement of the data members with the Id.
    ("VaultName other", lambda: with_data(VaultName="other-kv"), RejectReason.ID_MISMATCH_VAULT_NAME),
    ("VaultName missing", lambda: with_data(VaultName=None), RejectReason.MISSING_FIELD),
    ("ObjectName other", lambda: with_data(ObjectName="other-key"), RejectReason.ID_MISMATCH_OBJECT_NAME),
    ("ObjectName missing", lambda: with_data(ObjectName=None), RejectReason.MISSING_FIELD),
    ("Version other", lambda: with_data(Version=VERSION_2), RejectReason.ID_MISMATCH_VERSION),
    ("Version missing", lambda: with_data(Version=None), RejectReason.MISSING_FIELD),
    ("ObjectType Secret", lambda: with_data(ObjectType="Secret"), RejectReason.OBJECT_TYPE_MISMATCH),
    ("ObjectType missing", lambda: with_data(ObjectType=None), RejectReason.MISSING_FIELD),
    # Topic and subject.
    ("no topic", lambda: key_event(topic=None), RejectReason.MISSING_FIELD),
    ("topic storage", lambda: key_event(topic=TOPIC.replace("Microsoft.KeyVault/vaults/sample-kv",
                                                             "Microsoft.Storage/storageAccounts/sample")),
     RejectReason.BAD_TOPIC),
    ("topic placeholder", lambda: key_event(topic=TOPIC.replace(SUBSCRIPTION, "{subscription-id}")),
     RejectReason.BAD_TOPIC),
    ("topic other vault", lambda: key_event(topic=TOPIC.replace("sample-kv", "other-kv")),
     RejectReason.TOPIC_MISMATCH),
    ("source other vault", lambda: cloud_event(source=TOPIC.replace("sample-kv", "other-kv")),
     RejectReason.TOPIC_MISMATCH),
    ("subject other", lambda: key_event(subject="other-key"), RejectReason.SUBJECT_MISMATCH),
    ("subject number", lambda: key_event(subject=5), RejectReason.WRONG_TYPE),
    # Timestamps.
    ("NBF negative", lambda: with_data(NBF=-1), RejectReason.BAD_TIMESTAMP),
    ("EXP year 10000", lambda: with_data(EXP=253402300800), RejectReason.BAD_TIMESTAMP),
    ("EXP huge", lambda: with_data(EXP=10**30), RejectReason.BAD_TIMESTAMP),
    ("EXP text", lambda: with_data(EXP="next year"), RejectReason.BAD_TIMESTAMP),
    ("EXP negative text", lambda: with_data(EXP="-5"), RejectReason.BAD_TIMESTAMP),
    ("EXP boolean", lambda: with_data(EXP=True), RejectReason.BAD_TIMESTAMP),
    ("EXP object", lambda: with_data(EXP={"seconds": 1}), RejectReason.BAD_TIMESTAMP),
    ("eventTime missing", lambda: key_event(eventTime=None), RejectReason.MISSING_FIELD),
    ("eventTime words", lambda: key_event(eventTime="yesterday"), RejectReason.BAD_EVENT_TIME),
    ("eventTime date only", lambda: key_event(eventTime="2026-11-29"), RejectReason.BAD_EVENT_TIME),
    ("eventTime no zone", lambda: key_event(eventTime="2026-11-29T09:30:00"), RejectReason.BAD_EVENT_TIME),
    ("eventTime month 13", lambda: key_event(eventTime="2026-13-29T09:30:00Z"), RejectReason.BAD_EVENT_TIME),
    ("eventTime offset 25h", lambda: key_event(eventTime="2026-11-29T09:30:00+25:00"),
     RejectReason.BAD_EVENT_TIME),
    ("eventTime year 0", lambda: key_event(eventTime="0000-01-01T00:00:00Z"), RejectReason.BAD_EVENT_TIME),
    ("eventTime number", lambda: key_event(eventTime=1764408600), RejectReason.WRONG_TYPE),
    ("time words", lambda: cloud_event(time="soon"), RejectReason.BAD_EVENT_TIME),
    # Members that collide after normalisation.
    ("ObjectName twice", lambda: with_data(**{"objectName ": "other-key"}), RejectReason.DUPLICATE_FIELD),
    ("Version twice", lambda: with_data(**{" version": VERSION_2}), RejectReason.DUPLICATE_FIELD),
    ("id twice", lambda: key_event(ID="another-id"), RejectReason.DUPLICATE_FIELD),
    ("topic twice", lambda: key_event(Topic=TOPIC.replace("sample-kv", "other-kv")), RejectReason.DUPLICATE_FIELD),
]


@pytest.mark.parametrize(
    ("build", "reason"),
    [pytest.param(build, reason, id=name) for name, build, reason in PER_EVENT_DEFECTS],
)
def test_per_event_defects_are_rejected_with_a_specific_reason(build: Mutation, reason: RejectReason) -> None:
    error = rejection(build())
    assert error.reason == reason
    assert isinstance(error.reason, str) and error.reason in set(RejectReason)


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: access_policy_event(Id="https://sample-kv.vault.azure.net/keys/cmk-storage"),
         RejectReason.BAD_VAULT_URL),
        (lambda: access_policy_event(Id="http://sample-kv.vault.azure.net/"), RejectReason.BAD_VAULT_URL),
        (lambda: access_policy_event(Id="https://sample-kv.vault.azure.net/?x=1"), RejectReason.BAD_VAULT_URL),
        (lambda: access_policy_event(Id="https://other-kv.vault.azure.net/"), RejectReason.VAULT_NOT_ALLOWED),
        (lambda: access_policy_event(ObjectType="Key"), RejectReason.OBJECT_TYPE_MISMATCH),
        (lambda: access_policy_event(ObjectName="other-kv"), RejectReason.ID_MISMATCH_OBJECT_NAME),
        (lambda: access_policy_event(VaultName="other-kv"), RejectReason.ID_MISMATCH_VAULT_NAME),
        (lambda: {**access_policy_event(), "subject": "other"}, RejectReason.SUBJECT_MISMATCH),
    ],
)
def test_vault_access_policy_defects(build: Mutation, reason: RejectReason) -> None:
    assert rejection(build()).reason == reason


def test_a_key_event_type_with_a_vault_id_is_a_bad_key_id() -> None:
    event = with_data(Id="https://sample-kv.vault.azure.net/")
    assert rejection(event).reason == RejectReason.BAD_KEY_ID


def test_the_allowlist_is_checked_before_the_other_members() -> None:
    # Everything else is wrong too; the foreign vault is what is reported.
    event = with_data(Id=f"https://evil.example.com/keys/x/{VERSION}", VaultName="evil", ObjectType="Secret")
    event["topic"] = "not a resource id"
    assert rejection(event).reason == RejectReason.VAULT_NOT_ALLOWED


def test_members_that_agree_after_normalisation_are_accepted() -> None:
    event = with_data(**{"objectName ": "cmk-storage", " Version": " " + VERSION + " "})
    (parsed,) = parse_one(event).events
    assert parsed.key is not None and parsed.key.name == "cmk-storage"


def test_json_members_given_twice_must_agree() -> None:
    event = json.dumps([key_event()])
    conflicting = event.replace('"VaultName": "sample-kv"', '"VaultName": "sample-kv", "VaultName": "other-kv"')
    agreeing = event.replace('"VaultName": "sample-kv"', '"VaultName": "sample-kv", "VaultName": "sample-kv"')
    assert [e.reason for e in parse_delivery(conflicting, policy=POLICY).rejected] == [RejectReason.DUPLICATE_FIELD]
    assert len(parse_delivery(agreeing, policy=POLICY).events) == 1


def test_object_name_and_subject_compare_case_insensitively() -> None:
    event = with_data(ObjectName="CMK-Storage")
    event["subject"] = "Cmk-Storage"
    assert parse_one(event).events


def test_a_missing_subject_is_tolerated() -> None:
    assert parse_one(key_event(subject=None)).events
    assert parse_one(key_event(subject="")).events


def test_good_events_pass_beside_rejected_ones_and_rejections_name_their_event() -> None:
    good = key_event()
    bad = with_data(Version=VERSION_2)
    bad["id"] = "bad-one"
    result = parse_delivery(json.dumps([bad, good, 42, {"eventType": "Microsoft.Storage.BlobDeleted"}]), policy=POLICY)
    assert [event.event_id for event in result.events] == [good["id"]]
    assert [(error.reason, error.event_id) for error in result.rejected] == [
        (RejectReason.ID_MISMATCH_VERSION, "bad-one"),
        (RejectReason.WRONG_TYPE, None),
    ]
    assert result.ignored == 1


def test_echoed_values_are_truncated() -> None:
    error = rejection(with_data(Id="https://evil.example.com/keys/" + "k" * 10_000 + "/" + VERSION))
    assert len(error.detail) < 300
    error = rejection(key_event(eventTime="9" * 10_000))
    assert len(error.detail) < 300


def test_parse_event_validates_one_decoded_event() -> None:
    parsed = parse_event(key_event(), policy=POLICY)
    assert isinstance(parsed, KeyEvent)
    with pytest.raises(InvalidEvent) as caught:
        parse_event(with_data(Version=VERSION_2), policy=POLICY)
    assert caught.value.reason == RejectReason.ID_MISMATCH_VERSION
    with pytest.raises(InvalidEvent):
        parse_event([key_event()], policy=POLICY)  # type: ignore[arg-type]


def test_reason_codes_are_stable_snake_case_strings() -> None:
    for reason in RejectReason:
        assert reason.value == reason.name.lower()
    assert {"too_large", "not_json", "wrong_type", "missing_field", "unknown_schema", "bad_key_id",
            "vault_not_allowed", "id_mismatch_vault_name", "id_mismatch_object_name", "id_mismatch_version",
            "topic_mismatch", "bad_timestamp", "bad_topic", "object_type_mismatch"} <= set(RejectReason)


# --- The Functions trigger argument ------------------------------------------------------------------


def functions_event(**changes: Any) -> Any:
    import azure.functions as func

    arguments: dict[str, Any] = {
        "id": "00eccf70-95a7-4e7c-8299-2eb17ee9ad64",
        "data": fixture_json("eventgrid_key_new_version_created.json")[0]["data"],
        "topic": TOPIC,
        "subject": "cmk-storage",
        "event_type": "Microsoft.KeyVault.KeyNewVersionCreated",
        "event_time": datetime(2019, 7, 25, 1, 8, 33, 103673, tzinfo=UTC),
        "data_version": "1",
    }
    arguments.update(changes)
    return func.EventGridEvent(**arguments)


def test_a_real_functions_event_grid_event_is_parsed() -> None:
    parsed = parse_functions_event(functions_event(), policy=POLICY)
    assert parsed is not None
    expected = parse_delivery(fixture_text("eventgrid_key_new_version_created.json"), policy=POLICY).events[0]
    assert parsed == expected


def test_functions_events_of_other_types_are_ignored() -> None:
    assert parse_functions_event(functions_event(event_type="Microsoft.KeyVault.SecretExpired"), policy=POLICY) is None
    validation = functions_event(event_type="Microsoft.EventGrid.SubscriptionValidationEvent", data={})
    assert parse_functions_event(validation, policy=POLICY) is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"topic": TOPIC.replace("sample-kv", "other-kv")}, RejectReason.TOPIC_MISMATCH),
        ({"data": "not an object"}, RejectReason.WRONG_TYPE),
        ({"data": None}, RejectReason.MISSING_FIELD),
        ({"event_time": None}, RejectReason.MISSING_FIELD),
        ({"event_type": None}, RejectReason.MISSING_FIELD),
        ({"id": None}, RejectReason.MISSING_FIELD),
        ({"topic": None}, RejectReason.MISSING_FIELD),
    ],
)
def test_defective_functions_events_raise_invalid_event(changes: dict[str, Any], reason: RejectReason) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_functions_event(functions_event(**changes), policy=POLICY)
    assert caught.value.reason == reason


def test_functions_event_from_a_foreign_vault_is_not_allowed() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_functions_event(functions_event(), policy=VaultPolicy.of(["https://other-kv.vault.azure.net"]))
    assert caught.value.reason == RejectReason.VAULT_NOT_ALLOWED
    assert caught.value.event_id == "00eccf70-95a7-4e7c-8299-2eb17ee9ad64"


def test_a_naive_functions_event_time_is_taken_as_utc() -> None:
    parsed = parse_functions_event(functions_event(event_time=datetime(2026, 11, 29, 9, 30)), policy=POLICY)
    assert parsed is not None and parsed.event_time == datetime(2026, 11, 29, 9, 30, tzinfo=UTC)


def test_a_functions_cloud_event_is_parsed() -> None:
    # With a CloudEvents subscription the worker hands the trigger an azure.functions.CloudEvent.
    import azure.functions as func

    record = fixture_json("cloudevents_key_new_version_created.json")
    event = func.CloudEvent(id=record["id"], source=record["source"], type=record["type"],
                            specversion="1.0", time=None, subject=record["subject"], data=record["data"])
    parsed = parse_functions_event(event, policy=POLICY)
    assert parsed is not None and parsed.schema == "CloudEvents" and parsed.event_time is None


def test_an_object_that_is_no_event_is_rejected() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_functions_event(object(), policy=POLICY)  # type: ignore[arg-type]
    assert caught.value.reason == RejectReason.UNKNOWN_SCHEMA


# --- The fixtures against the published data schemas -------------------------------------------------

DATA_DEFINITIONS = {
    "Microsoft.KeyVault.KeyNewVersionCreated": "KeyVaultKeyNewVersionCreatedEventData",
    "Microsoft.KeyVault.KeyNearExpiry": "KeyVaultKeyNearExpiryEventData",
    "Microsoft.KeyVault.KeyExpired": "KeyVaultKeyExpiredEventData",
    "Microsoft.KeyVault.SecretNewVersionCreated": "KeyVaultSecretNewVersionCreatedEventData",
    "Microsoft.KeyVault.SecretNearExpiry": "KeyVaultSecretNearExpiryEventData",
    "Microsoft.KeyVault.CertificateNearExpiry": "KeyVaultCertificateNearExpiryEventData",
    "Microsoft.KeyVault.VaultAccessPolicyChanged": "KeyVaultVaultAccessPolicyChangedEventData",
}
# The documented defects each fixture carries on purpose (data member -> why the schema refuses it).
KNOWN_SCHEMA_DEFECTS = {
    ("eventgrid_key_new_version_created.json", 0): {"NBF", "EXP"},  # numbers as strings (doc sample)
    ("cloudevents_key_new_version_created.json", 0): {"NBF", "EXP"},
    ("cloudevents_batch.json", 1): {"NBF"},  # null
    ("cloudevents_batch.json", 2): {"NBF", "EXP"},
    ("eventgrid_vault_access_policy_changed.json", 0): {"NBF", "EXP"},  # null: a vault has neither
}


def key_vault_data_objects() -> list[tuple[str, int, str, dict[str, Any]]]:
    found = []
    for path in sorted(EVENTS_DIR.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        for index, event in enumerate(document if isinstance(document, list) else [document]):
            event_type = event.get("eventType") or event.get("type")
            if event_type in DATA_DEFINITIONS:
                found.append((path.name, index, event_type, event["data"]))
    return found


def test_every_key_vault_fixture_is_checked_against_the_schema() -> None:
    checked = {name for name, *_ in key_vault_data_objects()}
    assert checked == {path.name for path in EVENTS_DIR.glob("*.json")} - {"subscription_validation.json"}


@pytest.mark.parametrize(
    ("name", "index", "event_type", "data"),
    key_vault_data_objects(),
    ids=lambda value: value if isinstance(value, str) and value.endswith(".json") else None,
)
def test_fixture_data_matches_the_published_schema_apart_from_documented_defects(
    name: str, index: int, event_type: str, data: dict[str, Any]
) -> None:
    definitions = json.loads(KEY_VAULT_SCHEMA.read_text(encoding="utf-8"))["definitions"]
    schema = definitions[DATA_DEFINITIONS[event_type]]
    declared = {member.lower(): member for member in schema["properties"]}
    # Real payloads spell member names with stray spaces or in camelCase: compare under the schema's names.
    normalised = {declared.get(member.strip().lower(), member): value for member, value in data.items()}
    assert set(declared.values()) <= set(normalised), "every documented member is present"
    failing = {error.path[0] for error in Draft4Validator(schema).iter_errors(normalised)}
    assert failing == KNOWN_SCHEMA_DEFECTS.get((name, index), set())


def test_fixture_envelopes_match_the_published_event_schemas() -> None:
    event_grid = EVENT_GRID_SPECS / "Microsoft.EventGrid/stable/2018-01-01/EventGrid.json"
    definitions = json.loads(event_grid.read_text(encoding="utf-8"))["definitions"]
    for path in sorted(EVENTS_DIR.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        for event in document if isinstance(document, list) else [document]:
            if "eventType" in event:
                errors = list(Draft4Validator(definitions["EventGridEvent"]).iter_errors(event))
            elif "specversion" in event:
                errors = list(Draft4Validator(definitions["CloudEventEvent"]).iter_errors(event))
            else:  # the documentation's CloudEvents dead-letter record has no specversion
                with_version = {**event, "specversion": "1.0"}
                errors = list(Draft4Validator(definitions["CloudEventEvent"]).iter_errors(with_version))
            assert errors == [], f"{path.name}: {errors}"
            if event.get("eventType") == "Microsoft.EventGrid.SubscriptionValidationEvent":
                validation = Draft4Validator(definitions["SubscriptionValidationEventData"])
                assert list(validation.iter_errors(event["data"])) == []


def test_fixtures_are_not_modified_by_parsing() -> None:
    document = fixture_json("cloudevents_batch.json")
    before = copy.deepcopy(document)
    for event in document:
        parse_event(event, policy=POLICY)
    assert document == before
