"""Client-side encryption envelopes of azure-storage-blob: the ``encryptiondata`` blob metadata.

What azure-storage-blob 12.31 writes (``_encryption._generate_encryption_data_dict``), in this key
order, serialised with ``json.dumps`` defaults (``", "`` and ``": "`` separators, ASCII only)::

    {"WrappedContentKey": {"KeyId": ..., "EncryptedKey": <base64>, "Algorithm": <kek's algorithm>},
     "EncryptionAgent": {"Protocol": "1.0" | "2.0", "EncryptionAlgorithm": "AES_CBC_256" | "AES_GCM_256"},
     "ContentEncryptionIV": <base64 of 16 bytes>,                        # 1.0 only
     "EncryptedRegionInfo": {"DataLength": 4194304, "NonceLength": 12},  # 2.0 only, no TagLength
     "KeyWrappingMetadata": {"EncryptionLibrary": "Python 12.31.1"},
     "EncryptionMode": "FullBlob"}

The wrapped payload is the 32-byte content key for 1.0 and ``b"2.0".ljust(8, b"\\0") + key`` for 2.0.
The library reads, but never writes, protocol 2.1; it checks the payload prefix against the recorded
protocol (``b"2.1\\0\\0\\0\\0\\0"`` for 2.1), so a re-wrap must keep the payload exactly as unwrapped.

Parsing is strict (anything the library would not have written, or could not decrypt, raises
MalformedEnvelope with a stable reason) but keeps fields it does not know, and serialisation changes
only the wrapped key: an envelope that was not re-wrapped serialises to its original text.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from controller.errors import MalformedEnvelope

#: The metadata name the library stores the envelope under (metadata names are case-insensitive).
ENCRYPTION_DATA_METADATA = "encryptiondata"

PROTOCOL_V1 = "1.0"
PROTOCOL_V2 = "2.0"
PROTOCOL_V2_1 = "2.1"
#: Content algorithm each protocol uses; the library refuses any other pairing.
CONTENT_ALGORITHM_BY_PROTOCOL: Mapping[str, str] = {
    PROTOCOL_V1: "AES_CBC_256",
    PROTOCOL_V2: "AES_GCM_256",
    PROTOCOL_V2_1: "AES_GCM_256",
}
CONTENT_KEY_LENGTH = 32  # AES-256
V1_IV_LENGTH = 16
V2_PAYLOAD_PREFIX_LENGTH = 8  # the protocol string, NUL-padded to 8 bytes (AES key-wrap block size)

# Azure allows 8 KiB of metadata per blob in total; one value cannot be longer.
MAX_ENVELOPE_CHARS = 8192
_MAX_WRAPPED_KEY_BYTES = 1024  # an RSA-8192 wrap is 1,024 bytes; anything longer is not a wrapped key
_MAX_KEY_ID_CHARS = 2048
_MAX_ALGORITHM_CHARS = 64


class MalformedReason(enum.StrEnum):
    TOO_LARGE = "too_large"
    INVALID_JSON = "invalid_json"
    DUPLICATE_FIELD = "duplicate_field"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    UNEXPECTED_FIELD = "unexpected_field"
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    ALGORITHM_MISMATCH = "algorithm_mismatch"
    INVALID_BASE64 = "invalid_base64"
    AMBIGUOUS_METADATA = "ambiguous_metadata"
    #: The unwrapped payload does not fit the recorded protocol (wrong length or version prefix):
    #: the library would refuse to decrypt this blob, so it is not re-wrapped either.
    PAYLOAD_MISMATCH = "payload_mismatch"


@dataclass(frozen=True, slots=True)
class WrappedContentKey:
    key_id: str
    encrypted_key: bytes = field(repr=False)
    algorithm: str


@dataclass(frozen=True, slots=True)
class EncryptedRegionInfo:
    """AES-GCM framing of protocol 2.x: each region is nonce + data + tag."""

    data_length: int
    nonce_length: int
    tag_length: int | None  # the Python library omits it (and assumes 16)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A validated ``encryptiondata`` value. ``source`` is the text it was parsed from."""

    protocol: str
    encryption_algorithm: str
    wrapped_key: WrappedContentKey
    content_iv: bytes | None = field(repr=False)
    region_info: EncryptedRegionInfo | None
    encryption_library: str | None
    encryption_mode: str | None
    source: str = field(repr=False, compare=False)

    @property
    def payload_prefix(self) -> bytes:
        """What the unwrapped payload starts with before the content key (empty for 1.0)."""
        if self.protocol == PROTOCOL_V1:
            return b""
        return self.protocol.encode("ascii").ljust(V2_PAYLOAD_PREFIX_LENGTH, b"\0")

    def check_payload(self, payload: bytes) -> None:
        """Raise MalformedEnvelope(PAYLOAD_MISMATCH) unless ``payload`` is what this envelope wraps.

        The payload holds the content key: nothing about its value goes into the error.
        """
        prefix = self.payload_prefix
        if len(payload) != len(prefix) + CONTENT_KEY_LENGTH or not payload.startswith(prefix):
            raise MalformedEnvelope(
                MalformedReason.PAYLOAD_MISMATCH,
                f"unwrapped payload does not match protocol {self.protocol}",
            )

    def with_wrapped_key(self, wrapped_key: WrappedContentKey) -> Envelope:
        return replace(self, wrapped_key=wrapped_key)

    def to_metadata_value(self) -> str:
        """The envelope as the library writes it: every field of ``source`` kept, in its order, and
        only the wrapped key's KeyId, EncryptedKey and Algorithm replaced."""
        document = _load(self.source)
        wrapped = document["WrappedContentKey"]
        updated = {
            "KeyId": self.wrapped_key.key_id,
            "EncryptedKey": base64.b64encode(self.wrapped_key.encrypted_key).decode("ascii"),
            "Algorithm": self.wrapped_key.algorithm,
        }
        if all(wrapped[name] == value for name, value in updated.items()):
            return self.source
        wrapped.update(updated)
        return json.dumps(document, separators=_separators_of(self.source))


def find_envelope(metadata: Mapping[str, str]) -> tuple[str, str] | None:
    """The (metadata name as stored, value) of the envelope, or None when the blob has none.

    Metadata names are case-insensitive in Azure and the library looks the name up that way; two
    names that differ only in case cannot come from Azure, so they are rejected rather than guessed.
    """
    found = [(name, value) for name, value in metadata.items() if name.lower() == ENCRYPTION_DATA_METADATA]
    if len(found) > 1:
        raise MalformedEnvelope(MalformedReason.AMBIGUOUS_METADATA, "more than one encryptiondata entry")
    return found[0] if found else None


def parse_envelope(value: str) -> Envelope:
    """Validate an ``encryptiondata`` value; raise MalformedEnvelope (with a stable reason) if invalid."""
    if not isinstance(value, str):
        raise MalformedEnvelope(MalformedReason.INVALID_JSON, "envelope is not a string")
    if len(value) > MAX_ENVELOPE_CHARS:
        raise MalformedEnvelope(MalformedReason.TOO_LARGE, f"envelope is longer than {MAX_ENVELOPE_CHARS}")
    document = _load(value)

    agent = _object(document, "EncryptionAgent")
    protocol = _string(agent, "Protocol", "EncryptionAgent.Protocol")
    if protocol not in CONTENT_ALGORITHM_BY_PROTOCOL:
        raise MalformedEnvelope(MalformedReason.UNSUPPORTED_PROTOCOL, "EncryptionAgent.Protocol")
    algorithm = _string(agent, "EncryptionAlgorithm", "EncryptionAgent.EncryptionAlgorithm")
    if algorithm != CONTENT_ALGORITHM_BY_PROTOCOL[protocol]:
        raise MalformedEnvelope(MalformedReason.ALGORITHM_MISMATCH, "EncryptionAgent.EncryptionAlgorithm")

    wrapped = _object(document, "WrappedContentKey")
    key_id = _string(wrapped, "KeyId", "WrappedContentKey.KeyId", limit=_MAX_KEY_ID_CHARS)
    if any(not character.isprintable() or character.isspace() for character in key_id):
        raise MalformedEnvelope(MalformedReason.INVALID_FIELD, "WrappedContentKey.KeyId")
    encrypted_key = _base64(wrapped, "EncryptedKey", "WrappedContentKey.EncryptedKey")
    if len(encrypted_key) > _MAX_WRAPPED_KEY_BYTES:
        raise MalformedEnvelope(MalformedReason.INVALID_FIELD, "WrappedContentKey.EncryptedKey")
    wrap_algorithm = _string(wrapped, "Algorithm", "WrappedContentKey.Algorithm", limit=_MAX_ALGORITHM_CHARS)

    content_iv: bytes | None = None
    region_info: EncryptedRegionInfo | None = None
    if protocol == PROTOCOL_V1:
        if "EncryptedRegionInfo" in document:
            raise MalformedEnvelope(MalformedReason.UNEXPECTED_FIELD, "EncryptedRegionInfo")
        content_iv = _base64(document, "ContentEncryptionIV", "ContentEncryptionIV")
        if len(content_iv) != V1_IV_LENGTH:
            raise MalformedEnvelope(MalformedReason.INVALID_FIELD, "ContentEncryptionIV")
    else:
        if "ContentEncryptionIV" in document:
            raise MalformedEnvelope(MalformedReason.UNEXPECTED_FIELD, "ContentEncryptionIV")
        region = _object(document, "EncryptedRegionInfo")
        tag_length = None
        if "TagLength" in region:
            tag_length = _positive_int(region, "TagLength", "EncryptedRegionInfo.TagLength")
        region_info = EncryptedRegionInfo(
            data_length=_positive_int(region, "DataLength", "EncryptedRegionInfo.DataLength"),
            nonce_length=_positive_int(region, "NonceLength", "EncryptedRegionInfo.NonceLength"),
            tag_length=tag_length,
        )

    library = None
    if "KeyWrappingMetadata" in document:
        wrapping_metadata = _object(document, "KeyWrappingMetadata")
        if "EncryptionLibrary" in wrapping_metadata:
            library = _string(wrapping_metadata, "EncryptionLibrary", "KeyWrappingMetadata.EncryptionLibrary")
    mode = _string(document, "EncryptionMode", "EncryptionMode") if "EncryptionMode" in document else None

    return Envelope(
        protocol=protocol,
        encryption_algorithm=algorithm,
        wrapped_key=WrappedContentKey(key_id=key_id, encrypted_key=encrypted_key, algorithm=wrap_algorithm),
        content_iv=content_iv,
        region_info=region_info,
        encryption_library=library,
        encryption_mode=mode,
        source=value,
    )


def _load(text: str) -> dict[str, Any]:
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _DuplicateField as err:
        raise MalformedEnvelope(MalformedReason.DUPLICATE_FIELD, str(err)) from None
    except (ValueError, RecursionError):
        # The decoder's message quotes the text around the error: keep it out of ours.
        raise MalformedEnvelope(MalformedReason.INVALID_JSON, "envelope is not valid JSON") from None
    if not isinstance(document, dict):
        raise MalformedEnvelope(MalformedReason.NOT_AN_OBJECT, "envelope is not a JSON object")
    return document


class _DuplicateField(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            raise _DuplicateField(f"field {name[:64]!r} appears twice")
        document[name] = value
    return document


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _separators_of(source: str) -> tuple[str, str]:
    # Python's library writes json.dumps defaults; other SDKs write compact JSON. Keep whichever the
    # blob has so that an unchanged field stays byte-for-byte what its writer wrote; any other layout
    # is written as the Python library would write it.
    compact = (",", ":")
    if json.dumps(_load(source), separators=compact) == source:
        return compact
    return (", ", ": ")


def _object(container: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    if name not in container:
        raise MalformedEnvelope(MalformedReason.MISSING_FIELD, name)
    value = container[name]
    if not isinstance(value, dict):
        raise MalformedEnvelope(MalformedReason.INVALID_FIELD, name)
    return value


def _string(container: Mapping[str, Any], name: str, path: str, *, limit: int = 256) -> str:
    if name not in container:
        raise MalformedEnvelope(MalformedReason.MISSING_FIELD, path)
    value = container[name]
    if not isinstance(value, str) or not value or len(value) > limit:
        raise MalformedEnvelope(MalformedReason.INVALID_FIELD, path)
    return value


def _base64(container: Mapping[str, Any], name: str, path: str) -> bytes:
    text = _string(container, name, path, limit=4 * _MAX_WRAPPED_KEY_BYTES)
    try:
        decoded = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise MalformedEnvelope(MalformedReason.INVALID_BASE64, path) from None
    # Every SDK writes canonical padded base64; anything else was edited by hand or corrupted.
    if not decoded or base64.b64encode(decoded).decode("ascii") != text:
        raise MalformedEnvelope(MalformedReason.INVALID_BASE64, path)
    return decoded


def _positive_int(container: Mapping[str, Any], name: str, path: str) -> int:
    if name not in container:
        raise MalformedEnvelope(MalformedReason.MISSING_FIELD, path)
    value = container[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 2**31:
        raise MalformedEnvelope(MalformedReason.INVALID_FIELD, path)
    return value
