"""The jail backend end to end: real overlay roots, namespaces, cgroups, Ansible, Apache,
mod_perl and nginx. Every answer is fetched over loopback through the front proxy or from
an address inside a network namespace orch made."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import config as config_mod, provision
from orchestrator.errors import ProxyError
from orchestrator.proxy import FrontProxy, Route

from .conftest import ORCH, as_uid, in_jail, tenant_processes, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_create_answers_through_the_proxy_as_the_tenant(orch):
    facts = orch.create("acme", "acme.example.test")
    shown = orch.show("acme")

    status, body, _ = orch.get("acme.example.test")
    assert status == 200
    assert f"hello from tenant acme: uid={shown['uid']} " in body
    assert "mod_perl=mod_perl/2" in body
    assert facts["uid"] == shown["uid"] and shown["state"] == "running"

    processes = tenant_processes(orch, "acme")
    assert len(processes) >= 2  # the master and at least one prefork child
    for pid, uid, status_text in processes:
        assert uid == shown["uid"], f"pid {pid} runs as uid {uid}"
        assert "NoNewPrivs:\t1" in status_text
        assert "CapEff:\t0000000000000000" in status_text
        assert "CapBnd:\t0000000000000000" in status_text
    assert shown["master_pid"] in [pid for pid, _, _ in processes]

    # The tenant keeps running after the orch that made it has exited.
    assert orch.show("acme")["guest"] == "running"


def test_second_converge_changes_nothing_and_keeps_the_master(orch):
    orch.create("idem")
    master = orch.show("idem")["master_pid"]

    config = config_mod.load(orch.env)
    env = dict(os.environ)
    os.environ["ORCH_HOME"] = str(orch.home)
    try:
        result = provision.converge(config, "idem")
    finally:
        os.environ.clear()
        os.environ.update(env)

    assert result["changed"] == 0, result["changed_tasks"]
    assert orch.show("idem")["master_pid"] == master


def test_two_tenants_are_kept_apart(orch):
    orch.create("alpha")
    orch.create("beta")
    a, b = orch.show("alpha"), orch.show("beta")

    for field in ("uid", "port", "address", "master_pid", "hostname"):
        assert a[field] != b[field], field
    assert "tenant alpha:" in orch.get("alpha.example.test")[1]
    assert "tenant beta:" in orch.get("beta.example.test")[1]

    # From the host, alpha's uid cannot get into beta's tree.
    beta_page = orch.home / "tenants" / "beta" / "root" / "srv" / "tenant" / "htdocs"
    denied = as_uid(a["uid"], "cat", str(beta_page / "index.html"))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr

    # Inside alpha's jail, as alpha, beta's files are not there and its address is not
    # reachable; alpha's own backend is.
    read = in_jail(a, "cat", str(beta_page / "index.html"))
    assert read.returncode != 0 and "No such file" in read.stderr
    probe = ("import socket,sys\n"
             "s=socket.socket(); s.settimeout(3)\n"
             "try:\n s.connect((sys.argv[1], int(sys.argv[2]))); print('connected')\n"
             "except OSError as e:\n print('refused', e)\n")
    to_beta = in_jail(a, "python3", "-c", probe, b["address"], str(b["port"]))
    assert to_beta.stdout.startswith("refused"), to_beta.stdout + to_beta.stderr
    to_self = in_jail(a, "python3", "-c", probe, a["address"], str(a["port"]))
    assert to_self.stdout.startswith("connected"), to_self.stdout + to_self.stderr


def test_proxy_sets_forwarding_headers_and_hides_the_backend(orch):
    orch.create("fwd", "fwd.example.test")
    shown = orch.show("fwd")

    status, body, _ = orch.get("fwd.example.test", headers={
        "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https"})
    assert status == 200
    assert "X-Forwarded-For: 127.0.0.1\n" in body
    assert "X-Forwarded-Host: fwd.example.test\n" in body
    assert "X-Forwarded-Proto: http\n" in body
    assert "Host: fwd.example.test\n" in body

    # A directory without its slash makes Apache redirect; the client must see the public
    # name and port, never the backend's address or port.
    in_jail(shown, "mkdir", "/srv/tenant/htdocs/docs").check_returncode()
    status, _, headers = orch.get("fwd.example.test", "/docs")
    assert status == 301
    location = headers["Location"]
    assert location == f"http://fwd.example.test:{orch.proxy_port}/docs/"
    assert shown["address"] not in location and str(shown["port"]) not in location

    status, body, _ = orch.get("unknown.example.test")
    assert status == 404 and "no site is served" in body


def test_a_refused_proxy_config_leaves_the_proxy_running(orch):
    orch.create("steady")
    proxy = FrontProxy(orch.config)
    master = proxy.pid()
    live = proxy.conf.read_text()

    with pytest.raises(ProxyError, match="nginx refused"):
        proxy.check(live.replace("worker_connections 1024;", "worker_connections;"))
    with pytest.raises(ProxyError):
        proxy.apply([Route("x", "x.example.test", "10.253.0.9", 99999)])

    assert proxy.pid() == master and proxy.conf.read_text() == live
    assert orch.get("steady.example.test")[0] == 200


def test_stop_and_start(orch):
    orch.create("cycle")
    uid = orch.show("cycle")["uid"]
    orch.run("stop", "cycle")
    assert tenant_processes(orch, "cycle") == []
    status, body, _ = orch.get("cycle.example.test")
    assert status == 503 and "stopped" in body

    orch.run("start", "cycle")
    status, body, _ = orch.get("cycle.example.test")
    assert status == 200 and f"uid={uid} " in body


def test_delete_leaves_nothing(orch):
    orch.create("gone")
    master = orch.show("gone")["master_pid"]

    code, result = orch.json("delete-tenant", "gone")
    assert code == 0 and result["deleted"] is True
    assert not _alive(master)
    assert orch.leftovers() == []
    assert orch.run("show", "gone", check=False).returncode == 2
    status, _, _ = orch.get("gone.example.test")
    assert status == 404

    again = orch.run("delete-tenant", "gone")
    assert again.returncode == 0


def _alive(pid):
    """True while pid runs; an exited process waiting for init to reap it does not count."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def test_failed_create_is_rolled_back(orch):
    # Something else holds the front proxy's port: the proxy step fails, and everything
    # made before it (root, network, cgroup, processes, record) is undone.
    import socket

    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", orch.proxy_port))
        squatter.listen()
        done = orch.run("create-tenant", "unlucky", "--hostname", "unlucky.example.test",
                        check=False)
    assert done.returncode == 1
    assert "tenant unlucky" in done.stderr and "step proxy" in done.stderr
    assert f"port {orch.proxy_port} is held" in done.stderr
    assert "rolled back" in done.stderr
    assert orch.leftovers() == []
    assert orch.json("list")[1]["tenants"] == []


@pytest.mark.parametrize("then", ["create", "delete"])
def test_killed_create_is_cleaned_up_later(orch, then):
    proc = subprocess.Popen(
        [str(ORCH), "create-tenant", "crash", "--hostname", "crash.example.test"],
        env=orch.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    root = orch.home / "tenants" / "crash" / "root"
    try:
        assert wait_for(lambda: os.path.ismount(root), timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # orch and the Ansible run it started
        proc.wait()
    assert orch.show("crash")["state"] == "creating"

    if then == "create":
        orch.create("crash")
        assert orch.get("crash.example.test")[0] == 200
        orch.run("delete-tenant", "crash")
    else:
        orch.run("delete-tenant", "crash")
    assert orch.leftovers() == []


def test_cli_runs_without_an_activated_environment(orch):
    # The venv's orch must find its own Ansible even when PATH does not name the venv.
    env = {**orch.env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    done = subprocess.run([str(ORCH), "create-tenant", "plain", "--hostname",
                           "plain.example.test"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "provision: done" in done.stderr  # plain progress lines when not on a terminal
    assert orch.get("plain.example.test")[0] == 200


def test_memory_cap_is_set_on_the_cgroup(orch):
    orch.create("capped", None, "--memory", "256M", "--max-clients", "4")
    groups = list(Path("/sys/fs/cgroup").glob(f"memory/{orch.cgroup_parent}/capped"))
    unified = Path("/sys/fs/cgroup") / orch.cgroup_parent / "capped"
    if groups:
        assert (groups[0] / "memory.limit_in_bytes").read_text().strip() == str(256 << 20)
    else:
        assert (unified / "memory.max").read_text().strip() == str(256 << 20)
    conf = orch.home / "tenants" / "capped" / "root" / "etc" / "apache2" / "orch" / "httpd.conf"
    assert "\nMaxRequestWorkers 4\n" in conf.read_text()
    assert orch.show("capped")["memory_limit_bytes"] == 256 << 20


def test_time_is_reported_per_step(orch):
    facts = orch.create("timed")
    steps = [t["step"] for t in facts["timings"]]
    assert steps == ["preflight", "image", "allocate", "create", "provision", "start", "proxy"]
    assert all(t["ok"] for t in facts["timings"])
    assert sys.executable  # the venv is the one running these tests
    assert time.time() > facts["created_at"]


def test_objects_made_by_someone_else_are_left_alone(orch):
    # A namespace in the way of the first address slot, and a folder where the tenant's
    # would go: create must neither use nor remove them.
    import ipaddress

    from .conftest import POOL

    first_guest = ipaddress.IPv4Network(POOL).network_address + 3
    theirs = f"orch-ot{int(first_guest) & 0xFFFFFF}"
    subprocess.run(["ip", "netns", "add", theirs], check=True)
    keep = orch.home / "tenants" / "clash" / "keep"
    keep.parent.mkdir(parents=True)
    keep.write_text("precious\n")
    try:
        done = orch.run("create-tenant", "clash", "--hostname", "clash.example.test",
                        check=False)
        assert done.returncode == 1 and "already exists" in done.stderr
        assert keep.read_text() == "precious\n"
        keep.unlink()
        keep.parent.rmdir()

        facts = orch.create("clash")
        assert facts["address"] != str(first_guest)
        assert Path(f"/run/netns/{theirs}").exists()
    finally:
        orch.run("delete-tenant", "clash", check=False)
        assert Path(f"/run/netns/{theirs}").exists()
        subprocess.run(["ip", "netns", "delete", theirs], check=True)


def test_a_tenant_cannot_open_connections_to_the_host(orch):
    import socket

    orch.create("closed")
    facts = orch.show("closed")
    host_end = str(int(facts["address"].rsplit(".", 1)[1]) - 1)
    host_end = facts["address"].rsplit(".", 1)[0] + "." + host_end
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        port = listener.getsockname()[1]
        probe = ("import socket,sys\ns=socket.socket(); s.settimeout(2)\n"
                 "try:\n s.connect((sys.argv[1], int(sys.argv[2]))); print('connected')\n"
                 "except OSError as e:\n print('refused', e)\n")
        done = in_jail(facts, "python3", "-c", probe, host_end, str(port))
    assert done.stdout.startswith("refused"), done.stdout + done.stderr
    assert orch.get("closed.example.test")[0] == 200  # answers still go back


def test_a_stale_proxy_pid_file_is_not_trusted(orch):
    orch.create("stale")
    proxy = FrontProxy(orch.config)
    orch.run("proxy", "stop")
    impostor = subprocess.Popen(["bash", "-c", "exec -a nginx sleep 60"])
    try:
        proxy.pidfile.write_text(f"{impostor.pid}\n")
        assert proxy.pid() is None
        orch.run("start", "stale")  # starts a real proxy instead of signalling the impostor
        assert impostor.poll() is None
        assert orch.get("stale.example.test")[0] == 200
    finally:
        impostor.kill()
        impostor.wait()
