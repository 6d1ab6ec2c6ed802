"""The front proxy: one nginx for the host, its configuration rendered from the state store.

nginx is the front proxy because it holds thousands of slow client connections in one
small process and hands each request to a mod_perl backend only when it has arrived
whole, so large mod_perl children are not held by slow clients; its `-t` checks a
candidate configuration without touching the running server.

Every change renders the whole configuration from the tenants that should be routed,
checks it with `nginx -t`, swaps it in and reloads. A candidate that fails the check is
left beside the live file for inspection and the running proxy keeps its old routes.
"""

import dataclasses
import logging
import os
import re
import time
from pathlib import Path

import jinja2

from . import hostcmd, probe
from .errors import HostCommandError, ProxyError

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"


@dataclasses.dataclass(frozen=True)
class Route:
    """One hostname the proxy sends to one tenant's backend."""

    name: str
    hostname: str
    address: str
    port: int
    stopped: bool = False


class FrontProxy:
    """The nginx instance that belongs to one orch state directory."""

    def __init__(self, config):
        self.config = config
        self.dir = config.proxy_dir
        self.conf = self.dir / "nginx.conf"
        self.candidate = self.dir / "nginx.conf.candidate"
        self.pidfile = self.dir / "nginx.pid"

    @property
    def local_address(self):
        """Where this host reaches the proxy itself (for health checks)."""
        address = self.config.proxy_address
        return "127.0.0.1" if address == "0.0.0.0" else address

    def render(self, routes):
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
        )
        return env.get_template("nginx.conf.j2").render(
            routes=sorted(routes, key=lambda r: r.hostname), dir=self.dir,
            address=self.config.proxy_address, port=self.config.proxy_port,
            user=self.config.proxy_user,
        )

    def _prepare_dirs(self):
        for sub in ("logs", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)

    def check(self, text, tenant=None):
        """Test `text` as the whole configuration; raise ProxyError with nginx's reason."""
        self._prepare_dirs()
        self.candidate.write_text(text)
        try:
            hostcmd.run(self._nginx("-t", conf=self.candidate), tenant=tenant, step="proxy")
        except HostCommandError as exc:
            raise ProxyError(
                f"nginx refused the new configuration: {exc.message}", tenant=tenant,
                step="proxy", fix=f"the rejected file is {self.candidate}; the running proxy "
                "is unchanged", detail=exc.detail,
            ) from None

    def apply(self, routes, tenant=None, start=True):
        """Make the proxy serve exactly `routes`, starting it if it is down and `start`."""
        text = self.render(routes)
        running = self.pid() is not None
        if running and self.conf.exists() and self.conf.read_text() == text:
            return
        self.check(text, tenant)
        os.replace(self.candidate, self.conf)
        if running:
            self._reload(tenant)
        elif start:
            self._start(tenant)
        log.info("front proxy: serving %d hostname(s)", len(routes))

    def _nginx(self, *args, conf=None):
        return ["nginx", "-p", f"{self.dir}/", "-e", self.dir / "logs" / "error.log",
                "-c", conf or self.conf, *args]

    def _start(self, tenant):
        holder = port_holder(self.config.proxy_port)
        if holder:
            raise ProxyError(
                f"port {self.config.proxy_port} is held by {holder}", tenant=tenant,
                step="proxy", fix="free it, or set [proxy] port in orch's config.toml",
            )
        hostcmd.run(self._nginx(), tenant=tenant, step="proxy")
        deadline = time.monotonic() + 5
        while self.pid() is None:
            if time.monotonic() > deadline:
                raise ProxyError("nginx did not write its pid file", tenant=tenant,
                                 step="proxy", fix=f"see {self.dir}/logs/error.log")
            time.sleep(0.05)

    def _reload(self, tenant):
        master = self.pid()
        before = probe.children(master)
        hostcmd.run(self._nginx("-s", "reload"), tenant=tenant, step="proxy")
        # A reload is asynchronous: wait until the workers that knew the old routes are gone.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = probe.children(master)
            if now and not (now & before):
                return
            time.sleep(0.05)
        log.warning("front proxy: old workers still running 10 s after reload")

    def pid(self):
        """The master's pid when this proxy is running, else None.

        The pid file outlives a killed nginx or a reboot, so the pid is trusted only if that
        process is an nginx master started with this proxy's own configuration file.
        """
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        ours = cmdline[:1] and cmdline[0].startswith(b"nginx: master process")
        return pid if ours and str(self.conf).encode() in b" ".join(cmdline) else None

    def stop(self):
        """Stop this proxy (its master, by the pid in its own pid file) and wait for it."""
        pid = self.pid()
        if pid is None:
            return
        hostcmd.run(self._nginx("-s", "quit"), step="proxy")
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def get(self, hostname, path="/", timeout=5.0):
        """One request through the proxy with this Host header: (status, body, headers)."""
        return probe.get(self.local_address, self.config.proxy_port, hostname, path, timeout)


def port_holder(port):
    """`pid N (name)` of a process listening on TCP `port`, or None when it is free."""
    try:
        done = hostcmd.run(["ss", "-Hltnp", f"sport = :{port}"], check=False)
    except HostCommandError:
        return None
    for line in done.stdout.splitlines():
        match = re.search(r'users:\(\("([^"]+)",pid=(\d+)', line)
        if match:
            return f"pid {match.group(2)} ({match.group(1)})"
        if line.strip():
            return "another process"
    return None
