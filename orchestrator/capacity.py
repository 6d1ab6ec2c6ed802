"""Admission: whether the host's memory budget holds one more tenant of a given size."""

from pathlib import Path

from .errors import CapacityError


def host_memory_bytes(meminfo=Path("/proc/meminfo")):
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise CapacityError("MemTotal is missing from /proc/meminfo", step="admission")


def budget(config, total=None):
    """Bytes that tenants may be promised: (total - reserve) x overcommit."""
    total = host_memory_bytes() if total is None else total
    return int(max(0, total - config.host_reserve_bytes) * config.overcommit)


def admit(config, tenants, memory_bytes, name, total=None):
    """Refuse a tenant whose memory cap would take the promises past the budget."""
    promised = sum(t.memory_limit_bytes for t in tenants if t.name != name)
    limit = budget(config, total)
    if promised + memory_bytes > limit:
        mib = 1 << 20
        raise CapacityError(
            f"a {memory_bytes // mib} MiB cap for {name} would promise "
            f"{(promised + memory_bytes) // mib} MiB of a {limit // mib} MiB budget "
            f"({promised // mib} MiB promised to the other tenants)",
            tenant=name, step="admission",
            fix="give a smaller --memory, delete a tenant, or raise [capacity] overcommit",
        )
    return {"budget": limit, "promised": promised}


def summary(config, tenants, usages, size=None, total=None):
    """The host's memory, the budget, what is promised and used, and how many more fit."""
    total = host_memory_bytes() if total is None else total
    limit = budget(config, total)
    promised = sum(t.memory_limit_bytes for t in tenants)
    size = size or config.default_memory_bytes
    return {
        "host_memory_bytes": total,
        "reserved_bytes": config.host_reserve_bytes,
        "overcommit": config.overcommit,
        "budget_bytes": limit,
        "promised_bytes": promised,
        "used_bytes": sum(u.get("memory_current", 0) for u in usages.values()),
        "tenants": len(tenants),
        "size_bytes": size,
        "fit": max(0, (limit - promised) // size),
    }
