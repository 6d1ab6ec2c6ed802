"""orch's own settings: defaults, then `$ORCH_HOME/config.toml` (or `$ORCH_CONFIG`)."""

import dataclasses
import ipaddress
import os
import tomllib
from pathlib import Path

from .errors import ConfigError
from .spec import parse_size

DEFAULT_HOME = "/var/lib/orch"
LOCAL_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


@dataclasses.dataclass(frozen=True)
class Range:
    """An inclusive range of integers, written `low-high` in the file."""

    low: int
    high: int

    def __contains__(self, value):
        return self.low <= value <= self.high

    def overlaps(self, other):
        return self.low <= other.high and other.low <= self.high

    def __str__(self):
        return f"{self.low}-{self.high}"


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything orch reads from its configuration, with the defaults a fresh host gets."""

    home: Path
    images_dir: Path
    suite: str = "bookworm"
    mirror: str = ""
    uid_range: Range = Range(70000, 79999)
    port_range: Range = Range(20000, 29999)
    address_pool: ipaddress.IPv4Network = ipaddress.IPv4Network("10.251.0.0/16")
    proxy_address: str = "0.0.0.0"
    proxy_port: int = 80
    proxy_user: str = "www-data"
    cgroup_parent: str = "orch"
    host_reserve_bytes: int = 1 << 30
    overcommit: float = 1.0
    default_memory_bytes: int = 512 << 20
    default_max_clients: int = 8
    health_timeout: float = 30.0

    @property
    def state_db(self):
        return self.home / "state.db"

    @property
    def tenants_dir(self):
        return self.home / "tenants"

    @property
    def proxy_dir(self):
        return self.home / "proxy"

    @property
    def runs_dir(self):
        return self.home / "runs"


def _range(section, key, text):
    try:
        low, high = (int(part) for part in str(text).split("-", 1))
    except ValueError:
        raise ConfigError(f"[{section}] {key} = {text!r} is not a range like 20000-29999") from None
    if not 0 < low <= high:
        raise ConfigError(f"[{section}] {key} = {text!r}: the low end must be positive and first")
    return Range(low, high)


def _local_port_range():
    """The kernel's ephemeral port range, which tenant ports must stay out of."""
    try:
        low, high = LOCAL_PORT_RANGE.read_text().split()
    except OSError:
        return None
    return Range(int(low), int(high))


def load(environ=None):
    """Read the configuration named by the environment; refuse settings that cannot work."""
    environ = os.environ if environ is None else environ
    home = Path(environ.get("ORCH_HOME") or DEFAULT_HOME)
    path = Path(environ.get("ORCH_CONFIG") or home / "config.toml")
    raw = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return from_mapping(raw, home, source=path)


def from_mapping(raw, home, source="config"):
    """Build a Config from the parsed TOML mapping `raw`."""
    known = {
        "images": {"dir", "suite", "mirror"},
        "allocation": {"uid_range", "port_range", "address_pool"},
        "proxy": {"address", "port", "user"},
        "cgroups": {"parent"},
        "capacity": {"host_reserve", "overcommit"},
        "defaults": {"memory", "max_clients", "health_timeout"},
    }
    for section, values in raw.items():
        if section not in known or not isinstance(values, dict):
            raise ConfigError(f"{source}: unknown section [{section}]")
        for key in values:
            if key not in known[section]:
                raise ConfigError(f"{source}: unknown setting {key} in [{section}]")

    images = raw.get("images", {})
    alloc = raw.get("allocation", {})
    proxy = raw.get("proxy", {})
    cgroups = raw.get("cgroups", {})
    capacity = raw.get("capacity", {})
    defaults = raw.get("defaults", {})
    home = Path(home)
    fields = {"home": home, "images_dir": Path(images.get("dir", home / "images"))}
    if "suite" in images:
        fields["suite"] = str(images["suite"])
    if "mirror" in images:
        fields["mirror"] = str(images["mirror"])
    if "uid_range" in alloc:
        fields["uid_range"] = _range("allocation", "uid_range", alloc["uid_range"])
    if "port_range" in alloc:
        fields["port_range"] = _range("allocation", "port_range", alloc["port_range"])
    if "address_pool" in alloc:
        try:
            fields["address_pool"] = ipaddress.IPv4Network(alloc["address_pool"])
        except ValueError as exc:
            raise ConfigError(f"[allocation] address_pool: {exc}") from None
    if "address" in proxy:
        fields["proxy_address"] = str(ipaddress.IPv4Address(proxy["address"]))
    if "port" in proxy:
        fields["proxy_port"] = int(proxy["port"])
    if "user" in proxy:
        fields["proxy_user"] = str(proxy["user"])
    if "parent" in cgroups:
        fields["cgroup_parent"] = str(cgroups["parent"])
    if "host_reserve" in capacity:
        fields["host_reserve_bytes"] = parse_size(capacity["host_reserve"])
    if "overcommit" in capacity:
        fields["overcommit"] = float(capacity["overcommit"])
    if "memory" in defaults:
        fields["default_memory_bytes"] = parse_size(defaults["memory"])
    if "max_clients" in defaults:
        fields["default_max_clients"] = int(defaults["max_clients"])
    if "health_timeout" in defaults:
        fields["health_timeout"] = float(defaults["health_timeout"])
    config = Config(**fields)
    check(config)
    return config


def check(config, local_ports=None):
    """Refuse a configuration that would hand out unusable ports, addresses or uids."""
    local_ports = local_ports or _local_port_range()
    if local_ports and config.port_range.overlaps(local_ports):
        raise ConfigError(
            f"[allocation] port_range {config.port_range} overlaps the kernel's ephemeral "
            f"ports {local_ports} (net.ipv4.ip_local_port_range)",
            fix="choose a range outside it, for example 20000-29999",
        )
    if config.port_range.high > 65535:
        raise ConfigError(f"[allocation] port_range {config.port_range} passes 65535")
    if config.address_pool.num_addresses < 4:
        raise ConfigError(f"[allocation] address_pool {config.address_pool} is too small")
    if not 0 < config.proxy_port <= 65535:
        raise ConfigError(f"[proxy] port {config.proxy_port} is not a TCP port")
    if config.proxy_port in config.port_range:
        raise ConfigError(f"[proxy] port {config.proxy_port} lies inside the tenant port range")
    if not config.cgroup_parent.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"[cgroups] parent {config.cgroup_parent!r} must be one plain name")
    if config.overcommit <= 0:
        raise ConfigError("[capacity] overcommit must be above 0")
