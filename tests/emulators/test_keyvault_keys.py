"""The emulated Key Vault keys API driven by the unmodified KeyClient / CryptographyClient over HTTPS."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.keys import (
    JsonWebKey,
    KeyClient,
    KeyCurveName,
    KeyRotationLifetimeAction,
    KeyRotationPolicy,
    KeyRotationPolicyAction,
    KeyType,
)
from azure.keyvault.keys.crypto import (
    CryptographyClient,
    EncryptionAlgorithm,
    KeyWrapAlgorithm,
    SignatureAlgorithm,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from emulators.bus import SandboxBus
from emulators.clock import SandboxClock
from emulators.keyvault import KeyVaultEmulator, VaultState
from tests.support.keyvault import Recorder, ResponseLog, client_kwargs
from tests.support.keyvault_contract import OPERATION_IDS, KeysContract, find_spec

pytestmark = pytest.mark.integration

CONTROLLER = "11111111-1111-1111-1111-111111111111"
AUDITED_OPERATIONS = (
    "KeyWrap", "KeyUnwrap", "KeyEncrypt", "KeyDecrypt", "KeyList", "KeyListVersions", "KeyUpdate", "KeyDelete",
    "KeyPurge", "KeyRecover", "KeyRotate", "KeyImport", "KeyGetRotationPolicy", "KeyUpdateRotationPolicy",
    "KeyGetDeleted", "KeyListDeleted", "KeySign", "KeyVerify",
)  # fmt: skip
CRYPTO_ONLY = "22222222-2222-2222-2222-222222222222"  # no keys/get: CryptographyClient must call the vault


class Env:
    def __init__(self, kv: KeyVaultEmulator, vault: VaultState, recorder: Recorder) -> None:
        self.kv = kv
        self.vault = vault
        self.recorder = recorder
        self.log = ResponseLog()
        self.credential = kv.credential(CONTROLLER, appid="cmk-controller")
        self.client = KeyClient(vault.uri, self.credential, **client_kwargs(kv, raw_response_hook=self.log))

    def crypto(self, key_id: str, *, remote_only: bool = False) -> CryptographyClient:
        credential = self.kv.credential(CRYPTO_ONLY) if remote_only else self.credential
        return CryptographyClient(key_id, credential, **client_kwargs(self.kv, raw_response_hook=self.log))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    bus = SandboxBus()
    recorder = Recorder().attach(bus)
    with KeyVaultEmulator(SandboxClock(), bus, directory=tmp_path_factory.mktemp("kv")) as kv:
        vault = kv.add_vault(
            "kv-keys",
            subscription_id="aaaaaaaa-0000-0000-0000-000000000001",
            resource_group="rg-keys",
            soft_delete_retention_days=7,
            purge_protection=False,
            access_policies=[
                {"objectId": CONTROLLER, "permissions": {"keys": ["all"]}},
                {"objectId": CRYPTO_ONLY, "permissions": {"keys": ["wrapKey", "unwrapKey", "encrypt", "verify"]}},
            ],
        )
        yield Env(kv, vault, recorder)


def test_vault_origin_and_resource_id(env: Env) -> None:
    assert env.vault.uri.startswith("https://127.0.0.1:")
    assert env.vault.uri.endswith("/")
    assert env.vault.resource_id == (
        "/subscriptions/aaaaaaaa-0000-0000-0000-000000000001/resourceGroups/rg-keys"
        "/providers/Microsoft.KeyVault/vaults/kv-keys"
    )


def test_unauthenticated_request_gets_the_challenge(env: Env) -> None:
    import urllib.error
    import urllib.request

    from tests.support.keyvault import Admin

    ctx = Admin(env.kv)._ssl
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(env.vault.uri + "keys?api-version=2025-07-01", context=ctx)  # noqa: S310
    assert info.value.code == 401
    challenge = info.value.headers["WWW-Authenticate"]
    assert challenge == (
        f'Bearer authorization="https://login.microsoftonline.com/{env.vault.tenant_id}", '
        'resource="https://vault.azure.net"'
    )
    assert env.recorder.audits_of("Authentication", status=401)


@pytest.mark.parametrize(
    ("kty", "size", "crv"),
    [
        ("RSA", 2048, None),
        ("RSA", 3072, None),
        ("RSA-HSM", 2048, None),
        ("EC", None, "P-256"),
        ("EC-HSM", None, "P-384"),
        ("oct-HSM", 256, None),
    ],
)
def test_create_key_types(env: Env, kty: str, size: int | None, crv: str | None) -> None:
    name = f"create-{kty.lower()}-{size or crv}"
    key = env.client.create_key(name, kty, size=size, curve=crv, tags={"owner": "tests"})
    assert key.key_type == kty
    assert key.id.startswith(env.vault.uri.rstrip("/") + f"/keys/{name}/")
    assert len(key.properties.version) == 32
    assert key.properties.version == key.properties.version.lower()
    assert key.properties.tags == {"owner": "tests"}
    assert key.properties.enabled is True
    assert key.properties.recovery_level == "CustomizedRecoverable+Purgeable"
    assert key.properties.recoverable_days == 7
    if kty.startswith("RSA"):
        assert len(key.key.n) * 8 == size
    if kty.startswith("EC"):
        assert key.key.crv == crv
    events = env.recorder.events_of("KeyNewVersionCreated", subject=name)
    assert len(events) == 1
    event = events[0]
    assert event.topic == env.vault.resource_id
    assert event.data["Id"] == key.id
    assert event.data["VaultName"] == "kv-keys"
    assert event.data["ObjectType"] == "Key"
    assert event.data["Version"] == key.properties.version


def test_create_with_key_ops_and_attributes(env: Env) -> None:
    nbf = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    exp = nbf + timedelta(days=400)
    key = env.client.create_rsa_key(
        "ops-attrs", size=2048, key_operations=["wrapKey", "unwrapKey"], not_before=nbf, expires_on=exp
    )
    assert sorted(key.key_operations) == ["unwrapKey", "wrapKey"]
    assert key.properties.not_before == nbf
    assert key.properties.expires_on == exp
    event = env.recorder.events_of("KeyNewVersionCreated", subject="ops-attrs")[0]
    assert event.data["NBF"] == int(nbf.timestamp())
    assert event.data["EXP"] == int(exp.timestamp())


def test_invalid_create_parameters_are_bad_parameter(env: Env) -> None:
    with pytest.raises(HttpResponseError) as info:
        env.client.create_rsa_key("bad-size", size=1024)
    assert info.value.status_code == 400
    assert info.value.error.code == "BadParameter"
    with pytest.raises(HttpResponseError) as info:
        env.client.create_rsa_key("bad_name!", size=2048)
    assert info.value.status_code == 400


def test_import_get_versions_and_list(env: Env) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = private.private_numbers()

    def b(value: int) -> bytes:
        return value.to_bytes((value.bit_length() + 7) // 8, "big")

    jwk = JsonWebKey(
        kty=KeyType.rsa,
        n=b(numbers.public_numbers.n),
        e=b(numbers.public_numbers.e),
        d=b(numbers.d),
        p=b(numbers.p),
        q=b(numbers.q),
        dp=b(numbers.dmp1),
        dq=b(numbers.dmq1),
        qi=b(numbers.iqmp),
        key_ops=["wrapKey", "unwrapKey", "encrypt", "decrypt"],
    )
    imported = env.client.import_key("imported", jwk, hardware_protected=True, tags={"src": "byok"})
    assert imported.key_type == "RSA-HSM"
    assert imported.key.n == b(numbers.public_numbers.n)
    # the vault's private key is the imported one: unwrap what we wrapped locally
    cek = os.urandom(32)
    wrapped = private.public_key().encrypt(
        cek, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    )
    assert env.crypto(imported.id).unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped).key == cek

    second = env.client.create_rsa_key("imported", size=2048)
    assert env.client.get_key("imported").properties.version == second.properties.version
    assert env.client.get_key("imported", imported.properties.version).key.n == imported.key.n
    versions = {p.version for p in env.client.list_properties_of_key_versions("imported")}
    assert versions == {imported.properties.version, second.properties.version}
    assert len(env.recorder.events_of("KeyNewVersionCreated", subject="imported")) == 2

    names = {p.name for p in env.client.list_properties_of_keys(max_page_size=2)}
    assert {"imported", "ops-attrs"} <= names
    pages = [e for e in env.log.exchanges if e.operation == "KeyList"]
    assert len(pages) >= 2, "maxresults=2 must page through nextLink"


def test_get_missing_key_is_key_not_found(env: Env) -> None:
    with pytest.raises(ResourceNotFoundError) as info:
        env.client.get_key("does-not-exist")
    assert info.value.status_code == 404
    assert info.value.error.code == "KeyNotFound"
    with pytest.raises(ResourceNotFoundError):
        env.client.get_key("imported", "0" * 32)


def test_update_properties(env: Env) -> None:
    key = env.client.create_rsa_key("updatable", size=2048)
    exp = datetime.now(UTC).replace(microsecond=0) + timedelta(days=90)
    updated = env.client.update_key_properties(
        "updatable", key_operations=["wrapKey", "unwrapKey"], expires_on=exp, tags={"a": "b"}
    )
    assert updated.properties.version == key.properties.version
    assert updated.properties.expires_on == exp
    assert updated.properties.tags == {"a": "b"}
    assert sorted(updated.key_operations) == ["unwrapKey", "wrapKey"]
    disabled = env.client.update_key_properties("updatable", key.properties.version, enabled=False)
    assert disabled.properties.enabled is False
    enabled = env.client.update_key_properties("updatable", key.properties.version, enabled=True)
    assert enabled.properties.enabled is True


@pytest.mark.parametrize("alg", [KeyWrapAlgorithm.rsa_oaep, KeyWrapAlgorithm.rsa_oaep_256, KeyWrapAlgorithm.rsa1_5])
def test_wrap_unwrap_remote_roundtrip(env: Env, alg: KeyWrapAlgorithm) -> None:
    key = env.client.get_key("kek") if "kek" in _names(env) else env.client.create_rsa_key("kek", size=2048)
    # a versionless key id makes CryptographyClient call the vault for wrap as well as unwrap
    crypto = env.crypto(key.id)
    cek = os.urandom(32)
    wrapped = crypto.wrap_key(alg, cek)
    assert wrapped.key_id == key.id
    assert crypto.unwrap_key(alg, wrapped.encrypted_key).key == cek
    versionless = env.crypto(f"{env.vault.uri}keys/kek")
    rewrapped = versionless.wrap_key(alg, cek)
    assert versionless.unwrap_key(alg, rewrapped.encrypted_key).key == cek


@pytest.mark.parametrize(
    "alg", [EncryptionAlgorithm.rsa_oaep, EncryptionAlgorithm.rsa_oaep_256, EncryptionAlgorithm.rsa1_5]
)
def test_encrypt_decrypt_roundtrip(env: Env, alg: EncryptionAlgorithm) -> None:
    key = env.client.get_key("kek") if "kek" in _names(env) else env.client.create_rsa_key("kek", size=2048)
    crypto = env.crypto(key.id)
    result = crypto.encrypt(alg, b"plaintext bytes")
    assert crypto.decrypt(alg, result.ciphertext).plaintext == b"plaintext bytes"


def test_public_key_operations_without_get_permission_run_in_the_vault(env: Env) -> None:
    key = env.client.create_rsa_key("remote-ops", size=2048)
    crypto = env.crypto(key.id, remote_only=True)
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"k" * 32)
    assert wrapped.key_id == key.id
    encrypted = crypto.encrypt(EncryptionAlgorithm.rsa_oaep, b"secret")
    # decrypt with the full-permission principal (the remote-only one has no decrypt permission)
    assert env.crypto(key.id).decrypt(EncryptionAlgorithm.rsa_oaep, encrypted.ciphertext).plaintext == b"secret"
    assert env.crypto(key.id).unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key).key == b"k" * 32
    by_key = env.vault.counters.snapshot()["byKey"]["remote-ops"]
    assert by_key["KeyWrap"] == 1
    assert by_key["KeyEncrypt"] == 1
    assert by_key["KeyUnwrap"] == 1


def test_sign_verify_ec(env: Env) -> None:
    key = env.client.create_ec_key("signer", curve=KeyCurveName.p_256)
    crypto = env.crypto(key.id)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"message")
    value = digest.finalize()
    signature = crypto.sign(SignatureAlgorithm.es256, value).signature
    assert crypto.verify(SignatureAlgorithm.es256, value, signature).is_valid
    remote = env.crypto(key.id, remote_only=True)
    assert remote.verify(SignatureAlgorithm.es256, value, signature).is_valid
    assert not remote.verify(SignatureAlgorithm.es256, value, b"\x01" * 64).is_valid


def test_oct_hsm_wrap(env: Env) -> None:
    key = env.client.create_oct_key("aes-kek", size=256, hardware_protected=True)
    crypto = env.crypto(key.id)
    cek = os.urandom(32)
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.aes_256, cek)
    assert crypto.unwrap_key(KeyWrapAlgorithm.aes_256, wrapped.encrypted_key).key == cek


def test_bad_ciphertext_is_bad_parameter(env: Env) -> None:
    key = env.client.create_rsa_key("bad-ct", size=2048)
    with pytest.raises(HttpResponseError) as info:
        env.crypto(key.id).unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"\x00" * 256)
    assert info.value.status_code == 400
    assert info.value.error.code == "BadParameter"


def test_rotate_and_rotation_policy(env: Env) -> None:
    env.client.create_rsa_key("rotating", size=2048)
    default = env.client.get_key_rotation_policy("rotating")
    assert [a.action for a in default.lifetime_actions] == [KeyRotationPolicyAction.notify]
    policy = env.client.update_key_rotation_policy(
        "rotating",
        KeyRotationPolicy(
            expires_in="P90D",
            lifetime_actions=[
                KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P30D"),
                KeyRotationLifetimeAction(KeyRotationPolicyAction.notify, time_before_expiry="P10D"),
            ],
        ),
    )
    assert policy.expires_in == "P90D"
    assert {a.action for a in policy.lifetime_actions} == {
        KeyRotationPolicyAction.rotate,
        KeyRotationPolicyAction.notify,
    }
    assert policy.id == f"{env.vault.uri}keys/rotating/rotationpolicy"
    fetched = env.client.get_key_rotation_policy("rotating")
    assert fetched.expires_in == "P90D"
    rotated = env.client.rotate_key("rotating")
    assert rotated.properties.expires_on is not None  # expiryTime of the policy applies to the new version
    versions = list(env.client.list_properties_of_key_versions("rotating"))
    assert len(versions) == 2
    assert env.recorder.events_of("KeyNewVersionCreated", subject="rotating")[-1].data["Version"] == (
        rotated.properties.version
    )


def test_invalid_rotation_policy_is_bad_parameter(env: Env) -> None:
    env.client.create_rsa_key("bad-policy", size=2048)
    with pytest.raises(HttpResponseError) as info:
        env.client.update_key_rotation_policy(
            "bad-policy",
            KeyRotationPolicy(
                lifetime_actions=[KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P1D")]
            ),
        )
    assert info.value.status_code == 400


def test_delete_get_list_recover_purge(env: Env) -> None:
    key = env.client.create_rsa_key("doomed", size=2048)
    deleting = env.client.begin_delete_key("doomed", _polling_interval=0.2)
    deleted = deleting.result()  # as in Azure: the deleted key, before the deletion has completed
    with pytest.raises(ResourceNotFoundError):
        env.client.get_deleted_key("doomed")  # not listed yet: Azure takes a few seconds
    deleting.wait()
    assert deleted.recovery_id == f"{env.vault.uri}deletedkeys/doomed"
    assert deleted.scheduled_purge_date == deleted.deleted_date + timedelta(days=7)
    assert deleted.properties.version == key.properties.version
    assert env.client.get_deleted_key("doomed").name == "doomed"
    assert "doomed" in {d.name for d in env.client.list_deleted_keys()}
    with pytest.raises(ResourceNotFoundError):
        env.client.get_key("doomed")
    with pytest.raises(ResourceExistsError) as info:
        env.client.create_rsa_key("doomed", size=2048)
    assert info.value.status_code == 409
    assert info.value.error.code == "Conflict"
    recovering = env.client.begin_recover_deleted_key("doomed", _polling_interval=0.2)
    recovered = recovering.result()
    assert recovered.properties.version == key.properties.version
    with pytest.raises(ResourceNotFoundError):
        env.client.get_key("doomed")  # recovery in progress
    recovering.wait()
    assert env.client.get_key("doomed").id == key.id
    env.client.begin_delete_key("doomed", _polling_interval=0.2).wait()
    env.client.purge_deleted_key("doomed")
    with pytest.raises(ResourceNotFoundError):
        env.client.get_deleted_key("doomed")
    assert env.client.create_rsa_key("doomed", size=2048).properties.version != key.properties.version


def test_every_response_matches_the_spec(env: Env) -> None:
    contract = KeysContract(find_spec())
    checked = set()
    for exchange in env.log.exchanges:
        if exchange.operation is None or exchange.status == 401:
            continue
        contract.validate(exchange.operation, exchange.status, exchange.body)
        checked.add(OPERATION_IDS[exchange.operation])
    expected = {
        "CreateKey", "ImportKey", "GetKey", "UpdateKey", "GetKeys", "GetKeyVersions", "DeleteKey",
        "GetDeletedKey", "GetDeletedKeys", "RecoverDeletedKey", "PurgeDeletedKey", "RotateKey",
        "GetKeyRotationPolicy", "UpdateKeyRotationPolicy", "encrypt", "decrypt", "wrapKey", "unwrapKey",
        "sign", "verify",
    }  # fmt: skip
    assert expected <= checked, expected - checked


def test_audit_records_for_successes_and_failures(env: Env) -> None:
    audits = env.recorder.audits
    creates = env.recorder.audits_of("KeyCreate", status=200)
    assert creates
    record = creates[-1]
    assert record["category"] == "AuditEvent"
    assert record["resourceId"] == env.vault.resource_id.upper()
    assert record["resultType"] == "Success"
    assert record["resultSignature"] == "OK"
    assert record["operationVersion"]
    assert record["identity"]["claim"]["oid"] == CONTROLLER
    assert record["identity"]["claim"]["http://schemas.microsoft.com/identity/claims/objectidentifier"] == CONTROLLER
    assert record["identity"]["claim"]["appid"] == "cmk-controller"
    props = record["properties"]
    assert props["id"].startswith(env.vault.uri.rstrip("/") + "/keys/")
    assert props["requestUri"].startswith(env.vault.uri.rstrip("/"))
    assert props["clientInfo"].startswith("azsdk-python-keyvault-keys")
    assert props["isAccessPolicyMatch"] is True
    assert props["isRbacAuthorized"] is False
    assert record["callerIpAddress"] == "10.1.2.3"
    assert record["correlationId"]
    not_found = env.recorder.audits_of("KeyGet", status=404)
    assert not_found and not_found[0]["resultSignature"] == "NotFound"
    assert not_found[0]["resultType"] == "NotFound"
    assert env.recorder.audits_of("KeyUnwrap", status=400)
    assert env.recorder.audits_of("KeyCreate", status=409)[0]["resultType"] == "Conflict"
    for operation in AUDITED_OPERATIONS:
        assert env.recorder.audits_of(operation), operation
    assert all(a["time"].endswith("Z") for a in audits)


def _names(env: Env) -> set[str]:
    with env.vault.lock:
        return set(env.vault.keys)


def test_async_clients(env: Env) -> None:
    import asyncio

    from azure.keyvault.keys.aio import KeyClient as AsyncKeyClient
    from azure.keyvault.keys.crypto.aio import CryptographyClient as AsyncCryptographyClient

    from emulators.keyvault import AsyncSandboxCredential

    async def run() -> bytes:
        credential = AsyncSandboxCredential(CONTROLLER)
        async with AsyncKeyClient(env.vault.uri, credential, **client_kwargs(env.kv)) as client:
            key = await client.create_rsa_key("async-key", size=2048)
            async with AsyncCryptographyClient(key.id, credential, **client_kwargs(env.kv)) as crypto:
                wrapped = await crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"a" * 32)
                return (await crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)).key

    assert asyncio.run(run()) == b"a" * 32


def test_raw_protocol_errors(env: Env) -> None:
    import json
    import urllib.error
    import urllib.request

    from emulators.keyvault import Principal, encode_token
    from tests.support.keyvault import Admin

    env.client.create_rsa_key("raw-key", size=2048)
    env.client.create_ec_key("raw-key-2")
    ctx = Admin(env.kv)._ssl
    good = encode_token(Principal(CONTROLLER), audience="https://vault.azure.net")

    def call(path: str, token: str | None, method: str = "GET") -> tuple[int, dict[str, object]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(env.vault.origin + path, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, context=ctx) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    status, body = call("/keys", good)
    assert status == 400 and body["error"]["code"] == "BadParameter"  # no api-version
    status, body = call("/nothing-here?api-version=2025-07-01", good)
    assert status == 400
    status, body = call("/keys?api-version=2025-07-01", "not-a-sandbox-token")
    assert status == 401 and body["error"]["code"] == "Unauthorized"
    wrong_audience = encode_token(Principal(CONTROLLER), audience="https://management.azure.com")
    status, body = call("/keys?api-version=2025-07-01", wrong_audience)
    assert status == 401 and "AKV10022" in str(body["error"]["message"])
    status, body = call("/keys?api-version=2025-07-01&maxresults=1", good)
    assert status == 200 and len(body["value"]) == 1 and "$skiptoken=1" in str(body["nextLink"])
    status, body = call("/keys/raw-key//wrapkey?api-version=2025-07-01", good, method="POST")
    assert status == 400 and body["error"]["code"] == "BadParameter"  # no alg / value


# ---- backup and restore ---------------------------------------------------------------------------------


def other_vault(env: Env, name: str, subscription_id: str) -> KeyClient:
    vault = env.kv.add_vault(name, subscription_id=subscription_id, resource_group="rg-keys",
                             soft_delete_retention_days=7, purge_protection=False,
                             access_policies=[{"objectId": CONTROLLER, "permissions": {"keys": ["all"]}}])
    return KeyClient(vault.uri, env.credential, **client_kwargs(env.kv))


def test_a_backup_restores_every_version_into_a_vault_of_the_same_subscription(env: Env) -> None:
    name = "backed-up"
    first = env.client.create_rsa_key(name, size=2048)
    second = env.client.rotate_key(name)
    wrapped = env.crypto(first.id).wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"k" * 32).encrypted_key
    blob = env.client.backup_key(name)
    assert isinstance(blob, bytes) and b"backed-up" not in blob  # opaque: no name, no key material

    twin = other_vault(env, "kv-restore-same", env.vault.subscription_id)
    restored = twin.restore_key_backup(blob)
    assert (restored.name, restored.properties.version) == (name, second.properties.version)
    versions = {props.version for props in twin.list_properties_of_key_versions(name)}
    assert versions == {first.properties.version, second.properties.version}
    old_in_twin = f"{twin.vault_url.rstrip('/')}/keys/{name}/{first.properties.version}"
    unwrapped = CryptographyClient(old_in_twin, env.credential, **client_kwargs(env.kv)).unwrap_key(
        KeyWrapAlgorithm.rsa_oaep_256, wrapped)
    assert unwrapped.key == b"k" * 32  # the same material: what the original wrapped, the restore unwraps

    with pytest.raises(ResourceExistsError):
        twin.restore_key_backup(blob)  # the name is taken there now


def test_a_backup_does_not_restore_into_another_subscription_or_from_garbage(env: Env) -> None:
    env.client.create_rsa_key("stays-home", size=2048)
    blob = env.client.backup_key("stays-home")
    elsewhere = other_vault(env, "kv-restore-other", "bbbbbbbb-0000-0000-0000-000000000002")
    with pytest.raises(HttpResponseError, match="same subscription"):
        elsewhere.restore_key_backup(blob)
    with pytest.raises(HttpResponseError, match="not a key backup"):
        elsewhere.restore_key_backup(b"not a backup")
