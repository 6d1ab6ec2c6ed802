"""Host commands: argument lists only, logged at DEBUG, failures raised with their stderr."""

import logging
import shlex
import subprocess

from .errors import HostCommandError

log = logging.getLogger(__name__)


def run(argv, *, tenant=None, step=None, check=True, timeout=120, input=None):
    """Run `argv` and return the CompletedProcess; raise HostCommandError when it fails."""
    argv = [str(arg) for arg in argv]
    log.debug("run: %s", shlex.join(argv))
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
    except FileNotFoundError:
        raise HostCommandError(
            f"{argv[0]} is not installed", tenant=tenant, step=step,
            fix="run `make setup` (scripts/setup-host) to install the host packages",
        ) from None
    except subprocess.TimeoutExpired:
        raise HostCommandError(
            f"`{shlex.join(argv)}` did not finish in {timeout} s", tenant=tenant, step=step
        ) from None
    if check and done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise HostCommandError(
            f"`{shlex.join(argv)}` exited {done.returncode}: {' / '.join(tail)}",
            tenant=tenant, step=step, detail=done.stderr,
        )
    return done
