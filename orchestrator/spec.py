"""The tenant spec and the one naming policy, applied before any host command runs."""

import dataclasses
import grp
import pwd
import re

from .errors import BadInput

NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,29}")
LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
SIZE_RE = re.compile(r"(\d+)\s*([kmgt]?)(i?b)?", re.IGNORECASE | re.ASCII)
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

# Names a tenant may not take, beyond the users that already exist on the host: account
# names every distribution ships or reserves, and the role mailboxes of RFC 2142.
RESERVED_NAMES = frozenset((
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp",
    "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody", "nogroup",
    "systemd-network", "systemd-resolve", "systemd-timesync", "messagebus", "sshd", "_apt",
    "polkitd", "admin", "administrator", "operator", "sudo", "wheel", "staff", "users", "adm",
    "tty", "disk", "kmem", "dialout", "cdrom", "floppy", "audio", "video", "plugdev", "netdev",
    "shadow", "utmp", "voice", "sasl", "src", "apache", "httpd", "nginx", "postfix",
    "postmaster", "hostmaster", "webmaster", "abuse", "noc", "security", "support", "ftp", "www",
    "http", "localhost", "default", "orch", "libvirt", "libvirt-qemu", "kvm", "lxc",
))

MIN_MEMORY = 64 << 20
MAX_CLIENTS = 256
BACKENDS = ("jail", "uml", "lxc", "kvm", "colo")


@dataclasses.dataclass(frozen=True)
class TenantSpec:
    """What the operator asked for; everything here has passed validation."""

    name: str
    hostname: str
    backend: str = "jail"
    memory_limit_bytes: int = 512 << 20
    max_clients: int = 8


def parse_size(text):
    """Bytes from `512M`, `1G`, `1GiB` or a plain byte count (units are powers of 1024)."""
    match = SIZE_RE.fullmatch(str(text).strip())
    if not match:
        raise BadInput(f"{text!r} is not a size", fix="write it like 512M or 2G")
    return int(match.group(1)) * SIZE_UNITS[match.group(2).lower()]


def check_name(name, existing_user=None):
    """Refuse a tenant name that breaks the policy, with the reason and the fix."""
    existing_user = existing_user or _host_account_exists
    if not NAME_RE.fullmatch(name or ""):
        raise BadInput(
            f"tenant name {name!r} is not allowed", tenant=printable(name),
            step="validate",
            fix="use a lowercase letter followed by up to 29 lowercase letters, digits or '-'",
        )
    if name.endswith("-") or "--" in name:
        raise BadInput(
            f"tenant name {name!r} is not allowed: it would not make a valid DNS label",
            tenant=name, step="validate",
            fix="do not end it with '-' or use '--'",
        )
    if name in RESERVED_NAMES:
        raise BadInput(
            f"tenant name {name!r} is reserved", tenant=name, step="validate",
            fix="choose another name",
        )
    if existing_user(name):
        raise BadInput(
            f"tenant name {name!r} is already a user or group on this host",
            tenant=name, step="validate",
            fix="choose a name that is in neither /etc/passwd nor /etc/group",
        )


def printable(name):
    """A name as it can be shown on any terminal, odd bytes escaped."""
    return (name or "").encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")


def _host_account_exists(name):
    """A user or a group of that name: the guest's image has the same system accounts."""
    for lookup in (pwd.getpwnam, grp.getgrnam):
        try:
            lookup(name)
        except KeyError:
            continue
        return True
    return False


def check_hostname(hostname):
    """Return the hostname in canonical form (lowercase, no trailing dot) or refuse it."""
    host = (hostname or "").strip().lower().removesuffix(".")
    labels = host.split(".")
    problem = None
    if not host:
        problem = "is empty"
    elif len(host) > 253:
        problem = "is longer than 253 characters"
    elif len(labels) < 2:
        problem = "needs at least two labels (like shop.example.com)"
    elif not all(LABEL_RE.fullmatch(label) for label in labels):
        problem = "has a label that is not 1-63 letters, digits or inner '-'"
    elif labels[-1].isdigit():
        problem = "looks like an IP address; give a DNS name"
    elif host.endswith(".localhost") or host == "localhost":
        problem = "is a loopback name"
    if problem:
        raise BadInput(
            f"hostname {hostname!r} {problem}",
            step="validate",
            fix="give a DNS name such as shop.example.com",
        )
    return host


def check_limits(memory_limit_bytes, max_clients):
    """Refuse a memory cap or worker count that cannot run a mod_perl server."""
    if memory_limit_bytes < MIN_MEMORY:
        raise BadInput(
            f"memory {memory_limit_bytes} bytes is below the {MIN_MEMORY >> 20}M a mod_perl "
            "server needs",
            step="validate",
            fix="give --memory 64M or more",
        )
    if not 1 <= max_clients <= MAX_CLIENTS:
        raise BadInput(
            f"--max-clients {max_clients} is outside 1-{MAX_CLIENTS}",
            step="validate",
            fix=f"give a number from 1 to {MAX_CLIENTS}",
        )


MASTER_SIZE = 64 << 20  # the Apache master and the room a graceful restart needs


def workers_for(memory_bytes, child_size_bytes):
    """MaxRequestWorkers that fit the memory cap: what is left after the master, per child."""
    return max(1, min(MAX_CLIENTS, (memory_bytes - MASTER_SIZE) // child_size_bytes))


def child_limit_for(memory_bytes, workers):
    """The private memory one child may reach before Apache2::SizeLimit recycles it: the
    cap's share per child after the master (the role derives the same figure)."""
    return max(0, memory_bytes - MASTER_SIZE) // workers


def derived_names(name, link_index):
    """Every name the host derives from a tenant, each checked against its own limit."""
    names = {
        "unix_user": name,
        "cgroup": name,
        "link": f"ot{link_index}",
        "guest_link": f"ot{link_index}g",
        "netns": f"orch-ot{link_index}",
        "libvirt_domain": f"orch-{name}",
        "dns_label": name,
    }
    limits = {"unix_user": 32, "link": 15, "guest_link": 15, "libvirt_domain": 64,
              "dns_label": 63, "cgroup": 255, "netns": 255}
    for kind, value in names.items():
        if len(value) > limits[kind]:
            raise BadInput(f"tenant {name}: derived {kind} {value!r} is too long")
    return names


def make_spec(name, hostname, backend="jail", memory=None, max_clients=None, *, defaults,
              existing_user=None, child_size=None):
    """Validate every field of a create request and return the spec, or raise BadInput.

    When the worker count is derived, each child is budgeted the larger of
    `defaults.child_size_bytes` and `child_size`, the measured size of a mod_perl child on
    this host: an idle child is smaller than a working one, so a measurement can lower the
    worker count below what child_size allows, never raise it.
    """
    check_name(name, existing_user)
    try:
        host = check_hostname(hostname)
    except BadInput as exc:
        exc.tenant = name
        raise
    if backend not in BACKENDS:
        raise BadInput(
            f"backend {backend!r} is unknown", step="validate",
            fix=f"choose one of {', '.join(BACKENDS)}",
        )
    try:
        memory_bytes = (parse_size(memory) if memory is not None
                        else defaults.default_memory_bytes)
    except BadInput as exc:
        raise BadInput(f"--memory {exc.message}", tenant=name, step="validate",
                       fix=exc.fix) from None
    if max_clients is not None:
        clients = int(max_clients)
    elif defaults.default_max_clients is not None:
        clients = defaults.default_max_clients
    else:
        clients = workers_for(memory_bytes, max(defaults.child_size_bytes, child_size or 0))
    try:
        check_limits(memory_bytes, clients)
    except BadInput as exc:
        exc.tenant = name
        raise
    return TenantSpec(name, host, backend, memory_bytes, clients)
