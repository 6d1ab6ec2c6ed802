"""The rolling move onto a base image, with a fake backend: one tenant at a time, and a
tenant whose check fails goes back to its old image while the others move on."""

import pytest

from orchestrator import rollout, tenants
from orchestrator.errors import StepFailed

from .conftest import FakeBackend


class ImageBackend(FakeBackend):
    """A fake backend whose guests sit on a base image that can be changed."""

    can_change_image = True
    lowers = {}
    running = set()

    def create(self, tenant, record):
        super().create(tenant, record)
        ImageBackend.lowers[tenant.name] = self.config.images_dir / "old" / "rootfs"
        ImageBackend.running.add(tenant.name)

    def start(self, tenant):
        ImageBackend.running.add(tenant.name)
        self._call("start", tenant.name)

    def stop(self, tenant):
        ImageBackend.running.discard(tenant.name)
        self._call("stop", tenant.name)

    def status(self, tenant):
        return "running" if tenant.name in ImageBackend.running else "stopped"

    def restore(self, tenant, check=False):
        return []

    def image_of(self, tenant):
        return ImageBackend.lowers[tenant.name]

    def change_image(self, tenant, rootfs):
        assert tenant.name not in ImageBackend.running, "changed under a running guest"
        ImageBackend.lowers[tenant.name] = rootfs
        self._call("image", tenant.name, rootfs.parent.name)
        return []


@pytest.fixture
def host(config, fake_backend, monkeypatch):
    from orchestrator import backends

    monkeypatch.setitem(backends.REGISTRY, "fake", "tests.unit.test_rollout:ImageBackend")
    ImageBackend.lowers, ImageBackend.running = {}, set()
    for image_id in ("old", "new"):
        (config.images_dir / image_id / "rootfs").mkdir(parents=True)
    monkeypatch.setattr(rollout.images, "resolve", lambda config, name: name)
    monkeypatch.setattr(tenants.capacity, "host_memory_bytes", lambda: 64 << 30)
    monkeypatch.setattr(tenants, "wait_healthy", lambda host, tenant: "ok")
    monkeypatch.setattr(tenants, "check_through_proxy", lambda host, tenant: None)
    monkeypatch.setattr(tenants.FrontProxy, "apply", lambda self, routes, **kw: None)
    converged = []
    monkeypatch.setattr(rollout.provision, "converge", lambda config, name, progress=None:
                        converged.append((name, ImageBackend.lowers[name].parent.name))
                        or {"changed": 1, "changed_tasks": ["Write a file"], "diffs": []})
    host = tenants.Host(config)
    host.converged = converged
    for name in ("alpha", "beta", "gamma"):
        tenants.create(host, _spec(name))
    FakeBackend.calls = []
    converged.clear()
    yield host
    host.close()


def _spec(name):
    from orchestrator.spec import TenantSpec

    return TenantSpec(name, f"{name}.example.test", backend="fake")


def test_each_tenant_moves_in_turn(host):
    reports = rollout.move(host, ["gamma", "alpha", "beta"], "new")
    assert [r["name"] for r in reports] == ["alpha", "beta", "gamma"]
    assert all(r["failure"] is None and r["image"] == "new" for r in reports), reports
    assert host.converged == [("alpha", "new"), ("beta", "new"), ("gamma", "new")]
    # One at a time: each tenant is stopped, moved and started before the next is touched.
    steps = [c[:2] for c in FakeBackend.calls]
    assert steps == [("stop", "alpha"), ("image", "alpha"), ("start", "alpha"),
                     ("stop", "beta"), ("image", "beta"), ("start", "beta"),
                     ("stop", "gamma"), ("image", "gamma"), ("start", "gamma")]
    assert host.store.last_converge("beta")["changed"] == ["Write a file"]


def test_a_failing_tenant_goes_back_and_the_others_move_on(host, monkeypatch):
    def health(host, tenant):
        if tenant.name == "beta" and ImageBackend.lowers["beta"].parent.name == "new":
            raise StepFailed("HTTP 500 from /hello", tenant="beta", step="health")
        return "ok"
    monkeypatch.setattr(tenants, "wait_healthy", health)

    reports = {r["name"]: r for r in rollout.move(host, ["alpha", "beta", "gamma"], "new")}

    assert reports["alpha"]["image"] == "new" and reports["gamma"]["image"] == "new"
    beta = reports["beta"]
    assert beta["image"] == "old" and "HTTP 500 from /hello" in beta["failure"]
    assert "runs on base image old again" in beta["failure"]
    assert any(a.startswith("put back on base image old") for a in beta["actions"])
    assert ("beta", "old") in host.converged  # converged again on the image it went back to
    assert ImageBackend.lowers["beta"].parent.name == "old" and "beta" in ImageBackend.running
    assert host.store.last_converge("beta")["failure"] == beta["failure"]


def test_a_tenant_already_on_the_image_is_left_alone(host):
    ImageBackend.lowers["alpha"] = host.config.images_dir / "new" / "rootfs"
    reports = {r["name"]: r for r in rollout.move(host, ["alpha"], "new")}
    assert reports["alpha"]["actions"] == ["already on base image new"]
    assert FakeBackend.calls == [] and host.converged == []


def test_usage_names_each_images_tenants(host):
    ImageBackend.lowers["alpha"] = host.config.images_dir / "new" / "rootfs"
    assert rollout.usage(host) == {"new": ["alpha"], "old": ["beta", "gamma"]}


def test_the_command_prints_a_summary_and_fails_when_one_tenant_did(tmp_path, monkeypatch,
                                                                    capsys):
    from orchestrator import cli

    monkeypatch.setenv("ORCH_HOME", str(tmp_path))
    moved = {"name": "alpha", "failure": None, "image_from": "old", "image_to": "new",
             "image": "new", "changed": ["Write a file"],
             "actions": ["remounted its root over base image new"]}
    back = {**moved, "name": "beta", "image": "old", "changed": [],
            "failure": "tenant beta, step image: on base image new, step health: HTTP 500"}
    monkeypatch.setattr(cli.rollout, "move", lambda host, names, image, progress: [moved, back])
    assert cli.main(["reprovision", "--all", "--image", "current"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "RESULT", "IMAGE", "CHANGED", "NOTES"]
    assert lines[1].split()[:4] == ["alpha", "moved", "new", "1"]
    assert lines[2].split()[:4] == ["beta", "failed", "old", "0"]


def test_image_and_check_cannot_be_combined(tmp_path, monkeypatch, capsys):
    from orchestrator import cli

    monkeypatch.setenv("ORCH_HOME", str(tmp_path))
    assert cli.main(["reprovision", "--all", "--check", "--image", "current"]) == 2
    assert "cannot be combined" in capsys.readouterr().err


def test_a_stopped_tenant_is_checked_on_its_backend_and_stopped_again(host, monkeypatch):
    proxied = []
    monkeypatch.setattr(tenants, "check_through_proxy", lambda host, t: proxied.append(t.name))
    host.store.set_state("alpha", "stopped")
    ImageBackend.running.discard("alpha")
    reports = rollout.move(host, ["alpha"], "new")
    assert reports[0]["failure"] is None and reports[0]["image"] == "new"
    assert "then stopped again" in reports[0]["actions"][-1]
    assert "alpha" not in ImageBackend.running and proxied == []


def test_an_interrupted_move_puts_the_tenant_back_and_stops(host, monkeypatch):
    def interrupted(host, tenant):
        if ImageBackend.lowers[tenant.name].parent.name == "new":
            raise KeyboardInterrupt
        return "ok"
    monkeypatch.setattr(tenants, "wait_healthy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rollout.move(host, ["alpha", "beta"], "new")
    assert ImageBackend.lowers["alpha"].parent.name == "old" and "alpha" in ImageBackend.running
    assert ImageBackend.lowers["beta"].parent.name == "old"  # never touched
    assert ("stop", "beta") not in [c[:2] for c in FakeBackend.calls]
