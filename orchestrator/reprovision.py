"""`orch reprovision`: put guests back to what the roles say, and report the drift.

One Ansible run converges every tenant asked for; a tenant that fails does not stop the
others. Afterwards each running tenant is brought in line: Apache started if it had
stopped, the tenant's own draft fragment picked up through the same checks as
`orch tenant-config` (and set aside, for the tenant to see, when it fails them), and a
graceful restart when the converge changed the guest. `--check` reports what would
change, with diffs, and changes nothing.
"""

import logging
import time

from . import fragments, provision
from .errors import BadInput, OrchError, StepFailed
from .httpdconf import FragmentRefused

log = logging.getLogger(__name__)

DRAFT = "/srv/tenant/conf/httpd.conf"
QUARANTINE = "/srv/tenant/conf/httpd.conf.quarantined"
APPLIED = "/srv/tenant/conf/httpd.conf.applied"
CONVERGEABLE = ("running", "stopped")


def reprovision(host, names, check=False, progress=None):
    """Converge the named tenants; return one report per tenant, in name order."""
    with host.lock():
        tenants = [host.tenant(name) for name in sorted(set(names))]
        reports = {t.name: _report(t) for t in tenants}
        ready = [t for t in tenants if t.state in CONVERGEABLE]
        for tenant in tenants:
            if tenant.state not in CONVERGEABLE:
                reports[tenant.name]["failure"] = (
                    f"tenant is {tenant.state}; run `orch delete-tenant {tenant.name}`")
        ready = [t for t in ready if _restore(host, t, reports[t.name], check)]
        results = {}
        if ready:
            step = "check" if check else "converge"
            context = progress.step(step) if progress else _null()
            with context:
                results = provision.converge_many(
                    host.config, [t.name for t in ready], check=check,
                    progress=progress.detail if progress else None, run_name="_reprovision",
                )
        for tenant in ready:
            report = reports[tenant.name]
            result = results[tenant.name]
            report["changed"] = result.changed_tasks
            report["diffs"] = result.diffs
            if result.failure:
                report["failure"] = result.failure
            elif check:
                _check_guest(host, tenant, report)
            else:
                try:
                    _settle(host, tenant, result, report)
                except OrchError as exc:
                    report["failure"] = str(exc)
            if not check:
                host.store.record_converge(tenant.name, report)
    return [reports[name] for name in sorted(reports)]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _report(tenant):
    return {"name": tenant.name, "changed": [], "diffs": [], "actions": [], "drift": [],
            "failure": None, "at": time.time()}


def _restore(host, tenant, report, check):
    """Bring back a guest's root, network and cgroup before Ansible needs them (after a
    host reboot); with `check`, report them as drift and leave the guest out of the run.
    Whether the tenant can be converged."""
    backend = host.backend(tenant.backend)
    try:
        missing = backend.restore(tenant, check=check)
    except OrchError as exc:
        report["failure"] = str(exc)
        if not check:
            host.store.record_converge(tenant.name, report)
        return False
    if missing and check:
        report["drift"].append(f"missing from the guest (a host reboot?): {', '.join(missing)};"
                               f" `orch reprovision {tenant.name}` restores it")
        return False
    if missing:
        report["actions"].append(f"restored what the guest was missing ({', '.join(missing)})"
                                 " before the converge, as `orch start` does")
    return True


def _check_guest(host, tenant, report):
    backend = host.backend(tenant.backend)
    if tenant.state == "running" and backend.status(tenant) != "running":
        report["drift"].append("Apache is not running")
        return
    if tenant.state == "running" and backend.can_check_fragments:
        draft = _read_draft(host, tenant)
        if isinstance(draft, _Unreadable):
            report["drift"].append(f"the tenant's draft cannot be read: {draft}")
        elif draft is not None:
            report["drift"].append(f"the tenant's draft {DRAFT} waits to be checked")


def _settle(host, tenant, result, report):
    """After a converge: Apache running, the draft picked up, the new config loaded."""
    from .tenants import wait_healthy

    if tenant.state != "running":
        return
    backend = host.backend(tenant.backend)
    if backend.status(tenant) != "running":
        backend.start(tenant)
        wait_healthy(host, tenant)
        report["actions"].append("started Apache, which was not running")
        return
    if not backend.can_check_fragments:
        if result.changed:
            backend.graceful(tenant)
            report["actions"].append("graceful restart with the converged configuration")
        return

    applier = fragments.FragmentApplier(host, tenant)
    draft = _read_draft(host, tenant)
    if isinstance(draft, _Unreadable):
        exc = FragmentRefused(str(draft), tenant=tenant.name, step="policy")
        _quarantine(backend, tenant, exc)
        report["actions"].append(f"set the draft fragment aside as {QUARANTINE}: {draft}")
    elif draft is not None:
        try:
            applier.check(draft)
            previous = applier.switch(draft)
        except (FragmentRefused, StepFailed) as exc:
            _quarantine(backend, tenant, exc)
            report["actions"].append(f"set the draft fragment aside as {QUARANTINE}: "
                                     f"{exc.message}")
        else:
            applier.store.push_history(previous)
            # Consumed: a later tenant-config or rollback must not be undone by it.
            backend.execute(tenant, ["mv", "-f", "--", DRAFT, APPLIED])
            report["actions"].append(f"the tenant's draft fragment went live (kept as "
                                     f"{APPLIED})")
            return
    if result.changed:
        live = applier.store.live()
        try:
            applier.check(live)
        except FragmentRefused as exc:
            try:
                applier.check(fragments.EMPTY)
            except FragmentRefused as base_exc:
                raise StepFailed(
                    f"the converged configuration fails even without the tenant's fragment "
                    f"({base_exc.message}); Apache keeps the configuration it runs",
                    tenant=tenant.name, step="reprovision",
                    fix="see the converge's changes above, or run it again",
                ) from None
            kept = applier.store.quarantine(live, str(exc))
            report["actions"].append(f"set the live fragment aside as /{kept}: {exc.message}")
        applier.graceful()
        report["actions"].append("graceful restart with the converged configuration")


def _read_draft(host, tenant):
    backend = host.backend(tenant.backend)
    if backend.execute(tenant, ["test", "-e", DRAFT]).returncode != 0 and backend.execute(
            tenant, ["test", "-L", DRAFT]).returncode != 0:
        return None
    try:
        return fragments.read_guest_file(backend, tenant, DRAFT)
    except OSError as exc:
        # Not readable as a fragment (a link elsewhere, a folder, a FIFO): set it aside.
        return _Unreadable(str(exc))


class _Unreadable(str):
    """A draft that exists but cannot be read as a fragment; its text is the reason."""


def _quarantine(backend, tenant, exc):
    """Move the tenant's draft aside, with the reason beside it, as the tenant."""
    backend.execute(tenant, ["mv", "-f", "--", DRAFT, QUARANTINE])
    backend.execute(tenant, ["tee", "--", QUARANTINE + ".reason"],
                    input=f"{exc}\n")


def names_for(host, name, every):
    if every == bool(name):
        raise BadInput("give one tenant name or --all", step="parse",
                       fix="orch reprovision NAME, or orch reprovision --all")
    return [t.name for t in host.store.tenants()] if every else [name]
