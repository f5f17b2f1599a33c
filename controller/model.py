"""Domain values of the controller: frozen, validated, free of I/O and of any azure import.

Key Vault URLs are never built from a vault name. A vault is identified by its origin
(``https://host[:port]``), which comes from a key identifier or from the vault's ARM
``properties.vaultUri``; every origin is checked against the clouds' DNS suffixes or against the
configured custom origins (the local sandbox's) before anything else is done with it.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from urllib.parse import urlsplit

from controller.errors import InvalidKeyId, InvalidResourceId
from controller.reasons import Reason
from controller.redaction import scrub, scrub_value

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


# Cached: every key URI a sweep parses is compared with every configured custom origin (a pure function of
# the text; failures raise and are not cached).
@functools.lru_cache(maxsize=4096)
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


class Severity(enum.StrEnum):
    """How urgent a finding or an alert is; ordered from the most to the least severe."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for critical .. 4 for info: sorts the most severe first."""
        return _SEVERITY_ORDER.index(self)

    def at_least(self, threshold: Severity) -> bool:
        """True when this severity is ``threshold`` or more severe."""
        return self.rank <= threshold.rank


_SEVERITY_ORDER: tuple[Severity, ...] = tuple(Severity)


@dataclass(frozen=True, slots=True)
class Alert:
    """A notification for humans. ``fingerprint`` identifies the problem so receivers can dedupe.

    Its texts and details are scrubbed of anything shaped like a secret as it is made (controller/redaction.py):
    an alert may quote what the controller refused, and it goes to the ledger and to every channel."""

    severity: Severity
    title: str
    resource: str
    reason: Reason
    message: str
    fingerprint: str
    details: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "title", scrub(self.title))
        object.__setattr__(self, "message", scrub(self.message))
        object.__setattr__(self, "details", scrub_value(self.details))



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
    reason: Reason
    message: str
    last_transition: datetime
    observed_version: str | None = field(default=None)

    def transition(
        self, status: ConditionStatus, reason: Reason, message: str, now: datetime
    ) -> Condition:
        changed_at = self.last_transition if status == self.status else now
        return replace(self, status=status, reason=reason, message=message, last_transition=changed_at)


# --- rotation planner inputs: what the service gathers once before controller/rotation.py decides ---


class ConsumerKind(enum.StrEnum):
    ACCOUNT = "account"
    SCOPE = "scope"


class IdentityAccess(enum.StrEnum):
    """Whether a consumer's encryption identity can get/wrapKey/unwrapKey the key, as observed.

    UNKNOWN means the gatherer could not evaluate it (no read access to the vault's access policies
    or role assignments); the planner never writes on UNKNOWN.
    """

    GRANTED = "granted"
    DENIED = "denied"
    UNKNOWN = "unknown"


class ForceAdoptionStep(enum.StrEnum):
    """Where a forced adoption stands, as recorded in the ledger.

    PINNED is written BEFORE the consumer is pinned to the target (it is the intent: "this pin is
    ours, restore the versionless URI afterwards"), RESTORED after the versionless URI is back, and
    ABANDONED when someone else changed the consumer meanwhile (their pin is theirs, not ours).
    """

    PINNED = "pinned"
    RESTORED = "restored"
    ABANDONED = "abandoned"


def _check_version(version: str) -> None:
    # Key Vault returns versions in lower case; the planner compares them as strings.
    if not _KEY_VERSION.fullmatch(version) or version != version.lower():
        raise InvalidKeyId(f"{version!r} is not a lower-case key version")


def _check_aware(name: str, moment: datetime | None) -> None:
    if moment is not None and moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


@dataclass(frozen=True, slots=True)
class KeyVersionInfo:
    """One version of a key with the attributes that decide whether it can be adopted."""

    version: str
    enabled: bool
    created: datetime
    not_before: datetime | None = None
    expires: datetime | None = None

    def __post_init__(self) -> None:
        _check_version(self.version)
        _check_aware("created", self.created)
        _check_aware("not_before", self.not_before)
        _check_aware("expires", self.expires)

    @property
    def available_from(self) -> datetime:
        """When the version could first be used: its creation, or its not-before time if later."""
        if self.not_before is not None and self.not_before > self.created:
            return self.not_before
        return self.created

    def usable_at(self, now: datetime) -> bool:
        return (
            self.enabled
            and (self.not_before is None or self.not_before <= now)
            and (self.expires is None or now < self.expires)
        )


def version_order(current_version: str | None) -> Callable[[KeyVersionInfo], tuple[datetime, bool, str]]:
    """How one key's versions order: by creation time; on a tie (Key Vault reports seconds) the key's
    current version (``current_version``, as the vault or ARM reports it) is the newest, and only then does
    the version string decide (deterministically).

    Ordering by creation and name alone put two versions made within one second in the order of their
    random names: a consumer on the older one looked newer than the target the vault says is current,
    was blocked as "ahead" and never adopted it."""
    current = (current_version or "").lower()
    return lambda info: (info.created, info.version.lower() == current, info.version)


@dataclass(frozen=True, slots=True)
class KeyState:
    """A key (versionless reference) and every version the vault listed, as gathered once.

    ``reachable`` False means the vault could not be read (firewall, DNS, 5xx after retries):
    ``versions`` is then empty or stale and the planner decides nothing.

    ``current_version`` is the version the vault serves for the versionless key (what Azure Storage's
    automatic updates adopt), when it was read: Key Vault reports creation times to the second, so two
    versions made within one second tie on creation and only the vault knows which is newer.
    """

    key: KeyRef
    versions: tuple[KeyVersionInfo, ...]
    reachable: bool = True
    unreachable_detail: str = ""
    current_version: str | None = None

    def __post_init__(self) -> None:
        if self.key.is_versioned:
            raise InvalidKeyId(f"KeyState takes the versionless key, not {self.key.uri}")
        names = [info.version for info in self.versions]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate versions listed for {self.key.uri}")

    def version(self, version: str | None) -> KeyVersionInfo | None:
        if version is None:
            return None
        return next((info for info in self.versions if info.version == version), None)

    def order(self, info: KeyVersionInfo) -> tuple[datetime, bool, str]:
        """Where ``info`` stands among the key's versions (``version_order``)."""
        return version_order(self.current_version)(info)

    @property
    def latest_enabled(self) -> KeyVersionInfo | None:
        """The newest enabled version (``order``): it may still be not yet valid, or expired."""
        enabled = [info for info in self.versions if info.enabled]
        return max(enabled, key=self.order) if enabled else None


@dataclass(frozen=True, slots=True)
class Consumer:
    """A storage account or an encryption scope configured with the key.

    ``key`` is the configured key URI: versionless (automatic updates on) or pinned to a version.
    ``current_key`` is Azure's read-only ``currentVersionedKeyIdentifier`` (None when Azure reports
    none). ``tags`` are the account's tags (for a scope: its account's), as sorted (name, value)
    pairs so that the value stays hashable.
    """

    kind: ConsumerKind
    resource_id: str
    account_name: str
    key: KeyRef
    current_key: KeyRef | None
    scope_name: str | None = None
    last_key_rotation: datetime | None = None
    identity_access: IdentityAccess = IdentityAccess.UNKNOWN
    tags: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.resource_id.strip():
            raise ValueError("consumer resource_id must not be empty")
        if (self.kind is ConsumerKind.SCOPE) != bool(self.scope_name):
            raise ValueError("scope_name is required for encryption scopes and only for them")
        for ref in (self.key, self.current_key):
            if ref is not None and ref.version is not None:
                _check_version(ref.version)
        _check_aware("last_key_rotation", self.last_key_rotation)

    @property
    def id(self) -> str:
        """The ledger key of this consumer: ARM ids compare case-insensitively."""
        return self.resource_id.lower()

    @property
    def pinned_version(self) -> str | None:
        return self.key.version

    @property
    def current_version(self) -> str | None:
        """The version Azure says the consumer uses, when it is a version of the configured key."""
        if self.current_key is None or not self.current_key.same_key(self.key):
            return None
        return self.current_key.version

    def tag(self, name: str) -> str | None:
        """A tag's value; Azure tag names are case-insensitive."""
        wanted = name.lower()
        return next((value for tag_name, value in self.tags if tag_name.lower() == wanted), None)


@dataclass(frozen=True, slots=True)
class ForceAdoptionIntent:
    """The ledger record of one forced adoption (see ForceAdoptionStep for when each step is written).

    ``consumer_id`` is Consumer.id (the lower-cased ARM id).
    """

    consumer_id: str
    target_version: str
    step: ForceAdoptionStep
    started_at: datetime

    def __post_init__(self) -> None:
        _check_version(self.target_version)
        _check_aware("started_at", self.started_at)


# --- adapter observations: what the Azure adapters return besides KeyState, KeyVersionInfo, Consumer ---


@dataclass(frozen=True, slots=True)
class RotationLifetimeAction:
    """One lifetime action of a key rotation policy, durations as Key Vault returns them (ISO 8601)."""

    action: str  # "Rotate" or "Notify" (compare case-insensitively)
    time_after_create: str | None = None
    time_before_expiry: str | None = None

    @property
    def rotates(self) -> bool:
        return self.action.lower() == "rotate"


@dataclass(frozen=True, slots=True)
class KeyRotationPolicyInfo:
    """A key's rotation policy. A key without one reads as Key Vault's default (no Rotate action)."""

    key: KeyRef
    lifetime_actions: tuple[RotationLifetimeAction, ...]
    expires_after: str | None = None  # attributes.expiryTime: the lifetime given to new versions
    created_on: datetime | None = None
    updated_on: datetime | None = None

    @property
    def rotate_actions(self) -> tuple[RotationLifetimeAction, ...]:
        return tuple(action for action in self.lifetime_actions if action.rotates)


@dataclass(frozen=True, slots=True)
class DeletedKeyInfo:
    """A soft-deleted key (versionless): when it was deleted and when Key Vault will purge it."""

    key: KeyRef
    deleted_on: datetime | None
    scheduled_purge: datetime | None


class IdentityKind(enum.StrEnum):
    SYSTEM_ASSIGNED = "SystemAssigned"
    USER_ASSIGNED = "UserAssigned"


@dataclass(frozen=True, slots=True)
class EncryptionIdentity:
    """The managed identity a storage account (and each of its encryption scopes) uses to reach the key.

    ``principal_id`` is None when the identity does not resolve (CMK-002): a user-assigned identity
    named in ``encryption.identity`` but not attached to the account, or no identity at all;
    ``problem`` then says which.
    """

    kind: IdentityKind
    principal_id: str | None
    user_assigned_identity: str | None = None  # ARM id of the user-assigned identity
    problem: str = ""


@dataclass(frozen=True, slots=True)
class ObservedConsumer:
    """A consumer as read from ARM, with what key access evaluation needs beside it."""

    consumer: Consumer
    identity: EncryptionIdentity
    location: str = ""

    @property
    def subscription_id(self) -> str:
        return self.consumer.resource_id.split("/")[2].lower()


@dataclass(frozen=True, slots=True)
class AccessVerdict:
    """Whether an identity can get/wrapKey/unwrapKey a key, with the evidence (or why it is UNKNOWN)."""

    access: IdentityAccess
    reason: str


class InventorySource(enum.StrEnum):
    RESOURCE_GRAPH = "resource-graph"
    SUBSCRIPTION_LISTING = "subscription-listing"


@dataclass(frozen=True, slots=True)
class ConsumerListing:
    """Every consumer of one key across the inventoried subscriptions, and how they were found.

    ``fallback_reason`` says why Resource Graph was not used (empty when it was).
    """

    key: KeyRef
    consumers: tuple[ObservedConsumer, ...]
    source: InventorySource
    fallback_reason: str = ""

