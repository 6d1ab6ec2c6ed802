"""Generated systemd units: a template per tenant, the front proxy, a target, a timer.

The units call the same entry points a host without systemd uses (`orch start`,
`orch boot`, `orch reprovision --all`), so both paths run the same code.
"""

import shlex
import sys
from pathlib import Path

TENANT = """\
[Unit]
Description=orch tenant %i: Apache httpd with mod_perl in its own guest
PartOf=orch.target
After=network-online.target
Wants=network-online.target
Before=orch-proxy.service

[Service]
Type=oneshot
RemainAfterExit=yes
Environment={env}
ExecStart={orch} start %i
# The tenant is stopped for the host's shutdown, not marked stopped: it comes back at boot.
ExecStop={orch} stop --keep-state %i
TimeoutStartSec=120

[Install]
WantedBy=orch.target
"""

PROXY = """\
[Unit]
Description=orch front proxy (nginx) for every tenant hostname
PartOf=orch.target
After=network-online.target
Wants=network-online.target

[Service]
Type=forking
PIDFile={proxy_dir}/nginx.pid
ExecStartPre={nginx} -t
ExecStart={nginx}
ExecReload={nginx} -s reload
ExecStop={nginx} -s quit

[Install]
WantedBy=orch.target
"""

TARGET = """\
[Unit]
Description=orch: every tenant and the front proxy
Wants=orch-proxy.service

[Install]
WantedBy=multi-user.target
"""

SCHEDULER_SERVICE = """\
[Unit]
Description=orch: run the scheduled jobs that are due (orch schedule show)
After=orch.target

[Service]
Type=oneshot
Environment={env}
ExecStart={orch} scheduler --once
"""

# The cron expressions stay in orch's state (orch schedule set); this only wakes it.
SCHEDULER_TIMER = """\
[Unit]
Description=orch: wake the scheduler every minute

[Timer]
OnCalendar=minutely
AccuracySec=1s

[Install]
WantedBy=timers.target
"""


def units(config, tenants):
    """File name to text for every unit, plus the wants links of autostart tenants."""
    orch = str(Path(sys.executable).parent / "orch")
    env = shlex.quote(f"ORCH_HOME={config.home}")
    proxy_dir = config.proxy_dir
    nginx = (f"/usr/sbin/nginx -p {proxy_dir}/ -e {proxy_dir}/logs/error.log "
             f"-c {proxy_dir}/nginx.conf")
    files = {
        "orch-tenant@.service": TENANT.format(env=env, orch=orch),
        "orch-proxy.service": PROXY.format(proxy_dir=proxy_dir, nginx=nginx),
        "orch.target": TARGET,
        "orch-scheduler.service": SCHEDULER_SERVICE.format(env=env, orch=orch),
        "orch-scheduler.timer": SCHEDULER_TIMER,
    }
    wants = [f"orch-tenant@{t.name}.service" for t in tenants if t.autostart]
    return files, wants


def write(directory, config, tenants):
    """Write the units into `directory` and enable each autostart tenant in orch.target."""
    directory = Path(directory)
    files, wants = units(config, tenants)
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    wants_dir = directory / "orch.target.wants"
    wants_dir.mkdir(exist_ok=True)
    for old in wants_dir.glob("orch-tenant@*.service"):
        if old.name not in wants:
            old.unlink()
    for name in wants:
        link = wants_dir / name
        if not link.is_symlink():
            link.symlink_to("../orch-tenant@.service")
    proxy_link = wants_dir / "orch-proxy.service"
    if not proxy_link.is_symlink():
        proxy_link.symlink_to("../orch-proxy.service")
    return sorted(files) + [f"orch.target.wants/{w}" for w in wants]
