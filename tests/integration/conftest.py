"""Real tenants on this host: each test gets its own state directory, proxy port, address
pool and cgroup parent, shares the base image cache, and must leave nothing behind."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import config as config_mod
from orchestrator.proxy import FrontProxy

from . import kvm_host as kvm

REPO = Path(__file__).resolve().parents[2]
ORCH = Path(sys.executable).parent / "orch"
IMAGES = REPO / ".cache" / "images"
# Per run, so two test runs on one host (a clone beside a work tree) never share links.
POOL = f"10.253.{os.getpid() % 250}.0/24"
LOOPBACK_POOL = f"127.78.{os.getpid() % 250}.0/24"
# Outside the default range, so no test tenant shares a host uid with a real one.
UIDS = "90000-94999"
_instances = iter(range(1000))


def free_port():
    """A TCP port on loopback that nothing listens on now, for this test's front proxy."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Orch:
    """Runs the real `orch` command against one test's state directory."""

    def __init__(self, home, proxy_port, cgroup_parent):
        self.home = home
        self.proxy_port = proxy_port
        self.cgroup_parent = cgroup_parent
        self.env = {**os.environ, "ORCH_HOME": str(home)}
        # libvirt's volumes live where the hypervisor's own user can reach them (pytest's
        # folders are closed to other users), in a pool of this instance's own.
        tag = f"orchtest{os.getpid()}x{next(_instances)}"
        self.kvm_pool = tag
        self.kvm_pool_path = REPO / ".cache" / "kvm" / tag
        self.domain_prefix = f"{tag}-"
        (home / "config.toml").write_text(
            f'[images]\ndir = "{IMAGES}"\n'
            f'[proxy]\naddress = "127.0.0.1"\nport = {proxy_port}\n'
            f'[allocation]\naddress_pool = "{POOL}"\nuid_range = "{UIDS}"\n'
            f'[cgroups]\nparent = "{cgroup_parent}"\n'
            f'[kvm]\npool = "{tag}"\npool_path = "{self.kvm_pool_path}"\n'
            f'domain_prefix = "{self.domain_prefix}"\nloopback_pool = "{LOOPBACK_POOL}"\n'
        )
        self.config = config_mod.load(self.env)

    def run(self, *args, check=True, timeout=600):
        done = subprocess.run(
            [str(ORCH), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"orch {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
            )
        return done

    def json(self, *args, check=True):
        done = self.run(*args, "--json", check=check)
        return done.returncode, json.loads(done.stdout)

    def show(self, name):
        return self.json("show", name)[1]

    def create(self, name, hostname=None, *extra):
        return self.json("create-tenant", name, "--hostname", hostname or f"{name}.example.test",
                         *extra)[1]

    def get(self, hostname, path="/hello", headers=None):
        """A request through the front proxy, on loopback: (status, body, headers)."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.proxy_port, timeout=10)
        try:
            conn.request("GET", path, headers={"Host": hostname, **(headers or {})})
            response = conn.getresponse()
            return response.status, response.read().decode(), response.headers
        finally:
            conn.close()

    def leftovers(self):
        """What of any tenant is still on the host: mounts, links, netns, cgroups, files."""
        found = []
        mounts = Path("/proc/mounts").read_text()
        found += [line.split()[1] for line in mounts.splitlines() if str(self.home) in line]
        for link in Path("/sys/class/net").iterdir():
            if link.name.startswith("ot") and _link_in_pool(link.name):
                found.append(f"link {link.name}")
        netns = Path("/run/netns")
        if netns.is_dir():
            found += [f"netns {n.name}" for n in netns.iterdir() if _netns_in_pool(n.name)]
        for pattern in (self.cgroup_parent, f"*/{self.cgroup_parent}"):
            found += [f"cgroup {g}" for g in Path("/sys/fs/cgroup").glob(pattern)]
        found += [f"domain {name}" for name in kvm.domains(self.domain_prefix)]
        found += [f"volume {name}" for name in kvm.volumes(self.kvm_pool)
                  if name.startswith(self.domain_prefix)]
        for folder in ("tenants", "runs", "kvm/keys", "kvm/console"):
            if (self.home / folder).is_dir():
                found += [f"dir {d}" for d in (self.home / folder).iterdir()
                      if not d.name.startswith("_")]  # orch's own runs, not a tenant's
        return found


def _pool_indexes():
    import ipaddress

    network = ipaddress.IPv4Network(POOL)
    return {int(a) & 0xFFFFFF for a in network}


POOL_INDEXES = _pool_indexes()


def _link_in_pool(name):
    digits = name.removeprefix("ot").removesuffix("g")
    return digits.isdigit() and int(digits) in POOL_INDEXES


def _netns_in_pool(name):
    return name.startswith("orch-ot") and _link_in_pool(name.removeprefix("orch-"))


@contextlib.contextmanager
def orch_instance(home):
    """A fresh orch state directory; every tenant and the proxy are removed afterwards."""
    home.mkdir()
    instance = Orch(home, free_port(), f"orch-test-{os.getpid()}")
    yield instance
    for tenant in json.loads(instance.run("list", "--json").stdout)["tenants"]:
        instance.run("delete-tenant", tenant["name"], check=False)
    FrontProxy(instance.config).stop()
    left = instance.leftovers()
    kvm.remove_pool(instance.kvm_pool, instance.kvm_pool_path)
    assert not left, f"the test left these on the host: {left}"


@pytest.fixture
def orch(tmp_path):
    with orch_instance(tmp_path / "orch-home") as instance:
        yield instance


@pytest.fixture(scope="module")
def orch_module(tmp_path_factory):
    """One orch for a whole test module, for tests that share a tenant."""
    with orch_instance(tmp_path_factory.mktemp("orch") / "orch-home") as instance:
        yield instance


def tenant_processes(orch, name):
    """(pid, uid) of every process in the tenant's cgroup, read from /proc."""
    procs = set()
    for path in Path("/sys/fs/cgroup").glob(f"*/{orch.cgroup_parent}/{name}/cgroup.procs"):
        procs.update(int(p) for p in path.read_text().split())
    result = []
    for pid in sorted(procs):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:  # ended between the two reads
            continue
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        result.append((pid, uid, status))
    return result


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def in_jail(facts, *argv, input_text=None):
    """Run argv inside a running tenant's namespaces and root, as the tenant."""
    uid = str(facts["uid"])
    return subprocess.run(
        ["nsenter", "-t", str(facts["master_pid"]), "-m", "-u", "-i", "-n", "-p", "-r", "-w",
         "-S", uid, "-G", uid, "--", *argv],
        capture_output=True, text=True, timeout=30, input=input_text,
    )


def as_uid(uid, *argv):
    """Run argv on the host as `uid` with no groups and no capabilities."""
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv],
        capture_output=True, text=True, timeout=30,
    )


