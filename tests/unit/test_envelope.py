"""Envelopes as azure-storage-blob really writes them: parse, validate, serialise, re-wrap locally.

The fixtures come from the library's own client-side encryption code (``encrypt_blob``, the function
``upload_blob`` calls for single-shot uploads) with a key-encryption key over a real RSA key, and are
decrypted again with the library's own ``decrypt_blob``. Test code may import azure; the core may not.
"""

from __future__ import annotations

import base64
import functools
import json
import string
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from azure.storage.blob._encryption import (
    _dict_to_encryption_data,
    _GCMRegionNonceValidator,
    decrypt_blob,
    encrypt_blob,
    generate_blob_encryption_data,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.envelope import (
    MAX_ENVELOPE_CHARS,
    Envelope,
    MalformedReason,
    WrappedContentKey,
    find_envelope,
    parse_envelope,
)
from controller.errors import MalformedEnvelope, PermanentError
from controller.rewrap.wrapping import RsaPublicKeyWrapper

pytestmark = pytest.mark.unit

VAULT = "https://contoso.vault.azure.net"
OLD_VERSION = "1" * 32
NEW_VERSION = "2" * 32
OLD_KEY_ID = f"{VAULT}/keys/blob-kek/{OLD_VERSION}"
NEW_KEY_ID = f"{VAULT}/keys/blob-kek/{NEW_VERSION}"


# -- library-backed helpers (shared with test_rewrap_engine) ----------------------------------------


@functools.cache
def rsa_key(label: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    """One RSA key per label for the whole session: key generation is the slow part of these tests."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def jose_padding(algorithm: str) -> padding.AsymmetricPadding:
    # Written independently of controller.rewrap.wrapping.oaep_padding, so the tests check it rather than echo it.
    if algorithm == "RSA-OAEP":
        # JOSE's RSA-OAEP is defined with SHA-1; Key Vault and the SDKs use it as such.
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303
    if algorithm == "RSA-OAEP-256":
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    if algorithm == "RSA1_5":
        return padding.PKCS1v15()
    raise ValueError(algorithm)


@dataclass
class RsaKek:
    """The KeyEncryptionKey interface azure-storage-blob takes (wrap_key, unwrap_key, get_kid, ...)."""

    kid: str
    private_key: rsa.RSAPrivateKey
    algorithm: str = "RSA-OAEP"

    def wrap_key(self, key: bytes) -> bytes:
        return self.private_key.public_key().encrypt(key, jose_padding(self.algorithm))

    def unwrap_key(self, key: bytes, algorithm: str) -> bytes:
        return self.private_key.decrypt(key, jose_padding(algorithm))

    def get_kid(self) -> str:
        return self.kid

    def get_key_wrap_algorithm(self) -> str:
        return self.algorithm


def old_kek(algorithm: str = "RSA-OAEP") -> RsaKek:
    return RsaKek(OLD_KEY_ID, rsa_key("old"), algorithm)


def new_kek(algorithm: str = "RSA-OAEP") -> RsaKek:
    return RsaKek(NEW_KEY_ID, rsa_key("new"), algorithm)


def library_encrypt(plaintext: bytes, kek: RsaKek, protocol: str) -> tuple[str, bytes]:
    """(encryptiondata value, stored bytes) exactly as upload_blob would store them.

    The library writes 1.0 and 2.0 only; 2.1 (which it reads) is derived from a 2.0 blob by
    re-wrapping its content key with the 2.1 payload prefix, as a 2.1 writer would have wrapped it.
    """
    if protocol != "2.1":
        return encrypt_blob(plaintext, kek, protocol)
    value, stored = encrypt_blob(plaintext, kek, "2.0")
    document = json.loads(value)
    wrapped = document["WrappedContentKey"]
    payload = kek.unwrap_key(base64.b64decode(wrapped["EncryptedKey"]), wrapped["Algorithm"])
    assert payload[:8] == b"2.0\0\0\0\0\0"
    wrapped["EncryptedKey"] = base64.b64encode(kek.wrap_key(b"2.1\0\0\0\0\0" + payload[8:])).decode()
    document["EncryptionAgent"]["Protocol"] = "2.1"
    return json.dumps(document), stored


def library_decrypt(value: str, stored: bytes, kek: RsaKek, length: int) -> bytes:
    """Decrypt a whole blob with the library's download-path decryption."""
    headers = {"x-ms-meta-encryptiondata": value, "x-ms-blob-type": "BlockBlob"}
    if json.loads(value)["EncryptionAgent"]["Protocol"] == "1.0":
        return bytes(decrypt_blob(True, kek, None, stored, 0, 0, headers))
    validator = _GCMRegionNonceValidator()
    return bytes(decrypt_blob(True, kek, None, stored, 0, length, headers, nonce_validator=validator))


@functools.cache
def library_envelope(protocol: str) -> tuple[str, bytes]:
    return library_encrypt(b"fixture plaintext", old_kek(), protocol)


# -- what the library writes -------------------------------------------------------------------------


def test_parses_what_the_library_writes_for_protocol_1_0() -> None:
    value, _ = library_envelope("1.0")
    envelope = parse_envelope(value)

    assert envelope.protocol == "1.0"
    assert envelope.encryption_algorithm == "AES_CBC_256"
    assert envelope.wrapped_key.key_id == OLD_KEY_ID
    assert envelope.wrapped_key.algorithm == "RSA-OAEP"
    assert len(envelope.wrapped_key.encrypted_key) == 256
    assert envelope.content_iv is not None and len(envelope.content_iv) == 16
    assert envelope.region_info is None
    assert envelope.encryption_library is not None and envelope.encryption_library.startswith("Python 12.")
    assert envelope.encryption_mode == "FullBlob"
    assert envelope.payload_prefix == b""


@pytest.mark.parametrize("protocol", ["2.0", "2.1"])
def test_parses_protocol_2(protocol: str) -> None:
    value, _ = library_envelope(protocol)
    envelope = parse_envelope(value)

    assert envelope.protocol == protocol
    assert envelope.encryption_algorithm == "AES_GCM_256"
    assert envelope.content_iv is None
    assert envelope.region_info is not None
    assert (envelope.region_info.data_length, envelope.region_info.nonce_length) == (4 * 1024 * 1024, 12)
    assert envelope.region_info.tag_length is None  # the Python library does not write TagLength
    assert envelope.payload_prefix == protocol.encode().ljust(8, b"\0")


def test_library_writes_this_exact_layout() -> None:
    """Pin the facts the module docstring states, so a library upgrade that changes them fails here."""
    v1, _ = library_envelope("1.0")
    v2, _ = library_envelope("2.0")
    assert list(json.loads(v1)) == [
        "WrappedContentKey",
        "EncryptionAgent",
        "ContentEncryptionIV",
        "KeyWrappingMetadata",
        "EncryptionMode",
    ]
    assert list(json.loads(v2)) == [
        "WrappedContentKey",
        "EncryptionAgent",
        "EncryptedRegionInfo",
        "KeyWrappingMetadata",
        "EncryptionMode",
    ]
    assert list(json.loads(v2)["WrappedContentKey"]) == ["KeyId", "EncryptedKey", "Algorithm"]
    assert list(json.loads(v2)["EncryptionAgent"]) == ["Protocol", "EncryptionAlgorithm"]
    assert json.loads(v2)["EncryptedRegionInfo"] == {"DataLength": 4194304, "NonceLength": 12}
    assert v2.startswith('{"WrappedContentKey": {"KeyId": ')  # json.dumps default separators
    # The 2.0 payload is the protocol, NUL-padded to 8 bytes, then the 32-byte content key.
    wrapped = base64.b64decode(json.loads(v2)["WrappedContentKey"]["EncryptedKey"])
    payload = old_kek().unwrap_key(wrapped, "RSA-OAEP")
    assert payload[:8] == b"2.0\0\0\0\0\0" and len(payload) == 40


@pytest.mark.parametrize("protocol", ["1.0", "2.0"])
def test_chunked_upload_path_writes_the_same_envelope(protocol: str) -> None:
    """Large uploads build the envelope with generate_blob_encryption_data and encrypt chunk by chunk."""
    content_key, _, value = generate_blob_encryption_data(old_kek(), protocol)
    assert content_key is not None and value is not None
    envelope = parse_envelope(value)
    assert envelope.protocol == protocol
    assert envelope.to_metadata_value() == value
    payload = old_kek().unwrap_key(envelope.wrapped_key.encrypted_key, "RSA-OAEP")
    envelope.check_payload(payload)
    assert payload[len(envelope.payload_prefix) :] == content_key


@pytest.mark.parametrize("protocol", ["1.0", "2.0", "2.1"])
def test_unchanged_envelope_serialises_to_its_source_byte_for_byte(protocol: str) -> None:
    value, _ = library_envelope(protocol)
    assert parse_envelope(value).to_metadata_value() == value


def test_compact_json_from_other_sdks_keeps_its_style() -> None:
    value, _ = library_envelope("2.0")
    compact = json.dumps(json.loads(value), separators=(",", ":"))
    envelope = parse_envelope(compact)
    assert envelope.to_metadata_value() == compact

    rewrapped = envelope.with_wrapped_key(WrappedContentKey(NEW_KEY_ID, b"\x01" * 256, "RSA-OAEP-256"))
    assert ", " not in rewrapped.to_metadata_value()


def test_json_in_any_other_layout_is_rewritten_in_the_librarys_own() -> None:
    """Neither the library's separators nor compact JSON: a re-wrap writes what the library would."""
    document = json.loads(library_envelope("2.0")[0])
    envelope = parse_envelope(json.dumps(document, indent=1))
    new_wrapped = WrappedContentKey(NEW_KEY_ID, b"\x07" * 256, "RSA-OAEP-256")
    text = envelope.with_wrapped_key(new_wrapped).to_metadata_value()
    assert text == json.dumps(json.loads(text))


@pytest.mark.parametrize("protocol", ["1.0", "2.0", "2.1"])
def test_rewrapped_envelope_changes_only_the_wrapped_key(protocol: str) -> None:
    value, _ = library_envelope(protocol)
    original = json.loads(value)
    original["FutureField"] = {"kept": True}  # a field this code does not know is kept too
    source = json.dumps(original)

    envelope = parse_envelope(source)
    new_wrapped = WrappedContentKey(NEW_KEY_ID, b"\x07" * 256, "RSA-OAEP-256")
    text = envelope.with_wrapped_key(new_wrapped).to_metadata_value()
    written = json.loads(text)

    assert list(written) == list(original)
    assert list(written["WrappedContentKey"]) == ["KeyId", "EncryptedKey", "Algorithm"]
    assert written["WrappedContentKey"] == {
        "KeyId": NEW_KEY_ID,
        "EncryptedKey": base64.b64encode(b"\x07" * 256).decode(),
        "Algorithm": "RSA-OAEP-256",
    }
    assert {name: field for name, field in written.items() if name != "WrappedContentKey"} == {
        name: field for name, field in original.items() if name != "WrappedContentKey"
    }
    assert text == json.dumps(written)  # the library's own serialisation of the same document
    reparsed = parse_envelope(text)
    assert reparsed.wrapped_key == new_wrapped
    assert reparsed.content_iv == envelope.content_iv and reparsed.region_info == envelope.region_info
    # and the library itself accepts it
    assert _dict_to_encryption_data(written).wrapped_content_key.key_id == NEW_KEY_ID


@pytest.mark.parametrize("protocol", ["1.0", "2.0", "2.1"])
def test_library_still_decrypts_after_a_local_rewrap_to_the_new_version(protocol: str) -> None:
    plaintext = b"the quick brown fox " * 1000
    value, stored = library_encrypt(plaintext, old_kek(), protocol)
    envelope = parse_envelope(value)
    payload = old_kek().unwrap_key(envelope.wrapped_key.encrypted_key, envelope.wrapped_key.algorithm)
    envelope.check_payload(payload)

    wrapper = RsaPublicKeyWrapper(NEW_KEY_ID, rsa_key("new").public_key())
    rewrapped = envelope.with_wrapped_key(
        WrappedContentKey(NEW_KEY_ID, wrapper.wrap("RSA-OAEP-256", payload), "RSA-OAEP-256")
    ).to_metadata_value()

    assert library_decrypt(rewrapped, stored, new_kek(), len(plaintext)) == plaintext
    with pytest.raises(ValueError, match="does not match the id"):
        library_decrypt(rewrapped, stored, old_kek(), len(plaintext))


# -- the unwrapped payload -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "payload", "fits"),
    [
        ("1.0", b"k" * 32, True),
        ("1.0", b"k" * 31, False),
        ("1.0", b"2.0\0\0\0\0\0" + b"k" * 32, False),
        ("2.0", b"2.0\0\0\0\0\0" + b"k" * 32, True),
        ("2.0", b"2.1\0\0\0\0\0" + b"k" * 32, False),
        ("2.0", b"k" * 32, False),
        ("2.0", b"2.0\0\0\0\0\0" + b"k" * 16, False),
        ("2.1", b"2.1\0\0\0\0\0" + b"k" * 32, True),
        ("2.1", b"2.0\0\0\0\0\0" + b"k" * 32, False),
    ],
)
def test_payload_must_fit_the_protocol(protocol: str, payload: bytes, fits: bool) -> None:
    envelope = parse_envelope(library_envelope(protocol)[0])
    if fits:
        envelope.check_payload(payload)
        return
    with pytest.raises(MalformedEnvelope) as caught:
        envelope.check_payload(payload)
    assert caught.value.reason == MalformedReason.PAYLOAD_MISMATCH
    assert caught.value.detail == f"unwrapped payload does not match protocol {protocol}"
    assert "kkkk" not in str(caught.value)


# -- validation ------------------------------------------------------------------------------------------


def _mutated(protocol: str, change: str) -> str:
    document = json.loads(library_envelope(protocol)[0])
    wrapped, agent = document["WrappedContentKey"], document["EncryptionAgent"]
    match change:
        case "no WrappedContentKey":
            del document["WrappedContentKey"]
        case "no KeyId":
            del wrapped["KeyId"]
        case "empty KeyId":
            wrapped["KeyId"] = ""
        case "KeyId with space":
            wrapped["KeyId"] = OLD_KEY_ID + " x"
        case "numeric KeyId":
            wrapped["KeyId"] = 42
        case "no EncryptedKey":
            del wrapped["EncryptedKey"]
        case "EncryptedKey not base64":
            wrapped["EncryptedKey"] = "not base64!"
        case "EncryptedKey unpadded":
            wrapped["EncryptedKey"] = wrapped["EncryptedKey"].rstrip("=") or "AA"
        case "EncryptedKey empty":
            wrapped["EncryptedKey"] = ""
        case "EncryptedKey too long":
            wrapped["EncryptedKey"] = base64.b64encode(b"x" * 1025).decode()
        case "no Algorithm":
            del wrapped["Algorithm"]
        case "Algorithm null":
            wrapped["Algorithm"] = None
        case "no EncryptionAgent":
            del document["EncryptionAgent"]
        case "EncryptionAgent list":
            document["EncryptionAgent"] = [agent]
        case "Protocol 3.0":
            agent["Protocol"] = "3.0"
        case "Protocol number":
            agent["Protocol"] = 2.0
        case "CBC under 2.0":
            agent["EncryptionAlgorithm"] = "AES_CBC_256"
        case "GCM under 1.0":
            agent["EncryptionAlgorithm"] = "AES_GCM_256"
        case "no IV":
            del document["ContentEncryptionIV"]
        case "short IV":
            document["ContentEncryptionIV"] = base64.b64encode(b"x" * 8).decode()
        case "region info under 1.0":
            document["EncryptedRegionInfo"] = {"DataLength": 4194304, "NonceLength": 12}
        case "IV under 2.0":
            document["ContentEncryptionIV"] = base64.b64encode(b"x" * 16).decode()
        case "no region info":
            del document["EncryptedRegionInfo"]
        case "DataLength zero":
            document["EncryptedRegionInfo"]["DataLength"] = 0
        case "NonceLength bool":
            document["EncryptedRegionInfo"]["NonceLength"] = True
        case "NonceLength float":
            document["EncryptedRegionInfo"]["NonceLength"] = 12.0
        case "TagLength string":
            document["EncryptedRegionInfo"]["TagLength"] = "16"
        case "KeyWrappingMetadata string":
            document["KeyWrappingMetadata"] = "Python"
        case "EncryptionMode number":
            document["EncryptionMode"] = 1
        case "WrappedContentKey string":
            document["WrappedContentKey"] = OLD_KEY_ID
        case "KeyId of 2049 characters" | "KeyId of 2048 characters":
            wrapped["KeyId"] = (OLD_KEY_ID + "0" * 2048)[: int(change.split()[2])]
        case "EncryptedKey not ASCII":
            wrapped["EncryptedKey"] = "\u00c5" + wrapped["EncryptedKey"][1:]
        case "EncryptedKey not canonical":
            # 256 bytes end in "X==", and only X's first two bits are data: set one of the others.
            encoded = wrapped["EncryptedKey"]
            last = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
            wrapped["EncryptedKey"] = encoded[:-3] + last[last.index(encoded[-3]) ^ 1] + "=="
        case "EncryptedKey of 4097 characters":
            wrapped["EncryptedKey"] = "!" * 4097
        case "EncryptedKey of 1024 bytes":
            wrapped["EncryptedKey"] = base64.b64encode(b"x" * 1024).decode()
        case "Algorithm of 65 characters" | "Algorithm of 64 characters":
            wrapped["Algorithm"] = "A" * int(change.split()[2])
        case "no Protocol":
            del agent["Protocol"]
        case "no EncryptionAlgorithm":
            del agent["EncryptionAlgorithm"]
        case "IV not base64":
            document["ContentEncryptionIV"] = "not base64!"
        case "no DataLength":
            del document["EncryptedRegionInfo"]["DataLength"]
        case "DataLength over 2**31":
            document["EncryptedRegionInfo"]["DataLength"] = 2**31 + 1
        case "DataLength 2**31":
            document["EncryptedRegionInfo"]["DataLength"] = 2**31
        case "DataLength one":
            document["EncryptedRegionInfo"]["DataLength"] = 1
        case "TagLength 16":
            document["EncryptedRegionInfo"]["TagLength"] = 16
        case "EncryptionLibrary of 257 characters" | "EncryptionLibrary of 256 characters":
            document["KeyWrappingMetadata"]["EncryptionLibrary"] = "L" * int(change.split()[2])
        case "no EncryptionLibrary":
            del document["KeyWrappingMetadata"]["EncryptionLibrary"]
        case "no KeyWrappingMetadata":
            del document["KeyWrappingMetadata"]
        case "no EncryptionMode":
            del document["EncryptionMode"]
        case _:
            raise AssertionError(change)
    return json.dumps(document)


_KEY_ID = "WrappedContentKey.KeyId"
_ENCRYPTED_KEY = "WrappedContentKey.EncryptedKey"
_ALGORITHM = "WrappedContentKey.Algorithm"
_PROTOCOL = "EncryptionAgent.Protocol"
_CONTENT_ALGORITHM = "EncryptionAgent.EncryptionAlgorithm"


@pytest.mark.parametrize(
    ("protocol", "change", "reason", "detail"),
    [
        ("2.0", "no WrappedContentKey", MalformedReason.MISSING_FIELD, "WrappedContentKey"),
        ("2.0", "WrappedContentKey string", MalformedReason.INVALID_FIELD, "WrappedContentKey"),
        ("2.0", "no KeyId", MalformedReason.MISSING_FIELD, _KEY_ID),
        ("2.0", "empty KeyId", MalformedReason.INVALID_FIELD, _KEY_ID),
        ("2.0", "KeyId with space", MalformedReason.INVALID_FIELD, _KEY_ID),
        ("2.0", "numeric KeyId", MalformedReason.INVALID_FIELD, _KEY_ID),
        ("2.0", "KeyId of 2049 characters", MalformedReason.INVALID_FIELD, _KEY_ID),
        ("2.0", "no EncryptedKey", MalformedReason.MISSING_FIELD, _ENCRYPTED_KEY),
        ("2.0", "EncryptedKey not base64", MalformedReason.INVALID_BASE64, _ENCRYPTED_KEY),
        ("2.0", "EncryptedKey not ASCII", MalformedReason.INVALID_BASE64, _ENCRYPTED_KEY),
        ("2.0", "EncryptedKey unpadded", MalformedReason.INVALID_BASE64, _ENCRYPTED_KEY),
        ("2.0", "EncryptedKey not canonical", MalformedReason.INVALID_BASE64, _ENCRYPTED_KEY),
        ("2.0", "EncryptedKey empty", MalformedReason.INVALID_FIELD, _ENCRYPTED_KEY),
        ("2.0", "EncryptedKey too long", MalformedReason.INVALID_FIELD, _ENCRYPTED_KEY),
        # Over 4,096 characters the text is refused before it is decoded at all.
        ("2.0", "EncryptedKey of 4097 characters", MalformedReason.INVALID_FIELD, _ENCRYPTED_KEY),
        ("2.0", "no Algorithm", MalformedReason.MISSING_FIELD, _ALGORITHM),
        ("2.0", "Algorithm null", MalformedReason.INVALID_FIELD, _ALGORITHM),
        ("2.0", "Algorithm of 65 characters", MalformedReason.INVALID_FIELD, _ALGORITHM),
        ("2.0", "no EncryptionAgent", MalformedReason.MISSING_FIELD, "EncryptionAgent"),
        ("2.0", "EncryptionAgent list", MalformedReason.INVALID_FIELD, "EncryptionAgent"),
        ("2.0", "no Protocol", MalformedReason.MISSING_FIELD, _PROTOCOL),
        ("2.0", "Protocol 3.0", MalformedReason.UNSUPPORTED_PROTOCOL, _PROTOCOL),
        ("2.0", "Protocol number", MalformedReason.INVALID_FIELD, _PROTOCOL),
        ("2.0", "no EncryptionAlgorithm", MalformedReason.MISSING_FIELD, _CONTENT_ALGORITHM),
        ("2.0", "CBC under 2.0", MalformedReason.ALGORITHM_MISMATCH, _CONTENT_ALGORITHM),
        ("1.0", "GCM under 1.0", MalformedReason.ALGORITHM_MISMATCH, _CONTENT_ALGORITHM),
        ("1.0", "no IV", MalformedReason.MISSING_FIELD, "ContentEncryptionIV"),
        ("1.0", "short IV", MalformedReason.INVALID_FIELD, "ContentEncryptionIV"),
        ("1.0", "IV not base64", MalformedReason.INVALID_BASE64, "ContentEncryptionIV"),
        ("1.0", "region info under 1.0", MalformedReason.UNEXPECTED_FIELD, "EncryptedRegionInfo"),
        ("2.0", "IV under 2.0", MalformedReason.UNEXPECTED_FIELD, "ContentEncryptionIV"),
        ("2.0", "no region info", MalformedReason.MISSING_FIELD, "EncryptedRegionInfo"),
        ("2.0", "no DataLength", MalformedReason.MISSING_FIELD, "EncryptedRegionInfo.DataLength"),
        ("2.0", "DataLength zero", MalformedReason.INVALID_FIELD, "EncryptedRegionInfo.DataLength"),
        ("2.0", "DataLength over 2**31", MalformedReason.INVALID_FIELD, "EncryptedRegionInfo.DataLength"),
        ("2.0", "NonceLength bool", MalformedReason.INVALID_FIELD, "EncryptedRegionInfo.NonceLength"),
        ("2.0", "NonceLength float", MalformedReason.INVALID_FIELD, "EncryptedRegionInfo.NonceLength"),
        ("2.0", "TagLength string", MalformedReason.INVALID_FIELD, "EncryptedRegionInfo.TagLength"),
        ("2.0", "KeyWrappingMetadata string", MalformedReason.INVALID_FIELD, "KeyWrappingMetadata"),
        ("2.0", "EncryptionLibrary of 257 characters", MalformedReason.INVALID_FIELD,
         "KeyWrappingMetadata.EncryptionLibrary"),
        ("2.0", "EncryptionMode number", MalformedReason.INVALID_FIELD, "EncryptionMode"),
    ],
)
def test_rejects_what_the_library_would_not_write(
    protocol: str, change: str, reason: MalformedReason, detail: str
) -> None:
    with pytest.raises(MalformedEnvelope) as caught:
        parse_envelope(_mutated(protocol, change))
    assert caught.value.reason == reason
    # The detail names the field an operator has to look at, and nothing of its value.
    assert caught.value.detail == detail
    assert str(caught.value) == f"{reason}: {detail}"
    assert isinstance(caught.value, PermanentError)


@pytest.mark.parametrize(
    ("change", "check"),
    [
        ("KeyId of 2048 characters", lambda envelope: len(envelope.wrapped_key.key_id) == 2048),
        ("EncryptedKey of 1024 bytes", lambda envelope: len(envelope.wrapped_key.encrypted_key) == 1024),
        ("Algorithm of 64 characters", lambda envelope: envelope.wrapped_key.algorithm == "A" * 64),
        ("EncryptionLibrary of 256 characters", lambda envelope: envelope.encryption_library == "L" * 256),
        ("DataLength one", lambda envelope: envelope.region_info.data_length == 1),
        ("DataLength 2**31", lambda envelope: envelope.region_info.data_length == 2**31),
        ("TagLength 16", lambda envelope: envelope.region_info.tag_length == 16),
        ("no EncryptionLibrary", lambda envelope: envelope.encryption_library is None),
        ("no KeyWrappingMetadata", lambda envelope: envelope.encryption_library is None),
        ("no EncryptionMode", lambda envelope: envelope.encryption_mode is None),
    ],
)
def test_accepts_every_value_up_to_each_limit(change: str, check: Callable[[Envelope], bool]) -> None:
    assert check(parse_envelope(_mutated("2.0", change)))


_NOT_JSON = "envelope is not valid JSON"
_NOT_AN_OBJECT = "envelope is not a JSON object"
_TOO_LARGE = "envelope is longer than 8192"


@pytest.mark.parametrize(
    ("text", "reason", "detail"),
    [
        ("", MalformedReason.INVALID_JSON, _NOT_JSON),
        ("{", MalformedReason.INVALID_JSON, _NOT_JSON),
        ('{"a": NaN}', MalformedReason.INVALID_JSON, _NOT_JSON),
        ('{"a": Infinity}', MalformedReason.INVALID_JSON, _NOT_JSON),
        ("[1, 2]", MalformedReason.NOT_AN_OBJECT, _NOT_AN_OBJECT),
        ('"text"', MalformedReason.NOT_AN_OBJECT, _NOT_AN_OBJECT),
        (
            '{"EncryptionAgent": {}, "EncryptionAgent": {}}',
            MalformedReason.DUPLICATE_FIELD,
            "field 'EncryptionAgent' appears twice",
        ),
        # A long duplicated name is cut to its first 64 characters in the message.
        (
            f'{{"{"n" * 100}": 1, "{"n" * 100}": 2}}',
            MalformedReason.DUPLICATE_FIELD,
            f"field {'n' * 64!r} appears twice",
        ),
        ("[" * 100_000, MalformedReason.TOO_LARGE, _TOO_LARGE),
        ("[" * 5000 + "]" * 5000, MalformedReason.TOO_LARGE, _TOO_LARGE),
        ("[" * 4000 + "]" * 4000, MalformedReason.INVALID_JSON, _NOT_JSON),
    ],
)
def test_rejects_text_that_is_not_an_envelope(text: str, reason: MalformedReason, detail: str) -> None:
    with pytest.raises(MalformedEnvelope) as caught:
        parse_envelope(text)
    assert caught.value.reason == reason
    assert caught.value.detail == detail


def test_rejects_a_value_that_is_not_text() -> None:
    with pytest.raises(MalformedEnvelope) as caught:
        parse_envelope(library_envelope("2.0")[0].encode())  # type: ignore[arg-type]
    assert (caught.value.reason, caught.value.detail) == (MalformedReason.INVALID_JSON, "envelope is not a string")


def test_an_envelope_of_exactly_the_metadata_limit_is_accepted() -> None:
    document = json.loads(library_envelope("2.0")[0])
    document["FutureField"] = ""
    document["FutureField"] = "f" * (MAX_ENVELOPE_CHARS - len(json.dumps(document)))
    text = json.dumps(document)
    assert len(text) == MAX_ENVELOPE_CHARS
    assert parse_envelope(text).to_metadata_value() == text
    with pytest.raises(MalformedEnvelope) as caught:
        parse_envelope(text[:-1] + " }")
    assert caught.value.reason == MalformedReason.TOO_LARGE


def test_duplicate_field_inside_the_wrapped_key_is_rejected() -> None:
    value = library_envelope("2.0")[0]
    doubled = value.replace('"KeyId": ', f'"KeyId": "{NEW_KEY_ID}", "KeyId": ', 1)
    with pytest.raises(MalformedEnvelope) as caught:
        parse_envelope(doubled)
    assert caught.value.reason == MalformedReason.DUPLICATE_FIELD


def test_errors_never_quote_values() -> None:
    value = library_envelope("2.0")[0]
    secret_looking = "c2VjcmV0LWtleS1tYXRlcmlhbA=!"
    document = json.loads(value)
    document["WrappedContentKey"]["EncryptedKey"] = secret_looking
    with pytest.raises(MalformedEnvelope) as caught:
        parse_envelope(json.dumps(document))
    assert secret_looking not in str(caught.value)
    with pytest.raises(MalformedEnvelope) as broken:
        parse_envelope(value[:-40] + secret_looking)
    assert secret_looking not in str(broken.value)


def test_finds_the_envelope_case_insensitively() -> None:
    value = library_envelope("2.0")[0]
    assert find_envelope({"owner": "a", "EncryptionData": value}) == ("EncryptionData", value)
    assert find_envelope({"owner": "a"}) is None
    with pytest.raises(MalformedEnvelope) as caught:
        find_envelope({"encryptiondata": value, "EncryptionData": value})
    assert caught.value.reason == MalformedReason.AMBIGUOUS_METADATA
    assert caught.value.detail == "more than one encryptiondata entry"


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), _json_values.map(json.dumps)))
def test_any_text_parses_or_raises_malformed_envelope(text: str) -> None:
    try:
        parse_envelope(text)
    except MalformedEnvelope as err:
        assert err.reason in set(MalformedReason)


@settings(max_examples=200, deadline=None)
@given(
    protocol=st.sampled_from(["1.0", "2.0", "2.1"]),
    cut=st.integers(min_value=0, max_value=10_000),
)
def test_any_truncated_library_envelope_is_malformed(protocol: str, cut: int) -> None:
    value = library_envelope(protocol)[0]
    with pytest.raises(MalformedEnvelope):
        parse_envelope(value[: cut % len(value)])


# -- local wrapping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["RSA-OAEP", "RSA-OAEP-256"])
def test_public_key_wrapper_from_jwk_wraps_for_the_private_key(algorithm: str) -> None:
    numbers = rsa_key("new").public_key().public_numbers()
    wrapper = RsaPublicKeyWrapper.from_jwk(
        NEW_KEY_ID,
        n=numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"),
        e=numbers.e.to_bytes(3, "big"),
    )
    payload = b"2.0\0\0\0\0\0" + bytes(range(32))
    assert new_kek().unwrap_key(wrapper.wrap(algorithm, payload), algorithm) == payload
    assert "public_key" not in repr(wrapper)


def test_public_key_wrapper_refuses_rsa1_5_and_small_keys() -> None:
    wrapper = RsaPublicKeyWrapper(NEW_KEY_ID, rsa_key("new").public_key())
    with pytest.raises(ValueError, match="not a wrap algorithm"):
        wrapper.wrap("RSA1_5", b"k" * 32)
    with pytest.raises(ValueError, match="below 2048"):
        RsaPublicKeyWrapper(NEW_KEY_ID, rsa_key("small", 1024).public_key())


def test_wrapped_key_repr_hides_the_wrapped_bytes() -> None:
    envelope = parse_envelope(library_envelope("1.0")[0])
    text = repr(envelope)
    assert base64.b64encode(envelope.wrapped_key.encrypted_key).decode()[:16] not in text
    assert "encrypted_key" not in text and "content_iv" not in text
    assert set(text) <= set(string.printable)
