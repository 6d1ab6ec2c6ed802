"""Usage samples for billing: record them, report on a period, export them for Prometheus.

A sample holds a tenant's memory now and at peak, the page-cache part of it (kept apart so
a bill can leave it out), its CPU seconds and its process count. A report integrates the
samples of a period over time (trapezoids between consecutive samples), so a tenant is
billed for GiB-hours it held, however unevenly the samples were taken. A tenant deleted
during the period is still reported (its samples are kept until the retention ends) and
marked with the time it was deleted.
"""

import csv
import io
import time
from datetime import UTC, datetime

from .errors import BadInput

GIB = 1 << 30


def sample(host, now=None):
    """Take one sample of every running tenant and drop samples past the retention."""
    now = time.time() if now is None else now
    taken = []
    for tenant in host.store.tenants():
        if tenant.state != "running":
            continue
        usage = host.backend(tenant.backend).usage(tenant)
        host.store.add_sample(tenant.name, now, usage)
        taken.append({"name": tenant.name, "at": now, **usage})
    host.store.prune_samples(now - host.config.retention_days * 86400)
    return taken


def parse_time(text, default):
    """Epoch seconds from an ISO 8601 time (UTC unless it says otherwise), or `default`."""
    if text is None:
        return default
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(f"{text!r} is not a time", step="parse",
                       fix="write it like 2026-12-03T10:00 (UTC) or with an offset") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def report(host, start, end, price_per_gb_hour=None):
    """Per tenant over [start, end]: average and peak memory, GiB-hours, CPU, charge."""
    if end <= start:
        raise BadInput("--to must be after --from", step="parse", fix="swap them")
    rows = []
    deleted = host.store.deletions(start, end)
    for name, samples in sorted(host.store.samples(start, end).items()):
        billable = [s["memory_current"] - s["memory_cache"] for s in samples]
        gib_hours = 0.0
        for i in range(1, len(samples)):
            hours = (samples[i]["at"] - samples[i - 1]["at"]) / 3600
            gib_hours += (billable[i - 1] + billable[i]) / 2 / GIB * hours
        row = {
            "name": name,
            "samples": len(samples),
            "memory_avg_bytes": int(sum(s["memory_current"] for s in samples) / len(samples)),
            "memory_avg_without_cache_bytes": int(sum(billable) / len(billable)),
            "memory_peak_bytes": max(s["memory_peak"] for s in samples),
            "cpu_seconds": round(max(0.0, samples[-1]["cpu_seconds"]
                                     - samples[0]["cpu_seconds"]), 3),
            "gib_hours": round(gib_hours, 6),
            "deleted_at": deleted.get(name),
        }
        if price_per_gb_hour is not None:
            row["charge"] = round(gib_hours * price_per_gb_hour, 4)
        rows.append(row)
    return rows


def as_csv(rows):
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def export(host):
    """The latest sample of every tenant, in Prometheus' text exposition format."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    labels = ["tenant"]
    gauges = {
        "memory_current": Gauge("orch_tenant_memory_bytes", "Memory in use, page cache "
                                "included", labels, registry=registry),
        "memory_cache": Gauge("orch_tenant_memory_cache_bytes", "Page cache part of the "
                              "memory in use", labels, registry=registry),
        "memory_peak": Gauge("orch_tenant_memory_peak_bytes", "Most memory used since the "
                             "guest started", labels, registry=registry),
        "cpu_seconds": Gauge("orch_tenant_cpu_seconds", "CPU time used since the guest "
                             "started", labels, registry=registry),
        "processes": Gauge("orch_tenant_processes", "Processes in the guest", labels,
                           registry=registry),
    }
    limit = Gauge("orch_tenant_memory_limit_bytes", "Memory cap of the guest", labels,
                  registry=registry)
    latest = host.store.latest_samples()
    for tenant in host.store.tenants():
        limit.labels(tenant.name).set(tenant.memory_limit_bytes)
        if tenant.name in latest:
            for key, gauge in gauges.items():
                gauge.labels(tenant.name).set(latest[tenant.name][key])
    return generate_latest(registry).decode()
