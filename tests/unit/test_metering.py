import dataclasses

import pytest

from orchestrator import allocate, capacity, metering
from orchestrator.errors import BadInput
from orchestrator.spec import TenantSpec
from orchestrator.tenants import Host

GIB = 1 << 30


@pytest.fixture
def host(config):
    host = Host(config)
    for name in ("a", "b"):
        allocate.allocate(host.store, TenantSpec(name, f"{name}.example.test"), config,
                          lambda uid: False)
        host.store.set_state(name, "running")
    yield host
    host.close()


def usage(memory, cache=0, cpu=0.0, peak=None):
    return {"memory_current": memory, "memory_peak": peak or memory, "memory_cache": cache,
            "cpu_seconds": cpu, "processes": 3}


def test_report_integrates_memory_over_time_without_the_page_cache(host):
    # a: 1 GiB (of which 0.5 GiB cache) for two hours -> 1 GiB-hour billable.
    host.store.add_sample("a", 0, usage(GIB, GIB // 2, cpu=10))
    host.store.add_sample("a", 3600, usage(GIB, GIB // 2, cpu=40, peak=2 * GIB))
    host.store.add_sample("a", 7200, usage(GIB, GIB // 2, cpu=70))
    # b: ramps from 0 to 2 GiB in one hour -> 1 GiB-hour.
    host.store.add_sample("b", 0, usage(0))
    host.store.add_sample("b", 3600, usage(2 * GIB))

    rows = {r["name"]: r for r in metering.report(host, 0, 7200, price_per_gb_hour=0.5)}
    assert rows["a"]["gib_hours"] == pytest.approx(1.0)
    assert rows["a"]["memory_avg_bytes"] == GIB
    assert rows["a"]["memory_avg_without_cache_bytes"] == GIB // 2
    assert rows["a"]["memory_peak_bytes"] == 2 * GIB
    assert rows["a"]["cpu_seconds"] == 60
    assert rows["a"]["charge"] == pytest.approx(0.5)
    assert rows["b"]["gib_hours"] == pytest.approx(1.0)


def test_report_only_counts_the_period(host):
    host.store.add_sample("a", 0, usage(GIB))
    host.store.add_sample("a", 100, usage(GIB))
    assert metering.report(host, 200, 300) == []
    with pytest.raises(BadInput):
        metering.report(host, 300, 200)


def test_times_and_csv():
    assert metering.parse_time("1970-01-01T01:00", None) == 3600
    assert metering.parse_time("1970-01-01T01:00+01:00", None) == 0
    assert metering.parse_time(None, 5) == 5
    with pytest.raises(BadInput):
        metering.parse_time("yesterday", None)
    assert metering.as_csv([{"name": "a", "x": 1}]) == "name,x\r\na,1\r\n"


def test_export_is_prometheus_text(host):
    host.store.add_sample("a", 0, usage(123, cache=7))
    text = metering.export(host)
    assert 'orch_tenant_memory_bytes{tenant="a"} 123.0' in text
    assert 'orch_tenant_memory_cache_bytes{tenant="a"} 7.0' in text
    assert 'orch_tenant_memory_limit_bytes{tenant="b"} 5.36870912e+08' in text


def test_capacity_counts_promises_against_the_budget(host, config):
    room = capacity.summary(config, host.store.tenants(), {}, size=1 << 30, total=4 << 30)
    assert room["budget_bytes"] == 3 << 30
    assert room["promised_bytes"] == 1 << 30
    assert room["fit"] == 2


def test_sampling_drops_what_is_older_than_the_configured_retention(host, config, monkeypatch):
    monkeypatch.setattr(host.backend("jail"), "usage", lambda tenant: usage(GIB),
                        raising=False)
    host.config = dataclasses.replace(config, retention_days=10)
    day = 86400
    host.store.add_sample("a", 0, usage(GIB))
    host.store.add_sample("a", 5 * day, usage(GIB))
    metering.sample(host, now=12 * day)
    kept = [s["at"] for s in host.store.samples(0, 20 * day)["a"]]
    assert kept == [5 * day, 12 * day]


def test_a_tenant_deleted_in_the_period_is_still_billed_and_marked(host):
    host.store.add_sample("a", 0, usage(GIB))
    host.store.add_sample("a", 3600, usage(GIB))
    host.store.add_sample("b", 0, usage(GIB))
    host.store.add_sample("b", 3600, usage(GIB))
    host.store.delete("a", at=4000)
    assert host.store.get("a") is None

    rows = {r["name"]: r for r in metering.report(host, 0, 7200)}
    assert rows["a"]["gib_hours"] == pytest.approx(1.0)
    assert rows["a"]["deleted_at"] == 4000
    assert rows["b"]["deleted_at"] is None
    # A period that ends before the deletion bills it as a live tenant.
    assert metering.report(host, 0, 3600)[0]["deleted_at"] is None


def test_deleted_tenants_samples_go_when_the_retention_ends(host):
    host.store.add_sample("a", 0, usage(GIB))
    host.store.delete("a", at=100)
    host.store.prune_samples(before=200)
    assert host.store.samples(0, 1000) == {}
    assert host.store.deletions(0, 1000) == {}
