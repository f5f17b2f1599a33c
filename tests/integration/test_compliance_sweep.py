"""The compliance sweep end to end: an estate built through the unmodified management SDKs in the emulated
ARM, gathered by the real gatherer (ARM, the Key Vault data plane, Log Analytics), evaluated by every rule.

The misconfigured estate holds what Azure lets a customer reach: an access-policy permission revoked after
setup, a firewall without the trusted-services bypass, a detached identity, pinned and lagging accounts, a
key about to expire, a soft-deleted key, a vault without diagnostic settings; and what must NOT be a
finding: RBAC granted at resource-group scope, the ``all`` permission and mixed-case permissions. The sweep
runs two hours after the setup, past its one-hour adoption window, and yields exactly the expected findings.

Key URIs spelled differently: the sandbox's vault hosts are IP addresses, which have no case, so an
upper-case vault host cannot be built; a DNS alias (``localhost``) would be another origin, not the same
vault. The closest variant Azure accepts is built instead: an account configured with the key name in upper
case and the vault URI with an upper-case scheme and no trailing slash, and an encryption scope whose key URI
has an upper-case scheme and key name and a trailing slash. (The emulated storage service stores
``keyvaulturi`` normalised, lower-case scheme and host with a trailing slash; the key name stays as written.)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from azure.mgmt.keyvault.models import (
    AccessPolicyEntry,
    AccessPolicyUpdateKind,
    NetworkRuleSet,
    Permissions,
    VaultAccessPolicyParameters,
    VaultAccessPolicyProperties,
    VaultPatchParameters,
    VaultPatchProperties,
)
from azure.mgmt.monitor import MonitorManagementClient
from azure.mgmt.monitor.models import DiagnosticSettingsResource, LogSettings
from azure.mgmt.storage.models import (
    Encryption,
    EncryptionIdentity,
    EncryptionScope,
    EncryptionScopeKeyVaultProperties,
    Identity,
    KeyVaultProperties,
    StorageAccountUpdateParameters,
)

from controller import service
from controller.adapters.audit_log import LogAnalyticsAuditLog
from controller.adapters.estate_gatherer import EstateGatherer
from controller.model import Severity
from controller.settings import load_settings
from emulators.audit import AuditSink
from emulators.kql import audit_tables
from emulators.query_endpoints import LogAnalyticsEmulator
from tests.integration.adapter_world import CRYPTO_SERVICE_USER, RG, SUB_A, World, running_arm
from tests.unit.fakes import FakeNotifier, FakeReportStore, fake_dependencies

pytestmark = pytest.mark.integration

#: The sweep runs this long after the estate was set up: past the adoption window the sweep is configured
#: with (CMK_ADOPTION_WINDOW_HOURS=1), well before the storage service's daily poll for new key versions.
LATER = timedelta(hours=2)
WORKSPACE = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.OperationalInsights/workspaces/logs"


@dataclass
class Sandbox:
    world: World
    sink: AuditSink
    logs: LogAnalyticsEmulator


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    with running_arm(tmp_path) as (arm, faults):
        sink = AuditSink(arm.bus, workspace_resource_id=WORKSPACE.format(sub=SUB_A, rg=RG))
        arm.audit = sink
        with LogAnalyticsEmulator(arm.ca, tables=audit_tables(sink), workspace_id=sink.workspace_id) as logs:
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", arm.ca_path)  # LogsQueryClient trusts the sandbox CA
            yield Sandbox(World(arm, faults), sink, logs)


def send_audit_logs(world: World, vault: str) -> None:
    monitor = MonitorManagementClient(world.cred, SUB_A, **world.mgmt_kwargs())
    monitor.diagnostic_settings.create_or_update(
        world.vaults[vault].id, "audit",
        DiagnosticSettingsResource(workspace_id=WORKSPACE.format(sub=SUB_A, rg=RG),
                                   logs=[LogSettings(category_group="audit", enabled=True)]))


def vault_with_key(world: World, vault: str, key: str, *, rbac: bool = False, audited: bool = True,
                   expires: datetime | None = None) -> None:
    world.create_vault(vault, rbac=rbac)
    world.key_client(vault).create_rsa_key(key, size=2048, expires_on=expires)
    if audited:
        send_audit_logs(world, vault)


def cmk_account(world: World, vault: str, key: str, identity: str, *, permissions: list[str] | None = None,
                version: str = "") -> object:
    world.create_identity(identity)
    if permissions is not None:
        world.grant_policy(vault, world.identities[identity].principal_id, permissions)
    account = world.create_account(uai=identity)
    world.enable_cmk(account, vault, key, uai=identity, version=version)
    return account


def later(world: World) -> None:
    """Sandbox time moves on (the storage service's daily poll for new key versions is not due: a
    versionless account lags), then the storage service checks its root keys (revoked access, a firewall
    and a deleted key show up as failed unwraps in the vaults' audit logs)."""
    world.arm.keyvault.advance_clock(LATER)
    world.arm.check_storage_keys()


def sweep(box: Sandbox) -> service.ComplianceReport:
    world = box.world
    origins = [world.origin(name).url for name in world.vaults]
    settings = load_settings({"CMK_VAULTS": ",".join(origins), "CMK_SUBSCRIPTIONS": SUB_A,
                              "CMK_ADOPTION_WINDOW_HOURS": "1",
                              "CMK_LOG_ANALYTICS_WORKSPACE": box.sink.workspace_id})
    audit = LogAnalyticsAuditLog(world.cred, workspace_id=box.sink.workspace_id, endpoint=box.logs.endpoint,
                                 policy=world.policy)
    gatherer = EstateGatherer(world.connection(), key_vault_credential=world.cred, policy=world.policy,
                              custom_origins=origins, key_vault_verify=world.arm.ca_path)
    deps = fake_dependencies(settings, clock=world.arm.clock, notifier=FakeNotifier(), estate=gatherer,
                             reports=FakeReportStore(), audit=audit)
    return service.run_compliance_sweep(deps)


def findings_of(report: service.ComplianceReport, world: World, accounts: dict[str, object]) -> set[tuple[str, ...]]:
    """(rule, what, reason) of every finding but CMK-014 (info: the compliant accounts' queue and table
    services keep Microsoft-managed keys). ``what`` names accounts by their role in ``accounts``, vaults by
    name and keys as <vault>/<key>; a CMK-000's reason is the aspects (or rules) it could not read."""
    names = {account.name.lower(): role for role, account in accounts.items()}  # type: ignore[attr-defined]
    origins = {world.origin(vault).url.lower(): vault for vault in world.vaults}
    result = set()
    for finding in report.findings:
        if finding.rule == "CMK-014":
            continue
        last = finding.resource.rstrip("/").rsplit("/", 1)[-1]
        if "/keys/" in finding.resource:
            origin, _, key = finding.resource.partition("/keys/")
            what = f"{origins[origin.lower()]}/{key}"
        else:
            what = names.get(last.lower(), last)
        if finding.rule == "CMK-000":
            reason = ",".join(sorted({str(entry.get("aspect") or entry.get("rule"))
                                      for entry in finding.evidence["not_evaluated"]}))  # type: ignore[union-attr]
        else:
            reason = str(finding.evidence.get("reason") or "")
        result.add((finding.rule, what, reason))
    return result


def test_a_clean_estate_has_no_finding_above_info(sandbox: Sandbox) -> None:
    world = sandbox.world
    vault_with_key(world, "kv-clean-ap", "cmk")
    cmk_account(world, "kv-clean-ap", "cmk", "id-clean-ap", permissions=["get", "wrapKey", "unwrapKey"])
    vault_with_key(world, "kv-clean-rbac", "cmk", rbac=True)
    cmk_identity = world.create_identity("id-clean-rbac")
    world.assign_role(world.vaults["kv-clean-rbac"].id, cmk_identity.principal_id, CRYPTO_SERVICE_USER)
    account = world.create_account(uai="id-clean-rbac")
    world.enable_cmk(account, "kv-clean-rbac", "cmk", uai="id-clean-rbac")
    later(world)

    report = sweep(sandbox)

    assert [finding for finding in report.findings if finding.severity.at_least(Severity.LOW)] == []
    assert {finding.rule for finding in report.findings} <= {"CMK-014"}
    assert report.resources_evaluated == 2 + 2 + 2  # accounts, vaults, keys
    assert report.not_evaluable == 0
    assert [len(key.versions) for key in report.keys] == [1, 1]


def test_the_misconfigured_estate_yields_exactly_the_expected_findings(sandbox: Sandbox) -> None:
    world = sandbox.world
    storage_permissions = ["get", "wrapKey", "unwrapKey"]

    # Revoked after setup: unwrapKey taken away from the identity the account encrypts with.
    vault_with_key(world, "kv-revoked", "cmk")
    revoked = cmk_account(world, "kv-revoked", "cmk", "id-revoked", permissions=storage_permissions)
    world.keyvault_mgmt().vaults.update_access_policy(RG, "kv-revoked", AccessPolicyUpdateKind.REMOVE,
        VaultAccessPolicyParameters(properties=VaultAccessPolicyProperties(access_policies=[AccessPolicyEntry(
            tenant_id=world.tenant, object_id=world.identities["id-revoked"].principal_id,
            permissions=Permissions(keys_property=["unwrapKey"]))])))

    # The firewall turned on without letting trusted Azure services through.
    vault_with_key(world, "kv-firewall", "cmk")
    firewalled = cmk_account(world, "kv-firewall", "cmk", "id-firewall", permissions=storage_permissions)
    world.keyvault_mgmt().vaults.update(RG, "kv-firewall", VaultPatchParameters(properties=VaultPatchProperties(
        network_acls=NetworkRuleSet(default_action="Deny", bypass="None"))))

    # The encryption identity detached from the account after setup.
    vault_with_key(world, "kv-detached", "cmk")
    detached = cmk_account(world, "kv-detached", "cmk", "id-detached", permissions=storage_permissions)
    world.storage().storage_accounts.update(RG, detached.name, StorageAccountUpdateParameters(  # type: ignore[attr-defined]
        identity=Identity(type="SystemAssigned")))

    # One account pinned to the first version, one versionless that has not adopted the rotation.
    vault_with_key(world, "kv-rotated", "cmk")
    first = world.key_client("kv-rotated").get_key("cmk").properties.version
    pinned = cmk_account(world, "kv-rotated", "cmk", "id-pinned", permissions=storage_permissions, version=first)
    lagging = cmk_account(world, "kv-rotated", "cmk", "id-lagging", permissions=storage_permissions)
    world.arm.keyvault.advance_clock(timedelta(minutes=5))  # the new version is younger than the first
    world.key_client("kv-rotated").rotate_key("cmk")

    # A key that expires in ten days; a key soft-deleted under its account; a vault sending no audit logs.
    vault_with_key(world, "kv-expiring", "cmk", expires=world.arm.clock.now() + timedelta(days=10))
    expiring = cmk_account(world, "kv-expiring", "cmk", "id-expiring", permissions=storage_permissions)
    vault_with_key(world, "kv-deleted", "cmk")
    deleted = cmk_account(world, "kv-deleted", "cmk", "id-deleted", permissions=storage_permissions)
    world.key_client("kv-deleted").begin_delete_key("cmk").wait()  # until listed as deleted
    vault_with_key(world, "kv-unaudited", "cmk", audited=False)
    unaudited = cmk_account(world, "kv-unaudited", "cmk", "id-unaudited", permissions=storage_permissions)

    # Not findings: RBAC granted at resource-group scope, the "all" permission, mixed-case permissions.
    vault_with_key(world, "kv-rg-rbac", "cmk", rbac=True)
    rg_identity = world.create_identity("id-rg-rbac")
    world.assign_role(f"/subscriptions/{SUB_A}/resourceGroups/{RG}", rg_identity.principal_id, CRYPTO_SERVICE_USER)
    rg_account = world.create_account(uai="id-rg-rbac")
    world.enable_cmk(rg_account, "kv-rg-rbac", "cmk", uai="id-rg-rbac")
    vault_with_key(world, "kv-all", "cmk")
    everything = cmk_account(world, "kv-all", "cmk", "id-all", permissions=["all"])
    vault_with_key(world, "kv-mixed", "cmk")
    mixed = cmk_account(world, "kv-mixed", "cmk", "id-mixed", permissions=["Get", "WRAPKEY", "UnwrapKey"])

    later(world)

    report = sweep(sandbox)

    accounts = {"revoked": revoked, "firewall": firewalled, "detached": detached, "pinned": pinned,
                "lagging": lagging, "expiring": expiring, "deleted": deleted, "unaudited": unaudited,
                "rg-rbac": rg_account, "all": everything, "mixed": mixed}
    assert findings_of(report, world, accounts) == {
        ("CMK-006", "revoked", "IdentityLacksAccess"),
        ("CMK-017", "kv-revoked", "KeyOperationsFailed"),
        ("CMK-007", "kv-firewall", "FirewallBlocksStorage"),
        ("CMK-017", "kv-firewall", "KeyOperationsFailed"),
        ("CMK-000", "kv-firewall", "deleted-keys"),  # the firewall blinds the data plane: no deleted keys
        ("CMK-002", "detached", "UserAssignedIdentityNotAttached"),
        ("CMK-006", "detached", "IdentityLacksAccess"),  # the system-assigned identity it fell back to
        ("CMK-011", "pinned", "PinnedVersion"),
        ("CMK-012", "pinned", "PinnedToOldVersion"),
        ("CMK-012", "lagging", "AdoptionOverdue"),
        ("CMK-009", "kv-expiring/cmk", "VersionExpiresSoon"),
        ("CMK-013", "kv-deleted/cmk", "KeySoftDeleted"),
        ("CMK-017", "kv-deleted", "KeyOperationsFailed"),
        ("CMK-016", "kv-unaudited", "NoAuditDiagnostics"),
    }
    classes = {finding.resource.rsplit("/", 1)[-1]: finding.evidence["classes"]
               for finding in report.findings if finding.rule == "CMK-017"}
    assert classes == {"kv-revoked": ["permission"], "kv-firewall": ["firewall"], "kv-deleted": ["key_deleted"]}
    assert {finding.rule for finding in report.findings if finding.rule == "CMK-014"} == {"CMK-014"}


def test_a_key_uri_spelled_differently_is_the_same_key(sandbox: Sandbox) -> None:
    world = sandbox.world
    vault_with_key(world, "kv-case", "cmk")
    host = world.vaults["kv-case"].properties.vault_uri.split("://", 1)[1].rstrip("/")
    plain = cmk_account(world, "kv-case", "cmk", "id-case-plain", permissions=["get", "wrapKey", "unwrapKey"])
    identity = world.create_identity("id-case-variant")
    world.grant_policy("kv-case", identity.principal_id, ["get", "wrapKey", "unwrapKey"])
    variant = world.create_account(uai="id-case-variant")
    stored = world.storage().storage_accounts.update(RG, variant.name, StorageAccountUpdateParameters(
        encryption=Encryption(key_source="Microsoft.Keyvault",
                              key_vault_properties=KeyVaultProperties(key_name="CMK", key_vault_uri=f"HTTPS://{host}"),
                              encryption_identity=EncryptionIdentity(encryption_user_assigned_identity=identity.id))))
    assert stored.encryption.key_vault_properties.key_name == "CMK"
    scope = world.storage().encryption_scopes.put(RG, plain.name, "casescope", EncryptionScope(  # type: ignore[attr-defined]
        source="Microsoft.KeyVault", key_vault_properties=EncryptionScopeKeyVaultProperties(
            key_uri=f"HTTPS://{host}/keys/CMK/")))
    later(world)

    report = sweep(sandbox)

    assert [finding for finding in report.findings if finding.severity.at_least(Severity.LOW)] == []
    (key,) = report.keys  # one key, however its consumers spell it
    assert key.key.lower() == f"https://{host}/keys/cmk"
    (version,) = key.versions
    assert {user.lower() for user in version.used_by} == {
        plain.id.lower(), stored.id.lower(), scope.id.lower()}  # type: ignore[attr-defined]
    assert not version.safe_to_disable
