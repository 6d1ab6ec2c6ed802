"""`orch tenant-config --rollback` walks back past history entries that no longer pass
the checks, and refuses, changing nothing, when none does. A tenant of its own, so the
history holds only what this test made."""

import json
import os

import pytest

from .conftest import in_jail

pytestmark = [pytest.mark.root, pytest.mark.slow]


def write_as_tenant(facts, path, text):
    in_jail(facts, "mkdir", "-p", os.path.dirname(path)).check_returncode()
    in_jail(facts, "tee", "--", path, input_text=text).check_returncode()


def test_rollback_skips_entries_that_no_longer_pass(orch, tmp_path):
    orch.create("hist")
    facts = orch.show("hist")
    module = "/srv/tenant/perl/Hist/Gone.pm"
    history = orch.home / "tenants/hist/root/etc/apache2/orch/history"
    quarantine = orch.home / "tenants/hist/root/etc/apache2/orch/quarantine"

    def put(text):
        fragment = tmp_path / "fragment.conf"
        fragment.write_text(text)
        orch.run("tenant-config", "hist", str(fragment))

    def rollback():
        done = orch.run("tenant-config", "hist", "--rollback", "--json", check=False)
        return done.returncode, json.loads(done.stdout)

    write_as_tenant(facts, module, "package Hist::Gone;\n1;\n")
    put("AddType text/x-a .a\n")
    put("PerlModule Hist::Gone\n")
    put("PerlModule Hist::Gone\nAddType text/x-c .c\n")
    put("AddType text/x-d .d\n")
    in_jail(facts, "rm", "--", module).check_returncode()  # entries B and C fail now
    master = orch.show("hist")["master_pid"]

    code, doc = rollback()
    assert code == 0, doc
    assert [s["step"] for s in doc["skipped"]] == ["trial", "trial"]
    assert all("Can't locate Hist/Gone.pm" in s["reason"] for s in doc["skipped"])
    shown = json.loads(orch.run("tenant-config", "hist", "--show", "--json").stdout)
    assert shown["fragment"] == "AddType text/x-a .a\n"
    assert orch.show("hist")["master_pid"] == master
    assert orch.get("hist.example.test")[0] == 200
    kept = sorted(p.name for p in quarantine.glob("history-*.conf"))
    assert len(kept) == 2 and len(list(history.glob("*.conf"))) == 1
    assert "Hist/Gone.pm" in (quarantine / (kept[0] + ".reason")).read_text()

    # A history of nothing but entries that fail: the rollback is refused, nothing moves.
    write_as_tenant(facts, module, "package Hist::Gone;\n1;\n")
    for number in range(6):
        put(f"PerlModule Hist::Gone\nAddType text/x-{number} .x{number}\n")
    in_jail(facts, "rm", "--", module).check_returncode()
    before = sorted(p.read_text() for p in history.glob("*.conf"))
    assert len(before) == 5
    code, doc = rollback()
    assert code == 2 and doc["error"]["step"] == "rollback", doc
    assert "none of the 5 earlier fragments passes" in doc["error"]["message"]
    assert sorted(p.read_text() for p in history.glob("*.conf")) == before
    shown = json.loads(orch.run("tenant-config", "hist", "--show", "--json").stdout)
    assert shown["fragment"] == "PerlModule Hist::Gone\nAddType text/x-5 .x5\n"
    assert orch.show("hist")["master_pid"] == master
    assert orch.get("hist.example.test")[0] == 200
