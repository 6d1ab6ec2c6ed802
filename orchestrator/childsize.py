"""The measured size of a mod_perl child, from which MaxRequestWorkers is derived.

A child's size is its PSS (proportional set size, /proc/PID/smaps_rollup): its private
pages plus its share of every page it maps with other processes, so the PSS of all of a
tenant's children adds up to what they cost together. orch measures the children of a
tenant right after its first HTTP 200 and keeps the largest figure: per tenant (shown by
`orch show`) and for the host. Later creates without --max-clients budget each child the
larger of that figure (while the base image is the same) and `[defaults] child_size`,
since a child grows when it works: the measurement lowers the worker count of a tenant
whose children are large, and a child_size set low lets it decide alone.
"""

import json
import logging
import sqlite3
import time
from pathlib import Path

from . import images

log = logging.getLogger(__name__)

SETTING = "measured_child_size"
#: A measured figure below this is taken as this, so one odd reading cannot ask for
#: hundreds of workers.
FLOOR = 4 << 20


def pss_bytes(pid, proc=Path("/proc")):
    """The PSS of one process in bytes, or None when it has gone or cannot be read."""
    try:
        text = (proc / str(pid) / "smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return None


def largest_child(pids, proc=Path("/proc")):
    """The largest PSS among these children, in bytes, or None when none could be read."""
    sizes = [size for size in (pss_bytes(pid, proc) for pid in pids) if size is not None]
    return max(sizes) if sizes else None


def measure(host, tenant):
    """Measure the tenant's children now and record the figure; return it (or None)."""
    backend = host.backend(tenant.backend)
    if not backend.can_measure_children:
        return None
    size = largest_child(backend.worker_pids(tenant))
    if size is None:
        log.warning("tenant %s: no Apache child could be measured", tenant.name)
        return None
    host.store.set_child_size(tenant.name, size)
    record = {"bytes": size, "tenant": tenant.name, "at": time.time(),
              "image": _image(host.config)}
    host.store.set_setting(SETTING, json.dumps(record, sort_keys=True))
    log.info("tenant %s: a mod_perl child measures %.1f MiB (PSS)", tenant.name, size / 2**20)
    return size


def recorded(config):
    """The host's last measured child size for the current base image, or None.

    Read without opening the state store for writing, so a create refused for bad input
    leaves nothing on the host.
    """
    if not config.state_db.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{config.state_db}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM settings WHERE key = ?", (SETTING,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    if row is None:
        return None
    record = json.loads(row[0])
    if record.get("image") != _image(config):
        return None
    return max(FLOOR, int(record["bytes"]))


def _image(config):
    return images.image_key(config.suite, images.package_list(), config.mirror)
