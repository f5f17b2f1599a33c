"""The audit timer's memory and verdicts: what the vaults' audit logs say now, scan after scan. Pure.

The audit timer (``service.scheduled_audit``) reads the window since its last scan and keeps, in one
checkpoint of the ledger (``AuditWatch``, saved ETag-conditionally), what that window changed:

* the keys whose latest successful operation was a KeyDelete or a KeyPurge (``missing_keys``): Key
  Vault publishes no event for them, the audit log is the only place they show within minutes. A
  KeyRecover takes the key off the list. A key stays on it across scans until then: the window only
  brings changes, the state is the level the alerts are evaluated on;
* the failure alerts (CMK-017) of the last scans (``failures``), each with when its failures were
  last seen: an alert stays open while failures were seen within the audit window
  (CMK_AUDIT_WINDOW_HOURS) and resolves once none were.

Windows overlap by ``INGESTION_GRACE`` (Key Vault's records reach Log Analytics within about 10
minutes, later than their TimeGenerated): a record ingested late is still read, and reading a record
twice changes nothing (a key's state moves only to a later operation; a failure alert is replaced).
A partial answer does not move the checkpoint forward, so what it missed is read again next time.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from controller import audit
from controller.alerts import alert_from_json, alert_to_json
from controller.model import Alert, Severity
from controller.reasons import Reason
from controller.reconciler import fingerprint

#: The alert scope of the audit timer: every scan evaluates all of its alerts.
AUDIT_ALERT_SCOPE = "audit"
#: How far each scan reaches back before the previous scan's end (Key Vault: records arrive within ~10 min).
INGESTION_GRACE = timedelta(minutes=10)
#: The checkpoint document's version: a document of another version is refused, not misread.
CHECKPOINT_VERSION = 1


class KeyStatus(enum.StrEnum):
    DELETED = "deleted"
    PURGED = "purged"


@dataclass(frozen=True, slots=True)
class MissingKey:
    """A key whose latest successful operation in the vault's audit log took it away."""

    vault: str
    vault_resource_id: str
    key: str
    status: KeyStatus
    #: When the operation that set ``status`` was logged, and who did it.
    at: datetime
    by: str

    @property
    def key_id(self) -> str:
        return f"{self.vault}/keys/{self.key}"

    @property
    def vault_name(self) -> str:
        if self.vault_resource_id:
            return self.vault_resource_id.rstrip("/").rsplit("/", 1)[-1]
        host = self.vault.split("://", 1)[-1]
        return host.split(".", 1)[0]

    def as_json(self) -> dict[str, object]:
        return {"vault": self.vault, "vaultResourceId": self.vault_resource_id, "key": self.key,
                "status": self.status.value, "at": _iso(self.at), "by": self.by}

    @classmethod
    def from_json(cls, document: Mapping[str, object]) -> MissingKey:
        return cls(vault=str(document["vault"]), vault_resource_id=str(document["vaultResourceId"]),
                   key=str(document["key"]), status=KeyStatus(str(document["status"])),
                   at=_parse_time(document["at"]), by=str(document["by"]))


@dataclass(frozen=True, slots=True)
class FailureWatch:
    """A CMK-017 failure alert and when its failures were last seen."""

    alert: Alert
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class AuditWatch:
    """The audit timer's checkpoint: up to when the logs were read, and the level found so far."""

    scanned_until: datetime | None = None
    missing_keys: Mapping[str, MissingKey] = field(default_factory=dict)
    failures: Mapping[str, FailureWatch] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {
            "version": CHECKPOINT_VERSION,
            "scannedUntil": _iso(self.scanned_until) if self.scanned_until else None,
            "missingKeys": [missing.as_json() for _, missing in sorted(self.missing_keys.items())],
            "failures": [{"alert": alert_to_json(watch.alert), "lastSeen": _iso(watch.last_seen)}
                         for _, watch in sorted(self.failures.items())],
        }

    @classmethod
    def from_json(cls, document: Mapping[str, object]) -> AuditWatch:
        """Raises ValueError (KeyError, TypeError) when the document is not a checkpoint this version wrote."""
        if document.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"audit checkpoint version {document.get('version')!r} is not {CHECKPOINT_VERSION}")
        scanned = document.get("scannedUntil")
        missing = [MissingKey.from_json(item) for item in _objects(document.get("missingKeys"))]
        failures = [FailureWatch(alert_from_json(_object(item["alert"])), _parse_time(item["lastSeen"]))
                    for item in _objects(document.get("failures"))]
        return cls(scanned_until=_parse_time(scanned) if scanned is not None else None,
                   missing_keys={item.key_id: item for item in missing},
                   failures={item.alert.fingerprint: item for item in failures})


def scan_window(watch: AuditWatch, now: datetime, window: timedelta) -> tuple[datetime, datetime]:
    """The window the next scan reads: from the previous scan's end (less the ingestion grace) to now.

    The first scan reads the audit window; after a long pause at most 30 days (the longest window a
    query takes), so a scan stays one bounded query; never less than the ingestion grace.
    """
    earliest = now - audit.MAX_WINDOW
    start = watch.scanned_until - INGESTION_GRACE if watch.scanned_until is not None else now - window
    # an instance whose clock runs behind the one that saved still reads a (short) window
    return min(max(start, earliest), now - INGESTION_GRACE), now


@dataclass(frozen=True, slots=True)
class ScanStep:
    """What one scan changed: the new checkpoint, and the keys it saw purged after an earlier deletion."""

    watch: AuditWatch
    newly_purged: tuple[MissingKey, ...] = ()


def advance(watch: AuditWatch, report: audit.AuditReport, *, window: timedelta) -> ScanStep:
    """The checkpoint after reading ``report`` (the window [report.start, report.end])."""
    missing = dict(watch.missing_keys)
    purged: list[MissingKey] = []
    for operation in sorted(report.key_operations, key=lambda op: op.at):
        held = missing.get(operation.key_id)
        if held is not None and held.at >= operation.at:
            continue  # read before (the windows overlap) or older than what is known
        if operation.operation == audit.KEY_RECOVER:
            missing.pop(operation.key_id, None)
            continue
        status = KeyStatus.PURGED if operation.operation == audit.KEY_PURGE else KeyStatus.DELETED
        now_missing = MissingKey(operation.vault, operation.vault_resource_id, operation.key, status,
                                 operation.at, operation.caller or operation.caller_app_id)
        if status is KeyStatus.PURGED and held is not None and held.status is KeyStatus.DELETED:
            purged.append(now_missing)
        missing[operation.key_id] = now_missing
    failures = dict(watch.failures)
    for alert, last_seen in failure_alerts(report):
        failures[alert.fingerprint] = FailureWatch(alert, last_seen)
    oldest = report.end - window
    failures = {fingerprint: held for fingerprint, held in failures.items() if held.last_seen >= oldest}
    scanned_until = watch.scanned_until if report.partial else report.end
    return ScanStep(AuditWatch(scanned_until, missing, failures), tuple(purged))


# --------------------------------------------------------------------------------------------------
# The alerts
# --------------------------------------------------------------------------------------------------

#: Who uses a key: one line per consumer ("account stcmk", "scope data of account stcmk"), by key id.
ConsumersOf = Callable[[MissingKey], Sequence[str]]


def current_alerts(watch: AuditWatch, consumers_of: ConsumersOf) -> list[Alert]:
    """Every alert of the audit scope that holds now: the failure alerts and, for each deleted or purged
    key that storage still uses, a critical alert naming the key, its consumers and the remedy."""
    alerts = [held.alert for held in watch.failures.values()]
    for missing in watch.missing_keys.values():
        consumers = tuple(consumers_of(missing))
        if consumers:
            alerts.append(missing_key_alert(missing, consumers))
    return alerts


def missing_key_alert(missing: MissingKey, consumers: Sequence[str]) -> Alert:
    """One alert per key (deleted, then purged, stays the same alert: its details follow the key)."""
    deleted = missing.status is KeyStatus.DELETED
    operation = audit.KEY_DELETE if deleted else audit.KEY_PURGE
    remedy = (
        f"Recover it within the vault's soft-delete retention period: az keyvault key recover --vault-name "
        f"{missing.vault_name} --name {missing.key}. Until then the accounts lose access to their data as soon "
        "as Azure Storage next unwraps the key (at the latest within an hour)."
        if deleted else
        f"A purged key cannot be recovered. Restore it from a backup into the same vault (az keyvault key "
        f"restore --vault-name {missing.vault_name} --file <backup>), or move each account to another key "
        f"(az storage account update --encryption-key-name <key> --encryption-key-vault {missing.vault})."
    )
    return Alert(
        severity=Severity.CRITICAL,
        title=f"key {missing.vault_name}/{missing.key} was {missing.status.value} and is in use by "
              f"{len(consumers)} storage consumer(s)",
        resource=missing.key_id,
        reason=Reason.KEY_SOFT_DELETED if deleted else Reason.KEY_PURGED,
        message=(f"Key Vault logged {operation} of {missing.key_id} at {_iso(missing.at)} by "
                 f"{missing.by or 'unknown'}. In use by: {', '.join(consumers)}. {remedy}"),
        fingerprint=fingerprint("missing-key", missing.key_id.lower()),
        details={"key": missing.key_id, "status": missing.status.value, "operation": operation,
                 "at": _iso(missing.at), "by": missing.by, "consumers": list(consumers),
                 "vaultResourceId": missing.vault_resource_id},
    )


def purge_alert(missing: MissingKey, consumers: Sequence[str]) -> Alert:
    """The one-shot notice that a key already alerted as deleted was purged: recovery is no longer possible."""
    alert = missing_key_alert(missing, consumers)
    return Alert(severity=Severity.CRITICAL, title=f"key {missing.vault_name}/{missing.key} was purged after "
                 "its deletion: it can no longer be recovered", resource=alert.resource,
                 reason=Reason.KEY_PURGED, message=alert.message,
                 fingerprint=fingerprint("purged", missing.key_id.lower(), _iso(missing.at)),
                 details=alert.details)


def failure_alerts(report: audit.AuditReport) -> list[tuple[Alert, datetime]]:
    """CMK-017 as alerts: one per vault, key and failure class (versions and callers together), with when
    its failures were last seen. The message names the storage accounts and the remediation."""
    by_alert: dict[tuple[str, str, audit.FailureClass], list[audit.AuditFailureGroup]] = {}
    for group in report.groups:
        by_alert.setdefault((group.vault, group.key, group.failure_class), []).append(group)
    alerts = []
    for (vault, key, failure_class), groups in sorted(by_alert.items(), key=lambda item: item[0]):
        count = sum(group.count for group in groups)
        accounts = sorted({account for group in groups for account in group.storage_accounts})
        callers = sorted({group.caller or group.caller_app_id for group in groups} - {""})
        operations = sorted({operation for group in groups for operation in group.operations})
        first = min(group.first_seen for group in groups)
        last = max(group.last_seen for group in groups)
        sample = max(groups, key=lambda group: group.count)
        target = f"{vault}/keys/{key}" if key else vault
        who = ", ".join(accounts) if accounts else ", ".join(callers) or "unknown callers"
        alerts.append((Alert(
            severity=failure_class.severity,
            title=f"CMK-017: {count} failed {'/'.join(operations)} on {target}: {failure_class.value}",
            resource=target,
            reason=Reason.KEY_OPERATIONS_FAILED,
            message=(f"{sample.cause.capitalize()}: {count} failed request(s) by {who} between {_iso(first)} and "
                     f"{_iso(last)}. {sample.remediation}"),
            fingerprint=fingerprint("cmk-017", target.lower(), failure_class.value),
            details={"rule": "CMK-017", "class": failure_class.value, "count": count, "operations": operations,
                     "storageAccounts": accounts, "callers": callers, "firstSeen": _iso(first),
                     "lastSeen": _iso(last), "sampleDescription": sample.sample_description,
                     "window": {"start": _iso(report.start), "end": _iso(report.end)}},
        ), last))
    return alerts


# --------------------------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: object) -> datetime:
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time {value!r} has no offset")
    return moment.astimezone(UTC)


def _object(value: object) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise TypeError("expected an object")
    return value


def _objects(value: object) -> Iterable[Mapping[str, object]]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return [_object(item) for item in value]
