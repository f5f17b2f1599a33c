"""Timer triggers: the periodic sweep (level-based safety net behind the events), then the compliance
sweep, whose report is kept in CMK_REPORT_CONTAINER (served by the HTTP ``report`` function); and the
audit timer (CMK_AUDIT_SCHEDULE), which reads the vaults' audit logs since its last run for deleted,
purged and recovered keys and failed key operations."""

from __future__ import annotations

import logging

import azure.functions as func

from controller import bootstrap, service
from controller.logs import log_record

blueprint = func.Blueprint()  # type: ignore[no-untyped-call]  # azure.functions leaves __init__ unannotated
log = logging.getLogger("controller.functions.sweep")


@blueprint.function_name("compliance_sweep")
@blueprint.timer_trigger(arg_name="timer", schedule="%CMK_SWEEP_SCHEDULE%", run_on_startup=False, use_monitor=True)
def compliance_sweep(timer: func.TimerRequest) -> None:
    if timer.past_due:
        log_record(log, logging.WARNING, "sweep is running late", {"past_due": True})
    service.scheduled_sweep(bootstrap.dependencies())


@blueprint.function_name("audit_scan")
@blueprint.timer_trigger(arg_name="timer", schedule="%CMK_AUDIT_SCHEDULE%", run_on_startup=False, use_monitor=True)
def audit_scan(timer: func.TimerRequest) -> None:
    if timer.past_due:
        log_record(log, logging.WARNING, "audit scan is running late", {"past_due": True})
    service.scheduled_audit(bootstrap.dependencies())
