"""The Key Vault keys data plane: request routing and the operations, over one ``VaultState``.

Operations run synchronously under ``state.lock`` (in a worker thread, so RSA key generation does not
stall the event loop); ``server.py`` wraps them with authentication, firewall, authorization, faults,
throttling, counters and audit records.
"""

from __future__ import annotations

import copy
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from . import crypto, lifecycle
from .errors import KeyVaultError, bad_parameter, deleted_key_not_found, forbidden, key_not_found
from .state import DeletedKey, KeyEntry, KeyVersion, VaultState

NAME_RE = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
VERSION_RE = re.compile(r"^[0-9a-fA-F]{32}$")
CRYPTO_OPS = {
    "encrypt": ("KeyEncrypt", "encrypt"),
    "decrypt": ("KeyDecrypt", "decrypt"),
    "wrapkey": ("KeyWrap", "wrapKey"),
    "unwrapkey": ("KeyUnwrap", "unwrapKey"),
    "sign": ("KeySign", "sign"),
    "verify": ("KeyVerify", "verify"),
}
MAX_PAGE = 25
MUTATING = frozenset(
    {"KeyCreate", "KeyImport", "KeyUpdate", "KeyDelete", "KeyRecover", "KeyPurge", "KeyRotate",
     "KeyUpdateRotationPolicy", "KeyRestore"}
)  # fmt: skip


@dataclass
class Route:
    operation: str
    key_name: str | None = None
    version: str = ""
    crypto_op: str | None = None


@dataclass
class Result:
    status: int
    body: dict[str, Any] | None
    object_id: str | None = None
    outbox: lifecycle.Outbox = field(default_factory=lifecycle.Outbox)


def resolve(method: str, path: str) -> Route | None:
    """Map method + path to a Key Vault operation (None: no such endpoint)."""
    segments = path[1:].split("/") if path.startswith("/") else path.split("/")
    head, rest = segments[0].lower(), segments[1:]
    if head == "keys":
        if not rest or rest == [""]:
            return Route("KeyList") if method == "GET" else None
        name = rest[0]
        if len(rest) == 1:
            if name.lower() == "restore" and method == "POST":
                return Route("KeyRestore")
            return {
                "PUT": Route("KeyImport", name),
                "DELETE": Route("KeyDelete", name),
                "GET": Route("KeyGet", name),
                "PATCH": Route("KeyUpdate", name),
            }.get(method)
        sub = rest[1]
        if len(rest) == 2:
            table = {
                ("POST", "create"): "KeyCreate",
                ("POST", "rotate"): "KeyRotate",
                ("GET", "versions"): "KeyListVersions",
                ("GET", "rotationpolicy"): "KeyGetRotationPolicy",
                ("PUT", "rotationpolicy"): "KeyUpdateRotationPolicy",
                ("POST", "backup"): "KeyBackup",
            }
            if (method, sub.lower()) in table:
                return Route(table[(method, sub.lower())], name)
            if method == "GET":
                return Route("KeyGet", name, sub)
            if method == "PATCH":
                return Route("KeyUpdate", name, sub)
            return None
        if len(rest) == 3 and method == "POST" and rest[2].lower() in CRYPTO_OPS:
            return Route(CRYPTO_OPS[rest[2].lower()][0], name, sub, rest[2].lower())
        return None
    if head == "deletedkeys":
        if not rest or rest == [""]:
            return Route("KeyListDeleted") if method == "GET" else None
        name = rest[0]
        if len(rest) == 1:
            return {"GET": Route("KeyGetDeleted", name), "DELETE": Route("KeyPurge", name)}.get(method)
        if len(rest) == 2 and rest[1].lower() == "recover" and method == "POST":
            return Route("KeyRecover", name)
        return None
    if head == "rng" and method == "POST" and not rest:
        return Route("GetRandomBytes")
    return None


# ---- serialization -----------------------------------------------------------------------------------
def attributes(state: VaultState, kv: KeyVersion) -> dict[str, Any]:
    attrs: dict[str, Any] = {"enabled": kv.enabled}
    if kv.nbf is not None:
        attrs["nbf"] = kv.nbf
    if kv.exp is not None:
        attrs["exp"] = kv.exp
    attrs["created"] = kv.created
    attrs["updated"] = kv.updated
    attrs["recoveryLevel"] = state.recovery_level
    attrs["recoverableDays"] = state.recoverable_days
    if kv.exportable is not None:
        attrs["exportable"] = kv.exportable
    if kv.material.family == "oct":
        attrs["key_size"] = kv.material.size
    return attrs


def key_bundle(state: VaultState, name: str, kv: KeyVersion) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "key": kv.material.public_jwk(state.key_id(name, kv.version), kv.key_ops),
        "attributes": attributes(state, kv),
    }
    if kv.tags:
        bundle["tags"] = dict(kv.tags)
    return bundle


def key_item(state: VaultState, name: str, kv: KeyVersion, *, versioned: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "kid": state.key_id(name, kv.version if versioned else None),
        "attributes": attributes(state, kv),
    }
    if kv.tags:
        item["tags"] = dict(kv.tags)
    return item


def deleted_extras(state: VaultState, name: str, deleted: DeletedKey) -> dict[str, Any]:
    return {
        "recoveryId": f"{state.origin}/deletedkeys/{name}",
        "deletedDate": deleted.deleted_date,
        "scheduledPurgeDate": deleted.scheduled_purge_date,
    }


# ---- request helpers -----------------------------------------------------------------------------------
def _opt_int(value: Any, field_name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_parameter(f"Invalid value for attributes.{field_name}")
    return int(value)


def _tags(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 15:
        raise bad_parameter("Tags must be an object of at most 15 string values")
    for k, v in value.items():
        if not isinstance(v, str) or len(k) > 512 or len(v) > 256:
            raise bad_parameter(f"Invalid tag {k!r}")
    return {str(k): v for k, v in value.items()}


def _key_ops(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise bad_parameter("key_ops must be a list")
    out = []
    for op in value:
        match = next((o for o in crypto.ALL_KEY_OPS if o.lower() == str(op).lower()), None)
        if match is None:
            raise bad_parameter(f"Invalid key operation {op!r}")
        out.append(match)
    return out


def _attrs(body: dict[str, Any]) -> tuple[bool | None, int | None, int | None, bool | None]:
    attrs = body.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise bad_parameter("attributes must be an object")
    enabled = attrs.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise bad_parameter("attributes.enabled must be a boolean")
    nbf = _opt_int(attrs.get("nbf"), "nbf")
    exp = _opt_int(attrs.get("exp"), "exp")
    if nbf is not None and exp is not None and nbf >= exp:
        raise bad_parameter("The key's not-before date must be earlier than its expiry date")
    exportable = attrs.get("exportable")
    return enabled, nbf, exp, exportable


def _check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise bad_parameter(
            f"The request URI contains an invalid name: {name}. Key names may contain only 0-9, a-z, A-Z and -"
        )


#: Deleting and recovering a key take a few seconds in Azure: the SDK's pollers poll until it is done,
#: and code that does not wait for them sees the key missing in between.
PENDING_SECONDS = 2.0


def _active_entry(state: VaultState, name: str) -> KeyEntry:
    entry = state.keys.get(name.lower())
    if entry is None or entry.recovering_until > time.monotonic():
        raise key_not_found(name)
    return entry


def _deleted_entry(state: VaultState, name: str) -> DeletedKey:
    deleted = state.deleted.get(name.lower())
    if deleted is None or deleted.deleting_until > time.monotonic():
        raise deleted_key_not_found(name)
    return deleted


def _version(state: VaultState, name: str, version: str) -> tuple[KeyEntry, KeyVersion]:
    entry = _active_entry(state, name)
    kv = entry.find(version)
    if kv is None:
        raise key_not_found(name, version)
    return entry, kv


def _usable(state: VaultState, kv: KeyVersion, op_label: str) -> None:
    now = state.now_epoch()
    if not kv.enabled:
        raise forbidden(f"Operation {op_label} is not allowed on a disabled key.", "KeyDisabled")
    if kv.nbf is not None and now < kv.nbf:
        raise forbidden(f"Operation {op_label} is not allowed on a key that is not yet valid.", "KeyNotYetValid")
    if kv.exp is not None and now >= kv.exp:
        raise forbidden(f"Operation {op_label} is not allowed on an expired key.", "KeyExpired")


def _conflict_if_deleted(state: VaultState, name: str) -> None:
    if name.lower() in state.deleted:
        raise KeyVaultError(
            409,
            "Conflict",
            f"Key {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this "
            "state, the key can only be recovered or purged.",
            "ObjectIsDeletedButRecoverable",
        )


def _page(items: list[dict[str, Any]], query: dict[str, str], base: str, api_version: str) -> dict[str, Any]:
    try:
        size = int(query.get("maxresults") or MAX_PAGE)
        offset = int(query.get("$skiptoken") or 0)
    except ValueError as exc:
        raise bad_parameter("Invalid maxresults or $skiptoken") from exc
    if not 1 <= size <= MAX_PAGE:
        raise bad_parameter("maxresults must be between 1 and 25")
    page = items[offset : offset + size]
    out: dict[str, Any] = {"value": page}
    if offset + size < len(items):
        out["nextLink"] = f"{base}?api-version={quote(api_version)}&maxresults={size}&$skiptoken={offset + size}"
    return out


def bucket_for(state: VaultState, route: Route, body: dict[str, Any] | None) -> tuple[str, str]:
    """(throttle bucket, tier) of a request: key type and size of the key it touches."""
    material = None
    with state.lock:
        if route.key_name and route.operation not in ("KeyCreate", "KeyImport"):
            entry = state.keys.get(route.key_name.lower())
            if entry is not None:
                kv = entry.find(route.version) or entry.current
                material = kv.material
    if material is not None:
        family, size, hsm = material.family, material.size, material.hsm
        crv = material.crv
    elif route.operation == "KeyCreate" and body:
        kty = str(body.get("kty", ""))
        family, hsm = kty.removesuffix("-HSM"), kty.endswith("-HSM")
        raw_size = body.get("key_size")
        size = raw_size if isinstance(raw_size, int) else (2048 if family == "RSA" else 256)
        crv = str(body.get("crv") or "P-256")
    else:
        return "vault", "software"
    tier = "hsm" if hsm else "software"
    if family == "RSA":
        return f"RSA-{size}", tier
    if family == "EC":
        return f"EC-{crv}", tier
    return family, tier


# ---- operations ----------------------------------------------------------------------------------------
def execute(
    state: VaultState, route: Route, *, body: dict[str, Any] | None, query: dict[str, str], api_version: str
) -> Result:
    """Run one operation. Raises KeyVaultError for Key Vault error responses."""
    outbox = lifecycle.Outbox()
    body = body or {}
    with state.lock:
        lifecycle.evaluate(state, outbox)
        if route.operation in MUTATING:
            state.next_due = 0
        result = _dispatch(state, route, body, query=query, api_version=api_version, outbox=outbox)
        if route.operation in MUTATING:
            state.next_due = 0
    result.outbox = outbox
    return result


def _dispatch(
    state: VaultState,
    route: Route,
    body: dict[str, Any],
    *,
    query: dict[str, str],
    api_version: str,
    outbox: lifecycle.Outbox,
) -> Result:
    op, name, version = route.operation, route.key_name or "", route.version
    if op == "KeyCreate":
        return _create(state, name, body, outbox)
    if op == "KeyImport":
        return _import(state, name, body, outbox)
    if op == "KeyGet":
        entry, kv = _version(state, name, version)
        if not kv.enabled:
            raise forbidden("Operation get is not allowed on a disabled key.", "KeyDisabled")
        return Result(200, key_bundle(state, entry.name, kv), state.key_id(entry.name, kv.version))
    if op == "KeyUpdate":
        return _update(state, name, version, body)
    if op == "KeyList":
        listed = time.monotonic()
        items = [key_item(state, e.name, e.current, versioned=False) for e in state.keys.values()
                 if e.recovering_until <= listed]
        return Result(200, _page(items, query, state.origin + "/keys", api_version), state.origin + "/keys")
    if op == "KeyListVersions":
        entry = _active_entry(state, name)
        items = [key_item(state, entry.name, kv, versioned=True) for kv in entry.versions]
        base = f"{state.origin}/keys/{entry.name}/versions"
        return Result(200, _page(items, query, base, api_version), state.key_id(entry.name))
    if op == "KeyDelete":
        return _delete(state, name)
    if op == "KeyGetDeleted":
        deleted = _deleted_entry(state, name)
        entry = deleted.entry
        bundle = key_bundle(state, entry.name, entry.current) | deleted_extras(state, entry.name, deleted)
        return Result(200, bundle, state.key_id(entry.name, entry.current.version))
    if op == "KeyListDeleted":
        listed = time.monotonic()
        items = [
            key_item(state, d.entry.name, d.entry.current, versioned=False) | deleted_extras(state, d.entry.name, d)
            for d in state.deleted.values() if d.deleting_until <= listed
        ]
        return Result(
            200, _page(items, query, state.origin + "/deletedkeys", api_version), state.origin + "/deletedkeys"
        )
    if op == "KeyRecover":
        deleted = _deleted_entry(state, name)
        del state.deleted[name.lower()]
        deleted.entry.recovering_until = time.monotonic() + PENDING_SECONDS
        state.keys[name.lower()] = deleted.entry
        entry = deleted.entry
        return Result(
            200, key_bundle(state, entry.name, entry.current), state.key_id(entry.name, entry.current.version)
        )
    if op == "KeyPurge":
        deleted = _deleted_entry(state, name)
        if state.purge_protection or "Purgeable" not in state.recovery_level:
            raise forbidden(
                f'Operation "purge" is not allowed because purge protection is enabled for this vault. Key Vault '
                f"service will automatically purge it after the retention period has passed. Key: {name}",
                "PurgeProtectionEnabled",
            )
        del state.deleted[name.lower()]
        return Result(204, None, f"{state.origin}/deletedkeys/{deleted.entry.name}")
    if op == "KeyRotate":
        entry = _active_entry(state, name)
        kv = lifecycle.rotate(state, entry, outbox=outbox)
        return Result(200, key_bundle(state, entry.name, kv), state.key_id(entry.name, kv.version))
    if op == "KeyGetRotationPolicy":
        entry = _active_entry(state, name)
        return Result(200, _policy_body(state, entry), f"{state.key_id(entry.name)}/rotationpolicy")
    if op == "KeyUpdateRotationPolicy":
        entry = _active_entry(state, name)
        try:
            stored = lifecycle.validate_policy(body)
        except ValueError as exc:
            raise bad_parameter(str(exc)) from exc
        now = state.now_epoch()
        created = ((entry.rotation_policy or {}).get("attributes") or {}).get("created", now)
        stored["attributes"]["created"] = created
        stored["attributes"]["updated"] = now
        entry.rotation_policy = stored
        state.next_due = 0
        lifecycle.evaluate(state, outbox)
        return Result(200, _policy_body(state, entry), f"{state.key_id(entry.name)}/rotationpolicy")
    if route.crypto_op:
        return _crypto(state, route, body)
    if op == "GetRandomBytes":
        count = body.get("count")
        if not isinstance(count, int) or not 1 <= count <= 128:
            raise bad_parameter("count must be between 1 and 128")
        return Result(200, {"value": crypto.b64u_encode(os.urandom(count))}, state.origin + "/rng")
    if op == "KeyBackup":
        entry = _active_entry(state, name)
        blob = _BACKUPS.keep(state.subscription_id, entry)
        return Result(200, {"value": blob}, f"{state.key_id(entry.name)}/backup")
    if op == "KeyRestore":
        return _restore(state, body)
    raise KeyVaultError(400, "BadParameter", f"Unsupported operation {op}")


class _BackupStore:
    """Key backups: the blob a client receives is an opaque random token; what it stands for (every
    version, its material, attributes and rotation policy) stays in this process. Restorable, as in
    Azure, only into a vault of the same subscription, and only while the sandbox runs."""

    _PREFIX = "sbx-backup."

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[str, KeyEntry]] = {}

    def keep(self, subscription_id: str, entry: KeyEntry) -> str:
        token = self._PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            self._kept[token] = (subscription_id.lower(), copy.deepcopy(entry))
        return crypto.b64u_encode(token.encode("ascii"))

    def find(self, blob: object) -> tuple[str, KeyEntry]:
        try:
            token = crypto.b64u_decode(str(blob)).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            token = ""
        with self._lock:
            kept = self._kept.get(token)
        if kept is None:
            raise bad_parameter("The backup blob is not a key backup this service can read.")
        return kept[0], copy.deepcopy(kept[1])


_BACKUPS = _BackupStore()


def _restore(state: VaultState, body: dict[str, Any]) -> Result:
    subscription_id, entry = _BACKUPS.find(body.get("value"))
    if subscription_id != state.subscription_id.lower():
        raise KeyVaultError(400, "BadParameter", "The backup was taken in another subscription: a key backup can be "
                                                 "restored only into a vault of the same subscription.")
    _conflict_if_deleted(state, entry.name)
    if entry.name.lower() in state.keys:
        raise KeyVaultError(409, "Conflict", f"There was a conflict restoring the key '{entry.name}'. Key '"
                                             f"{entry.name}' already exists in this vault.", "KeyAlreadyExists")
    state.keys[entry.name.lower()] = entry
    return Result(200, key_bundle(state, entry.name, entry.current), state.key_id(entry.name, entry.current.version))


def _policy_body(state: VaultState, entry: KeyEntry) -> dict[str, Any]:
    policy = entry.rotation_policy or lifecycle.default_policy()
    return {
        "id": f"{state.key_id(entry.name)}/rotationpolicy",
        "lifetimeActions": [dict(a) for a in policy.get("lifetimeActions", [])],
        "attributes": dict(policy.get("attributes") or {}),
    }


def _hsm_allowed(state: VaultState, kty: str) -> None:
    if kty.endswith("-HSM") and state.sku != "premium":
        raise bad_parameter(f"Key type {kty} requires a premium vault; this vault's sku is {state.sku}")


def _create(state: VaultState, name: str, body: dict[str, Any], outbox: lifecycle.Outbox) -> Result:
    _check_name(name)
    _conflict_if_deleted(state, name)
    kty = body.get("kty")
    if kty not in ("RSA", "RSA-HSM", "EC", "EC-HSM", "oct-HSM"):
        raise bad_parameter(f"The value of parameter kty is invalid: {kty!r}")
    _hsm_allowed(state, kty)
    size = body.get("key_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
        raise bad_parameter("key_size must be an integer")
    enabled, nbf, exp, exportable = _attrs(body)
    key_ops = _key_ops(body.get("key_ops"))
    tags = _tags(body.get("tags"))
    try:
        material = crypto.generate(
            kty, size=size, crv=body.get("crv"), public_exponent=int(body.get("public_exponent") or 65537)
        )
    except crypto.CryptoError as exc:
        raise bad_parameter(str(exc)) from exc
    entry = state.keys.setdefault(name.lower(), KeyEntry(name))
    kv = lifecycle.add_version(
        state,
        entry,
        material,
        key_ops=key_ops,
        enabled=True if enabled is None else enabled,
        nbf=nbf,
        exp=exp,
        tags=tags,
        exportable=exportable,
        outbox=outbox,
    )
    return Result(200, key_bundle(state, entry.name, kv), state.key_id(entry.name, kv.version))


def _import(state: VaultState, name: str, body: dict[str, Any], outbox: lifecycle.Outbox) -> Result:
    _check_name(name)
    _conflict_if_deleted(state, name)
    jwk = body.get("key")
    if not isinstance(jwk, dict):
        raise bad_parameter("The parameter key is required")
    hsm = bool(body.get("Hsm") or body.get("hsm"))
    try:
        material = crypto.from_jwk(jwk, hsm=hsm)
    except crypto.CryptoError as exc:
        raise bad_parameter(str(exc)) from exc
    _hsm_allowed(state, material.kty)
    enabled, nbf, exp, exportable = _attrs(body)
    key_ops = _key_ops(jwk.get("key_ops"))
    entry = state.keys.setdefault(name.lower(), KeyEntry(name))
    kv = lifecycle.add_version(
        state,
        entry,
        material,
        key_ops=key_ops,
        enabled=True if enabled is None else enabled,
        nbf=nbf,
        exp=exp,
        tags=_tags(body.get("tags")),
        exportable=exportable,
        outbox=outbox,
    )
    return Result(200, key_bundle(state, entry.name, kv), state.key_id(entry.name, kv.version))


def _update(state: VaultState, name: str, version: str, body: dict[str, Any]) -> Result:
    entry, kv = _version(state, name, version)
    enabled, nbf, exp, _exportable = _attrs(body)
    attrs = body.get("attributes") or {}
    key_ops = _key_ops(body.get("key_ops"))
    tags = _tags(body.get("tags"))
    new_nbf = nbf if "nbf" in attrs else kv.nbf
    new_exp = exp if "exp" in attrs else kv.exp
    if new_nbf is not None and new_exp is not None and new_nbf >= new_exp:
        raise bad_parameter("The key's not-before date must be earlier than its expiry date")
    if enabled is not None:
        kv.enabled = enabled
    kv.nbf, kv.exp = new_nbf, new_exp
    if key_ops is not None:
        kv.key_ops = key_ops
    if tags is not None:
        kv.tags = tags
    kv.updated = state.now_epoch()
    if kv.exp is None or kv.exp > state.now_epoch():
        kv.notified.discard("expired")  # a new expiry in the future: the version can expire (and notify) again
    return Result(200, key_bundle(state, entry.name, kv), state.key_id(entry.name, kv.version))


def _delete(state: VaultState, name: str) -> Result:
    # Key Vault logs a KeyDelete with the key's versionless id (every version goes): properties.id
    # https://<vault>/keys/<name>, as the request named it.
    entry = _active_entry(state, name)
    del state.keys[name.lower()]
    bundle = key_bundle(state, entry.name, entry.current)
    if not state.enable_soft_delete:
        return Result(200, bundle, state.key_id(entry.name))
    now = state.now_epoch()
    deleted = DeletedKey(entry, now, now + state.soft_delete_retention_days * 86400,
                         deleting_until=time.monotonic() + PENDING_SECONDS)
    state.deleted[name.lower()] = deleted
    return Result(200, bundle | deleted_extras(state, entry.name, deleted), state.key_id(entry.name))


def _crypto(state: VaultState, route: Route, body: dict[str, Any]) -> Result:
    crypto_op = route.crypto_op or ""
    permission_label = CRYPTO_OPS[crypto_op][1]
    entry, kv = _version(state, route.key_name or "", route.version)
    kid = state.key_id(entry.name, kv.version)
    _usable(state, kv, permission_label)
    if permission_label not in kv.key_ops:
        raise forbidden(f"Operation {permission_label} is not permitted on this key.", "KeyOperationForbidden")
    alg = body.get("alg")
    if not isinstance(alg, str) or not alg:
        raise bad_parameter("The parameter alg is required")
    if "value" not in body:
        raise bad_parameter("The parameter value is required")
    try:
        value = crypto.b64u_decode(body["value"])
        material = kv.material
        if crypto_op == "encrypt":
            iv = crypto.b64u_decode(body["iv"]) if body.get("iv") else None
            aad = crypto.b64u_decode(body["aad"]) if body.get("aad") else None
            out = material.encrypt(alg, value, iv=iv, aad=aad)
            return Result(200, {"kid": kid} | {k: crypto.b64u_encode(v) for k, v in out.items()}, kid)
        if crypto_op == "decrypt":
            iv = crypto.b64u_decode(body["iv"]) if body.get("iv") else None
            aad = crypto.b64u_decode(body["aad"]) if body.get("aad") else None
            tag = crypto.b64u_decode(body["tag"]) if body.get("tag") else None
            plain = material.decrypt(alg, value, iv=iv, aad=aad, tag=tag)
            return Result(200, {"kid": kid, "value": crypto.b64u_encode(plain)}, kid)
        if crypto_op == "wrapkey":
            return Result(200, {"kid": kid, "value": crypto.b64u_encode(material.wrap(alg, value))}, kid)
        if crypto_op == "unwrapkey":
            return Result(200, {"kid": kid, "value": crypto.b64u_encode(material.unwrap(alg, value))}, kid)
        if crypto_op == "sign":
            return Result(200, {"kid": kid, "value": crypto.b64u_encode(material.sign(alg, value))}, kid)
        digest = crypto.b64u_decode(body.get("digest", ""))
        return Result(200, {"value": material.verify(alg, digest, value)}, kid)
    except crypto.CryptoError as exc:
        raise bad_parameter(str(exc)) from exc
