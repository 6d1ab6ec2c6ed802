#!/usr/bin/env python3
"""How much time `orch create-tenant` adds over the work it cannot avoid.

Measured side by side in one run, with a warm base image:

- create: wall time of `orch create-tenant` (jail backend), median of --runs;
- floor: by hand, without orch: mount the same overlay, start Apache with the same
  configuration in the tenant's network namespace, wait for the first HTTP 200;
- bare: a plain `ansible-playbook` run of the same playbook against a fresh root in the
  state orch's provision step finds it in (the base image and an empty upper layer).

The ratio create / (floor + bare) is what orch itself adds; 1.0 would be nothing.

With `--kvm`, the same run also creates one kvm tenant (a VM under libvirt) and prints it
beside the jail: its create time by step, and its floor, done by hand: start the same
domain with virsh and wait for the first HTTP 200 through its port forward (the guest's
own init starts Apache). The rest of a kvm create is Ansible over SSH.

Needs root. Uses loopback and the namespaces it makes; removes everything it made.
"""

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator import config as config_mod, images, paths, probe
from orchestrator.proxy import FrontProxy

REPO = paths.PROJECT
BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def orch(env, *args, steps=None):
    done = subprocess.run([str(BIN / "orch"), *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"orch {' '.join(args)} failed:\n{done.stderr}")
    if steps is not None:
        steps.update((m[1], float(m[2])) for m in
                     re.finditer(r"^(\w+): done in ([0-9.]+) s$", done.stderr, re.M))
    return done.stdout


def answered(address, port, hostname):
    try:
        conn = http.client.HTTPConnection(address, port, timeout=1)
        conn.request("GET", "/hello", headers={"Host": hostname})
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def mount_overlay(base, scratch):
    for sub in ("upper", "work", "root"):
        (scratch / sub).mkdir(parents=True)
    options = f"lowerdir={base},upperdir={scratch / 'upper'},workdir={scratch / 'work'},nosuid"
    subprocess.run(["mount", "-t", "overlay", "-o", options, "overlay", "--",
                    str(scratch / "root")], check=True)
    return scratch / "root"


def floor_run(base, tenant, upper, scratch):
    """Mount, start Apache by hand in the tenant's netns, first 200; returns seconds."""
    scratch.mkdir()
    subprocess.run(["cp", "-a", "--", str(upper), str(scratch / "upper")], check=True)
    for sub in ("work", "root"):
        (scratch / sub).mkdir(parents=True)
    root = scratch / "root"
    options = f"lowerdir={base},upperdir={scratch / 'upper'},workdir={scratch / 'work'},nosuid"
    uid = str(tenant["uid"])
    started = time.monotonic()
    subprocess.run(["mount", "-t", "overlay", "-o", options, "overlay", "--", str(root)],
                   check=True)
    apache = subprocess.Popen(
        ["ip", "netns", "exec", tenant["netns"], "unshare", "--mount", "--pid", "--fork",
         "--kill-child", "--uts", "--ipc", f"--mount-proc={root}/proc", "--", "chroot",
         str(root), "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
         "--no-new-privs", "--", "/usr/sbin/apache2", "-f", "/etc/apache2/orch/httpd.conf",
         "-DFOREGROUND"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        while not answered(tenant["address"], tenant["port"], tenant["hostname"]):
            if apache.poll() is not None or time.monotonic() - started > 30:
                raise SystemExit("floor: Apache started by hand did not answer")
            time.sleep(0.002)
        return time.monotonic() - started
    finally:
        # Apache is PID 1 of its namespace, a child of unshare: killing it by its pid ends
        # the namespace. (--kill-child alone is not enough: setpriv's uid change clears it.)
        for pid in probe.children(apache.pid):
            os.kill(pid, signal.SIGKILL)
        apache.wait()
        subprocess.run(["umount", "--", str(root)], check=True)
        shutil.rmtree(scratch)


def bare_run(base, tenant, env, scratch):
    """A plain ansible-playbook run against a fresh root; returns seconds."""
    root = mount_overlay(base, scratch)
    hostvars = {f"orch_{k}": tenant[k] for k in
                ("name", "uid", "port", "address", "hostname", "max_clients",
                 "memory_limit_bytes")}
    hostvars.update({"orch_gid": tenant["uid"], "ansible_host": str(root),
                     "ansible_connection": "community.general.chroot"})
    inventory = scratch / "inventory.json"
    inventory.write_text(json.dumps({"tenants": {"hosts": {tenant["name"]: hostvars}}}))
    (scratch / "group_vars").symlink_to(paths.INVENTORY / "group_vars")
    argv = [str(BIN / "ansible-playbook"), "-i", str(inventory), "-e",
            json.dumps({"orch_proxy_port": env["proxy_port"]}), str(paths.PLAYBOOKS / "tenant.yml")]
    run_env = {**os.environ, "ANSIBLE_CONFIG": str(paths.ANSIBLE_CFG),
               "PATH": f"{BIN}:{os.environ['PATH']}"}
    try:
        started = time.monotonic()
        subprocess.run(argv, env=run_env, check=True, stdout=subprocess.DEVNULL)
        return time.monotonic() - started
    finally:
        subprocess.run(["umount", "--", str(root)], check=True)
        shutil.rmtree(scratch)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kvm", action="store_true",
                        help="also create one kvm tenant and print it beside the jail")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/create.py needs root")

    work = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    home = work / "home"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(
        f'[images]\ndir = "{REPO / ".cache" / "images"}"\n'
        f'[proxy]\naddress = "127.0.0.1"\nport = {port}\n'
        '[allocation]\naddress_pool = "10.254.0.0/24"\nuid_range = "95000-95999"\n'
        f'[cgroups]\nparent = "orch-bench-{os.getpid()}"\n'
        f'[kvm]\npool = "orchbench{os.getpid()}"\n'
        f'pool_path = "{REPO / ".cache" / "kvm" / f"orchbench{os.getpid()}"}"\n'
        f'domain_prefix = "orchbench{os.getpid()}-"\nloopback_pool = "127.79.250.0/24"\n'
    )
    env = {**os.environ, "ORCH_HOME": str(home)}
    config = config_mod.load(env)
    base = images.ensure(config)
    creates, floors, bares = [], [], []
    try:
        for run in range(args.runs):
            name = f"bench{run}"
            started = time.monotonic()
            orch(env, "create-tenant", name, "--hostname", f"{name}.example.test")
            creates.append(time.monotonic() - started)
            if run < args.runs - 1:
                orch(env, "delete-tenant", name)

        tenant = json.loads(orch(env, "show", name, "--json"))
        tenant["netns"] = f"orch-ot{_link_index(tenant['address'])}"
        orch(env, "stop", name)
        upper = home / "tenants" / name / "upper"
        for run in range(args.runs):
            floors.append(floor_run(base, tenant, upper, work / f"floor{run}"))
            bares.append(bare_run(base, tenant, {"proxy_port": port}, work / f"bare{run}"))
        vm = kvm_bench(env, config) if args.kvm else None
    finally:
        with contextlib.suppress(SystemExit):
            for listed in json.loads(orch(env, "list", "--json"))["tenants"]:
                orch(env, "delete-tenant", listed["name"])
        FrontProxy(config).stop()
        if args.kvm:
            _remove_pool(config)
        shutil.rmtree(work, ignore_errors=True)

    create, floor, bare = (statistics.median(x) for x in (creates, floors, bares))
    print(f"orch create-tenant, jail backend, warm base image, median of {args.runs} runs")
    print(f"  create-tenant                      {create:8.3f} s")
    print(f"  floor (mount, Apache, first 200)   {floor:8.3f} s")
    print(f"  bare ansible-playbook              {bare:8.3f} s")
    print(f"  ratio create / (floor + bare)      {create / (floor + bare):8.2f}   (target <= 1.5)")
    if vm:
        print(f"orch create-tenant, kvm backend ({vm['type']} domain), warm VM image, one run")
        print(f"  create-tenant                      {vm['create']:8.3f} s")
        for step in ("image", "create", "provision", "start", "proxy"):
            print(f"    {step:<32} {vm['steps'].get(step, 0.0):8.3f} s")
        print(f"  floor (virsh start, first 200)     {vm['floor']:8.3f} s")
        print(f"  ratio create / floor               {vm['create'] / vm['floor']:8.2f}")
        print(f"  kvm create / jail create           {vm['create'] / create:8.2f}")


def kvm_bench(env, config):
    """One kvm create, then its floor: the same domain started by hand, first 200."""
    steps = {}
    started = time.monotonic()
    orch(env, "create-tenant", "benchvm", "--hostname", "benchvm.example.test",
         "--backend", "kvm", steps=steps)
    created = time.monotonic() - started
    tenant = json.loads(orch(env, "show", "benchvm", "--json"))
    orch(env, "stop", "benchvm")
    domain = f"{config.kvm_domain_prefix}benchvm"
    kind = re.search(r"<domain type='(\w+)'", subprocess.run(
        ["virsh", "-q", "-c", config.kvm_uri, "dumpxml", domain], capture_output=True,
        text=True, check=True).stdout)[1]
    started = time.monotonic()
    subprocess.run(["virsh", "-q", "-c", config.kvm_uri, "start", domain], check=True,
                   stdout=subprocess.DEVNULL)
    while not answered(tenant["address"], tenant["port"], tenant["hostname"]):
        if time.monotonic() - started > config.kvm_boot_timeout:
            raise SystemExit("kvm floor: the guest started by hand did not answer")
        time.sleep(0.05)
    floor = time.monotonic() - started
    orch(env, "delete-tenant", "benchvm")
    return {"create": created, "steps": steps, "floor": floor, "type": kind}


def _remove_pool(config):
    """The bench's own libvirt pool, with the VM image's volumes it was given."""
    uri = ["virsh", "-q", "-c", config.kvm_uri]
    listed = subprocess.run([*uri, "vol-list", config.kvm_pool], capture_output=True,
                            text=True)
    for line in listed.stdout.splitlines():
        if line.split():
            subprocess.run([*uri, "vol-delete", line.split()[0], "--pool", config.kvm_pool],
                           capture_output=True)
    subprocess.run([*uri, "pool-destroy", config.kvm_pool], capture_output=True)
    subprocess.run([*uri, "pool-undefine", config.kvm_pool], capture_output=True)
    shutil.rmtree(config.kvm_pool_path, ignore_errors=True)


def _link_index(address):
    import ipaddress

    return int(ipaddress.IPv4Address(address)) & 0xFFFFFF


if __name__ == "__main__":
    main()
