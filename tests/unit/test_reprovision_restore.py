"""reprovision restores a guest a reboot took apart before Ansible needs it (fake backend)."""

import pytest

from orchestrator import provision, reprovision, tenants
from orchestrator.errors import StepFailed
from orchestrator.spec import TenantSpec

from .conftest import FakeBackend


class RebootedBackend(FakeBackend):
    """A fake whose guests have lost their root and network until `restore` runs."""

    missing = {}
    broken = set()

    def restore(self, tenant, check=False):
        if tenant.name in RebootedBackend.broken:
            raise StepFailed("the base image is missing", tenant=tenant.name, step="restore")
        found = RebootedBackend.missing.get(tenant.name, [])
        if not check:
            RebootedBackend.missing[tenant.name] = []
            self._call("restore", tenant.name)
        return found


@pytest.fixture
def host(config, fake_backend, monkeypatch):
    from orchestrator import backends

    monkeypatch.setitem(backends.REGISTRY, "fake",
                        "tests.unit.test_reprovision_restore:RebootedBackend")
    RebootedBackend.missing, RebootedBackend.broken = {}, set()
    monkeypatch.setattr(tenants.capacity, "host_memory_bytes", lambda: 64 << 30)
    monkeypatch.setattr(tenants, "wait_healthy", lambda host, tenant: "ok")
    monkeypatch.setattr(tenants, "check_through_proxy", lambda host, tenant: None)
    monkeypatch.setattr(tenants.FrontProxy, "apply", lambda self, routes, **kw: None)
    monkeypatch.setattr(provision, "converge", lambda *a, **k: {"changed": 0})
    host = tenants.Host(config)
    for name in ("alpha", "beta"):
        tenants.create(host, TenantSpec(name, f"{name}.example.test", backend="fake"))
    runs = []

    def converge_many(config, names, check=False, **kw):
        runs.append((list(names), check))
        assert all(not RebootedBackend.missing.get(n) for n in names) or check
        return {n: provision.HostResult(n, seen=True) for n in names}
    monkeypatch.setattr(provision, "converge_many", converge_many)
    monkeypatch.setattr(reprovision, "_settle", lambda host, tenant, result, report: None)
    monkeypatch.setattr(reprovision, "_check_guest", lambda host, tenant, report: None)
    host.runs = runs
    yield host
    host.close()


def test_a_plain_run_restores_first_and_says_so(host):
    RebootedBackend.missing["alpha"] = ["root mount", "network"]
    reports = {r["name"]: r for r in reprovision.reprovision(host, ["alpha", "beta"])}
    assert reports["alpha"]["actions"][0].startswith(
        "restored what the guest was missing (root mount, network)")
    assert reports["beta"]["actions"] == []
    assert host.runs == [(["alpha", "beta"], False)]


def test_check_reports_it_and_leaves_the_guest_out(host):
    RebootedBackend.missing["alpha"] = ["root mount"]
    reports = {r["name"]: r for r in reprovision.reprovision(host, ["alpha", "beta"],
                                                             check=True)}
    assert "(a host reboot?): root mount;" in reports["alpha"]["drift"][0]
    assert host.runs == [(["beta"], True)]
    assert RebootedBackend.missing["alpha"] == ["root mount"]  # nothing was changed


def test_a_guest_that_cannot_be_restored_fails_alone(host):
    RebootedBackend.broken.add("alpha")
    reports = {r["name"]: r for r in reprovision.reprovision(host, ["alpha", "beta"])}
    assert "the base image is missing" in reports["alpha"]["failure"]
    assert reports["beta"]["failure"] is None and host.runs == [(["beta"], False)]
    assert host.store.last_converge("alpha")["failure"] == reports["alpha"]["failure"]
