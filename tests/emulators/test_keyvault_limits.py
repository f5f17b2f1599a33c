"""Throttling (429 + Retry-After), fault injection and operation counters of the emulated vaults."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

from emulators.bus import SandboxBus
from emulators.clock import SandboxClock
from emulators.keyvault import KeyVaultEmulator, VaultState
from emulators.keyvault.state import Throttle
from tests.support.keyvault import Admin, Recorder, client_kwargs

pytestmark = pytest.mark.integration

CONTROLLER = "e0000000-0000-0000-0000-000000000001"


@dataclass
class Env:
    kv: KeyVaultEmulator
    recorder: Recorder
    admin: Admin
    vault: VaultState

    @property
    def client(self) -> KeyClient:
        return KeyClient(self.vault.uri, self.kv.credential(CONTROLLER), **client_kwargs(self.kv, retry_total=0))

    def crypto(self, key_id: str) -> CryptographyClient:
        return CryptographyClient(key_id, self.kv.credential(CONTROLLER), **client_kwargs(self.kv, retry_total=0))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    bus = SandboxBus()
    recorder = Recorder().attach(bus)
    with KeyVaultEmulator(SandboxClock(), bus, directory=tmp_path_factory.mktemp("kv")) as kv:
        vault = kv.add_vault("kv-limits", access_policies=[{"objectId": CONTROLLER, "permissions": {"keys": ["all"]}}])
        yield Env(kv, recorder, Admin(kv), vault)


def test_default_throttling_profile_is_azures(env: Env) -> None:
    profile = env.admin.ok("GET", "/vaults/kv-limits/throttling")
    assert profile["enabled"] is False
    assert profile["windowSeconds"] == 10
    assert profile["limits"]["RSA-2048"] == {"software": 4000, "hsm": 2000}
    assert profile["limits"]["RSA-3072"] == {"software": 1000, "hsm": 500}
    assert profile["limits"]["RSA-4096"] == {"software": 500, "hsm": 250}


def test_throttling_answers_429_with_retry_after_per_key_type(env: Env) -> None:
    key = env.client.create_rsa_key("busy", size=2048)
    ec = env.client.create_ec_key("calm")
    env.admin.ok("PUT", "/vaults/kv-limits/throttling", {"enabled": True, "limits": {"RSA-2048": {"software": 3}}})
    env.admin.ok("DELETE", "/vaults/kv-limits/counters")
    crypto = env.crypto(key.id)  # its initial GET of the key counts against the RSA-2048 bucket
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"t" * 32)  # local: public key
    crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)
    crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)
    with pytest.raises(HttpResponseError) as info:
        crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)
    assert info.value.status_code == 429
    assert int(info.value.response.headers["Retry-After"]) >= 1
    assert info.value.error.code == "Throttled"
    assert env.client.get_key("calm").id == ec.id  # another bucket is not throttled
    record = env.recorder.audits_of("KeyUnwrap", status=429)[-1]
    assert record["resultSignature"] == "TooManyRequests"
    assert record["resultType"] == "TooManyRequests"
    counters = env.admin.ok("GET", "/vaults/kv-limits/counters")
    assert counters["throttled"] == 1
    assert counters["byStatus"]["429"] == 1
    assert counters["byOperation"]["KeyUnwrap"] == 3
    assert counters["byKey"]["busy"] == {"KeyGet": 1, "KeyUnwrap": 3}
    assert counters["byKey"]["calm"] == {"KeyGet": 1}
    env.admin.ok("PUT", "/vaults/kv-limits/throttling", {"enabled": False})


class Ticks:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_windows_follow_one_another_each_admitting_the_limit() -> None:
    ticks = Ticks()
    throttle = Throttle(ticks)
    admitted = []
    for at in (0.0, 4.0, 9.0):
        ticks.now = at
        admitted.append(throttle.admit("RSA-2048/software", 3, 10.0))
    assert admitted == [None, None, None]
    ticks.now = 9.5
    assert throttle.admit("RSA-2048/software", 3, 10.0) == pytest.approx(0.5)  # until the window closes
    assert throttle.admit("RSA-2048/software", 3, 10.0) == pytest.approx(0.5)  # a 429 is not counted
    assert throttle.admit("RSA-2048/hsm", 3, 10.0) is None  # another bucket has its own window
    # The next window admits the whole limit again, however late in the last one its transactions came
    # (a sliding window would admit one here, then make it wait).
    answers = []
    for at in (10.0, 10.1, 10.2, 10.3):
        ticks.now = at
        answers.append(throttle.admit("RSA-2048/software", 3, 10.0))
    assert answers[:3] == [None, None, None]
    assert answers[3] == pytest.approx(9.7)
    # After a quiet spell the windows are still 10 s apart from the first: [20, 30) here, not [25, 35).
    answers = []
    for at in (25.0, 26.0, 27.0, 28.0):
        ticks.now = at
        answers.append(throttle.admit("RSA-2048/software", 3, 10.0))
    assert answers[:3] == [None, None, None]
    assert answers[3] == pytest.approx(2.0)


def test_counters_count_every_request_and_reset(env: Env) -> None:
    env.admin.ok("DELETE", "/vaults/kv-limits/counters")
    env.client.create_rsa_key("counted", size=2048)
    list(env.client.list_properties_of_keys())
    counters = env.admin.ok("GET", "/vaults/kv-limits/counters")
    assert counters["byOperation"] == {"KeyCreate": 1, "KeyList": 1}
    assert counters["total"] == 2
    assert env.vault.counters.snapshot()["byKey"] == {"counted": {"KeyCreate": 1}}


def test_injected_errors(env: Env) -> None:
    env.client.create_rsa_key("flaky", size=2048)
    env.admin.ok("PUT", "/vaults/kv-limits/faults", {"errorRate": 1.0, "errorStatus": 503, "operations": ["KeyGet"]})
    with pytest.raises(HttpResponseError) as info:
        env.client.get_key("flaky")
    assert info.value.status_code == 503
    assert [p.name for p in env.client.list_properties_of_key_versions("flaky")]  # other operations unaffected
    assert env.recorder.audits_of("KeyGet", status=503)
    env.admin.ok("PUT", "/vaults/kv-limits/faults", {"latencyMs": 20})
    assert env.client.get_key("flaky").name == "flaky"
    env.admin.ok("PUT", "/vaults/kv-limits/faults", {})


def test_injected_connection_reset(env: Env) -> None:
    env.client.create_rsa_key("reset", size=2048)
    env.admin.ok("PUT", "/vaults/kv-limits/faults", {"resetRate": 1.0, "operations": ["KeyGet"]})
    with pytest.raises((ServiceRequestError, ServiceResponseError)):
        env.client.get_key("reset")
    env.admin.ok("PUT", "/vaults/kv-limits/faults", {})
    assert env.client.get_key("reset").name == "reset"
    assert any(a["resultDescription"] == "Injected fault: connection reset" for a in env.recorder.audits)


def test_invalid_admin_input_is_rejected(env: Env) -> None:
    status, body = env.admin.call("PUT", "/vaults/kv-limits/faults", {"errorRate": 2})
    assert status == 400
    assert "errorRate" in body["error"]
    status, _ = env.admin.call("PUT", "/vaults/kv-limits/networkAcls", {"defaultAction": "Maybe"})
    assert status == 400


def test_hsm_and_software_keys_have_separate_limits(env: Env) -> None:
    hsm = env.client.create_rsa_key("hsm-key", size=2048, hardware_protected=True)
    software = env.client.create_rsa_key("soft-key", size=2048)
    env.admin.ok(
        "PUT",
        "/vaults/kv-limits/throttling",
        {"enabled": True, "limits": {"RSA-2048": {"software": 100, "hsm": 1}}},
    )
    try:
        assert env.client.get_key("hsm-key").id == hsm.id
        with pytest.raises(HttpResponseError) as info:
            env.client.get_key("hsm-key")
        assert info.value.status_code == 429
        assert "RSA-2048 hsm" in info.value.error.message
        assert env.client.get_key("soft-key").id == software.id
    finally:
        env.admin.ok("PUT", "/vaults/kv-limits/throttling", {"enabled": False})
