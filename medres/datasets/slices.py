"""2D slices cut from 3D volumes: a scan folder of volumes → PNG slices + ``labels.csv``.

For 2D models trained on 3D data (the PET/CT "slice triage" study):
:func:`export_slices` reads every volume listed in a folder's ``labels.csv`` (as
``medres datasets medmnist`` writes for a 3D subset such as AdrenalMNIST3D), keeps the
slices along one voxel axis where the structure is present, and writes them as 8-bit
PNGs with a new ``labels.csv``::

    out_dir/
      train/train_00000_slice021.png ...   {volume}_slice{index}.png
      labels.csv                            path,label,split,patient_id,volume,slice_index
      SOURCE.md                             what was cut, how, counts, skipped volumes
      SOURCE-volumes.md                     the input folder's SOURCE.md (licence), if any

Which slices (:func:`select_slices`): slice ``k`` along ``axis`` is kept when the
fraction of its voxels above the volume's minimum is at least ``min_fraction``. For
binary shape masks such as AdrenalMNIST3D (0 / 255) that is the fraction of the slice
covered by the structure. With ``per_volume=N``, N of the kept slices are taken,
evenly spaced: the centres of N equal runs of the kept slices (deterministic; N = 1
gives the middle one). A volume with no slice passing is skipped, listed in
``SOURCE.md`` and in the summary, and the export goes on.

Orientation (no transposes of the voxel axes, no flips): a slice keeps the volume's
voxel axes in order — along axis 2 the slice is ``(i, j)``, along axis 1 ``(i, k)``,
along axis 0 ``(j, k)``. The PNG is written the way medres reads images (first axis
along the columns, second down the rows, see :func:`medres.io.image.read_image`), so
``read_scan(png).array[0] == read_scan(volume).array[0].take(index, axis)`` for uint8
volumes; in NumPy terms ``numpy.asarray(Image.open(png))`` is that slice transposed.
The PNG carries no geometry (medres reads it with nominal 1 mm pixels).

Intensities: a uint8 volume keeps its values. Any other volume is min-max scaled to
0..255 per volume (its minimum → 0, its maximum → 255, rounded), which ``SOURCE.md``
says; a constant volume becomes 0.

``labels.csv`` columns: ``path`` (relative to ``out_dir``), ``label``, ``split`` and
``patient_id`` (the volume's, copied to each of its slices), ``volume`` (the volume's
id: its path in the input folder without ``.nii`` / ``.nii.gz``), ``slice_index``
(along ``axis``), then any other columns of the input ``labels.csv`` (e.g. ``site``).
When a volume has no ``patient_id`` its id stands in: the volume is its own patient,
so a patient-level split (``medres split``) keeps all slices of a volume on one side.
That is the point of this table — slices of one volume in train and test would leak.
A volume id is not a person, though: two volumes of one patient (left and right organ,
two visits) become two "patients"; keep the source's patient-level test split then
(``split_cohort(..., keep_test_column="split")``).

The folder is written like every medres export (:mod:`medres.datasets._export`):
atomically, replacing an earlier slice export as a whole and refusing any other
non-empty folder. Reading the input: :mod:`.slices_input`; the ``SOURCE.md``:
:mod:`.slices_note` (prose in ``slices_note.md``).

Example::

    from medres.datasets.slices import export_slices

    s = export_slices("data/adrenal64", "data/adrenal64_slices", per_volume=8)
    print(s.n_slices, s.counts, s.skipped)
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from medres.datasets._export import (
    LABELS_CSV,
    SOURCE_MD,
    SPLITS,
    Exporter,
    Summary,
    check_out_dir,
    write_export,
)
from medres.datasets._export import write_png as _write_png  # a global: tests patch it
from medres.datasets.slices_input import (
    CSV_COLUMNS,
    check_args,
    plane,
    read_labels,
    single_3d,
    to_uint8,
    volume_id_of,
)
from medres.datasets.slices_note import SOURCE_VOLUMES_MD, source_note
from medres.errors import ConfigError, ScanError
from medres.io import read_scan

__all__ = [
    "CSV_COLUMNS",
    "EXPORTER",
    "SOURCE_VOLUMES_MD",
    "SliceExportSummary",
    "export_slices",
    "select_slices",
]

EXPORTER = Exporter("slice export", "export_slices", "slices")


@dataclass(frozen=True)
class SliceExportSummary(Summary):
    """What :func:`export_slices` wrote.

    Attributes:
        out_dir: the folder holding the PNGs, ``labels.csv`` and ``SOURCE.md``.
        axis: the voxel axis (0, 1, 2) the slices were cut along.
        min_fraction: the share of a slice's voxels above the volume minimum it needed.
        per_volume: the most slices kept per volume (None: all that pass).
        n_volumes: volumes listed in the input ``labels.csv``.
        n_slices: PNG files written.
        counts: slices per split (``train`` / ``val`` / ``test`` first).
        volume_counts: volumes that gave at least one slice, per split.
        label_counts: per split, label (as text) → slices.
        slices_per_volume: volume id → slices written, for volumes that gave any.
        skipped: volume ids with no slice passing ``min_fraction`` (nothing written).
        failed: ``(volume id, reason)`` of volumes that could not be read.
        rescaled: volumes that were not uint8, min-max scaled to 0..255.
        patients_from_volume: volumes without a patient_id, whose id stands in for it.
        planes: what ``axis`` is in the volumes' affines (e.g. ``{"S (axial)": 1584}``).
        seconds: wall time of the export.
    """

    out_dir: Path
    axis: int
    min_fraction: float
    per_volume: int | None
    n_volumes: int
    n_slices: int
    counts: dict[str, int]
    volume_counts: dict[str, int]
    label_counts: dict[str, dict[str, int]]
    slices_per_volume: dict[str, int]
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    rescaled: int = 0
    patients_from_volume: int = 0
    planes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def slice_stats(self) -> tuple[int, float, int]:
        """Slices per volume that gave any: ``(min, median, max)``."""
        n = np.array(list(self.slices_per_volume.values()))
        return int(n.min()), float(np.median(n)), int(n.max())


def select_slices(
    data: np.ndarray, axis: int = 2, min_fraction: float = 0.01, per_volume: int | None = None
) -> np.ndarray:
    """Indices along ``axis`` of the slices of a 3D array to keep (see the module docstring).

    Args:
        data: one volume, ``(X, Y, Z)``.
        axis: 0, 1 or 2.
        min_fraction: keep a slice when at least this share of its voxels are above
            ``data.min()``; 0 keeps every slice.
        per_volume: keep at most this many, evenly spaced among the kept slices.

    Returns:
        Sorted int64 indices (empty when no slice passes).
    """
    data = np.asarray(data)
    along = np.moveaxis(data, axis, 0).reshape(data.shape[axis], -1)
    fraction = (along > data.min()).mean(axis=1)
    kept = np.flatnonzero(fraction >= min_fraction)
    if per_volume is not None and len(kept) > per_volume:
        # the centre of each of per_volume equal runs: distinct, since len(kept) > per_volume
        kept = kept[((np.arange(per_volume) + 0.5) * len(kept) / per_volume).astype(np.int64)]
    return kept.astype(np.int64)


def export_slices(
    folder: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    labels_csv: str | os.PathLike[str] | None = None,
    axis: int = 2,
    min_fraction: float = 0.01,
    per_volume: int | None = None,
    show_progress: bool = True,
) -> SliceExportSummary:
    """Cut the 3D volumes of ``folder`` into 2D PNG slices that carry their volume's labels.

    See the module docstring for the layout, the choice of slices, orientation,
    intensities and the ``labels.csv`` columns.

    Args:
        folder: a scan folder of 3D volumes (NIfTI) with a ``labels.csv`` whose ``path``
            column (relative to ``folder``) names each volume, plus ``label`` and
            optionally ``split`` and ``patient_id``.
        out_dir: the folder to create; an earlier slice export there is replaced as a
            whole, any other non-empty folder is refused. Must lie outside ``folder``.
        labels_csv: the labels table, if not ``folder/labels.csv``.
        axis: the voxel axis to cut along (0, 1 or 2); 2 is axial in RAS volumes.
        min_fraction: the share (0..1) of a slice's voxels that must exceed the
            volume's minimum for the slice to be kept.
        per_volume: keep at most this many slices per volume, evenly spaced.
        show_progress: a progress bar on stderr.

    Returns:
        A :class:`SliceExportSummary`.

    Raises:
        ConfigError: bad arguments; ``folder`` or its ``labels.csv`` absent; a listed
            scan that is 2D or has several channels; nothing to write; ``out_dir``
            not writable or not an earlier slice export.
        ManifestError: ``labels.csv`` unreadable, without ``path`` / ``label``, with
            repeated paths or paths outside ``folder``.

    Unreadable volumes (a :class:`~medres.errors.ScanError`) are recorded in
    ``failed`` and skipped, like ingest does.
    """
    t0 = time.perf_counter()
    axis, min_fraction, per_volume = check_args(axis, min_fraction, per_volume)
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            f"{folder} is not a folder; give the scan folder of 3D volumes with its "
            "labels.csv (e.g. written by `medres datasets medmnist adrenalmnist3d_64.npz`)"
        )
    folder = folder.resolve()
    labels_path = Path(labels_csv) if labels_csv is not None else folder / LABELS_CSV
    table = read_labels(labels_path, folder)
    given_out = out_dir
    out_dir = _check_out_dir(out_dir, folder)

    tally = _Tally(extra=[c for c in table.columns if c not in CSV_COLUMNS])
    with write_export(
        EXPORTER, out_dir, total=len(table), show_progress=show_progress, description="slices"
    ) as export:
        for record in table.to_dict("records"):
            _cut_volume(export.folder, folder, record, axis, min_fraction, per_volume, tally)
            export.advance()
        if not tally.rows:
            raise ConfigError(
                f"no slice to write from {len(table)} volume(s) in {folder}: "
                f"{len(tally.skipped)} had no slice with at least {min_fraction:g} of its "
                f"voxels above the volume minimum, {len(tally.failed)} were unreadable"
                + (f" (first: {tally.failed[0][0]}: {tally.failed[0][1]})" if tally.failed else "")
                + "; lower min_fraction or check the volumes"
            )
        summary = _summary(out_dir, len(table), axis, min_fraction, per_volume, tally)
        source = folder / SOURCE_MD
        if source.is_file():
            shutil.copyfile(source, export.folder / SOURCE_VOLUMES_MD)
        note = source_note(summary, folder, labels_path, given_out, source.is_file())
        export.finish(CSV_COLUMNS + tuple(tally.extra), tally.rows, note)
    return replace(summary, seconds=time.perf_counter() - t0)


@dataclass
class _Tally:
    """What the volumes gave so far: ``labels.csv`` rows and the counts of the summary."""

    extra: list[str]  # the input table's other columns, copied to each slice's row
    rows: list[list[object]] = field(default_factory=list)
    slices_per_volume: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    rescaled: int = 0
    patients_from_volume: int = 0
    planes: Counter[str] = field(default_factory=Counter)


def _cut_volume(
    out: Path,
    folder: Path,
    record: dict,
    axis: int,
    min_fraction: float,
    per_volume: int | None,
    tally: _Tally,
) -> None:
    """Write the kept slices of the volume of ``record`` (a labels row) into ``out`` and
    add their rows to ``tally``; an unreadable volume is recorded as failed, one without
    a kept slice as skipped."""
    rel = record["path"]
    volume_id = volume_id_of(rel)
    try:
        volume = read_scan(folder / rel)
    except ScanError as e:
        tally.failed.append((volume_id, e.message))
        return
    data = single_3d(volume.array, rel)
    tally.planes[plane(volume.affine.tobytes(), axis)] += 1
    indices = select_slices(data, axis, min_fraction, per_volume)
    if not len(indices):
        tally.skipped.append(volume_id)
        return
    stack = np.moveaxis(to_uint8(data), axis, 0)  # stack[k]: slice k, a view
    tally.rescaled += data.dtype != np.uint8
    patient = record["patient_id"] or volume_id
    tally.patients_from_volume += not record["patient_id"]
    width = max(3, len(str(data.shape[axis] - 1)))
    (out / volume_id).parent.mkdir(parents=True, exist_ok=True)
    for k in indices:
        png = f"{volume_id}_slice{k:0{width}d}.png"
        # (a, b) slice -> PNG rows b, columns a: medres reads it back as (a, b)
        _write_png(np.ascontiguousarray(stack[k].T), out / png)
        tally.rows.append(
            [png, record["label"], record["split"], patient, volume_id, int(k)]
            + [record[c] for c in tally.extra]
        )
    tally.slices_per_volume[volume_id] = len(indices)


def _summary(
    out_dir: Path,
    n_volumes: int,
    axis: int,
    min_fraction: float,
    per_volume: int | None,
    tally: _Tally,
) -> SliceExportSummary:
    """The summary of the slices in ``tally`` (``seconds`` left at 0)."""
    out = pd.DataFrame(tally.rows, columns=list(CSV_COLUMNS) + tally.extra)
    return SliceExportSummary(
        out_dir=out_dir,
        axis=axis,
        min_fraction=min_fraction,
        per_volume=per_volume,
        n_volumes=n_volumes,
        n_slices=len(tally.rows),
        counts=_by_split(out.groupby("split").size()),
        volume_counts=_by_split(out.groupby("split")["volume"].nunique()),
        label_counts={
            split: {str(k): int(v) for k, v in sorted(group["label"].value_counts().items())}
            for split, group in _split_groups(out)
        },
        slices_per_volume=tally.slices_per_volume,
        skipped=tally.skipped,
        failed=tally.failed,
        rescaled=int(tally.rescaled),
        patients_from_volume=int(tally.patients_from_volume),
        planes=dict(tally.planes),
        seconds=0.0,
    )


# --- output ----------------------------------------------------------------------------


def _check_out_dir(out_dir: str | os.PathLike[str], folder: Path) -> Path:
    out = Path(os.path.abspath(out_dir))
    real = Path(os.path.realpath(out))
    if real == folder or folder in real.parents or real in folder.parents:
        raise ConfigError(
            f"output {out} overlaps the input folder {folder}; the export replaces its "
            "folder as a whole, so give a folder outside the input"
        )
    return check_out_dir(out, EXPORTER)


def _split_key(split: str) -> tuple[int, str]:
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


def _split_groups(table: pd.DataFrame):
    return sorted(table.groupby("split"), key=lambda kv: _split_key(kv[0]))


def _by_split(series: pd.Series) -> dict[str, int]:
    return {str(k): int(series[k]) for k in sorted(series.index, key=_split_key)}
