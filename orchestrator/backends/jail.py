"""The jail backend: an overlayfs root, Linux namespaces and a cgroup per tenant.

The tenant's root is an overlay of the shared, read-only base image and a per-tenant upper
layer, mounted in the host's mount namespace so Ansible's chroot connection can reach it.
Apache runs as PID 1 of the tenant's own PID namespace, inside its own mount, UTS, IPC and
network namespaces, as the tenant's uid with no capabilities and no_new_privs set. The
network namespace reaches the host through one veth pair with a /31 at each end and no
other route, so a tenant can reach the host's end of its own link and nothing else.

Problems: the chroot connection runs Ansible's commands in the root's files but not in the
tenant's namespaces, so nothing in the roles may start or signal processes; the backend
does that.
"""

import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from .. import hostcmd, images, limits
from ..errors import PreflightError, StepFailed
from ..spec import derived_names
from .base import Backend

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
APACHE = ["/usr/sbin/apache2", "-f", "/etc/apache2/orch/httpd.conf", "-DFOREGROUND"]
RESOURCE_KINDS = ("dir", "cgroup", "netns", "link", "mount")

# Inside each guest's own network namespace, where the tenant (no CAP_NET_ADMIN) cannot
# change it: connections may come in from the host's end of the link and be answered;
# the guest itself may open connections only to itself.
GUEST_RULES = """\
table inet orch_guest {
    chain output {
        type filter hook output priority 0; policy drop;
        oif "lo" accept
        ct state established,related accept
    }
}
"""


def network_taken(link_index):
    """Whether the link or namespace a tenant with this index would use exists already."""
    return (NETNS_DIR / f"orch-ot{link_index}").exists() or Path(
        f"/sys/class/net/ot{link_index}").exists()


class JailBackend(Backend):
    """chroot plus namespaces plus cgroups; no daemon."""

    kind = "jail"
    can_resize_live = True
    can_execute = True
    can_check_fragments = True
    can_converge_stopped = True
    can_change_image = True
    can_measure_children = True

    @staticmethod
    def link_taken(link_index):
        return network_taken(link_index)

    def preflight(self):
        if os.geteuid() != 0:
            raise PreflightError("the jail backend must run as root", step="preflight",
                                 fix="run orch as root")
        for tool in ("ip", "nsenter", "mount", "umount", "nft"):
            if shutil.which(tool) is None:
                raise PreflightError(f"{tool} is not installed", step="preflight",
                                     fix="run scripts/setup-host")
        if "overlay" not in Path("/proc/filesystems").read_text():
            raise PreflightError("the kernel has no overlay file system", step="preflight",
                                 fix="load it with `modprobe overlay`")
        limits.preflight(cpu_quota=self.config.cpu_quota is not None)

    # Paths and names --------------------------------------------------------------------

    def tenant_dir(self, tenant):
        return self.config.tenants_dir / tenant.name

    def root(self, tenant):
        return self.tenant_dir(tenant) / "root"

    def guest_root(self, tenant):
        return self.root(tenant)

    def names(self, tenant):
        return derived_names(tenant.name, tenant.link_index)

    def cgroup(self, tenant):
        return limits.TenantCgroup(self.config.cgroup_parent, tenant.name)

    # Lifecycle ---------------------------------------------------------------------------

    def create(self, tenant, record):
        names = self.names(tenant)
        base = images.rootfs_for(self.config)
        if not base.is_dir():
            raise StepFailed(f"base image {base} is missing", tenant=tenant.name, step="create")
        tdir = self.tenant_dir(tenant)
        group = self.cgroup(tenant)
        # Check, then record, then make: an object that was already there is never
        # recorded, so a rollback can never remove what this create did not make.
        step = {"tenant": tenant.name, "step": "create"}
        if tdir.exists():
            raise StepFailed(f"{tdir} already exists and is not this tenant's", **step,
                             fix=f"move it away; orch keeps tenant {tenant.name}'s files there")
        if group.exists():
            raise StepFailed(f"cgroup {group.dirs()[0]} already exists and is not this "
                             "tenant's", **step,
                             fix="set [cgroups] parent to a name no other orch uses")
        if network_taken(tenant.link_index):
            raise StepFailed(
                f"network namespace {names['netns']} or link {names['link']} already exists",
                **step, fix="give each orch on this host its own [allocation] address_pool",
            )

        record("dir", path=str(tdir))
        self.config.tenants_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.config.tenants_dir, 0o711)
        tdir.mkdir(mode=0o700)
        for sub in ("upper", "work", "root"):
            (tdir / sub).mkdir(mode=0o755)

        record("cgroup", parent=group.parent, name=group.name)
        group.create(tenant.memory_limit_bytes, limits.pids_for(tenant.max_clients),
                     self.config.cpu_weight, self.config.cpu_quota)

        self._guard_pool(tenant)
        record("netns", name=names["netns"])
        record("link", name=names["link"])
        self._make_network(tenant, names)

        record("mount", path=str(self.root(tenant)), lower=str(base))
        self._mount_root(tenant, base)

    def _guard_pool(self, tenant):
        """Blackhole the address pool, so a guest address whose link is gone is unreachable
        instead of being sent out of the host's default route."""
        hostcmd.run(["ip", "route", "replace", "blackhole", str(self.config.address_pool)],
                    tenant=tenant.name, step="create")

    def _release_pool_guard(self, tenant):
        others = [t for t in self.store.tenants() if t.backend == self.kind
                  and t.name != tenant.name]
        if not others:
            hostcmd.run(["ip", "route", "del", "blackhole", str(self.config.address_pool)],
                        check=False, tenant=tenant.name, step="destroy")

    def _make_network(self, tenant, names):
        netns, link, peer = names["netns"], names["link"], names["guest_link"]
        step = {"tenant": tenant.name, "step": "create"}
        hostcmd.run(["ip", "netns", "add", netns], **step)
        hostcmd.run(["ip", "link", "add", link, "type", "veth", "peer", "name", peer], **step)
        hostcmd.run(["ip", "link", "set", peer, "netns", netns], **step)
        inside = ["ip", "-n", netns]
        hostcmd.run([*inside, "link", "set", peer, "name", "eth0"], **step)
        # No IPv6 link-local address: the link carries the guest's IPv4 /31 and nothing else.
        hostcmd.run([*inside, "link", "set", "eth0", "addrgenmode", "none"], **step)
        hostcmd.run([*inside, "addr", "add", f"{tenant.address}/31", "dev", "eth0"], **step)
        hostcmd.run([*inside, "link", "set", "eth0", "up"], **step)
        hostcmd.run([*inside, "link", "set", "lo", "up"], **step)
        # Only answers leave the guest: it may reply to the front proxy but open nothing,
        # not even to services of the host that listen on every address.
        hostcmd.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], **step,
                    input=GUEST_RULES)
        hostcmd.run(["ip", "addr", "add", f"{tenant.host_address}/31", "dev", link], **step)
        hostcmd.run(["ip", "link", "set", link, "up"], **step)

    def _mount_root(self, tenant, base, step="create"):
        tdir = self.tenant_dir(tenant)
        options = f"lowerdir={base},upperdir={tdir / 'upper'},workdir={tdir / 'work'}"
        hostcmd.run(
            ["mount", "-t", "overlay", "-o", f"{options},nosuid", "overlay", "--", tdir / "root"],
            tenant=tenant.name, step=step,
        )

    def start(self, tenant):
        if self.status(tenant) == "running":
            return
        self.restore(tenant)
        group = self.cgroup(tenant)
        names = self.names(tenant)
        log_path = self.tenant_dir(tenant) / "console.log"
        argv = [
            sys.executable, "-m", "orchestrator.backends.jail_launch",
            "--root", self.root(tenant), "--netns", NETNS_DIR / names["netns"],
            "--uid", tenant.uid, "--gid", tenant.gid, "--hostname", names["dns_label"],
            "--proc", "--nofile", self.config.open_files,
            "--cgroup-procs", *group.procs_files(), "--", *APACHE,
        ]
        with open(log_path, "ab") as console:
            console.write(f"--- start {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            console.flush()
            done = subprocess.run(
                [str(a) for a in argv], stdout=subprocess.PIPE, stderr=console,
                stdin=subprocess.DEVNULL, start_new_session=True, check=False,
                cwd="/", env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                              "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            )
        if done.returncode != 0:
            raise StepFailed(
                f"the jail launcher exited {done.returncode}: {self.console_tail(tenant)}",
                tenant=tenant.name, step="start",
            )
        log.info("tenant %s: Apache started as host pid %s", tenant.name, done.stdout.strip())

    def restore(self, tenant, check=False):
        """Bring back the mount, network and cgroup a host reboot takes away, if missing.

        The root is mounted over the base image recorded for the tenant, never simply
        the current one: a tenant moves to a new image only through `change_image`.
        """
        names = self.names(tenant)
        step = {"tenant": tenant.name, "step": "restore"}
        missing = []
        if not os.path.ismount(self.root(tenant)):
            missing.append("root mount")
            if not check:
                self._mount_root(tenant, self._recorded_lower(tenant), step="restore")
        half = (NETNS_DIR / names["netns"]).exists() and not Path(
            f"/sys/class/net/{names['link']}").exists()
        if half or not (NETNS_DIR / names["netns"]).exists():
            missing.append("network")
            if not check:
                if half:  # its link deleted: make the network again whole
                    hostcmd.run(["ip", "netns", "delete", names["netns"]], **step)
                self._guard_pool(tenant)
                self._make_network(tenant, names)
        group = self.cgroup(tenant)
        if not group.complete():
            missing.append("cgroup")
            if not check:
                group.create(tenant.memory_limit_bytes, limits.pids_for(tenant.max_clients),
                             self.config.cpu_weight, self.config.cpu_quota)
        return missing

    def _mount_record(self, tenant):
        for resource in self.store.resources(tenant.name):
            if resource.kind == "mount":
                return resource
        raise StepFailed("no root mount is recorded for this tenant", tenant=tenant.name,
                         step="restore", fix=f"run `orch delete-tenant {tenant.name}` and "
                         "create it again")

    def _recorded_lower(self, tenant):
        record = self._mount_record(tenant)
        lower = Path(record.data.get("lower") or images.rootfs_for(self.config))
        if not lower.is_dir():
            raise StepFailed(
                f"the base image {lower} the tenant's root is layered over is missing",
                tenant=tenant.name, step="restore",
                fix="restore it from a backup, or build one with `orch image rebuild` and "
                    f"move the tenant with `orch reprovision {tenant.name} --image current`",
            )
        return lower

    def image_of(self, tenant):
        record = self._mount_record(tenant)
        return Path(record.data.get("lower") or images.rootfs_for(self.config))

    def change_image(self, tenant, rootfs):
        """Remount the stopped guest's root with `rootfs` as its lower layer; the upper
        layer (everything the roles and the tenant wrote) stays as it is."""
        step = {"tenant": tenant.name, "step": "image"}
        if self.status(tenant) == "running":
            raise StepFailed("the guest is running", **step,
                             fix=f"stop it first: orch stop {tenant.name}")
        if not Path(rootfs).is_dir():
            raise StepFailed(f"base image {rootfs} is missing", **step,
                             fix="see `orch image list`")
        record = self._mount_record(tenant)
        old = record.data.get("lower")

        _unmount(str(self.root(tenant)), step)
        self.store.update_resource(record.id, **{**record.data, "lower": str(rootfs)})
        try:
            self._mount_root(tenant, rootfs, step="image")
        except StepFailed:
            self.store.update_resource(record.id, **record.data)
            if old:
                self._mount_root(tenant, old, step="image")
            raise
        notes = []
        if (self.tenant_dir(tenant) / "upper/var/lib/dpkg/status").exists():
            notes.append("its upper layer keeps a package database of its own "
                         "(/var/lib/dpkg/status), which hides the new image's")
        return notes

    def stop(self, tenant, timeout=10.0):
        group = self.cgroup(tenant)
        if not group.exists() or not group.pids():
            return
        try:
            group.kill(signal.SIGTERM, timeout=timeout)
        except StepFailed:
            log.warning("tenant %s: Apache ignored SIGTERM; killing its cgroup", tenant.name)
            group.kill(signal.SIGKILL)

    def destroy(self, tenant):
        self.stop(tenant)
        for resource in reversed(self.store.resources(tenant.name)):
            if resource.kind in RESOURCE_KINDS:
                self.release(tenant, resource)
                self.store.drop_resource(resource.id)
        self._release_pool_guard(tenant)

    def release(self, tenant, resource):
        """Undo one recorded object; a missing object is already undone."""
        step = {"tenant": tenant.name, "step": "destroy"}
        data = resource.data
        if resource.kind == "mount":
            _unmount(data["path"], step)
        elif resource.kind == "link":
            if Path(f"/sys/class/net/{data['name']}").exists():
                hostcmd.run(["ip", "link", "delete", data["name"]], **step)
        elif resource.kind == "netns":
            if (NETNS_DIR / data["name"]).exists():
                hostcmd.run(["ip", "netns", "delete", data["name"]], **step)
        elif resource.kind == "cgroup":
            group = limits.TenantCgroup(data["parent"], data["name"])
            group.kill()
            group.remove()
        elif resource.kind == "dir":
            path = Path(data["path"])
            if path.parent != self.config.tenants_dir:
                raise StepFailed(f"refusing to remove {path}: not a tenant directory", **step)
            if os.path.ismount(path / "root"):
                raise StepFailed(f"{path / 'root'} is still mounted", **step)
            if path.exists():
                shutil.rmtree(path)

    def inspect(self, tenant):
        names = self.names(tenant)
        found = []
        if not os.path.ismount(self.root(tenant)):
            found.append(f"root {self.root(tenant)} is not mounted")
        if not (NETNS_DIR / names["netns"]).exists():
            found.append(f"network namespace {names['netns']} is gone")
        if not Path(f"/sys/class/net/{names['link']}").exists():
            found.append(f"link {names['link']} is gone")
        if not self.cgroup(tenant).complete():
            found.append("cgroup is gone")
        if self.status(tenant) != "running":
            found.append("Apache is not running")
        return found

    def status(self, tenant):
        group = self.cgroup(tenant)
        return "running" if group.exists() and group.pids() else "stopped"

    def master_pid(self, tenant):
        """The host pid of the process that is PID 1 inside the tenant's PID namespace."""
        group = self.cgroup(tenant)
        for pid in sorted(group.pids()):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            for line in status.splitlines():
                if line.startswith("NSpid:") and line.split()[-1] == "1":
                    return pid
        return None

    def worker_pids(self, tenant):
        """Host pids of the processes in the tenant's cgroup whose parent is its master."""
        master = self.master_pid(tenant)
        found = []
        for pid in sorted(self.cgroup(tenant).pids()):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            parent = next((line.split()[1] for line in status.splitlines()
                           if line.startswith("PPid:")), None)
            if master is not None and parent == str(master):
                found.append(pid)
        return found

    def ansible_host(self, tenant):
        return {
            "ansible_connection": "community.general.chroot",
            "ansible_host": str(self.root(tenant)),
            "ansible_python_interpreter": "/usr/bin/python3",
        }

    def usage(self, tenant):
        return self.cgroup(tenant).usage()

    def resize(self, tenant, memory_bytes, max_clients):
        group = self.cgroup(tenant)
        for directory in group.dirs():
            directory.mkdir(parents=True, exist_ok=True)  # a controller mounted since
        group.set_memory_limit(memory_bytes)
        group.set_pids_limit(limits.pids_for(max_clients))

    def _enter(self, tenant, as_root=False):
        """The command prefix that puts a program inside the running guest, as the tenant.

        As the tenant it also drops every capability from the bounding set and sets
        no_new_privs, as the launcher does for Apache itself.
        """
        pid = self.master_pid(tenant)
        if pid is None:
            raise StepFailed("the guest is not running", tenant=tenant.name, step="execute",
                             fix=f"run `orch start {tenant.name}`")
        enter = ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--"]
        if as_root:
            return enter
        return [*enter, "setpriv", f"--reuid={tenant.uid}", f"--regid={tenant.gid}",
                "--clear-groups", "--no-new-privs", "--bounding-set=-all", "--"]

    def _join_cgroup(self, tenant):
        files = [str(f) for f in self.cgroup(tenant).procs_files()]

        def join():
            for path in files:
                with open(path, "w") as handle:
                    handle.write("0\n")
        return join

    def execute(self, tenant, argv, as_root=False, timeout=30, input=None):
        """Run argv inside the running guest's namespaces, root and cgroup; wait for it."""
        try:
            return subprocess.run(
                [*self._enter(tenant, as_root), *argv], capture_output=True, text=True,
                timeout=timeout, input=input, check=False,
                preexec_fn=self._join_cgroup(tenant),
            )
        except subprocess.TimeoutExpired:
            raise StepFailed(f"`{' '.join(argv)}` in the guest did not finish in {timeout} s",
                             tenant=tenant.name, step="execute") from None

    def spawn(self, tenant, argv, log_path):
        """Start argv inside the guest as the tenant, in the background; return the Popen.

        The program is PID 1 of a PID namespace of its own (a child of the Popen's
        process), so when it ends, everything it started ends with it: nothing is ever
        left to the tenant's real Apache master, which would take a child's fatal exit
        for its own.
        """
        pid = self.master_pid(tenant)
        if pid is None:
            raise StepFailed("the guest is not running", tenant=tenant.name, step="trial",
                             fix=f"run `orch start {tenant.name}`")
        enter = ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-r", "-w", "--",
                 "unshare", "--pid", "--fork", "--",
                 "setpriv", f"--reuid={tenant.uid}", f"--regid={tenant.gid}",
                 "--clear-groups", "--no-new-privs", "--bounding-set=-all", "--"]
        with open(log_path, "ab") as log_file:
            return subprocess.Popen(
                [*enter, *argv], stdout=log_file, stderr=log_file,
                stdin=subprocess.DEVNULL, preexec_fn=self._join_cgroup(tenant),
            )

    def console_tail(self, tenant, lines=10):
        return _tail(self.tenant_dir(tenant) / "console.log", lines)

    def log_tail(self, tenant, lines=5):
        # Read from the upper layer: the log is the tenant's own file, written by its Apache;
        # reading it through the merged root could follow a symbolic link the tenant made.
        return _tail(self.tenant_dir(tenant) / "upper" / "var/log/apache2/error.log", lines)


def _unmount(path, step):
    """Unmount a tenant's root; if something (an interrupted Ansible run) still holds it,
    detach it lazily so the folder can go, and say so."""
    for _ in range(20):
        if not os.path.ismount(path):
            return
        done = hostcmd.run(["umount", "--", path], check=False, **step)
        if done.returncode == 0:
            return
        time.sleep(0.25)
    log.warning("%s stays busy; detaching it lazily", path)
    hostcmd.run(["umount", "--lazy", "--", path], **step)


def _tail(path, lines):
    # O_NOFOLLOW: the file may be the tenant's, and a link it made must not be followed.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return "(empty)"
    except OSError:
        return "(not a plain file; not read)"
    with os.fdopen(fd, errors="replace") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "(not a plain file; not read)"
        text = handle.read()
    found = [line for line in text.strip().splitlines() if not line.startswith("--- start")]
    return " / ".join(found[-lines:]) or "(empty)"
