"""The strict intake of Azure Resource Manager resource events (controller/resource_events.py)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.errors import InvalidEvent
from controller.events import RejectReason
from controller.resource_events import (
    DriftTarget,
    IgnoredEvent,
    ResourceEvent,
    ResourceEventKind,
    TargetKind,
    drift_target,
    parse_functions_resource_event,
    parse_resource_event,
)

pytestmark = pytest.mark.unit

SUB = "5a9d0000-0000-4000-8000-00000000c0de"
OTHER_SUB = "00000000-0000-0000-0000-0000000000a2"
RG = f"/subscriptions/{SUB}/resourceGroups/rg-keys"
VAULT = f"{RG}/providers/Microsoft.KeyVault/vaults/contoso-cmk"
ACCOUNT = f"/subscriptions/{SUB}/resourceGroups/rg-data/providers/Microsoft.Storage/storageAccounts/acct1"


def arm_event(subject: str = VAULT, *, event_type: str = "Microsoft.Resources.ResourceWriteSuccess",
              operation: str = "Microsoft.KeyVault/vaults/write", **data: Any) -> dict[str, Any]:
    """An event as Azure documents it for the subscription's system topic."""
    return {
        "id": "1f2d6f57-2a7e-4c1a-9f0e-1b7c3c1e2a11",
        "topic": f"/subscriptions/{SUB}",
        "subject": subject,
        "eventType": event_type,
        "eventTime": "2026-12-03T12:00:00.1234567Z",
        "dataVersion": "2",
        "metadataVersion": "1",
        "data": {
            "authorization": {"scope": subject, "action": operation, "evidence": {"role": "Owner"}},
            "claims": {"http://schemas.microsoft.com/identity/claims/objectidentifier": "oid"},
            "correlationId": "c0ffee00-0000-4000-8000-000000000001",
            "httpRequest": {"clientRequestId": "x", "clientIpAddress": "127.0.0.1", "method": "PUT",
                            "url": f"https://management.azure.com{subject}?api-version=2024-11-01"},
            "resourceProvider": operation.split("/", 1)[0],
            "resourceUri": subject,
            "operationName": operation,
            "status": "Succeeded",
            "subscriptionId": SUB,
            "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            **data,
        },
    }


def parse(event: Any, subscriptions: tuple[str, ...] = ()) -> ResourceEvent | IgnoredEvent:
    return parse_resource_event(event, subscriptions=subscriptions)


def accepted(event: Any) -> ResourceEvent:
    parsed = parse(event)
    assert isinstance(parsed, ResourceEvent), parsed
    return parsed


def rejected(event: Any) -> str:
    with pytest.raises(InvalidEvent) as caught:
        parse(event)
    return caught.value.reason


# --- what each change touches ----------------------------------------------------------------------


@pytest.mark.parametrize(("subject", "event_type", "operation", "target"), [
    (VAULT, "Microsoft.Resources.ResourceWriteSuccess", "Microsoft.KeyVault/vaults/write",
     DriftTarget(TargetKind.VAULT, VAULT.lower())),
    (VAULT, "Microsoft.Resources.ResourceDeleteSuccess", "Microsoft.KeyVault/vaults/delete",
     DriftTarget(TargetKind.VAULT, VAULT.lower())),
    (f"{VAULT}/accessPolicies/remove", "Microsoft.Resources.ResourceWriteSuccess",
     "Microsoft.KeyVault/vaults/accessPolicies/write", DriftTarget(TargetKind.VAULT, VAULT.lower())),
    (ACCOUNT, "Microsoft.Resources.ResourceWriteSuccess", "Microsoft.Storage/storageAccounts/write",
     DriftTarget(TargetKind.ACCOUNT, ACCOUNT.lower())),
    (f"{ACCOUNT}/encryptionScopes/scope1", "Microsoft.Resources.ResourceWriteSuccess",
     "Microsoft.Storage/storageAccounts/encryptionScopes/write", DriftTarget(TargetKind.ACCOUNT, ACCOUNT.lower())),
    (f"{VAULT}/providers/Microsoft.Authorization/roleAssignments/0d3c0000-0000-4000-8000-000000000001",
     "Microsoft.Resources.ResourceDeleteSuccess", "Microsoft.Authorization/roleAssignments/delete",
     DriftTarget(TargetKind.VAULT, VAULT.lower())),
    (f"{VAULT}/keys/k1/providers/Microsoft.Authorization/roleAssignments/0d3c0000-0000-4000-8000-000000000001",
     "Microsoft.Resources.ResourceWriteSuccess", "Microsoft.Authorization/roleAssignments/write",
     DriftTarget(TargetKind.VAULT, VAULT.lower())),
    (f"{RG}/providers/Microsoft.Authorization/roleAssignments/0d3c0000-0000-4000-8000-000000000001",
     "Microsoft.Resources.ResourceDeleteSuccess", "Microsoft.Authorization/roleAssignments/delete",
     DriftTarget(TargetKind.SCOPE, RG.lower())),
    (f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleAssignments/0d3c0000-0000-4000-8000-000000000001",
     "Microsoft.Resources.ResourceDeleteSuccess", "Microsoft.Authorization/roleAssignments/delete",
     DriftTarget(TargetKind.SCOPE, f"/subscriptions/{SUB}")),
])
def test_each_watched_change_names_what_to_re_read(subject, event_type, operation, target):
    parsed = accepted(arm_event(subject, event_type=event_type, operation=operation))
    assert parsed.target == target
    assert parsed.subscription_id == SUB
    assert parsed.resource_id == subject
    assert parsed.event_time == datetime(2026, 12, 3, 12, 0, 0, 123456, tzinfo=UTC)
    assert parsed.kind is ResourceEventKind(operation.rsplit("/", 1)[1])


@pytest.mark.parametrize(("subject", "operation", "event_type"), [
    (f"{RG}/providers/Microsoft.Compute/virtualMachines/vm1", "Microsoft.Compute/virtualMachines/write",
     "Microsoft.Resources.ResourceWriteSuccess"),
    (f"{ACCOUNT}/blobServices/default/containers/c1",
     "Microsoft.Storage/storageAccounts/blobServices/containers/write", "Microsoft.Resources.ResourceWriteSuccess"),
    (f"{ACCOUNT}/providers/Microsoft.Authorization/roleAssignments/0d3c0000-0000-4000-8000-000000000001",
     "Microsoft.Authorization/roleAssignments/write", "Microsoft.Resources.ResourceWriteSuccess"),
    (ACCOUNT, "Microsoft.Storage/storageAccounts/listKeys/action", "Microsoft.Resources.ResourceActionSuccess"),
])
def test_changes_the_rules_do_not_read_are_ignored_with_the_reason(subject, operation, event_type):
    parsed = parse(arm_event(subject, operation=operation, event_type=event_type))
    assert isinstance(parsed, IgnoredEvent)
    assert parsed.why and parsed.event_id


def test_other_event_types_and_other_subscriptions_are_ignored():
    assert isinstance(parse(arm_event(event_type="Microsoft.Resources.ResourceWriteFailure")), IgnoredEvent)
    assert isinstance(parse({**arm_event(), "eventType": "Microsoft.KeyVault.KeyNewVersionCreated"}), IgnoredEvent)
    outside = parse(arm_event(), subscriptions=(OTHER_SUB,))
    assert isinstance(outside, IgnoredEvent) and "CMK_SUBSCRIPTIONS" in outside.why
    assert isinstance(parse(arm_event(), subscriptions=(SUB.upper(),)), ResourceEvent)


def test_member_names_are_compared_like_key_vault_events_and_cloud_events_are_read():
    event = arm_event()
    event["data"] = {f" {name[0].upper()}{name[1:]} ": value for name, value in event["data"].items()}
    assert accepted(event).target.kind is TargetKind.VAULT
    cloud = {"id": "e1", "source": f"/subscriptions/{SUB}", "specversion": "1.0", "subject": VAULT,
             "type": "Microsoft.Resources.ResourceWriteSuccess", "data": arm_event()["data"]}
    assert accepted(cloud).event_time is None


# --- hostile and malformed events ------------------------------------------------------------------------


def broken(path: str, value: Any, *, event: dict[str, Any] | None = None) -> dict[str, Any]:
    changed = copy.deepcopy(event or arm_event())
    node = changed
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    if value is _DROP:
        del node[last]
    else:
        node[last] = value
    return changed


_DROP = object()


@pytest.mark.parametrize(("path", "value", "reason"), [
    ("topic", f"{RG}", RejectReason.BAD_TOPIC),
    ("topic", "/subscriptions/not-a-guid", RejectReason.BAD_TOPIC),
    ("topic", _DROP, RejectReason.MISSING_FIELD),
    ("subject", f"/subscriptions/{OTHER_SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/v",
     RejectReason.TOPIC_MISMATCH),
    ("subject", "contoso-cmk", RejectReason.BAD_SUBJECT),
    ("subject", f"{VAULT}/accessPolicies", RejectReason.BAD_SUBJECT),
    ("subject", f"{VAULT}/../../x", RejectReason.BAD_SUBJECT),
    ("subject", f"{RG}/providers/Microsoft.KeyVault/vaults/../accessPolicies/add", RejectReason.BAD_SUBJECT),
    ("subject", VAULT.replace("rg-keys", "rg\tkeys"), RejectReason.BAD_SUBJECT),
    ("subject", VAULT + "é", RejectReason.BAD_SUBJECT),
    ("subject", VAULT + "/x" * 2000, RejectReason.BAD_SUBJECT),
    ("subject", 42, RejectReason.WRONG_TYPE),
    ("id", "x" * 300, RejectReason.BAD_EVENT_ID),
    ("id", "a\u0000b", RejectReason.BAD_EVENT_ID),
    ("eventTime", "yesterday", RejectReason.BAD_EVENT_TIME),
    ("eventTime", _DROP, RejectReason.MISSING_FIELD),
    ("data", "not an object", RejectReason.WRONG_TYPE),
    ("data", _DROP, RejectReason.MISSING_FIELD),
    ("data.subscriptionId", OTHER_SUB, RejectReason.TOPIC_MISMATCH),
    ("data.resourceUri", ACCOUNT, RejectReason.SUBJECT_MISMATCH),
    ("data.resourceUri", _DROP, RejectReason.MISSING_FIELD),
    ("data.status", "Failed", RejectReason.NOT_SUCCEEDED),
    ("data.status", _DROP, RejectReason.MISSING_FIELD),
    ("data.operationName", "Microsoft.KeyVault/vaults/delete", RejectReason.OPERATION_MISMATCH),
    ("data.operationName", "Microsoft.Storage/storageAccounts/write", RejectReason.OPERATION_MISMATCH),
    ("data.operationName", "write", RejectReason.BAD_OPERATION),
    ("data.operationName", "Microsoft.KeyVault//write", RejectReason.BAD_OPERATION),
    ("data.operationName", ["Microsoft.KeyVault/vaults/write"], RejectReason.WRONG_TYPE),
    ("data.resourceProvider", "Microsoft.Storage", RejectReason.OPERATION_MISMATCH),
    ("data.tenantId", {"nested": True}, RejectReason.WRONG_TYPE),
])
def test_a_malformed_event_is_rejected_with_a_stable_reason(path, value, reason):
    assert rejected(broken(path, value)) == reason


def test_conflicting_duplicate_members_and_mixed_schemas_are_rejected():
    event = arm_event()
    event["data"]["OperationName"] = "Microsoft.KeyVault/vaults/delete"
    assert rejected(event) == RejectReason.DUPLICATE_FIELD
    assert rejected({**arm_event(), "specversion": "1.0", "type": "x", "source": "y"}) == RejectReason.UNKNOWN_SCHEMA
    assert rejected(["not", "an", "object"]) == RejectReason.WRONG_TYPE
    cloud = {"id": "e1", "source": f"/subscriptions/{SUB}", "specversion": "0.3", "subject": VAULT,
             "type": "Microsoft.Resources.ResourceWriteSuccess", "data": arm_event()["data"]}
    assert rejected(cloud) == RejectReason.UNSUPPORTED_SPEC_VERSION


def test_a_rejection_never_echoes_more_than_a_clip_of_the_input():
    with pytest.raises(InvalidEvent) as caught:
        parse(broken("data.operationName", "Microsoft.KeyVault/" + "A" * 5000 + "/write"))
    assert len(str(caught.value)) < 400


def test_drift_target_of_unrelated_ids_is_none():
    assert drift_target("/subscriptions/x") is None
    assert drift_target(f"{RG}/providers/Microsoft.Web/sites/app") is None
    assert drift_target("not an id") is None


# --- the Functions trigger's argument ------------------------------------------------------------------


@dataclass
class TriggerEvent:
    """The attributes azure.functions.EventGridEvent has."""

    id: str
    topic: str
    subject: str
    event_type: str
    event_time: datetime | None
    data_version: str
    body: Any

    def get_json(self) -> Any:
        return self.body


def test_the_trigger_argument_is_validated_the_same_way():
    raw = arm_event(operation="Microsoft.KeyVault/vaults/delete",
                    event_type="Microsoft.Resources.ResourceDeleteSuccess")
    event = TriggerEvent(raw["id"], raw["topic"], raw["subject"], raw["eventType"],
                         datetime(2026, 12, 3, tzinfo=UTC), "2", raw["data"])
    parsed = parse_functions_resource_event(event, subscriptions=())
    assert isinstance(parsed, ResourceEvent) and parsed.kind is ResourceEventKind.DELETE
    hostile = TriggerEvent(raw["id"], raw["topic"], raw["subject"], raw["eventType"], None, "2", None)
    with pytest.raises(InvalidEvent) as caught:
        parse_functions_resource_event(hostile, subscriptions=())
    assert caught.value.reason == RejectReason.MISSING_FIELD
    with pytest.raises(InvalidEvent) as caught:
        parse_functions_resource_event(object(), subscriptions=())  # type: ignore[arg-type]
    assert caught.value.reason == RejectReason.UNKNOWN_SCHEMA


# --- whatever arrives ---------------------------------------------------------------------------------

DOMAIN_TEXT = st.sampled_from([
    "Microsoft.Resources.ResourceWriteSuccess", "Microsoft.Resources.ResourceDeleteSuccess",
    "Microsoft.Resources.ResourceActionSuccess", f"/subscriptions/{SUB}", VAULT, ACCOUNT, f"{VAULT}/keys/k",
    "Microsoft.KeyVault/vaults/write", "Microsoft.Storage/storageAccounts/listKeys/action", "Succeeded", SUB,
    "/providers/", "", " ", "..",
]) | st.text(max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | DOMAIN_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(DOMAIN_TEXT, inner, max_size=4), max_leaves=12)
MEMBER_NAMES = st.sampled_from(["id", "topic", "subject", "eventType", "eventTime", "data", "specversion", "type",
                                "source", "subscriptionId", "resourceUri", "operationName", "status",
                                "resourceProvider", "tenantId"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(base=st.just(arm_event()), path=st.lists(MEMBER_NAMES, min_size=1, max_size=2), value=JSON_VALUES)
def test_any_mutation_is_accepted_ignored_or_rejected_with_a_known_reason(base, path, value):
    event = copy.deepcopy(base)
    node = event if path[0] != "data" or len(path) == 1 else event["data"]
    node[path[-1]] = value
    try:
        parsed = parse(event)
    except InvalidEvent as err:
        assert err.reason in set(RejectReason)
        return
    assert isinstance(parsed, ResourceEvent | IgnoredEvent)
    if isinstance(parsed, ResourceEvent):  # whatever was accepted agrees with itself
        assert parsed.subscription_id == SUB
        assert parsed.target.resource_id.startswith(f"/subscriptions/{SUB}")


@pytest.mark.parametrize(("claims", "expected"), [
    ({"appid": "33333333-3333-3333-3333-33333333AAAA"}, "33333333-3333-3333-3333-33333333aaaa"),
    ({"appid": "not-a-guid"}, None),
    ({"appid": 7}, None),
    ("claims as text", None),
    (None, None),
])
def test_the_callers_application_id_is_read_only_when_it_is_a_guid(claims, expected):
    event = arm_event()
    event["data"]["claims"] = claims
    assert accepted(event).caller_app_id == expected
