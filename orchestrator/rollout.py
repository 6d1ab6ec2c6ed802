"""Base images and the tenants on them: which tenant uses which, and the rolling move.

`orch reprovision --image ID|current` moves tenants onto a base image one at a time. For
each: stop it, remount its root with the new image as the lower layer (its upper layer,
with everything the roles and the tenant wrote, stays), converge it, start it and check
it through the front proxy. A tenant that fails any of these is put back on the image it
was on, converged there again and started; the others go on.

Problems: files the upper layer holds hide the new image's copies. The roles rewrite
what they manage, so the converge puts those right; a package database the upper layer
holds (a package installed into the guest) keeps the old image's view, and the move says
so in the tenant's report.
"""

import contextlib
import logging
import time

from . import images, provision
from .errors import BadInput, OrchError, StepFailed

log = logging.getLogger(__name__)

MOVABLE = ("running", "stopped")


def usage(host):
    """{image id: [tenant names]} for every tenant whose guest is layered over an image."""
    used = {}
    for tenant in host.store.tenants():
        backend = host.backend(tenant.backend)
        if not backend.can_change_image:
            continue
        try:
            lower = backend.image_of(tenant)
        except OrchError:
            continue
        image_id = images.id_of(host.config, lower) if lower else None
        used.setdefault(image_id or str(lower), []).append(tenant.name)
    return used


def listing(host):
    """Every built image, with the tenants of this state directory that use it."""
    used = usage(host)
    return [{**entry, "tenants": sorted(used.get(entry["id"], []))}
            for entry in images.catalog(host.config)]


def prune(host):
    """Remove the images no tenant uses and that are not current; (removed, kept)."""
    with host.lock():
        return images.prune(host.config, usage(host))


def rebuild(host, progress=None):
    """Build a new base image of the present package list and make it current."""
    return images.rebuild(host.config, progress=progress)


def move(host, names, image="current", progress=None):
    """Move the named tenants onto `image`, one at a time; one report per tenant."""
    with host.lock():
        tenants = [host.tenant(name) for name in sorted(set(names))]
        image_id = images.resolve(host.config, image)
        target = images.rootfs_of(host.config, image_id)
        if tenants:
            # Every check goes through the front proxy: make sure it runs with every route.
            host.proxy.apply(host.routes())
        reports = []
        for tenant in tenants:
            report = _report(tenant, image_id)
            reports.append(report)
            context = progress.step(f"move {tenant.name}") if progress else contextlib.nullcontext()
            try:
                with context:
                    _move_one(host, tenant, target, report, progress)
            except OrchError as exc:
                report["failure"] = str(exc)
            host.store.record_converge(tenant.name, report)
            host.store.event(tenant.name, "image", report["failure"] or
                             f"moved to base image {image_id}",
                             level="error" if report["failure"] else "info")
    return reports


def _report(tenant, image_id):
    return {"name": tenant.name, "changed": [], "diffs": [], "actions": [], "drift": [],
            "failure": None, "at": time.time(), "image_from": None, "image_to": image_id,
            "image": None}


def _move_one(host, tenant, target, report, progress):
    backend = host.backend(tenant.backend)
    if not backend.can_change_image:
        raise BadInput(f"backend {tenant.backend} has no base image to change",
                       tenant=tenant.name, step="image", fix="leave this tenant out")
    if tenant.state not in MOVABLE:
        raise StepFailed(f"tenant is {tenant.state}", tenant=tenant.name, step="image",
                         fix=f"run `orch delete-tenant {tenant.name}`")
    backend.restore(tenant)  # a guest unmounted by a reboot has a lower layer to change too
    old = backend.image_of(tenant)
    report["image_from"] = images.id_of(host.config, old) or str(old)
    report["image"] = report["image_from"]
    if old == target:
        report["actions"].append(f"already on base image {report['image_to']}")
        return

    detail = progress.detail if progress else None
    backend.stop(tenant)
    converge_ran = False
    try:
        notes = backend.change_image(tenant, target)
        report["image"] = report["image_to"]
        report["actions"].append(f"remounted its root over base image {report['image_to']}; "
                                 "its upper layer is kept")
        report["actions"].extend(notes)
        converge_ran = True
        result = provision.converge(host.config, tenant.name, progress=detail)
        report["changed"] = result["changed_tasks"]
        report["actions"].append(_start_and_check(host, tenant))
    except OrchError as exc:
        _put_back(host, tenant, old, converge_ran, report, exc, detail)
    except KeyboardInterrupt:
        # Interrupted (Ctrl-C, SIGTERM): this tenant goes back, and no other is touched.
        with contextlib.suppress(StepFailed):
            _put_back(host, tenant, old, converge_ran, report,
                      StepFailed("interrupted", tenant=tenant.name, step="image"), detail)
        raise


def _start_and_check(host, tenant):
    """Start the guest and check it; a stopped tenant is checked on its backend and
    stopped again, since its hostname answers 503 by design."""
    from .tenants import check_through_proxy, wait_healthy

    backend = host.backend(tenant.backend)
    backend.start(tenant)
    try:
        wait_healthy(host, tenant)
        if tenant.state == "running":
            check_through_proxy(host, tenant)
            return "started; it answers through the front proxy"
    except OrchError:
        backend.stop(tenant)
        raise
    backend.stop(tenant)
    return "answered on its backend, then stopped again (the tenant is stopped)"


def _put_back(host, tenant, old, converge_ran, report, exc, detail):
    """Return a tenant whose move failed to the image it was on, converged and started."""
    backend = host.backend(tenant.backend)
    log.error("tenant %s: the move to base image %s failed (%s); putting it back",
              tenant.name, report["image_to"], exc)
    failure = f"on base image {report['image_to']}, step {exc.step}: {exc.message}"
    try:
        backend.stop(tenant)
        backend.change_image(tenant, old)
        report["image"] = report["image_from"]
        if converge_ran:
            # The converge on the new image may have rewritten files in the upper layer.
            provision.converge(host.config, tenant.name, progress=detail)
        report["actions"].append(f"put back on base image {report['image_from']}; "
                                 + _start_and_check(host, tenant))
    except OrchError as back_exc:
        failure += (f"; putting it back on base image {report['image_from']} failed too "
                    f"(step {back_exc.step}: {back_exc.message})")
        raise StepFailed(failure, tenant=tenant.name, step="image",
                         fix=f"see the cause above, then `orch start {tenant.name}`") from None
    raise StepFailed(failure + f"; it runs on base image {report['image_from']} again",
                     tenant=tenant.name, step="image",
                     fix="fix the cause above (the tenant's error log has more), then move it "
                         f"again with `orch reprovision {tenant.name} --image "
                         f"{report['image_to']}`")
