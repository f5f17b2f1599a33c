"""A small CMK estate in the ARM emulator for the ARM adapter tests (storage control, inventory, key access).

Built through the unmodified management clients, as a customer would: an access-policy vault and an
RBAC vault, keys, user-assigned identities, storage accounts (versionless / pinned, user- / system-
assigned identity) and encryption scopes, in two subscriptions. Resource Graph is mounted on the ARM
origin; ``faults`` make it (or one subscription's storage listing) fail on demand.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from azure.keyvault.keys import KeyClient
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.models import RoleAssignmentCreateParameters
from azure.mgmt.keyvault import KeyVaultManagementClient
from azure.mgmt.keyvault.models import (
    AccessPolicyEntry,
    AccessPolicyUpdateKind,
    Permissions,
    Sku,
    VaultAccessPolicyParameters,
    VaultAccessPolicyProperties,
    VaultCreateOrUpdateParameters,
    VaultProperties,
)
from azure.mgmt.managementgroups import ManagementGroupsMgmtClient
from azure.mgmt.managementgroups.models import (
    CreateManagementGroupDetails,
    CreateManagementGroupProperties,
    CreateManagementGroupRequest,
    CreateParentGroupInfo,
)
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.msi.models import Identity as MsiIdentity
from azure.mgmt.storage import StorageManagementClient
from azure.mgmt.storage.models import (
    Encryption,
    EncryptionIdentity,
    EncryptionScope,
    EncryptionScopeKeyVaultProperties,
    Identity,
    KeyVaultProperties,
    StorageAccountCreateParameters,
    StorageAccountUpdateParameters,
    UserAssignedIdentity,
)
from azure.mgmt.storage.models import Sku as StorageSku

from controller.adapters.credentials import ArmConnection
from controller.model import KeyRef, VaultOrigin, parse_vault_origin
from controller.vault_policy import VaultPolicy
from emulators.arm import ArmEmulator
from emulators.bus import SandboxBus
from emulators.clock import SandboxClock
from emulators.egress_proxy import EgressProxy
from emulators.keyvault import KeyVaultEmulator
from emulators.query_endpoints import RESOURCE_GRAPH_PATH, ResourceGraphService
from tests.support.egress import through_proxy

SUB_A = "aaaaaaaa-0000-4000-8000-0000000000a1"
SUB_B = "bbbbbbbb-0000-4000-8000-0000000000b2"
SUB_THROTTLED = "cccccccc-0000-4000-8000-0000000000c3"
SUB_FORBIDDEN = "dddddddd-0000-4000-8000-0000000000d4"
RG = "rg-adapters"
CONTROLLER = "c0000000-0000-4000-8000-00000000c0de"
ARM_SCOPE = ["https://management.azure.com/.default"]
CRYPTO_SERVICE_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
KV_ADMIN = "00482a5a-887f-4fb3-b363-3b7fe8e74483"
STORAGE_KEY_PERMISSIONS = ["get", "wrapKey", "unwrapKey"]


@dataclass
class Faults:
    """Switches read by the fault routes mounted on the ARM origin."""

    resource_graph_status: int | None = None  # e.g. 403: Resource Graph refuses every query
    resource_graph_queries: int = 0
    resource_graph_subscriptions: list[int] = field(default_factory=list)  # subscriptions named per query
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, lower-case path) of every request
    writes: list[tuple[str, str, Any]] = field(default_factory=list)  # (method, path, JSON body) of PATCH/PUT

    def requests_matching(self, method: str, fragment: str) -> int:
        return sum(1 for verb, path in self.requests if verb == method and fragment.lower() in path)


def _arm_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


@contextmanager
def running_arm(directory: Path) -> Iterator[tuple[ArmEmulator, Faults]]:
    """ARM and its vaults, which are at their Azure host names (https://<name>.vault.azure.net) through the
    sandbox's proxy, named in the environment for the duration (tests/support/egress.py)."""
    proxy = EgressProxy().start()
    keyvault = KeyVaultEmulator(SandboxClock(), SandboxBus(), directory=directory, proxy=proxy)
    arm = ArmEmulator(keyvault=keyvault, storage_tick_seconds=3600)
    faults = Faults()
    graph = ResourceGraphService(
        arm.resources_snapshot, resource_containers=arm.resource_containers_snapshot, clock=arm.clock
    )

    async def resource_graph(request: web.Request) -> web.StreamResponse:
        faults.resource_graph_queries += 1
        body = json.loads(await request.read() or b"{}")
        faults.resource_graph_subscriptions.append(len(body.get("subscriptions") or ()))
        if faults.resource_graph_status is not None:
            return _arm_error(faults.resource_graph_status, "AuthorizationFailed", "Resource Graph refused (fault)")
        return await graph.handle(request)

    async def throttled(_request: web.Request) -> web.StreamResponse:
        return _arm_error(429, "TooManyRequests", "throttled (fault)", {"Retry-After": "7"})

    async def forbidden(_request: web.Request) -> web.StreamResponse:
        return _arm_error(403, "AuthorizationFailed", "The client does not have authorization (fault)")

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        faults.requests.append((request.method, request.path.lower()))
        if request.method in ("PATCH", "PUT"):
            raw = await request.read()  # aiohttp keeps the body for the handler
            faults.writes.append((request.method, request.path.lower(), json.loads(raw) if raw else None))
        response: web.StreamResponse = await handler(request)
        return response

    arm.app.middlewares.append(record)  # runs inside the emulator's own middleware, before start()
    accounts = "/providers/Microsoft.Storage/storageAccounts"
    arm.add_routes(
        [
            web.post(RESOURCE_GRAPH_PATH, resource_graph),
            web.get(f"/subscriptions/{SUB_THROTTLED}{accounts}", throttled),
            web.get(f"/subscriptions/{SUB_FORBIDDEN}{accounts}", forbidden),
        ]
    )
    try:
        with arm, through_proxy(proxy):
            yield arm, faults
    finally:
        graph.close()
        proxy.stop()


@dataclass
class World:
    arm: ArmEmulator
    faults: Faults
    cred: Any = None
    vaults: dict[str, Any] = field(default_factory=dict)  # name -> mgmt Vault
    identities: dict[str, Any] = field(default_factory=dict)  # name -> mgmt Identity

    def __post_init__(self) -> None:
        self.cred = self.arm.credential(CONTROLLER)
        self.tenant = self.arm.tenant_id
        for subscription in (SUB_A, SUB_B):
            self.arm.ensure_resource_group(subscription, RG)

    # ---- clients ------------------------------------------------------------------------------------
    def mgmt_kwargs(self) -> dict[str, Any]:
        return {"base_url": self.arm.url, "connection_verify": self.arm.ca_path, "credential_scopes": ARM_SCOPE}

    def storage(self, subscription: str = SUB_A) -> StorageManagementClient:
        return StorageManagementClient(self.cred, subscription, **self.mgmt_kwargs())

    def keyvault_mgmt(self, subscription: str = SUB_A) -> KeyVaultManagementClient:
        return KeyVaultManagementClient(self.cred, subscription, **self.mgmt_kwargs())

    def authz(self, subscription: str = SUB_A) -> AuthorizationManagementClient:
        return AuthorizationManagementClient(self.cred, subscription, **self.mgmt_kwargs())

    def connection(self) -> ArmConnection:
        return ArmConnection(self.cred, endpoint=self.arm.url, connection_verify=self.arm.ca_path, retry_total=0)

    def key_client(self, vault: str) -> KeyClient:
        return KeyClient(self.vaults[vault].properties.vault_uri, self.cred, connection_verify=self.arm.ca_path,
                         retry_total=0)

    @property
    def policy(self) -> VaultPolicy:
        """The vault allowlist of every vault created so far."""
        return VaultPolicy.of(self.origin(name).url for name in self.vaults)

    def origin(self, vault: str) -> VaultOrigin:
        return parse_vault_origin(self.vaults[vault].properties.vault_uri)

    def key(self, vault: str, name: str, version: str | None = None) -> KeyRef:
        return KeyRef(self.origin(vault), name, version)

    # ---- building -----------------------------------------------------------------------------------
    def create_vault(self, name: str, *, rbac: bool = False, subscription: str = SUB_A) -> Any:
        policies = (
            []
            if rbac
            else [
                AccessPolicyEntry(
                    tenant_id=self.tenant, object_id=CONTROLLER, permissions=Permissions(keys_property=["all"])
                )
            ]
        )
        props = VaultProperties(
            tenant_id=self.tenant,
            sku=Sku(family="A", name="premium"),
            enable_soft_delete=True,
            soft_delete_retention_in_days=7,
            enable_purge_protection=True,
            enable_rbac_authorization=rbac,
            access_policies=policies,
        )
        vault = (
            self.keyvault_mgmt(subscription)
            .vaults.begin_create_or_update(
                RG, name, VaultCreateOrUpdateParameters(location="westeurope", properties=props)
            )
            .result()
        )
        self.vaults[name] = vault
        if rbac:
            self.assign_role(vault.id, CONTROLLER, KV_ADMIN)
        return vault

    def assign_role(self, scope: str, principal: str, role: str, *, subscription: str = SUB_A) -> None:
        self.authz(subscription).role_assignments.create(
            scope,
            str(uuid.uuid4()),
            RoleAssignmentCreateParameters(
                role_definition_id=f"/providers/Microsoft.Authorization/roleDefinitions/{role}",
                principal_id=principal,
                principal_type="ServicePrincipal",
            ),
        )

    def place_in_management_group(self, group: str, subscription: str = SUB_A) -> str:
        """Create ``group`` under the tenant root group (azure-mgmt-managementgroups) and move ``subscription``
        under it; returns the group's scope."""
        groups = ManagementGroupsMgmtClient(self.cred, **self.mgmt_kwargs())
        root = f"/providers/Microsoft.Management/managementGroups/{self.tenant}"
        groups.management_groups.begin_create_or_update(group, CreateManagementGroupRequest(
            properties=CreateManagementGroupProperties(display_name=group, details=CreateManagementGroupDetails(
                parent=CreateParentGroupInfo(id=root))))).result()
        groups.management_group_subscriptions.create(group, subscription)
        return f"/providers/Microsoft.Management/managementGroups/{group}"

    def grant_policy(self, vault: str, principal: str, permissions: list[str] | None = None) -> None:
        entry = AccessPolicyEntry(
            tenant_id=self.tenant,
            object_id=principal,
            permissions=Permissions(keys_property=permissions or STORAGE_KEY_PERMISSIONS),
        )
        self.keyvault_mgmt().vaults.update_access_policy(
            RG,
            vault,
            AccessPolicyUpdateKind.ADD,
            VaultAccessPolicyParameters(properties=VaultAccessPolicyProperties(access_policies=[entry])),
        )

    def create_identity(self, name: str, subscription: str = SUB_A) -> Any:
        msi = ManagedServiceIdentityClient(self.cred, subscription, **self.mgmt_kwargs())
        identity = msi.user_assigned_identities.create_or_update(RG, name, MsiIdentity(location="westeurope"))
        self.identities[name] = identity
        return identity

    def create_account(
        self,
        *,
        uai: str | None = None,
        system: bool = False,
        subscription: str = SUB_A,
        tags: dict[str, str] | None = None,
    ) -> Any:
        name = "st" + uuid.uuid4().hex[:16]
        kinds = [kind for kind, on in (("SystemAssigned", system), ("UserAssigned", uai is not None)) if on]
        identity = Identity(
            type=",".join(kinds) or "None",
            user_assigned_identities={self.identities[uai].id: UserAssignedIdentity()} if uai else None,
        )
        return (
            self.storage(subscription)
            .storage_accounts.begin_create(
                RG,
                name,
                StorageAccountCreateParameters(
                    sku=StorageSku(name="Standard_LRS"),
                    kind="StorageV2",
                    location="westeurope",
                    identity=identity,
                    tags=tags or {},
                ),
            )
            .result()
        )

    def enable_cmk(
        self,
        account: Any,
        vault: str,
        key: str,
        *,
        version: str = "",
        uai: str | None = None,
        subscription: str = SUB_A,
    ) -> Any:
        encryption = Encryption(
            key_source="Microsoft.Keyvault",
            key_vault_properties=KeyVaultProperties(
                key_name=key, key_version=version, key_vault_uri=self.vaults[vault].properties.vault_uri
            ),
            encryption_identity=EncryptionIdentity(encryption_user_assigned_identity=self.identities[uai].id)
            if uai
            else None,
        )
        return self.storage(subscription).storage_accounts.update(
            RG, account.name, StorageAccountUpdateParameters(encryption=encryption)
        )

    def create_scope(self, account: Any, name: str, key_uri: str, *, subscription: str = SUB_A) -> Any:
        return self.storage(subscription).encryption_scopes.put(
            RG,
            account.name,
            name,
            EncryptionScope(
                source="Microsoft.KeyVault",
                key_vault_properties=EncryptionScopeKeyVaultProperties(key_uri=key_uri),
            ),
        )
