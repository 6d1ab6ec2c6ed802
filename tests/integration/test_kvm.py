"""The kvm backend end to end: a real libvirt domain under QEMU, its own kernel, the same
Ansible roles over SSH, and the same front proxy. Traffic reaches the guest only through
user-mode port forwards on a loopback address of this test's own pool."""

import re
import subprocess
import uuid
import xml.etree.ElementTree as ET

import pytest

from orchestrator.backends.kvm import NAMESPACE

from . import kvm_host

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.libvirt]


def _ssh(orch, name, facts, command):
    """A command in the guest as root, with the key and pinned host key orch made."""
    keys = orch.home / "kvm" / "keys" / name
    return subprocess.run(
        ["ssh", "-q", "-i", str(keys / "id_ed25519"), "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={keys / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
         "-p", "2222", f"root@{facts['address']}", command],
        capture_output=True, text=True, timeout=60,
    )


LEFT_BEHIND = """<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid>
<memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>"""


def test_a_kvm_tenant_answers_through_the_proxy_and_leaves_nothing(orch):
    # A domain of the tenant's name left behind (say, by a crash before orch recorded it):
    # the create takes it over under its UUID instead of failing.
    domain_name = f"{orch.domain_prefix}vm1"
    left_uuid = str(uuid.uuid4())
    kvm_host.define(LEFT_BEHIND.format(name=domain_name, uuid=left_uuid))

    facts = orch.create("vm1", "vm1.example.test", "--backend", "kvm")
    assert facts["backend"] == "kvm" and facts["state"] == "running"
    assert facts["address"].startswith("127.78.")

    status, body, _ = orch.get("vm1.example.test")
    assert status == 200, body
    assert f"hello from tenant vm1: uid={facts['uid']} " in body
    assert "mod_perl=mod_perl/2" in body

    # The handler ran inside the VM: the pid that answered is an Apache child there, under
    # the tenant's uid, started by the guest's own init.
    pid = re.search(r" pid=(\d+) ", body)[1]
    guest = _ssh(orch, "vm1", facts, f"stat -c %u /proc/{pid}; tr '\\0' ' ' < "
                 f"/proc/{pid}/cmdline; echo; uname -r; systemctl is-enabled orch-httpd; "
                 "systemctl is-enabled apache2")
    lines = guest.stdout.splitlines()
    assert len(lines) == 5, guest.stdout + guest.stderr
    assert lines[0] == str(facts["uid"])
    assert lines[1].startswith("/usr/sbin/apache2 -f /etc/apache2/orch/httpd.conf")
    assert lines[3:] == ["enabled", "masked"]

    persistent, autostart, active, xml = kvm_host.domain(domain_name)
    assert persistent and autostart and active
    root = ET.fromstring(xml)
    assert root.findtext("uuid") == left_uuid
    assert root.get("type") in ("kvm", "qemu")
    assert root.find(f"metadata/{{{NAMESPACE}}}tenant/{{{NAMESPACE}}}hostname").text == \
        "vm1.example.test"
    assert root.find("memory").get("unit") == "KiB"
    assert int(root.findtext("memory")) << 10 == facts["memory_limit_bytes"]
    tenant_volumes = [v for v in kvm_host.volumes(orch.kvm_pool)
                      if v.startswith(orch.domain_prefix)]
    assert sorted(tenant_volumes) == [f"{domain_name}-seed.img", f"{domain_name}.qcow2"]

    # Metering reads the domain's memory statistics.
    code, taken = orch.json("meter", "sample")
    sample = next(s for s in taken["samples"] if s["name"] == "vm1")
    assert 0 < sample["memory_current"] <= facts["memory_limit_bytes"]
    assert sample["processes"] > 5

    # tenant-config needs the host's view of the guest's files: refused, clearly.
    done = orch.run("tenant-config", "vm1", "-", check=False)
    assert done.returncode == 2 and "backend kvm" in done.stderr

    orch.run("delete-tenant", "vm1")
    assert kvm_host.domain(domain_name) is None
    assert not [v for v in kvm_host.volumes(orch.kvm_pool) if v.startswith(orch.domain_prefix)]
    # The base image's volumes stay for the next tenant.
    assert any(v.endswith(".qcow2") for v in kvm_host.volumes(orch.kvm_pool))
    assert not (orch.home / "kvm" / "keys" / "vm1").exists()
    assert orch.get("vm1.example.test")[0] == 404


def test_a_guest_that_does_not_boot_in_time_is_rolled_back_with_its_console(orch):
    config = orch.home / "config.toml"
    config.write_text(config.read_text() + "boot_timeout = 3\n")
    done = orch.run("create-tenant", "slow", "--hostname", "slow.example.test",
                    "--backend", "kvm", check=False)
    assert done.returncode == 1
    assert "tenant slow, step boot" in done.stderr
    assert "waited 3 s for SSH" in done.stderr and "console ends:" in done.stderr
    assert "rolled back" in done.stderr
    assert kvm_host.domains(orch.domain_prefix) == []
    assert orch.json("list")[1]["tenants"] == []


def test_an_unreachable_libvirt_is_refused_before_anything_is_made(orch):
    config = orch.home / "config.toml"
    config.write_text(config.read_text()
                      + 'uri = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"\n')
    done = orch.run("create-tenant", "novirt", "--hostname", "novirt.example.test",
                    "--backend", "kvm", check=False)
    assert done.returncode == 1
    assert "step preflight" in done.stderr and "cannot reach libvirt" in done.stderr
    assert "libvirtd -d" in done.stderr
    assert orch.json("list")[1]["tenants"] == []
