"""A fake backend and a throwaway state directory for tests that touch nothing on the host."""

import pytest

from orchestrator import backends, config as config_mod
from orchestrator.backends.base import Backend


class FakeBackend(Backend):
    """Records what it was asked to do; `fail_at` makes one lifecycle call raise."""

    kind = "fake"
    fail_at = None
    calls = []

    def preflight(self):
        self._call("preflight")

    def ensure_image(self, progress=None):
        self._call("image")

    def create(self, tenant, record):
        record("fake_root", name=tenant.name)
        self._call("create", tenant.name)

    def start(self, tenant):
        self._call("start", tenant.name)

    def stop(self, tenant):
        self._call("stop", tenant.name)

    def destroy(self, tenant):
        for resource in reversed(self.store.resources(tenant.name)):
            if resource.kind == "fake_root":
                self.store.drop_resource(resource.id)
        self._call("destroy", tenant.name)

    def status(self, tenant):
        return "running"

    def ansible_host(self, tenant):
        return {"ansible_connection": "local"}

    def usage(self, tenant):
        return {"memory_current": 0, "memory_peak": 0, "processes": 0}

    def _call(self, what, *args):
        FakeBackend.calls.append((what, *args))
        if FakeBackend.fail_at == what:
            raise RuntimeError(f"fake {what} failed")


@pytest.fixture
def fake_backend(monkeypatch):
    FakeBackend.calls = []
    FakeBackend.fail_at = None
    monkeypatch.setitem(backends.REGISTRY, "fake", "tests.unit.conftest:FakeBackend")
    return FakeBackend


@pytest.fixture
def config(tmp_path):
    return config_mod.from_mapping(
        {"proxy": {"address": "127.0.0.1", "port": 18999}}, tmp_path / "home"
    )
