"""`orch tenant-config`: a tenant's own httpd.conf fragment, checked, switched, rolled back.

A new fragment goes live only after the policy check, Apache's syntax test and a trial
start (see httpdconf). Until then the running server is not touched. The switch is a
graceful restart followed by a health check through the front proxy; if that fails the
previous fragment is put back the same way. The last few live fragments are kept so
`--rollback` can return to them.
"""

import contextlib
import logging
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from . import httpdconf, probe
from .errors import BadInput, StepFailed
from .httpdconf import FragmentRefused

log = logging.getLogger(__name__)

CONF_DIR = "etc/apache2/orch"
LIVE = f"{CONF_DIR}/tenant.conf"
MAIN = f"{CONF_DIR}/httpd.conf"
CANDIDATE_DIR = f"{CONF_DIR}/candidate"
HISTORY_DIR = f"{CONF_DIR}/history"
QUARANTINE_DIR = f"{CONF_DIR}/quarantine"
EMPTY = "# The tenant's own httpd.conf fragment; change it with `orch tenant-config`.\n"
KEEP = 5
# Trial ports are drawn at random inside the tenant's own network namespace, so a tenant
# process cannot sit on the trial's port to make a broken configuration look healthy.
TRIAL_PORTS = (40000, 60999)
APACHE = "/usr/sbin/apache2"
MAX_FRAGMENT_BYTES = 256 * 1024


class FragmentStore:
    """The live fragment, the candidate and the history, as files in the guest's root."""

    def __init__(self, root):
        self.root = Path(root)

    def path(self, relative):
        return self.root / relative

    def live(self):
        try:
            return self.path(LIVE).read_text()
        except FileNotFoundError:
            return ""

    def history(self):
        folder = self.path(HISTORY_DIR)
        return sorted(folder.glob("*.conf")) if folder.is_dir() else []

    def push_history(self, text):
        folder = self.path(HISTORY_DIR)
        folder.mkdir(mode=0o755, exist_ok=True)
        entries = self.history()
        number = int(entries[-1].stem) + 1 if entries else 1
        _write(folder / f"{number:06d}.conf", text)
        for old in self.history()[:-KEEP]:
            old.unlink()

    def write_live(self, text):
        _write(self.path(LIVE), text)

    def quarantine(self, text, reason):
        """Set a failing live fragment aside (kept for the tenant) and go live with none."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        kept = f"{QUARANTINE_DIR}/{stamp}.conf"
        _write(self.path(kept), text)
        _write(self.path(f"{kept}.reason"), reason + "\n")
        self.write_live(EMPTY)
        return kept

    def set_aside(self, entry, reason):
        """Move a history entry that fails the checks into the quarantine folder."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        kept = f"{QUARANTINE_DIR}/history-{entry.stem}-{stamp}.conf"
        _write(self.path(kept), entry.read_text())
        _write(self.path(f"{kept}.reason"), reason + "\n")
        entry.unlink()
        return kept


def fragment_backend(host, tenant):
    """The tenant's backend, when it can check and switch fragments; BadInput otherwise."""
    backend = host.backend(tenant.backend)
    if not backend.can_check_fragments:
        raise BadInput(f"tenant {tenant.name} runs on backend {tenant.backend}, which does "
                       "not take fragments through tenant-config yet", tenant=tenant.name,
                       step="validate",
                       fix="give the site a jail tenant if it needs a fragment of its own")
    return backend


def read_guest_file(backend, tenant, guest_path, limit=MAX_FRAGMENT_BYTES):
    """Read a plain file inside the guest as the tenant; OSError when it is not one.

    Never a FIFO or a device (`test -f`), never more than `limit` bytes, never longer than
    a few seconds: the file is the tenant's, and so is whatever it points to.
    """
    if backend.execute(tenant, ["test", "-f", guest_path]).returncode != 0:
        raise OSError(f"{guest_path} is not a plain file")
    done = backend.execute(tenant, ["timeout", "5", "head", "-c", str(limit + 1), "--",
                                    guest_path])
    if done.returncode != 0:
        raise OSError(done.stderr.strip().rsplit(": ", 1)[-1] or "cannot be read")
    if len(done.stdout.encode()) > limit:
        raise OSError(f"{guest_path} is larger than {limit} bytes")
    return done.stdout


def _write(path, text):
    """Write a root-owned 0644 file atomically (the tenant reads it; it cannot write it)."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_text(text)
    os.chown(temporary, 0, 0)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def candidate_configs(main_text, tenant, modules, trial_port):
    """(syntax-check main, trial main) for a candidate fragment, from the live main file."""
    include = f"Include /{LIVE}"
    if include not in main_text:
        raise StepFailed("the main httpd.conf has no fragment include", tenant=tenant.name,
                         step="syntax", fix=f"run `orch reprovision {tenant.name}`")
    preload = "".join(f"PerlModule {m}\n" for m in modules)
    check = main_text.replace(include, f"{preload}Include /{CANDIDATE_DIR}/tenant.conf")
    trial = (check
             .replace(f"Listen {tenant.address}:{tenant.port}",
                      f"Listen {tenant.address}:{trial_port}")
             .replace("/run/apache2/httpd.pid", "/run/apache2/trial.pid")
             .replace("/var/log/apache2/error.log", "/var/log/apache2/trial-error.log")
             .replace("/var/log/apache2/access.log", "/var/log/apache2/trial-access.log"))
    return check, trial


class FragmentApplier:
    """Runs the checks and the switch for one tenant on one backend."""

    def __init__(self, host, tenant, progress=None):
        self.host = host
        self.tenant = tenant
        self.backend = fragment_backend(host, tenant)
        self.store = FragmentStore(self.backend.guest_root(tenant))
        self.progress = progress

    @contextlib.contextmanager
    def _step(self, name):
        if self.progress:
            with self.progress.step(name):
                yield
        else:
            yield

    def check(self, text):
        """Every check short of the switch; raises FragmentRefused with the reason."""
        if len(text.encode()) > MAX_FRAGMENT_BYTES:
            raise FragmentRefused(f"the fragment is larger than {MAX_FRAGMENT_BYTES} bytes",
                                  tenant=self.tenant.name, step="policy",
                                  fix="split it into included files under /srv/tenant")
        if "\0" in text:
            raise FragmentRefused("the fragment contains a NUL byte", tenant=self.tenant.name,
                                  step="policy", fix="give a text file")
        with self._step("policy"):
            files = httpdconf.PolicyCheck(self.store.root, self.tenant.name,
                                          reader=self.read_as_tenant).check(text)
        allowed = [f"/{CANDIDATE_DIR}/tenant.conf", *files]
        modules = httpdconf.handler_modules(text)
        self.trial_port = random.randint(*TRIAL_PORTS)
        check_main, trial_main = candidate_configs(
            self.store.path(MAIN).read_text(), self.tenant, modules, self.trial_port)
        _write(self.store.path(f"{CANDIDATE_DIR}/tenant.conf"), text)
        _write(self.store.path(f"{CANDIDATE_DIR}/check.conf"), check_main)
        _write(self.store.path(f"{CANDIDATE_DIR}/trial.conf"), trial_main)
        with self._step("syntax"):
            self._syntax(allowed)
        with self._step("trial"):
            self._trial(allowed, text)

    def read_as_tenant(self, guest_path):
        """A plain file of the guest, read inside it by the tenant's own uid, size-capped."""
        return read_guest_file(self.backend, self.tenant, guest_path)

    def _refuse(self, step, summary, output, allowed, text=None):
        shown = httpdconf.visible_errors(output, allowed)
        detail = " / ".join(shown).replace(f"/{CANDIDATE_DIR}/tenant.conf", "your fragment")
        line = httpdconf.blame_line(text, output) if text is not None else None
        if line is not None:
            summary = f"your fragment, line {line.number} ({line.text}): {summary}"
        raise FragmentRefused(
            f"{summary}: {detail or 'Apache gave no message about your own files'}",
            tenant=self.tenant.name, step=step,
            fix="fix the fragment and apply it again; the running server is unchanged",
        )

    def _syntax(self, allowed):
        done = self.backend.execute(
            self.tenant, [APACHE, "-t", "-f", f"/{CANDIDATE_DIR}/check.conf"], timeout=60)
        if done.returncode != 0:
            self._refuse("syntax", "Apache refused the configuration",
                         done.stderr + done.stdout, allowed)

    def _trial(self, allowed, text):
        trial_log = "/var/log/apache2/trial-error.log"
        self.backend.execute(self.tenant, ["rm", "-f", "--", trial_log])
        console = self.host.config.runs_dir / self.tenant.name / "trial.log"
        console.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            console.unlink()
        proc = self.backend.spawn(
            self.tenant, [APACHE, "-f", f"/{CANDIDATE_DIR}/trial.conf", "-DFOREGROUND"],
            console,
        )
        try:
            answered = self._wait_for_answer(proc)
        finally:
            _stop_spawned(proc)
        if not answered:
            try:
                logged = self.read_as_tenant(trial_log)
            except OSError:
                logged = ""
            output = _read(console) + "\n" + logged
            self._refuse("trial", "a trial start of the new configuration failed", output,
                         allowed, text)

    def _wait_for_answer(self, proc, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                status, _, _ = probe.get(self.tenant.address, self.trial_port,
                                         self.tenant.hostname)
            except OSError:
                time.sleep(0.1)
                continue
            # The answer counts only if the trial Apache is still there to have given it.
            return status < 500 and proc.poll() is None
        return False

    def switch(self, text):
        """Make `text` live with a graceful restart; put the old one back if health fails."""
        previous = self.store.live()
        with self._step("switch"):
            self.store.write_live(text)
            try:
                self.graceful()
            except StepFailed as exc:
                self._revert(previous, "switch", f"{exc.message}; the previous fragment was "
                             "put back and Apache started again")
        try:
            with self._step("health"):
                self._healthy()
        except StepFailed as exc:
            self._revert(previous, "health", f"after the switch the site failed its health "
                         f"check ({exc.message}); the previous fragment was put back")
        return previous

    def _revert(self, previous, step, message):
        """Put the previous fragment back, then raise StepFailed saying so."""
        self._restart_with(previous)
        raise StepFailed(message, tenant=self.tenant.name, step=step,
                         fix="fix the fragment (see your error log) and apply it again")

    def _restart_with(self, text):
        from .tenants import wait_healthy

        self.store.write_live(text)
        if self.backend.status(self.tenant) == "running":
            self.graceful()
        else:
            self.backend.start(self.tenant)
            wait_healthy(self.host, self.tenant)

    def graceful(self):
        master = self.backend.master_pid(self.tenant)
        if master is None:
            raise StepFailed("Apache is not running", tenant=self.tenant.name, step="switch",
                             fix=f"run `orch start {self.tenant.name}`")
        before = probe.children(master)
        os.kill(master, signal.SIGUSR1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not Path(f"/proc/{master}").exists():
                raise StepFailed("Apache exited during the graceful restart",
                                 tenant=self.tenant.name, step="switch")
            now = probe.children(master)
            if now and not (now & before):
                return
            time.sleep(0.1)
        log.warning("tenant %s: old Apache children still serving 20 s after the restart",
                    self.tenant.name)

    def _healthy(self):
        try:
            status, _, _ = self.host.proxy.get(self.tenant.hostname, "/")
        except OSError as exc:
            raise StepFailed(f"the front proxy did not answer: {exc}",
                             tenant=self.tenant.name, step="health") from None
        if status >= 500:
            raise StepFailed(f"HTTP {status} through the front proxy",
                             tenant=self.tenant.name, step="health")


def _stop_spawned(proc):
    """Stop a trial Apache: it is PID 1 of its own PID namespace, under the unshare we
    started, so killing it by its pid ends every process of the trial with it."""
    for pid in probe.children(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def _read(path):
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def apply(host, name, text, progress=None):
    """Check `text` and make it the tenant's live fragment."""
    with host.lock():
        tenant = host.tenant(name)
        applier = FragmentApplier(host, tenant, progress)
        applier.check(text)
        previous = applier.switch(text)
        applier.store.push_history(previous)
        host.store.event(name, "tenant-config", "a new fragment went live")
    return {"name": name, "applied": True, "master_pid": applier.backend.master_pid(tenant)}


def show(host, name):
    tenant = host.tenant(name)
    store = FragmentStore(fragment_backend(host, tenant).guest_root(tenant))
    return {"name": name, "fragment": store.live(), "history": len(store.history())}


def newest_passing(entries, check):
    """Walk the history back from the newest entry to the first whose text passes `check`.

    Returns (entry, text, skipped), where skipped lists each newer entry that failed, with
    the reason; entry is None when none passes.
    """
    skipped = []
    for entry in reversed(entries):
        text = entry.read_text()
        try:
            check(text)
        except FragmentRefused as exc:
            skipped.append({"entry": entry.stem, "step": exc.step, "reason": exc.message})
            continue
        return entry, text, skipped
    return None, None, skipped


def rollback(host, name, progress=None):
    """Go back to the newest earlier fragment that still passes the checks.

    Entries newer than it that fail them are set aside under the quarantine folder with
    their reason, so a later rollback does not meet them again; when none passes,
    nothing is changed.
    """
    with host.lock():
        tenant = host.tenant(name)
        applier = FragmentApplier(host, tenant, progress)
        entries = applier.store.history()
        if not entries:
            raise FragmentRefused("there is no earlier fragment to go back to", tenant=name,
                                  step="rollback", fix="apply a fragment with tenant-config")
        entry, text, skipped = newest_passing(entries, applier.check)
        if entry is None:
            reasons = "; ".join(f"entry {s['entry']}: {s['reason']}" for s in skipped)
            raise FragmentRefused(
                f"none of the {len(entries)} earlier fragments passes the checks now "
                f"({reasons}); the live fragment stays", tenant=name, step="rollback",
                fix=f"apply one that passes with `orch tenant-config {name} FILE`",
            )
        applier.switch(text)
        entry.unlink()
        for refused in skipped:
            path = applier.store.path(f"{HISTORY_DIR}/{refused['entry']}.conf")
            applier.store.set_aside(path, refused["reason"])
        message = f"rolled back to history entry {entry.stem}"
        if skipped:
            message += " (skipped " + ", ".join(s["entry"] for s in skipped) + ")"
        host.store.event(name, "tenant-config", message)
    return {"name": name, "rolled_back": True, "entry": entry.stem, "skipped": skipped}
