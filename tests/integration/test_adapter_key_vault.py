"""KeyVaultKeys through the unmodified KeyClient against the emulated Key Vault over HTTPS.

The vault is reached as in Azure: at ``https://kv-adapter.vault.azure.net`` (through the sandbox's proxy,
HTTPS_PROXY), with the client's challenge-resource check on, as the product always has it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from azure.keyvault.keys import KeyClient, KeyRotationLifetimeAction, KeyRotationPolicy, KeyRotationPolicyAction

from controller.adapters.key_vault import KeyVaultKeys, KeyVaults
from controller.errors import Forbidden, InvalidKeyId, NotFound, TransientError
from controller.model import KeyRef, VaultOrigin, parse_vault_origin
from emulators.egress_proxy import EgressProxy
from emulators.keyvault import KeyVaultEmulator, VaultState
from emulators.keyvault.state import FaultConfig
from tests.support.egress import through_proxy

pytestmark = pytest.mark.integration

CONTROLLER = "c0000000-0000-4000-8000-0000000000a1"
STRANGER = "c0000000-0000-4000-8000-0000000000a2"


@dataclass
class Env:
    kv: KeyVaultEmulator
    vault: VaultState
    origin: VaultOrigin

    def adapter(self, principal: str = CONTROLLER, *, retry_total: int = 0) -> KeyVaultKeys:
        return KeyVaultKeys(
            self.origin, self.kv.credential(principal), connection_verify=self.kv.ca_path, retry_total=retry_total
        )

    def sdk(self) -> KeyClient:
        credential = self.kv.credential(CONTROLLER)
        return KeyClient(self.vault.uri, credential, connection_verify=self.kv.ca_path, retry_total=0)

    def key(self, name: str) -> KeyRef:
        return KeyRef(self.origin, name)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with (
        EgressProxy() as proxy,
        KeyVaultEmulator(directory=tmp_path_factory.mktemp("adapter-kv"), proxy=proxy) as kv,
        through_proxy(proxy),
    ):
        vault = kv.add_vault(
            "kv-adapter",
            soft_delete_retention_days=7,
            access_policies=[{"objectId": CONTROLLER, "permissions": {"keys": ["all"]}}],
        )
        # A cloud vault host, as CMK_VAULTS names it in Azure: no custom origin involved.
        origin = parse_vault_origin(vault.uri)
        assert origin.name == "kv-adapter" and origin.url == "https://kv-adapter.vault.azure.net"
        yield Env(kv, vault, origin)
        assert proxy.refused == []  # nothing was sent anywhere but the sandbox's vault


@pytest.fixture
def counters(env: Env) -> Iterator[None]:
    env.vault.counters.reset()
    yield
    env.vault.throttling.enabled = False
    env.vault.faults = FaultConfig()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_key_state_reads_every_version_with_one_listing(env: Env, counters: None) -> None:
    sdk = env.sdk()
    name = unique("state")
    now = datetime.now(UTC).replace(microsecond=0)
    first = sdk.create_rsa_key(name, size=2048, not_before=now - timedelta(days=1), expires_on=now + timedelta(days=90))
    second = sdk.create_rsa_key(name, size=2048)
    sdk.update_key_properties(name, second.properties.version, enabled=False)
    third = sdk.create_rsa_key(name, size=2048)
    env.vault.counters.reset()

    with env.adapter() as keys:
        state = keys.get_key_state(env.key(name).with_version(first.properties.version or ""))

    assert state.key == env.key(name)
    assert state.reachable
    by_version = {info.version: info for info in state.versions}
    assert set(by_version) == {first.properties.version, second.properties.version, third.properties.version}
    assert by_version[first.properties.version or ""].expires == now + timedelta(days=90)
    assert by_version[first.properties.version or ""].not_before == now - timedelta(days=1)
    assert by_version[second.properties.version or ""].enabled is False
    assert all(info.created.utcoffset() == timedelta(0) for info in state.versions)
    # Creation times have one-second resolution, so versions made within a second tie on `created`.
    assert state.latest_enabled is not None
    assert state.latest_enabled.version in {first.properties.version, third.properties.version}
    # Only such a tie among the newest enabled versions costs one more call: the vault's current version.
    newest = sorted((info.created for info in state.versions if info.enabled), reverse=True)
    tie = newest[0] == newest[1]
    assert state.current_version == (third.properties.version if tie else None)
    snapshot = env.vault.counters.snapshot()
    assert snapshot["byOperation"] == {"KeyListVersions": 1, **({"KeyGet": 1} if tie else {})}
    assert snapshot["total"] == 1 + tie


def test_rotate_returns_the_new_version(env: Env, counters: None) -> None:
    name = unique("rotate")
    created = env.sdk().create_rsa_key(name, size=3072)
    with env.adapter() as keys:
        rotated = keys.rotate_key(env.key(name))
        state = keys.get_key_state(env.key(name))
    assert rotated.version != created.properties.version
    assert rotated.enabled
    # Key Vault's timestamps have one-second resolution: the two versions may tie on creation time.
    assert rotated in state.versions
    assert len(state.versions) == 2


def test_rotation_policy(env: Env, counters: None) -> None:
    name = unique("policy")
    sdk = env.sdk()
    sdk.create_rsa_key(name, size=2048)
    sdk.update_key_rotation_policy(
        name,
        KeyRotationPolicy(),
        lifetime_actions=[
            KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P90D"),
            KeyRotationLifetimeAction(KeyRotationPolicyAction.notify, time_before_expiry="P30D"),
        ],
        expires_in="P2Y",
    )
    with env.adapter() as keys:
        policy = keys.get_rotation_policy(env.key(name))
    assert policy.key == env.key(name)
    assert policy.expires_after == "P2Y"
    assert [(a.action.lower(), a.time_after_create, a.time_before_expiry) for a in policy.lifetime_actions] == [
        ("rotate", "P90D", None),
        ("notify", None, "P30D"),
    ]
    assert [a.time_after_create for a in policy.rotate_actions] == ["P90D"]


def test_default_rotation_policy_has_no_rotate_action(env: Env, counters: None) -> None:
    name = unique("nopolicy")
    env.sdk().create_rsa_key(name, size=2048)
    with env.adapter() as keys:
        policy = keys.get_rotation_policy(env.key(name))
    assert policy.rotate_actions == ()


def test_deleted_keys(env: Env, counters: None) -> None:
    name = unique("deleted")
    sdk = env.sdk()
    sdk.create_rsa_key(name, size=2048)
    sdk.begin_delete_key(name).wait()
    with env.adapter() as keys:
        listed = {item.key.name: item for item in keys.list_deleted_keys()}
        deleted = keys.get_deleted_key(name)
        with pytest.raises(NotFound):
            keys.get_deleted_key(unique("never"))
        with pytest.raises(NotFound):
            keys.get_key_state(env.key(name))
    assert name in listed
    assert deleted == listed[name]
    assert deleted.key == env.key(name)
    assert deleted.deleted_on is not None
    assert deleted.scheduled_purge is not None
    assert deleted.scheduled_purge - deleted.deleted_on == timedelta(days=7)


def test_missing_key_is_not_found(env: Env, counters: None) -> None:
    with env.adapter() as keys, pytest.raises(NotFound, match="list versions of"):
        keys.get_key_state(env.key(unique("missing")))


def test_no_permission_is_forbidden(env: Env, counters: None) -> None:
    name = unique("private")
    env.sdk().create_rsa_key(name, size=2048)
    with env.adapter(STRANGER) as keys:
        with pytest.raises(Forbidden, match="403"):
            keys.rotate_key(env.key(name))
        with pytest.raises(Forbidden, match="403"):
            keys.get_rotation_policy(env.key(name))
        state = keys.get_key_state(env.key(name))  # the planner records the vault as unreadable
    assert (state.reachable, state.versions) == (False, ())
    assert "HTTP 403" in state.unreachable_detail


def test_a_failing_vault_reads_as_unreachable(env: Env, counters: None) -> None:
    name = unique("down")
    env.sdk().create_rsa_key(name, size=2048)
    env.vault.faults = FaultConfig(error_rate=1.0, error_status=503, operations=["KeyListVersions"])
    env.vault.counters.reset()
    with env.adapter(retry_total=1) as keys:
        state = keys.get_key_state(env.key(name))
    assert not state.reachable
    assert "HTTP 503" in state.unreachable_detail
    assert env.vault.counters.snapshot()["byStatus"] == {"503": 2}  # the SDK retried once first


def test_throttling_is_transient_with_retry_after(env: Env, counters: None) -> None:
    name = unique("busy")
    env.sdk().create_rsa_key(name, size=2048)
    env.vault.throttling.limits["RSA-2048"]["software"] = 1
    env.vault.throttling.enabled = True
    try:
        with env.adapter() as keys:
            keys.get_key_state(env.key(name))
            with pytest.raises(TransientError) as caught:
                keys.get_key_state(env.key(name))
    finally:
        env.vault.throttling.limits["RSA-2048"]["software"] = 4000
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 10
    assert env.vault.counters.snapshot()["throttled"] == 1


def test_service_unavailable_is_transient(env: Env, counters: None) -> None:
    env.vault.faults = FaultConfig(error_rate=1.0, error_status=503, operations=["KeyRotate"])
    name = unique("flaky")
    env.sdk().create_rsa_key(name, size=2048)
    with env.adapter() as keys, pytest.raises(TransientError, match="503"):
        keys.rotate_key(env.key(name))


def test_a_key_of_another_vault_is_refused(env: Env) -> None:
    other = KeyRef(parse_vault_origin("contoso.vault.azure.net"), "k")
    with env.adapter() as keys, pytest.raises(InvalidKeyId):
        keys.get_key_state(other)


def test_sandbox_ca_is_trusted_through_requests_ca_bundle(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """azure-core's requests transport honours REQUESTS_CA_BUNDLE; SSL_CERT_FILE alone is not enough."""
    name = unique("trust")
    env.sdk().create_rsa_key(name, size=2048)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", env.kv.ca_path)
    with KeyVaultKeys(env.origin, env.kv.credential(CONTROLLER), retry_total=0) as keys:
        untrusted = keys.get_key_state(env.key(name))
        with pytest.raises(TransientError, match="TLS: the server's certificate is not trusted"):
            keys.rotate_key(env.key(name))
    assert not untrusted.reachable
    assert "TLS: the server's certificate is not trusted" in untrusted.unreachable_detail
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", env.kv.ca_path)
    with KeyVaultKeys(env.origin, env.kv.credential(CONTROLLER), retry_total=0) as keys:
        assert len(keys.get_key_state(env.key(name)).versions) == 1


def test_key_vaults_builds_one_client_per_origin(env: Env) -> None:
    name = unique("factory")
    env.sdk().create_rsa_key(name, size=2048)
    vaults = KeyVaults(env.kv.credential(CONTROLLER), connection_verify=env.kv.ca_path, retry_total=0)
    try:
        assert vaults(env.origin) is vaults(env.origin)
        assert len(vaults(env.origin).get_key_state(env.key(name)).versions) == 1
    finally:
        vaults.close()
