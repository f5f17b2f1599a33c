"""Strict intake of Azure Resource Manager resource events (the subscription's Event Grid system topic).

``Microsoft.Resources.ResourceWriteSuccess``, ``ResourceDeleteSuccess`` and ``ResourceActionSuccess``
tell the controller that something in a subscription changed: a vault (its access policies, firewall,
keys), a storage account or one of its encryption scopes, a role assignment. They are triggers, never
the truth: what changed is re-read from Azure (``service.handle_resource_event``). This module only
decides whether an event is well-formed, whether it concerns something the compliance rules look at,
and which resource to re-read (its ``DriftTarget``). No other exception than InvalidEvent escapes.

Trust order: the topic names the subscription (``/subscriptions/{id}``) and must be one in scope;
the subject (the resource id), ``data.subscriptionId``, ``data.resourceUri``, ``data.operationName``
(its resource type and its verb) and ``data.status`` must all agree with it and with the event type.
Member names are compared after stripping and lower-casing, as for Key Vault events (controller.events).

What an event touches:
    a vault or anything below it (access policies, keys)     the vault
    a storage account or one of its encryption scopes         the account
    a role assignment at or below a vault                     that vault
    a role assignment at a subscription or resource group     every vault below that scope
Anything else (other resource types, role assignments on other resources, read-only actions such as
listKeys) is ignored, with the reason.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from controller.errors import InvalidEvent
from controller.events import (
    CLOUD_EVENTS,
    EVENT_GRID,
    CloudEventLike,
    EventGridEventLike,
    RejectReason,
    _check_spec_version,
    _checked_event_id,
    _data_members,
    _event_time,
    _member,
    _member_text,
    _members,
    _optional_text,
    _require_text,
    _schema_of,
    _show,
)

WRITE_SUCCESS: Final = "Microsoft.Resources.ResourceWriteSuccess"
DELETE_SUCCESS: Final = "Microsoft.Resources.ResourceDeleteSuccess"
ACTION_SUCCESS: Final = "Microsoft.Resources.ResourceActionSuccess"
#: The event types the controller subscribes to (infra/modules/resource-events.bicep, the sandbox).
RESOURCE_EVENT_TYPES: Final = (WRITE_SUCCESS, DELETE_SUCCESS, ACTION_SUCCESS)

#: The resource types whose changes the compliance rules see (the subscription's advanced filter on
#: data.operationName, as infra/modules/resource-events.bicep declares it).
WATCHED_OPERATION_PREFIXES: Final = (
    "Microsoft.KeyVault/vaults/",
    "Microsoft.Storage/storageAccounts/",
    "Microsoft.Authorization/roleAssignments/",
)

#: Longest resource id accepted (ARM ids are far shorter; a longer one is not from ARM).
MAX_RESOURCE_ID_CHARS: Final = 2048
#: Actions that read and change nothing the rules look at.
_READ_ONLY_ACTIONS: Final = frozenset({"listkeys", "listaccountsas", "listservicesas", "regeneratekey"})
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_SEGMENT = re.compile(r"[-\w.()~%]{1,260}")


class ResourceEventKind(enum.StrEnum):
    WRITE = "write"
    DELETE = "delete"
    ACTION = "action"


_KINDS: Final[Mapping[str, tuple[str, ResourceEventKind]]] = {
    name.lower(): (name, kind)
    for name, kind in (
        (WRITE_SUCCESS, ResourceEventKind.WRITE),
        (DELETE_SUCCESS, ResourceEventKind.DELETE),
        (ACTION_SUCCESS, ResourceEventKind.ACTION),
    )
}


class TargetKind(enum.StrEnum):
    VAULT = "vault"  # one vault (by ARM id)
    ACCOUNT = "account"  # one storage account (by ARM id), its encryption scopes included
    SCOPE = "scope"  # every vault at or below a subscription or resource group


@dataclass(frozen=True, slots=True)
class DriftTarget:
    """What to re-read: ``resource_id`` is the vault's, the account's or the scope's ARM id, lower case."""

    kind: TargetKind
    resource_id: str


@dataclass(frozen=True, slots=True)
class ResourceEvent:
    """A validated resource event: which resource changed, how, and what the controller re-reads."""

    event_id: str
    kind: ResourceEventKind
    event_type: str
    subscription_id: str  # lower case
    resource_id: str  # the subject, as Azure spelled it
    operation_name: str
    target: DriftTarget
    event_time: datetime | None
    correlation_id: str | None = None
    #: The application (client) id in the caller's token claims (``data.claims.appid``), lower case.
    caller_app_id: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "resource": self.resource_id,
            "operation": self.operation_name,
            "target": {"kind": self.target.kind.value, "resource": self.target.resource_id},
            "event_time": self.event_time.isoformat() if self.event_time else None,
            "correlation_id": self.correlation_id,
            "caller_app_id": self.caller_app_id,
        }


@dataclass(frozen=True, slots=True)
class IgnoredEvent:
    """An event that is well-formed (as far as it was read) but of no concern to the controller."""

    event_type: str
    why: str
    event_id: str | None = None


def parse_functions_resource_event(
    event: EventGridEventLike | CloudEventLike, *, subscriptions: tuple[str, ...]
) -> ResourceEvent | IgnoredEvent:
    """Validate the argument of the Functions Event Grid trigger (EventGridEvent or CloudEvent).

    ``subscriptions``: the subscriptions in scope (Settings.subscriptions; empty: every one).
    Raises InvalidEvent for a malformed event.
    """
    if hasattr(event, "event_type"):
        schema, type_label, topic_label, time_label = EVENT_GRID, "eventType", "topic", "eventTime"
        event_type_value, topic = getattr(event, "event_type", None), getattr(event, "topic", None)
        time = getattr(event, "event_time", None)
    elif getattr(event, "specversion", None) is not None:
        schema, type_label, topic_label, time_label = CLOUD_EVENTS, "type", "source", "time"
        _check_spec_version({"specversion": getattr(event, "specversion", None)}, None)
        event_type_value, topic = getattr(event, "type", None), getattr(event, "source", None)
        time = getattr(event, "time", None)
    else:
        raise InvalidEvent(
            RejectReason.UNKNOWN_SCHEMA,
            f"a {type(event).__name__} is neither an EventGridEvent nor a CloudEvent (no event type)",
        )
    get_json = getattr(event, "get_json", None)
    return _resource_event(
        schema=schema,
        event_type=_require_text(event_type_value, type_label, event_id=None),
        event_id_value=getattr(event, "id", None),
        topic=topic,
        topic_label=topic_label,
        subject=getattr(event, "subject", None),
        time=time,
        time_label=time_label,
        data=get_json() if callable(get_json) else None,
        subscriptions=subscriptions,
    )


def parse_resource_event(obj: object, *, subscriptions: tuple[str, ...]) -> ResourceEvent | IgnoredEvent:
    """Validate one decoded event object (Event Grid schema or CloudEvents 1.0)."""
    if not isinstance(obj, Mapping):
        raise InvalidEvent(RejectReason.WRONG_TYPE, "an event is a JSON object")
    members = _members(obj)
    schema = _schema_of(members, None)
    if schema == EVENT_GRID:
        type_label, topic_label, time_label = "eventType", "topic", "eventTime"
    else:
        type_label, topic_label, time_label = "type", "source", "time"
        _check_spec_version(members, None)
    return _resource_event(
        schema=schema,
        event_type=_member_text(members, type_label, event_id=None),
        event_id_value=_member(members, "id", event_id=None),
        topic=_member(members, topic_label, event_id=None),
        topic_label=topic_label,
        subject=_member(members, "subject", event_id=None),
        time=_member(members, time_label, event_id=None),
        time_label=time_label,
        data=_member(members, "data", event_id=None),
        subscriptions=subscriptions,
    )


def _resource_event(
    *,
    schema: str,
    event_type: str,
    event_id_value: object,
    topic: object,
    topic_label: str,
    subject: object,
    time: object,
    time_label: str,
    data: object,
    subscriptions: tuple[str, ...],
) -> ResourceEvent | IgnoredEvent:
    known = _KINDS.get(event_type.lower())
    if known is None:
        return IgnoredEvent(event_type[:200], "not a resource event")
    canonical_type, kind = known
    event_id = _checked_event_id(event_id_value)
    subscription = _topic_subscription(topic, topic_label, event_id)
    if subscriptions and subscription not in {wanted.lower() for wanted in subscriptions}:
        return IgnoredEvent(canonical_type, f"subscription {subscription} is not in CMK_SUBSCRIPTIONS", event_id)
    resource_id = _subject(subject, subscription, event_id)
    fields = _data_members(data, event_id)

    data_subscription = _member_text(fields, "data.subscriptionId", event_id=event_id)
    if data_subscription.lower() != subscription:
        raise InvalidEvent(
            RejectReason.TOPIC_MISMATCH,
            f"data.subscriptionId {_show(data_subscription)} is not the topic's subscription {subscription}",
            event_id=event_id,
        )
    resource_uri = _member_text(fields, "data.resourceUri", event_id=event_id)
    if resource_uri.rstrip("/").lower() != resource_id.rstrip("/").lower():
        raise InvalidEvent(
            RejectReason.SUBJECT_MISMATCH,
            f"data.resourceUri {_show(resource_uri)} is not the subject {_show(resource_id)}",
            event_id=event_id,
        )
    status = _member_text(fields, "data.status", event_id=event_id)
    if status.lower() != "succeeded":
        raise InvalidEvent(
            RejectReason.NOT_SUCCEEDED, f"data.status of {canonical_type} is {_show(status)}", event_id=event_id
        )
    _optional_text(fields, "data.tenantId", event_id=event_id)  # type-checked: a string when present
    correlation_id = _optional_text(fields, "data.correlationId", event_id=event_id)

    resource_type, _ = _resource_type(resource_id)
    operation = _member_text(fields, "data.operationName", event_id=event_id)
    action = _check_operation(operation, kind, resource_type, event_id)
    provider = _optional_text(fields, "data.resourceProvider", event_id=event_id)
    if provider is not None and provider.lower() != resource_type.split("/", 1)[0].lower():
        raise InvalidEvent(
            RejectReason.OPERATION_MISMATCH,
            f"data.resourceProvider {_show(provider)} is not the provider of {_show(resource_id)}",
            event_id=event_id,
        )
    event_time = _event_time(time, time_label, required=schema == EVENT_GRID, event_id=event_id)

    if action is not None and action.lower() in _READ_ONLY_ACTIONS:
        return IgnoredEvent(canonical_type, f"{operation} changes nothing the rules read", event_id)
    target = drift_target(resource_id)
    if target is None:
        return IgnoredEvent(canonical_type, f"{resource_type} is not a resource the rules read", event_id)
    return ResourceEvent(
        event_id=event_id,
        kind=kind,
        event_type=canonical_type,
        subscription_id=subscription,
        resource_id=resource_id,
        operation_name=operation,
        target=target,
        event_time=event_time,
        correlation_id=correlation_id,
        caller_app_id=_caller_app_id(fields, event_id),
    )


_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


def _caller_app_id(fields: Mapping[str, object], event_id: str) -> str | None:
    """``data.claims.appid`` when it is a GUID; None when absent or of another shape (it only tells the
    controller's own writes apart, never grants anything)."""
    claims = _member(fields, "data.claims", event_id=event_id)
    app_id = claims.get("appid") if isinstance(claims, Mapping) else None
    return app_id.lower() if isinstance(app_id, str) and _GUID.match(app_id) else None


def _topic_subscription(topic: object, label: str, event_id: str) -> str:
    text = _require_text(topic, label, event_id=event_id)
    segments = text.strip("/").split("/")
    if len(segments) != 2 or segments[0].lower() != "subscriptions" or not _GUID.fullmatch(segments[1]):
        raise InvalidEvent(
            RejectReason.BAD_TOPIC,
            f"{label} {_show(text)} is not a subscription (/subscriptions/<id>)",
            event_id=event_id,
        )
    return segments[1].lower()


def _subject(subject: object, subscription: str, event_id: str) -> str:
    text = _require_text(subject, "subject", event_id=event_id)
    if len(text) > MAX_RESOURCE_ID_CHARS or not text.isascii() or any(
        char.isspace() or not char.isprintable() for char in text
    ):
        raise InvalidEvent(
            RejectReason.BAD_SUBJECT,
            f"subject {_show(text)} is too long or has whitespace, control or non-ASCII characters",
            event_id=event_id,
        )
    segments = _segments(text)
    if segments is None or len(segments) < 2 or segments[0].lower() != "subscriptions":
        raise InvalidEvent(RejectReason.BAD_SUBJECT, f"subject {_show(text)} is not an ARM resource id",
                           event_id=event_id)
    if segments[1].lower() != subscription:
        raise InvalidEvent(
            RejectReason.TOPIC_MISMATCH,
            f"subject {_show(text)} is not in the topic's subscription {subscription}",
            event_id=event_id,
        )
    try:
        _resource_type(text)
    except ValueError as err:
        raise InvalidEvent(RejectReason.BAD_SUBJECT, f"subject {_show(text)}: {err}", event_id=event_id) from err
    return text


def _segments(resource_id: str) -> list[str] | None:
    """The path segments of an ARM id; None when one is empty, only dots, or not a plausible name."""
    if not resource_id.startswith("/"):
        return None
    segments = resource_id.strip().rstrip("/").split("/")[1:]
    if any(not _SEGMENT.fullmatch(segment) or set(segment) == {"."} for segment in segments):
        return None
    return segments


def _resource_type(resource_id: str) -> tuple[str, str]:
    """(``Namespace/type[/child type...]``, the scope it is an extension of) for an ARM id.

    Raises ValueError when the id is not a subscription, resource group or provider resource id."""
    segments = _segments(resource_id)
    if segments is None:
        raise ValueError("not an ARM resource id")
    lowered = [segment.lower() for segment in segments]
    if "providers" not in lowered:
        if len(segments) == 2:
            return "Microsoft.Resources/subscriptions", ""
        if len(segments) == 4 and lowered[2] == "resourcegroups":
            return "Microsoft.Resources/subscriptions/resourceGroups", ""
        raise ValueError("names no resource provider")
    at = len(lowered) - 1 - lowered[::-1].index("providers")
    rest = segments[at + 1 :]
    # Namespace, then type/name pairs: an odd count after the namespace is not a resource id.
    if len(rest) < 3 or len(rest) % 2 == 0:
        raise ValueError("is not <namespace>/<type>/<name>[/<type>/<name>...]")
    types = [rest[0], *rest[1::2]]
    return "/".join(types), "/" + "/".join(segments[:at])


def _check_operation(operation: str, kind: ResourceEventKind, resource_type: str, event_id: str) -> str | None:
    """The action's name for an action event (None otherwise), after checking ``operation`` fits."""
    parts = operation.split("/")
    if len(parts) < 3 or any(not part for part in parts) or len(operation) > 512:
        raise InvalidEvent(
            RejectReason.BAD_OPERATION,
            f"data.operationName {_show(operation)} is not <namespace>/<type>/<verb>",
            event_id=event_id,
        )
    verb = parts[-1].lower()
    if verb != kind.value:
        raise InvalidEvent(
            RejectReason.OPERATION_MISMATCH,
            f"data.operationName {_show(operation)} is not a {kind.value} operation",
            event_id=event_id,
        )
    named = "/".join(parts[:-2] if kind is ResourceEventKind.ACTION else parts[:-1])
    if named.lower() != resource_type.lower():
        raise InvalidEvent(
            RejectReason.OPERATION_MISMATCH,
            f"data.operationName {_show(operation)} is not an operation on {resource_type}",
            event_id=event_id,
        )
    return parts[-2] if kind is ResourceEventKind.ACTION else None


def drift_target(resource_id: str) -> DriftTarget | None:
    """What a change of ``resource_id`` makes the controller re-read; None: nothing the rules read."""
    try:
        resource_type, scope = _resource_type(resource_id)
    except ValueError:
        return None
    kind_of = resource_type.lower().split("/")
    if kind_of[:2] == ["microsoft.keyvault", "vaults"]:
        return DriftTarget(TargetKind.VAULT, _top_level(resource_id))
    if kind_of[:2] == ["microsoft.storage", "storageaccounts"] and (
        len(kind_of) == 2 or kind_of[2] == "encryptionscopes"
    ):
        return DriftTarget(TargetKind.ACCOUNT, _top_level(resource_id))
    if kind_of == ["microsoft.authorization", "roleassignments"]:
        return _role_assignment_target(scope)
    return None


def _top_level(resource_id: str) -> str:
    """The id of the top-level resource (``.../providers/<namespace>/<type>/<name>``), lower case."""
    segments = [segment.lower() for segment in (_segments(resource_id) or [])]
    at = len(segments) - 1 - segments[::-1].index("providers")
    return "/" + "/".join(segments[: at + 4])


def _role_assignment_target(scope: str) -> DriftTarget | None:
    segments = [segment.lower() for segment in (_segments(scope) or [])]
    if "providers" not in segments:
        return DriftTarget(TargetKind.SCOPE, "/" + "/".join(segments))  # a subscription or resource group
    try:
        resource_type, _ = _resource_type(scope)
    except ValueError:
        return None
    if resource_type.lower().split("/")[:2] == ["microsoft.keyvault", "vaults"]:
        return DriftTarget(TargetKind.VAULT, _top_level(scope))
    return None
