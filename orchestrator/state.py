"""The state store: tenants, what each one's create made, and events, in one SQLite file."""

import contextlib
import dataclasses
import json
import sqlite3
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    state TEXT NOT NULL,
    uid INTEGER NOT NULL UNIQUE,
    port INTEGER NOT NULL UNIQUE,
    address TEXT NOT NULL UNIQUE,
    host_address TEXT NOT NULL UNIQUE,
    link_index INTEGER NOT NULL UNIQUE,
    hostname TEXT NOT NULL UNIQUE,
    memory_limit_bytes INTEGER NOT NULL,
    max_clients INTEGER NOT NULL,
    child_size_bytes INTEGER,
    autostart INTEGER NOT NULL DEFAULT 1,
    ansible_vars TEXT NOT NULL DEFAULT '{}',
    failure TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS resources (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    at REAL NOT NULL,
    memory_current INTEGER NOT NULL,
    memory_peak INTEGER NOT NULL,
    memory_cache INTEGER NOT NULL,
    cpu_seconds REAL NOT NULL,
    processes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_by_time ON samples (at, tenant);
CREATE TABLE IF NOT EXISTS deletions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS converges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    at REAL NOT NULL,
    changed INTEGER NOT NULL,
    failure TEXT,
    report TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    at REAL NOT NULL,
    step TEXT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
"""

STATES = ("creating", "running", "stopped", "failed", "deleting")


@dataclasses.dataclass(frozen=True)
class Tenant:
    """One tenant as the state store holds it."""

    name: str
    backend: str
    state: str
    uid: int
    port: int
    address: str
    host_address: str
    link_index: int
    hostname: str
    memory_limit_bytes: int
    max_clients: int
    child_size_bytes: int | None
    autostart: bool
    ansible_vars: dict
    failure: str | None
    created_at: float
    updated_at: float

    @property
    def gid(self):
        return self.uid

    def public(self):
        """The fields `orch show` reports."""
        return {
            "name": self.name,
            "backend": self.backend,
            "state": self.state,
            "uid": self.uid,
            "gid": self.gid,
            "port": self.port,
            "address": self.address,
            "hostname": self.hostname,
            "memory_limit_bytes": self.memory_limit_bytes,
            "max_clients": self.max_clients,
            "child_size_bytes": self.child_size_bytes,
            "autostart": self.autostart,
            "failure": self.failure,
            "created_at": self.created_at,
        }


@dataclasses.dataclass(frozen=True)
class Resource:
    """Something a create made on the host, recorded before it was made."""

    id: int
    tenant: str
    kind: str
    data: dict


class Store:
    """A connection to the state file; every write is its own short transaction."""

    def __init__(self, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        columns = {row["name"] for row in self.db.execute("PRAGMA table_info(tenants)")}
        if "child_size_bytes" not in columns:  # a state file from before it was measured
            self.db.execute("ALTER TABLE tenants ADD COLUMN child_size_bytes INTEGER")

    def close(self):
        self.db.close()

    @contextlib.contextmanager
    def transaction(self):
        """A write transaction that holds the database lock from its first statement."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def get(self, name):
        row = self.db.execute("SELECT * FROM tenants WHERE name = ?", (name,)).fetchone()
        return _tenant(row) if row else None

    def tenants(self):
        rows = self.db.execute("SELECT * FROM tenants ORDER BY name").fetchall()
        return [_tenant(row) for row in rows]

    def tenant_for_hostname(self, hostname):
        row = self.db.execute("SELECT * FROM tenants WHERE hostname = ?", (hostname,)).fetchone()
        return _tenant(row) if row else None

    def set_state(self, name, state, failure=None):
        assert state in STATES, state
        self.db.execute(
            "UPDATE tenants SET state = ?, failure = ?, updated_at = ? WHERE name = ?",
            (state, failure, time.time(), name),
        )

    def set_limits(self, name, memory_limit_bytes, max_clients):
        self.db.execute(
            "UPDATE tenants SET memory_limit_bytes = ?, max_clients = ?, updated_at = ?"
            " WHERE name = ?", (memory_limit_bytes, max_clients, time.time(), name))

    def set_child_size(self, name, size_bytes):
        """The measured size (PSS) of one of the tenant's mod_perl children."""
        self.db.execute("UPDATE tenants SET child_size_bytes = ?, updated_at = ? WHERE name = ?",
                        (size_bytes, time.time(), name))

    def set_ansible_vars(self, name, variables):
        self.db.execute(
            "UPDATE tenants SET ansible_vars = ?, updated_at = ? WHERE name = ?",
            (json.dumps(variables, sort_keys=True), time.time(), name),
        )

    def delete(self, name, at=None):
        """Forget the tenant, but keep its samples for billing until the retention ends."""
        at = time.time() if at is None else at
        with self.transaction() as db:
            db.execute("DELETE FROM resources WHERE tenant = ?", (name,))
            db.execute("DELETE FROM events WHERE tenant = ?", (name,))
            db.execute("DELETE FROM converges WHERE tenant = ?", (name,))
            if db.execute("SELECT 1 FROM samples WHERE tenant = ? LIMIT 1", (name,)).fetchone():
                db.execute("INSERT INTO deletions (tenant, at) VALUES (?, ?)", (name, at))
            db.execute("DELETE FROM tenants WHERE name = ?", (name,))

    def add_resource(self, tenant, kind, **data):
        cursor = self.db.execute(
            "INSERT INTO resources (tenant, kind, data) VALUES (?, ?, ?)",
            (tenant, kind, json.dumps(data, sort_keys=True)),
        )
        return cursor.lastrowid

    def resources(self, tenant):
        rows = self.db.execute(
            "SELECT * FROM resources WHERE tenant = ? ORDER BY id", (tenant,)
        ).fetchall()
        return [Resource(r["id"], r["tenant"], r["kind"], json.loads(r["data"])) for r in rows]

    def update_resource(self, resource_id, **data):
        """Replace what a recorded object says about itself (a mount's new lower layer)."""
        self.db.execute("UPDATE resources SET data = ? WHERE id = ?",
                        (json.dumps(data, sort_keys=True), resource_id))

    def drop_resource(self, resource_id):
        self.db.execute("DELETE FROM resources WHERE id = ?", (resource_id,))

    def setting(self, key):
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else None

    def set_setting(self, key, value):
        """Keep `value` under `key`; None removes it."""
        if value is None:
            self.db.execute("DELETE FROM settings WHERE key = ?", (key,))
        else:
            self.db.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key)"
                            " DO UPDATE SET value = excluded.value", (key, value))

    SAMPLE_FIELDS = ("memory_current", "memory_peak", "memory_cache", "cpu_seconds",
                     "processes")

    def add_sample(self, tenant, at, usage):
        self.db.execute(
            "INSERT INTO samples (tenant, at, memory_current, memory_peak, memory_cache,"
            " cpu_seconds, processes) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (tenant, at, *(usage[f] for f in self.SAMPLE_FIELDS)),
        )

    def prune_samples(self, before):
        """Drop the samples, and the deletions, older than `before`."""
        with self.transaction() as db:
            db.execute("DELETE FROM samples WHERE at < ?", (before,))
            db.execute("DELETE FROM deletions WHERE at < ?", (before,))

    def deletions(self, start, end):
        """When each tenant deleted in [start, end] was deleted (the last time, if twice)."""
        rows = self.db.execute(
            "SELECT tenant, MAX(at) AS at FROM deletions WHERE at >= ? AND at <= ?"
            " GROUP BY tenant", (start, end)).fetchall()
        return {row["tenant"]: row["at"] for row in rows}

    def samples(self, start, end):
        """Samples taken in [start, end], oldest first, grouped by tenant."""
        grouped = {}
        rows = self.db.execute(
            "SELECT * FROM samples WHERE at >= ? AND at <= ? ORDER BY at, id", (start, end)
        ).fetchall()
        for row in rows:
            grouped.setdefault(row["tenant"], []).append(dict(row))
        return grouped

    def latest_samples(self):
        rows = self.db.execute(
            "SELECT * FROM samples WHERE id IN (SELECT MAX(id) FROM samples GROUP BY tenant)"
        ).fetchall()
        return {row["tenant"]: dict(row) for row in rows}

    def record_converge(self, tenant, report):
        """When the tenant last converged, what changed, and any failure."""
        self.db.execute(
            "INSERT INTO converges (tenant, at, changed, failure, report) VALUES (?, ?, ?, ?, ?)",
            (tenant, report["at"], len(report["changed"]), report["failure"],
             json.dumps(report, sort_keys=True)),
        )
        self.db.execute(
            "DELETE FROM converges WHERE tenant = ? AND id NOT IN (SELECT id FROM converges"
            " WHERE tenant = ? ORDER BY id DESC LIMIT 20)", (tenant, tenant))

    def last_converge(self, tenant):
        row = self.db.execute(
            "SELECT report FROM converges WHERE tenant = ? ORDER BY id DESC LIMIT 1", (tenant,)
        ).fetchone()
        return json.loads(row["report"]) if row else None

    def event(self, tenant, step, message, level="info"):
        self.db.execute(
            "INSERT INTO events (tenant, at, step, level, message) VALUES (?, ?, ?, ?, ?)",
            (tenant, time.time(), step, level, message),
        )

    def events(self, tenant):
        rows = self.db.execute(
            "SELECT at, step, level, message FROM events WHERE tenant = ? ORDER BY id", (tenant,)
        ).fetchall()
        return [dict(row) for row in rows]


def _tenant(row):
    fields = dict(row)
    fields["autostart"] = bool(fields["autostart"])
    fields["ansible_vars"] = json.loads(fields["ansible_vars"])
    return Tenant(**fields)
