#!/usr/bin/env python3
"""Ansible inventory from orch's state store: one host per tenant, grouped by backend.

Reads `$ORCH_HOME/state.db` (default /var/lib/orch). The facts orch allocated are given
as `orch_*` host variables; group_vars/all.yml turns them into the roles' variables.
Only the standard library is used, so any Python 3 can run it.
"""

import json
import os
import sqlite3
import sys
from pathlib import Path

FACTS = ("name", "backend", "state", "uid", "port", "address", "hostname",
         "memory_limit_bytes", "max_clients")


def inventory(db_path):
    groups = {"tenants": {"hosts": []}}
    hostvars = {}
    if db_path.exists():
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        for row in db.execute("SELECT * FROM tenants WHERE state != 'deleting' ORDER BY name"):
            name = row["name"]
            groups["tenants"]["hosts"].append(name)
            groups.setdefault(row["backend"], {"hosts": []})["hosts"].append(name)
            variables = {f"orch_{fact}": row[fact] for fact in FACTS}
            variables["orch_gid"] = row["uid"]
            variables.update(json.loads(row["ansible_vars"]))
            hostvars[name] = variables
        db.close()
    groups["all"] = {"children": sorted(groups)}
    groups["_meta"] = {"hostvars": hostvars}
    return groups


def main(argv):
    home = Path(os.environ.get("ORCH_HOME") or "/var/lib/orch")
    data = inventory(home / "state.db")
    if len(argv) > 2 and argv[1] == "--host":
        data = data["_meta"]["hostvars"].get(argv[2], {})
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
