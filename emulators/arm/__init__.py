"""Emulated Azure Resource Manager for the local sandbox, with Azure Storage's CMK behaviour.

Start it with a Key Vault emulator and (optionally) Azurite::

    kv = KeyVaultEmulator(clock, bus)                       # or let ArmEmulator create one
    with ArmEmulator(keyvault=kv, azurite=azurite, audit=sink) as arm:   # starts kv if needed
        cred = arm.credential(CONTROLLER_OID)               # any SandboxCredential works for ARM
        storage = StorageManagementClient(cred, SUB, base_url=arm.url, connection_verify=arm.ca_path,
                                          credential_scopes=["https://management.azure.com/.default"])

The unmodified azure-mgmt-storage, -keyvault, -authorization, -msi, -monitor (6.x, diagnostic
settings) and -managementgroups clients work against ``arm.url``; any api-version is accepted, answers
use the storage.json 2025-01-01 / keyvault.json 2024-11-01 shapes. PUTs answer 200/201 with the final body
(provisioningState Succeeded), so LRO pollers complete at once. ARM only checks that a bearer token is
present (and decodes sandbox tokens); ARM RBAC is not enforced.

What is emulated (one module per resource provider behind the router in ``emulator.py``, see its docstring):
* subscriptions (implicit), resource groups (create/get/list), generic ``/resources`` listing;
* storage accounts (create, get, list, update with identity and encryption, listKeys, delete),
  encryption scopes (put, patch, get, list); CMK is validated the way Azure does it by calling the vault
  as the encryption identity (see ``storage.py``), errors in ``errors.py``;
* vaults (create/update/get/list, access policies add/replace/remove) backed by ``KeyVaultEmulator``:
  creating a vault through ARM starts its HTTPS origin; ``properties.vaultUri`` is that origin;
* user-assigned identities (principalId/clientId), built-in role definitions (``roles.py``), custom
  role definitions, role assignments at any scope, fed to the vaults' RBAC checks;
* diagnostic settings on any resource; for vaults they configure ``emulators.audit.AuditSink``;
* management groups (``management_groups.py``, azure-mgmt-managementgroups 2.x): the hierarchy under the
  tenant root group, subscriptions moved into groups, ``getEntities`` with each entity's parent chain;
  role assignments at a group's scope reach the subscriptions below it (listings and the vaults' RBAC);
* Resource Graph's ``resources`` rows include encryption scopes (``resources_snapshot``); the ARM
  ``/resources`` listing shows top-level resources only;
* per-account blob endpoints (``blobproxy.py``): ``https://127.0.0.1:<port>/<account>/``, HTTPS proxies
  in front of Azurite. Every account maps to Azurite's devstoreaccount1 with its containers prefixed
  ``<account>-`` (translated both ways; Azurite needs no restart for new accounts); SharedKey
  signatures are checked against the account's keys (``list_keys``), bearer tokens and SAS only for
  presence. While the storage service cannot unwrap the account's (or a request's encryption scope's)
  root key, requests answer 403 KeyVaultEncryptionKeyNotFound (or KeyVaultVaultNotFound /
  KeyVaultAccessTokenCannotBeAcquired); a throttled or failing vault leaves the state unchanged.

The storage service (``storage.StorageKeyService``) calls the vaults over HTTPS with the real
azure-keyvault-keys clients as the account's encryption identity (trusted-service token): get key,
wrap and unwrap on CMK changes (refusing them with Azure's errors), a key-version poll every
``key_poll_interval`` (1 sandbox day; versionless bindings adopt the latest version, pinned ones never)
and a root-key unwrap every ``unwrap_interval`` (1 sandbox hour). A timer (``storage_tick_seconds``,
real seconds) runs whatever is due on the sandbox clock.

Sandbox API: ``arm.identity_credential(uai_id | principal_id | account_name)`` (a SandboxCredential
acting as that managed identity), ``arm.poll_storage()`` (run the storage service's key poll and
root-key unwrap now), ``arm.check_storage_keys()`` (unwrap only), ``arm.advance_clock(delta)``
(advance sandbox time; due polls run; by default once per sandbox day, ``key_poll_interval``),
``arm.blob_endpoint(account)``, ``arm.account_key(account)``, ``arm.resources_snapshot()`` (Resource
Graph ``resources`` rows), ``arm.resource_containers_snapshot()``, ``arm.add_routes(...)`` /
``arm.app`` (mount more routes before ``start``), ``arm.ensure_resource_group``, ``arm.add_identity``.
"""

from .emulator import ArmEmulator
from .errors import ArmError
from .storage import KeyBinding, StorageKeyService

__all__ = ["ArmEmulator", "ArmError", "KeyBinding", "StorageKeyService"]
