"""The kvm backend's pure parts: its domain XML, its settings and its KVM probe verdicts."""

import subprocess
import xml.etree.ElementTree as ET

import pytest

from orchestrator import accel, config as config_mod
from orchestrator.backends import backend_class
from orchestrator.backends.kvm import NAMESPACE, KvmBackend
from orchestrator.errors import ConfigError
from orchestrator.state import Tenant


def _tenant(**overrides):
    facts = {"name": "vm1", "backend": "kvm", "state": "creating", "uid": 70001,
             "port": 20001, "address": "127.77.0.3", "host_address": "127.77.0.2",
             "link_index": 3, "hostname": "vm1.example.test", "memory_limit_bytes": 512 << 20,
             "max_clients": 8, "autostart": True, "ansible_vars": {}, "failure": None,
             "created_at": 0.0, "updated_at": 0.0, "child_size_bytes": None}
    return Tenant(**{**facts, **overrides})


def _xml(raw, tmp_path, tenant=None):
    config = config_mod.from_mapping({"kvm": {"accel": "qemu", **raw}}, tmp_path / "home")
    backend = KvmBackend(config, store=None)
    text = backend.domain_xml(tenant or _tenant(), "6f1c7c64-5d1e-4a57-9d55-1b2f0f2a9e01",
                              "vm-0123", {"kernel": "/p/vmlinuz", "initrd": "/p/initrd"})
    return ET.fromstring(text)


def test_the_domain_carries_the_spec_and_orchs_facts(tmp_path):
    root = _xml({"vcpus": 2}, tmp_path)
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "orch-vm1"
    assert int(root.findtext("memory")) == 512 << 20
    assert root.findtext("vcpu") == "2"
    assert root.findtext("os/kernel") == "/p/vmlinuz"
    facts = root.find(f"metadata/{{{NAMESPACE}}}tenant")
    assert facts.findtext(f"{{{NAMESPACE}}}hostname") == "vm1.example.test"
    assert facts.findtext(f"{{{NAMESPACE}}}port") == "20001"
    disks = [d.find("source").get("volume") for d in root.findall("devices/disk")]
    assert disks == ["orch-vm1.qcow2", "orch-vm1-seed.img"]


def test_user_networking_forwards_only_the_tenants_ports_on_its_loopback_address(tmp_path):
    root = _xml({}, tmp_path)
    args = [a.get("value") for a in root.iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]
    netdev = args[args.index("-netdev") + 1]
    assert "restrict=on" in netdev
    assert "hostfwd=tcp:127.77.0.3:20001-:20001" in netdev
    assert "hostfwd=tcp:127.77.0.3:2222-:22" in netdev
    assert root.find("devices/interface") is None


def test_a_bridged_guest_has_no_user_network(tmp_path):
    root = _xml({"network": "bridge", "bridge": "br0"}, tmp_path)
    assert root.find("devices/interface/source").get("bridge") == "br0"
    assert root.find("{http://libvirt.org/schemas/domain/qemu/1.0}commandline") is None


def test_names_are_escaped_in_the_xml(tmp_path):
    root = _xml({}, tmp_path, _tenant(hostname="a&b.example.test"))
    assert root.findtext("title") == "orch tenant vm1 (a&b.example.test)"


@pytest.mark.parametrize("raw", [
    {"accel": "fast"},
    {"network": "nat"},
    {"network": "bridge"},
    {"network": "bridge", "bridge": "br0; rm"},
    {"loopback_pool": "10.0.0.0/24"},
    {"loopback_pool": "127.0.0.0/31"},
    {"ssh_port": 20002},
    {"ssh_port": 0},
    {"vcpus": 0},
    {"disk_size": "1G"},
    {"pool": "a/b"},
    {"domain_prefix": ""},
    {"pool_path": "relative"},
    {"outbound": "yes"},
    {"boot_timeout": 0},
])
def test_bad_kvm_settings_are_refused(tmp_path, raw):
    with pytest.raises(ConfigError, match=r"\[kvm\]"):
        config_mod.from_mapping({"kvm": raw}, tmp_path / "home")


def test_the_kvm_backend_is_registered():
    assert backend_class("kvm") is KvmBackend


def test_the_probe_accepts_a_kernel_that_reached_its_root_mount(monkeypatch, tmp_path):
    def panicked(argv, **kwargs):
        assert argv[:3] == [accel.QEMU, "-accel", "kvm"]
        return subprocess.CompletedProcess(argv, 0, "Kernel panic - not syncing: VFS", "")

    monkeypatch.setattr(accel.subprocess, "run", panicked)
    assert accel.probe(tmp_path / "vmlinuz")[0] is True


def test_the_probe_refuses_a_kernel_that_printed_nothing(monkeypatch, tmp_path):
    def hung(argv, **kwargs):
        raise subprocess.TimeoutExpired(argv, kwargs["timeout"], output=b"")

    monkeypatch.setattr(accel.subprocess, "run", hung)
    works, detail = accel.probe(tmp_path / "vmlinuz", seconds=1)
    assert works is False and "no sign of the kernel" in detail


class _LeftDomain:
    """A defined domain as libvirt reports it, with or without orch's facts."""

    def __init__(self, active=False, home=None):
        self.active, self.home = active, home

    def name(self):
        return "orch-vm1"

    def isActive(self):
        return self.active

    def metadata(self, kind, uri):
        import libvirt

        if self.home is None:
            raise libvirt.libvirtError("no metadata")
        return f'<orch:tenant xmlns:orch="{uri}"><orch:home>{self.home}</orch:home></orch:tenant>'


def test_a_left_domain_is_taken_over_only_when_stopped_and_not_anothers(tmp_path):
    from orchestrator.errors import StepFailed

    config = config_mod.from_mapping({}, tmp_path / "home")
    backend = KvmBackend(config, store=None)
    backend._check_takeover(_tenant(), _LeftDomain())
    backend._check_takeover(_tenant(), _LeftDomain(home=str(config.home)))
    with pytest.raises(StepFailed, match="running domain orch-vm1"):
        backend._check_takeover(_tenant(), _LeftDomain(active=True))
    with pytest.raises(StepFailed, match="belongs to the orch state directory /elsewhere"):
        backend._check_takeover(_tenant(), _LeftDomain(home="/elsewhere"))
