"""Per-child caps on a real tenant: a child that keeps growing is recycled by
Apache2::SizeLimit before the cgroup's OOM killer has to act, and the site keeps answering;
the measured size of a child is recorded; the CPU quota is set on the real hierarchy."""

import re
from pathlib import Path

import pytest

from orchestrator import limits

from .conftest import in_jail, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

GROW = """package Shop::Grow;
use strict;
use warnings;
use Apache2::RequestRec ();
use Apache2::RequestIO ();
use Apache2::Const -compile => qw(OK);
our @kept;
sub handler {
    my $r = shift;
    push @kept, 'x' x (4 * 1024 * 1024);   # 4 MiB more each request, never freed
    my $private = 0;
    open my $rollup, '<', '/proc/self/smaps_rollup' or die "smaps_rollup: $!";
    while (<$rollup>) { $private += $1 if /^Private_(?:Clean|Dirty):\\s+(\\d+) kB/ }
    $r->content_type('text/plain');
    $r->print("pid=$$ private_kib=$private\\n");
    return Apache2::Const::OK;
}
1;
"""


def oom_kills(orch, name):
    """How often the kernel's OOM killer acted in the tenant's memory cgroup."""
    v1 = Path("/sys/fs/cgroup/memory") / orch.cgroup_parent / name / "memory.oom_control"
    v2 = Path("/sys/fs/cgroup") / orch.cgroup_parent / name / "memory.events"
    text = (v1 if v1.exists() else v2).read_text()
    return int(dict(line.split() for line in text.splitlines())["oom_kill"])


def test_a_growing_child_is_recycled_before_the_cgroup_acts(orch, tmp_path):
    with (orch.home / "config.toml").open("a") as config:
        config.write('[defaults]\ncpu_quota = "50%"\n')
    orch.create("grower", None, "--memory", "256M", "--max-clients", "2")
    facts = orch.show("grower")
    group = limits.TenantCgroup(orch.cgroup_parent, "grower")
    assert group.cpu_quota() == 0.5
    if group.layout == "v1":
        cpu = next(d for d in group.dirs() if (d / "cpu.cfs_quota_us").exists())
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"

    limit_kib = (256 - 64) // 2 * 1024
    assert facts["child_limit_bytes"] == limit_kib * 1024
    assert 1 << 20 < facts["child_size_bytes"] < 64 << 20  # measured after the first start
    conf = (orch.home / "tenants/grower/root/etc/apache2/orch/httpd.conf").read_text()
    assert conf.index("PerlChildInitHandler OrchSizeLimit::child_init") > conf.index("Include ")
    settings = orch.home / "tenants/grower/root/etc/apache2/orch/size-limit"
    assert settings.read_text() == f"unshared_kib {limit_kib}\ncheck_interval 1\n"
    assert settings.stat().st_uid == 0 and settings.stat().st_mode & 0o022 == 0

    in_jail(facts, "mkdir", "-p", "/srv/tenant/perl/Shop").check_returncode()
    in_jail(facts, "tee", "/srv/tenant/perl/Shop/Grow.pm", input_text=GROW).check_returncode()
    fragment = tmp_path / "grow.conf"
    fragment.write_text("<Location /grow>\n  SetHandler modperl\n"
                        "  PerlResponseHandler Shop::Grow\n</Location>\n")
    orch.run("tenant-config", "grower", str(fragment))

    answers = []
    for _ in range(120):
        status, body, _ = orch.get("grower.example.test", "/grow")
        assert status == 200, body  # the site answers throughout, recycling or not
        pid, private = (int(v) for v in re.findall(r"=(\d+)", body))
        answers.append((pid, private))
        grown = [p for p, kib in answers if kib > limit_kib]
        if grown and sum(1 for p, _ in answers if p not in grown) >= 3 and pid not in grown:
            break
    grown = [p for p, kib in answers if kib > limit_kib]
    assert grown, f"no child passed {limit_kib} KiB: {answers}"
    last_seen = max(i for i, (p, _) in enumerate(answers) if p == grown[0])
    assert any(p != grown[0] for p, _ in answers[last_seen + 1:]), answers
    # It ended after the request that took it over the limit, and never answered again.
    first_over = next(i for i, (p, kib) in enumerate(answers) if p == grown[0]
                      and kib > limit_kib)
    assert last_seen == first_over
    log = orch.home / "tenants/grower/root/var/log/apache2/error.log"
    assert wait_for(lambda: f"({grown[0]}) OrchSizeLimit httpd process too big"
                    in log.read_text())
    assert oom_kills(orch, "grower") == 0
    assert orch.get("grower.example.test")[0] == 200
    print(f"answers (pid, private KiB) against a limit of {limit_kib} KiB: {answers}")


def test_later_tenants_size_their_workers_by_the_measured_child(orch):
    # A child_size below any real child, so the measured figure decides alone.
    with (orch.home / "config.toml").open("a") as config:
        config.write('[defaults]\nchild_size = "4M"\n')
    first = orch.create("first", None, "--memory", "256M", "--max-clients", "2")
    measured = orch.show("first")["child_size_bytes"]
    assert 1 << 20 < measured < 64 << 20
    assert first["max_clients"] == 2  # given, so not derived

    second = orch.create("second", None, "--memory", "256M")
    assert second["max_clients"] == min(256, (192 << 20) // max(4 << 20, measured))
    conf = (orch.home / "tenants/second/root/etc/apache2/orch/httpd.conf").read_text()
    assert f"\nMaxRequestWorkers {second['max_clients']}\n" in conf
    assert orch.get("second.example.test")[0] == 200

