"""After a simulated reboot (every tenant process gone, roots unmounted, links and the
proxy gone) `orch boot` brings every tenant back under its own uid; `orch reconcile`
finds and repairs what is missing; the generated systemd units pass systemd-analyze."""

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from orchestrator.proxy import FrontProxy

from .conftest import tenant_processes, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]


def simulate_reboot(orch):
    """What a reboot takes away, done to exactly this test's tenants, by pid and path."""
    for tenant in orch.json("list")[1]["tenants"]:
        for pid, _, _ in tenant_processes(orch, tenant["name"]):
            with contextlib.suppress(ProcessLookupError):  # a child that ended meanwhile
                os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda name=tenant["name"]: not tenant_processes(orch, name))
        root = orch.home / "tenants" / tenant["name"] / "root"
        subprocess.run(["umount", "--", str(root)], check=True)
        index = int(ipaddress.IPv4Address(tenant["address"])) & 0xFFFFFF
        subprocess.run(["ip", "netns", "delete", f"orch-ot{index}"], check=True)
    FrontProxy(orch.config).stop()


def test_boot_brings_every_tenant_back(orch):
    orch.create("bootone")
    orch.create("boottwo")
    uids = {name: orch.show(name)["uid"] for name in ("bootone", "boottwo")}
    simulate_reboot(orch)
    with pytest.raises(OSError):
        orch.get("bootone.example.test")  # the proxy went with the "reboot"

    code, doc = orch.json("boot")
    assert code == 0
    assert [r["result"] for r in doc["tenants"]] == ["started", "started"]
    for name, uid in uids.items():
        status, body, _ = orch.get(f"{name}.example.test")
        assert status == 200 and f"tenant {name}: uid={uid} " in body
        assert {u for _, u, _ in tenant_processes(orch, name)} == {uid}

    code, doc = orch.json("boot")  # everything is up: nothing to do
    assert [r["result"] for r in doc["tenants"]] == ["running", "running"]


def test_a_tenant_cannot_take_another_ones_port_whatever_the_order(orch):
    thief = orch.create("thief")  # made first, so booted first
    victim = orch.create("victim")
    live = orch.home / "tenants" / "thief" / "root" / "etc/apache2/orch/tenant.conf"
    # Written behind orch's checks, as a tampered guest would: the policy refuses Listen.
    live.write_text(f"Listen {victim['address']}:{victim['port']}\n")
    simulate_reboot(orch)

    code, doc = orch.json("boot", check=False)
    results = {r["name"]: r for r in doc["tenants"]}
    assert code == 1 and results["thief"]["result"] == "failed"
    assert results["victim"]["result"] == "started"
    status, body, _ = orch.get("victim.example.test")
    assert status == 200 and f"tenant victim: uid={victim['uid']} " in body
    assert tenant_processes(orch, "thief") == []

    live.write_text("")
    code, doc = orch.json("boot")
    assert {r["name"]: r["result"] for r in doc["tenants"]}["thief"] == "started"
    assert orch.get("thief.example.test")[0] == 200
    assert thief["uid"] != victim["uid"]


def test_reconcile_finds_and_repairs(orch):
    orch.create("drifty")
    master = orch.show("drifty")["master_pid"]
    os.kill(master, signal.SIGKILL)
    assert wait_for(lambda: orch.show("drifty")["guest"] == "stopped")
    FrontProxy(orch.config).stop()

    code, doc = orch.json("reconcile")
    reports = {r["name"]: r for r in doc["tenants"]}
    assert "Apache is not running" in reports["drifty"]["found"]
    assert reports["drifty"]["done"] and "(front proxy)" in reports
    assert orch.get("drifty.example.test")[0] == 200

    code, doc = orch.json("reconcile")
    assert [r["found"] for r in doc["tenants"]] == [[]]


def test_a_master_without_answering_children_is_restarted(orch):
    orch.create("hollow")
    master = orch.show("hollow")["master_pid"]
    hung = [pid for pid, _, _ in tenant_processes(orch, "hollow")]
    for pid in hung:  # alive, in its cgroup, but no worker answers
        os.kill(pid, signal.SIGSTOP)
    try:
        code, doc = orch.json("reconcile")
        reports = {r["name"]: r for r in doc["tenants"]}
        assert "Apache runs but does not answer" in reports["hollow"]["found"]
    finally:
        for pid in hung:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert orch.show("hollow")["master_pid"] != master
    assert orch.get("hollow.example.test")[0] == 200


def test_stop_for_shutdown_keeps_the_tenant_for_boot(orch):
    orch.create("keeper")
    orch.run("stop", "--keep-state", "keeper")
    assert orch.show("keeper")["state"] == "running"
    assert tenant_processes(orch, "keeper") == []
    assert orch.json("boot")[1]["tenants"][0]["result"] == "started"


def test_generated_units_pass_systemd_analyze(orch, tmp_path):
    orch.create("unit")
    units = tmp_path / "units"
    code, doc = orch.json("systemd-units", "--dir", str(units))
    assert code == 0
    assert (units / "orch.target.wants" / "orch-tenant@unit.service").is_symlink()
    instance = units / "orch-tenant@unit.service"
    instance.symlink_to("orch-tenant@.service")
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(instance),
         str(units / "orch-proxy.service"), str(units / "orch.target"),
         str(units / "orch-scheduler.service"), str(units / "orch-scheduler.timer")],
        capture_output=True, text=True,
    )
    problems = [line for line in done.stderr.splitlines() if str(units) in line]
    assert done.returncode == 0 and not problems, done.stderr
    text = (units / "orch-tenant@.service").read_text()
    assert f"ORCH_HOME={orch.home}" in text and "stop --keep-state %i" in text
    assert json.loads(json.dumps(doc))["files"]
    assert Path(doc["dir"]) == units
