"""What the commands print, and how: the consoles, progress bars and the exit-code contract."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar

# Piped output is not cut to 80 columns: the table is read in logs and CI output too.
out_console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


class RichProgress:
    """Progress bars on stderr; one finished line per bar stays on screen."""

    def __init__(self) -> None:
        self._bar: RichBar | None = None
        self._task: Any = None

    def start(self, description: str, total: int) -> None:
        self.finish()
        self._bar = RichBar(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            console=err_console, transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, info="")

    def advance(self, steps: int = 1, info: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=steps, info=info)

    def finish(self, summary: str = "") -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if summary:
            err_console.print(summary, highlight=False)


# The exit-code contract (README, "Exit codes"): every command, through this one function.
EXIT_OK = 0
EXIT_BUG = 1  # a bug in edgeopt: the traceback is shown
EXIT_FAILED = 1  # device run --once: the check did not complete (unreachable, or retried later); no traceback
EXIT_USAGE = 2  # a usage or input error: one line that says how to fix it
EXIT_REFUSED = 3  # device run --once: an available release was refused
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_TERMINATED = 143  # SIGTERM
