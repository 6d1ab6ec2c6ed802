import pytest

from orchestrator import config as config_mod
from orchestrator.config import Range
from orchestrator.errors import ConfigError


def test_defaults(tmp_path):
    config = config_mod.from_mapping({}, tmp_path)
    assert config.proxy_port == 80
    assert config.images_dir == tmp_path / "images"


def test_port_range_inside_the_ephemeral_range_is_refused(tmp_path):
    config = config_mod.from_mapping({}, tmp_path)
    bad = config.__class__(**{**config.__dict__, "port_range": Range(40000, 40100)})
    with pytest.raises(ConfigError, match="ip_local_port_range"):
        config_mod.check(bad, local_ports=Range(32768, 60999))
    config_mod.check(config, local_ports=Range(32768, 60999))


@pytest.mark.parametrize("raw", [
    {"nosuch": {}},
    {"proxy": {"colour": "red"}},
    {"allocation": {"port_range": "30000"}},
    {"allocation": {"port_range": "300-200"}},
    {"allocation": {"address_pool": "10.0.0.0/31"}},
    {"allocation": {"address_pool": "not-a-net"}},
    {"proxy": {"port": 0}},
    {"proxy": {"port": 20005}},
    {"cgroups": {"parent": "a/b"}},
])
def test_bad_settings_are_refused(tmp_path, raw):
    with pytest.raises(ConfigError):
        config_mod.from_mapping(raw, tmp_path)


def test_load_reads_orch_home(tmp_path):
    (tmp_path / "config.toml").write_text('[proxy]\nport = 8088\n[defaults]\nmemory = "1G"\n')
    config = config_mod.load({"ORCH_HOME": str(tmp_path)})
    assert config.proxy_port == 8088 and config.default_memory_bytes == 1 << 30
    assert config.state_db == tmp_path / "state.db"


def test_broken_toml_names_the_file(tmp_path):
    (tmp_path / "config.toml").write_text("[proxy\n")
    with pytest.raises(ConfigError, match="config.toml"):
        config_mod.load({"ORCH_HOME": str(tmp_path)})
