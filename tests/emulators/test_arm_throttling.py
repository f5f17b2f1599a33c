"""The emulated ARM's throttling and latency (emulators/arm/throttling.py): Azure's token buckets per
subscription and tenant and kind, 429 with Retry-After, the remaining-budget headers, the settings
text, and the answers the unmodified storage management client sees."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.storage import StorageManagementClient

from emulators.arm import ArmEmulator
from emulators.arm.throttling import (
    AZURE_LIMITS,
    DEFAULT_LATENCY,
    ArmThrottling,
    BucketLimit,
    LimitsSettings,
    OperationKind,
    latency_operation,
    operation_kind,
)
from emulators.bus import SandboxBus
from emulators.clock import SandboxClock
from emulators.keyvault import KeyVaultEmulator

pytestmark = pytest.mark.integration

SUB = "5ca1e000-0000-4000-8000-0000000000a1"
OTHER_SUB = "5ca1e000-0000-4000-8000-0000000000b2"
T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
ACCOUNT = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st1"


class FrozenClock(SandboxClock):
    """Sandbox time that moves only when advanced: bucket arithmetic without the machine's speed in it."""

    def now(self) -> datetime:
        return T0 + self.offset


def throttling(clock: SandboxClock, **limits: BucketLimit) -> ArmThrottling:
    settings = LimitsSettings(scale=clock.rate)
    merged = {**settings.limits, **{OperationKind(kind): limit for kind, limit in limits.items()}}
    return ArmThrottling(LimitsSettings(merged, settings.latency, settings.scale), clock)


def test_a_subscription_gets_its_burst_then_429_with_the_time_one_token_takes() -> None:
    clock = FrozenClock()
    throttle = throttling(clock)
    answers = [throttle.admit("PATCH", ACCOUNT, "tenant") for _ in range(200)]
    assert not any(answer.throttled for answer in answers)
    assert answers[0].headers == {"x-ms-ratelimit-remaining-subscription-writes": "199",
                                  "x-ms-ratelimit-remaining-tenant-writes": "199"}
    assert answers[-1].headers["x-ms-ratelimit-remaining-subscription-writes"] == "0"
    refused = throttle.admit("PATCH", ACCOUNT, "tenant")
    assert refused.throttled
    assert refused.retry_after is not None and 0 < refused.retry_after <= 0.1  # refill 10/s: a token in 0.1 s
    assert refused.throttled_headers()["Retry-After"] == "1"  # whole seconds, as Azure sends
    assert refused.throttled_body()["error"]["code"] == "SubscriptionRequestsThrottled"
    assert throttle.throttled == 1
    # Reads and another subscription's writes have their own buckets; the tenant's writes do not.
    assert not throttle.admit("GET", ACCOUNT, "tenant").throttled
    assert throttle.admit("PATCH", ACCOUNT.replace(SUB, OTHER_SUB), "tenant").throttled  # tenant bucket empty
    assert (throttle.throttled, throttle.throttled_by_kind) == (2, {"writes": 2})


def test_buckets_refill_on_the_sandbox_clock() -> None:
    clock = FrozenClock()
    throttle = throttling(clock, writes=BucketLimit(2, 10.0))
    assert [throttle.admit("PUT", ACCOUNT, "t").throttled for _ in range(3)] == [False, False, True]
    clock.advance(timedelta(seconds=1))  # ten tokens' worth: the bucket is full again, never fuller
    assert throttle.admit("PUT", ACCOUNT, "t").headers["x-ms-ratelimit-remaining-subscription-writes"] == "1"


def test_a_drained_bucket_stays_empty_for_as_long_as_the_other_client_takes_its_tokens() -> None:
    clock = FrozenClock()
    throttle = throttling(clock)
    throttle.drain(SUB, OperationKind.WRITES, for_seconds=3.0)
    refused = throttle.admit("PATCH", ACCOUNT, "t")
    assert refused.retry_after is not None and 3.0 < refused.retry_after <= 3.1
    assert refused.headers["x-ms-ratelimit-remaining-subscription-writes"] == "0"


def test_a_scaled_clock_scales_latency_and_retry_after_but_not_the_limits() -> None:
    clock = FrozenClock(rate=10)
    throttle = throttling(clock, writes=BucketLimit(1, 10.0))
    admitted = throttle.admit("PATCH", ACCOUNT, "t")
    assert admitted.delay == pytest.approx(DEFAULT_LATENCY["storage-write"] / 10)
    refused = throttle.admit("PATCH", ACCOUNT, "t")
    assert refused.retry_after is not None and refused.retry_after <= 0.1 / 10 + 1e-3


def test_operation_kinds_and_latencies() -> None:
    assert operation_kind("GET", ACCOUNT) is OperationKind.READS
    assert operation_kind("POST", "/providers/Microsoft.ResourceGraph/resources") is OperationKind.READS
    assert operation_kind("POST", ACCOUNT + "/listKeys") is OperationKind.WRITES
    assert operation_kind("DELETE", ACCOUNT) is OperationKind.DELETES
    assert latency_operation(OperationKind.WRITES, ACCOUNT) == "storage-write"
    assert latency_operation(OperationKind.WRITES, ACCOUNT + "/encryptionScopes/s1") == "storage-write"
    assert latency_operation(OperationKind.WRITES, ACCOUNT + "/listKeys") == "write"


def test_the_settings_text() -> None:
    assert LimitsSettings.parse("") is None
    assert LimitsSettings.parse("off") is None
    azure = LimitsSettings.parse("azure")
    assert azure is not None and dict(azure.limits) == dict(AZURE_LIMITS) and azure.scale == 1.0
    tuned = LimitsSettings.parse("azure, scale=10, writes=50/5, latency.read=0.1, region=NorthEurope")
    assert tuned is not None
    assert (tuned.scale, tuned.limits[OperationKind.WRITES], tuned.latency["read"], tuned.region) == (
        10.0, BucketLimit(50, 5.0), 0.1, "northeurope")
    quiet = LimitsSettings.parse("azure,latency=off")
    assert quiet is not None and set(quiet.latency.values()) == {0.0}
    for bad in ("on", "azure,scale=0", "azure,writes=10", "azure,latency.list=1", "azure,speed=2", "azure,scale"):
        with pytest.raises(ValueError, match="SANDBOX_ARM_LIMITS"):
            LimitsSettings.parse(bad)


def test_limits_need_a_clock_at_their_scale(tmp_path: Path) -> None:
    keyvault = KeyVaultEmulator(SandboxClock(), SandboxBus(), directory=tmp_path)
    with pytest.raises(ValueError, match="scaled 10"):
        ArmEmulator(keyvault=keyvault, limits=LimitsSettings(scale=10))


def test_the_storage_client_sees_azures_headers_and_429(tmp_path: Path) -> None:
    keyvault = KeyVaultEmulator(FrozenClock(), SandboxBus(), directory=tmp_path)
    limits = LimitsSettings({**AZURE_LIMITS, OperationKind.READS: BucketLimit(2, 0.5)}, {"read": 0.0})
    with ArmEmulator(keyvault=keyvault, storage_tick_seconds=3600, limits=limits) as arm:
        arm.ensure_resource_group(SUB, "rg")
        client = StorageManagementClient(arm.credential("c0000000-0000-4000-8000-00000000c0de"), SUB,
                                         base_url=arm.url, connection_verify=arm.ca_path, retry_total=0,
                                         credential_scopes=["https://management.azure.com/.default"])
        seen: list[dict[str, str]] = []
        with client:
            for _ in range(2):
                list(client.storage_accounts.list(
                    raw_response_hook=lambda response: seen.append(dict(response.http_response.headers))))
            with pytest.raises(HttpResponseError) as refused:
                list(client.storage_accounts.list())
    assert [headers["x-ms-ratelimit-remaining-subscription-reads"] for headers in seen] == ["1", "0"]
    assert refused.value.status_code == 429
    assert refused.value.error is not None and refused.value.error.code == "SubscriptionRequestsThrottled"
    assert refused.value.response is not None
    assert refused.value.response.headers["Retry-After"] == "2"  # a token in 2 s at 0.5 per second
