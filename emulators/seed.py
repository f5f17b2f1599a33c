"""Load a scenario (emulators/scenarios/<name>.json) into a running sandbox, the way a user builds it in Azure.

Everything goes through the unmodified SDK clients against the emulators: azure-mgmt-resource-style
resource groups, identities (azure-mgmt-msi), vaults and access policies (azure-mgmt-keyvault), keys and
rotation policies (azure-keyvault-keys), diagnostic settings (azure-mgmt-monitor), storage accounts,
CMK and encryption scopes (azure-mgmt-storage), role definitions and assignments
(azure-mgmt-authorization) and client-side-encrypted blobs (azure-storage-blob, encryption v2, the
content key wrapped by the vault key). Only the event subscriptions go through the sandbox's control
API (the ARM emulator has no Event Grid resource provider).

Principals in a scenario: ``$operator`` (the person seeding; ``operator.objectId``), ``$controller``
(the controller's user-assigned identity, created by the sandbox at start) and ``identity:<name>`` (a
scenario identity); a storage account's ``identity`` is a scenario identity's name or ``$system`` (its own
system-assigned identity), and a storage account with ``count`` stands for that many. The result (names,
ids, key versions, blob names) is returned and written to ``<dir>/seed-<scenario>.json``; every value in it
comes from a service response.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulators.sandbox import SandboxError, control, running_state

SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"
ARM_SCOPES = ["https://management.azure.com/.default"]
WRAP_ALGORITHM = "RSA-OAEP-256"


def scenario_names() -> list[str]:
    return sorted(path.stem for path in SCENARIOS_DIR.glob("*.json"))


def load_scenario(name: str) -> dict[str, Any]:
    path = Path(name) if name.endswith(".json") else SCENARIOS_DIR / f"{name}.json"
    try:
        scenario: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise SandboxError(f"no scenario {name!r} (known: {', '.join(scenario_names())})") from err
    return scenario


class KeyVaultKeyWrapper:
    """A key-encryption key for azure-storage-blob's client-side encryption: the vault key wraps the content key.

    The protocol azure-storage-blob expects: wrap_key, unwrap_key, get_kid, get_key_wrap_algorithm.
    """

    def __init__(self, crypto_client: Any, kid: str) -> None:
        self._crypto = crypto_client
        self._kid = kid

    def wrap_key(self, key: bytes) -> bytes:
        from azure.keyvault.keys.crypto import KeyWrapAlgorithm

        return bytes(self._crypto.wrap_key(KeyWrapAlgorithm(WRAP_ALGORITHM), key).encrypted_key)

    def unwrap_key(self, key: bytes, algorithm: str) -> bytes:
        from azure.keyvault.keys.crypto import KeyWrapAlgorithm

        return bytes(self._crypto.unwrap_key(KeyWrapAlgorithm(algorithm), key).key)

    def get_kid(self) -> str:
        return self._kid

    def get_key_wrap_algorithm(self) -> str:
        return WRAP_ALGORITHM


@dataclass
class SandboxClients:
    """The unmodified SDK clients, pointed at one running sandbox, acting as one principal."""

    state: dict[str, Any]
    subscription_id: str
    credential: Any
    _cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_state(cls, state: dict[str, Any], subscription_id: str, object_id: str, name: str) -> SandboxClients:
        from emulators.keyvault import SandboxCredential

        credential = SandboxCredential(object_id, tenant_id=state["tenantId"], name=name)
        return cls(state, subscription_id, credential)

    @property
    def ca_path(self) -> str:
        return str(self.state["caPath"])

    def _arm_kwargs(self) -> dict[str, Any]:
        return {
            "base_url": self.state["endpoints"]["arm"],
            "connection_verify": self.ca_path,
            "credential_scopes": ARM_SCOPES,
        }

    def _cached(self, name: str, build: Callable[[], Any]) -> Any:
        if name not in self._cache:
            self._cache[name] = build()
        return self._cache[name]

    @property
    def storage(self) -> Any:
        from azure.mgmt.storage import StorageManagementClient

        return self._cached(
            "storage", lambda: StorageManagementClient(self.credential, self.subscription_id, **self._arm_kwargs())
        )

    @property
    def keyvault_mgmt(self) -> Any:
        from azure.mgmt.keyvault import KeyVaultManagementClient

        return self._cached(
            "keyvault", lambda: KeyVaultManagementClient(self.credential, self.subscription_id, **self._arm_kwargs())
        )

    @property
    def msi(self) -> Any:
        from azure.mgmt.msi import ManagedServiceIdentityClient

        return self._cached(
            "msi", lambda: ManagedServiceIdentityClient(self.credential, self.subscription_id, **self._arm_kwargs())
        )

    @property
    def authorization(self) -> Any:
        from azure.mgmt.authorization import AuthorizationManagementClient

        return self._cached(
            "authorization",
            lambda: AuthorizationManagementClient(self.credential, self.subscription_id, **self._arm_kwargs()),
        )

    @property
    def monitor(self) -> Any:
        from azure.mgmt.monitor import MonitorManagementClient

        return self._cached(
            "monitor", lambda: MonitorManagementClient(self.credential, self.subscription_id, **self._arm_kwargs())
        )

    def _vault_kwargs(self) -> dict[str, Any]:
        """Vaults are reached at their Azure host names through the sandbox's proxy, the challenge check on."""
        return {"connection_verify": self.ca_path, "proxies": {"https": self.state["endpoints"]["proxy"]}}

    def key_client(self, vault_uri: str) -> Any:
        from azure.keyvault.keys import KeyClient

        return self._cached(f"keys:{vault_uri}", lambda: KeyClient(vault_uri, self.credential, **self._vault_kwargs()))

    def crypto_client(self, kid: str) -> Any:
        from azure.keyvault.keys.crypto import CryptographyClient

        return CryptographyClient(kid, self.credential, **self._vault_kwargs())

    def key_wrapper(self, kid: str) -> KeyVaultKeyWrapper:
        return KeyVaultKeyWrapper(self.crypto_client(kid), kid)

    def blob_service(self, resource_group: str, account: str) -> Any:
        """The account's blob endpoint (from ARM) with its shared key (from listKeys), like a user's app."""
        from azure.storage.blob import BlobServiceClient

        properties = self.storage.storage_accounts.get_properties(resource_group, account)
        keys = self.storage.storage_accounts.list_keys(resource_group, account)
        return BlobServiceClient(
            properties.primary_endpoints.blob,
            credential={"account_name": account, "account_key": keys.keys_property[0].value},
            connection_verify=self.ca_path,
            retry_total=0,
        )


class Seeder:
    def __init__(self, directory: Path, scenario: dict[str, Any], *, log: Callable[[str], None] = print) -> None:
        state = running_state(directory)
        if state is None or state.get("status") != "running":
            raise SandboxError(
                f"no running sandbox in {directory}: run `python -m emulators up --dir {directory}` first"
            )
        self.directory = directory
        self.state = state
        self.scenario = scenario
        self.log = log
        self.subscription = str(scenario["subscriptionId"])
        self.location = str(scenario.get("location") or "westeurope")
        operator = scenario.get("operator") or {}
        self.operator = str(operator.get("objectId") or uuid.uuid4())
        self.clients = SandboxClients.for_state(
            state, self.subscription, self.operator, str(operator.get("name") or "operator")
        )
        self.tenant = str(state["tenantId"])
        self.identities: dict[str, Any] = {}
        self.vaults: dict[str, Any] = {}
        self.keys: dict[tuple[str, str], Any] = {}
        self.accounts: dict[str, Any] = {}
        self.result: dict[str, Any] = {"scenario": scenario["name"], "subscriptionId": self.subscription}

    # ---- principals -----------------------------------------------------------------------------
    def principal(self, reference: str) -> str:
        if reference == "$operator":
            return self.operator
        if reference == "$controller":
            return str(self.state["controllerIdentity"]["principalId"])
        if reference.startswith("identity:"):
            return str(self.identities[reference.split(":", 1)[1]].principal_id)
        raise SandboxError(f"unknown principal reference {reference!r}")

    # ---- steps ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.resource_groups()
        self.create_identities()
        self.create_vaults()
        self.create_keys()
        self.create_accounts()
        self.create_roles()
        self.create_containers()
        self.subscribe_events()
        path = self.directory / f"seed-{self.scenario['name']}.json"
        path.write_text(json.dumps(self.result, indent=2) + "\n", encoding="utf-8")
        self.result["resultPath"] = str(path)
        return self.result

    def resource_groups(self) -> None:
        """Resource groups through a plain ARM PUT (azure-mgmt-resource is not a dependency of the project)."""
        from azure.core.rest import HttpRequest
        from azure.mgmt.core import ARMPipelineClient
        from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy

        policy = ARMChallengeAuthenticationPolicy(self.clients.credential, *ARM_SCOPES)
        client: Any = ARMPipelineClient(
            base_url=self.state["endpoints"]["arm"],
            policies=[policy],
            connection_verify=self.clients.ca_path,
        )
        with client:
            for group in self.scenario.get("resourceGroups") or []:
                url = (
                    f"{self.state['endpoints']['arm']}/subscriptions/{self.subscription}/resourcegroups/"
                    f"{group['name']}?api-version=2022-09-01"
                )
                request = HttpRequest("PUT", url, json={"location": group.get("location") or self.location})
                response = client.send_request(request)
                response.raise_for_status()
                self.log(f"resource group {response.json()['name']}: {response.status_code}")
        self.result["resourceGroups"] = [g["name"] for g in self.scenario.get("resourceGroups") or []]

    def create_identities(self) -> None:
        from azure.mgmt.msi.models import Identity

        for spec in self.scenario.get("identities") or []:
            identity = self.clients.msi.user_assigned_identities.create_or_update(
                spec["resourceGroup"], spec["name"], Identity(location=self.location)
            )
            self.identities[spec["name"]] = identity
            self.log(f"identity {identity.name}: principalId {identity.principal_id}")
        self.result["identities"] = {
            name: {"id": i.id, "principalId": i.principal_id, "clientId": i.client_id}
            for name, i in self.identities.items()
        }

    def create_vaults(self) -> None:
        from azure.mgmt.keyvault.models import (
            AccessPolicyEntry,
            Permissions,
            Sku,
            VaultCreateOrUpdateParameters,
            VaultProperties,
        )
        from azure.mgmt.monitor.models import DiagnosticSettingsResource, LogSettings

        for spec in self.scenario.get("vaults") or []:
            policies = [
                AccessPolicyEntry(
                    tenant_id=self.tenant,
                    object_id=self.principal(entry["principal"]),
                    permissions=Permissions(keys_property=list(entry["keys"])),
                )
                for entry in spec.get("accessPolicies") or []
            ]
            properties = VaultProperties(
                tenant_id=self.tenant,
                sku=Sku(family="A", name=spec.get("sku") or "premium"),
                enable_soft_delete=spec.get("enableSoftDelete", True),
                soft_delete_retention_in_days=spec.get("softDeleteRetentionInDays", 90),
                enable_purge_protection=spec.get("enablePurgeProtection") or None,
                enable_rbac_authorization=spec.get("enableRbacAuthorization", False),
                access_policies=policies,
            )
            vault = self.clients.keyvault_mgmt.vaults.begin_create_or_update(
                spec["resourceGroup"],
                spec["name"],
                VaultCreateOrUpdateParameters(location=self.location, properties=properties),
            ).result()
            self.vaults[spec["name"]] = vault
            self.log(
                f"vault {vault.name}: {vault.properties.vault_uri} (soft delete "
                f"{vault.properties.soft_delete_retention_in_days} days, purge protection "
                f"{vault.properties.enable_purge_protection})"
            )
            for setting in spec.get("diagnosticSettings") or []:
                created = self.clients.monitor.diagnostic_settings.create_or_update(
                    vault.id,
                    setting["name"],
                    DiagnosticSettingsResource(
                        workspace_id=setting.get("workspace"),
                        storage_account_id=setting.get("storageAccountId"),
                        logs=[LogSettings(category_group=setting.get("categoryGroup") or "audit", enabled=True)],
                        log_analytics_destination_type=setting.get("destinationType"),
                    ),
                )
                targets = [target.rsplit("/", 1)[-1] for target in (created.workspace_id, created.storage_account_id)
                           if target]
                self.log(f"  diagnostic setting {created.name} -> {', '.join(targets)}")
        self.result["vaults"] = {
            name: {"id": v.id, "uri": v.properties.vault_uri, "resourceGroup": self._group_of(v.id)}
            for name, v in self.vaults.items()
        }

    def create_keys(self) -> None:
        from azure.keyvault.keys import KeyRotationLifetimeAction, KeyRotationPolicy, KeyRotationPolicyAction

        existing: dict[str, set[str]] = {}
        for spec in self.scenario.get("keys") or []:
            vault = self.vaults[spec["vault"]]
            client = self.clients.key_client(vault.properties.vault_uri)
            if spec["vault"] not in existing:  # listed, not probed: a probe's 404 would be a failure in the audit log
                existing[spec["vault"]] = {key.name for key in client.list_properties_of_keys()}
            if spec["name"] in existing[spec["vault"]]:
                key = client.get_key(spec["name"])
                self.log(f"key {key.name}: exists ({key.properties.version})")
            else:
                key = client.create_rsa_key(spec["name"], size=int(spec.get("size") or 2048),
                                            hardware_protected=bool(spec.get("hsm")))
                key_type = getattr(key.key_type, "value", key.key_type)
                self.log(f"key {key.name}: created {key_type} {spec.get('size')}, version {key.properties.version}")
            policy_spec = spec.get("rotationPolicy")
            if policy_spec:
                actions = [
                    KeyRotationLifetimeAction(
                        KeyRotationPolicyAction(action["action"].lower()),
                        time_after_create=action.get("timeAfterCreate"),
                        time_before_expiry=action.get("timeBeforeExpiry"),
                    )
                    for action in policy_spec.get("lifetimeActions") or []
                ]
                policy = client.update_key_rotation_policy(
                    spec["name"], KeyRotationPolicy(expires_in=policy_spec.get("expiresIn"), lifetime_actions=actions)
                )
                described = ", ".join(
                    f"{getattr(a.action, 'value', a.action)} {a.time_after_create or a.time_before_expiry}"
                    for a in policy.lifetime_actions
                )
                self.log(f"  rotation policy: expires in {policy.expires_in}; {described}")
            self.keys[(spec["vault"], spec["name"])] = key
        self.result["keys"] = {
            f"{vault}/{name}": {"id": key.id, "version": key.properties.version}
            for (vault, name), key in self.keys.items()
        }

    def create_accounts(self) -> None:
        from azure.mgmt.storage.models import (
            Encryption,
            EncryptionIdentity,
            EncryptionScope,
            EncryptionScopeKeyVaultProperties,
            Identity,
            KeyVaultProperties,
            Sku,
            StorageAccountCreateParameters,
            StorageAccountUpdateParameters,
            UserAssignedIdentity,
        )

        accounts = self.result.setdefault("storageAccounts", {})
        for spec in account_specs(self.scenario):
            cmk = spec["cmk"]
            key = self.keys[(cmk["vault"], cmk["key"])]
            vault_uri = self.vaults[cmk["vault"]].properties.vault_uri
            system_assigned = spec["identity"] == SYSTEM_ASSIGNED
            encryption = Encryption(
                key_source="Microsoft.Keyvault",
                key_vault_properties=KeyVaultProperties(
                    key_name=cmk["key"],
                    key_version=key.properties.version if cmk.get("pinned") else "",
                    key_vault_uri=vault_uri,
                ),
                encryption_identity=None if system_assigned else EncryptionIdentity(
                    encryption_user_assigned_identity=self.identities[spec["identity"]].id),
            )
            if system_assigned:
                # As in Azure: the account's own identity exists only once the account does, so the account is
                # created with Microsoft-managed keys, its identity is granted the key, then the CMK is set.
                identity = Identity(type="SystemAssigned")
            else:
                uai = self.identities[spec["identity"]]
                identity = Identity(type="UserAssigned", user_assigned_identities={uai.id: UserAssignedIdentity()})
            account = self.clients.storage.storage_accounts.begin_create(
                spec["resourceGroup"],
                spec["name"],
                StorageAccountCreateParameters(
                    sku=Sku(name=spec.get("sku") or "Standard_LRS"),
                    kind=spec.get("kind") or "StorageV2",
                    location=self.location,
                    identity=identity,
                    encryption=None if system_assigned else encryption,
                    tags=spec.get("tags"),
                ),
            ).result()
            if system_assigned:
                self.grant_access_policy(cmk["vault"], account.identity.principal_id, list(spec["grantKeys"]))
                account = self.clients.storage.storage_accounts.update(
                    spec["resourceGroup"], spec["name"], StorageAccountUpdateParameters(encryption=encryption)
                )
            self.accounts[spec["name"]] = account
            kvp = account.encryption.key_vault_properties
            mode = f"pinned to {kvp.key_version}" if kvp.key_version else "automatic version updates"
            in_use = kvp.current_versioned_key_identifier
            self.log(f"storage account {account.name}: CMK {kvp.key_name} ({mode}), in use {in_use}")
            scopes: dict[str, Any] = {}
            for scope_spec in spec.get("encryptionScopes") or []:
                scope_key = self.keys[(scope_spec["vault"], scope_spec["key"])]
                key_uri = scope_key.id if scope_spec.get("pinned") else scope_key.id.rsplit("/", 1)[0]
                scope = self.clients.storage.encryption_scopes.put(
                    spec["resourceGroup"],
                    spec["name"],
                    scope_spec["name"],
                    EncryptionScope(
                        source="Microsoft.KeyVault",
                        key_vault_properties=EncryptionScopeKeyVaultProperties(key_uri=key_uri),
                    ),
                )
                scopes[scope.name] = {"id": scope.id, "keyUri": scope.key_vault_properties.key_uri}
                self.log(
                    f"  encryption scope {scope.name}: {scope.key_vault_properties.current_versioned_key_identifier}"
                )
            accounts[account.name] = {
                "id": account.id,
                "principalId": account.identity.principal_id if system_assigned else None,
                "resourceGroup": spec["resourceGroup"],
                "blobEndpoint": account.primary_endpoints.blob,
                "keyVersion": kvp.key_version or "",
                "encryptionScopes": scopes,
            }

    def grant_access_policy(self, vault_name: str, object_id: str, keys: list[str]) -> None:
        """Add an access policy entry (azure-mgmt-keyvault update_access_policy, kind add) to a vault."""
        from azure.mgmt.keyvault.models import (
            AccessPolicyEntry,
            AccessPolicyUpdateKind,
            Permissions,
            VaultAccessPolicyParameters,
            VaultAccessPolicyProperties,
        )

        vault = self.vaults[vault_name]
        entry = AccessPolicyEntry(tenant_id=self.tenant, object_id=object_id,
                                  permissions=Permissions(keys_property=keys))
        self.clients.keyvault_mgmt.vaults.update_access_policy(
            self._group_of(vault.id), vault.name, AccessPolicyUpdateKind.ADD,
            VaultAccessPolicyParameters(properties=VaultAccessPolicyProperties(access_policies=[entry])),
        )

    def create_roles(self) -> None:
        from azure.mgmt.authorization.models import Permission, RoleAssignmentCreateParameters, RoleDefinition

        authz = self.clients.authorization
        subscription_scope = f"/subscriptions/{self.subscription}"
        role_ids: dict[str, str] = {}
        role_names: dict[str, str] = {}  # role definition id (lower case) -> name, from the responses
        for spec in self.scenario.get("roleDefinitions") or []:
            definition = authz.role_definitions.create_or_update(
                subscription_scope,
                spec["id"],
                RoleDefinition(
                    role_name=spec["name"],
                    description=spec.get("description"),
                    role_type="CustomRole",
                    permissions=[
                        Permission(
                            actions=list(spec.get("actions") or []), data_actions=list(spec.get("dataActions") or [])
                        )
                    ],
                    assignable_scopes=[subscription_scope],
                ),
            )
            role_ids[spec["name"].lower()] = definition.id
            role_names[definition.id.lower()] = definition.role_name
            self.log(f"role definition {definition.role_name}")
        assignments = []
        for spec in self.scenario.get("roleAssignments") or []:
            role_id = role_ids.get(spec["role"].lower())
            if role_id is None:
                found = list(authz.role_definitions.list(subscription_scope, filter=f"roleName eq '{spec['role']}'"))
                if not found:
                    raise SandboxError(f"no role named {spec['role']!r}")
                role_id = found[0].id
                role_names[role_id.lower()] = found[0].role_name
            scope = self._scope(spec["scope"])
            principal = self.principal(spec["principal"])
            name = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{scope.lower()}|{principal}|{role_id.lower()}"))
            assignment = authz.role_assignments.create(
                scope,
                name,
                RoleAssignmentCreateParameters(
                    role_definition_id=role_id, principal_id=principal, principal_type="ServicePrincipal"
                ),
            )
            assignments.append({"id": assignment.id, "role": spec["role"], "principal": spec["principal"]})
            granted = role_names.get(assignment.role_definition_id.lower(), assignment.role_definition_id)
            self.log(
                f"role assignment {granted} for {spec['principal']} ({assignment.principal_id}) "
                f"at {assignment.scope.rsplit('/', 1)[-1]}"
            )
        self.result["roleAssignments"] = assignments

    def create_containers(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        containers = self.result.setdefault("containers", {})
        for spec in self.scenario.get("containers") or []:
            account = self.accounts[spec["account"]]
            service = self.clients.blob_service(self._group_of(account.id), account.name)
            container = service.get_container_client(spec["name"])
            with contextlib.suppress(ResourceExistsError):
                container.create_container()
            cse = spec.get("clientSideEncryption")
            if cse:
                key = self.keys[(cse["vault"], cse["key"])]
                container.require_encryption = True
                container.key_encryption_key = self.clients.key_wrapper(key.id)
                container.encryption_version = cse.get("version") or "2.0"
            blobs = spec.get("blobs") or {}
            names = []
            size = int(blobs.get("sizeBytes") or 1024)
            for index in range(int(blobs.get("count") or 0)):
                name = f"{blobs.get('prefix') or 'blob-'}{index:03d}.txt"
                body = (f"{name} " * (size // (len(name) + 1) + 1)).encode()[:size]
                container.upload_blob(name, body, overwrite=True)
                names.append(name)
            first = container.get_blob_client(names[0]).get_blob_properties() if names else None
            wrapped_by = None
            if first is not None and first.metadata.get("encryptiondata"):
                wrapped_by = json.loads(first.metadata["encryptiondata"])["WrappedContentKey"]["KeyId"]
            containers[f"{account.name}/{spec['name']}"] = {
                "account": account.name,
                "container": spec["name"],
                "blobs": names,
                "wrappedBy": wrapped_by,
                "encryptionVersion": cse.get("version") if cse else None,
            }
            self.log(
                f"container {account.name}/{spec['name']}: {len(names)} blobs"
                + (f", content keys wrapped by {wrapped_by}" if wrapped_by else "")
            )

    def subscribe_events(self) -> None:
        subscriptions = {}
        for spec in self.scenario.get("eventSubscriptions") or []:
            body = {k: v for k, v in spec.items() if k != "name"}
            created = control(self.state, "PUT", f"/_sandbox/eventSubscriptions/{spec['name']}", body, timeout=120)
            subscriptions[spec["name"]] = created
            self.log(
                f"event subscription {spec['name']}: {spec['vault']} -> {created['function']} "
                f"({created['schema']}, dead-letter {created['deadLetterContainer']}): {created['provisioningState']}"
            )
            if created["provisioningState"] != "Succeeded":
                raise SandboxError(f"event subscription {spec['name']}: {created.get('failureReason')}")
        self.result["eventSubscriptions"] = subscriptions

    # ---- helpers --------------------------------------------------------------------------------
    def _scope(self, reference: str) -> str:
        if reference == "subscription":
            return f"/subscriptions/{self.subscription}"
        kind, _, name = reference.partition(":")
        if kind == "storageAccount":
            return str(self.accounts[name].id)
        if kind == "vault":
            return str(self.vaults[name].id)
        if kind == "resourceGroup":
            return f"/subscriptions/{self.subscription}/resourceGroups/{name}"
        raise SandboxError(f"unknown scope reference {reference!r}")

    @staticmethod
    def _group_of(resource_id: str) -> str:
        parts = resource_id.split("/")
        return parts[[p.lower() for p in parts].index("resourcegroups") + 1]


#: A storage account's ``identity`` that is its own system-assigned identity (granted ``grantKeys`` on its
#: key's vault through an access policy before the CMK is set).
SYSTEM_ASSIGNED = "$system"


def account_specs(scenario: dict[str, Any]) -> list[dict[str, Any]]:
    """The scenario's storage accounts, a spec with ``count`` standing for that many accounts named by
    formatting its ``name`` with ``n`` = 1..count (``"stcontoso{n:03d}"``): a fleet without a list of a hundred."""
    specs: list[dict[str, Any]] = []
    for spec in scenario.get("storageAccounts") or []:
        count = spec.get("count")
        if count is None:
            specs.append(spec)
            continue
        if "{n" not in spec["name"]:
            raise SandboxError(f"storage account {spec['name']!r} has a count but no {{n}} in its name")
        template = {name: value for name, value in spec.items() if name != "count"}
        specs += [template | {"name": spec["name"].format(n=n)} for n in range(1, int(count) + 1)]
    return specs


def seed_document(directory: Path, scenario: dict[str, Any], *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load a scenario given as a document (one of emulators/scenarios/, possibly resized by the caller)."""
    return Seeder(directory, scenario, log=log).run()


def seed(directory: Path, scenario_name: str, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    return Seeder(directory, load_scenario(scenario_name), log=log).run()
