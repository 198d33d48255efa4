"""Shared machinery of the dataset exports (:mod:`.medmnist`, :mod:`.slices`, :mod:`.motion`).

An export writes a whole folder (scans + ``labels.csv`` + ``SOURCE.md``) and must
never leave half of one behind:

- :func:`check_out_dir` refuses a non-empty output folder unless the first line of its
  ``SOURCE.md`` is the exporter's marker (so a re-run replaces only its own output);
- :func:`staging_folder` yields a hidden folder next to ``out_dir``; when the ``with``
  body succeeds, the folder is renamed onto ``out_dir`` (an earlier export is set aside,
  then deleted); on any error it is deleted and ``out_dir`` is left as it was.

Plus the small writers both exports use: :func:`write_png`, :func:`write_csv` and the
:class:`Progress` bar.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from medres.errors import ConfigError
from medres.files import atomic_write

SOURCE_MD = "SOURCE.md"
LABELS_CSV = "labels.csv"
SPLITS: tuple[str, ...] = ("train", "val", "test")  # the order exports write and list


def check_out_dir(out_dir: str | os.PathLike[str], marker: str, what: str) -> Path:
    """Return ``out_dir`` as an absolute path if an export may be written there.

    Args:
        out_dir: the folder the export will create or replace.
        marker: the first line of ``SOURCE.md`` that marks a folder this exporter wrote.
        what: the export's name in messages, e.g. ``"MedMNIST export"``.

    Raises:
        ConfigError: ``out_dir`` is a file, the file-system root, or a non-empty folder
            that is not an earlier export of this kind (it would be deleted).
    """
    out_dir = Path(os.path.abspath(out_dir))
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output {out_dir} exists and is a file; give a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_export(out_dir, marker):
        raise ConfigError(
            f"output folder {out_dir} is not empty and is not an earlier {what} "
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
    """A rich progress bar on stderr, or nothing; ``with`` yields ``advance()``."""

    def __init__(self, show: bool, total: int, description: str) -> None:
        self.show, self.total, self.description = show, total, description
        self._progress = None

    def __enter__(self):
        if not self.show:
            return lambda: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._progress = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
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
