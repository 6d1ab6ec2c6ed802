"""Scheduled jobs: cron expressions for reprovisioning and metering, kept in the state store.

`orch scheduler` runs the jobs that are due, in the foreground where there is no systemd;
on a systemd host the generated `orch-scheduler.timer` runs `orch scheduler --once` every
minute, so the cron expressions live in one place whichever way the host runs them.
A job is due when a time its expression names has passed since it last ran.
"""

import logging
import time

from croniter import croniter

from . import metering, reprovision
from .errors import BadInput

log = logging.getLogger(__name__)

JOBS = ("reprovision", "meter")


def _run_job(host, job):
    if job == "meter":
        taken = metering.sample(host)
        return f"sampled {len(taken)} tenant(s)"
    names = [t.name for t in host.store.tenants()]
    if not names:
        return "no tenants"
    reports = reprovision.reprovision(host, names)
    failed = [r["name"] for r in reports if r["failure"]]
    changed = [r["name"] for r in reports if r["changed"] or r["actions"]]
    return (f"{len(reports)} converged, {len(changed)} changed"
            + (f", failed: {', '.join(failed)}" if failed else ""))


def check_job(job):
    if job not in JOBS:
        raise BadInput(f"there is no job {job!r}", step="parse",
                       fix=f"choose one of {', '.join(JOBS)}")


def set_schedule(host, job, expression, now=None):
    """Keep `expression` (five-field cron) for `job`; it first fires after `now`."""
    check_job(job)
    if not croniter.is_valid(expression) or len(expression.split()) != 5:
        raise BadInput(f"{expression!r} is not a cron expression", step="parse",
                       fix="give five fields, like '30 3 * * *' (03:30 every day)")
    now = time.time() if now is None else now
    host.store.set_setting(f"schedule.{job}", expression)
    host.store.set_setting(f"schedule.{job}.last", str(now))


def clear(host, job):
    check_job(job)
    host.store.set_setting(f"schedule.{job}", None)
    host.store.set_setting(f"schedule.{job}.last", None)


def show(host):
    rows = []
    for job in JOBS:
        expression = host.store.setting(f"schedule.{job}")
        if expression:
            last = float(host.store.setting(f"schedule.{job}.last") or 0)
            rows.append({"job": job, "cron": expression, "last_run": last,
                         "next_run": croniter(expression, last).get_next(float)})
    return rows


def due(host, now):
    return [row["job"] for row in show(host) if row["next_run"] <= now]


def run_due(host, now=None):
    """Run every job that is due at `now`; record each run. Returns what each did."""
    now = time.time() if now is None else now
    results = []
    for job in due(host, now):
        log.info("scheduler: running %s", job)
        try:
            outcome, ok = _run_job(host, job), True
        except Exception as exc:  # one failing job must not stop the scheduler
            outcome, ok = f"{type(exc).__name__}: {exc}", False
            log.error("scheduler: %s failed: %s", job, exc)
        host.store.set_setting(f"schedule.{job}.last", str(now))
        results.append({"job": job, "at": now, "ok": ok, "outcome": outcome})
    return results


def run_forever(host, say=print):
    """Sleep until the next job is due, run it, and go on; ends on Ctrl-C or SIGTERM."""
    while True:
        rows = show(host)
        if not rows:
            raise BadInput("no job is scheduled", step="scheduler",
                           fix="orch schedule set '30 3 * * *'")
        wait = max(0.0, min(r["next_run"] for r in rows) - time.time())
        time.sleep(min(wait, 60.0))
        for result in run_due(host):
            say(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {result['job']}: {result['outcome']}")
