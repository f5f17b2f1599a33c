"""controller.events: what an operator or a log reader reads from a rejection, its detail and its event id.

The reason code says what kind of defect; the detail names the member and the offending value, and the
event id ties the rejection to the delivery Event Grid will retry or dead-letter. A rejection found
before the event id was read and checked carries none.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from controller.errors import InvalidEvent
from controller.events import RejectReason, parse_delivery, parse_event
from tests.unit.test_events import (
    KEY_ID,
    POLICY,
    TOPIC,
    VERSION,
    access_policy_event,
    cloud_event,
    key_event,
    rejection,
    with_data,
)

pytestmark = pytest.mark.unit

EVENT_ID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
OTHER_VERSION = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
NON_ASCII_KEY_ID = KEY_ID.replace("cmk", "cmk\u00e9")

Build = Callable[[], object]

# name, event, reason, detail, event id (None: rejected before the id was read)
DETAILS: list[tuple[str, Build, RejectReason, str, str | None]] = [
    ("not an object", lambda: "Microsoft.KeyVault.KeyNewVersionCreated", RejectReason.WRONG_TYPE,
     "an event is a JSON object, not a string", None),
    ("no schema", lambda: {"id": "1", "data": {}}, RejectReason.UNKNOWN_SCHEMA,
     "the event is neither Event Grid schema (eventType) nor CloudEvents 1.0 (specversion, type, source)", "1"),
    ("no schema, bad id", lambda: {"id": "a\x00", "data": {}}, RejectReason.UNKNOWN_SCHEMA,
     "the event is neither Event Grid schema (eventType) nor CloudEvents 1.0 (specversion, type, source)", None),
    ("both schemas", lambda: key_event(specversion="1.0"), RejectReason.UNKNOWN_SCHEMA,
     "the event mixes Event Grid and CloudEvents members", EVENT_ID),
    ("cloud events 0.3", lambda: cloud_event(specversion=" 0.3"), RejectReason.UNSUPPORTED_SPEC_VERSION,
     "CloudEvents specversion ' 0.3' is not 1.0", EVENT_ID),
    ("specversion number", lambda: cloud_event(specversion=1.0), RejectReason.WRONG_TYPE,
     "specversion is a string, not a number", EVENT_ID),
    ("specversion twice", lambda: cloud_event(SpecVersion="0.3"), RejectReason.DUPLICATE_FIELD,
     "specversion is given twice with different values", EVENT_ID),
    ("event type number", lambda: key_event(eventType=7), RejectReason.WRONG_TYPE,
     "eventType is a string, not a number", EVENT_ID),
    ("event type empty", lambda: key_event(eventType=" "), RejectReason.MISSING_FIELD,
     "eventType is missing or empty", EVENT_ID),
    ("cloud event type missing", lambda: cloud_event(type=None), RejectReason.MISSING_FIELD,
     "type is missing or empty", EVENT_ID),
    ("no id", lambda: key_event(id=None), RejectReason.MISSING_FIELD, "id is missing or empty", None),
    ("id number", lambda: key_event(id=17), RejectReason.WRONG_TYPE, "id is a string, not a number", None),
    ("id too long", lambda: key_event(id="a" * 257), RejectReason.BAD_EVENT_ID,
     f"id '{'a' * 100}...' is over 256 characters or has control characters", None),
    ("id control character", lambda: key_event(id="ab\nc\x00"), RejectReason.BAD_EVENT_ID,
     "id 'ab?c?' is over 256 characters or has control characters", None),
    ("id twice", lambda: key_event(ID="another-id"), RejectReason.DUPLICATE_FIELD,
     "id is given twice with different values", None),
    ("no data", lambda: key_event(data=None), RejectReason.MISSING_FIELD, "data is missing", EVENT_ID),
    ("data array", lambda: key_event(data=[]), RejectReason.WRONG_TYPE, "data is an object, not an array", EVENT_ID),
    ("data_base64", lambda: cloud_event(data=None, data_base64="e30="), RejectReason.MISSING_FIELD,
     "data is missing: Key Vault events carry JSON data, not data_base64", EVENT_ID),
    ("data twice", lambda: key_event(Data={}), RejectReason.DUPLICATE_FIELD,
     "data is given twice with different values", EVENT_ID),
    ("dead-letter reason number", lambda: key_event(deadLetterReason=3), RejectReason.WRONG_TYPE,
     "deadLetterReason is a string, not a number", EVENT_ID),
    ("dead-letter reason twice", lambda: key_event(deadLetterReason="a", DeadLetterReason="b"),
     RejectReason.DUPLICATE_FIELD, "deadletterreason is given twice with different values", EVENT_ID),
    ("dead-letter attempts text", lambda: key_event(deadLetterReason="x", deliveryAttempts="30"),
     RejectReason.WRONG_TYPE, "deliveryAttempts is an integer, not a string", EVENT_ID),
    ("dead-letter attempts boolean", lambda: key_event(deadLetterReason="x", deliveryAttempts=True),
     RejectReason.WRONG_TYPE, "deliveryAttempts is an integer, not a boolean", EVENT_ID),
    ("dead-letter attempts twice", lambda: key_event(deadLetterReason="x", deliveryAttempts=1, DeliveryAttempts=2),
     RejectReason.DUPLICATE_FIELD, "deliveryattempts is given twice with different values", EVENT_ID),
    ("no Id", lambda: with_data(Id=None), RejectReason.MISSING_FIELD, "data.Id is missing or empty", EVENT_ID),
    ("Id number", lambda: with_data(Id=5), RejectReason.WRONG_TYPE, "data.Id is a string, not a number", EVENT_ID),
    ("Id http", lambda: with_data(Id=KEY_ID.replace("https", "http")), RejectReason.BAD_KEY_ID,
     f"'{KEY_ID.replace('https', 'http')}': vault origin 'http://sample-kv.vault.azure.net' must use https",
     EVENT_ID),
    ("Id relative", lambda: with_data(Id="/keys/cmk-storage/" + VERSION), RejectReason.BAD_KEY_ID,
     f"'/keys/cmk-storage/{VERSION}' is not an absolute URL", EVENT_ID),
    ("Id without scheme", lambda: with_data(Id="//sample-kv.vault.azure.net/keys/k/" + VERSION),
     RejectReason.BAD_KEY_ID, f"'//sample-kv.vault.azure.net/keys/k/{VERSION}' is not an absolute URL", EVENT_ID),
    ("Id without host", lambda: with_data(Id="https:/keys/k/" + VERSION), RejectReason.BAD_KEY_ID,
     f"'https:/keys/k/{VERSION}' is not an absolute URL", EVENT_ID),
    ("Id bad port", lambda: with_data(Id="https://sample-kv.vault.azure.net:99999/keys/k/" + VERSION),
     RejectReason.BAD_KEY_ID, f"'https://sample-kv.vault.azure.net:99999/keys/k/{VERSION}': vault origin "
     "'https://sample-kv.vault.azure.net:99999' is not a valid URL", EVENT_ID),
    ("Id open bracket", lambda: with_data(Id="https://[sample-kv/keys/k/" + VERSION), RejectReason.BAD_KEY_ID,
     f"'https://[sample-kv/keys/k/{VERSION}' is not a URL", EVENT_ID),
    ("Id non-ASCII", lambda: with_data(Id=NON_ASCII_KEY_ID), RejectReason.BAD_KEY_ID,
     f"'{NON_ASCII_KEY_ID}' contains whitespace, control or non-ASCII characters", EVENT_ID),
    ("Id space", lambda: with_data(Id=KEY_ID.replace("cmk-", "cmk -")), RejectReason.BAD_KEY_ID,
     f"'{KEY_ID.replace('cmk-', 'cmk -')}' contains whitespace, control or non-ASCII characters", EVENT_ID),
    ("Id newline", lambda: with_data(Id=KEY_ID.replace("cmk-", "cmk\n-")), RejectReason.BAD_KEY_ID,
     f"'{KEY_ID.replace('cmk-', 'cmk?-')}' contains whitespace, control or non-ASCII characters", EVENT_ID),
    ("Id versionless", lambda: with_data(Id=KEY_ID.rsplit("/", 1)[0]), RejectReason.BAD_KEY_ID,
     "data.Id 'https://sample-kv.vault.azure.net/keys/cmk-storage' names no key version", EVENT_ID),
    ("Id bad version", lambda: with_data(Id=KEY_ID[:-1] + "g"), RejectReason.BAD_KEY_ID,
     f"data.Id: '{VERSION[:-1]}g' is not a valid key version", EVENT_ID),
    ("Id other vault", lambda: with_data(Id=KEY_ID.replace("sample-kv", "other-kv")), RejectReason.VAULT_NOT_ALLOWED,
     "vault 'https://other-kv.vault.azure.net' is not in the allowlist", EVENT_ID),
    ("VaultName other", lambda: with_data(VaultName="other-kv"), RejectReason.ID_MISMATCH_VAULT_NAME,
     "data.VaultName 'other-kv' is not the vault of data.Id (sample-kv)", EVENT_ID),
    ("ObjectName other", lambda: with_data(ObjectName="other-key"), RejectReason.ID_MISMATCH_OBJECT_NAME,
     "data.ObjectName 'other-key' is not the key of data.Id (cmk-storage)", EVENT_ID),
    ("Version other", lambda: with_data(Version=OTHER_VERSION), RejectReason.ID_MISMATCH_VERSION,
     f"data.Version '{OTHER_VERSION}' is not the version of data.Id ({VERSION})", EVENT_ID),
    ("Version upper case", lambda: with_data(Version=OTHER_VERSION.upper()), RejectReason.ID_MISMATCH_VERSION,
     f"data.Version '{OTHER_VERSION.upper()}' is not the version of data.Id ({VERSION})", EVENT_ID),
    ("ObjectType Secret", lambda: with_data(ObjectType="Secret"), RejectReason.OBJECT_TYPE_MISMATCH,
     "data.ObjectType of Microsoft.KeyVault.KeyNewVersionCreated is Key, not 'Secret'", EVENT_ID),
    ("no topic", lambda: key_event(topic=None), RejectReason.MISSING_FIELD, "topic is missing or empty", EVENT_ID),
    ("no source", lambda: cloud_event(source=None), RejectReason.MISSING_FIELD,
     "source is missing or empty", EVENT_ID),
    ("topic placeholder", lambda: key_event(topic="/subscriptions/x"), RejectReason.BAD_TOPIC,
     "topic '/subscriptions/x' is not a Key Vault resource id", EVENT_ID),
    ("topic other vault", lambda: key_event(topic=TOPIC.replace("sample-kv", "other-kv")),
     RejectReason.TOPIC_MISMATCH, "topic names vault 'other-kv', data.VaultName 'sample-kv'", EVENT_ID),
    ("topic of a managed HSM", lambda: key_event(topic=TOPIC.replace("vaults", "managedHSMs")),
     RejectReason.TOPIC_MISMATCH,
     "topic is a managedHSMs resource but data.Id is on sample-kv.vault.azure.net", EVENT_ID),
    ("subject other", lambda: key_event(subject="other-key"), RejectReason.SUBJECT_MISMATCH,
     "subject 'other-key' is not the object 'cmk-storage'", EVENT_ID),
    ("subject number", lambda: key_event(subject=5), RejectReason.WRONG_TYPE,
     "subject is a string, not a number", EVENT_ID),
    ("topic twice", lambda: key_event(Topic="/subscriptions/x"), RejectReason.DUPLICATE_FIELD,
     "topic is given twice with different values", EVENT_ID),
    ("VaultName of 100 characters", lambda: with_data(VaultName="v" * 100), RejectReason.ID_MISMATCH_VAULT_NAME,
     f"data.VaultName '{'v' * 100}' is not the vault of data.Id (sample-kv)", EVENT_ID),
    ("subject twice", lambda: key_event(Subject="other"), RejectReason.DUPLICATE_FIELD,
     "subject is given twice with different values", EVENT_ID),
    ("eventTime missing", lambda: key_event(eventTime=None), RejectReason.MISSING_FIELD,
     "eventTime is missing", EVENT_ID),
    ("eventTime twice", lambda: key_event(EventTime="2026-11-29T09:30:01Z"), RejectReason.DUPLICATE_FIELD,
     "eventTime is given twice with different values", EVENT_ID),
    ("eventTime words", lambda: key_event(eventTime="yesterday"), RejectReason.BAD_EVENT_TIME,
     "eventTime 'yesterday' is not an RFC 3339 date-time", EVENT_ID),
    ("eventTime month 13", lambda: key_event(eventTime="2026-13-29T09:30:00Z"), RejectReason.BAD_EVENT_TIME,
     "eventTime '2026-13-29T09:30:00Z' is not a valid date-time", EVENT_ID),
    ("eventTime number", lambda: key_event(eventTime=1764408600), RejectReason.WRONG_TYPE,
     "eventTime is a string, not a number", EVENT_ID),
    ("time words", lambda: cloud_event(time="soon"), RejectReason.BAD_EVENT_TIME,
     "time 'soon' is not an RFC 3339 date-time", EVENT_ID),
    ("NBF negative", lambda: with_data(NBF=-1), RejectReason.BAD_TIMESTAMP,
     "data.NBF -1 is outside 1970-9999", EVENT_ID),
    ("EXP year 10000", lambda: with_data(EXP=253402300800), RejectReason.BAD_TIMESTAMP,
     "data.EXP 253402300800 is outside 1970-9999", EVENT_ID),
    ("EXP year 10000 as text", lambda: with_data(EXP="253402300800"), RejectReason.BAD_TIMESTAMP,
     "data.EXP '253402300800' is outside 1970-9999", EVENT_ID),
    ("EXP text", lambda: with_data(EXP="next year"), RejectReason.BAD_TIMESTAMP,
     "data.EXP 'next year' is not epoch seconds", EVENT_ID),
    ("EXP boolean", lambda: with_data(EXP=True), RejectReason.BAD_TIMESTAMP,
     "data.EXP is epoch seconds, not a boolean", EVENT_ID),
    ("EXP object", lambda: with_data(EXP={"seconds": 1}), RejectReason.BAD_TIMESTAMP,
     "data.EXP is epoch seconds, not an object", EVENT_ID),
    ("NBF twice", lambda: with_data(nbf=1), RejectReason.DUPLICATE_FIELD,
     "data.NBF is given twice with different values", EVENT_ID),
    ("ObjectName twice", lambda: with_data(**{"objectName ": "other-key"}), RejectReason.DUPLICATE_FIELD,
     "data.ObjectName is given twice with different values", EVENT_ID),
    ("VaultName twice", lambda: with_data(vaultname="other-kv"), RejectReason.DUPLICATE_FIELD,
     "data.VaultName is given twice with different values", EVENT_ID),
    ("ObjectType twice", lambda: with_data(objectType="Vault"), RejectReason.DUPLICATE_FIELD,
     "data.ObjectType is given twice with different values", EVENT_ID),
    ("Version twice", lambda: with_data(version=OTHER_VERSION), RejectReason.DUPLICATE_FIELD,
     "data.Version is given twice with different values", EVENT_ID),
    ("Id twice", lambda: with_data(ID=KEY_ID + "0"), RejectReason.DUPLICATE_FIELD,
     "data.Id is given twice with different values", EVENT_ID),
]


@pytest.mark.parametrize(
    ("build", "reason", "detail", "event_id"),
    [pytest.param(build, reason, detail, event_id, id=name) for name, build, reason, detail, event_id in DETAILS],
)
def test_a_rejection_names_the_member_the_value_and_the_event(
    build: Build, reason: RejectReason, detail: str, event_id: str | None
) -> None:
    error = rejection(build())
    assert (error.reason, error.detail, error.event_id) == (reason, detail, event_id)
    assert str(error) == f"{reason}: {detail}"


ACCESS_POLICY_DETAILS: list[tuple[str, Build, RejectReason, str]] = [
    ("Id with a path", lambda: access_policy_event(Id="https://sample-kv.vault.azure.net/keys/cmk-storage"),
     RejectReason.BAD_VAULT_URL,
     "data.Id 'https://sample-kv.vault.azure.net/keys/cmk-storage' is not a vault URL: vault origin "
     "'https://sample-kv.vault.azure.net/keys/cmk-storage' must have no path, query or fragme..."),
    ("Id http", lambda: access_policy_event(Id="http://sample-kv.vault.azure.net/"), RejectReason.BAD_VAULT_URL,
     "'http://sample-kv.vault.azure.net/': vault origin 'http://sample-kv.vault.azure.net' must use https"),
    ("Id relative", lambda: access_policy_event(Id="sample-kv.vault.azure.net"), RejectReason.BAD_VAULT_URL,
     "'sample-kv.vault.azure.net' is not an absolute URL"),
    ("Id other vault", lambda: access_policy_event(Id="https://other-kv.vault.azure.net/"),
     RejectReason.VAULT_NOT_ALLOWED, "vault 'https://other-kv.vault.azure.net' is not in the allowlist"),
    ("ObjectType Key", lambda: access_policy_event(ObjectType="Key"), RejectReason.OBJECT_TYPE_MISMATCH,
     "data.ObjectType of Microsoft.KeyVault.VaultAccessPolicyChanged is Vault, not 'Key'"),
    ("ObjectName other", lambda: access_policy_event(ObjectName="other-kv"), RejectReason.ID_MISMATCH_OBJECT_NAME,
     "data.ObjectName 'other-kv' of a vault event is not the vault 'sample-kv'"),
    ("ObjectName number", lambda: access_policy_event(ObjectName=3), RejectReason.WRONG_TYPE,
     "data.ObjectName is a string, not a number"),
    ("ObjectName twice", lambda: access_policy_event(objectName="other-kv"), RejectReason.DUPLICATE_FIELD,
     "data.ObjectName is given twice with different values"),
    ("VaultName other", lambda: access_policy_event(VaultName="other-kv"), RejectReason.ID_MISMATCH_VAULT_NAME,
     "data.VaultName 'other-kv' is not the vault of data.Id (sample-kv)"),
    ("subject other", lambda: {**access_policy_event(), "subject": "other"}, RejectReason.SUBJECT_MISMATCH,
     "subject 'other' is not the object 'sample-kv'"),
]


@pytest.mark.parametrize(
    ("build", "reason", "detail"),
    [pytest.param(build, reason, detail, id=name) for name, build, reason, detail in ACCESS_POLICY_DETAILS],
)
def test_an_access_policy_rejection_names_the_member_and_the_event(
    build: Build, reason: RejectReason, detail: str
) -> None:
    error = rejection(build())
    assert (error.reason, error.detail, error.event_id) == (reason, detail, EVENT_ID)


WHOLE_DELIVERY_DETAILS: list[tuple[str, bytes | str, RejectReason, str]] = [
    ("too large text", " " * (1024 * 1024 + 1), RejectReason.TOO_LARGE, "the delivery is over 1048576 bytes"),
    ("too large bytes", b" " * (1024 * 1024 + 1), RejectReason.TOO_LARGE, "the delivery is over 1048576 bytes"),
    ("surrogates", '["\ud800"]', RejectReason.NOT_UTF8, "the delivery holds unpaired surrogates"),
    ("not UTF-8", b'["\xc3\x28"]', RejectReason.NOT_UTF8, "the delivery is not UTF-8 (byte 2)"),
    ("empty", b" \n", RejectReason.NOT_JSON, "the delivery is empty"),
    ("NaN", b"[NaN]", RejectReason.NOT_JSON, "the delivery is not JSON: NaN is not JSON"),
    ("truncated", b"[1,", RejectReason.NOT_JSON,
     "the delivery is not JSON: Expecting value: line 1 column 4 (char 3)"),
    ("number", b"5", RejectReason.WRONG_TYPE, "a delivery is a JSON object or array, not a number"),
    ("null", b"null", RejectReason.WRONG_TYPE, "a delivery is a JSON object or array, not null"),
    ("text", b'"x"', RejectReason.WRONG_TYPE, "a delivery is a JSON object or array, not a string"),
    ("empty array", b"[]", RejectReason.EMPTY_BATCH, "the delivery is an empty array"),
    ("too deep", b"[" * 33 + b"]" * 33, RejectReason.TOO_DEEP, "the delivery nests deeper than 32 levels"),
    ("too deep for the decoder", b"[" * 200_000 + b"]" * 200_000, RejectReason.TOO_DEEP,
     "the delivery is nested too deeply"),
    ("too many events", ("[" + ",".join(["{}"] * 5001) + "]").encode(), RejectReason.TOO_MANY_EVENTS,
     "the delivery holds 5001 events; at most 5000 are accepted"),
]


@pytest.mark.parametrize(
    ("body", "reason", "detail"),
    [pytest.param(body, reason, detail, id=name) for name, body, reason, detail in WHOLE_DELIVERY_DETAILS],
)
def test_a_rejected_delivery_says_why(body: bytes | str, reason: RejectReason, detail: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_delivery(body, policy=POLICY)
    assert (caught.value.reason, caught.value.detail, caught.value.event_id) == (reason, detail, None)


def test_objects_nest_at_most_32_levels_deep() -> None:
    # The outer object is level 1; 31 nested objects put the innermost value at level 32.
    result = parse_delivery(b'{"a":' * 31 + b"1" + b"}" * 31, policy=POLICY)
    assert [error.reason for error in result.rejected] == [RejectReason.UNKNOWN_SCHEMA]
    with pytest.raises(InvalidEvent) as caught:
        parse_delivery(b'{"a":' * 32 + b"1" + b"}" * 32, policy=POLICY)
    assert caught.value.reason == RejectReason.TOO_DEEP


def test_an_event_id_of_the_longest_accepted_length_is_kept() -> None:
    (event,) = parse_delivery(json.dumps([key_event(id="i" * 256)]), policy=POLICY).events
    assert event.event_id == "i" * 256


def test_the_deepest_accepted_nesting_is_read() -> None:
    # 32 levels: the batch array, 30 nested arrays and the innermost one.
    result = parse_delivery(b"[" * 32 + b"]" * 32, policy=POLICY)
    assert [error.reason for error in result.rejected] == [RejectReason.WRONG_TYPE]


def test_a_delivery_of_the_largest_batch_is_read() -> None:
    body = json.dumps([{"eventType": "Contoso.Custom.Event"}] * 5000)
    assert parse_delivery(body, policy=POLICY).ignored == 5000


def test_a_validation_event_in_a_batch_is_rejected_under_its_own_id() -> None:
    validation = {"id": "handshake-1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                  "data": {"validationCode": "abc"}}
    result = parse_delivery(json.dumps([validation, key_event()]), policy=POLICY)
    ((reason, detail, event_id),) = [(error.reason, error.detail, error.event_id) for error in result.rejected]
    assert (reason, detail, event_id) == (
        RejectReason.UNEXPECTED_VALIDATION,
        "a subscription validation event arrives alone, not in a batch",
        "handshake-1",
    )


def test_a_decoded_event_holding_a_python_value_names_its_type() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(with_data(Id=b"https://sample-kv.vault.azure.net/keys/k/1"), policy=POLICY)
    assert (caught.value.reason, caught.value.detail) == (RejectReason.WRONG_TYPE, "data.Id is a string, not bytes")
