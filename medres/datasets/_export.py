"""The export skeleton that the dataset adapters (:mod:`.medmnist`, :mod:`.slices`,
:mod:`.motion`) fill in.

An export writes a whole folder (scans + ``labels.csv`` + ``SOURCE.md``) and never leaves
half of one behind. An adapter names itself with an :class:`Exporter`, checks its own
arguments (with :func:`whole_number` and :func:`unit_interval`), and writes::

    out_dir = check_out_dir(out_dir, EXPORTER)
    with write_export(EXPORTER, out_dir, total=n, show_progress=True, description="x") as export:
        ...  # scan files into export.folder, export.advance() after each
        export.finish(columns, rows, SourceNote(title, body, made_with=command))

- :func:`check_out_dir` refuses a file, the file-system root, or a non-empty folder
  unless the first line of its ``SOURCE.md`` is the exporter's marker (so a re-run
  replaces only its own output);
- :func:`write_export` writes into a hidden staging folder next to ``out_dir`` (see
  :func:`staging_folder`) under a progress bar; when the ``with`` body succeeds the
  folder is renamed onto ``out_dir`` (an earlier export is set aside, then deleted); on
  any error it is deleted and ``out_dir`` is left as it was;
- :meth:`StagedExport.finish` writes ``labels.csv`` (atomically, mode 0600) and
  ``SOURCE.md``: the marker, the adapter's :class:`SourceNote`, the command that re-makes
  the folder and the warning that a re-run replaces it.

Plus the pieces every export uses: :class:`Summary` (``labels_csv`` of a summary),
:func:`note_text` (an adapter's ``SOURCE.md`` prose, a Markdown template next to it),
:func:`markdown_table`, :func:`counts_text`, :func:`write_png` and :class:`Progress`.
"""

from __future__ import annotations

import csv
import os
import shutil
import string
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from medres.errors import ConfigError
from medres.files import atomic_write

SOURCE_MD = "SOURCE.md"
LABELS_CSV = "labels.csv"
SPLITS: tuple[str, ...] = ("train", "val", "test")  # the order exports write and list


@dataclass(frozen=True)
class Exporter:
    """One kind of export: its name in messages, its marker, its staging folders.

    Attributes:
        what: the export's name in messages, e.g. ``"MedMNIST export"``.
        run_by: what re-makes such a folder, as the marker says, e.g. ``"export_slices"``.
        tag: names the hidden staging folders, ``.OUT.{tag}-partial-*``.
    """

    what: str
    run_by: str
    tag: str

    @property
    def marker(self) -> str:
        """The first line of ``SOURCE.md``: marks a folder this exporter may replace."""
        return f"<!-- medres {self.what}: {self.run_by} replaces this folder -->"


class Summary:
    """Base of the exports' summaries (frozen dataclasses with an ``out_dir`` field)."""

    out_dir: Path

    @property
    def labels_csv(self) -> Path:
        return self.out_dir / LABELS_CSV


@dataclass(frozen=True)
class SourceNote:
    """What an adapter says in ``SOURCE.md``; :meth:`render` adds the common parts.

    Attributes:
        title: the heading, without ``#``.
        body: the adapter's Markdown: what the source is, how it was turned into these
            files, the ``labels.csv`` columns, counts.
        made_with: the command or code that re-makes the folder ("" for none).
        language: the language of the ``made_with`` code block (e.g. ``"python"``).
        rerun: what the closing line says to re-run, e.g. ``"that command"``.
    """

    title: str
    body: str
    made_with: str = ""
    language: str = ""
    rerun: str = "that command"

    def render(self, marker: str) -> str:
        parts = [f"{marker}\n# {self.title}", self.body]
        if self.made_with:
            parts.append(f"Made with:\n\n```{self.language}\n{self.made_with}\n```")
        parts.append(
            f"Re-running {self.rerun} replaces this folder as a whole; do not keep other "
            "files here."
        )
        return "\n\n".join(parts) + "\n"


@dataclass
class StagedExport:
    """An export being written: scans go into ``folder``, then :meth:`finish` once."""

    exporter: Exporter
    folder: Path
    advance: Callable[[], None]
    finished: bool = False

    def finish(
        self, columns: Sequence[str], rows: Iterable[Sequence[object]], note: SourceNote
    ) -> None:
        """Write ``labels.csv`` (``columns`` and ``rows``) and ``SOURCE.md`` (``note``)."""
        write_csv(self.folder / LABELS_CSV, columns, rows)
        text = note.render(self.exporter.marker)
        (self.folder / SOURCE_MD).write_text(text, encoding="utf-8")
        self.finished = True


@contextmanager
def write_export(
    exporter: Exporter, out_dir: Path, *, total: int, show_progress: bool, description: str
) -> Iterator[StagedExport]:
    """Yield a :class:`StagedExport`; on success its folder replaces ``out_dir``.

    Args:
        exporter: the kind of export.
        out_dir: the folder, as :func:`check_out_dir` returned it.
        total: the number of ``advance()`` calls the progress bar counts to.
        show_progress: show a progress bar on stderr.
        description: the bar's label, before ``→ {out_dir.name}``.

    Raises:
        ConfigError: an ``OSError`` (disk full, permissions) while writing or renaming;
            nothing is left behind and ``out_dir`` is untouched.
    """
    with staging_folder(out_dir, exporter.tag) as folder:
        with Progress(show_progress, total, f"{description} → {out_dir.name}") as advance:
            export = StagedExport(exporter, folder, advance)
            yield export
        if not export.finished:  # a bug: the folder would lack its marker and labels
            raise RuntimeError(f"{exporter.what}: finish() was not called")


def note_text(template_path: str, **fields: object) -> str:
    """The Markdown template at ``template_path`` (relative to this package, e.g.
    ``"motion/note.md"``) with its ``$field`` placeholders filled in
    (:class:`string.Template`), without its final newline.

    Raises KeyError for a placeholder missing from ``fields``.
    """
    template = resources.files(__package__).joinpath(*template_path.split("/"))
    text = template.read_text(encoding="utf-8").removesuffix("\n")
    return string.Template(text).substitute(fields)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table: ``| a | b |`` lines under a ``|---|---|`` rule."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def counts_text(counts: Mapping[object, int]) -> str:
    """``{0: 3, 1: 5}`` as ``"0: 3, 1: 5"``."""
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def check_out_dir(out_dir: str | os.PathLike[str], exporter: Exporter) -> Path:
    """Return ``out_dir`` as an absolute path if ``exporter`` may write there.

    Raises:
        ConfigError: ``out_dir`` is a file, the file-system root, or a non-empty folder
            that is not an earlier export of this kind (it would be deleted).
    """
    out_dir = Path(os.path.abspath(out_dir))
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output {out_dir} exists and is a file; give a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_export(out_dir, exporter.marker):
        raise ConfigError(
            f"output folder {out_dir} is not empty and is not an earlier {exporter.what} "
            f"(no {SOURCE_MD} written by medres); the export replaces its folder as a "
            f"whole, so give a new or empty folder"
        )
    if out_dir.parent == out_dir:
        raise ConfigError(f"cannot export into the file-system root {out_dir}")
    return out_dir


def is_export(folder: Path, marker: str) -> bool:
    """True if ``folder/SOURCE.md`` starts with ``marker``."""
    try:
        with open(folder / SOURCE_MD, encoding="utf-8") as f:
            return f.readline().strip() == marker
    except (OSError, UnicodeDecodeError):
        return False


@contextmanager
def staging_folder(out_dir: Path, tag: str) -> Iterator[Path]:
    """Yield an empty hidden folder next to ``out_dir``; rename it onto ``out_dir`` on success.

    ``tag`` names the exporter in the hidden folders' names (``.OUT.{tag}-partial-*``),
    so leftovers of a run killed before it could clean up are removed by the next run.

    Raises:
        ConfigError: an ``OSError`` (disk full, permissions) while writing or renaming;
            the staging folder is deleted and ``out_dir`` is untouched.
    """
    staging = _make_staging(out_dir, tag)
    try:
        yield staging
        _swap_into_place(staging, out_dir, tag)
    except OSError as e:  # the user's to fix, not a bug
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigError(f"cannot write the export to {out_dir}: {e}") from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _make_staging(out_dir: Path, tag: str) -> Path:
    parent = out_dir.parent
    prefix = f".{out_dir.name}.{tag}-partial-"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for old in parent.glob(f"{prefix}*"):  # an interrupted earlier run's leftovers
            shutil.rmtree(old, ignore_errors=True)
        for aside in parent.glob(f".{out_dir.name}.{tag}-old-*"):  # killed mid-swap
            if not out_dir.exists() and (aside / out_dir.name).is_dir():
                os.replace(aside / out_dir.name, out_dir)  # the previous export, back
            shutil.rmtree(aside, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as e:
        raise ConfigError(f"cannot write next to {out_dir}: {e}") from e


def _swap_into_place(staging: Path, out_dir: Path, tag: str) -> None:
    """Rename ``staging`` to ``out_dir``; an existing ``out_dir`` is set aside, then deleted."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{tag}-old-", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        if old is not None:  # put the previous export back
            os.replace(old / out_dir.name, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def whole_number(name: str, value, *, minimum: int) -> int:
    """``value`` as an int, or ConfigError when it is not a whole number >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}; got {value!r}")
    return int(value)


def unit_interval(name: str, value, meaning: str = "") -> float:
    """``value`` as a float, or ConfigError when it is not a number in [0, 1]."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not 0.0 <= number <= 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1]{meaning}; got {value!r}")
    return number


def write_png(image: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write a uint8 ``(rows, columns)`` or ``(rows, columns, 3)`` array as a PNG."""
    from PIL import Image

    # Pillow's default level 6: measured as small as 9 on MedMNIST and 1.5x faster to write
    Image.fromarray(image).save(path, format="PNG", compress_level=6)


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Write a header and rows as CSV (``\\n`` line ends, UTF-8), atomically and mode 0600:
    a labels file can hold the patient ids of the user's own scans."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(columns)
            w.writerows(rows)

    atomic_write(path, write, private=True)


class Progress:
    """Progress on stderr (:func:`medres.progress.progress`), or nothing; ``with`` yields
    ``advance()``."""

    def __init__(self, show: bool, total: int, description: str) -> None:
        self.show, self.total, self.description = show, total, description
        self._progress = None

    def __enter__(self):
        if not self.show:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        from medres.progress import progress as progress_display

        self._progress = progress_display(  # bars on a terminal, timestamped lines in a log
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self._progress.start()
        task = self._progress.add_task(self.description, total=self.total)
        progress = self._progress

        def advance() -> None:
            progress.advance(task)

        return advance

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
