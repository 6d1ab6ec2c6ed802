"""Bad input is refused with exit code 2 before any host command runs."""

import json
import subprocess
import uuid

import pytest

pytestmark = [pytest.mark.root]

BAD_NAMES = [
    "Acme",                 # upper case
    "1acme",                # starts with a digit
    "-acme",                # starts with '-'
    "a" * 31,               # longer than 30
    "acme_shop",            # underscore
    "acme-",                # not a DNS label
    "ac--me",               # double hyphen
    "acme.shop",            # dot
    "root",                 # reserved
    "www-data",             # reserved
    "admin",                # reserved
    "",                     # empty
    "acme;reboot",          # shell metacharacters
]

BAD_HOSTNAMES = [
    "nodots",
    "-bad.example.test",
    "bad-.example.test",
    "a..example.test",
    "10.0.0.1",
    ("x" * 64) + ".example.test",
    "under_score.example.test",
    "shop.localhost",
    "",
]


def _nothing_made(orch):
    assert orch.leftovers() == []
    assert orch.json("list")[1]["tenants"] == []
    assert not (orch.home / "proxy" / "nginx.pid").exists()


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_name_is_refused(orch, name):
    done = orch.run("create-tenant", "--hostname", "ok.example.test", "--json", "--", name,
                    check=False)
    code, doc = done.returncode, json.loads(done.stdout)
    assert code == 2
    assert doc["error"]["step"] == "validate"
    assert doc["error"]["fix"]
    _nothing_made(orch)


@pytest.mark.parametrize("hostname", BAD_HOSTNAMES)
def test_bad_hostname_is_refused(orch, hostname):
    code, doc = orch.json("create-tenant", "okname", "--hostname", hostname, check=False)
    assert code == 2 and "hostname" in doc["error"]["message"]
    _nothing_made(orch)


@pytest.mark.parametrize("args", [["--memory", "12M"], ["--memory", "lots"],
                                  ["--max-clients", "0"], ["--max-clients", "100000"],
                                  ["--backend", "nosuch"]])
def test_bad_limits_are_refused(orch, args):
    code, doc = orch.json("create-tenant", "okname", "--hostname", "ok.example.test", *args,
                          check=False)
    assert code == 2, doc
    _nothing_made(orch)


def test_existing_host_user_is_refused(orch):
    user = f"orchu{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    user], check=True)
    try:
        code, doc = orch.json("create-tenant", user, "--hostname", "ok.example.test",
                              check=False)
    finally:
        subprocess.run(["userdel", user], check=True)
    assert code == 2 and "already a user or group on this host" in doc["error"]["message"]
    _nothing_made(orch)


def test_unknown_tenant_is_bad_input(orch):
    for command in ("show", "start", "stop"):
        done = orch.run(command, "nobody-here", check=False)
        assert done.returncode == 2, command
        assert "does not exist" in done.stderr
    doc = json.loads(orch.run("show", "nobody-here", "--json", check=False).stdout)
    assert doc["error"]["tenant"] == "nobody-here"


@pytest.mark.slow
def test_duplicates_are_refused(orch):
    orch.create("first", "shop.example.test")
    code, doc = orch.json("create-tenant", "first", "--hostname", "other.example.test",
                          check=False)
    assert code == 2 and "already exists" in doc["error"]["message"]
    code, doc = orch.json("create-tenant", "second", "--hostname", "SHOP.example.test.",
                          check=False)
    assert code == 2 and "belongs to tenant first" in doc["error"]["message"]
    assert [t["name"] for t in orch.json("list")[1]["tenants"]] == ["first"]
    assert orch.get("shop.example.test")[0] == 200


def test_existing_host_group_is_refused(orch):
    group = f"orchg{uuid.uuid4().hex[:8]}"
    subprocess.run(["groupadd", "--system", group], check=True)
    try:
        code, doc = orch.json("create-tenant", group, "--hostname", "ok.example.test",
                              check=False)
    finally:
        subprocess.run(["groupdel", group], check=True)
    assert code == 2 and "group" in doc["error"]["message"]
    _nothing_made(orch)
