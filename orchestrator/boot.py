"""Boot-time start and reconcile: make what runs match what the state store says.

`orch boot` is what the generated systemd units do, reachable without systemd: every
tenant marked autostart that should be running is started, oldest first, each under its
own uid in its own namespaces, then the front proxy. `orch reconcile` compares every
tenant with what is on the host (processes, mounts, links, cgroups, proxy entry) and
repairs each difference, saying what it found and what it did.
"""

import logging

from . import probe
from .errors import OrchError

log = logging.getLogger(__name__)


def _start(host, tenant):
    from .tenants import wait_healthy

    backend = host.backend(tenant.backend)
    backend.start(tenant)
    wait_healthy(host, tenant)


def _answers(tenant, timeout=5.0):
    try:
        status, _, _ = probe.get(tenant.address, tenant.port, tenant.hostname, "/hello",
                                 timeout)
    except OSError:
        return False
    return status < 500


def boot(host, progress=None):
    """Start every autostart tenant that should run, then the proxy; report each."""
    results = []
    with host.lock():
        tenants = sorted((t for t in host.store.tenants() if t.autostart),
                         key=lambda t: (t.created_at, t.name))
        for tenant in tenants:
            if tenant.state != "running":
                results.append({"name": tenant.name, "result": "skipped",
                                "detail": f"tenant is {tenant.state}"})
                continue
            backend = host.backend(tenant.backend)
            if backend.status(tenant) == "running":
                results.append({"name": tenant.name, "result": "running", "detail": ""})
                continue
            try:
                _start(host, tenant)
            except OrchError as exc:
                backend.stop(tenant)  # a guest that did not come up whole is not left half up
                results.append({"name": tenant.name, "result": "failed", "detail": str(exc)})
                host.store.event(tenant.name, "boot", str(exc), level="error")
                continue
            results.append({"name": tenant.name, "result": "started",
                            "detail": f"uid {tenant.uid}, {tenant.address}:{tenant.port}"})
            host.store.event(tenant.name, "boot", "started")
        host.proxy.apply(host.routes())
    return results


def reconcile(host):
    """Compare each tenant with the host; repair what differs. One report per tenant."""
    reports = []
    with host.lock():
        for tenant in host.store.tenants():
            backend = host.backend(tenant.backend)
            found = backend.inspect(tenant) if tenant.state in ("running", "stopped") else []
            done = []
            if tenant.state == "running" and not found and not _answers(tenant):
                # A master that outlived its children (or hangs) is not a healthy server.
                found = ["Apache runs but does not answer"]
                backend.stop(tenant)
            if tenant.state == "running" and found:
                try:
                    _start(host, tenant)
                    done.append("started the guest again (restoring what was missing)")
                except OrchError as exc:
                    done.append(f"could not repair: {exc}")
            elif tenant.state == "stopped" and backend.status(tenant) == "running":
                found = ["the guest is running though the tenant is stopped"]
                backend.stop(tenant)
                done.append("stopped it")
            elif tenant.state == "stopped":
                found = []
            elif tenant.state not in ("running", "stopped"):
                found = [f"tenant is {tenant.state}: a create or delete did not finish"]
                done.append(f"none; run `orch delete-tenant {tenant.name}`")
            reports.append({"name": tenant.name, "found": found, "done": done})
        routes = host.routes()
        live = host.proxy.conf.read_text() if host.proxy.conf.exists() else ""
        missing = [r.hostname for r in routes if f"server_name {r.hostname};" not in live]
        down = host.proxy.pid() is None
        if down or missing:
            host.proxy.apply(routes)
            found = ["not running"] if down else [f"no entry for {', '.join(missing)}"]
            reports.append({"name": "(front proxy)", "found": found,
                            "done": ["applied the routes of every tenant"]})
    return reports
