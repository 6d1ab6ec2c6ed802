"""Small looks at running things: one HTTP request by Host header, a process's children."""

import contextlib
import http.client
from pathlib import Path


def get(address, port, hostname, path="/", timeout=2.0):
    """One GET with this Host header: (status, body, headers); OSError when no answer."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": hostname})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace"), response.headers
    finally:
        conn.close()


def children(pid):
    """The pids whose parent is `pid` (empty when it is gone)."""
    found = set()
    if pid is None:
        return found
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(FileNotFoundError):
            found.update(int(p) for p in task.read_text().split())
    return found


def descendants(pid):
    found = set()
    for child in children(pid):
        found |= {child} | descendants(child)
    return found
