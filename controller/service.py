"""Use cases: what the function triggers and the CLI do, over ports only (no SDK, no I/O of its own)."""

from __future__ import annotations

import enum
import json
import logging
import math
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from controller import audit_watch, reconciler, rotation
from controller.audit import AuditReport, checked_window
from controller.blob_census import wrapping_versions
from controller.compliance import drift, rules
from controller.compliance.audit_evidence import audit_evidence
from controller.compliance.drift import DriftFocus
from controller.compliance.estate import Estate, ReadAspect, ReadFailure
from controller.compliance.findings import Finding
from controller.compliance.formats import render_json
from controller.compliance.report import ComplianceReport, iso_timestamp, parse_report
from controller.compliance.resolve import index
from controller.compliance.rules.context import NOT_EVALUABLE
from controller.compliance.rules.vaults import AUDIT_LOGS_RESOURCE
from controller.compliance.usage import key_reports
from controller.errors import Conflict, ControllerError, InvalidEvent, InvalidInput, PermanentError, TransientError
from controller.events import IntakeResult, parse_delivery
from controller.logs import log_record
from controller.model import Alert, Consumer, ConsumerKind, KeyEvent, KeyEventKind, KeyRef, Severity
from controller.ports import (
    AuditCheckpoint,
    AuditLog,
    BlobStore,
    Clock,
    EstateReader,
    EventLedger,
    Notifier,
    QueuedWork,
    ReportStore,
    RewrapBackend,
    RewrapJobLedger,
    RewrapObserver,
    RewrapProgress,
    WorkQueue,
)
from controller.reasons import Reason
from controller.resource_events import ResourceEvent
from controller.rewrap.budget import BudgetedBlobStore, BudgetExhausted, TimeBudget
from controller.rewrap.lease import PageLease
from controller.rewrap.outcomes import Outcome as BlobOutcome
from controller.rewrap.outcomes import ProblemReason, RewrapReport
from controller.rewrap.pages import (
    PAGE_WORK_KIND,
    ClaimOutcome,
    JobProgress,
    ListedBlob,
    PageProgressIsRecordedOnce,
    PageResult,
    PageState,
    PageStore,
    RewrapPageItem,
    failed_page_result,
    job_id_of,
    page_items,
    parse_page_item,
)
from controller.rewrap.strategies import STAGING_PREFIX, walker_for
from controller.rewrap.walker import RewrapOptions
from controller.rewrap.work import WORK_KIND as REWRAP_WORK_KIND
from controller.rewrap.work import RewrapMode, RewrapWorkItem, parse_work_item, split_job
from controller.settings import Settings

log = logging.getLogger("controller.service")

#: A continuation's "claims": the claim owner of the run it continues, as the reconciler names runs.
_CLAIM_OWNER = re.compile(r"[A-Za-z0-9.:/_-]{1,200}")
#: A continuation's "worklist": the id of the worklist its run left in the rotation ledger.
_WORKLIST_ID = re.compile(r"[0-9a-f]{32}")
#: Work items larger than this are not ours: Azure Storage queue messages are at most 64 KiB.
MAX_WORK_ITEM_BYTES = 64 * 1024
#: Deliveries of a work item before the queue moves it to its poison queue (host.json
#: extensions.queues.maxDequeueCount).
MAX_DELIVERIES = 5


class Outcome(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class HandledEvent:
    event: KeyEvent
    outcome: Outcome


@dataclass(slots=True)
class IntakeReport:
    """What one delivery produced: handled events, ignored (non-key) events and rejections."""

    handled: list[HandledEvent] = field(default_factory=list)
    ignored: int = 0
    rejected: list[InvalidEvent] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "accepted": sum(1 for item in self.handled if item.outcome is Outcome.ACCEPTED),
            "duplicates": sum(1 for item in self.handled if item.outcome is Outcome.DUPLICATE),
            "ignored": self.ignored,
            "rejected": [{"reason": error.reason, "detail": error.detail} for error in self.rejected],
        }


@dataclass(frozen=True, slots=True)
class Dependencies:
    """Everything the use cases need, built once by the composition root (controller/bootstrap.py).

    Nothing here is optional: a host that cannot build one of them fails at start-up naming the
    setting, instead of each use case discovering at run time that it was not wired.
    """

    settings: Settings
    clock: Clock
    ledger: EventLedger
    #: Every alert leaves through here (the log, the webhook ...), whichever use case raises it.
    notifier: Notifier
    work_queue: WorkQueue
    #: The rotation reconciler.
    reconcile: reconciler.ReconcileDeps
    #: Re-wrap of client-side-encrypted containers (kind "rewrap" work items).
    rewrap: RewrapBackend
    #: Scale-out re-wrap jobs: the listing, the pages and their leases, the job's totals.
    rewrap_jobs: RewrapJobLedger
    #: Blob data plane of a storage account by name (census of client-side-encrypted containers).
    blob_stores: Callable[[str], BlobStore]
    #: Key Vault audit logs (last successful unwrap per version, failures, key deletions).
    audit: AuditLog
    #: The audit timer's checkpoint in the ledger (scheduled_audit).
    audit_checkpoint: AuditCheckpoint
    #: The compliance sweep's snapshot of the estate.
    estate: EstateReader
    #: Where compliance reports are kept (CMK_REPORT_CONTAINER).
    reports: ReportStore
    #: Wall-clock budget of one re-wrap work item; below functionTimeout (host.json) with margin.
    #: None: no budget, the item runs to the end (the operator CLI).
    rewrap_budget_seconds: float | None = 300.0
    #: How long a worker holds a page of a scale-out job before another may take it over (its
    #: worker is presumed crashed); well above the time one page takes.
    rewrap_page_lease_seconds: float = 600.0
    #: This instance's completed drift re-reads: an account event older than one is covered by it.
    drift_re_reads: drift.CompletedReReads = field(default_factory=drift.CompletedReReads)


def handle_key_event(event: KeyEvent, deps: Dependencies) -> HandledEvent:
    """Claim the event id (idempotent under redelivery), then let the reconciler act on it.

    A transient failure releases the claim and propagates, so the redelivery is processed; a permanent
    one is recorded (the reconciler alerts) and the event is not retried. A redelivered event that was
    already processed is dropped: the reconciler's re-checks and the sweep cover anything it missed.
    An instance that dies while handling it (its claim held, a consumer maybe pinned mid-adoption)
    cannot release it, so a re-check of the key is queued before the claim and withdrawn once the
    event is handled or found a duplicate (``_crash_net``).
    """
    now = deps.clock.now()
    ttl = timedelta(hours=deps.settings.event_dedupe_hours)
    net = _crash_net(event, deps)
    outcome = Outcome.ACCEPTED if deps.ledger.claim_event(event.event_id, now=now, ttl=ttl) else Outcome.DUPLICATE
    log_record(log, logging.INFO, f"key event {outcome.value}", {**event.as_json(), "outcome": outcome.value})
    if outcome is Outcome.ACCEPTED:
        try:
            results = reconciler.on_key_event(event, deps.reconcile, auto_rotate=deps.settings.auto_rotate)
            if event.kind is KeyEventKind.NEW_VERSION and event.key is not None:
                _fan_out_rewrap(event.key, results, deps)
        except TransientError:
            deps.ledger.release_event(event.event_id)
            _withdraw(net, deps)
            raise
        except Conflict as err:
            # State changed under us (a concurrent writer): retrying with fresh state converges.
            deps.ledger.release_event(event.event_id)
            _withdraw(net, deps)
            raise TransientError(f"{event.kind.value} event {event.event_id}: {err}") from err
        except PermanentError as err:
            # Retrying cannot help (a deleted key, a missing permission): a human has to know.
            log_record(log, logging.ERROR, "key event failed permanently",
                       {"event_id": event.event_id, "error": str(err)})
            deps.notifier.send(reconciler.event_failed_alert(event, err, deps.reconcile))
    _withdraw(net, deps)
    # The end of the event's handling, with how long it took (the accepted line above is its start).
    log_record(log, logging.INFO, "handled key event", {
        "event_id": event.event_id, "key": event.key.uri if event.key else None, "outcome": outcome.value,
        "seconds": round((deps.clock.now() - now).total_seconds(), 3)})
    return HandledEvent(event, outcome)


def _crash_net(event: KeyEvent, deps: Dependencies) -> QueuedWork | None:
    """A re-check of the event's key, due once the write claims of an instance that died handling it
    have lapsed (a quarter of the claim lease later): it repairs what the dead instance left half done."""
    if event.key is None:
        return None
    claim_lease = deps.reconcile.limits.claim_for
    return deps.work_queue.enqueue({"kind": "reconcile", "key": event.key.versionless.uri},
                                   delay=claim_lease + claim_lease / 4)


def _withdraw(net: QueuedWork | None, deps: Dependencies) -> None:
    if net is None:
        return
    try:
        deps.work_queue.withdraw(net)
    except ControllerError as err:  # left on the queue, it only re-checks a key: the event's outcome stands
        log_record(log, logging.WARNING, "re-check not withdrawn", {"message_id": net.message_id, "error": str(err)})


def handle_intake(result: IntakeResult, deps: Dependencies) -> IntakeReport:
    """Handle every accepted event of a delivery; count ignored ones and keep the rejection reasons.

    Events are handled in delivery order: correctness never depends on it, because Event Grid
    delivers unordered and every handler converges whatever the order.
    """
    for error in result.rejected:
        log_record(log, logging.WARNING, "key event rejected",
                   {"reason": error.reason, "detail": error.detail, "event_id": error.event_id})
    if result.ignored:
        log_record(log, logging.INFO, "events ignored (not key events)", {"count": result.ignored})
    report = IntakeReport(ignored=result.ignored, rejected=list(result.rejected))
    report.handled.extend(handle_key_event(event, deps) for event in result.events)
    return report


@dataclass(frozen=True, slots=True)
class SweepReport:
    expired_event_claims_purged: int
    keys_reconciled: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()

    def as_json(self) -> dict[str, object]:
        return {"expired_event_claims_purged": self.expired_event_claims_purged,
                "keys_reconciled": list(self.keys_reconciled), "failures": list(self.failures)}


def run_sweep(deps: Dependencies) -> SweepReport:
    """The periodic sweep, the level-based safety net behind the events: ledger housekeeping, then a
    reconcile of every key of the managed vaults that has consumers (an event that was lost, or that
    arrived before the controller was deployed, is caught up here). One failing key or vault is
    recorded and the sweep goes on. The timer adds the compliance sweep (``scheduled_sweep``)."""
    return _deliver_alerts(_reconcile_sweep(deps), deps)


def _deliver_alerts(report: SweepReport, deps: Dependencies) -> SweepReport:
    """Deliver the alerts owed (a failed delivery is a sweep failure, retried next time) and log the sweep."""
    deliveries = deps.notifier.dispatch()
    if deliveries.errors:
        report = replace(report, failures=report.failures + tuple(f"alert delivery {error}"
                                                                  for error in deliveries.errors))
    log_record(log, logging.WARNING if report.failures else logging.INFO, "sweep finished", report.as_json())
    return report


def _reconcile_sweep(deps: Dependencies) -> SweepReport:
    purged = deps.ledger.purge_expired(now=deps.clock.now())
    reconciled: list[str] = []
    failures: list[str] = []
    for vault_url in deps.settings.vaults:
        try:
            keys = deps.reconcile.inventory.keys_in_use(deps.settings.vault_policy.parse_vault_origin(vault_url))
        except ControllerError as err:
            failures.append(f"{vault_url}: {err}")
            continue
        for key in keys:
            try:
                reconciler.reconcile_key(key, deps.reconcile)
            except ControllerError as err:  # transient, permanent or a lost race: the next sweep retries
                failures.append(f"{key.uri}: {err}")
            else:
                reconciled.append(key.uri)
    return SweepReport(purged, tuple(reconciled), tuple(failures))


# --- the compliance sweep ----------------------------------------------------------------------------

#: The alert scope of the compliance sweep: each sweep of the configured scope replaces its alerts.
COMPLIANCE_ALERT_SCOPE = "compliance"
#: Findings at or above this severity become alerts (the rest are in the report only).
COMPLIANCE_ALERT_SEVERITY = Severity.HIGH
LATEST_REPORT = "latest.json"


def rule_settings(settings: Settings) -> rules.RuleSettings:
    """The rules' thresholds from the app settings (CMK_REQUIRE_CMK, CMK_*_DAYS, ...)."""
    return rules.RuleSettings(
        require_cmk=rules.RequireCmk(settings.require_cmk),
        adoption_window=timedelta(hours=settings.adoption_window_hours),
        expiry_warning=timedelta(days=settings.expiry_warning_days),
        rotation_max_age=timedelta(days=settings.rotation_max_age_days),
        min_rsa_key_size=settings.min_rsa_key_size,
        rewrap_window=timedelta(hours=settings.rewrap_window_hours),
        max_accounts_per_key=settings.max_accounts_per_key,
    )


def run_compliance_sweep(deps: Dependencies, subscriptions: Sequence[str] | None = None) -> ComplianceReport:
    """Gather the estate once, evaluate every rule of RULES.md, and report per key who uses which version.

    ``subscriptions`` None sweeps the configured scope (CMK_SUBSCRIPTIONS; empty: every subscription the
    identity can read) and syncs the alerts: every finding at or above high (but CMK-017's, which the
    audit timer sends) is an open alert keyed by the finding's fingerprint, and an alert whose finding is
    gone is resolved. An explicit subset (the
    operator's ``cmkctl sweep --subscription``) leaves the alerts alone: it cannot tell a fixed finding
    from one outside the subset.
    """
    now = deps.clock.now()
    scope = tuple(subscriptions) if subscriptions is not None else deps.settings.subscriptions
    estate = _with_audit_evidence(deps.estate.gather(scope, now), deps)
    findings = rules.evaluate(estate, rule_settings(deps.settings), now)
    summary = rules.summarise(estate, findings)
    report = ComplianceReport(
        generated_at=now,
        findings=tuple(findings),
        resources_evaluated=summary.resources_evaluated,
        not_evaluable=len(summary.not_evaluable),
        keys=key_reports(index(estate), deps.audit.last_successful_unwraps, now=now,
                         window=timedelta(hours=deps.settings.adoption_window_hours)),
        subscriptions=tuple(sorted({sub.subscription_id for sub in estate.subscriptions} | set(scope))),
    )
    if subscriptions is None:
        deps.notifier.sync(COMPLIANCE_ALERT_SCOPE, compliance_alerts(report))
    log_record(log, logging.INFO, "compliance sweep finished", {
        "findings": report.summary.finding_count, "resources_evaluated": report.resources_evaluated,
        "not_evaluable": report.not_evaluable})
    return report


def _with_audit_evidence(estate: Estate, deps: Dependencies) -> Estate:
    """The audit analysis's failed wraps and unwraps (CMK-017): none configured leaves ``audit`` None
    (CMK-017 says it could not be evaluated), a failing query is a read failure of its own."""
    try:
        report = scan_audit(deps)
    except ControllerError as err:
        failure = ReadFailure(resource=AUDIT_LOGS_RESOURCE, aspect=ReadAspect.AUDIT_LOGS, reason=str(err))
        return replace(estate, read_failures=(*estate.read_failures, failure))
    return estate if report is None else replace(estate, audit=audit_evidence(report))


#: Rules whose alerts another timer sends: CMK-017 (failed key operations) comes from the audit timer
#: (scheduled_audit), within minutes and per key; the sweep's report still lists its findings.
ALERTED_ELSEWHERE = frozenset({"CMK-017"})


def compliance_alerts(report: ComplianceReport) -> list[Alert]:
    """One alert per finding at or above COMPLIANCE_ALERT_SEVERITY, keyed by the finding's fingerprint."""
    return finding_alerts(report.findings)


def finding_alerts(findings: Iterable[Finding]) -> list[Alert]:
    """The alerts of findings at or above COMPLIANCE_ALERT_SEVERITY (the sweep's and drift's alike), except the
    rules in ALERTED_ELSEWHERE."""
    return [
        Alert(
            severity=finding.severity,
            title=f"{finding.rule}: {finding.title}",
            resource=finding.resource,
            reason=Reason.COMPLIANCE_NOT_EVALUATED if finding.rule == NOT_EVALUABLE
            else Reason.COMPLIANCE_FINDING,
            message=finding.remediation,
            fingerprint=finding.fingerprint,
            details={"rule": finding.rule, "evidence": dict(finding.evidence)},
        )
        for finding in findings
        if finding.severity.at_least(COMPLIANCE_ALERT_SEVERITY) and finding.rule not in ALERTED_ELSEWHERE
    ]


# --- drift: resource events re-evaluate the rules of what they touch -----------------------------------


@dataclass(frozen=True, slots=True)
class DriftReport:
    """What one batch of resource events did: events handled and dropped as duplicates, what was
    re-read, and the findings that hold now for it."""

    events: tuple[str, ...]
    duplicates: tuple[str, ...] = ()
    focus: DriftFocus | None = None
    findings: tuple[Finding, ...] = ()
    #: Events of the controller's own writes: neither claimed nor re-read.
    own_writes: tuple[str, ...] = ()

    def as_json(self) -> dict[str, object]:
        return {"events": list(self.events), "duplicates": list(self.duplicates), "own_writes": list(self.own_writes),
                "focus": self.focus.as_json() if self.focus else None,
                "findings": [{"rule": item.rule, "resource": item.resource, "severity": item.severity.value}
                             for item in self.findings]}


def handle_resource_events(events: Sequence[ResourceEvent], deps: Dependencies) -> DriftReport:
    """Drift in seconds: re-read only what the events touched (and what its rules need), re-evaluate
    only their rules, and sync the compliance alerts for exactly what was re-evaluated.

    An event is a trigger, never the truth: whatever it says, Azure's current state decides, so a
    duplicate or an out-of-order delivery converges to the same alerts. Event ids are claimed (a
    redelivery is dropped); a failure to read releases them and propagates, so Event Grid retries.
    """
    now = deps.clock.now()
    ttl = timedelta(hours=deps.settings.event_dedupe_hours)
    # The controller's own writes (a rotation's adoption: one event per account written) were verified by
    # the reconciler from ARM's answer; re-reading each would spend ARM's read budget the writes need. Nothing
    # is done for them, so they are not claimed either (a ledger write per account written, for nothing).
    own = deps.settings.controller_client_id
    own_writes = tuple(event.event_id for event in events if own is not None and event.caller_app_id == own)
    if own_writes:
        log_record(log, logging.INFO, "resource events of the controller's own writes: not re-evaluated",
                   {"events": list(own_writes)})
    others = [event for event in events if own is None or event.caller_app_id != own]
    claimed = [event for event in others if deps.ledger.claim_event(event.event_id, now=now, ttl=ttl)]
    duplicates = tuple(event.event_id for event in others if event not in claimed)
    if not claimed:
        if duplicates:
            log_record(log, logging.INFO, "resource events dropped as duplicates", {"events": list(duplicates)})
        return DriftReport(events=(), duplicates=duplicates, own_writes=own_writes)
    covered = [event for event in claimed if deps.drift_re_reads.covers(event.target, event.event_time)]
    if covered:
        log_record(log, logging.INFO, "resource events covered by a re-read made after them",
                   {"events": [event.event_id for event in covered]})
    pending = [event for event in claimed if event not in covered]
    if not pending:
        return DriftReport(events=tuple(event.event_id for event in claimed), duplicates=duplicates,
                           own_writes=own_writes)
    focus = DriftFocus.of(event.target for event in pending)
    try:
        focused = deps.estate.gather_focus(deps.settings.subscriptions, focus, now)
        result = drift.evaluate_drift(focused.estate, focused.coverage, rule_settings(deps.settings), now)
        coverage = result.coverage
        deps.notifier.sync(COMPLIANCE_ALERT_SCOPE, finding_alerts(result.findings),
                           within=lambda alert: coverage.covers(_rule_of(alert), alert.resource))
    except ControllerError:
        for event in claimed:
            deps.ledger.release_event(event.event_id)
        raise
    deps.drift_re_reads.record(now, coverage)
    report = DriftReport(events=tuple(event.event_id for event in claimed), duplicates=duplicates, focus=focus,
                         findings=result.findings, own_writes=own_writes)
    log_record(log, logging.INFO, "drift re-evaluated", {
        **report.as_json(), "events": [event.as_json() for event in claimed]})
    return report


def _rule_of(alert: Alert) -> str | None:
    rule = alert.details.get("rule")
    return rule if isinstance(rule, str) else None


def report_history_name(generated_at: datetime) -> str:
    """Where a report is kept for good: ``YYYY/MM/DD/<timestamp>.json`` (UTC)."""
    moment = generated_at.astimezone(UTC)
    return f"{moment:%Y/%m/%d}/{iso_timestamp(moment).replace(':', '')}.json"


def store_report(report: ComplianceReport, deps: Dependencies) -> str:
    """Keep the report in its dated place and as ``latest.json``; returns the dated name."""
    document = render_json(report).encode("utf-8")
    name = report_history_name(report.generated_at)
    deps.reports.save(name, document)
    deps.reports.save(LATEST_REPORT, document)
    return name


def latest_report(deps: Dependencies) -> ComplianceReport | None:
    """The last stored report (None before the first sweep); InvalidReport if the stored one is broken."""
    stored = deps.reports.load(LATEST_REPORT)
    return parse_report(stored) if stored is not None else None


def scheduled_sweep(deps: Dependencies) -> tuple[SweepReport, ComplianceReport | None]:
    """The timer: reconcile every key in use, then sweep the estate for compliance and keep the report,
    then deliver the alerts both raised. A compliance sweep that cannot run (the subscriptions cannot be
    listed, the report cannot be stored) is a failure of this sweep: the reconcile's alerts still leave."""
    sweep = _reconcile_sweep(deps)
    compliance: ComplianceReport | None = None
    try:
        compliance = run_compliance_sweep(deps)
        store_report(compliance, deps)
    except ControllerError as err:
        sweep = replace(sweep, failures=(*sweep.failures, f"compliance sweep: {err}"))
    return _deliver_alerts(sweep, deps), compliance


class InvalidWorkItem(InvalidInput):
    """A queue message that no handler can process; retrying cannot help."""


@dataclass(frozen=True, slots=True)
class WorkReport:
    kind: str
    intake: IntakeReport = field(default_factory=IntakeReport)
    rewrap: RewrapWorkResult | None = None
    reconcile: reconciler.ReconcileResult | None = None

    def as_json(self) -> dict[str, object]:
        if self.rewrap is not None:
            return {"kind": self.kind, **self.rewrap.as_json()}
        if self.reconcile is not None:
            return {"kind": self.kind, **self.reconcile.as_json()}
        return {"kind": self.kind, **self.intake.as_json()}


def process_work(body: str, deps: Dependencies, *, last_delivery: bool = False) -> WorkReport:
    """Process one work-queue item.

    Kinds: ``key_event`` carries an Event Grid delivery (one event or an array) to handle exactly as
    if Event Grid had pushed it (replays of dead-lettered events; deferred handling); ``rewrap`` is
    one slice of a re-wrap job (see run_rewrap_item); ``rewrap_page`` one page of a scale-out job
    (see run_rewrap_page; ``last_delivery``: the queue moves the item to its poison queue if this
    delivery fails too). Raises InvalidWorkItem for anything malformed or unknown.
    """
    if len(body.encode("utf-8", errors="replace")) > MAX_WORK_ITEM_BYTES:
        raise InvalidWorkItem("work item exceeds 64 KiB")
    try:
        item = json.loads(body)
    except RecursionError as err:
        raise InvalidWorkItem("work item is nested too deeply") from err
    except ValueError as err:
        raise InvalidWorkItem("work item is not JSON") from err
    if not isinstance(item, dict) or not isinstance(item.get("kind"), str):
        raise InvalidWorkItem("work item must be a JSON object with a string 'kind'")
    kind = item["kind"]
    if kind == REWRAP_WORK_KIND:
        try:
            work = parse_work_item(item, policy=deps.settings.vault_policy)
        except InvalidInput as err:
            raise InvalidWorkItem(str(err)) from err
        return WorkReport(kind=kind, rewrap=run_rewrap_item(work, deps, retry_throttled=True))
    if kind == PAGE_WORK_KIND:
        try:
            page = parse_page_item(item, policy=deps.settings.vault_policy)
        except InvalidInput as err:
            raise InvalidWorkItem(str(err)) from err
        return WorkReport(kind=kind, rewrap=run_rewrap_page(page, deps, last_delivery=last_delivery))
    if kind == "reconcile":
        return WorkReport(kind=kind, reconcile=_reconcile_item(item, deps))
    if kind != "key_event":
        raise InvalidWorkItem(f"unknown work item kind {kind[:64]!r}")
    if "delivery" not in item:
        raise InvalidWorkItem("key_event work item has no 'delivery'")
    try:
        result = parse_delivery(json.dumps(item["delivery"]), policy=deps.settings.vault_policy)
    except InvalidEvent as err:
        raise InvalidWorkItem(f"key_event work item: {err}") from err
    return WorkReport(kind=kind, intake=handle_intake(result, deps))


def key_usage(key: KeyRef, deps: Dependencies) -> list[rotation.VersionUsage]:
    """Per version of ``key``: who uses it (accounts, scopes, blobs of the registered containers, recent
    unwraps in the audit logs) and whether it is safe to disable, with the evidence."""
    key = key.versionless
    state = deps.reconcile.keys(key.vault).get_key_state(key)
    consumers = deps.reconcile.inventory.consumers_of(key)
    by_account: dict[str, list[str]] = {}
    for account, container in rewrap_targets_of(consumers, deps.settings):
        by_account.setdefault(account, []).append(container)
    blobs: Counter[str] | None = None  # None: no container is registered, so no blob was counted
    if by_account:
        blobs = Counter()
        for account, containers in sorted(by_account.items()):
            blobs += wrapping_versions(deps.blob_stores(account), containers, key, policy=deps.settings.vault_policy)
    last_unwraps = deps.audit.last_successful_unwraps(key)
    return rotation.retirement(state, consumers, blobs, last_unwraps, now=deps.reconcile.clock.now(),
                               window=deps.reconcile.planner.adoption_window)


#: Account tag naming the account's client-side-encrypted containers to re-wrap after a rotation.
REWRAP_CONTAINERS_TAG = "cmk-rewrap-containers"


def rewrap_targets(results: list[reconciler.ReconcileResult], settings: Settings) -> list[tuple[str, str]]:
    """CMK_REWRAP_TARGETS plus the containers that consumers of the key list in their account tag."""
    return rewrap_targets_of([decision.consumer for result in results for decision in result.plan.decisions],
                             settings)


def rewrap_targets_of(consumers: Iterable[Consumer], settings: Settings) -> list[tuple[str, str]]:
    targets = {(target.account, target.container) for target in settings.rewrap_targets}
    for consumer in consumers:
        tagged = consumer.tag(REWRAP_CONTAINERS_TAG)
        if consumer.kind is ConsumerKind.ACCOUNT and tagged:
            targets.update((consumer.account_name, container.strip())
                           for container in tagged.split(";") if container.strip())
    return sorted(targets)


def _fan_out_rewrap(key: KeyRef, results: list[reconciler.ReconcileResult], deps: Dependencies) -> None:
    """After a new version: re-wrap the registered client-side-encrypted containers onto it."""
    targets = rewrap_targets(results, deps.settings)
    if not targets or key.version is None:
        return
    try:
        items = split_job(targets=targets, key_id=key.uri)
    except InvalidInput as err:  # a malformed tag: alert, the rest of the event is done
        deps.notifier.send(Alert(
            severity=Severity.HIGH, title=f"{key.versionless.uri}: re-wrap targets are invalid",
            resource=key.versionless.uri, reason=Reason.REWRAP_TARGETS_INVALID, message=str(err),
            fingerprint=reconciler.fingerprint(key.versionless.uri.lower(), Reason.REWRAP_TARGETS_INVALID.value),
            details={"key": key.uri},
        ))
        return
    enqueue_rewrap(items, deps)


def _reconcile_item(item: dict[str, object], deps: Dependencies) -> reconciler.ReconcileResult:
    """A scheduled re-check of one key: {"kind": "reconcile", "key": <versionless key URI>}; a continuation
    also carries "claims": <the claim owner of the run it continues> (whose write claims it takes over) and,
    when it retries transiently failed writes, "retry": <its number> (the reconciler's bound), and "worklist":
    <the id of the worklist that run left in the ledger> when it recorded one (the continuation plans from it)."""
    key_uri = item.get("key")
    if not isinstance(key_uri, str):
        raise InvalidWorkItem("reconcile work item has no string 'key'")
    retry = item.get("retry", 0)
    if not isinstance(retry, int) or isinstance(retry, bool) or not 0 <= retry <= reconciler.MAX_WRITE_RETRIES:
        raise InvalidWorkItem(
            f"reconcile work item: 'retry' is a whole number from 0 to {reconciler.MAX_WRITE_RETRIES}")
    claims = item.get("claims")
    if claims is not None and not (isinstance(claims, str) and _CLAIM_OWNER.fullmatch(claims)):
        raise InvalidWorkItem("reconcile work item: 'claims' is a claim owner (letters, digits and '.:/_-', "
                              "at most 200)")
    worklist = item.get("worklist")
    if worklist is not None and not (isinstance(worklist, str) and _WORKLIST_ID.fullmatch(worklist)):
        raise InvalidWorkItem("reconcile work item: 'worklist' is a worklist id (32 lower-case hex digits)")
    try:
        key = deps.settings.vault_policy.allowed_key(key_uri)
    except InvalidInput as err:
        raise InvalidWorkItem(f"reconcile work item: {err}") from err
    return reconciler.reconcile_key(key, deps.reconcile, retry=retry, continues=claims, worklist=worklist)


# --- re-wrap fan-out ----------------------------------------------------------------------------------


class RewrapItemStatus(enum.StrEnum):
    COMPLETE = "complete"
    #: The budget ran out: progress is checkpointed and the continuation enqueued.
    CONTINUED = "continued"
    #: A redelivered continuation of a job that has completed since: nothing to do.
    DUPLICATE = "duplicate"
    #: Another worker advanced the same job's checkpoint first: it owns the job now.
    SUPERSEDED = "superseded"
    #: A dry run spent its budget: it reports what it saw (it keeps no checkpoint to continue from).
    DRY_RUN_CUT_SHORT = "dry_run_cut_short"
    #: Scale-out lister: every page of the listing is on the work queue.
    LISTED = "listed"
    #: Scale-out page: re-wrapped (or rewritten) and recorded.
    PAGE_DONE = "page_done"
    #: Scale-out page: it could not be worked as a whole (recorded as failed; see the job report).
    PAGE_FAILED = "page_failed"
    #: Scale-out page: another worker holds its lease; the item is back on the queue until it ends.
    HELD = "held"


@dataclass(frozen=True, slots=True)
class RewrapWorkResult:
    item: RewrapWorkItem
    status: RewrapItemStatus
    job_id: str
    progress: RewrapProgress | None
    #: The finished run's report (status COMPLETE only).
    report: RewrapReport | None = None
    #: Scale-out page items: the page's number.
    page: int | None = None
    #: Scale-out: the job's one report, on the invocation that finished the job (None on the others).
    job_report: JobProgress | None = None

    def as_json(self) -> dict[str, object]:
        progress = self.progress
        document: dict[str, object] = {
            "item": self.item.as_json(),
            "status": self.status.value,
            "job_id": self.job_id,
            "counts": dict(progress.counts) if progress else {},
            "pages": progress.pages if progress else 0,
            "unwrap_calls": progress.unwrap_calls if progress else 0,
            "problems": len(progress.problems) + progress.problems_dropped if progress else 0,
        }
        if self.page is not None:
            document["page"] = self.page
        if self.job_report is not None:
            document["job_report"] = self.job_report.as_json()
        return document


def plan_rewrap(
    deps: Dependencies,
    *,
    targets: Iterable[tuple[str, str]],
    key: KeyRef,
    prefixes: Sequence[str] = (),
    mode: RewrapMode = RewrapMode.REWRAP,
    concurrency: int = 8,
    dry_run: bool = False,
    encryption_scope: str | None = None,
    scale_out: bool = False,
) -> list[RewrapWorkItem]:
    """The work items of a re-wrap (or rewrite) job onto ``key`` (a versionless key: its current version).

    Raises VaultNotAllowed for a vault outside CMK_VAULTS, InvalidInput for overlapping prefixes.
    """
    deps.settings.vault_policy.check(key.vault)
    target = deps.rewrap.target_version(key)
    return split_job(targets=targets, key_id=target.uri, prefixes=prefixes, mode=mode, concurrency=concurrency,
                     dry_run=dry_run, encryption_scope=encryption_scope, scale_out=scale_out)


def run_rewrap_item(
    item: RewrapWorkItem, deps: Dependencies, *, observer: RewrapObserver | None = None,
    retry_throttled: bool = False,
) -> RewrapWorkResult:
    """Run one slice of a re-wrap (or rewrite) work item within the time budget; enqueue its continuation.

    TransientError (listing throttled past the retry budget, the vault or storage unreachable)
    propagates so that the queue redelivers the item; the checkpoint keeps the progress. With
    ``retry_throttled`` (the work queue's items) a run that left blobs throttled past the walker's retry
    budget raises TransientError too, before alerting: the queue delivers the item again (the job starts
    over; blobs already done cost a listing), and after its last attempt the item goes to the poison
    queue with an alert. ``observer`` follows the run page by page.
    """
    if item.scale_out:
        return _list_pages(item, deps)
    ports = deps.rewrap.open(item)
    if deps.rewrap_budget_seconds is not None:
        ports = replace(ports, store=BudgetedBlobStore(ports.store, TimeBudget(deps.clock, deps.rewrap_budget_seconds)))
    walker = walker_for(
        item.mode,
        ports,
        policy=deps.settings.vault_policy,
        options=RewrapOptions(max_workers=item.concurrency, dry_run=item.dry_run),
        observer=observer,
    )
    job_id = walker.job_id(item.container, item.prefix)
    if item.sequence > 0 and not item.dry_run:
        saved = ports.checkpoint.load(job_id)
        # A redelivery after blobs stayed throttled runs the job again; any other finished job is done.
        if saved is not None and saved.complete and not (retry_throttled and _throttled_blobs(saved)):
            return _rewrap_result(item, RewrapItemStatus.DUPLICATE, job_id, saved)
    try:
        report = walker.run(item.container, prefix=item.prefix)
    except BudgetExhausted:
        if item.dry_run:
            return _rewrap_result(item, RewrapItemStatus.DRY_RUN_CUT_SHORT, job_id, None)
        deps.work_queue.enqueue(item.continuation().to_message())
        return _rewrap_result(item, RewrapItemStatus.CONTINUED, job_id, ports.checkpoint.load(job_id))
    except Conflict:
        return _rewrap_result(item, RewrapItemStatus.SUPERSEDED, job_id, None)
    throttled = _throttled_blobs(report.progress)
    if retry_throttled and throttled and not item.dry_run:
        raise TransientError(f"{item.account}/{item.container}: {len(throttled)} blob(s) stayed throttled past the "
                             "retry budget; the item is retried")
    _alert_if_incomplete(item, job_id, report.progress, deps.notifier)
    return _rewrap_result(item, RewrapItemStatus.COMPLETE, job_id, report.progress, report)


def _throttled_blobs(progress: RewrapProgress) -> list[str]:
    return [problem.name for problem in progress.problems if problem.reason == ProblemReason.THROTTLED]


def _list_pages(item: RewrapWorkItem, deps: Dependencies) -> RewrapWorkResult:
    """The lister of a scale-out job: the listing becomes page items on the work queue, within the budget.

    Each listing page's items are enqueued before the listing is advanced past it, so a crash between
    the two enqueues that page again (its pages keep their numbers: the second copy finds them
    claimed or done). TransientError propagates (the queue redelivers; the listing resumes).
    """
    ports = deps.rewrap.open(item)
    job_id = job_id_of(item)
    listing = deps.rewrap_jobs.listing(job_id)
    budget = TimeBudget(deps.clock, deps.rewrap_budget_seconds) if deps.rewrap_budget_seconds is not None else None
    listed_now = 0
    while not listing.complete:
        if listed_now and budget is not None and budget.expired():
            deps.work_queue.enqueue(item.continuation().to_message())
            return _rewrap_result(item, RewrapItemStatus.CONTINUED, job_id, None)
        page = ports.store.list_blobs(item.container, prefix=item.prefix, marker=listing.marker)
        # A rewrite's own staging copies are never the job's blobs (the walker leaves them out too).
        blobs = [ListedBlob(blob.name, blob.etag) for blob in page.items
                 if item.mode is RewrapMode.REWRAP or not blob.name.startswith(STAGING_PREFIX)]
        items = page_items(item, first_number=listing.pages_listed, marker=listing.marker, blobs=blobs)
        for page_item in items:
            deps.work_queue.enqueue(page_item.to_message())
        listing = replace(listing, marker=page.next_marker, pages_listed=listing.pages_listed + len(items),
                          complete=page.next_marker is None)
        try:
            deps.rewrap_jobs.save_listing(job_id, listing)
        except Conflict:
            return _rewrap_result(item, RewrapItemStatus.SUPERSEDED, job_id, None)
        listed_now += 1
    return _rewrap_result(item, RewrapItemStatus.LISTED, job_id, None, job_report=_finish_if_done(item, job_id, deps))


def run_rewrap_page(page: RewrapPageItem, deps: Dependencies, *, last_delivery: bool = False) -> RewrapWorkResult:
    """Re-wrap (or rewrite) one page of a scale-out job, under a lease, and record it once.

    A page done already is dropped (DUPLICATE); a page another worker holds goes back on the queue
    until its lease ends (HELD); a page whose holder's lease ran out is taken over. A page that
    cannot be worked for good (PermanentError) is recorded as failed, with its blobs' names; on a
    TransientError the lease is released at once and the error propagates, so the queue's
    redelivery (after its visibility timeout) takes the page up again instead of waiting out the
    lease. Once the item's retries are exhausted, give_up_work records the page as failed.

    A worker that dies with the page (killed, out of memory, its host gone) runs none of that. So a
    page whose holders died MAX_DELIVERIES times (each lease ran out) is recorded as failed by the
    next claim instead of being worked again; and on the item's ``last_delivery`` a copy of the item
    is enqueued first, due when this delivery's lease has run out: if this worker dies too and the
    queue moves the item to its poison queue without running any code of ours, the copy still
    accounts for the page (it is dropped as a duplicate when the page was recorded).
    """
    job = page.job
    ports = deps.rewrap.open(job)
    job_id = job_id_of(job)
    worker = uuid.uuid4().hex
    claim = deps.rewrap_jobs.claim_page(job_id, page.number, worker=worker,
                                        lease_seconds=deps.rewrap_page_lease_seconds)
    if claim.outcome is ClaimOutcome.FINISHED:
        # Recorded already; but the worker that recorded it may have died before finishing the job (its
        # last page): finishing is idempotent, so a redelivery finishes what that worker could not.
        return _rewrap_result(job, RewrapItemStatus.DUPLICATE, job_id, None, page=page.number,
                              job_report=_finish_if_done(job, job_id, deps))
    if claim.outcome is ClaimOutcome.HELD:
        deps.work_queue.enqueue(page.to_message(), delay=timedelta(seconds=claim.retry_in + 1))
        return _rewrap_result(job, RewrapItemStatus.HELD, job_id, None, page=page.number)
    if claim.takeovers >= MAX_DELIVERIES:
        why = f"its worker died on {claim.takeovers} attempts (each time the page's lease ran out)"
        return _record_page(page, job_id, worker, failed_page_result(page, why),
                            status=RewrapItemStatus.PAGE_FAILED, progress=None, deps=deps)
    if last_delivery:
        deps.work_queue.enqueue(page.to_message(),
                                delay=timedelta(seconds=math.ceil(deps.rewrap_page_lease_seconds) + 1))
    store = PageStore(ports.store, page)
    walker = walker_for(
        job.mode,
        replace(ports, store=store, checkpoint=PageProgressIsRecordedOnce()),
        policy=deps.settings.vault_policy,
        options=RewrapOptions(max_workers=job.concurrency),
    )
    lease_seconds = deps.rewrap_page_lease_seconds
    try:
        with PageLease(lambda: deps.rewrap_jobs.renew_page(job_id, page.number, worker=worker,
                                                           lease_seconds=lease_seconds),
                       lease_seconds, page=f"{job_id}/{page.number}"):
            report = walker.run(job.container, prefix=job.prefix)
    except TransientError:
        _release_page(job_id, page.number, worker, deps)
        raise
    except PermanentError as err:
        result = failed_page_result(page, f"{type(err).__name__}: {err}")
        status = RewrapItemStatus.PAGE_FAILED
        progress = None
    else:
        progress = report.progress
        counts = Counter(progress.counts)
        counts.update({BlobOutcome.VANISHED.value: len(store.vanished)} if store.vanished else {})
        progress = replace(progress, counts=dict(counts))
        result = PageResult(
            state=PageState.DONE, counts=progress.counts, unwrap_calls=progress.unwrap_calls,
            writes=progress.writes, conflicts=progress.conflicts, throttled=progress.throttled,
            problems=progress.problems, problems_dropped=progress.problems_dropped,
        )
        status = RewrapItemStatus.PAGE_DONE
    return _record_page(page, job_id, worker, result, status=status, progress=progress, deps=deps)


def _record_page(page: RewrapPageItem, job_id: str, worker: str, result: PageResult, *, status: RewrapItemStatus,
                 progress: RewrapProgress | None, deps: Dependencies) -> RewrapWorkResult:
    """Record what ``worker``'s claim of the page came to, once; the job's report if that finished it."""
    job = page.job
    try:
        deps.rewrap_jobs.record_page(job_id, page.number, worker=worker, result=result)
    except Conflict:
        return _rewrap_result(job, RewrapItemStatus.SUPERSEDED, job_id, progress, page=page.number)
    return _rewrap_result(job, status, job_id, progress, page=page.number,
                          job_report=_finish_if_done(job, job_id, deps))


def _release_page(job_id: str, number: int, worker: str, deps: Dependencies) -> None:
    """Give the page's lease up after a transient error (best effort: if the ledger is unreachable
    too, the lease runs out as a crashed worker's does)."""
    try:
        deps.rewrap_jobs.release_page(job_id, number, worker=worker, retry_in=0.0)
    except TransientError as err:
        log_record(log, logging.WARNING, "could not release a page's lease",
                   {"job_id": job_id, "page": number, "error": type(err).__name__})


def give_up_work(body: str, reason: str, deps: Dependencies) -> JobProgress | None:
    """A work item is given up (moved to the poison queue): a scale-out page is recorded as failed,
    each of its blobs by name with ``reason``, so that its job still ends, with a report that says
    so. The job's report when this finished it; None otherwise (and for any other kind of item)."""
    try:
        item = json.loads(body)
        if not isinstance(item, dict) or item.get("kind") != PAGE_WORK_KIND:
            return None
        page = parse_page_item(item, policy=deps.settings.vault_policy)
    except (ValueError, RecursionError, InvalidInput):
        return None  # nothing of a job to record: the poisoned item itself says what it was
    job_id = job_id_of(page.job)
    if deps.rewrap_jobs.fail_page(job_id, page.number, result=failed_page_result(page, reason)):
        log_record(log, logging.WARNING, "scale-out page given up",
                   {"job_id": job_id, "page": page.number, "blobs": len(page.blobs), "reason": reason[:256]})
    return _finish_if_done(page.job, job_id, deps)


def _finish_if_done(item: RewrapWorkItem, job_id: str, deps: Dependencies) -> JobProgress | None:
    """The job's one report, when every listed page is recorded and this caller is the one to finish it."""
    progress = deps.rewrap_jobs.progress(job_id)
    if not progress.all_pages_recorded or progress.listing.finished or not deps.rewrap_jobs.finish(job_id):
        return None
    log_record(log, logging.INFO, f"scale-out {item.mode.value} job finished",
               {key: value for key, value in progress.as_json().items() if key != "problems"})
    job_progress = RewrapProgress(counts=progress.counts, complete=True, problems=progress.problems,
                                  problems_dropped=progress.problems_dropped)
    _alert_if_incomplete(item, job_id, job_progress, deps.notifier)
    return replace(progress, listing=replace(progress.listing, finished=True))


def rewrap_job_progress(item: RewrapWorkItem, deps: Dependencies) -> JobProgress:
    """A scale-out job's progress across its workers (``cmkctl rewrap --scale-out --follow``)."""
    return deps.rewrap_jobs.progress(job_id_of(item))


def enqueue_rewrap(items: list[RewrapWorkItem], deps: Dependencies) -> int:
    """Put a job's work items on the work queue (the fan-out); return how many were enqueued."""
    for item in items:
        deps.work_queue.enqueue(item.to_message())
    log_record(log, logging.INFO, "re-wrap fanned out", {"items": len(items)})
    return len(items)


def _rewrap_result(
    item: RewrapWorkItem,
    status: RewrapItemStatus,
    job_id: str,
    progress: RewrapProgress | None,
    report: RewrapReport | None = None,
    *,
    page: int | None = None,
    job_report: JobProgress | None = None,
) -> RewrapWorkResult:
    result = RewrapWorkResult(item=item, status=status, job_id=job_id, progress=progress, report=report, page=page,
                              job_report=job_report)
    log_record(log, logging.INFO, f"re-wrap work item {status.value}", result.as_json())
    return result


def _alert_if_incomplete(item: RewrapWorkItem, job_id: str, progress: RewrapProgress, notifier: Notifier) -> None:
    failed = progress.counts.get(BlobOutcome.FAILED, 0)
    skipped = progress.counts.get(BlobOutcome.SKIPPED_MALFORMED, 0) + progress.counts.get(
        BlobOutcome.SKIPPED_UNKNOWN_KEY, 0)
    if item.dry_run or not (failed or skipped):
        return
    container = f"{item.account}/{item.container}"
    notifier.send(Alert(
        severity=Severity.HIGH,
        title=f"{container}: re-wrap left blobs on other key versions",
        resource=container,
        reason=Reason.REWRAP_INCOMPLETE,
        message=f"{failed} blob(s) failed and {skipped} were skipped re-wrapping onto {item.key_id}",
        fingerprint=reconciler.fingerprint(container.lower(), Reason.REWRAP_INCOMPLETE.value, item.key_id.lower()),
        details={"item": item.as_json(), "job_id": job_id, "failed": failed, "skipped": skipped,
                 "reasons": sorted({problem.reason for problem in progress.problems})},
    ))


def report_poisoned_work(message_id: str, dequeue_count: int, reason: str, deps: Dependencies, *,
                         body: str | None = None) -> None:
    """Alert that a work item was moved (or is about to be moved) to the poison queue; a scale-out
    page among them is recorded as failed in its job (give_up_work), after the alert is out."""
    queue = f"{deps.settings.work_queue}-poison"
    deps.notifier.send(Alert(
        severity=Severity.HIGH,
        title=f"work item {message_id} moved to {queue}",
        resource=queue,
        reason=Reason.WORK_ITEM_POISONED,
        message=reason,
        fingerprint=reconciler.fingerprint(queue, Reason.WORK_ITEM_POISONED.value, message_id),
        details={"message_id": message_id, "dequeue_count": dequeue_count},
    ))
    if body is not None:
        give_up_work(body, reason, deps)


def scan_audit(deps: Dependencies, window: timedelta | None = None, *, until: datetime | None = None
               ) -> AuditReport | None:
    """CMK-017: the managed vaults' failed KeyWrap/KeyUnwrap/KeyGet over ``window`` (CMK_AUDIT_WINDOW_HOURS
    when None) ending ``until`` (now when None: a past incident can be looked at), grouped and classified;
    None when no workspace nor archive is configured.

    A partial answer is returned as such (``partial``), never dropped: the groups it has are real.
    """
    span = checked_window(window if window is not None else timedelta(hours=deps.settings.audit_window_hours))
    end = until if until is not None else deps.clock.now()
    report = deps.audit.failures(deps.settings.vaults, start=end - span, end=end)
    if report is not None:
        level = logging.WARNING if report.groups or report.partial else logging.INFO
        log_record(log, level, "audit scan", {
            "hours": span.total_seconds() / 3600, "failures": report.failures, "groups": len(report.groups),
            "partial": report.partial, "vaults_without_logs": list(report.vaults_without_logs),
        })
    return report


# --- the audit timer ------------------------------------------------------------------------------------


class AuditScanOutcome(enum.StrEnum):
    #: The window was read and the checkpoint moved.
    SCANNED = "scanned"
    #: Another instance saved the checkpoint first: it sends the alerts of this window.
    SUPERSEDED = "superseded"
    #: No workspace nor archive is configured.
    NOT_CONFIGURED = "not_configured"


@dataclass(frozen=True, slots=True)
class AuditScanResult:
    """What one run of the audit timer did."""

    outcome: AuditScanOutcome
    start: datetime | None = None
    end: datetime | None = None
    missing_keys: tuple[str, ...] = ()
    failure_alerts: int = 0
    partial: bool = False

    def as_json(self) -> dict[str, object]:
        return {"outcome": self.outcome.value, "start": self.start.isoformat() if self.start else None,
                "end": self.end.isoformat() if self.end else None, "missing_keys": list(self.missing_keys),
                "failure_alerts": self.failure_alerts, "partial": self.partial}


def scheduled_audit(deps: Dependencies) -> AuditScanResult:
    """The audit timer (CMK_AUDIT_SCHEDULE): read the vaults' audit logs since the last scan, move the
    checkpoint (ETag-conditional: one instance wins a window), then sync the audit alerts: a deleted or
    purged key that storage uses (critical, naming the accounts and the remedy; resolved by a KeyRecover),
    and the CMK-017 failures of the audit window.

    Saving before alerting loses nothing: a crash after the save leaves the level in the checkpoint and
    the next run syncs it; the desk notifies a transition once whoever syncs it.
    """
    window = timedelta(hours=deps.settings.audit_window_hours)
    watch = deps.audit_checkpoint.load()
    start, end = audit_watch.scan_window(watch, deps.clock.now(), window)
    report = deps.audit.failures(deps.settings.vaults, start=start, end=end)
    if report is None:
        return AuditScanResult(AuditScanOutcome.NOT_CONFIGURED)
    step = audit_watch.advance(watch, report, window=window)
    try:
        deps.audit_checkpoint.save(step.watch)
    except Conflict:
        log_record(log, logging.INFO, "audit scan superseded: another instance scanned this window",
                   {"start": start.isoformat(), "end": end.isoformat()})
        return AuditScanResult(AuditScanOutcome.SUPERSEDED, start, end)
    consumers = _consumer_names(deps)
    for purged in step.newly_purged:
        if names := consumers(purged):
            deps.notifier.send(audit_watch.purge_alert(purged, names))
    deps.notifier.sync(audit_watch.AUDIT_ALERT_SCOPE, audit_watch.current_alerts(step.watch, consumers))
    result = AuditScanResult(AuditScanOutcome.SCANNED, start, end, tuple(sorted(step.watch.missing_keys)),
                             len(step.watch.failures), report.partial)
    log_record(log, logging.WARNING if step.watch.missing_keys or report.partial else logging.INFO,
               "audit scan", {**result.as_json(), "vaults_without_logs": list(report.vaults_without_logs),
                              "partial_detail": report.partial_detail})
    return result


def _consumer_names(deps: Dependencies) -> Callable[[audit_watch.MissingKey], list[str]]:
    """Who uses a missing key, by name (read once per key and scan)."""
    known: dict[str, list[str]] = {}

    def names(missing: audit_watch.MissingKey) -> list[str]:
        if missing.key_id not in known:
            try:
                key = deps.settings.vault_policy.allowed_key(missing.key_id)
            except InvalidInput:  # its vault left CMK_VAULTS since: no longer ours to alert on
                known[missing.key_id] = []
                return []
            known[missing.key_id] = sorted(
                f"scope {consumer.scope_name} of account {consumer.account_name}" if consumer.scope_name
                else f"account {consumer.account_name}"
                for consumer in deps.reconcile.inventory.consumers_of(key))
        return known[missing.key_id]

    return names
