#!/usr/bin/env python3
"""How many mod_perl tenants a GiB holds, and what orch adds to each over a bare server.

Measured side by side in one run, with a warm base image:

- tenants: N tenants made by `orch create-tenant` (jail backend); each one's memory is read
  from its cgroup right after its create (the first and the Nth give the marginal cost of
  one more tenant) and again once all N run and each has answered a few requests;
- bare: the same Apache, mod_perl and httpd.conf (the Nth tenant's own files), started by
  hand from the same base image in a chroot and fresh namespaces, in a memory cgroup of its
  own, with nothing of orch's around it.

Memory is given with and without the page cache. A cgroup is charged for the file pages
it reads first: on a cold cache the first tenant pays for the Apache and Perl files every
later tenant (and the bare server) then shares, and once anything on the host has read
them no tenant pays for them; "without cache" is what each one holds of its own. A
child's size is its PSS, RSS and private memory (/proc/PID/smaps_rollup). Needs root.
Uses loopback and the namespaces it makes; removes everything it made.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from create import REPO, answered, free_port, orch

from orchestrator import childsize, config as config_mod, images, limits, probe
from orchestrator.proxy import FrontProxy

MIB = 1 << 20
GIB = 1 << 30


def footprint(group):
    """A cgroup's memory now: (with page cache, without it) in bytes."""
    usage = group.usage()
    return usage["memory_current"], usage["memory_current"] - usage["memory_cache"]


def rollup(pid, field):
    """One field of /proc/PID/smaps_rollup in bytes, or None."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return None


def children_sizes(pids):
    """(PSS, RSS, private) of every Apache child among `pids` (the master, pid 1 inside,
    left out)."""
    sizes = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        nspid = next(line.split()[-1] for line in status.splitlines()
                     if line.startswith("NSpid:"))
        size = childsize.pss_bytes(pid)
        if nspid != "1" and size is not None:
            private = sum(rollup(pid, f) or 0 for f in ("Private_Clean", "Private_Dirty"))
            sizes.append((size, rollup(pid, "Rss") or 0, private))
    return sizes


def warm(address, port, hostname, requests=6):
    for _ in range(requests):
        if not answered(address, port, hostname):
            raise SystemExit(f"{hostname} did not answer /hello")


@contextlib.contextmanager
def bare_server(base, tenant, upper, scratch, group):
    """Start Apache by hand from the base image with the tenant's files; yield when it
    answers, then stop it and remove its mount."""
    scratch.mkdir()
    subprocess.run(["cp", "-a", "--", str(upper), str(scratch / "upper")], check=True)
    for sub in ("work", "root"):
        (scratch / sub).mkdir()
    root = scratch / "root"
    options = f"lowerdir={base},upperdir={scratch / 'upper'},workdir={scratch / 'work'},nosuid"
    subprocess.run(["mount", "-t", "overlay", "-o", options, "overlay", "--", str(root)],
                   check=True)
    uid = str(tenant["uid"])
    procs = group.procs_files()

    def join_cgroup():
        for path in procs:
            path.write_text("0\n")

    apache = subprocess.Popen(
        ["ip", "netns", "exec", tenant["netns"], "unshare", "--mount", "--pid", "--fork",
         "--kill-child", "--uts", "--ipc", f"--mount-proc={root}/proc", "--", "chroot",
         str(root), "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
         "--", "/usr/sbin/apache2", "-f", "/etc/apache2/orch/httpd.conf", "-DFOREGROUND"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=join_cgroup,
    )
    try:
        started = time.monotonic()
        while not answered(tenant["address"], tenant["port"], tenant["hostname"]):
            if apache.poll() is not None or time.monotonic() - started > 30:
                raise SystemExit("bare: Apache started by hand did not answer")
            time.sleep(0.05)
        yield
    finally:
        # Apache is PID 1 of its own namespace, a child of unshare: killing it by its pid
        # ends the namespace and every process in it.
        for pid in probe.children(apache.pid):
            os.kill(pid, signal.SIGKILL)
        apache.wait()
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", "--", str(root)], check=True)
        shutil.rmtree(scratch, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10, metavar="N")
    parser.add_argument("--memory", default="256M", help="each tenant's memory cap")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/density.py needs root")
    if args.tenants < 2:
        raise SystemExit("--tenants must be 2 or more, to compare the Nth with the first")

    work = Path(tempfile.mkdtemp(prefix="orch-density-"))
    home = work / "home"
    home.mkdir()
    port = free_port()
    parent = f"orch-density-{os.getpid()}"
    (home / "config.toml").write_text(
        f'[images]\ndir = "{REPO / ".cache" / "images"}"\n'
        f'[proxy]\naddress = "127.0.0.1"\nport = {port}\n'
        '[allocation]\naddress_pool = "10.254.1.0/24"\nuid_range = "96000-96999"\n'
        f'[cgroups]\nparent = "{parent}"\n'
    )
    env = {**os.environ, "ORCH_HOME": str(home)}
    config = config_mod.load(env)
    base = images.ensure(config)
    bare_group = limits.TenantCgroup(f"{parent}-bare", "bare")
    names = [f"dense{i}" for i in range(1, args.tenants + 1)]
    at_create, steady, pss = {}, {}, {}
    try:
        for name in names:
            orch(env, "create-tenant", name, "--hostname", f"{name}.example.test",
                 "--memory", args.memory)
            at_create[name] = footprint(limits.TenantCgroup(parent, name))
        shown = {n: json.loads(orch(env, "show", n, "--json")) for n in names}
        for name in names:
            warm(shown[name]["address"], shown[name]["port"], shown[name]["hostname"])
        time.sleep(1)
        for name in names:
            group = limits.TenantCgroup(parent, name)
            steady[name] = footprint(group)
            pss[name] = children_sizes(group.pids())

        last = shown[names[-1]]
        last["netns"] = f"orch-ot{link_index(last['address'])}"
        orch(env, "stop", names[-1])
        bare_group.create(last["memory_limit_bytes"], limits.pids_for(last["max_clients"]))
        with bare_server(base, last, home / "tenants" / names[-1] / "upper", work / "bare",
                         bare_group):
            bare_start = footprint(bare_group)
            warm(last["address"], last["port"], last["hostname"])
            time.sleep(1)
            bare_steady = footprint(bare_group)
            bare_pss = children_sizes(bare_group.pids())
    finally:
        with contextlib.suppress(SystemExit):
            for listed in json.loads(orch(env, "list", "--json"))["tenants"]:
                orch(env, "delete-tenant", listed["name"])
        FrontProxy(config).stop()
        if bare_group.exists():
            bare_group.kill()
            bare_group.remove()
        shutil.rmtree(work, ignore_errors=True)

    report(args, names, at_create, steady, pss, bare_start, bare_steady, bare_pss)


def report(args, names, at_create, steady, pss, bare_start, bare_steady, bare_pss):
    n = len(names)
    total = sum(s[0] for s in steady.values())
    total_own = sum(s[1] for s in steady.values())
    per_tenant, per_tenant_own = total / n, total_own / n
    first, nth = at_create[names[0]], at_create[names[-1]]
    every_child = [sizes for per_tenant in pss.values() for sizes in per_tenant]
    child, child_rss, child_private = (statistics.median(c[i] for c in every_child)
                                       for i in range(3))
    bare_child, bare_rss, bare_private = (statistics.median(c[i] for c in bare_pss)
                                          for i in range(3))

    def mib(value):
        return f"{value / MIB:8.1f} MiB"

    print(f"orch density, jail backend, {n} idle tenants of {args.memory}, each answered "
          "/hello 6 times")
    print("  per tenant (cgroup)          with cache   without cache")
    for name in names:
        print(f"    {name:<24} {mib(steady[name][0])}   {mib(steady[name][1])}")
    print(f"  total of {n} tenants          {mib(total)}   {mib(total_own)}")
    print(f"  average per tenant          {mib(per_tenant)}   {mib(per_tenant_own)}")
    print(f"  first tenant at its start   {mib(first[0])}   {mib(first[1])}")
    print(f"  tenant {n} at its start{' ' * (6 - len(str(n)))}   {mib(nth[0])}   "
          f"{mib(nth[1])}")
    print(f"  marginal: tenant {n} / first       {nth[0] / first[0]:6.2f}        "
          f"{nth[1] / first[1]:6.2f}")
    print(f"  tenants per GiB                   {GIB / per_tenant:6.1f}        "
          f"{GIB / per_tenant_own:6.1f}")
    print(f"  idle mod_perl child, median: PSS {mib(child)}, RSS {mib(child_rss)}, "
          f"private {mib(child_private)}")
    print("bare Apache + mod_perl by hand, same image and httpd.conf, its own cgroup")
    print(f"  at its start                {mib(bare_start[0])}   {mib(bare_start[1])}")
    print(f"  after the same requests     {mib(bare_steady[0])}   {mib(bare_steady[1])}")
    print(f"  idle mod_perl child, median: PSS {mib(bare_child)}, RSS {mib(bare_rss)}, "
          f"private {mib(bare_private)}")
    print("ratios against the bare server")
    print(f"  tenant {n} at its start / bare at its start  {nth[0] / bare_start[0]:6.2f}   "
          f"{nth[1] / bare_start[1]:6.2f}")
    print(f"  average tenant / bare, after requests     {per_tenant / bare_steady[0]:6.2f}   "
          f"{per_tenant_own / bare_steady[1]:6.2f}")
    print(f"  child PSS / bare child PSS                {child / bare_child:6.2f}")
    print(f"  child RSS / bare child RSS                {child_rss / bare_rss:6.2f}")


def link_index(address):
    import ipaddress

    return int(ipaddress.IPv4Address(address)) & 0xFFFFFF


if __name__ == "__main__":
    main()
