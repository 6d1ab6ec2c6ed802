"""Step-by-step progress for the user: a live line with timings on a terminal, plain lines else."""

import contextlib
import sys
import time


class Progress:
    """Reports the steps of one command on stderr; stdout stays for the command's result."""

    def __init__(self, stream=None, enabled=True):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.timings = []
        self._status = None
        self._step = None
        if self.tty:
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False)

    @contextlib.contextmanager
    def step(self, name):
        """Time one step; say when it starts, and how it ended and how long it took."""
        self._step = name
        started = time.monotonic()
        if self.tty:
            self._status = self._console.status(f"{name} …")
            self._status.start()
        elif self.enabled:
            print(f"{name}: started", file=self.stream, flush=True)
        ok = False
        try:
            yield self
            ok = True
        finally:
            seconds = time.monotonic() - started
            self.timings.append({"step": name, "seconds": round(seconds, 3), "ok": ok})
            if self._status is not None:
                self._status.stop()
                self._status = None
            if self.tty:
                mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
                self._console.print(f"{mark} {name:<12} {seconds:6.2f} s")
            elif self.enabled:
                word = "done" if ok else "failed"
                print(f"{name}: {word} in {seconds:.2f} s", file=self.stream, flush=True)
            self._step = None

    def detail(self, text):
        """What the current step is doing now (an Ansible task, a build phase)."""
        if not text:
            return
        if self._status is not None:
            self._status.update(f"{self._step} … {text}")
        elif self.enabled and not self.tty:
            print(f"{self._step}: {text}", file=self.stream, flush=True)

    def say(self, text):
        if self.tty:
            self._console.print(text)
        elif self.enabled:
            print(text, file=self.stream, flush=True)
