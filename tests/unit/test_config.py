import pytest

from orchestrator import config as config_mod
from orchestrator.config import Range
from orchestrator.errors import ConfigError


def test_defaults(tmp_path):
    config = config_mod.from_mapping({}, tmp_path)
    assert config.proxy_port == 80
    assert config.images_dir == tmp_path / "images"


def test_metering_retention_is_configurable(tmp_path):
    assert config_mod.from_mapping({}, tmp_path).retention_days == 90
    config = config_mod.from_mapping({"metering": {"retention": 400}}, tmp_path)
    assert config.retention_days == 400


def test_cpu_quota_is_unset_by_default_and_read_in_cpus(tmp_path):
    assert config_mod.from_mapping({}, tmp_path).cpu_quota is None
    assert config_mod.from_mapping({"defaults": {"cpu_quota": "50%"}}, tmp_path).cpu_quota == 0.5
    assert config_mod.from_mapping({"defaults": {"cpu_quota": 2}}, tmp_path).cpu_quota == 2


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


@pytest.mark.parametrize("raw", [
    {"proxy": {"address": 5}},
    {"proxy": {"address": "localhost"}},
    {"proxy": {"port": "abc"}},
    {"proxy": {"port": 18555.9}},
    {"proxy": {"port": True}},
    {"proxy": {"user": "no-such-user-here"}},
    {"capacity": {"overcommit": "x"}},
    {"capacity": {"overcommit": float("nan")}},
    {"capacity": {"overcommit": float("inf")}},
    {"defaults": {"max_clients": "many"}},
    {"defaults": {"max_clients": 0}},
    {"defaults": {"health_timeout": -5}},
    {"images": {"dir": 5}},
    {"images": {"dir": "relative/images"}},
    {"images": {"dir": "/tmp/with space"}},
    {"images": {"dir": "/tmp/with,comma"}},
    {"allocation": {"uid_range": "4294967295-4294967296"}},
    {"cgroups": {"parent": "ørch"}},
    {"metering": {"retention": "90 days"}},
    {"defaults": {"cpu_quota": "lots"}},
    {"defaults": {"cpu_quota": "0%"}},
    {"metering": {"retention": 0}},
    {"metering": {"retention": 1.5}},
    {"metering": {"keep": 90}},
])
def test_bad_values_are_config_errors_with_a_step(tmp_path, raw):
    with pytest.raises(ConfigError) as caught:
        config_mod.from_mapping(raw, tmp_path)
    assert caught.value.exit_code == 2 and caught.value.step == "config"


def test_unsafe_or_odd_homes(tmp_path):
    for home in (tmp_path / "h space", tmp_path / "a,b"):
        with pytest.raises(ConfigError):
            config_mod.load({"ORCH_HOME": str(home)})
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(ConfigError, match="not a folder"):
        config_mod.load({"ORCH_HOME": str(afile)})


def test_relative_home_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_mod.load({"ORCH_HOME": "rel"}).home == tmp_path / "rel"


def test_a_missing_orch_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="ORCH_CONFIG"):
        config_mod.load({"ORCH_HOME": str(tmp_path), "ORCH_CONFIG": str(tmp_path / "nope")})


def test_undecodable_config(tmp_path):
    (tmp_path / "config.toml").write_bytes(b"[proxy]\nuser = \"\xff\"\n")
    with pytest.raises(ConfigError):
        config_mod.load({"ORCH_HOME": str(tmp_path)})
