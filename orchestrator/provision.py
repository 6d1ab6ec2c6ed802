"""Runs the playbooks through ansible-runner and turns its events into progress."""

import logging
import os
import sys
from pathlib import Path

from . import paths
from .errors import ProvisionError

log = logging.getLogger(__name__)


def runner_env(config):
    """The environment Ansible runs in: orch's own Ansible first on PATH, orch's config."""
    bindir = str(Path(sys.executable).parent)
    env = {
        "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "/usr/bin:/bin")]),
        "ORCH_HOME": str(config.home),
        "ANSIBLE_CONFIG": str(paths.ANSIBLE_CFG),
        "ANSIBLE_ROLES_PATH": str(paths.ROLES),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
    }
    if os.environ.get("ORCH_CONFIG"):
        env["ORCH_CONFIG"] = os.environ["ORCH_CONFIG"]
    return env


def playbook_args(config, playbook="tenant.yml"):
    """What both orch and a bare `ansible-playbook` run need: the playbook and inventory."""
    return {
        "playbook": str(paths.PLAYBOOKS / playbook),
        "inventory": str(paths.INVENTORY / "orch_state.py"),
        "extravars": {"orch_proxy_port": config.proxy_port},
    }


def converge(config, tenant_name, progress=None, check=False, playbook="tenant.yml"):
    """Apply `playbook` to one tenant's guest; return what changed, or raise ProvisionError.

    `progress` is called with each task's name as it starts.
    """
    import ansible_runner  # imported here: it is large, and most commands never need it

    run_dir = config.runs_dir / tenant_name
    run_dir.mkdir(parents=True, exist_ok=True)
    changed_tasks = []
    failures = []

    def on_event(event):
        data = event.get("event_data", {})
        kind = event.get("event")
        if kind == "playbook_on_task_start" and progress:
            progress(data.get("task", ""))
        elif kind == "runner_on_ok" and data.get("res", {}).get("changed"):
            changed_tasks.append(data.get("task", ""))
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get(
            "ignore_errors"
        ):
            res = data.get("res", {})
            message = res.get("msg") or res.get("stderr") or res.get("module_stderr") or ""
            failures.append((data.get("task", ""), str(message).strip()))
        return True

    args = playbook_args(config, playbook)
    cmdline = "--check --diff" if check else None
    log.info("tenant %s: converging with %s", tenant_name, args["playbook"])
    result = ansible_runner.run(
        private_data_dir=str(run_dir),
        limit=tenant_name,
        envvars=runner_env(config),
        event_handler=on_event,
        quiet=True,
        rotate_artifacts=5,
        cmdline=cmdline,
        **args,
    )
    if result.status == "canceled":
        raise ProvisionError("the Ansible run was interrupted", tenant=tenant_name,
                             step="provision")
    if result.status != "successful" or failures:
        if failures:
            task, message = failures[0]
            reason = f"task '{task}' failed: {message or 'no message'}"
        else:
            tail = (result.stdout.read() if result.stdout else "").strip().splitlines()[-5:]
            reason = f"ansible-playbook ended {result.status} (rc {result.rc}): " + " / ".join(
                tail
            )
        raise ProvisionError(
            reason, tenant=tenant_name, step="provision",
            fix="fix the cause above; `-vv` shows every command orch ran",
        )
    return {"changed": len(changed_tasks), "changed_tasks": changed_tasks}
