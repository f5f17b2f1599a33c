"""Domain values of the controller: frozen, validated, free of I/O and of any azure import.

Key Vault URLs are never built from a vault name. A vault is identified by its origin
(``https://host[:port]``), which comes from a key identifier or from the vault's ARM
``properties.vaultUri``; every origin is checked against the clouds' DNS suffixes or against the
configured custom origins (the local sandbox's) before anything else is done with it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from urllib.parse import urlsplit

from controller.errors import InvalidKeyId, InvalidResourceId

#: DNS suffixes of Key Vault and Managed HSM in the public, China and US Government clouds.
KEY_VAULT_DNS_SUFFIXES: tuple[str, ...] = (
    ".vault.azure.net",
    ".vault.azure.cn",
    ".vault.usgovcloudapi.net",
    ".managedhsm.azure.net",
    ".managedhsm.azure.cn",
    ".managedhsm.usgovcloudapi.net",
)

# Every pattern is used with fullmatch() and re.ASCII: "$" alone also matches before a trailing
# newline, and IGNORECASE without ASCII lets [a-z] match "\u017f" and the Kelvin sign.
_NAME_FLAGS = re.IGNORECASE | re.ASCII
# Vault names: 3-24 characters, letters, digits and hyphens, starting with a letter, no "--",
# not ending with a hyphen. Managed HSM names follow the same rule.
_VAULT_NAME = re.compile(r"[a-z](?!.*--)[a-z0-9-]{1,22}[a-z0-9]", _NAME_FLAGS)
# Key names: 1-127 characters, letters, digits and hyphens.
_KEY_NAME = re.compile(r"[0-9a-z-]{1,127}", _NAME_FLAGS)
# Key versions are 32 hexadecimal characters in Key Vault; Managed HSM uses the same form.
_KEY_VERSION = re.compile(r"[0-9a-f]{32}", _NAME_FLAGS)
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", _NAME_FLAGS)
# Resource group names: 1-90 letters, digits, underscores, hyphens, periods and parentheses.
_RESOURCE_GROUP = re.compile(r"[-\w.()]{1,90}")


def _has_unsafe_characters(text: str) -> bool:
    """True for whitespace, control and non-ASCII characters.

    urlsplit() silently deletes tabs and newlines, so "con\ttoso" would otherwise parse as "contoso".
    """
    return not text.isascii() or any(char.isspace() or not char.isprintable() for char in text)


def normalise_origin(value: str) -> str:
    """Return ``https://host[:port]`` (lower-case host, default port dropped) for a vault origin.

    Accepts a bare host name (``contoso.vault.azure.net``) or an https URL with an empty path.
    Raises InvalidKeyId for anything else: another scheme, credentials, a path, a query.
    """
    text = value.strip()
    if not text:
        raise InvalidKeyId("empty vault origin")
    if _has_unsafe_characters(text):
        raise InvalidKeyId(f"vault origin {value!r} contains whitespace, control or non-ASCII characters")
    if "://" not in text:
        text = "https://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as err:
        raise InvalidKeyId(f"vault origin {value!r} is not a valid URL") from err
    if parts.scheme.lower() != "https":
        raise InvalidKeyId(f"vault origin {value!r} must use https")
    if "@" in parts.netloc:
        raise InvalidKeyId(f"vault origin {value!r} must not carry credentials")
    if parts.path not in ("", "/") or "?" in text or "#" in text:
        raise InvalidKeyId(f"vault origin {value!r} must have no path, query or fragment")
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidKeyId(f"vault origin {value!r} has no host")
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    if port in (None, 443):
        return f"https://{host}"
    return f"https://{host}:{port}"


@dataclass(frozen=True, slots=True)
class VaultOrigin:
    """A Key Vault (or Managed HSM) data-plane origin, e.g. ``https://contoso.vault.azure.net``."""

    url: str

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def is_managed_hsm(self) -> bool:
        return ".managedhsm." in self.host

    @property
    def name(self) -> str | None:
        """The vault name for cloud vaults (the first DNS label); None for custom origins."""
        for suffix in KEY_VAULT_DNS_SUFFIXES:
            if self.host.endswith(suffix):
                return self.host[: -len(suffix)]
        return None

    def __str__(self) -> str:
        return self.url


def parse_vault_origin(value: str, *, custom_origins: Iterable[str] = ()) -> VaultOrigin:
    """Validate a vault origin: a cloud vault host with a valid vault name, or a configured custom origin."""
    origin = normalise_origin(value)
    if origin in {normalise_origin(custom) for custom in custom_origins}:
        return VaultOrigin(origin)
    vault = VaultOrigin(origin)
    if urlsplit(origin).port is not None:
        raise InvalidKeyId(f"vault origin {origin} has a port: only configured custom origins may")
    name = vault.name
    if name is None:
        raise InvalidKeyId(
            f"host {vault.host!r} is not a Key Vault or Managed HSM host and not a configured custom origin"
        )
    if not _VAULT_NAME.fullmatch(name):
        raise InvalidKeyId(f"{name!r} is not a valid vault name")
    return vault


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A Key Vault key, versionless (``version`` None) or pinned to one version."""

    vault: VaultOrigin
    name: str
    version: str | None = None

    @property
    def uri(self) -> str:
        base = f"{self.vault.url}/keys/{self.name}"
        return f"{base}/{self.version}" if self.version else base

    @property
    def versionless(self) -> KeyRef:
        return replace(self, version=None)

    @property
    def is_versioned(self) -> bool:
        return self.version is not None

    def with_version(self, version: str) -> KeyRef:
        if not _KEY_VERSION.fullmatch(version):
            raise InvalidKeyId(f"{version!r} is not a key version")
        return replace(self, version=version.lower())

    def same_key(self, other: KeyRef) -> bool:
        """True when both name the same key (names compare case-insensitively, as Key Vault does)."""
        return self.vault == other.vault and self.name.lower() == other.name.lower()

    def __str__(self) -> str:
        return self.uri


def parse_key_id(uri: str, *, custom_origins: Iterable[str] = ()) -> KeyRef:
    """Parse a versioned or versionless Key Vault key identifier.

    ``https://{vault}.vault.azure.net/keys/{name}[/{version}]`` (any cloud, Managed HSM included) or
    the same path under a configured custom origin. Surrounding whitespace and one trailing slash are
    tolerated; anything else (secrets, certificates, queries, extra segments, bad names, whitespace or
    control characters inside) raises InvalidKeyId.
    """
    if not isinstance(uri, str):
        raise InvalidKeyId(f"key identifier must be a string, not {type(uri).__name__}")
    text = uri.strip()
    if _has_unsafe_characters(text):
        raise InvalidKeyId(f"key identifier {uri!r} contains whitespace, control or non-ASCII characters")
    if "?" in text or "#" in text:
        raise InvalidKeyId(f"key identifier {uri!r} must have no query or fragment")
    try:
        parts = urlsplit(text)
    except ValueError as err:
        raise InvalidKeyId(f"{uri!r} is not a valid URL") from err
    origin_text = f"{parts.scheme}://{parts.netloc}" if parts.scheme else text
    vault = parse_vault_origin(origin_text, custom_origins=custom_origins)
    path = parts.path[:-1] if parts.path.endswith("/") else parts.path
    segments = path.split("/")[1:] if path else []
    if len(segments) not in (2, 3) or segments[0].lower() != "keys":
        raise InvalidKeyId(f"{uri!r} is not a key identifier (expected /keys/<name>[/<version>])")
    name = segments[1]
    if not _KEY_NAME.fullmatch(name):
        raise InvalidKeyId(f"{name!r} is not a valid key name")
    version = segments[2] if len(segments) == 3 else None
    if version is not None and not _KEY_VERSION.fullmatch(version):
        raise InvalidKeyId(f"{version!r} is not a valid key version")
    return KeyRef(vault=vault, name=name, version=version.lower() if version else None)


@dataclass(frozen=True, slots=True)
class VaultResourceId:
    """ARM id of a vault or Managed HSM.

    ``/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{name}``
    """

    subscription_id: str
    resource_group: str
    name: str
    provider_type: str = "vaults"  # or managedHSMs

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.KeyVault/{self.provider_type}/{self.name}"
        )

    def __str__(self) -> str:
        return self.id


def parse_vault_resource_id(value: str) -> VaultResourceId:
    """Parse a Key Vault ARM resource id (Event Grid's topic / CloudEvents source). Case-insensitive."""
    if not isinstance(value, str):
        raise InvalidResourceId(f"resource id must be a string, not {type(value).__name__}")
    segments = value.strip().strip("/").split("/")
    if (
        len(segments) != 8
        or segments[0].lower() != "subscriptions"
        or segments[2].lower() != "resourcegroups"
        or segments[4].lower() != "providers"
        or segments[5].lower() != "microsoft.keyvault"
        or segments[6].lower() not in ("vaults", "managedhsms")
    ):
        raise InvalidResourceId(f"{value!r} is not a Key Vault resource id")
    subscription, group, name = segments[1], segments[3], segments[7]
    if not _GUID.fullmatch(subscription):
        raise InvalidResourceId(f"{subscription!r} is not a subscription id")
    if not _RESOURCE_GROUP.fullmatch(group) or group.endswith(".") or not _VAULT_NAME.fullmatch(name):
        raise InvalidResourceId(f"{value!r} names no valid resource group and vault")
    provider_type = "managedHSMs" if segments[6].lower() == "managedhsms" else "vaults"
    return VaultResourceId(subscription.lower(), group, name, provider_type)


class KeyEventKind(enum.StrEnum):
    NEW_VERSION = "new_version"
    NEAR_EXPIRY = "near_expiry"
    EXPIRED = "expired"
    ACCESS_POLICY_CHANGED = "access_policy_changed"


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """One validated Key Vault event, whatever schema it arrived in.

    ``key`` is the versioned key for key events; for VaultAccessPolicyChanged it is None and only
    ``vault`` is set.
    """

    event_id: str
    kind: KeyEventKind
    event_type: str
    vault: VaultOrigin
    vault_resource_id: VaultResourceId | None
    key: KeyRef | None
    event_time: datetime | None
    not_before: datetime | None = None
    expires: datetime | None = None
    schema: str = "EventGrid"  # EventGrid | CloudEvents | DeadLetter

    def as_json(self) -> dict[str, object]:
        """The normalised form printed by ``cmkctl events parse`` and logged by the handlers."""
        return {
            "event_id": self.event_id,
            "kind": self.kind.value,
            "event_type": self.event_type,
            "vault": self.vault.url,
            "vault_resource_id": self.vault_resource_id.id if self.vault_resource_id else None,
            "key": self.key.uri if self.key else None,
            "key_name": self.key.name if self.key else None,
            "key_version": self.key.version if self.key else None,
            "event_time": _iso(self.event_time),
            "not_before": _iso(self.not_before),
            "expires": _iso(self.expires),
            "schema": self.schema,
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


@dataclass(frozen=True, slots=True)
class Condition:
    """A status condition in the cert-manager style.

    ``last_transition`` changes only when ``status`` changes: re-asserting the same status with a new
    reason or message keeps the original transition time, so the time says how long a consumer has
    been in its state.
    """

    type: str
    status: ConditionStatus
    reason: str
    message: str
    last_transition: datetime
    observed_version: str | None = field(default=None)

    def transition(
        self, status: ConditionStatus, reason: str, message: str, now: datetime
    ) -> Condition:
        changed_at = self.last_transition if status == self.status else now
        return replace(self, status=status, reason=reason, message=message, last_transition=changed_at)
