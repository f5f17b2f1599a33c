"""The estate's comparison helpers and lookups: Azure names, ids and regions compare case-insensitively."""

from __future__ import annotations

import pytest

from controller.compliance.estate import (
    AttachedIdentity,
    ManagedIdentity,
    ReadAspect,
    ReadFailure,
    arm_name,
    arm_resource_group,
    arm_subscription,
    region,
    same_arm_id,
    same_name,
)
from tests.unit.estate_builders import SUB, UAI_ID, VAULT_ID, estate

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("left", "right", "expected"), [
    ("UnwrapKey", "unwrapKey", True), (" Enabled ", "enabled", True), ("a", "b", False),
    (None, None, True), (None, "x", False), ("x", None, False),
])
def test_same_name(left: str | None, right: str | None, expected: bool) -> None:
    assert same_name(left, right) is expected


@pytest.mark.parametrize(("left", "right", "expected"), [
    (VAULT_ID, VAULT_ID.upper() + "/", True),
    (VAULT_ID, f" {VAULT_ID.lower()} ", True),
    (VAULT_ID, VAULT_ID + "2", False),
])
def test_same_arm_id(left: str, right: str, expected: bool) -> None:
    assert same_arm_id(left, right) is expected


@pytest.mark.parametrize(("value", "expected"), [
    ("West Europe", "westeurope"), ("westeurope", "westeurope"), (" WEST  EUROPE ", "westeurope"),
])
def test_regions_compare_without_spaces_or_case(value: str, expected: str) -> None:
    assert region(value) == expected


@pytest.mark.parametrize(("resource_id", "name", "group", "subscription"), [
    (VAULT_ID, "contoso-cmk", "rg-keys", SUB),
    (VAULT_ID.upper() + "/", "CONTOSO-CMK", "RG-KEYS", SUB),
    (f"/subscriptions/{SUB}", SUB, "", SUB),
    ("/providers/Microsoft.Management/managementGroups/mg-data", "mg-data", "", ""),
    ("/subscriptions", "subscriptions", "", ""),
    ("/", "", "", ""),
])
def test_arm_id_parts(resource_id: str, name: str, group: str, subscription: str) -> None:
    assert (arm_name(resource_id), arm_resource_group(resource_id), arm_subscription(resource_id)) == (
        name, group, subscription)


@pytest.mark.parametrize(("identity_type", "system", "attached"), [
    ("None", False, False),
    ("SystemAssigned", True, False),
    ("UserAssigned", False, True),
    ("SystemAssigned,UserAssigned", True, True),
    ("systemassigned, userassigned", True, True),
])
def test_identity_types(identity_type: str, system: bool, attached: bool) -> None:
    identity = ManagedIdentity(type=identity_type, user_assigned=(AttachedIdentity(resource_id=UAI_ID),))
    assert identity.system_assigned is system
    assert (identity.attached(UAI_ID.upper()) is not None) is attached


def test_failures_are_found_by_resource_and_aspect() -> None:
    failure = ReadFailure(resource=VAULT_ID.upper(), aspect=ReadAspect.KEYS, reason="denied", status_code=403)
    built = estate(read_failures=(failure,))
    assert built.failure(VAULT_ID, ReadAspect.KEYS) is failure
    assert built.failure(VAULT_ID, ReadAspect.DELETED_KEYS, ReadAspect.KEYS) is failure
    assert built.failure(VAULT_ID, ReadAspect.DELETED_KEYS) is None
    assert built.failure(VAULT_ID + "2", ReadAspect.KEYS) is None
    assert built.failures_of(ReadAspect.KEYS) == (failure,)
    assert built.subscription(SUB.upper()) is not None
    assert built.user_assigned_identity(UAI_ID.lower()) is not None
