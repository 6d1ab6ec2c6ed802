"""uid, port and address allocation for a new tenant, inside one transaction."""

import ipaddress
import pwd
import time

from .errors import BadInput, CapacityError


def _host_uid_taken(uid):
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _first_free(candidates, taken, what, fix):
    for value in candidates:
        if value not in taken:
            return value
    raise CapacityError(f"no free {what} is left", step="allocate", fix=fix)


def slot_addresses(pool, slot):
    """The host and guest ends of point-to-point slot `slot` (a /31) of `pool`."""
    base = int(pool.network_address) + 2 * slot
    return ipaddress.IPv4Address(base), ipaddress.IPv4Address(base + 1)


def allocate(store, spec, config, uid_taken=None, link_taken=None, pool=None):
    """Reserve a uid, a port and an address pair for `spec` and record it as `creating`.

    The unique columns of the tenants table make a second holder impossible even if two
    processes raced past the lock; the transaction makes the choice and the record one step.
    """
    pool = pool or config.address_pool
    uid_taken = uid_taken or _host_uid_taken
    link_taken = link_taken or (lambda index: False)
    with store.transaction() as db:
        if db.execute("SELECT 1 FROM tenants WHERE name = ?", (spec.name,)).fetchone():
            raise BadInput(
                f"tenant {spec.name} already exists", tenant=spec.name, step="allocate",
                fix=f"pick another name or run `orch delete-tenant {spec.name}`",
            )
        owner = db.execute(
            "SELECT name FROM tenants WHERE hostname = ?", (spec.hostname,)
        ).fetchone()
        if owner:
            raise BadInput(
                f"hostname {spec.hostname} already belongs to tenant {owner['name']}",
                tenant=spec.name, step="allocate", fix="give this tenant another hostname",
            )
        used = db.execute("SELECT uid, port, address FROM tenants").fetchall()
        uids = {row["uid"] for row in used}
        ports = {row["port"] for row in used}
        addresses = {row["address"] for row in used}

        uid = _first_free(
            (u for u in range(config.uid_range.low, config.uid_range.high + 1)
             if not uid_taken(u)),
            uids, "uid", "widen [allocation] uid_range",
        )
        port = _first_free(
            range(config.port_range.low, config.port_range.high + 1), ports, "port",
            "widen [allocation] port_range",
        )
        slots = pool.num_addresses // 2
        slot = _first_free(
            (s for s in range(1, slots)
             if str(slot_addresses(pool, s)[1]) not in addresses
             and not link_taken(int(slot_addresses(pool, s)[1]) & 0xFFFFFF)),
            set(), "address", f"widen the address pool {pool}",
        )
        host_address, address = slot_addresses(pool, slot)

        now = time.time()
        db.execute(
            "INSERT INTO tenants (name, backend, state, uid, port, address, host_address,"
            " link_index, hostname, memory_limit_bytes, max_clients, created_at, updated_at)"
            " VALUES (?, ?, 'creating', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (spec.name, spec.backend, uid, port, str(address), str(host_address),
             int(address) & 0xFFFFFF, spec.hostname, spec.memory_limit_bytes,
             spec.max_clients, now, now),
        )
    return store.get(spec.name)
