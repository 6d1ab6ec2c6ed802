"""Memory and process caps through cgroups, on the v1 (or hybrid) layout and on unified v2."""

import contextlib
import errno
import logging
import os
import signal
import time
from pathlib import Path

from .errors import PreflightError, StepFailed

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids")
# Used when mounted: CPU time for metering, CPU weight. Not required to cap a tenant.
V1_OPTIONAL = ("cpuacct", "cpu")


def detect_layout(root=CGROUP_ROOT):
    """`v2` when the unified hierarchy is mounted at the root, `v1` for legacy or hybrid."""
    if (root / "cgroup.controllers").exists():
        return "v2"
    if (root / "memory" / "memory.limit_in_bytes").exists():
        return "v1"
    return None


def preflight(root=CGROUP_ROOT, cpu_quota=False):
    """Refuse to go on when tenants could not be held to a memory cap on this host
    (or to their CPU quota, when `cpu_quota` says one is configured)."""
    layout = detect_layout(root)
    if layout is None:
        raise PreflightError(
            f"no cgroup memory controller under {root}",
            step="preflight",
            fix="boot with the memory controller enabled (cgroup_enable=memory) so tenants "
            "can be capped",
        )
    if layout == "v2":
        controllers = (root / "cgroup.controllers").read_text().split()
        missing = [c for c in ("memory", "pids") if c not in controllers]
        if missing:
            raise PreflightError(
                f"cgroup2 at {root} lacks the {' and '.join(missing)} controller",
                step="preflight", fix="enable it on the kernel command line",
            )
    if layout == "v1" and not (root / "pids").is_dir():
        raise PreflightError(f"the v1 pids controller is not mounted under {root}",
                             step="preflight", fix="mount it at /sys/fs/cgroup/pids")
    if cpu_quota and not (
            "cpu" in (root / "cgroup.controllers").read_text().split() if layout == "v2"
            else (root / "cpu" / "cpu.cfs_quota_us").exists()):
        raise PreflightError(f"[defaults] cpu_quota is set but {root} has no cpu controller "
                             "with CFS quotas", step="preflight",
                             fix="mount the cpu controller, or unset [defaults] cpu_quota")
    return layout


CPU_PERIOD_US = 100_000  # the kernel's default CFS period: 100 ms


def parse_cpu_quota(text):
    """CPUs from `50%` (half of one CPU, as systemd's CPUQuota) or a count like 1.5 or "2"."""
    value = str(text).strip()
    try:
        cpus = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise ValueError(f"{text!r} is neither a percentage of one CPU nor a CPU count") from None
    if not 0.01 <= cpus <= 1024:
        raise ValueError(f"{text!r} is outside 1% (0.01 CPU) to 1024 CPUs")
    return cpus


def quota_us(cpus, period_us=CPU_PERIOD_US):
    """CPU time a tenant may use per period, in microseconds (the kernel's floor is 1 ms)."""
    return max(1000, round(cpus * period_us))


def pids_for(max_clients):
    """The process cap: every worker, the master, and room for the handlers' own children."""
    return max(64, 4 * max_clients + 16)


class TenantCgroup:
    """One tenant's cgroup, in each v1 controller it needs or once in the unified tree."""

    def __init__(self, parent, name, root=CGROUP_ROOT, layout=None):
        self.root = Path(root)
        self.layout = layout or detect_layout(self.root)
        self.parent = parent
        self.name = name

    def parent_dirs(self):
        if self.layout == "v2":
            return [self.root / self.parent]
        found, seen = [], set()
        for controller in (*V1_CONTROLLERS, *V1_OPTIONAL):
            mount = self.root / controller
            # cpu and cpuacct are often one hierarchy under two names: use it once.
            if mount.is_dir() and mount.resolve() not in seen:
                seen.add(mount.resolve())
                found.append(mount / self.parent)
        return found

    def dirs(self):
        return [d / self.name for d in self.parent_dirs()]

    def exists(self):
        return any(d.is_dir() for d in self.dirs())

    def complete(self):
        """Present in every controller it uses (one may have been mounted since)."""
        return all(d.is_dir() for d in self.dirs())

    def procs_files(self):
        """The files a process writes `0` into to join this cgroup."""
        return [d / "cgroup.procs" for d in self.dirs()]

    def create(self, memory_bytes, max_pids, cpu_weight=100, cpu_quota=None):
        """Make the cgroup and set its caps; swap may not be used to pass the memory cap.

        `cpu_weight` (1-10000, 100 an even share) sets cpu.weight on v2 and cpu.shares
        (1024 for 100) on v1, where the cpu and cpuacct controllers share one hierarchy.
        `cpu_quota` (CPUs, None for no cap) sets cpu.max on v2 and cpu.cfs_quota_us over
        cpu.cfs_period_us on v1; a host without the cpu controller is refused then.
        """
        if self.layout == "v2":
            self._enable_v2_controllers()
        for directory in self.dirs():
            directory.mkdir(parents=True, exist_ok=True)
        if self.layout == "v2":
            group = self.dirs()[0]
            _write(group / "memory.max", memory_bytes)
            _write_if_present(group / "memory.swap.max", 0)
            _write(group / "pids.max", max_pids)
            _write_if_present(group / "cpu.weight", cpu_weight)
        else:
            memory, pids = self.dirs()[:2]
            _write(memory / "memory.limit_in_bytes", memory_bytes)
            _write_if_present(memory / "memory.memsw.limit_in_bytes", memory_bytes)
            _write_if_present(memory / "memory.swappiness", 0)
            _write(pids / "pids.max", max_pids)
            for directory in self.dirs()[2:]:
                _write_if_present(directory / "cpu.shares", max(2, cpu_weight * 1024 // 100))
        if cpu_quota is not None:
            self.set_cpu_quota(cpu_quota)

    def set_cpu_quota(self, cpus):
        """Cap the tenant's CPU time at `cpus` CPUs (None: no cap) in every period."""
        if self.layout == "v2":
            target = self.dirs()[0] / "cpu.max"
            if not target.exists():
                raise self._no_cpu_controller()
            _write(target, f"{'max' if cpus is None else quota_us(cpus)} {CPU_PERIOD_US}")
            return
        found = [d for d in self.dirs()[2:] if (d / "cpu.cfs_quota_us").exists()]
        if not found:
            raise self._no_cpu_controller()
        _write(found[0] / "cpu.cfs_period_us", CPU_PERIOD_US)
        _write(found[0] / "cpu.cfs_quota_us", -1 if cpus is None else quota_us(cpus))

    def cpu_quota(self):
        """The CPU cap in force, in CPUs, or None when there is none."""
        if self.layout == "v2":
            try:
                quota, period = (self.dirs()[0] / "cpu.max").read_text().split()
            except FileNotFoundError:
                return None
        else:
            found = [d for d in self.dirs()[2:] if (d / "cpu.cfs_quota_us").exists()]
            if not found:
                return None
            quota = (found[0] / "cpu.cfs_quota_us").read_text().strip()
            period = (found[0] / "cpu.cfs_period_us").read_text().strip()
        return None if quota in ("max", "-1") else int(quota) / int(period)

    def _no_cpu_controller(self):
        where = (f"{self.root}/{self.parent}/cgroup.subtree_control" if self.layout == "v2"
                 else f"{self.root}/cpu")
        return StepFailed(
            f"a CPU quota is set but the cpu controller is not available at {where}",
            tenant=self.name, step="create",
            fix="mount the cpu controller (v1) or enable it for the parent (v2), or unset "
                "[defaults] cpu_quota",
        )

    def _enable_v2_controllers(self):
        for directory in (self.root, self.root / self.parent):
            directory.mkdir(exist_ok=True)
            control = directory / "cgroup.subtree_control"
            enabled = control.read_text().split() if control.exists() else []
            available = (self.root / "cgroup.controllers").read_text().split()
            wanted = [f"+{c}" for c in ("memory", "pids", "cpu")
                      if c not in enabled and (c != "cpu" or c in available)]
            if wanted:
                _write(control, " ".join(wanted))

    def pids(self):
        """Every process in the cgroup, by host pid."""
        found = set()
        for procs in self.procs_files():
            try:
                found.update(int(line) for line in procs.read_text().split())
            except FileNotFoundError:
                continue
        return found

    def kill(self, sig=signal.SIGKILL, timeout=10.0):
        """Kill exactly the processes in this cgroup and wait until it is empty."""
        deadline = time.monotonic() + timeout
        kill_file = self.dirs()[0] / "cgroup.kill"
        while True:
            pids = self.pids()
            if not pids:
                return
            if time.monotonic() > deadline:
                raise StepFailed(
                    f"processes {sorted(pids)} in cgroup {self.name} would not die",
                    tenant=self.name, step="stop",
                )
            if self.layout == "v2" and kill_file.exists() and sig == signal.SIGKILL:
                _write(kill_file, 1)
            else:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            time.sleep(0.05)

    def remove(self):
        """Remove the cgroup (it must be empty), then its parent if no tenant is left in it."""
        for directory in self.dirs():
            _rmdir(directory)
        for directory in self.parent_dirs():
            _rmdir(directory, quiet=True)

    def usage(self):
        """Memory now, at peak and in page cache (bytes), CPU seconds, process count."""
        if self.layout == "v2":
            group = self.dirs()[0]
            current = _read_int(group / "memory.current")
            peak = _read_int(group / "memory.peak", default=current)
            cache = _stat(group / "memory.stat").get("file", 0)
            cpu = _stat(group / "cpu.stat").get("usage_usec", 0) / 1e6
        else:
            memory = self.dirs()[0]
            current = _read_int(memory / "memory.usage_in_bytes")
            peak = _read_int(memory / "memory.max_usage_in_bytes", default=current)
            cache = _stat(memory / "memory.stat").get("cache", 0)
            cpuacct = [d for d in self.dirs() if d.parent.parent.name == "cpuacct"]
            cpu = _read_int(cpuacct[0] / "cpuacct.usage") / 1e9 if cpuacct else 0.0
        return {"memory_current": current, "memory_peak": peak, "memory_cache": cache,
                "cpu_seconds": round(cpu, 3), "processes": len(self.pids())}

    def set_pids_limit(self, max_pids):
        pids = self.dirs()[0] if self.layout == "v2" else self.dirs()[1]
        _write(pids / "pids.max", max_pids)

    def set_memory_limit(self, memory_bytes):
        """Change the memory cap of a running tenant (the kernel refuses one below use)."""
        if self.layout == "v2":
            _write(self.dirs()[0] / "memory.max", memory_bytes)
        else:
            memory = self.dirs()[0]
            swap = memory / "memory.memsw.limit_in_bytes"
            # memsw may never be below the memory limit: raise it first, lower it last.
            if swap.exists() and memory_bytes > self.memory_limit():
                _write(swap, memory_bytes)
            _write(memory / "memory.limit_in_bytes", memory_bytes)
            _write_if_present(swap, memory_bytes)

    def memory_limit(self):
        name = "memory.max" if self.layout == "v2" else "memory.limit_in_bytes"
        return _read_int(self.dirs()[0] / name)


def _write(path, value):
    log.debug("cgroup: %s <- %s", path, value)
    path.write_text(f"{value}\n")


def _write_if_present(path, value):
    if path.exists():
        _write(path, value)


def _read_int(path, default=0):
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return default
    return int(text) if text.isdigit() else default


def _stat(path):
    """A flat `key value` file (memory.stat, cpu.stat) as a dict of ints."""
    values = {}
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                values[key] = int(value)
    except FileNotFoundError:
        pass
    return values


def _rmdir(directory, quiet=False):
    # A cgroup directory holds only kernel files, so rmdir (not a tree removal) is correct.
    for _ in range(50):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if quiet and exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
                return
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.05)
    if not quiet:
        raise StepFailed(f"cgroup {directory} stays busy", step="destroy")
