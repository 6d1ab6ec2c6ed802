"""The tenant lifecycle: create, start, stop and delete, each step recorded and undoable."""

import contextlib
import fcntl
import logging
import shutil
import time

from . import allocate, capacity, childsize, probe, provision
from .backends import get_backend
from .errors import BadInput, NotFound, OrchError, StepFailed
from .progress import Progress
from .proxy import FrontProxy, Route
from .spec import NAME_RE, child_limit_for, printable
from .state import Store

log = logging.getLogger(__name__)

# Routed states: a stopped tenant keeps its hostname and answers 503 instead of 404.
ROUTED = ("running", "stopped")


class Host:
    """orch's view of this host: its configuration, state store, backends and front proxy."""

    def __init__(self, config):
        self.config = config
        self.store = Store(config.state_db)
        self.proxy = FrontProxy(config)
        self._backends = {}

    def close(self):
        self.store.close()

    def backend(self, kind):
        if kind not in self._backends:
            self._backends[kind] = get_backend(kind, self.config, self.store)
        return self._backends[kind]

    @contextlib.contextmanager
    def lock(self):
        """One changing command at a time per state directory; the kernel frees it on exit."""
        self.config.home.mkdir(parents=True, exist_ok=True)
        with open(self.config.home / "lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("waiting for another orch command on %s to finish (a kvm create "
                            "or reprovision can take minutes)", self.config.home)
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def tenant(self, name):
        tenant = self.store.get(name) if NAME_RE.fullmatch(name) else None
        if tenant is None:
            shown = printable(name)
            raise NotFound(f"tenant {shown} does not exist", tenant=shown, step="lookup",
                           fix="see `orch list` for the tenants there are")
        return tenant

    def routes(self, extra=None, without=None):
        routes = []
        for tenant in self.store.tenants():
            if tenant.name == without:
                continue
            if tenant.state in ROUTED or tenant.name == extra:
                stopped = tenant.state == "stopped"
                routes.append(Route(tenant.name, tenant.hostname, tenant.address, tenant.port,
                                    stopped))
        return routes

    def describe(self, tenant):
        """`orch show`: the stored facts plus what the backend sees now."""
        facts = tenant.public()
        try:
            backend = self.backend(tenant.backend)
            facts["guest"] = backend.status(tenant)
            facts["master_pid"] = backend.master_pid(tenant)
        except OrchError as exc:
            facts["guest"] = f"unknown ({exc.message})"
            facts["master_pid"] = None
        facts["url"] = self.public_url(tenant)
        facts["child_limit_bytes"] = child_limit_for(tenant.memory_limit_bytes,
                                                     tenant.max_clients)
        last = self.store.last_converge(tenant.name)
        facts["last_converge"] = ({k: last[k] for k in ("at", "changed", "actions", "failure")}
                                  if last else None)
        return facts

    def public_url(self, tenant):
        port = self.config.proxy_port
        return f"http://{tenant.hostname}" + ("" if port == 80 else f":{port}") + "/"


def create(host, spec, progress=None):
    """Create, provision, start and route one tenant; on any failure undo all of it."""
    progress = progress or Progress(enabled=False)
    config, store = host.config, host.store
    backend = host.backend(spec.backend)

    with host.lock():
        existing = store.get(spec.name)
        if existing and existing.state in ("creating", "deleting", "failed"):
            progress.say(f"tenant {spec.name}: cleaning up an earlier create that did not end")
            _undo(host, existing)
        elif existing:
            raise BadInput(f"tenant {spec.name} already exists", tenant=spec.name,
                           step="validate", fix="pick another name")
        owner = store.tenant_for_hostname(spec.hostname)
        if owner and owner.name != spec.name:
            raise BadInput(f"hostname {spec.hostname} already belongs to tenant {owner.name}",
                           tenant=spec.name, step="validate",
                           fix="give this tenant another hostname")

        with progress.step("preflight"):
            backend.preflight()
            capacity.admit(config, store.tenants(), spec.memory_limit_bytes, spec.name)
        with progress.step("image"):
            backend.ensure_image(progress=progress.detail)
        with progress.step("allocate"):
            tenant = allocate.allocate(store, spec, config,
                                       link_taken=getattr(backend, "link_taken", None),
                                       pool=backend.address_pool())
        store.event(tenant.name, "allocate",
                    f"uid {tenant.uid}, port {tenant.port}, address {tenant.address}")

        step = "create"
        try:
            with progress.step("create"):
                backend.create(tenant, _recorder(store, tenant.name))
                store.set_ansible_vars(tenant.name, backend.ansible_host(tenant))
            step = "provision"
            with progress.step("provision"):
                provision.converge(config, tenant.name, progress=progress.detail)
            step = "start"
            with progress.step("start"):
                backend.start(tenant)
                wait_healthy(host, tenant)
                childsize.measure(host, tenant)
            step = "proxy"
            with progress.step("proxy"):
                store.add_resource(tenant.name, "proxy_route", hostname=tenant.hostname)
                host.proxy.apply(host.routes(extra=tenant.name), tenant=tenant.name)
                check_through_proxy(host, tenant)
        except BaseException as exc:
            _rollback(host, tenant, step, exc, progress)
            raise _as_step_failure(exc, tenant.name, step) from exc

        store.set_state(tenant.name, "running")
        store.event(tenant.name, "create", "running")
    return store.get(tenant.name)


def _recorder(store, name):
    def record(kind, **data):
        store.add_resource(name, kind, **data)
    return record


def _as_step_failure(exc, name, step):
    if isinstance(exc, OrchError):
        exc.tenant = exc.tenant or name
        exc.step = exc.step or step
        exc.message += " (the create was rolled back)"
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return StepFailed("interrupted (the create was rolled back)", tenant=name, step=step)
    return StepFailed(f"{type(exc).__name__}: {exc} (the create was rolled back)",
                      tenant=name, step=step)


def _rollback(host, tenant, step, exc, progress):
    log.error("tenant %s: step %s failed; rolling back", tenant.name, step)
    host.store.event(tenant.name, step, str(exc), level="error")
    try:
        _undo(host, tenant)
    except Exception as undo_exc:  # keep the record so `orch delete-tenant` can finish it
        log.warning("tenant %s: rollback stopped: %s", tenant.name, undo_exc)
        host.store.set_state(tenant.name, "failed", failure=f"{step}: {exc}; rollback: "
                             f"{undo_exc}")
        progress.say(f"tenant {tenant.name}: rollback incomplete ({undo_exc}); "
                     f"run `orch delete-tenant {tenant.name}`")


def _undo(host, tenant):
    """Remove everything recorded for the tenant, newest first, then its record."""
    store = host.store
    store.set_state(tenant.name, "deleting", failure=tenant.failure)
    routed = [r for r in store.resources(tenant.name) if r.kind == "proxy_route"]
    if routed:
        # Taking a route away never needs a proxy that is down to be started. If the proxy
        # refuses every configuration (a bad [proxy] setting), the guest is removed anyway:
        # routes are rendered from the state store, so the next good change drops this one.
        try:
            host.proxy.apply(host.routes(without=tenant.name), tenant=tenant.name,
                             start=False)
        except OrchError as exc:
            log.warning("tenant %s: front proxy not updated (%s); removing the guest anyway",
                        tenant.name, exc.message)
        for resource in routed:
            store.drop_resource(resource.id)
    host.backend(tenant.backend).destroy(tenant)
    shutil.rmtree(host.config.runs_dir / tenant.name, ignore_errors=True)
    store.delete(tenant.name)


def delete(host, name):
    """Remove the tenant and everything it had; deleting a missing tenant is harmless."""
    if not NAME_RE.fullmatch(name):
        host.tenant(name)  # raises NotFound with a printable name
    with host.lock():
        tenant = host.store.get(name)
        if tenant is None:
            return False
        host.backend(tenant.backend).reachable()
        _undo(host, tenant)
    log.info("tenant %s: deleted", name)
    return True


def start(host, name):
    with host.lock():
        tenant = host.tenant(name)
        if tenant.state not in ROUTED:
            raise BadInput(f"tenant {name} is {tenant.state}", tenant=name, step="start",
                           fix=f"run `orch delete-tenant {name}` and create it again")
        host.backend(tenant.backend).start(tenant)
        wait_healthy(host, tenant)
        childsize.measure(host, tenant)
        host.store.set_state(name, "running")
        host.proxy.apply(host.routes(), tenant=name)
        host.store.event(name, "start", "running")
    return host.store.get(name)


def stop(host, name, keep_state=False):
    """Stop the tenant's server. `keep_state` (a host shutdown) leaves it marked running,
    so `orch boot` starts it again."""
    with host.lock():
        tenant = host.tenant(name)
        host.backend(tenant.backend).stop(tenant)
        if keep_state:
            host.store.event(name, "stop", "stopped for a host shutdown")
            return host.store.get(name)
        if tenant.state in ROUTED:
            host.store.set_state(name, "stopped")
            host.proxy.apply(host.routes(), tenant=name)
        host.store.event(name, "stop", "stopped")
    return host.store.get(name)


def wait_healthy(host, tenant, path="/hello"):
    """Wait for HTTP 200 from the tenant's backend itself, or say why it never came.

    A server that answers, but not with 200, gets a few seconds (mod_perl may still be
    compiling) rather than the whole timeout.
    """
    backend = host.backend(tenant.backend)
    deadline = time.monotonic() + host.config.health_timeout
    answering_since = None
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            status, body, _ = probe.get(tenant.address, tenant.port, tenant.hostname, path)
            if status == 200:
                return body
            last = f"HTTP {status}"
            answering_since = answering_since or time.monotonic()
            if time.monotonic() - answering_since > 3:
                break
        except OSError as exc:
            last = str(exc)
        if backend.status(tenant) != "running":
            break
        time.sleep(0.1)
    raise StepFailed(
        f"the backend at {tenant.address}:{tenant.port} did not answer {path} with 200 "
        f"({last}); console: {backend.console_tail(tenant)}; Apache's error log: "
        f"{backend.log_tail(tenant)}", tenant=tenant.name, step="health",
        fix=f"fix the cause above (the guest's /var/log/apache2/error.log has more), then "
            f"`orch start {tenant.name}`; a create that failed here was rolled back",
    )


def check_through_proxy(host, tenant, path="/hello"):
    """One request through the front proxy must reach this tenant's own backend."""
    try:
        status, body, _ = host.proxy.get(tenant.hostname, path)
    except OSError as exc:
        raise StepFailed(f"the front proxy did not answer: {exc}", tenant=tenant.name,
                         step="proxy") from None
    if status != 200 or tenant.name not in body:
        raise StepFailed(
            f"the front proxy answered {status} for {tenant.hostname}{path}: {body[:200]!r}",
            tenant=tenant.name, step="proxy",
        )


def resize(host, name, memory=None, max_clients=None):
    """Change a tenant's memory cap (live where the backend can) and worker count."""
    from . import reprovision
    from .spec import check_limits, parse_size

    with host.lock():
        tenant = host.tenant(name)
        memory_bytes = parse_size(memory) if memory is not None else tenant.memory_limit_bytes
        clients = max_clients if max_clients is not None else tenant.max_clients
        try:
            check_limits(memory_bytes, clients)
        except BadInput as exc:
            exc.tenant = name
            raise
        capacity.admit(host.config, host.store.tenants(), memory_bytes, name)
        backend = host.backend(tenant.backend)
        if (memory_bytes, clients) != (tenant.memory_limit_bytes, tenant.max_clients):
            if not backend.can_resize_live and backend.status(tenant) == "running":
                raise BadInput(f"backend {tenant.backend} cannot change memory live",
                               tenant=name, step="resize",
                               fix=f"stop the tenant first: orch stop {name}")
            try:
                backend.resize(tenant, memory_bytes, clients)
            except OSError as exc:
                raise StepFailed(
                    f"the kernel refused a {memory_bytes >> 20} MiB cap: {exc.strerror}",
                    tenant=name, step="resize",
                    fix="the tenant uses more than that now; give a larger size",
                ) from None
        host.store.set_limits(name, memory_bytes, clients)
        host.store.event(name, "resize", f"memory {memory_bytes}, max clients {clients}")
    changed = (memory_bytes, clients) != (tenant.memory_limit_bytes, tenant.max_clients)
    if changed and tenant.state == "stopped" and not backend.can_converge_stopped:
        host.store.event(name, "resize", "the guest is off: its httpd.conf follows at the "
                         f"next `orch reprovision {name}` after a start")
    elif changed and tenant.state in ("running", "stopped"):
        # MaxRequestWorkers and the per-child size limit live in the main httpd.conf:
        # converge it, then restart gracefully.
        reports = reprovision.reprovision(host, [name])
        if reports[0]["failure"]:
            raise StepFailed(reports[0]["failure"], tenant=name, step="resize")
        if clients > tenant.max_clients and tenant.state == "running":
            # A graceful restart cannot raise ServerLimit; only a fresh master can.
            with host.lock():
                backend.stop(tenant)
                backend.start(tenant)
                wait_healthy(host, tenant)
            host.store.event(name, "resize", "restarted Apache to raise ServerLimit")
    return host.store.get(name)
