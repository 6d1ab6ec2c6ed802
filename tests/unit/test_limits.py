"""cgroup handling against a fake cgroup tree, in both layouts."""

import pytest

from orchestrator import limits
from orchestrator.errors import PreflightError, StepFailed


def make_v1(root):
    for controller in ("memory", "pids"):
        (root / controller).mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text("max\n")
    return root


def make_v2(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_layouts_are_told_apart(tmp_path):
    assert limits.detect_layout(make_v1(tmp_path / "a")) == "v1"
    assert limits.detect_layout(make_v2(tmp_path / "b")) == "v2"
    assert limits.detect_layout(tmp_path / "none") is None


def test_v1_caps_memory_without_swap_and_processes(tmp_path):
    root = make_v1(tmp_path)
    group = limits.TenantCgroup("orch", "acme", root=root)
    # The fake tree has no kernel files; make the ones a real kernel would.
    for d in group.dirs():
        d.mkdir(parents=True)
    (group.dirs()[0] / "memory.memsw.limit_in_bytes").write_text("")
    (root / "cpuacct" / "orch" / "acme").mkdir(parents=True)
    (root / "cpuacct" / "orch" / "acme" / "cpu.shares").write_text("1024\n")
    group = limits.TenantCgroup("orch", "acme", root=root)
    group.create(256 << 20, 48, cpu_weight=200)
    assert (root / "cpuacct" / "orch" / "acme" / "cpu.shares").read_text() == "2048\n"
    memory, pids = group.dirs()[:2]
    assert (memory / "memory.limit_in_bytes").read_text() == f"{256 << 20}\n"
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == f"{256 << 20}\n"
    assert (pids / "pids.max").read_text() == "48\n"
    assert group.procs_files()[:2] == [memory / "cgroup.procs", pids / "cgroup.procs"]


def test_v2_enables_controllers_and_sets_caps(tmp_path):
    root = make_v2(tmp_path)
    group = limits.TenantCgroup("orch", "acme", root=root)
    group.dirs()[0].mkdir(parents=True)
    (group.dirs()[0] / "memory.swap.max").write_text("max\n")
    (group.dirs()[0] / "cpu.weight").write_text("100\n")
    group.create(128 << 20, 64, cpu_weight=50)
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids +cpu\n"
    assert (root / "orch" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu\n"
    assert (group.dirs()[0] / "cpu.weight").read_text() == "50\n"
    assert (group.dirs()[0] / "memory.max").read_text() == f"{128 << 20}\n"
    assert (group.dirs()[0] / "memory.swap.max").read_text() == "0\n"
    assert (group.dirs()[0] / "pids.max").read_text() == "64\n"


def test_pids_are_read_from_every_controller(tmp_path):
    root = make_v1(tmp_path)
    group = limits.TenantCgroup("orch", "acme", root=root)
    for d in group.dirs():
        d.mkdir(parents=True)
    (group.dirs()[0] / "cgroup.procs").write_text("10\n11\n")
    (group.dirs()[1] / "cgroup.procs").write_text("11\n12\n")
    assert group.pids() == {10, 11, 12}


def test_process_cap_grows_with_workers():
    assert limits.pids_for(1) == 64
    assert limits.pids_for(100) == 416


def test_cpu_quotas_are_read_as_systemd_writes_them():
    assert limits.parse_cpu_quota("50%") == 0.5
    assert limits.parse_cpu_quota("250%") == 2.5
    assert limits.parse_cpu_quota(2) == 2.0
    assert limits.parse_cpu_quota("1.5") == 1.5
    assert limits.quota_us(0.5) == 50_000
    for bad in ("half", "0%", "-1", "5000"):
        with pytest.raises(ValueError):
            limits.parse_cpu_quota(bad)


def test_v1_cpu_quota_is_quota_over_period(tmp_path):
    root = make_v1(tmp_path)
    (root / "cpu").mkdir()
    group = limits.TenantCgroup("orch", "acme", root=root)
    cpu = group.dirs()[2]
    cpu.mkdir(parents=True)
    for name, value in (("cpu.cfs_quota_us", "-1"), ("cpu.cfs_period_us", "100000"),
                        ("cpu.shares", "1024")):
        (cpu / name).write_text(value + "\n")
    group.create(256 << 20, 48, cpu_quota=0.5)
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000\n"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000\n"
    assert group.cpu_quota() == 0.5
    group.set_cpu_quota(None)
    assert (cpu / "cpu.cfs_quota_us").read_text() == "-1\n"
    assert group.cpu_quota() is None


def test_v2_cpu_quota_is_cpu_max(tmp_path):
    root = make_v2(tmp_path)
    group = limits.TenantCgroup("orch", "acme", root=root)
    group.dirs()[0].mkdir(parents=True)
    (group.dirs()[0] / "cpu.max").write_text("max 100000\n")
    group.create(128 << 20, 64, cpu_quota=2)
    assert (group.dirs()[0] / "cpu.max").read_text() == "200000 100000\n"
    assert group.cpu_quota() == 2.0


def test_a_cpu_quota_without_the_cpu_controller_is_refused(tmp_path):
    root = make_v1(tmp_path)
    group = limits.TenantCgroup("orch", "acme", root=root)
    with pytest.raises(StepFailed, match="cpu controller") as caught:
        group.create(128 << 20, 64, cpu_quota=1)
    assert caught.value.tenant == "acme" and "cpu_quota" in caught.value.fix
    with pytest.raises(PreflightError, match="cpu_quota"):
        limits.preflight(root, cpu_quota=True)
    assert limits.preflight(root) == "v1"
    v2 = make_v2(tmp_path / "v2")
    (v2 / "cgroup.controllers").write_text("memory pids\n")
    with pytest.raises(PreflightError, match="cpu_quota"):
        limits.preflight(v2, cpu_quota=True)
