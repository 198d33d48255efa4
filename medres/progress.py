"""Progress a person can follow on a terminal and in a log file alike.

:func:`progress` gives a rich ``Progress``: live bars on a terminal; anywhere else (a
log file, a pipe, a scheduler's capture, where bars print nothing) plain lines instead:
one when a task's description changes (each epoch's summary, a new phase), one every
``every_s`` seconds while a counted task runs, and one when it completes.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import Progress, TaskID


def progress(
    *columns, console: Console | None = None, transient: bool = False, disable: bool = False
) -> Progress:
    """A rich ``Progress`` with ``columns`` on a terminal, :class:`LogLines` elsewhere
    (``console`` defaults to stderr; ``disable`` shows nothing at all)."""
    console = console or Console(stderr=True)
    if console.is_terminal:
        return Progress(*columns, console=console, transient=transient, disable=disable)
    return LogLines(console=console, quiet=disable)


class LogLines(Progress):
    """A ``Progress`` that draws no bars but prints a line per change worth a log line."""

    def __init__(self, *, console: Console, quiet: bool = False, every_s: float = 30.0):
        super().__init__(console=console, disable=True)  # no live display
        self.quiet, self.every_s = quiet, every_s
        self._said: dict[TaskID, tuple[str, float, bool]] = {}  # description, when, complete

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def reset(self, task_id: TaskID, **kwargs) -> None:
        super().reset(task_id, **kwargs)
        self._log(task_id)

    def _log(self, task_id: TaskID) -> None:
        if self.quiet:
            return
        task = self._tasks[task_id]
        now = time.monotonic()
        description, when, complete = self._said.get(task_id, (None, 0.0, False))
        finished = task.total is not None and task.completed >= task.total
        changed, due = task.description != description, now - when >= self.every_s
        if not (changed or due or (finished and not complete)):
            return
        self._said[task_id] = (task.description, now, finished)
        count = f"{task.completed:g}" + (f"/{task.total:g}" if task.total else "")
        rate = f", {task.speed:.1f}/s" if (task.speed or 0) >= 0.1 else ""  # not for epochs
        line = f"{time.strftime('%H:%M:%S')} {task.description}: {count}{rate}"
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)
