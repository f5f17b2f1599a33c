"""Real key material and cryptography for the emulated vault (the `cryptography` package)."""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

RSA_TYPES = ("RSA", "RSA-HSM")
EC_TYPES = ("EC", "EC-HSM")
OCT_TYPES = ("oct", "oct-HSM")
RSA_SIZES = (2048, 3072, 4096)
OCT_SIZES = (128, 192, 256)
CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
    "P-256K": ec.SECP256K1(),
}
CURVE_BITS = {"P-256": 256, "P-384": 384, "P-521": 521, "P-256K": 256}
RSA_ENC_ALGS = ("RSA-OAEP", "RSA-OAEP-256", "RSA1_5")
RSA_DEFAULT_OPS = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
EC_DEFAULT_OPS = ["sign", "verify"]
OCT_DEFAULT_OPS = ["encrypt", "decrypt", "wrapKey", "unwrapKey"]
ALL_KEY_OPS = ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey", "import", "export")


class CryptoError(ValueError):
    """A request the key cannot serve (bad algorithm, bad ciphertext ...): Key Vault answers 400."""


def b64u_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    if not isinstance(text, str):
        raise CryptoError("expected a base64url string")
    try:
        return base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise CryptoError("invalid base64url value") from exc


def _int_b64(value: int, length: int | None = None) -> str:
    length = length or max(1, (value.bit_length() + 7) // 8)
    return b64u_encode(value.to_bytes(length, "big"))


def _b64_int(text: str) -> int:
    return int.from_bytes(b64u_decode(text), "big")


@dataclass
class KeyMaterial:
    """Private key material of one key version."""

    kty: str  # as the vault reports it: RSA, RSA-HSM, EC, EC-HSM, oct-HSM
    private: Any  # rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | bytes (oct)
    crv: str | None = None

    @property
    def family(self) -> str:
        return self.kty.removesuffix("-HSM")

    @property
    def hsm(self) -> bool:
        return self.kty.endswith("-HSM")

    @property
    def size(self) -> int:
        if self.family == "RSA":
            return int(self.private.key_size)
        if self.family == "EC":
            return CURVE_BITS.get(self.crv or "", 0)
        return len(self.private) * 8

    def public_jwk(self, kid: str, key_ops: list[str]) -> dict[str, Any]:
        jwk: dict[str, Any] = {"kid": kid, "kty": self.kty, "key_ops": list(key_ops)}
        if self.family == "RSA":
            numbers = self.private.public_key().public_numbers()
            jwk["n"] = _int_b64(numbers.n)
            jwk["e"] = _int_b64(numbers.e)
        elif self.family == "EC":
            numbers = self.private.public_key().public_numbers()
            size = (self.private.curve.key_size + 7) // 8
            jwk["crv"] = self.crv
            jwk["x"] = _int_b64(numbers.x, size)
            jwk["y"] = _int_b64(numbers.y, size)
        return jwk

    # ---- operations -------------------------------------------------------------------------------
    def encrypt(
        self, alg: str, plaintext: bytes, *, iv: bytes | None = None, aad: bytes | None = None
    ) -> dict[str, Any]:
        if self.family == "RSA":
            return {"value": self._rsa_encrypt(alg, plaintext)}
        if self.family == "oct":
            return self._oct_encrypt(alg, plaintext, iv=iv, aad=aad)
        raise CryptoError(f"Algorithm {alg} is not supported for key type {self.kty}")

    def decrypt(
        self,
        alg: str,
        ciphertext: bytes,
        *,
        iv: bytes | None = None,
        aad: bytes | None = None,
        tag: bytes | None = None,
    ) -> bytes:
        if self.family == "RSA":
            return self._rsa_decrypt(alg, ciphertext)
        if self.family == "oct":
            return self._oct_decrypt(alg, ciphertext, iv=iv, aad=aad, tag=tag)
        raise CryptoError(f"Algorithm {alg} is not supported for key type {self.kty}")

    def wrap(self, alg: str, key: bytes) -> bytes:
        if self.family == "RSA":
            return self._rsa_encrypt(alg, key)
        if self.family == "oct":
            self._check_kw(alg)
            try:
                return aes_key_wrap(self.private, key)
            except ValueError as exc:
                raise CryptoError(str(exc)) from exc
        raise CryptoError(f"Algorithm {alg} is not supported for key type {self.kty}")

    def unwrap(self, alg: str, wrapped: bytes) -> bytes:
        if self.family == "RSA":
            return self._rsa_decrypt(alg, wrapped)
        if self.family == "oct":
            self._check_kw(alg)
            try:
                return aes_key_unwrap(self.private, wrapped)
            except (InvalidUnwrap, ValueError) as exc:
                raise CryptoError("The key unwrap failed") from exc
        raise CryptoError(f"Algorithm {alg} is not supported for key type {self.kty}")

    def sign(self, alg: str, digest: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric import utils

        hash_alg = _signature_hash(alg)
        if self.family == "RSA" and alg[:2] in ("RS", "PS"):
            pad = (
                padding.PKCS1v15()
                if alg.startswith("RS")
                else padding.PSS(padding.MGF1(hash_alg), hash_alg.digest_size)
            )
            return bytes(self.private.sign(digest, pad, utils.Prehashed(hash_alg)))
        if self.family == "EC" and alg.startswith("ES"):
            der = self.private.sign(digest, ec.ECDSA(utils.Prehashed(hash_alg)))
            r, s = utils.decode_dss_signature(der)
            size = (self.private.curve.key_size + 7) // 8
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        raise CryptoError(f"Algorithm {alg} is not supported for key type {self.kty}")

    def verify(self, alg: str, digest: bytes, signature: bytes) -> bool:
        from cryptography.hazmat.primitives.asymmetric import utils

        hash_alg = _signature_hash(alg)
        try:
            if self.family == "RSA" and alg[:2] in ("RS", "PS"):
                pad = (
                    padding.PKCS1v15()
                    if alg.startswith("RS")
                    else padding.PSS(padding.MGF1(hash_alg), hash_alg.digest_size)
                )
                self.private.public_key().verify(signature, digest, pad, utils.Prehashed(hash_alg))
                return True
            if self.family == "EC" and alg.startswith("ES"):
                size = (self.private.curve.key_size + 7) // 8
                r = int.from_bytes(signature[:size], "big")
                s = int.from_bytes(signature[size:], "big")
                der = utils.encode_dss_signature(r, s)
                self.private.public_key().verify(der, digest, ec.ECDSA(utils.Prehashed(hash_alg)))
                return True
        except InvalidSignature:
            return False
        raise CryptoError(f"Algorithm {alg} is not supported for key type {self.kty}")

    # ---- helpers ----------------------------------------------------------------------------------
    def _rsa_padding(self, alg: str) -> padding.AsymmetricPadding:
        if alg == "RSA-OAEP":
            return padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303
        if alg == "RSA-OAEP-256":
            return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
        if alg == "RSA1_5":
            return padding.PKCS1v15()
        raise CryptoError(f"Algorithm {alg} is not supported for key type {self.kty}")

    def _rsa_encrypt(self, alg: str, plaintext: bytes) -> bytes:
        pad = self._rsa_padding(alg)
        try:
            return bytes(self.private.public_key().encrypt(plaintext, pad))
        except ValueError as exc:
            raise CryptoError(f"The value is too long for algorithm {alg}") from exc

    def _rsa_decrypt(self, alg: str, ciphertext: bytes) -> bytes:
        pad = self._rsa_padding(alg)
        try:
            return bytes(self.private.decrypt(ciphertext, pad))
        except ValueError as exc:
            raise CryptoError("The parameter is incorrect: decryption failed") from exc

    def _check_kw(self, alg: str) -> None:
        expected = f"A{len(self.private) * 8}KW"
        if alg not in (expected, "CKM_AES_KEY_WRAP"):
            raise CryptoError(f"Algorithm {alg} is not supported for this key (expected {expected})")

    def _oct_encrypt(self, alg: str, plaintext: bytes, *, iv: bytes | None, aad: bytes | None) -> dict[str, Any]:
        expected = f"A{len(self.private) * 8}GCM"
        if alg != expected:
            raise CryptoError(f"Algorithm {alg} is not supported for this key (expected {expected})")
        nonce = iv or os.urandom(12)
        sealed = AESGCM(self.private).encrypt(nonce, plaintext, aad)
        out: dict[str, Any] = {"value": sealed[:-16], "iv": nonce, "tag": sealed[-16:]}
        if aad:
            out["aad"] = aad
        return out

    def _oct_decrypt(
        self, alg: str, ciphertext: bytes, *, iv: bytes | None, aad: bytes | None, tag: bytes | None
    ) -> bytes:
        expected = f"A{len(self.private) * 8}GCM"
        if alg != expected or not iv or not tag:
            raise CryptoError(f"Algorithm {alg} requires iv and tag and a {expected} key")
        try:
            return AESGCM(self.private).decrypt(iv, ciphertext + tag, aad)
        except InvalidTag as exc:
            raise CryptoError("The parameter is incorrect: authentication failed") from exc


def _signature_hash(alg: str) -> hashes.HashAlgorithm:
    table: dict[str, hashes.HashAlgorithm] = {
        "256": hashes.SHA256(),
        "384": hashes.SHA384(),
        "512": hashes.SHA512(),
        "56K": hashes.SHA256(),
    }
    if alg.endswith(tuple(table)) and len(alg) >= 5:
        return table[alg[-3:]]
    raise CryptoError(f"Unsupported signature algorithm {alg}")


def generate(kty: str, *, size: int | None = None, crv: str | None = None, public_exponent: int = 65537) -> KeyMaterial:
    """Generate material for a create request. Raises CryptoError (400) for unsupported parameters."""
    if kty in RSA_TYPES:
        size = size or 2048
        if size not in RSA_SIZES:
            raise CryptoError(f"Invalid key size {size} for {kty}; supported: 2048, 3072, 4096")
        if public_exponent not in (3, 65537):
            raise CryptoError("Invalid public exponent")
        return KeyMaterial(kty, rsa.generate_private_key(public_exponent=public_exponent, key_size=size))
    if kty in EC_TYPES:
        crv = crv or "P-256"
        if crv not in CURVES:
            raise CryptoError(f"Invalid curve {crv}")
        if size and size != CURVE_BITS[crv]:
            raise CryptoError(f"Key size {size} does not match curve {crv}")
        return KeyMaterial(kty, ec.generate_private_key(CURVES[crv]), crv=crv)
    if kty in {"oct-HSM", "oct"}:
        size = size or 256
        if size not in OCT_SIZES:
            raise CryptoError(f"Invalid key size {size} for {kty}; supported: 128, 192, 256")
        return KeyMaterial(kty, os.urandom(size // 8))
    raise CryptoError(f"Invalid key type {kty!r}")


def default_key_ops(kty: str) -> list[str]:
    family = kty.removesuffix("-HSM")
    if family == "RSA":
        return list(RSA_DEFAULT_OPS)
    if family == "EC":
        return list(EC_DEFAULT_OPS)
    return list(OCT_DEFAULT_OPS)


def from_jwk(jwk: dict[str, Any], *, hsm: bool) -> KeyMaterial:
    """Import private key material from a JSON web key. Raises CryptoError (400) if incomplete."""
    kty = str(jwk.get("kty") or "")
    family = kty.removesuffix("-HSM")
    reported = f"{family}-HSM" if (hsm or kty.endswith("-HSM")) else family
    try:
        if family == "RSA":
            n, e, d = _b64_int(jwk["n"]), _b64_int(jwk["e"]), _b64_int(jwk["d"])
            p, q = _b64_int(jwk["p"]), _b64_int(jwk["q"])
            dp = _b64_int(jwk["dp"]) if jwk.get("dp") else rsa.rsa_crt_dmp1(d, p)
            dq = _b64_int(jwk["dq"]) if jwk.get("dq") else rsa.rsa_crt_dmq1(d, q)
            qi = _b64_int(jwk["qi"]) if jwk.get("qi") else rsa.rsa_crt_iqmp(p, q)
            private = rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, rsa.RSAPublicNumbers(e, n)).private_key()
            if private.key_size not in RSA_SIZES:
                raise CryptoError(f"Unsupported RSA key size {private.key_size}")
            return KeyMaterial(reported, private)
        if family == "EC":
            crv = str(jwk["crv"])
            if crv not in CURVES:
                raise CryptoError(f"Invalid curve {crv}")
            private_ec = ec.derive_private_key(_b64_int(jwk["d"]), CURVES[crv])
            return KeyMaterial(reported, private_ec, crv=crv)
        if family == "oct":
            k = b64u_decode(jwk["k"])
            if len(k) * 8 not in OCT_SIZES:
                raise CryptoError("Invalid symmetric key size")
            return KeyMaterial("oct-HSM" if hsm or family == "oct" else reported, k)
    except KeyError as exc:
        raise CryptoError(f"The key is missing the private component {exc.args[0]!r}") from exc
    except (ValueError, TypeError) as exc:
        if isinstance(exc, CryptoError):
            raise
        raise CryptoError(f"Invalid key material: {exc}") from exc
    raise CryptoError(f"Invalid key type {kty!r}")


def private_jwk(material: KeyMaterial) -> dict[str, Any]:
    """Export (for tests and backups): the private JWK of a key version."""
    if material.family == "RSA":
        numbers = material.private.private_numbers()
        pub = numbers.public_numbers
        return {
            "kty": "RSA",
            "n": _int_b64(pub.n),
            "e": _int_b64(pub.e),
            "d": _int_b64(numbers.d),
            "p": _int_b64(numbers.p),
            "q": _int_b64(numbers.q),
            "dp": _int_b64(numbers.dmp1),
            "dq": _int_b64(numbers.dmq1),
            "qi": _int_b64(numbers.iqmp),
        }
    if material.family == "EC":
        numbers = material.private.private_numbers()
        size = (material.private.curve.key_size + 7) // 8
        return {
            "kty": "EC",
            "crv": material.crv,
            "d": _int_b64(numbers.private_value, size),
            "x": _int_b64(numbers.public_numbers.x, size),
            "y": _int_b64(numbers.public_numbers.y, size),
        }
    return {"kty": "oct", "k": b64u_encode(material.private)}


def public_pem(material: KeyMaterial) -> bytes:
    return bytes(
        material.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
