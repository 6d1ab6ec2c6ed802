"""Memory economics on real tenants: samples and reports, capacity refusals, live resize,
and a leaking tenant held to its cap while another keeps answering."""

import json
import time
from pathlib import Path

import pytest

from .conftest import in_jail

pytestmark = [pytest.mark.root, pytest.mark.slow]

LEAK = """package Shop::Leak;
use strict;
use warnings;
use Apache2::RequestRec ();
use Apache2::RequestIO ();
use Apache2::Const -compile => qw(OK);
our @kept;
sub handler {
    my $r = shift;
    # More than the whole 128 MiB cap within one request: Apache2::SizeLimit checks only
    # after a request, so here the kernel has to act.
    push @kept, 'x' x (24 * 1024 * 1024) for 1 .. 8;
    $r->content_type('text/plain');
    $r->print("holding " . scalar(@kept) . "\\n");
    return Apache2::Const::OK;
}
1;
"""


@pytest.fixture(scope="module")
def pair(orch_module):
    orch_module.create("leaky", None, "--memory", "128M", "--max-clients", "2")
    orch_module.create("steady", None, "--memory", "128M")
    return orch_module


def cgroup_file(orch, name, filename):
    found = list(Path("/sys/fs/cgroup").glob(f"memory/{orch.cgroup_parent}/{name}/{filename}"))
    return found[0] if found else None


def test_samples_make_a_report_for_each_tenant(pair):
    for _ in range(3):
        for name in ("leaky", "steady"):
            assert pair.get(f"{name}.example.test")[0] == 200
        pair.run("meter", "sample")
        time.sleep(1)
    done = pair.run("meter", "report", "--price-per-gb-hour", "2.5", "--format", "json")
    rows = {r["name"]: r for r in json.loads(done.stdout)["tenants"]}
    assert set(rows) == {"leaky", "steady"}
    for row in rows.values():
        assert row["samples"] == 3
        assert 0 < row["memory_avg_without_cache_bytes"] <= row["memory_avg_bytes"]
        assert row["memory_peak_bytes"] >= row["memory_avg_without_cache_bytes"]
        assert row["memory_peak_bytes"] <= 128 << 20
        assert row["gib_hours"] > 0 and row["charge"] == pytest.approx(row["gib_hours"] * 2.5,
                                                                       abs=1e-4)
    csv_text = pair.run("meter", "report", "--format", "csv").stdout
    assert csv_text.splitlines()[0].startswith("name,samples,memory_avg_bytes")
    exported = pair.run("meter", "export").stdout
    assert 'orch_tenant_memory_bytes{tenant="steady"}' in exported


def test_capacity_refuses_a_tenant_that_would_not_fit(pair):
    room = pair.json("capacity")[1]
    assert room["promised_bytes"] == 256 << 20
    too_big = (room["budget_bytes"] - room["promised_bytes"]) // (1 << 20) + 1
    code, doc = pair.json("create-tenant", "huge", "--hostname", "huge.example.test",
                          "--memory", f"{too_big}M", check=False)
    assert code == 1 and doc["error"]["step"] == "admission"
    assert "budget" in doc["error"]["message"] and "MiB" in doc["error"]["message"]
    assert [t["name"] for t in pair.json("list")[1]["tenants"]] == ["leaky", "steady"]
    fits = pair.json("capacity", "--size", "1G")[1]["fit"]
    assert fits == (room["budget_bytes"] - room["promised_bytes"]) // (1 << 30)


def test_resize_is_live(pair):
    master = pair.show("steady")["master_pid"]
    pair.run("resize", "steady", "--memory", "160M")
    assert cgroup_file(pair, "steady", "memory.limit_in_bytes").read_text().strip() == str(
        160 << 20)
    assert pair.show("steady")["master_pid"] == master  # the memory cap changes live
    # and so does each new child's size limit, its share of the cap (one worker here)
    limit = pair.home / "tenants/steady/root/etc/apache2/orch/size-limit"
    assert limit.read_text().startswith(f"unshared_kib {(160 - 64) * 1024}\n")

    pair.run("resize", "steady", "--max-clients", "3")
    conf = pair.home / "tenants/steady/root/etc/apache2/orch/httpd.conf"
    assert "\nMaxRequestWorkers 3\n" in conf.read_text()
    assert "\nServerLimit 3\n" in conf.read_text()
    shown = pair.show("steady")
    assert shown["memory_limit_bytes"] == 160 << 20 and shown["max_clients"] == 3
    pids = list(Path("/sys/fs/cgroup").glob(f"pids/{pair.cgroup_parent}/steady/pids.max"))
    assert pids[0].read_text().strip() == "64"
    assert pair.get("steady.example.test")[0] == 200


def test_a_leaking_tenant_is_held_to_its_cap_while_the_other_answers(pair, tmp_path):
    facts = pair.show("leaky")
    in_jail(facts, "mkdir", "-p", "/srv/tenant/perl/Shop").check_returncode()
    in_jail(facts, "tee", "/srv/tenant/perl/Shop/Leak.pm", input_text=LEAK).check_returncode()
    fragment = tmp_path / "leak.conf"
    fragment.write_text("<Location /leak>\n  SetHandler modperl\n"
                        "  PerlResponseHandler Shop::Leak\n</Location>\n")
    pair.run("tenant-config", "leaky", str(fragment))

    before = [_timed(pair, "steady.example.test") for _ in range(5)]
    statuses, during = [], []
    for _ in range(6):  # each asks for 192 MiB of a 128 MiB cap, through the front proxy
        statuses.append(_status(pair, "leaky.example.test", "/leak"))
        during.append(_timed(pair, "steady.example.test"))

    assert all(ok for ok, _ in before + during), "steady stopped answering during the leak"
    limit = int(cgroup_file(pair, "leaky", "memory.limit_in_bytes").read_text())
    peak = int(cgroup_file(pair, "leaky", "memory.max_usage_in_bytes").read_text())
    assert peak <= limit == 128 << 20
    oom = dict(line.split() for line in
               cgroup_file(pair, "leaky", "memory.oom_control").read_text().splitlines())
    assert int(oom["oom_kill"]) > 0  # the kernel killed the child that grew, not the host
    assert pair.get("leaky.example.test")[0] == 200  # recovered: a fresh child answers
    slowest_before = max(t for _, t in before)
    slowest_during = max(t for _, t in during)
    print(f"steady latency: worst {slowest_before * 1000:.1f} ms before the leak, "
          f"{slowest_during * 1000:.1f} ms during it; leak answers {statuses}")


def _status(orch, host, path):
    try:
        return orch.get(host, path)[0]
    except OSError:
        return None


def _timed(orch, host):
    started = time.monotonic()
    status = _status(orch, host, "/hello")
    return status == 200, time.monotonic() - started


def test_the_scheduler_runs_due_jobs(pair):
    from datetime import UTC, datetime, timedelta

    pair.run("schedule", "set", "*/5 * * * *", "--job", "meter")
    shown = pair.json("schedule", "show")[1]["jobs"]
    assert [j["job"] for j in shown] == ["meter"]
    later = (datetime.now(UTC) + timedelta(minutes=6)).isoformat()
    code, doc = pair.json("scheduler", "--once", "--at", later)
    assert code == 0 and doc["ran"][0]["outcome"] == "sampled 2 tenant(s)"
    code, doc = pair.json("scheduler", "--once", "--at", later)
    assert doc["ran"] == []  # it ran at that time already
    pair.run("schedule", "clear", "meter")
