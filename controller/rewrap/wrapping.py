"""Wrapping content keys locally with the PUBLIC half of a key version (RSA-OAEP), and the algorithms
the controller reads and writes."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

RSA_OAEP = "RSA-OAEP"
RSA_OAEP_256 = "RSA-OAEP-256"
RSA1_5 = "RSA1_5"
#: Algorithms the controller wraps with. RSA1_5 is read (unwrapped) but never written again.
WRAP_ALGORITHMS: tuple[str, ...] = (RSA_OAEP, RSA_OAEP_256)
#: Algorithms Key Vault unwraps with an RSA key.
UNWRAP_ALGORITHMS: tuple[str, ...] = (RSA_OAEP, RSA_OAEP_256, RSA1_5)
_MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class RsaPublicKeyWrapper:
    """A KeyWrapper over the public half of an RSA key version: wraps locally, never calls Key Vault.

    Build it from the version's JWK (``KeyVaultKey.key.n`` / ``.e``) with ``from_jwk``.
    """

    key_id: str
    public_key: rsa.RSAPublicKey = field(repr=False)

    def __post_init__(self) -> None:
        if self.public_key.key_size < _MIN_RSA_BITS:
            raise ValueError(f"RSA key {self.key_id} has {self.public_key.key_size} bits, below {_MIN_RSA_BITS}")

    @classmethod
    def from_jwk(cls, key_id: str, *, n: bytes, e: bytes) -> RsaPublicKeyWrapper:
        numbers = rsa.RSAPublicNumbers(e=int.from_bytes(e, "big"), n=int.from_bytes(n, "big"))
        return cls(key_id=key_id, public_key=numbers.public_key())

    def wrap(self, algorithm: str, payload: bytes) -> bytes:
        return self.public_key.encrypt(payload, oaep_padding(algorithm))


def oaep_padding(algorithm: str) -> padding.OAEP:
    """The padding JOSE names: RSA-OAEP is OAEP with SHA-1 (and MGF1-SHA-1), RSA-OAEP-256 with SHA-256."""
    if algorithm == RSA_OAEP:
        # SHA-1 is what RSA-OAEP is (RFC 7518): envelopes written with it can only be re-wrapped with it.
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303 # nosec B303
    if algorithm == RSA_OAEP_256:
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    raise ValueError(f"{algorithm!r} is not a wrap algorithm the controller writes ({', '.join(WRAP_ALGORITHMS)})")
