"""The compliance sweep use case over fakes: evaluate, key reports, alerts, the stored report."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from controller import service
from controller.audit import AuditFailureGroup, FailureClass
from controller.compliance.report import ComplianceReport
from controller.compliance.rules import RequireCmk
from controller.errors import Forbidden
from controller.model import Severity
from controller.reasons import Reason
from controller.settings import load_settings
from tests.unit import estate_builders as eb
from tests.unit.fakes import FakeAuditLog, FakeClock, FakeEstateReader, FakeNotifier, FakeReportStore, fake_dependencies

pytestmark = pytest.mark.unit


def deps_for(estate, *, env=None, audit=None):
    settings = load_settings({"CMK_VAULTS": eb.VAULT_ORIGIN, **(env or {})})
    reader = FakeEstateReader(estate)
    notifier = FakeNotifier()
    reports = FakeReportStore()
    deps = fake_dependencies(settings, clock=FakeClock(eb.NOW), notifier=notifier, estate=reader, reports=reports,
                             audit=audit or FakeAuditLog())
    return deps, reader, notifier, reports


def test_a_compliant_estate_reports_no_finding_above_info_and_each_version_of_its_key():
    deps, reader, notifier, _ = deps_for(eb.estate())

    report = service.run_compliance_sweep(deps)

    assert [finding for finding in report.findings if finding.severity.at_least(Severity.LOW)] == []
    assert reader.asked == [()]  # the configured scope: CMK_SUBSCRIPTIONS empty
    assert notifier.scopes == {"compliance": []}
    (key,) = report.keys
    assert key.key == eb.KEY_URI
    old, latest = key.versions
    assert (old.version, old.used_by, old.latest, old.safe_to_disable) == (eb.V1, (), False, True)
    assert (latest.version, latest.used_by, latest.latest, latest.safe_to_disable) == (
        eb.V2, (eb.account_id("acct1"),), True, False)
    assert "no audit logs available" in old.why  # FakeAuditLog() stands for "no audit log configured"
    assert latest.blobs is None  # no registered container: blobs were not counted, which is not zero


def test_findings_at_or_above_high_become_alerts_keyed_by_the_findings_fingerprint():
    vault = eb.vault(enable_purge_protection=False, diagnostic_settings=())  # CMK-004 high, CMK-016 medium
    deps, _, notifier, _ = deps_for(eb.estate(vaults=(vault,)))

    report = service.run_compliance_sweep(deps)

    assert {(finding.rule, finding.severity) for finding in report.findings} >= {
        ("CMK-004", Severity.HIGH), ("CMK-016", Severity.MEDIUM)}
    alerts = notifier.scopes["compliance"]
    purge = next(finding for finding in report.findings if finding.rule == "CMK-004")
    assert [(alert.fingerprint, alert.reason, alert.severity, alert.resource) for alert in alerts] == [
        (purge.fingerprint, Reason.COMPLIANCE_FINDING, Severity.HIGH, eb.VAULT_ID)]
    assert alerts[0].message == purge.remediation
    assert alerts[0].details["rule"] == "CMK-004"


def test_a_not_evaluable_resource_alerts_with_its_own_reason():
    vault = eb.vault(keys=None)  # the key listing was not read: CMK-000 on the keys' rules
    deps, _, notifier, _ = deps_for(eb.estate(vaults=(vault,)))

    service.run_compliance_sweep(deps)

    reasons = {alert.reason for alert in notifier.scopes["compliance"]}
    assert reasons == {Reason.COMPLIANCE_NOT_EVALUATED}


def test_an_explicit_subset_of_subscriptions_leaves_the_alerts_alone():
    vault = eb.vault(enable_purge_protection=False)
    deps, reader, notifier, _ = deps_for(eb.estate(vaults=(vault,)))

    report = service.run_compliance_sweep(deps, [eb.SUB])

    assert reader.asked == [(eb.SUB,)]
    assert notifier.scopes == {}
    assert any(finding.rule == "CMK-004" for finding in report.findings)
    assert eb.SUB in report.subscriptions


def test_the_thresholds_come_from_the_settings():
    settings = load_settings({"CMK_VAULTS": eb.VAULT_ORIGIN, "CMK_REQUIRE_CMK": "tagged",
                              "CMK_EXPIRY_WARNING_DAYS": "7", "CMK_ROTATION_MAX_AGE_DAYS": "365",
                              "CMK_MIN_RSA_KEY_SIZE": "4096", "CMK_REWRAP_WINDOW_HOURS": "48",
                              "CMK_MAX_ACCOUNTS_PER_KEY": "3", "CMK_ADOPTION_WINDOW_HOURS": "12"})

    thresholds = service.rule_settings(settings)

    assert thresholds.require_cmk is RequireCmk.TAGGED
    assert thresholds.expiry_warning == timedelta(days=7)
    assert thresholds.rotation_max_age == timedelta(days=365)
    assert thresholds.min_rsa_key_size == 4096
    assert thresholds.rewrap_window == timedelta(hours=48)
    assert thresholds.max_accounts_per_key == 3
    assert thresholds.adoption_window == timedelta(hours=12)


def test_a_threshold_setting_changes_the_verdict():
    # The compliant estate's key is RSA 3072: fine by default, a CMK-005 finding when 4096 is required.
    deps, _, _, _ = deps_for(eb.estate(), env={"CMK_MIN_RSA_KEY_SIZE": "4096"})

    report = service.run_compliance_sweep(deps)

    assert [finding.rule for finding in report.findings if finding.rule == "CMK-005"] == ["CMK-005"]


def test_the_report_is_stored_as_latest_and_in_its_dated_place_and_reads_back():
    deps, _, _, reports = deps_for(eb.estate())
    report = service.run_compliance_sweep(deps)

    name = service.store_report(report, deps)

    assert name == "2026/12/03/2026-12-03T120000Z.json"
    assert set(reports.documents) == {name, "latest.json"}
    assert reports.documents[name] == reports.documents["latest.json"]
    assert service.latest_report(deps) == report


def test_there_is_no_latest_report_before_the_first_sweep():
    deps, _, _, _ = deps_for(eb.estate())
    assert service.latest_report(deps) is None


def test_the_scheduled_sweep_reconciles_sweeps_stores_and_dispatches():
    deps, reader, notifier, reports = deps_for(eb.estate())

    sweep, compliance = service.scheduled_sweep(deps)

    assert sweep.failures == ()
    assert reader.asked == [()]
    assert "latest.json" in reports.documents
    assert isinstance(compliance, ComplianceReport)
    assert notifier.dispatches == 1


class UnlistableEstate:
    def gather(self, subscriptions, now):
        raise Forbidden("list the subscriptions the identity can read: HTTP 403 AuthorizationFailed")


def test_a_compliance_sweep_that_cannot_run_is_a_sweep_failure_and_alerts_still_leave():
    deps, _, notifier, reports = deps_for(eb.estate())
    deps = replace(deps, estate=UnlistableEstate())

    sweep, compliance = service.scheduled_sweep(deps)

    assert compliance is None
    assert sweep.failures == ("compliance sweep: list the subscriptions the identity can read: HTTP 403 "
                              "AuthorizationFailed",)
    assert reports.documents == {}
    assert notifier.dispatches == 1


def test_blob_census_fills_the_versions_blob_counts_and_users():
    census = (eb.census({eb.V1: 4, eb.V2: 1}),)
    deps, _, _, _ = deps_for(eb.estate(container_census=census))

    report = service.run_compliance_sweep(deps)

    old, latest = report.keys[0].versions
    assert (old.blobs, old.used_by, old.safe_to_disable) == (4, ("acct1/secrets",), False)
    assert latest.blobs == 1
    assert "acct1/secrets" in latest.used_by


def test_version_rows_need_the_keys_versions():
    vault = eb.vault(keys=(replace(eb.vault_key(), versions=None),))
    deps, _, _, _ = deps_for(eb.estate(vaults=(vault,)))

    report = service.run_compliance_sweep(deps)

    assert [(key.key, key.versions) for key in report.keys] == [(eb.KEY_URI, ())]


def test_failed_key_operations_stay_in_the_report_but_their_alerts_come_from_the_audit_timer():
    failed = AuditFailureGroup(
        vault=eb.VAULT_ORIGIN, vault_resource_id=eb.VAULT_ID.lower(), key=eb.KEY_NAME, version=eb.V2,
        caller="b1", caller_app_id="", operations=("KeyUnwrap",), status_code=404, result_signature="NotFound",
        failure_class=FailureClass.KEY_DELETED, cause="the key or version is not in the vault", count=4,
        first_seen=eb.NOW - timedelta(hours=1), last_seen=eb.NOW, sample_description="was not found in this key vault",
        source="AZKVAuditLogs")
    deps, _, notifier, _ = deps_for(eb.estate(), audit=FakeAuditLog(failure_groups=[failed]))

    report = service.run_compliance_sweep(deps)

    assert [finding.severity for finding in report.findings if finding.rule == "CMK-017"] == [Severity.CRITICAL]
    assert [alert for alert in notifier.scopes["compliance"] if alert.details.get("rule") == "CMK-017"] == []
