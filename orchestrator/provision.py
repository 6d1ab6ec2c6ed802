"""Runs the playbooks through ansible-runner and turns its events into progress."""

import dataclasses
import difflib
import logging
import os
import shutil
import sys
from pathlib import Path

from . import paths
from .errors import ProvisionError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class HostResult:
    """What one Ansible run did to one tenant's guest."""

    name: str
    changed_tasks: list = dataclasses.field(default_factory=list)
    diffs: list = dataclasses.field(default_factory=list)
    failure: str | None = None
    seen: bool = False

    @property
    def changed(self):
        return len(self.changed_tasks)


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


def _render_diff(diff):
    if isinstance(diff, list):
        return "".join(_render_diff(d) for d in diff)
    if not isinstance(diff, dict):
        return str(diff or "")
    if "prepared" in diff:
        return str(diff["prepared"])
    before, after = diff.get("before", ""), diff.get("after", "")
    if isinstance(before, dict) or isinstance(after, dict):
        return f"- {before}\n+ {after}\n"
    lines = difflib.unified_diff(
        str(before).splitlines(keepends=True), str(after).splitlines(keepends=True),
        fromfile=str(diff.get("before_header", "before")),
        tofile=str(diff.get("after_header", "after")),
    )
    return "".join(lines)


def _failure_message(res):
    """What went wrong, from a task result; for a loop, from its first failed item."""
    for item in res.get("results") or []:
        if isinstance(item, dict) and item.get("failed"):
            label = item.get("item")
            return f"{label}: {_failure_message(item)}" if label else _failure_message(item)
    return str(res.get("msg") or res.get("stderr") or res.get("module_stderr") or "").strip()


def converge_many(config, names, progress=None, check=False, playbook="tenant.yml",
                  run_name=None):
    """Apply `playbook` to several tenants' guests in one Ansible run.

    One tenant's failure does not stop the others; each gets its own HostResult. In
    `check` mode nothing is changed and each result carries the diffs Ansible would make.
    `progress` is called with each task's name as it starts.
    """
    import ansible_runner  # imported here: it is large, and most commands never need it

    results = {name: HostResult(name) for name in names}
    run_dir = config.runs_dir / (run_name or names[0])
    run_dir.mkdir(parents=True, exist_ok=True)
    # ansible-runner keeps the last run's command line and variables under env/ and reuses
    # them when an argument is not given: a --check run must not turn the next one into one.
    shutil.rmtree(run_dir / "env", ignore_errors=True)

    def on_event(event):
        data = event.get("event_data", {})
        kind = event.get("event")
        result = results.get(data.get("host"))
        if kind == "playbook_on_task_start" and progress:
            progress(data.get("task", ""))
        if result is None:
            return True
        res = data.get("res", {})
        if kind.startswith("runner_on_"):
            result.seen = True
        if kind == "runner_on_ok" and res.get("changed"):
            result.changed_tasks.append(data.get("task", ""))
            if check and res.get("diff"):
                result.diffs.append({"task": data.get("task", ""),
                                     "diff": _render_diff(res["diff"])})
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get(
            "ignore_errors"
        ):
            message = _failure_message(res)
            if result.failure is None:
                result.failure = f"task '{data.get('task', '')}' failed: " + (
                    str(message).strip() or "no message")
        return True

    args = playbook_args(config, playbook)
    log.info("converging %s with %s%s", ", ".join(names), args["playbook"],
             " (check only)" if check else "")
    runner = ansible_runner.run(
        private_data_dir=str(run_dir),
        limit=",".join(names),
        envvars=runner_env(config),
        event_handler=on_event,
        quiet=True,
        rotate_artifacts=5,
        cmdline="--check --diff" if check else None,
        **args,
    )
    if runner.status == "canceled":
        raise ProvisionError("the Ansible run was interrupted", step="provision")
    for result in results.values():
        if not result.seen and result.failure is None:
            tail = (runner.stdout.read() if runner.stdout else "").strip().splitlines()[-3:]
            result.failure = (f"ansible-playbook ended {runner.status} (rc {runner.rc}) "
                              "without reaching this guest: " + " / ".join(tail))
    return results


def converge(config, tenant_name, progress=None, check=False, playbook="tenant.yml"):
    """Apply `playbook` to one tenant's guest; return what changed, or raise ProvisionError."""
    result = converge_many(config, [tenant_name], progress, check, playbook)[tenant_name]
    if result.failure:
        raise ProvisionError(result.failure, tenant=tenant_name, step="provision",
                             fix="fix the cause above; `-vv` shows every command orch ran")
    return {"changed": result.changed, "changed_tasks": result.changed_tasks,
            "diffs": result.diffs}
