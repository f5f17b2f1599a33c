"""Time-driven behaviour of the emulated vaults on the sandbox clock: key validity, rotation policies,
near-expiry and expiry events, soft delete, purge protection and scheduled purge."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.keys import KeyClient, KeyRotationLifetimeAction, KeyRotationPolicy, KeyRotationPolicyAction
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

from emulators.bus import SandboxBus
from emulators.clock import SandboxClock
from emulators.keyvault import KeyVaultEmulator, VaultState
from tests.support.keyvault import Admin, Recorder, client_kwargs

pytestmark = pytest.mark.integration

CONTROLLER = "d0000000-0000-0000-0000-000000000001"
DAY = 86400


@dataclass
class Env:
    kv: KeyVaultEmulator
    clock: SandboxClock
    recorder: Recorder
    admin: Admin
    protected: VaultState
    unprotected: VaultState

    def client(self, vault: VaultState) -> KeyClient:
        return KeyClient(vault.uri, self.kv.credential(CONTROLLER), **client_kwargs(self.kv, retry_total=0))

    def crypto(self, key_id: str) -> CryptographyClient:
        return CryptographyClient(key_id, self.kv.credential(CONTROLLER), **client_kwargs(self.kv, retry_total=0))

    def advance(self, days: float) -> int:
        return int(self.admin.ok("POST", "/clock/advance", {"seconds": days * DAY})["events"])

    def now(self) -> int:
        return int(self.clock.now().timestamp())


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    bus = SandboxBus()
    clock = SandboxClock()
    recorder = Recorder().attach(bus)
    policy = [{"objectId": CONTROLLER, "permissions": {"keys": ["all"]}}]
    with KeyVaultEmulator(clock, bus, directory=tmp_path_factory.mktemp("kv")) as kv:
        protected = kv.add_vault("kv-protected", access_policies=policy)
        unprotected = kv.add_vault(
            "kv-unprotected", access_policies=policy, purge_protection=False, enable_soft_delete=False
        )
        yield Env(kv, clock, recorder, Admin(kv), protected, unprotected)


def _inner(exc: pytest.ExceptionInfo[HttpResponseError]) -> str | None:
    inner = exc.value.error.innererror if exc.value.error else None
    return inner.get("code") if isinstance(inner, dict) else getattr(inner, "code", None)


def test_disabled_key_refuses_get_and_crypto(env: Env) -> None:
    client = env.client(env.protected)
    key = client.create_rsa_key("disabled", size=2048, enabled=False)
    assert key.properties.enabled is False
    with pytest.raises(HttpResponseError) as info:
        client.get_key("disabled")
    assert info.value.status_code == 403
    assert _inner(info) == "KeyDisabled"
    with pytest.raises(HttpResponseError) as info:
        env.crypto(key.id).unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"\0" * 256)
    assert info.value.status_code == 403
    client.update_key_properties("disabled", enabled=True)
    assert client.get_key("disabled").properties.enabled is True


def test_not_yet_valid_key_becomes_usable_when_the_clock_passes_nbf(env: Env) -> None:
    from datetime import UTC, datetime

    client = env.client(env.protected)
    nbf = datetime.fromtimestamp(env.now() + 2 * DAY, UTC)
    key = client.create_rsa_key("future", size=2048, not_before=nbf)
    crypto = env.crypto(key.id)
    with pytest.raises(HttpResponseError) as info:
        crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"\0" * 256)
    assert info.value.status_code == 403
    assert _inner(info) == "KeyNotYetValid"
    env.advance(3)
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"k" * 32)
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key).key == b"k" * 32


def test_near_expiry_and_expired_fire_once_per_version(env: Env) -> None:
    from datetime import UTC, datetime

    client = env.client(env.protected)
    exp = datetime.fromtimestamp(env.now() + 40 * DAY, UTC)
    key = client.create_rsa_key("expiring", size=2048, expires_on=exp)
    crypto = env.crypto(key.id)
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"e" * 32)
    env.advance(9)  # 31 days before expiry: the default policy notifies at 30
    assert env.recorder.events_of("KeyNearExpiry", subject="expiring") == []
    env.advance(2)
    near = env.recorder.events_of("KeyNearExpiry", subject="expiring")
    assert len(near) == 1
    assert near[0].data["Id"] == key.id
    assert near[0].data["EXP"] == int(exp.timestamp())
    assert near[0].topic == env.protected.resource_id
    env.advance(1)
    assert len(env.recorder.events_of("KeyNearExpiry", subject="expiring")) == 1
    assert env.recorder.events_of("KeyExpired", subject="expiring") == []
    env.advance(29)
    expired = env.recorder.events_of("KeyExpired", subject="expiring")
    assert len(expired) == 1
    assert expired[0].data["Version"] == key.properties.version
    env.advance(1)
    assert len(env.recorder.events_of("KeyExpired", subject="expiring")) == 1
    assert env.recorder.audits_of("KeyNearExpiryEventGridNotification")
    assert env.recorder.audits_of("KeyExpiredEventGridNotification")
    # an expired key can be read but refuses cryptographic operations
    assert client.get_key("expiring").properties.version == key.properties.version
    with pytest.raises(HttpResponseError) as info:
        crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)
    assert info.value.status_code == 403
    assert _inner(info) == "KeyExpired"


def test_rotation_policy_driven_by_the_clock(env: Env) -> None:
    client = env.client(env.protected)
    first = client.create_rsa_key("auto-rotated", size=3072)
    client.update_key_rotation_policy(
        "auto-rotated",
        KeyRotationPolicy(
            expires_in="P60D",
            lifetime_actions=[
                KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P30D"),
                KeyRotationLifetimeAction(KeyRotationPolicyAction.notify, time_before_expiry="P10D"),
            ],
        ),
    )
    env.advance(29)
    assert len(list(client.list_properties_of_key_versions("auto-rotated"))) == 1
    env.advance(2)
    versions = list(client.list_properties_of_key_versions("auto-rotated"))
    assert len(versions) == 2
    current = client.get_key("auto-rotated")
    assert current.properties.version != first.properties.version
    assert len(current.key.n) * 8 == 3072
    assert current.properties.expires_on is not None
    assert int(current.properties.expires_on.timestamp()) - int(current.properties.created_on.timestamp()) == 60 * DAY
    created = env.recorder.events_of("KeyNewVersionCreated", subject="auto-rotated")
    assert [e.data["Version"] for e in created] == [first.properties.version, current.properties.version]
    assert created[-1].data["EXP"] == int(current.properties.expires_on.timestamp())
    system = [a for a in env.recorder.audits_of("KeyRotate") if a["identity"] is None]
    assert system and system[-1]["properties"]["id"] == current.id
    env.advance(31)
    assert len(list(client.list_properties_of_key_versions("auto-rotated"))) == 3
    # rotation at 30 days comes before notify at 50: no near-expiry for these versions
    assert env.recorder.events_of("KeyNearExpiry", subject="auto-rotated") == []


def test_time_driven_state_is_evaluated_on_requests(env: Env) -> None:
    client = env.client(env.protected)
    client.create_rsa_key("lazy", size=2048)
    client.update_key_rotation_policy(
        "lazy",
        KeyRotationPolicy(
            lifetime_actions=[KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P7D")]
        ),
    )
    env.clock.advance(timedelta(days=8))  # directly: no admin call, no explicit evaluation
    assert len(list(client.list_properties_of_key_versions("lazy"))) == 2


def test_soft_delete_with_purge_protection(env: Env) -> None:
    client = env.client(env.protected)
    key = client.create_rsa_key("protected-key", size=2048)
    assert key.properties.recovery_level == "Recoverable"
    assert key.properties.recoverable_days == 90
    deleting = client.begin_delete_key("protected-key", _polling_interval=0.2)
    deleted = deleting.result()
    deleting.wait()
    assert deleted.scheduled_purge_date == deleted.deleted_date + timedelta(days=90)
    with pytest.raises(HttpResponseError) as info:
        client.purge_deleted_key("protected-key")
    assert info.value.status_code == 403
    with pytest.raises(ResourceExistsError):
        client.create_rsa_key("protected-key", size=2048)
    with pytest.raises(ResourceExistsError):
        client.import_key("protected-key", key.key)
    env.advance(89)
    assert client.get_deleted_key("protected-key").name == "protected-key"
    env.advance(2)  # the scheduled purge date passed: the vault purged it
    with pytest.raises(ResourceNotFoundError):
        client.get_deleted_key("protected-key")
    assert client.create_rsa_key("protected-key", size=2048).properties.version != key.properties.version


def test_vault_without_soft_delete(env: Env) -> None:
    client = env.client(env.unprotected)
    key = client.create_rsa_key("gone", size=2048)
    assert key.properties.recovery_level == "Purgeable"
    assert key.properties.recoverable_days == 0
    deleted = client.begin_delete_key("gone", _polling_interval=0).result()
    assert deleted.recovery_id is None
    with pytest.raises(ResourceNotFoundError):
        client.get_deleted_key("gone")
    assert client.create_rsa_key("gone", size=2048).properties.version != key.properties.version


def test_clock_through_admin_api(env: Env) -> None:
    before = env.admin.ok("GET", "/clock")
    result = env.admin.ok("POST", "/clock/advance", {"duration": "PT1H"})
    after = env.admin.ok("GET", "/clock")
    assert after["offsetSeconds"] - before["offsetSeconds"] == 3600
    assert result["now"] >= before["now"]
    status, _ = env.admin.call("POST", "/clock/advance", {"seconds": -5})
    assert status == 400


def test_published_event_data_matches_the_event_grid_schema(env: Env) -> None:
    import json

    import jsonschema

    from emulators.specs import SPECS_ROOT

    spec_path = SPECS_ROOT / "eventgrid/data-plane/Microsoft.KeyVault/stable/2018-01-01/KeyVault.json"
    definitions = json.loads(spec_path.read_text(encoding="utf-8"))["definitions"]
    env.admin.ok(
        "POST", "/vaults/kv-protected/accessPolicies", {"objectId": "someone", "permissions": {"keys": ["get"]}}
    )
    seen = set()
    for event in env.recorder.events:
        kind = event.event_type.rsplit(".", 1)[-1]
        # NBF / EXP are None when the version has no such attribute (the schema has no null: drop them)
        data = {k: v for k, v in event.data.items() if v is not None}
        jsonschema.validate(data, definitions[f"KeyVault{kind}EventData"])
        assert set(event.data) == {"Id", "VaultName", "ObjectType", "ObjectName", "Version", "NBF", "EXP"}
        seen.add(kind)
    assert seen == {"KeyNewVersionCreated", "KeyNearExpiry", "KeyExpired", "VaultAccessPolicyChanged"}


def test_a_long_clock_jump_replays_every_due_rotation_at_its_time(env: Env) -> None:
    client = env.client(env.protected)
    first = client.create_ec_key("replayed")
    client.update_key_rotation_policy(
        "replayed",
        KeyRotationPolicy(
            lifetime_actions=[KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P10D")]
        ),
    )
    env.advance(35)
    versions = sorted(client.list_properties_of_key_versions("replayed"), key=lambda p: p.created_on)
    assert len(versions) == 4
    assert versions[0].version == first.properties.version
    steps = [int((b.created_on - a.created_on).total_seconds()) for a, b in itertools.pairwise(versions)]
    assert steps == [10 * DAY, 10 * DAY, 10 * DAY]
    events = env.recorder.events_of("KeyNewVersionCreated", subject="replayed")
    assert [e.data["Version"] for e in events] == [v.version for v in versions]
    assert [int(e.event_time.timestamp()) for e in events[1:]] == [int(v.created_on.timestamp()) for v in versions[1:]]
