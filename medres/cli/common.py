"""What every verb of the command line shares: the typer apps, the stderr console, the
exit codes and the error handling (:func:`user_errors`, :func:`main`), the progress
columns and the metrics-table printer.

Exit codes (README "Exit codes"), for schedulers: 0 done; 1 done, but with recorded
failures under ``--strict`` or a negative verdict (``promote``: not promoted); 2 bad
usage or refused input (a MedresError: :func:`user_errors`); 3 internal error, a bug
in medres (:func:`main`); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import ProgressColumn
from rich.text import Text

from medres.errors import MedresError

if TYPE_CHECKING:
    from medres.evaluate import Evaluation

app = typer.Typer(
    name="medres",
    help="Calibrated, uncertainty-aware ResNet classifiers for folders of medical scans.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)
datasets_app = typer.Typer(help="Turn public datasets into scan folders.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
review_app = typer.Typer(
    help="Clinician review: load prediction runs into a review store, add reviewers, "
    "serve the review app, export their decisions as labels.",
    no_args_is_help=True,
)
app.add_typer(review_app, name="review")

console = Console(stderr=True)


@contextmanager
def user_errors():
    """Turn a MedresError (bad usage, refused input) into a one-line red message and exit
    code 2 (no traceback). Any other exception is a bug: :func:`main` makes it exit 3."""
    try:
        yield
    except MedresError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}")
        raise typer.Exit(2) from None


class ScansPerSecond(ProgressColumn):
    """A rich progress column: the task's current rate in scans per second."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} scans/s" if task.speed else "")


def progress_columns(
    *, scans_per_second: bool = False, time_remaining: bool = False
) -> tuple[ProgressColumn, ...]:
    """The columns of a verb's progress bars: description, bar, done/total, then the
    rate in scans per second and the time remaining when asked for."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    columns: list[ProgressColumn] = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
    ]
    if scans_per_second:
        columns.append(ScansPerSecond())
    if time_remaining:
        columns.append(TimeRemainingColumn())
    return tuple(columns)


def print_metrics(evaluations: Evaluation | Mapping[str, Evaluation]) -> None:
    """Print metrics tables on stdout: one for an Evaluation, or one per split of a
    ``{split: Evaluation}`` mapping, its title prefixed with the split."""
    from medres.evaluate import metrics_table

    if not isinstance(evaluations, Mapping):
        Console().print(metrics_table(evaluations))
        return
    for split, evaluation in evaluations.items():
        table = metrics_table(evaluation)
        table.title = f"{split}: {table.title}"
        Console().print(table)


EXIT_INTERNAL_ERROR = 3


def check_device(device: str | None) -> None:
    """Refuse ``--device`` naming a device this machine lacks, before any work starts
    (call inside :func:`user_errors`)."""
    if device:
        from medres.device import resolve_device

        resolve_device(device)


DeviceOption = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="Where the network runs: auto (a CUDA GPU when there is one, else the CPU), "
        "cpu, cuda or cuda:N.",
    ),
]
EXIT_INTERRUPTED = 130


def main() -> None:
    """Console-script entry point (also ``python -m medres``): run the app and exit with
    the codes of the module docstring.

    Typer runs in standalone mode, so ``--help`` exits 0, usage errors 2, ``typer.Exit(n)``
    n, each as a SystemExit that passes through here. An unexpected exception is a bug:
    one red line names its type (not its message, which may hold patient data), the full
    traceback goes to a file only the user can read (mode 0600) whose path is printed,
    and the exit code is 3. ``MEDRES_TRACEBACK=1`` re-raises instead (developers).
    """
    try:
        app()
    except KeyboardInterrupt:  # typer maps Ctrl-C inside a verb to 130 itself
        console.print("[bold red]interrupted[/]")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        if os.environ.get("MEDRES_TRACEBACK") == "1":
            raise
        where = _save_traceback(e)
        console.print(
            f"[bold red]internal error:[/] this is a bug in medres ({type(e).__name__}); "
            f"{where}. Please report it.",
            soft_wrap=True,
        )
        sys.exit(EXIT_INTERNAL_ERROR)


def _save_traceback(error: BaseException) -> str:
    """Write the traceback of ``error`` to a new 0600 file in the temp folder; a phrase
    saying where it is (or why it could not be written)."""
    import tempfile
    import time
    import traceback

    from medres import __version__

    try:
        fd, path = tempfile.mkstemp(  # mkstemp creates the file 0600
            prefix=f"medres-error-{time.strftime('%Y%m%dT%H%M%S')}-", suffix=".txt"
        )
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"medres {__version__}, Python {sys.version.split()[0]}\n")
            f.write(f"command: {' '.join(sys.argv)}\n\n")
            f.write("".join(traceback.format_exception(error)))
    except OSError as e:
        return f"its traceback could not be saved ({type(e).__name__}: {e})"
    return f"the traceback (it may hold scan paths or ids) is in {escape(path)}, mode 0600"
