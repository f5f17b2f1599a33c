"""The state of one emulated vault, as one plain Python object.

``VaultState`` holds the vault's ARM-level settings (soft delete, purge protection, RBAC mode, access
policies, role assignments, network ACLs, resource id, tenant, sku), its keys, and the sandbox extras
(throttling, fault injection, operation counters). The Key Vault data plane reads it on every request;
the admin API and, later, the ARM control-plane emulator mutate it in-process. Every read and write goes
through ``state.lock`` (a re-entrant lock), so any thread may mutate it. Use the methods that change
access policies (``set_access_policies``, ``upsert_access_policy``, ``remove_access_policy``): they publish
VaultAccessPolicyChanged like Azure does. ``to_json`` / ``apply_json`` speak ARM's property names.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .crypto import KeyMaterial

#: The vault and origin of the request being served (VaultState.serving); None outside a request.
_REQUESTED_ORIGIN: contextvars.ContextVar[tuple[VaultState, str] | None] = contextvars.ContextVar(
    "keyvault_requested_origin", default=None
)

if TYPE_CHECKING:
    from emulators.bus import SandboxBus
    from emulators.clock import SandboxClock

ACCESS_POLICY_KEY_PERMISSIONS = (
    "get", "list", "update", "create", "import", "delete", "recover", "backup", "restore", "purge",
    "decrypt", "encrypt", "unwrapKey", "wrapKey", "verify", "sign", "release", "rotate",
    "getrotationpolicy", "setrotationpolicy",
)  # fmt: skip

# Azure's published per-vault limits (transactions per 10 s, "all other transactions") by key type/size.
DEFAULT_THROTTLE_LIMITS: dict[str, dict[str, int]] = {
    "RSA-2048": {"software": 4000, "hsm": 2000},
    "RSA-3072": {"software": 1000, "hsm": 500},
    "RSA-4096": {"software": 500, "hsm": 250},
    "EC-P-256": {"software": 4000, "hsm": 2000},
    "EC-P-256K": {"software": 4000, "hsm": 2000},
    "EC-P-384": {"software": 4000, "hsm": 2000},
    "EC-P-521": {"software": 4000, "hsm": 2000},
    "oct": {"software": 4000, "hsm": 2000},
    "vault": {"software": 4000, "hsm": 4000},
}


@dataclass
class KeyVersion:
    version: str
    material: KeyMaterial
    key_ops: list[str]
    enabled: bool
    nbf: int | None
    exp: int | None
    created: int
    updated: int
    tags: dict[str, str] = field(default_factory=dict)
    exportable: bool | None = None
    notified: set[str] = field(default_factory=set)  # time-driven notifications already emitted


@dataclass
class KeyEntry:
    name: str
    versions: list[KeyVersion] = field(default_factory=list)
    rotation_policy: dict[str, Any] | None = None  # {lifetimeActions, attributes{expiryTime, created, updated}}
    #: While being recovered (time.monotonic() deadline), the key is not served yet, as in Azure.
    recovering_until: float = 0.0

    @property
    def current(self) -> KeyVersion:
        return self.versions[-1]

    def find(self, version: str) -> KeyVersion | None:
        if not version:
            return self.versions[-1] if self.versions else None
        for kv in self.versions:
            if kv.version == version.lower():
                return kv
        return None


@dataclass
class DeletedKey:
    entry: KeyEntry
    deleted_date: int
    scheduled_purge_date: int
    #: While the deletion is in progress (time.monotonic() deadline), the deleted key is not listed yet.
    deleting_until: float = 0.0


@dataclass
class AccessPolicy:
    object_id: str
    tenant_id: str
    application_id: str | None = None
    keys: list[str] = field(default_factory=list)
    other: dict[str, list[str]] = field(default_factory=dict)  # secrets, certificates, storage (kept as given)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tenantId": self.tenant_id,
            "objectId": self.object_id,
            "permissions": {"keys": list(self.keys), **{k: list(v) for k, v in self.other.items()}},
        }
        if self.application_id:
            out["applicationId"] = self.application_id
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], default_tenant: str) -> AccessPolicy:
        perms = dict(data.get("permissions") or {})
        keys = [str(p) for p in perms.pop("keys", []) or []]
        if not data.get("objectId"):
            raise ValueError("accessPolicies[].objectId is required")
        return cls(
            object_id=str(data["objectId"]),
            tenant_id=str(data.get("tenantId") or default_tenant),
            application_id=data.get("applicationId") or None,
            keys=keys,
            other={k: [str(p) for p in v or []] for k, v in perms.items()},
        )

    def allows(self, permission: str) -> bool:
        wanted = permission.lower()
        return any(p.lower() in (wanted, "all") for p in self.keys)


@dataclass
class RoleAssignment:
    principal_id: str
    role_definition_id: str  # a GUID, a full ARM role definition id, or a built-in role name
    scope: str  # ARM scope: subscription, resource group, vault or vault/keys/<name>
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "principalId": self.principal_id,
            "roleDefinitionId": self.role_definition_id,
            "scope": self.scope,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], default_scope: str) -> RoleAssignment:
        props = data.get("properties", data)
        if not props.get("principalId") or not props.get("roleDefinitionId"):
            raise ValueError("roleAssignments[] needs principalId and roleDefinitionId")
        return cls(
            principal_id=str(props["principalId"]),
            role_definition_id=str(props["roleDefinitionId"]),
            scope=str(props.get("scope") or default_scope),
            id=str(data.get("name") or data.get("id") or uuid.uuid4()).rsplit("/", 1)[-1],
        )


@dataclass
class NetworkAcls:
    default_action: str = "Allow"  # Allow | Deny
    bypass: str = "AzureServices"  # AzureServices | None
    ip_rules: list[str] = field(default_factory=list)
    virtual_network_rules: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "defaultAction": self.default_action,
            "bypass": self.bypass,
            "ipRules": [{"value": r} for r in self.ip_rules],
            "virtualNetworkRules": list(self.virtual_network_rules),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkAcls:
        default_action = str(data.get("defaultAction", "Allow"))
        bypass = str(data.get("bypass", "AzureServices"))
        if default_action.lower() not in ("allow", "deny"):
            raise ValueError("networkAcls.defaultAction must be Allow or Deny")
        if bypass.lower() not in ("azureservices", "none"):
            raise ValueError("networkAcls.bypass must be AzureServices or None")
        rules = []
        for rule in data.get("ipRules") or []:
            value = str(rule["value"] if isinstance(rule, dict) else rule)
            ipaddress.ip_network(value, strict=False)  # validates
            rules.append(value)
        return cls(
            default_action="Deny" if default_action.lower() == "deny" else "Allow",
            bypass="None" if bypass.lower() == "none" else "AzureServices",
            ip_rules=rules,
            virtual_network_rules=list(data.get("virtualNetworkRules") or []),
        )

    def admits(self, ip: str, trusted_service: bool) -> bool:
        if self.default_action == "Allow":
            return True
        if trusted_service and self.bypass == "AzureServices":
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in ipaddress.ip_network(rule, strict=False) for rule in self.ip_rules)


@dataclass
class ThrottleConfig:
    enabled: bool = False
    limits: dict[str, dict[str, int]] = field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_THROTTLE_LIMITS.items()}
    )
    window_seconds: float = 10.0

    def to_json(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "windowSeconds": self.window_seconds, "limits": self.limits}


@dataclass
class FaultConfig:
    error_rate: float = 0.0
    error_status: int = 503
    latency_ms: int = 0
    reset_rate: float = 0.0
    operations: list[str] = field(default_factory=list)  # empty: every data-plane operation
    seed: int | None = None  # re-seeds the vault's fault RNG when set (reproducible fault sequences)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "errorRate": self.error_rate,
            "errorStatus": self.error_status,
            "latencyMs": self.latency_ms,
            "resetRate": self.reset_rate,
            "operations": list(self.operations),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultConfig:
        cfg = cls(
            error_rate=float(data.get("errorRate", 0.0)),
            error_status=int(data.get("errorStatus", 503)),
            latency_ms=int(data.get("latencyMs", 0)),
            reset_rate=float(data.get("resetRate", 0.0)),
            operations=[str(o) for o in data.get("operations") or []],
            seed=int(data["seed"]) if data.get("seed") is not None else None,
        )
        if not (0 <= cfg.error_rate <= 1 and 0 <= cfg.reset_rate <= 1):
            raise ValueError("errorRate and resetRate are probabilities in [0, 1]")
        return cfg


class OperationCounters:
    """Counts of data-plane requests per operation, per key and per status, and of the requests being
    served now per operation (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Requests received and not yet answered, per operation: not reset with the counts (they are still
        #: being served). What a test waits for to act while a client waits on the vault.
        self._in_flight: Counter[str] = Counter()
        self.reset()

    @contextlib.contextmanager
    def serving(self, operation: str) -> Iterator[None]:
        """Around the handling of one request of ``operation``."""
        with self._lock:
            self._in_flight[operation] += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[operation] -= 1

    def in_flight(self, operation: str) -> int:
        with self._lock:
            return self._in_flight[operation]

    def reset(self) -> None:
        with self._lock:
            self.total = 0
            self.by_operation: Counter[str] = Counter()
            self.by_status: Counter[str] = Counter()
            self.by_key: dict[str, Counter[str]] = {}
            self.throttled = 0

    def record(self, operation: str, key: str | None, status: int) -> None:
        with self._lock:
            self.total += 1
            self.by_operation[operation] += 1
            self.by_status[str(status)] += 1
            if status == 429:
                self.throttled += 1
            if key:
                self.by_key.setdefault(key, Counter())[operation] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total": self.total,
                "throttled": self.throttled,
                "byOperation": dict(self.by_operation),
                "byStatus": dict(self.by_status),
                "byKey": {k: dict(v) for k, v in self.by_key.items()},
            }


class Throttle:
    """Key Vault's documented limits: at most ``limit`` transactions per bucket (key type and size,
    software/HSM) in each 10-second window, on real monotonic time. The windows follow one another
    without gaps from the bucket's first transaction (since the last reset), each admitting ``limit``;
    a refused transaction (429) is not counted, as Azure's throttling guidance says, and waits until
    the window closes (its Retry-After)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def admit(self, bucket: str, limit: int, window: float) -> float | None:
        """Record one operation; None if admitted, else seconds until the bucket has room (Retry-After)."""
        now = self._monotonic()
        with self._lock:
            current = self._windows.get(bucket)
            if current is None:
                current = self._windows[bucket] = _Window(opened=now)
            elif now >= current.opened + window:
                current.opened += window * ((now - current.opened) // window)
                current.admitted = 0
            if current.admitted >= limit:
                return max(0.001, current.opened + window - now)
            current.admitted += 1
            return None

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()


@dataclass
class _Window:
    opened: float
    admitted: int = 0


def _epoch(dt: datetime) -> int:
    return int(dt.timestamp())


class VaultState:
    """One emulated vault. Create it through ``KeyVaultEmulator.add_vault`` (which gives it an origin)."""

    def __init__(
        self,
        name: str,
        *,
        subscription_id: str,
        resource_group: str,
        clock: SandboxClock,
        bus: SandboxBus | None = None,
        tenant_id: str,
        location: str = "westeurope",
        sku: str = "premium",
        enable_soft_delete: bool = True,
        soft_delete_retention_days: int = 90,
        purge_protection: bool = True,
        rbac: bool = False,
        access_policies: list[AccessPolicy] | None = None,
        role_assignments: list[RoleAssignment] | None = None,
        network_acls: NetworkAcls | None = None,
    ) -> None:
        if not 7 <= soft_delete_retention_days <= 90:
            raise ValueError("softDeleteRetentionInDays must be between 7 and 90")
        self.lock = threading.RLock()
        self.name = name
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.clock = clock
        self.bus = bus
        self.tenant_id = tenant_id
        self.location = location
        self.sku = sku
        self.enable_soft_delete = enable_soft_delete
        self.soft_delete_retention_days = soft_delete_retention_days
        self.purge_protection = purge_protection
        self.rbac = rbac
        self.access_policies: list[AccessPolicy] = list(access_policies or [])
        self.role_assignments: list[RoleAssignment] = list(role_assignments or [])
        self.role_definitions: dict[str, dict[str, Any]] = {}  # custom roles: id -> {roleName, dataActions...}
        self.network_acls = network_acls or NetworkAcls()
        self.throttling = ThrottleConfig()
        self.faults = FaultConfig()
        self.counters = OperationCounters()
        self.throttle = Throttle()
        self.keys: dict[str, KeyEntry] = {}
        self.deleted: dict[str, DeletedKey] = {}
        self.next_due = 0  # epoch of the next time-driven change; 0 = re-evaluate (set after key mutations)
        self.listen_origin = ""  # https://127.0.0.x:port, set when the vault's server is listening
        self.public_host: str | None = None  # <name>.vault.azure.net where the sandbox serves Azure's host names
        self.host = "127.0.0.1"
        self.port = 0

    # ---- identity --------------------------------------------------------------------------------
    @property
    def canonical_origin(self) -> str:
        """What ARM reports and events carry: ``https://<name>.vault.azure.net`` where the vault has its Azure
        host name (reached through the sandbox's proxy), else its loopback origin."""
        return f"https://{self.public_host}" if self.public_host else self.listen_origin

    @property
    def origin(self) -> str:
        """The origin ids are built from: the one the request being served named (its Host header: a vault
        with an Azure host name is still served on its loopback origin too), else the canonical one."""
        requested = _REQUESTED_ORIGIN.get()
        if requested is not None and requested[0] is self:
            return requested[1]
        return self.canonical_origin

    @contextlib.contextmanager
    def serving(self, host_header: str) -> Iterator[None]:
        """Within a request: ids name the origin the client asked for (Key Vault builds them from the host
        it was reached at). A Host header that names neither of the vault's origins gets the canonical one."""
        host = host_header.lower().removesuffix(":443")
        if self.public_host is not None and host == self.public_host:
            origin = self.canonical_origin
        elif self.listen_origin and host == self.listen_origin.removeprefix("https://"):
            origin = self.listen_origin
        else:
            origin = self.canonical_origin
        token = _REQUESTED_ORIGIN.set((self, origin))
        try:
            yield
        finally:
            _REQUESTED_ORIGIN.reset(token)

    @property
    def uri(self) -> str:
        """The vault URI as ARM's properties.vaultUri gives it (with the trailing slash)."""
        return self.origin + "/"

    @property
    def resource_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.KeyVault/vaults/{self.name}"
        )

    @property
    def audit_resource_id(self) -> str:
        """The resource id as Azure writes it in AuditEvent records (upper case)."""
        return self.resource_id.upper()

    # ---- soft delete -----------------------------------------------------------------------------
    @property
    def recovery_level(self) -> str:
        if not self.enable_soft_delete:
            return "Purgeable"
        base = "Recoverable" if self.soft_delete_retention_days == 90 else "CustomizedRecoverable"
        return base if self.purge_protection else base + "+Purgeable"

    @property
    def recoverable_days(self) -> int:
        return self.soft_delete_retention_days if self.enable_soft_delete else 0

    # ---- access policies (publish VaultAccessPolicyChanged) -----------------------------------------
    def set_access_policies(self, policies: list[AccessPolicy]) -> None:
        with self.lock:
            self.access_policies = list(policies)
        self._access_policy_changed()

    def upsert_access_policy(self, policy: AccessPolicy) -> None:
        with self.lock:
            for i, existing in enumerate(self.access_policies):
                same = (existing.object_id, existing.application_id) == (policy.object_id, policy.application_id)
                if same and existing.tenant_id == policy.tenant_id:
                    self.access_policies[i] = policy
                    break
            else:
                self.access_policies.append(policy)
        self._access_policy_changed()

    def remove_access_policy(self, object_id: str, application_id: str | None = None) -> bool:
        with self.lock:
            before = len(self.access_policies)
            self.access_policies = [
                p
                for p in self.access_policies
                if not (p.object_id == object_id and (application_id is None or p.application_id == application_id))
            ]
            changed = len(self.access_policies) != before
        if changed:
            self._access_policy_changed()
        return changed

    def _access_policy_changed(self) -> None:
        from .lifecycle import publish_access_policy_changed

        publish_access_policy_changed(self)

    # ---- role assignments ----------------------------------------------------------------------
    def add_role_assignment(self, assignment: RoleAssignment) -> RoleAssignment:
        with self.lock:
            self.role_assignments.append(assignment)
        return assignment

    def remove_role_assignment(self, assignment_id: str) -> bool:
        with self.lock:
            before = len(self.role_assignments)
            self.role_assignments = [a for a in self.role_assignments if a.id != assignment_id]
            return len(self.role_assignments) != before

    # ---- JSON (admin API / ARM emulator) -----------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        with self.lock:
            return {
                "id": self.resource_id,
                "name": self.name,
                "type": "Microsoft.KeyVault/vaults",
                "location": self.location,
                "properties": {
                    "tenantId": self.tenant_id,
                    "sku": {"family": "A", "name": self.sku},
                    "vaultUri": self.uri,
                    "enableSoftDelete": self.enable_soft_delete,
                    "softDeleteRetentionInDays": self.soft_delete_retention_days,
                    "enablePurgeProtection": self.purge_protection or None,
                    "enableRbacAuthorization": self.rbac,
                    "accessPolicies": [p.to_json() for p in self.access_policies],
                    "networkAcls": self.network_acls.to_json(),
                },
                "sandbox": {
                    "origin": self.origin,
                    "listenOrigin": self.listen_origin,
                    "roleAssignments": [a.to_json() for a in self.role_assignments],
                    "roleDefinitions": dict(self.role_definitions),
                    "throttling": self.throttling.to_json(),
                    "faults": self.faults.to_json(),
                    "keys": sorted(self.keys),
                    "deletedKeys": sorted(self.deleted),
                },
            }

    def apply_json(self, patch: dict[str, Any]) -> None:
        """Apply ARM-style vault properties (a PATCH: only the given fields change). Raises ValueError."""
        props = patch.get("properties", patch)
        policies_changed = False
        with self.lock:
            if "softDeleteRetentionInDays" in props:
                days = int(props["softDeleteRetentionInDays"])
                if not 7 <= days <= 90:
                    raise ValueError("softDeleteRetentionInDays must be between 7 and 90")
                self.soft_delete_retention_days = days
            if "enableSoftDelete" in props and props["enableSoftDelete"] is not None:
                if not props["enableSoftDelete"] and self.enable_soft_delete and self.purge_protection:
                    raise ValueError("soft delete cannot be disabled while purge protection is enabled")
                self.enable_soft_delete = bool(props["enableSoftDelete"])
            if "enablePurgeProtection" in props and props["enablePurgeProtection"] is not None:
                if self.purge_protection and not props["enablePurgeProtection"]:
                    raise ValueError("purge protection cannot be disabled once enabled")
                self.purge_protection = bool(props["enablePurgeProtection"])
            if "enableRbacAuthorization" in props and props["enableRbacAuthorization"] is not None:
                self.rbac = bool(props["enableRbacAuthorization"])
            if "tenantId" in props:
                self.tenant_id = str(props["tenantId"])
            if "sku" in props:
                sku = props["sku"]
                self.sku = str(sku.get("name") if isinstance(sku, dict) else sku).lower()
            if "networkAcls" in props and props["networkAcls"] is not None:
                self.network_acls = NetworkAcls.from_json(props["networkAcls"])
            if "accessPolicies" in props and props["accessPolicies"] is not None:
                self.access_policies = [AccessPolicy.from_json(p, self.tenant_id) for p in props["accessPolicies"]]
                policies_changed = True
        if policies_changed:
            self._access_policy_changed()

    # ---- helpers for the data plane --------------------------------------------------------------
    def now_epoch(self) -> int:
        return _epoch(self.clock.now())

    def key_id(self, name: str, version: str | None = None, *, canonical: bool = False) -> str:
        origin = self.canonical_origin if canonical else self.origin
        return f"{origin}/keys/{name}" + (f"/{version}" if version else "")
