import importlib.util
import json

from orchestrator import allocate, cli, paths
from orchestrator.spec import TenantSpec
from orchestrator.state import Store


def load_inventory():
    spec = importlib.util.spec_from_file_location("orch_state", paths.INVENTORY / "orch_state.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_inventory_lists_tenants_with_their_facts(config):
    store = Store(config.state_db)
    tenant = allocate.allocate(store, TenantSpec("acme", "acme.example.test"), config,
                               lambda uid: False)
    store.set_ansible_vars("acme", {"ansible_connection": "community.general.chroot",
                                    "ansible_host": "/x/root"})
    store.close()

    data = load_inventory().inventory(config.state_db)
    assert data["tenants"]["hosts"] == ["acme"]
    assert data["jail"]["hosts"] == ["acme"]
    facts = data["_meta"]["hostvars"]["acme"]
    assert facts["orch_uid"] == tenant.uid and facts["orch_port"] == tenant.port
    assert facts["ansible_host"] == "/x/root"


def test_inventory_of_a_missing_store_is_empty(tmp_path):
    data = load_inventory().inventory(tmp_path / "none.db")
    assert data["tenants"]["hosts"] == [] and data["_meta"]["hostvars"] == {}


def test_bad_name_exits_2_with_json_and_touches_nothing(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("ORCH_HOME", str(home))
    code = cli.main(["create-tenant", "Bad_Name", "--hostname", "x.example.test", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 2 and doc["error"]["step"] == "validate"
    assert not home.exists()


def test_usage_errors_are_json_too(capsys):
    code = cli.main(["create-tenant", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 2 and doc["error"]["step"] == "parse"


def test_list_of_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ORCH_HOME", str(tmp_path))
    assert cli.main(["--json", "list"]) == 0
    assert json.loads(capsys.readouterr().out) == {"tenants": []}
