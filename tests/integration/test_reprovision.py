"""`orch reprovision`: drift reported with --check, removed without it, and a second run
that changes nothing and keeps every Apache master process; a guest whose root a reboot
unmounted is restored before it is converged."""

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess

import pytest

from .conftest import in_jail, tenant_processes, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

HANDLER = "usr/local/share/orch/perl/OrchDemo/Hello.pm"
MAIN = "etc/apache2/orch/httpd.conf"


@pytest.fixture(scope="module")
def fleet(orch_module):
    orch_module.create("rone")
    orch_module.create("rtwo")
    return orch_module


def root(orch, name):
    return orch.home / "tenants" / name / "root"


def again(orch, *args):
    done = orch.run("reprovision", *args, "--json", check=False)
    return done.returncode, {r["name"]: r for r in json.loads(done.stdout)["tenants"]}


def masters(orch):
    return {name: orch.show(name)["master_pid"] for name in ("rone", "rtwo")}


def test_a_converged_fleet_reports_nothing_changed(fleet):
    before = masters(fleet)
    code, reports = again(fleet, "--all")
    assert code == 0
    assert all(r["changed"] == [] and r["actions"] == [] for r in reports.values()), reports
    assert masters(fleet) == before


def test_drift_is_reported_then_removed(fleet):
    before = masters(fleet)
    (root(fleet, "rone") / HANDLER).unlink()
    main = root(fleet, "rtwo") / MAIN
    workers = f"MaxRequestWorkers {fleet.show('rtwo')['max_clients']}"
    main.write_text(main.read_text().replace(workers, "MaxRequestWorkers 200"))

    code, reports = again(fleet, "--all", "--check")
    assert code == 0
    assert "Install the demo mod_perl handler" in reports["rone"]["changed"]
    assert "Write the operator's main httpd.conf" in reports["rtwo"]["changed"]
    diff = "".join(d["diff"] for d in reports["rtwo"]["diffs"])
    assert "-MaxRequestWorkers 200" in diff and f"+{workers}" in diff
    assert not (root(fleet, "rone") / HANDLER).exists()  # --check changed nothing
    assert "MaxRequestWorkers 200" in main.read_text()
    assert masters(fleet) == before

    code, reports = again(fleet, "--all")
    assert code == 0, reports
    assert (root(fleet, "rone") / HANDLER).exists()
    assert f"{workers}\n" in main.read_text()
    assert any("graceful" in a for a in reports["rtwo"]["actions"])
    assert fleet.get("rone.example.test")[0] == 200
    assert fleet.get("rtwo.example.test")[0] == 200
    assert masters(fleet) == before  # graceful restarts keep the master

    code, reports = again(fleet, "--all")
    assert all(r["changed"] == [] and r["actions"] == [] for r in reports.values()), reports
    assert masters(fleet) == before
    shown = fleet.show("rtwo")["last_converge"]
    assert shown["changed"] == [] and shown["failure"] is None


def test_a_stopped_apache_is_started(fleet):
    master = fleet.show("rone")["master_pid"]
    os.kill(master, signal.SIGKILL)
    assert wait_for(lambda: fleet.show("rone")["guest"] == "stopped")
    code, reports = again(fleet, "--check", "rone")
    assert "Apache is not running" in reports["rone"]["drift"]
    code, reports = again(fleet, "rone")
    assert code == 0 and any("started Apache" in a for a in reports["rone"]["actions"])
    assert fleet.get("rone.example.test")[0] == 200


def test_a_removed_package_is_installed_again(fleet):
    chroot = ["chroot", str(root(fleet, "rtwo"))]
    subprocess.run([*chroot, "dpkg", "--remove", "--force-depends", "libapache2-mod-perl2"],
                   check=True, capture_output=True)
    code, reports = again(fleet, "--check", "rtwo")
    assert any("Install the missing packages" in t for t in reports["rtwo"]["changed"])
    code, reports = again(fleet, "rtwo")
    assert code == 0, reports
    status = subprocess.run([*chroot, "dpkg-query", "-W", "-f=${db:Status-Status}",
                             "libapache2-mod-perl2"], capture_output=True, text=True)
    assert status.stdout == "installed"
    assert fleet.get("rtwo.example.test")[0] == 200


def test_the_tenants_draft_is_checked_and_set_aside_when_bad(fleet):
    facts = fleet.show("rtwo")
    draft = "/srv/tenant/conf/httpd.conf"
    in_jail(facts, "tee", draft, input_text="Listen 9999\n").check_returncode()
    code, reports = again(fleet, "rtwo")
    assert code == 0
    assert any("set the draft fragment aside" in a for a in reports["rtwo"]["actions"])
    reason = in_jail(facts, "cat", draft + ".quarantined.reason").stdout
    assert "Listen" in reason
    assert in_jail(facts, "test", "-e", draft).returncode != 0
    assert fleet.show("rtwo")["master_pid"] == facts["master_pid"]

    in_jail(facts, "tee", draft, input_text="AddType text/x-orch .orch\n").check_returncode()
    code, reports = again(fleet, "rtwo")
    assert any("draft fragment went live" in a for a in reports["rtwo"]["actions"])
    shown = json.loads(fleet.run("tenant-config", "rtwo", "--show", "--json").stdout)
    assert shown["fragment"] == "AddType text/x-orch .orch\n"
    assert fleet.show("rtwo")["master_pid"] == facts["master_pid"]


def test_one_failing_tenant_does_not_stop_the_others(fleet):
    # A file where the role keeps a folder fails rone's converge only.
    folder = root(fleet, "rone") / "usr/local/share/orch/perl/OrchDemo"
    shutil.rmtree(folder)
    folder.write_text("not a folder\n")
    try:
        code, reports = again(fleet, "--all")
        assert code == 1
        assert "already exists as a file" in (reports["rone"]["failure"] or ""), reports
        assert reports["rtwo"]["failure"] is None
        assert fleet.get("rtwo.example.test")[0] == 200
        assert fleet.get("rone.example.test")[0] == 200  # still serving what it had
    finally:
        folder.unlink()
    code, reports = again(fleet, "rone")
    assert code == 0 and fleet.get("rone.example.test")[0] == 200


def test_a_guest_unmounted_by_a_reboot_is_restored_then_converged(fleet):
    facts = fleet.show("rone")
    for pid, _, _ in tenant_processes(fleet, "rone"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not tenant_processes(fleet, "rone"))
    subprocess.run(["umount", "--", str(root(fleet, "rone"))], check=True)
    index = int(ipaddress.IPv4Address(facts["address"])) & 0xFFFFFF
    subprocess.run(["ip", "netns", "delete", f"orch-ot{index}"], check=True)

    code, reports = again(fleet, "--check", "rone")
    assert code == 0
    drift = reports["rone"]["drift"]
    assert any("(a host reboot?): root mount, network;" in d for d in drift), reports
    assert not os.path.ismount(root(fleet, "rone"))  # --check changed nothing

    code, reports = again(fleet, "rone")
    assert code == 0, reports
    actions = reports["rone"]["actions"]
    assert any("restored what the guest was missing (root mount, network)" in a
               for a in actions), actions
    assert any("started Apache" in a for a in actions), actions
    status, body, _ = fleet.get("rone.example.test")
    assert status == 200 and f"tenant rone: uid={facts['uid']} " in body
    assert {uid for _, uid, _ in tenant_processes(fleet, "rone")} == {facts["uid"]}
