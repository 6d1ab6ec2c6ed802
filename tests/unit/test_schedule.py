import pytest

from orchestrator import schedule
from orchestrator.errors import BadInput
from orchestrator.tenants import Host


@pytest.fixture
def host(config):
    host = Host(config)
    yield host
    host.close()


def test_a_job_is_due_once_its_time_has_passed(host, monkeypatch):
    ran = []
    monkeypatch.setattr(schedule, "_run_job", lambda h, job: ran.append(job) or "done")
    schedule.set_schedule(host, "reprovision", "30 3 * * *", now=0)  # 1970-01-01 00:00 UTC
    assert schedule.show(host)[0]["next_run"] == 3 * 3600 + 30 * 60
    assert schedule.run_due(host, now=3 * 3600) == []
    results = schedule.run_due(host, now=4 * 3600)
    assert [r["job"] for r in results] == ["reprovision"] and ran == ["reprovision"]
    assert schedule.run_due(host, now=5 * 3600) == []  # it ran; next is tomorrow
    assert schedule.show(host)[0]["next_run"] == 86400 + 3 * 3600 + 30 * 60


def test_jobs_are_independent_and_a_failure_is_reported(host, monkeypatch):
    def job(h, name):
        if name == "meter":
            raise RuntimeError("disk full")
        return "ok"

    monkeypatch.setattr(schedule, "_run_job", job)
    schedule.set_schedule(host, "reprovision", "0 * * * *", now=0)
    schedule.set_schedule(host, "meter", "*/5 * * * *", now=0)
    results = {r["job"]: r for r in schedule.run_due(host, now=3600)}
    assert results["reprovision"]["ok"] and not results["meter"]["ok"]
    assert "disk full" in results["meter"]["outcome"]


@pytest.mark.parametrize("expression", ["", "* * *", "61 * * * *", "every day", "* * * * * *"])
def test_bad_expressions(host, expression):
    with pytest.raises(BadInput):
        schedule.set_schedule(host, "reprovision", expression)


def test_unknown_job_and_clear(host):
    with pytest.raises(BadInput):
        schedule.set_schedule(host, "backup", "* * * * *")
    schedule.set_schedule(host, "meter", "* * * * *")
    schedule.clear(host, "meter")
    assert schedule.show(host) == []
