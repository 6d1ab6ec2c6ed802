"""orch's own settings: defaults, then `$ORCH_HOME/config.toml` (or `$ORCH_CONFIG`)."""

import dataclasses
import ipaddress
import math
import os
import pwd
import re
import tomllib
from pathlib import Path

from .errors import BadInput, ConfigError
from .limits import parse_cpu_quota
from .spec import check_limits, parse_size

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
    #: None: MaxRequestWorkers follows from the memory cap and child_size_bytes.
    default_max_clients: int | None = None
    child_size_bytes: int = 48 << 20
    open_files: int = 4096
    cpu_weight: int = 100
    #: CPUs a tenant may use at most (0.5 for "50%"); None: no cap, only cpu_weight.
    cpu_quota: float | None = None
    health_timeout: float = 30.0
    kvm_uri: str = "qemu:///system"
    kvm_pool: str = "orch"
    #: None: `kvm/pool` under the state directory.
    kvm_pool_path: Path | None = None
    kvm_domain_prefix: str = "orch-"
    kvm_accel: str = "auto"
    kvm_network: str = "user"
    kvm_bridge: str = ""
    kvm_loopback_pool: ipaddress.IPv4Network = ipaddress.IPv4Network("127.77.0.0/16")
    kvm_ssh_port: int = 2222
    kvm_vcpus: int = 1
    kvm_disk_bytes: int = 4 << 30
    kvm_boot_timeout: float = 300.0
    kvm_outbound: bool = False
    #: Days usage samples are kept, a deleted tenant's included (for its last bill).
    retention_days: int = 90

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

    @property
    def kvm_dir(self):
        return self.home / "kvm"


def _range(section, key, text):
    try:
        low, high = (int(part) for part in str(text).split("-", 1))
    except ValueError:
        raise _bad(section, key, text, "is not a range", "write it like 20000-29999") from None
    if not 0 < low <= high:
        raise _bad(section, key, text, "needs a positive low end first", "like 20000-29999")
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
    home = Path(environ.get("ORCH_HOME") or DEFAULT_HOME).absolute()
    named = environ.get("ORCH_CONFIG")
    path = Path(named) if named else home / "config.toml"
    raw = {}
    if named and not path.is_file():
        raise ConfigError(f"ORCH_CONFIG names {path}, which is not a file", step="config",
                          fix="point ORCH_CONFIG at orch's config.toml, or unset it")
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
            raise ConfigError(f"{path}: {exc}", step="config",
                              fix="fix the file; see the README's Configuration") from None
    return from_mapping(raw, home, source=path)


# Characters that would break an overlayfs option string or an nginx configuration line.
_PATH_UNSAFE = re.compile(r"[\s,:;'\"\\#{}$]")

_KNOWN = {
    "images": {"dir": str, "suite": str, "mirror": str},
    "allocation": {"uid_range": str, "port_range": str, "address_pool": str},
    "proxy": {"address": str, "port": int, "user": str},
    "cgroups": {"parent": str},
    "capacity": {"host_reserve": (str, int), "overcommit": (int, float)},
    "defaults": {"memory": (str, int), "max_clients": int, "health_timeout": (int, float),
                 "child_size": (str, int), "open_files": int, "cpu_weight": int,
                 "cpu_quota": (str, int, float)},
    "metering": {"retention": int},
    "kvm": {"uri": str, "pool": str, "pool_path": str, "domain_prefix": str, "accel": str,
            "network": str, "bridge": str, "loopback_pool": str, "ssh_port": int, "vcpus": int,
            "disk_size": (str, int), "boot_timeout": (int, float), "outbound": bool},
}


def _bad(section, key, value, reason, fix=None):
    return ConfigError(f"[{section}] {key} = {value!r} {reason}", step="config",
                       fix=fix or "fix orch's config.toml; see the README's Configuration")


def _safe_path(label, path):
    path = Path(path)
    if not path.is_absolute():
        raise ConfigError(f"{label} {path} is not an absolute path", step="config",
                          fix="give an absolute path")
    if _PATH_UNSAFE.search(str(path)):
        raise ConfigError(f"{label} {path} has a space or one of , : ; ' \" \\ # {{ }} $",
                          step="config", fix="choose a plain path")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{label} {path} is not a folder", step="config",
                          fix="give a folder (it is made if missing)")
    return path


def from_mapping(raw, home, source="config"):
    """Build a Config from the parsed TOML mapping `raw`."""
    for section, values in raw.items():
        if section not in _KNOWN or not isinstance(values, dict):
            raise ConfigError(f"{source}: unknown section [{section}]", step="config",
                              fix=f"use only {', '.join(f'[{k}]' for k in _KNOWN)}")
        for key, value in values.items():
            if key not in _KNOWN[section]:
                raise ConfigError(f"{source}: unknown setting {key} in [{section}]",
                                  step="config",
                                  fix=f"[{section}] takes {', '.join(_KNOWN[section])}")
            kinds = _KNOWN[section][key]
            if (isinstance(value, bool) and kinds is not bool) or not isinstance(value, kinds):
                names = kinds.__name__ if isinstance(kinds, type) else " or ".join(
                    k.__name__ for k in kinds)
                raise _bad(section, key, value, f"should be of type {names}")

    def get(section, key):
        return raw.get(section, {}).get(key)

    home = _safe_path("ORCH_HOME", home)
    fields = {"home": home,
              "images_dir": _safe_path("[images] dir", get("images", "dir") or home / "images")}
    for key in ("suite", "mirror"):
        if get("images", key) is not None:
            fields[key] = get("images", key)
    for key in ("uid_range", "port_range"):
        if get("allocation", key) is not None:
            fields[key] = _range("allocation", key, get("allocation", key))
    if get("allocation", "address_pool") is not None:
        try:
            fields["address_pool"] = ipaddress.IPv4Network(get("allocation", "address_pool"))
        except ValueError as exc:
            raise _bad("allocation", "address_pool", get("allocation", "address_pool"),
                       f"is not a network: {exc}") from None
    if get("proxy", "address") is not None:
        try:
            fields["proxy_address"] = str(ipaddress.IPv4Address(get("proxy", "address")))
        except ValueError:
            raise _bad("proxy", "address", get("proxy", "address"),
                       "is not an IPv4 address", "write it like \"127.0.0.1\"") from None
    if get("proxy", "port") is not None:
        fields["proxy_port"] = get("proxy", "port")
    if get("proxy", "user") is not None:
        fields["proxy_user"] = get("proxy", "user")
    if get("cgroups", "parent") is not None:
        fields["cgroup_parent"] = get("cgroups", "parent")
    try:
        if get("capacity", "host_reserve") is not None:
            fields["host_reserve_bytes"] = parse_size(get("capacity", "host_reserve"))
        if get("defaults", "memory") is not None:
            fields["default_memory_bytes"] = parse_size(get("defaults", "memory"))
        if get("defaults", "child_size") is not None:
            fields["child_size_bytes"] = parse_size(get("defaults", "child_size"))
    except BadInput as exc:
        raise ConfigError(exc.message, step="config", fix=exc.fix) from None
    for section, key, field in (("capacity", "overcommit", "overcommit"),
                                ("defaults", "health_timeout", "health_timeout")):
        value = get(section, key)
        if value is not None:
            if not math.isfinite(value) or value <= 0:
                raise _bad(section, key, value, "must be a number above 0")
            fields[field] = float(value)
    if get("defaults", "max_clients") is not None:
        fields["default_max_clients"] = get("defaults", "max_clients")
    for key in ("open_files", "cpu_weight"):
        if get("defaults", key) is not None:
            fields[key] = get("defaults", key)
    fields.update(_kvm_fields(raw.get("kvm", {})))
    if get("kvm", "pool_path") is not None:
        fields["kvm_pool_path"] = _safe_path("[kvm] pool_path", get("kvm", "pool_path"))
    if get("defaults", "cpu_quota") is not None:
        try:
            fields["cpu_quota"] = parse_cpu_quota(get("defaults", "cpu_quota"))
        except ValueError as exc:
            raise _bad("defaults", "cpu_quota", get("defaults", "cpu_quota"),
                       f"is not a CPU quota: {exc}",
                       'write it like "50%" (half of one CPU) or 2 (two CPUs)') from None
    if get("metering", "retention") is not None:
        fields["retention_days"] = get("metering", "retention")
    config = Config(**fields)
    check(config)
    return config


def _kvm_fields(kvm):
    fields = {f"kvm_{key}": kvm[key] for key in (
        "uri", "pool", "domain_prefix", "accel", "network", "bridge", "ssh_port", "vcpus",
        "outbound") if key in kvm}
    if "loopback_pool" in kvm:
        try:
            pool = ipaddress.IPv4Network(kvm["loopback_pool"])
        except ValueError as exc:
            raise _bad("kvm", "loopback_pool", kvm["loopback_pool"],
                       f"is not a network: {exc}") from None
        if not pool.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")) or pool.num_addresses < 4:
            raise _bad("kvm", "loopback_pool", kvm["loopback_pool"],
                       "must be a /30 or larger inside 127.0.0.0/8", "like 127.77.0.0/16")
        fields["kvm_loopback_pool"] = pool
    if "disk_size" in kvm:
        try:
            fields["kvm_disk_bytes"] = parse_size(kvm["disk_size"])
        except BadInput as exc:
            raise ConfigError(f"[kvm] disk_size: {exc.message}", step="config") from None
    if "boot_timeout" in kvm:
        if not math.isfinite(kvm["boot_timeout"]) or kvm["boot_timeout"] <= 0:
            raise _bad("kvm", "boot_timeout", kvm["boot_timeout"], "must be a number above 0")
        fields["kvm_boot_timeout"] = float(kvm["boot_timeout"])
    return fields


def _check_kvm(config):
    if config.kvm_accel not in ("auto", "kvm", "qemu"):
        raise _bad("kvm", "accel", config.kvm_accel, "is not auto, kvm or qemu")
    if config.kvm_network not in ("user", "bridge"):
        raise _bad("kvm", "network", config.kvm_network, "is not user or bridge")
    if config.kvm_network == "bridge" and not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}",
                                                           config.kvm_bridge):
        raise _bad("kvm", "bridge", config.kvm_bridge, "is not a bridge name",
                   "name the host bridge guests join, like br0")
    for key in ("pool", "domain_prefix"):
        value = getattr(config, f"kvm_{key}")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}",
                            value):
            raise _bad("kvm", key, value, "must be a plain name",
                       "use ASCII letters, digits, '-' or '_'")
    if not 1 <= config.kvm_ssh_port <= 65535:
        raise _bad("kvm", "ssh_port", config.kvm_ssh_port, "is not a TCP port")
    if config.kvm_ssh_port in config.port_range:
        raise _bad("kvm", "ssh_port", config.kvm_ssh_port, "lies inside the tenant ports",
                   "move it or [allocation] port_range")
    if not 1 <= config.kvm_vcpus <= 64:
        raise _bad("kvm", "vcpus", config.kvm_vcpus, "is outside 1-64")
    if config.kvm_disk_bytes < 2 << 30:
        raise _bad("kvm", "disk_size", config.kvm_disk_bytes, "is below 2G",
                   "the image's system takes about 1.2G")


def check(config, local_ports=None):
    """Refuse a configuration that would hand out unusable ports, addresses or uids."""
    local_ports = local_ports or _local_port_range()
    if local_ports and config.port_range.overlaps(local_ports):
        raise ConfigError(
            f"[allocation] port_range {config.port_range} overlaps the kernel's ephemeral "
            f"ports {local_ports} (net.ipv4.ip_local_port_range)",
            step="config", fix="choose a range outside it, for example 20000-29999",
        )
    if config.port_range.high > 65535:
        raise ConfigError(f"[allocation] port_range {config.port_range} passes 65535",
                          step="config")
    if config.address_pool.num_addresses < 4:
        raise ConfigError(f"[allocation] address_pool {config.address_pool} is too small",
                          step="config", fix="give a /30 or larger")
    if not 0 < config.proxy_port <= 65535:
        raise ConfigError(f"[proxy] port {config.proxy_port} is not a TCP port", step="config")
    if config.proxy_port in config.port_range:
        raise ConfigError(f"[proxy] port {config.proxy_port} lies inside the tenant ports",
                          step="config", fix="move it or [allocation] port_range")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", config.cgroup_parent):
        raise ConfigError(f"[cgroups] parent {config.cgroup_parent!r} must be one plain name",
                          step="config", fix="use ASCII letters, digits, '-' or '_'")
    if config.uid_range.high > 2**31 - 1:
        raise ConfigError(f"[allocation] uid_range {config.uid_range} passes 2147483647",
                          step="config", fix="choose uids below 2147483647")
    try:
        pwd.getpwnam(config.proxy_user)
    except KeyError:
        raise ConfigError(f"[proxy] user {config.proxy_user!r} is not a user on this host",
                          step="config", fix="name an existing user, like www-data") from None
    try:
        check_limits(config.default_memory_bytes, 1 if config.default_max_clients is None
                     else config.default_max_clients)
    except BadInput as exc:
        raise ConfigError(f"[defaults]: {exc.message}", step="config") from None
    if not 64 <= config.open_files <= 1 << 20:
        raise ConfigError(f"[defaults] open_files {config.open_files} is outside 64-1048576",
                          step="config", fix="4096 suits most sites")
    if not 1 <= config.cpu_weight <= 10000:
        raise ConfigError(f"[defaults] cpu_weight {config.cpu_weight} is outside 1-10000",
                          step="config", fix="100 is an even share")
    _check_kvm(config)
    if not 1 <= config.retention_days <= 36600:
        raise ConfigError(f"[metering] retention {config.retention_days} is outside 1-36600 "
                          "days", step="config",
                          fix="keep samples at least as long as a billing period, e.g. 90")
    if config.child_size_bytes < 4 << 20:
        raise ConfigError("[defaults] child_size is below 4M", step="config",
                          fix="measure an idle mod_perl child; 48M is typical")
