"""The one error tree of orch; only the command line turns these into text and exit codes."""


class OrchError(Exception):
    """Root of every error orch raises on purpose.

    `exit_code` follows the command-line contract: 1 for a failure, 2 for bad input.
    `tenant`, `step` and `fix` are shown to the user beside the message when set.
    """

    exit_code = 1

    def __init__(self, message, *, tenant=None, step=None, fix=None, detail=None):
        super().__init__(message)
        self.message = message
        self.tenant = tenant
        self.step = step
        self.fix = fix
        self.detail = detail

    def __str__(self):
        parts = []
        if self.tenant:
            parts.append(f"tenant {self.tenant}")
        if self.step:
            parts.append(f"step {self.step}")
        head = ", ".join(parts)
        text = f"{head}: {self.message}" if head else self.message
        if self.fix:
            text += f"; {self.fix}"
        return text

    def as_dict(self):
        """The error as a JSON-ready mapping."""
        return {
            "error": type(self).__name__,
            "message": self.message,
            "tenant": self.tenant,
            "step": self.step,
            "fix": self.fix,
            "detail": self.detail,
        }


class BadInput(OrchError):
    """The request itself is wrong (a name, a size, a hostname); nothing was changed."""

    exit_code = 2


class NotFound(BadInput):
    """The request names a tenant that orch does not know."""


class ConfigError(BadInput):
    """orch's own configuration file is wrong."""


class PreflightError(OrchError):
    """The host cannot run what was asked for; the message says what to install or change."""


class HostCommandError(OrchError):
    """A command on the host exited non-zero."""


class StepFailed(OrchError):
    """A lifecycle step failed; what it had made was undone."""


class ProvisionError(StepFailed):
    """Ansible reported a failed or unreachable host."""


class ProxyError(OrchError):
    """The front proxy's configuration was refused or the proxy could not be started."""


class CapacityError(OrchError):
    """Admitting the tenant would pass the host's memory budget."""
