"""create/delete with a fake backend: rollback and record-keeping, nothing on the host."""

import pytest

from orchestrator import provision, tenants
from orchestrator.errors import StepFailed
from orchestrator.spec import TenantSpec


@pytest.fixture
def host(config, fake_backend, monkeypatch):
    monkeypatch.setattr(tenants.capacity, "host_memory_bytes", lambda: 64 << 30)
    monkeypatch.setattr(tenants, "wait_healthy", lambda host, tenant: "ok")
    monkeypatch.setattr(tenants, "check_through_proxy", lambda host, tenant: None)
    applied = []
    monkeypatch.setattr(tenants.FrontProxy, "apply",
                        lambda self, routes, tenant=None, start=True: applied.append(
                            sorted(r.name for r in routes)))
    host = tenants.Host(config)
    host.applied = applied
    yield host
    host.close()


def spec(name="acme"):
    return TenantSpec(name, f"{name}.example.test", backend="fake")


def test_create_runs_every_step_in_order(host, fake_backend, monkeypatch):
    converged = []
    monkeypatch.setattr(provision, "converge", lambda c, name, progress=None: converged.append(
        name) or {"changed": 3})
    tenant = tenants.create(host, spec())
    assert tenant.state == "running"
    assert [c[0] for c in fake_backend.calls] == ["preflight", "image", "create", "start"]
    assert converged == ["acme"]
    assert host.applied == [["acme"]]
    kinds = [r.kind for r in host.store.resources("acme")]
    assert kinds == ["fake_root", "proxy_route"]


@pytest.mark.parametrize("fail_at", ["create", "start"])
def test_a_failed_step_undoes_everything(host, fake_backend, monkeypatch, fail_at):
    monkeypatch.setattr(provision, "converge", lambda c, name, progress=None: {"changed": 0})
    fake_backend.fail_at = fail_at
    with pytest.raises(StepFailed) as caught:
        tenants.create(host, spec())
    assert caught.value.step == fail_at and caught.value.tenant == "acme"
    assert "rolled back" in caught.value.message
    assert ("destroy", "acme") in fake_backend.calls
    assert host.store.get("acme") is None
    assert host.store.resources("acme") == []


def test_failed_provision_is_rolled_back_and_names_the_step(host, fake_backend, monkeypatch):
    def broken(config, name, progress=None):
        raise provision.ProvisionError("task 'x' failed: boom")

    monkeypatch.setattr(provision, "converge", broken)
    with pytest.raises(provision.ProvisionError) as caught:
        tenants.create(host, spec())
    assert caught.value.step == "provision" and "boom" in str(caught.value)
    assert host.store.get("acme") is None


def test_an_interrupted_create_is_cleaned_by_the_next(host, fake_backend, monkeypatch):
    monkeypatch.setattr(provision, "converge", lambda c, name, progress=None: {"changed": 0})
    from orchestrator import allocate

    left = allocate.allocate(host.store, spec(), host.config, lambda uid: False)
    host.store.add_resource(left.name, "fake_root", name=left.name)
    tenant = tenants.create(host, spec())
    assert tenant.state == "running"
    assert fake_backend.calls.count(("destroy", "acme")) == 1


def test_delete_twice_is_harmless(host, fake_backend, monkeypatch):
    monkeypatch.setattr(provision, "converge", lambda c, name, progress=None: {"changed": 0})
    tenants.create(host, spec())
    assert tenants.delete(host, "acme") is True
    assert host.applied[-1] == []
    assert tenants.delete(host, "acme") is False
    assert host.store.tenants() == []


def test_admission_refuses_past_the_budget(host, fake_backend, monkeypatch):
    monkeypatch.setattr(tenants.capacity, "host_memory_bytes", lambda: 2 << 30)
    big = TenantSpec("big", "big.example.test", backend="fake", memory_limit_bytes=2 << 30)
    with pytest.raises(tenants.capacity.CapacityError, match="budget"):
        tenants.create(host, big)
    assert host.store.get("big") is None


def test_a_delete_that_cannot_reach_the_backend_changes_nothing(host, fake_backend, monkeypatch):
    from orchestrator.errors import PreflightError

    monkeypatch.setattr(provision, "converge", lambda c, name, progress=None: {"changed": 0})
    tenants.create(host, spec())
    routes_before = list(host.applied)

    def unreachable(self):
        raise PreflightError("cannot reach the daemon", step="preflight")

    monkeypatch.setattr(fake_backend, "reachable", unreachable)
    with pytest.raises(PreflightError):
        tenants.delete(host, "acme")
    assert host.store.get("acme").state == "running"
    assert host.applied == routes_before
    assert ("destroy", "acme") not in fake_backend.calls
