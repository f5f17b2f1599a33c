"""Strict intake of Key Vault events: Event Grid schema, CloudEvents 1.0 and dead-letter records.

Everything that reaches the controller from Event Grid passes through here and leaves as a validated
``KeyEvent``, a ``SubscriptionValidation``, an ignored non-key event, or an ``InvalidEvent`` carrying
a stable ``RejectReason``. No other exception escapes, whatever the input.

Trust order: the vault origin is taken from ``data.Id`` and checked against the allowlist before any
other field is believed; then ``VaultName``, ``ObjectName``, ``Version``, ``ObjectType``, the topic
(CloudEvents: source) and the subject must all agree with it.

Real payloads differ from the documentation (member names with stray spaces, ``NBF``/``EXP`` as
strings, camelCase names, seven-digit fractions of a second), so member names are compared after
stripping and lower-casing, string values are stripped, and numeric strings are accepted as epoch
seconds. Two members that collide after that normalisation, or a JSON member given twice, must agree
or the event is rejected: an ambiguous event is never guessed at.

Three entry points:

* ``parse_delivery(body, policy=...)``: a raw HTTP body (one event, a batch, a dead-letter blob).
* ``parse_event(obj, policy=...)``: one decoded event object.
* ``parse_functions_event(event, policy=...)``: the Functions Event Grid trigger's argument.

``policy`` is the vault allowlist (Settings.vault_policy).
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from controller.errors import InvalidEvent, InvalidKeyId, InvalidResourceId
from controller.model import (
    KeyEvent,
    KeyEventKind,
    KeyRef,
    VaultOrigin,
    VaultResourceId,
    normalise_origin,
    parse_vault_resource_id,
)
from controller.vault_policy import VaultPolicy

#: Largest delivery accepted. Event Grid delivers at most 1 MB per batch (its preferred batch size
#: tops out at 1,024 KB), so anything larger is not from Event Grid.
MAX_DELIVERY_BYTES: Final = 1024 * 1024
#: Event Grid's largest batch (max events per batch: 1-5,000).
MAX_EVENTS_PER_DELIVERY: Final = 5000
#: Deepest JSON nesting accepted. Key Vault events nest four levels (batch, event, data, value); the
#: margin is for other event types, which are ignored but still decoded.
MAX_JSON_DEPTH: Final = 32
#: Longest event id accepted (Event Grid uses GUIDs; CloudEvents ids are free-form strings).
MAX_EVENT_ID_CHARS: Final = 256
_MAX_VALIDATION_CODE_CHARS: Final = 256
_MAX_TIME_CHARS: Final = 64
_ECHO_CHARS: Final = 100
#: 9999-12-31T23:59:59Z: the last second a datetime can hold.
_MAX_EPOCH_SECONDS: Final = 253_402_300_799

EVENT_GRID: Final = "EventGrid"
CLOUD_EVENTS: Final = "CloudEvents"
DEAD_LETTER: Final = "DeadLetter"
SUBSCRIPTION_VALIDATION_EVENT: Final = "Microsoft.EventGrid.SubscriptionValidationEvent"


class RejectReason(enum.StrEnum):
    """Why a delivery or an event was rejected: a closed set of stable codes (InvalidEvent.reason)."""

    # The whole delivery.
    TOO_LARGE = "too_large"  # over MAX_DELIVERY_BYTES
    NOT_UTF8 = "not_utf8"  # the body is not UTF-8
    NOT_JSON = "not_json"  # not one JSON text (NaN and Infinity included)
    TOO_DEEP = "too_deep"  # nested deeper than MAX_JSON_DEPTH
    EMPTY_BATCH = "empty_batch"  # []
    TOO_MANY_EVENTS = "too_many_events"  # more than MAX_EVENTS_PER_DELIVERY
    # The shape of one event (WRONG_TYPE also for a delivery that is neither an object nor an array).
    WRONG_TYPE = "wrong_type"  # a value of the wrong JSON type
    MISSING_FIELD = "missing_field"  # a required member is absent, null or empty
    DUPLICATE_FIELD = "duplicate_field"  # a member given twice (names normalised), values differing
    UNKNOWN_SCHEMA = "unknown_schema"  # neither Event Grid nor CloudEvents
    UNSUPPORTED_SPEC_VERSION = "unsupported_spec_version"  # CloudEvents other than 1.0
    BAD_EVENT_ID = "bad_event_id"  # too long, or with control characters
    BAD_EVENT_TIME = "bad_event_time"  # eventTime / time is not an RFC 3339 date-time
    BAD_VALIDATION = "bad_validation"  # a validation code or URL that cannot be right
    UNEXPECTED_VALIDATION = "unexpected_validation"  # a validation event mixed with others
    # The content of one Key Vault event.
    BAD_KEY_ID = "bad_key_id"  # data.Id is not a versioned https key identifier
    BAD_VAULT_URL = "bad_vault_url"  # data.Id of VaultAccessPolicyChanged is not a vault URL
    VAULT_NOT_ALLOWED = "vault_not_allowed"  # data.Id names a vault outside the allowlist
    ID_MISMATCH_VAULT_NAME = "id_mismatch_vault_name"  # VaultName disagrees with the Id's host
    ID_MISMATCH_OBJECT_NAME = "id_mismatch_object_name"  # ObjectName disagrees with the Id
    ID_MISMATCH_VERSION = "id_mismatch_version"  # Version disagrees with the Id
    OBJECT_TYPE_MISMATCH = "object_type_mismatch"  # ObjectType is not Key (Vault for access policies)
    BAD_TOPIC = "bad_topic"  # topic / source is not a Key Vault resource id
    TOPIC_MISMATCH = "topic_mismatch"  # topic / source names another vault
    SUBJECT_MISMATCH = "subject_mismatch"  # subject names another object
    BAD_TIMESTAMP = "bad_timestamp"  # NBF / EXP is not epoch seconds within 1970-9999
    # The content of one Azure Resource Manager resource event (controller/resource_events.py).
    BAD_SUBJECT = "bad_subject"  # subject is not an ARM resource id of the topic's subscription
    BAD_OPERATION = "bad_operation"  # data.operationName is not <provider>/<type>/<write|delete|action>
    OPERATION_MISMATCH = "operation_mismatch"  # operationName names another resource type or event kind
    NOT_SUCCEEDED = "not_succeeded"  # data.status of a ...Success event is not Succeeded


@dataclass(frozen=True, slots=True)
class SubscriptionValidation:
    """An Event Grid subscription validation request: answer ``{"validationResponse": validation_code}``.

    ``validation_url`` carries a token; it is kept out of repr() so it does not end up in logs.
    """

    validation_code: str
    validation_url: str | None = field(repr=False)
    event_id: str


@dataclass(slots=True)
class IntakeResult:
    """What one delivery held: accepted key events, ignored non-key events, rejected events and, for
    a handshake, the subscription validation request."""

    events: list[KeyEvent] = field(default_factory=list)
    ignored: int = 0
    rejected: list[InvalidEvent] = field(default_factory=list)
    validation: SubscriptionValidation | None = None
    ignored_types: list[str] = field(default_factory=list)


class EventGridEventLike(Protocol):
    """The attributes of azure.functions.EventGridEvent that the intake reads (no azure import here)."""

    @property
    def id(self) -> str: ...

    @property
    def topic(self) -> str: ...

    @property
    def subject(self) -> str: ...

    @property
    def event_type(self) -> str: ...

    @property
    def event_time(self) -> datetime | None: ...

    @property
    def data_version(self) -> str: ...

    def get_json(self) -> Any: ...


class CloudEventLike(Protocol):
    """The attributes of azure.functions.CloudEvent, which the Event Grid trigger passes instead of an
    EventGridEvent when the subscription delivers CloudEvents 1.0."""

    @property
    def id(self) -> str: ...

    @property
    def source(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def specversion(self) -> str: ...

    @property
    def time(self) -> datetime | None: ...

    @property
    def subject(self) -> str | None: ...

    def get_json(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class _Ignored:
    event_type: str


_KEY_EVENT_TYPES: Final[Mapping[str, tuple[str, KeyEventKind]]] = {
    name.lower(): (name, kind)
    for name, kind in (
        ("Microsoft.KeyVault.KeyNewVersionCreated", KeyEventKind.NEW_VERSION),
        ("Microsoft.KeyVault.KeyNearExpiry", KeyEventKind.NEAR_EXPIRY),
        ("Microsoft.KeyVault.KeyExpired", KeyEventKind.EXPIRED),
        ("Microsoft.KeyVault.VaultAccessPolicyChanged", KeyEventKind.ACCESS_POLICY_CHANGED),
    )
}

# RFC 3339 date-time. Event Grid writes seven fractional digits (100 ns ticks); datetime keeps six.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)
_EPOCH_TEXT = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")
_UTF8_BOM: Final = b"\xef\xbb\xbf"


class _Conflict:
    """Stands for a member given twice with different values."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<conflicting values>"


_CONFLICT: Final = _Conflict()


# --- Entry points --------------------------------------------------------------------------------


def parse_delivery(body: bytes | str, *, policy: VaultPolicy) -> IntakeResult:
    """Parse a raw delivery: an Event Grid POST, a CloudEvents structured event or batch, a dead-letter
    record, or the content of a dead-letter blob (a JSON array of records).

    Defects of the whole delivery raise InvalidEvent; a defective event lands in ``rejected`` and the
    other events of the batch still pass. A subscription validation event is accepted only alone.
    """
    document = _decode(body)
    if isinstance(document, dict):
        items: list[object] = [document]
    elif isinstance(document, list):
        if not document:
            raise InvalidEvent(RejectReason.EMPTY_BATCH, "the delivery is an empty array")
        if len(document) > MAX_EVENTS_PER_DELIVERY:
            raise InvalidEvent(
                RejectReason.TOO_MANY_EVENTS,
                f"the delivery holds {len(document)} events; at most {MAX_EVENTS_PER_DELIVERY} are accepted",
            )
        items = document
    else:
        raise InvalidEvent(
            RejectReason.WRONG_TYPE, f"a delivery is a JSON object or array, not {_json_type(document)}"
        )
    result = IntakeResult()
    for item in items:
        try:
            outcome = _parse_one(item, policy)
        except InvalidEvent as err:
            result.rejected.append(err)
            continue
        if isinstance(outcome, KeyEvent):
            result.events.append(outcome)
        elif isinstance(outcome, SubscriptionValidation):
            if len(items) == 1:
                result.validation = outcome
            else:
                result.rejected.append(
                    InvalidEvent(
                        RejectReason.UNEXPECTED_VALIDATION,
                        "a subscription validation event arrives alone, not in a batch",
                        event_id=outcome.event_id,
                    )
                )
        else:
            result.ignored += 1
            result.ignored_types.append(outcome.event_type)
    return result


def parse_event(
    obj: Mapping[str, object], *, policy: VaultPolicy
) -> KeyEvent | SubscriptionValidation | None:
    """Validate one decoded event (Event Grid schema, CloudEvents 1.0 or a dead-letter record of either).

    Returns the KeyEvent, the SubscriptionValidation for a handshake event (Event Grid schema only),
    or None for an event type the controller ignores. Raises InvalidEvent for anything else.
    """
    outcome = _parse_one(obj, policy)
    return None if isinstance(outcome, _Ignored) else outcome


def parse_functions_event(
    event: EventGridEventLike | CloudEventLike, *, policy: VaultPolicy
) -> KeyEvent | None:
    """Validate the argument of a Functions Event Grid trigger.

    That is an azure.functions.EventGridEvent, or an azure.functions.CloudEvent when the subscription
    delivers CloudEvents 1.0 (the worker decides by the payload, not by the annotation). None means
    ignored: not a key event. The Functions host answers the subscription handshake itself, so a
    validation event reaching a trigger is ignored as well.
    """
    if hasattr(event, "event_type"):
        event_type_value = getattr(event, "event_type", None)
        schema, topic_label, time_label = EVENT_GRID, "topic", "eventTime"
        topic, time = getattr(event, "topic", None), getattr(event, "event_time", None)
    elif getattr(event, "specversion", None) is not None:
        schema, topic_label, time_label = CLOUD_EVENTS, "source", "time"
        topic, time = getattr(event, "source", None), getattr(event, "time", None)
        event_type_value = getattr(event, "type", None)
        _check_spec_version({"specversion": getattr(event, "specversion", None)}, None)
    else:
        raise InvalidEvent(
            RejectReason.UNKNOWN_SCHEMA,
            f"a {type(event).__name__} is neither an EventGridEvent nor a CloudEvent (no event type)",
        )
    type_label = "eventType" if schema == EVENT_GRID else "type"
    event_type = _require_text(event_type_value, type_label, event_id=None)
    known = _KEY_EVENT_TYPES.get(event_type.lower())
    if known is None:
        return None
    event_id = _checked_event_id(getattr(event, "id", None))
    get_json = getattr(event, "get_json", None)
    canonical_type, kind = known
    return _key_event(
        kind,
        canonical_type,
        event_id,
        schema=schema,
        topic=topic,
        topic_label=topic_label,
        subject=getattr(event, "subject", None),
        time=time,
        time_label=time_label,
        data=get_json() if callable(get_json) else None,
        policy=policy,
    )


# --- Decoding ------------------------------------------------------------------------------------


def _decode(body: object) -> object:
    if isinstance(body, str):
        if len(body) > MAX_DELIVERY_BYTES:
            raise InvalidEvent(RejectReason.TOO_LARGE, f"the delivery is over {MAX_DELIVERY_BYTES} bytes")
        try:
            raw = body.encode("utf-8")
        except UnicodeEncodeError as err:
            raise InvalidEvent(RejectReason.NOT_UTF8, "the delivery holds unpaired surrogates") from err
    elif isinstance(body, bytes | bytearray):
        raw = bytes(body)
    else:
        raise InvalidEvent(RejectReason.WRONG_TYPE, f"a delivery is bytes or text, not {type(body).__name__}")
    if len(raw) > MAX_DELIVERY_BYTES:
        raise InvalidEvent(RejectReason.TOO_LARGE, f"the delivery is over {MAX_DELIVERY_BYTES} bytes")
    try:
        text = raw.removeprefix(_UTF8_BOM).decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidEvent(RejectReason.NOT_UTF8, f"the delivery is not UTF-8 (byte {err.start})") from err
    if not text.strip():
        raise InvalidEvent(RejectReason.NOT_JSON, "the delivery is empty")
    try:
        document: object = json.loads(text, object_pairs_hook=_json_object, parse_constant=_reject_constant)
    except RecursionError as err:
        raise InvalidEvent(RejectReason.TOO_DEEP, "the delivery is nested too deeply") from err
    except ValueError as err:  # JSONDecodeError, NaN/Infinity, integers past the digit limit
        raise InvalidEvent(RejectReason.NOT_JSON, f"the delivery is not JSON: {_clip(str(err))}") from err
    _check_depth(document)
    return document


def _json_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json keeps the last of duplicate members silently; keep both visible instead.
    members: dict[str, object] = {}
    for name, value in pairs:
        if name in members and not _same_value(members[name], value):
            members[name] = _CONFLICT
        else:
            members.setdefault(name, value)
    return members


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _check_depth(document: object) -> None:
    pending: list[tuple[object, int]] = [(document, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidEvent(
                RejectReason.TOO_DEEP, f"the delivery nests deeper than {MAX_JSON_DEPTH} levels"
            )
        if isinstance(node, dict):
            pending.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            pending.extend((child, depth + 1) for child in node)


# --- One event -----------------------------------------------------------------------------------


def _parse_one(obj: object, policy: VaultPolicy) -> KeyEvent | SubscriptionValidation | _Ignored:
    if not isinstance(obj, Mapping):
        raise InvalidEvent(RejectReason.WRONG_TYPE, f"an event is a JSON object, not {_json_type(obj)}")
    members = _members(obj)
    attributed_id = _attributable_id(members)
    schema = _schema_of(members, attributed_id)
    dead_letter = "deadletterreason" in members
    if schema == EVENT_GRID:
        type_name, topic_name, time_name = "eventType", "topic", "eventTime"
    else:
        type_name, topic_name, time_name = "type", "source", "time"
        _check_spec_version(members, attributed_id)
    event_type = _member_text(members, type_name, event_id=attributed_id)
    known = _KEY_EVENT_TYPES.get(event_type.lower())
    if known is None:
        is_validation = event_type.lower() == SUBSCRIPTION_VALIDATION_EVENT.lower()
        if is_validation and schema == EVENT_GRID and not dead_letter:
            return _subscription_validation(members)
        return _Ignored(_clip(event_type))
    event_id = _checked_event_id(_member(members, "id", event_id=None))
    if dead_letter:
        _check_dead_letter(members, event_id)
    canonical_type, kind = known
    return _key_event(
        kind,
        canonical_type,
        event_id,
        schema=DEAD_LETTER if dead_letter else schema,
        topic=_member(members, topic_name, event_id=event_id),
        topic_label=topic_name,
        subject=_member(members, "subject", event_id=event_id),
        time=_member(members, time_name, event_id=event_id),
        time_label=time_name,
        data=_event_data(members, event_id),
        policy=policy,
    )


def _schema_of(members: Mapping[str, object], event_id: str | None) -> str:
    event_grid = "eventtype" in members
    # The documentation's CloudEvents dead-letter sample omits specversion: type + source suffice.
    cloud_events = "specversion" in members or ("type" in members and "source" in members)
    if event_grid and cloud_events:
        raise InvalidEvent(
            RejectReason.UNKNOWN_SCHEMA,
            "the event mixes Event Grid and CloudEvents members",
            event_id=event_id,
        )
    if event_grid:
        return EVENT_GRID
    if cloud_events:
        return CLOUD_EVENTS
    raise InvalidEvent(
        RejectReason.UNKNOWN_SCHEMA,
        "the event is neither Event Grid schema (eventType) nor CloudEvents 1.0 (specversion, type, source)",
        event_id=event_id,
    )


def _check_spec_version(members: Mapping[str, object], event_id: str | None) -> None:
    value = _member(members, "specversion", event_id=event_id)
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidEvent(
            RejectReason.WRONG_TYPE, f"specversion is a string, not {_json_type(value)}", event_id=event_id
        )
    if value.strip() != "1.0":
        raise InvalidEvent(
            RejectReason.UNSUPPORTED_SPEC_VERSION,
            f"CloudEvents specversion {_show(value)} is not 1.0",
            event_id=event_id,
        )


def _check_dead_letter(members: Mapping[str, object], event_id: str) -> None:
    reason = _member(members, "deadletterreason", event_id=event_id)
    if not isinstance(reason, str):
        raise InvalidEvent(
            RejectReason.WRONG_TYPE,
            f"deadLetterReason is a string, not {_json_type(reason)}",
            event_id=event_id,
        )
    attempts = _member(members, "deliveryattempts", event_id=event_id)
    if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int)):
        raise InvalidEvent(
            RejectReason.WRONG_TYPE,
            f"deliveryAttempts is an integer, not {_json_type(attempts)}",
            event_id=event_id,
        )


def _event_data(members: Mapping[str, object], event_id: str) -> object:
    data = _member(members, "data", event_id=event_id)
    if data is None and "data_base64" in members:
        raise InvalidEvent(
            RejectReason.MISSING_FIELD,
            "data is missing: Key Vault events carry JSON data, not data_base64",
            event_id=event_id,
        )
    return data


def _subscription_validation(members: Mapping[str, object]) -> SubscriptionValidation:
    event_id = _checked_event_id(_member(members, "id", event_id=None))
    data = _data_members(_member(members, "data", event_id=event_id), event_id)
    code = _member_text(data, "validationCode", event_id=event_id)
    if len(code) > _MAX_VALIDATION_CODE_CHARS or not code.isprintable():
        raise InvalidEvent(
            RejectReason.BAD_VALIDATION,
            "data.validationCode is not a plausible validation code",
            event_id=event_id,
        )
    url = _optional_text(data, "validationUrl", event_id=event_id)
    if url is not None and not _is_plain_https_url(url):
        # Never echoed: the URL carries the validation token.
        raise InvalidEvent(
            RejectReason.BAD_VALIDATION, "data.validationUrl is not an https URL", event_id=event_id
        )
    return SubscriptionValidation(validation_code=code, validation_url=url, event_id=event_id)


def _is_plain_https_url(url: str) -> bool:
    if not url.isascii() or any(char.isspace() or not char.isprintable() for char in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return False
    return parts.scheme.lower() == "https" and bool(parts.hostname) and "@" not in parts.netloc


# --- Key Vault event data ------------------------------------------------------------------------


def _key_event(
    kind: KeyEventKind,
    event_type: str,
    event_id: str,
    *,
    schema: str,
    topic: object,
    topic_label: str,
    subject: object,
    time: object,
    time_label: str,
    data: object,
    policy: VaultPolicy,
) -> KeyEvent:
    fields = _data_members(data, event_id)
    identifier = _member_text(fields, "data.Id", event_id=event_id)
    # The allowlist comes first: nothing else in the event is believed before its vault is allowed.
    key: KeyRef | None
    if kind is KeyEventKind.ACCESS_POLICY_CHANGED:
        vault = _allowed_vault_url(identifier, policy, event_id)
        key = None
    else:
        key = _allowed_key_id(identifier, policy, event_id)
        vault = key.vault

    vault_name = _member_text(fields, "data.VaultName", event_id=event_id)
    host_vault_name = vault.name  # None for custom origins: checked against the topic instead
    if host_vault_name is not None and host_vault_name.lower() != vault_name.lower():
        raise InvalidEvent(
            RejectReason.ID_MISMATCH_VAULT_NAME,
            f"data.VaultName {_show(vault_name)} is not the vault of data.Id ({host_vault_name})",
            event_id=event_id,
        )

    expected_object_type = "Vault" if key is None else "Key"
    object_type = _member_text(fields, "data.ObjectType", event_id=event_id)
    if object_type.lower() != expected_object_type.lower():
        raise InvalidEvent(
            RejectReason.OBJECT_TYPE_MISMATCH,
            f"data.ObjectType of {event_type} is {expected_object_type}, not {_show(object_type)}",
            event_id=event_id,
        )

    if key is not None:
        object_name = _member_text(fields, "data.ObjectName", event_id=event_id)
        if object_name.lower() != key.name.lower():
            raise InvalidEvent(
                RejectReason.ID_MISMATCH_OBJECT_NAME,
                f"data.ObjectName {_show(object_name)} is not the key of data.Id ({key.name})",
                event_id=event_id,
            )
        version = _member_text(fields, "data.Version", event_id=event_id)
        if version.lower() != key.version:
            raise InvalidEvent(
                RejectReason.ID_MISMATCH_VERSION,
                f"data.Version {_show(version)} is not the version of data.Id ({key.version})",
                event_id=event_id,
            )
    else:
        object_name = _optional_text(fields, "data.ObjectName", event_id=event_id) or vault_name
        if object_name.lower() != vault_name.lower():
            raise InvalidEvent(
                RejectReason.ID_MISMATCH_OBJECT_NAME,
                f"data.ObjectName {_show(object_name)} of a vault event is not the vault {_show(vault_name)}",
                event_id=event_id,
            )

    resource_id = _vault_topic(topic, topic_label, vault, vault_name, event_id)

    subject_text = _optional_value_text(subject, "subject", event_id)
    if subject_text is not None and subject_text.lower() != object_name.lower():
        raise InvalidEvent(
            RejectReason.SUBJECT_MISMATCH,
            f"subject {_show(subject_text)} is not the object {_show(object_name)}",
            event_id=event_id,
        )

    return KeyEvent(
        event_id=event_id,
        kind=kind,
        event_type=event_type,
        vault=vault,
        vault_resource_id=resource_id,
        key=key,
        event_time=_event_time(time, time_label, required=schema == EVENT_GRID, event_id=event_id),
        not_before=_epoch_seconds(fields, "data.NBF", event_id),
        expires=_epoch_seconds(fields, "data.EXP", event_id),
        schema=schema,
    )


def _origin_of_url(text: str, reason: RejectReason, event_id: str) -> str:
    """The normalised origin of an absolute https URL, before anything else about it is checked."""
    if not text.isascii() or any(char.isspace() or not char.isprintable() for char in text):
        raise InvalidEvent(
            reason, f"{_show(text)} contains whitespace, control or non-ASCII characters", event_id=event_id
        )
    try:
        parts = urlsplit(text)
    except ValueError as err:
        raise InvalidEvent(reason, f"{_show(text)} is not a URL", event_id=event_id) from err
    if not parts.scheme or not parts.netloc:
        raise InvalidEvent(reason, f"{_show(text)} is not an absolute URL", event_id=event_id)
    try:
        return normalise_origin(f"{parts.scheme}://{parts.netloc}")
    except InvalidKeyId as err:
        raise InvalidEvent(reason, f"{_show(text)}: {_clip(str(err))}", event_id=event_id) from err


def _check_allowed(origin: str, policy: VaultPolicy, event_id: str) -> None:
    if not policy.allows(origin):
        raise InvalidEvent(
            RejectReason.VAULT_NOT_ALLOWED,
            f"vault {_show(origin)} is not in the allowlist",
            event_id=event_id,
        )


def _allowed_key_id(text: str, policy: VaultPolicy, event_id: str) -> KeyRef:
    _check_allowed(_origin_of_url(text, RejectReason.BAD_KEY_ID, event_id), policy, event_id)
    try:
        key = policy.parse_key_id(text)
    except InvalidKeyId as err:
        raise InvalidEvent(RejectReason.BAD_KEY_ID, f"data.Id: {_clip(str(err))}", event_id=event_id) from err
    if key.version is None:
        raise InvalidEvent(
            RejectReason.BAD_KEY_ID, f"data.Id {_show(text)} names no key version", event_id=event_id
        )
    return key


def _allowed_vault_url(text: str, policy: VaultPolicy, event_id: str) -> VaultOrigin:
    origin = _origin_of_url(text, RejectReason.BAD_VAULT_URL, event_id)
    _check_allowed(origin, policy, event_id)
    try:
        # normalise_origin(text) refuses a path, query or fragment: the Id is the vault URL itself. When
        # it accepts the text, it yields ``origin`` (both read only the scheme and the authority).
        normalise_origin(text)
        return policy.parse_vault_origin(origin)
    except InvalidKeyId as err:
        raise InvalidEvent(
            RejectReason.BAD_VAULT_URL,
            f"data.Id {_show(text)} is not a vault URL: {_clip(str(err))}",
            event_id=event_id,
        ) from err


def _vault_topic(
    topic: object, label: str, vault: VaultOrigin, vault_name: str, event_id: str
) -> VaultResourceId:
    text = _require_text(topic, label, event_id=event_id)
    try:
        resource_id = parse_vault_resource_id(text)
    except InvalidResourceId as err:
        raise InvalidEvent(
            RejectReason.BAD_TOPIC, f"{label} {_show(text)} is not a Key Vault resource id", event_id=event_id
        ) from err
    if resource_id.name.lower() != vault_name.lower():
        raise InvalidEvent(
            RejectReason.TOPIC_MISMATCH,
            f"{label} names vault {_show(resource_id.name)}, data.VaultName {_show(vault_name)}",
            event_id=event_id,
        )
    if vault.name is not None and vault.is_managed_hsm != (resource_id.provider_type == "managedHSMs"):
        raise InvalidEvent(
            RejectReason.TOPIC_MISMATCH,
            f"{label} is a {resource_id.provider_type} resource but data.Id is on {vault.host}",
            event_id=event_id,
        )
    return resource_id


def _epoch_seconds(fields: Mapping[str, object], label: str, event_id: str) -> datetime | None:
    value = _member(fields, label, event_id=event_id)
    number: int | float
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if not _EPOCH_TEXT.fullmatch(text):
            raise InvalidEvent(
                RejectReason.BAD_TIMESTAMP, f"{label} {_show(value)} is not epoch seconds", event_id=event_id
            )
        number = float(text) if "." in text else int(text)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = value
    else:
        raise InvalidEvent(
            RejectReason.BAD_TIMESTAMP,
            f"{label} is epoch seconds, not {_json_type(value)}",
            event_id=event_id,
        )
    if isinstance(number, float) and not math.isfinite(number):
        raise InvalidEvent(RejectReason.BAD_TIMESTAMP, f"{label} is not a finite number", event_id=event_id)
    if not 0 <= number <= _MAX_EPOCH_SECONDS:
        raise InvalidEvent(
            RejectReason.BAD_TIMESTAMP, f"{label} {_show(value)} is outside 1970-9999", event_id=event_id
        )
    # Every number in that range is an instant datetime holds (the largest float below the bound is
    # 9999-12-31T23:59:59.999969), so this cannot raise.
    return datetime.fromtimestamp(number, tz=UTC)


def _event_time(value: object, label: str, *, required: bool, event_id: str) -> datetime | None:
    if value is None:
        if required:
            raise InvalidEvent(RejectReason.MISSING_FIELD, f"{label} is missing", event_id=event_id)
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if not isinstance(value, str):
        raise InvalidEvent(
            RejectReason.WRONG_TYPE, f"{label} is a string, not {_json_type(value)}", event_id=event_id
        )
    text = value.strip()
    match = _RFC3339.fullmatch(text) if len(text) <= _MAX_TIME_CHARS else None
    if match is None:
        raise InvalidEvent(
            RejectReason.BAD_EVENT_TIME,
            f"{label} {_show(value)} is not an RFC 3339 date-time",
            event_id=event_id,
        )
    year, month, day, hour, minute, second, fraction, zulu, sign, offset_hours, offset_minutes = (
        match.groups()
    )
    try:
        offset = timedelta(0) if zulu else timedelta(hours=int(offset_hours), minutes=int(offset_minutes))
        zone = timezone(-offset if sign == "-" else offset)
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second),
            int((fraction or "").ljust(6, "0")[:6]), tzinfo=zone,
        )
        return moment.astimezone(UTC)
    except (ValueError, OverflowError) as err:
        raise InvalidEvent(
            RejectReason.BAD_EVENT_TIME, f"{label} {_show(value)} is not a valid date-time", event_id=event_id
        ) from err


# --- Members -------------------------------------------------------------------------------------


def _normalise_name(name: str) -> str:
    return name.strip().lower()


def _members(obj: Mapping[Any, object]) -> dict[str, object]:
    """Members by normalised name ("ObjectName " and "objectName" are both "objectname")."""
    members: dict[str, object] = {}
    for name, value in obj.items():
        if not isinstance(name, str):
            continue
        key = _normalise_name(name)
        if key in members and not _same_value(members[key], value):
            members[key] = _CONFLICT
        else:
            members.setdefault(key, value)
    return members


def _same_value(first: object, second: object) -> bool:
    if first is _CONFLICT or second is _CONFLICT:
        return False
    if isinstance(first, str) and isinstance(second, str):
        return first.strip() == second.strip()
    return type(first) is type(second) and first == second


def _member(members: Mapping[str, object], label: str, *, event_id: str | None) -> object:
    """The member named by ``label`` ("data.ObjectName" reads "objectname"); None when absent."""
    value = members.get(_normalise_name(label.rpartition(".")[2]))
    if value is _CONFLICT:
        raise InvalidEvent(
            RejectReason.DUPLICATE_FIELD, f"{label} is given twice with different values", event_id=event_id
        )
    return value


def _member_text(members: Mapping[str, object], label: str, *, event_id: str | None) -> str:
    return _require_text(_member(members, label, event_id=event_id), label, event_id=event_id)


def _optional_text(members: Mapping[str, object], label: str, *, event_id: str | None) -> str | None:
    return _optional_value_text(_member(members, label, event_id=event_id), label, event_id)


def _require_text(value: object, label: str, *, event_id: str | None) -> str:
    text = _optional_value_text(value, label, event_id)
    if text is None:
        raise InvalidEvent(RejectReason.MISSING_FIELD, f"{label} is missing or empty", event_id=event_id)
    return text


def _optional_value_text(value: object, label: str, event_id: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(
            RejectReason.WRONG_TYPE, f"{label} is a string, not {_json_type(value)}", event_id=event_id
        )
    return value.strip() or None


def _data_members(data: object, event_id: str) -> dict[str, object]:
    if data is None:
        raise InvalidEvent(RejectReason.MISSING_FIELD, "data is missing", event_id=event_id)
    if not isinstance(data, Mapping):
        raise InvalidEvent(
            RejectReason.WRONG_TYPE, f"data is an object, not {_json_type(data)}", event_id=event_id
        )
    return _members(data)


def _checked_event_id(value: object) -> str:
    text = _require_text(value, "id", event_id=None)
    if len(text) > MAX_EVENT_ID_CHARS or not text.isprintable():
        raise InvalidEvent(
            RejectReason.BAD_EVENT_ID,
            f"id {_show(text)} is over {MAX_EVENT_ID_CHARS} characters or has control characters",
        )
    return text


def _attributable_id(members: Mapping[str, object]) -> str | None:
    """The event id when it is valid, for attributing an early rejection; None otherwise."""
    try:
        return _checked_event_id(_member(members, "id", event_id=None))
    except InvalidEvent:
        return None


# --- Messages ------------------------------------------------------------------------------------


def _clip(text: str, limit: int = _ECHO_CHARS) -> str:
    """At most ``limit`` characters, with unprintable ones replaced, for echoing untrusted input."""
    shown = "".join(char if char.isprintable() else "?" for char in text[:limit])
    return shown + "..." if len(text) > limit else shown


def _show(value: str | int | float) -> str:
    """A value echoed in a message: text quoted and clipped, a number as written (clipped: JSON allows
    thousands of digits), so the reader sees which value was refused."""
    return repr(_clip(value)) if isinstance(value, str) else _clip(repr(value))


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
