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
non-empty folder.

Example::

    from medres.datasets.slices import export_slices

    s = export_slices("data/adrenal64", "data/adrenal64_slices", per_volume=8)
    print(s.n_slices, s.counts, s.skipped)
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from medres.datasets._export import (
    LABELS_CSV,
    SOURCE_MD,
    SPLITS,
    Exporter,
    SourceNote,
    Summary,
    check_out_dir,
    counts_text,
    markdown_table,
    unit_interval,
    whole_number,
    write_export,
)
from medres.datasets._export import write_png as _write_png  # a global: tests patch it
from medres.errors import ConfigError, ManifestError, ScanError, quote_some
from medres.files import sha256_file
from medres.io import read_scan

SOURCE_VOLUMES_MD = "SOURCE-volumes.md"
CSV_COLUMNS: tuple[str, ...] = ("path", "label", "split", "patient_id", "volume", "slice_index")

EXPORTER = Exporter("slice export", "export_slices", "slices")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_PLANES = {"S": "axial", "I": "axial", "A": "coronal", "P": "coronal"}
_PLANES |= {"R": "sagittal", "L": "sagittal"}


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
    axis, min_fraction, per_volume = _check_args(axis, min_fraction, per_volume)
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            f"{folder} is not a folder; give the scan folder of 3D volumes with its "
            "labels.csv (e.g. written by `medres datasets medmnist adrenalmnist3d_64.npz`)"
        )
    folder = folder.resolve()
    labels_path = Path(labels_csv) if labels_csv is not None else folder / LABELS_CSV
    table = _read_labels(labels_path, folder)
    given_out = out_dir
    out_dir = _check_out_dir(out_dir, folder)

    extra = [c for c in table.columns if c not in CSV_COLUMNS]
    rows: list[list[object]] = []
    per_volume_counts: dict[str, int] = {}
    skipped: list[str] = []
    failed: list[tuple[str, str]] = []
    rescaled = patients_from_volume = 0
    planes: Counter[str] = Counter()
    with write_export(
        EXPORTER, out_dir, total=len(table), show_progress=show_progress, description="slices"
    ) as export:
        for record in table.to_dict("records"):
            rel = record["path"]
            volume_id = _volume_id(rel)
            try:
                volume = read_scan(folder / rel)
            except ScanError as e:
                failed.append((volume_id, e.message))
                export.advance()
                continue
            data = _single_3d(volume.array, rel)
            planes[_plane(volume.affine.tobytes(), axis)] += 1
            indices = select_slices(data, axis, min_fraction, per_volume)
            if not len(indices):
                skipped.append(volume_id)
                export.advance()
                continue
            stack = np.moveaxis(_to_uint8(data), axis, 0)  # stack[k]: slice k, a view
            rescaled += data.dtype != np.uint8
            patient = record["patient_id"] or volume_id
            patients_from_volume += not record["patient_id"]
            width = max(3, len(str(data.shape[axis] - 1)))
            (export.folder / volume_id).parent.mkdir(parents=True, exist_ok=True)
            for k in indices:
                png = f"{volume_id}_slice{k:0{width}d}.png"
                # (a, b) slice -> PNG rows b, columns a: medres reads it back as (a, b)
                _write_png(np.ascontiguousarray(stack[k].T), export.folder / png)
                rows.append(
                    [png, record["label"], record["split"], patient, volume_id, int(k)]
                    + [record[c] for c in extra]
                )
            per_volume_counts[volume_id] = len(indices)
            export.advance()
        if not rows:
            raise ConfigError(
                f"no slice to write from {len(table)} volume(s) in {folder}: "
                f"{len(skipped)} had no slice with at least {min_fraction:g} of its voxels "
                f"above the volume minimum, {len(failed)} were unreadable"
                + (f" (first: {failed[0][0]}: {failed[0][1]})" if failed else "")
                + "; lower min_fraction or check the volumes"
            )
        out = pd.DataFrame(rows, columns=list(CSV_COLUMNS) + extra)
        summary = SliceExportSummary(
            out_dir=out_dir,
            axis=axis,
            min_fraction=min_fraction,
            per_volume=per_volume,
            n_volumes=len(table),
            n_slices=len(rows),
            counts=_by_split(out.groupby("split").size()),
            volume_counts=_by_split(out.groupby("split")["volume"].nunique()),
            label_counts={
                split: {str(k): int(v) for k, v in sorted(group["label"].value_counts().items())}
                for split, group in _split_groups(out)
            },
            slices_per_volume=per_volume_counts,
            skipped=skipped,
            failed=failed,
            rescaled=int(rescaled),
            patients_from_volume=int(patients_from_volume),
            planes=dict(planes),
            seconds=0.0,
        )
        source = folder / SOURCE_MD
        if source.is_file():
            shutil.copyfile(source, export.folder / SOURCE_VOLUMES_MD)
        note = _source_note(summary, folder, labels_path, given_out, source.is_file())
        export.finish(CSV_COLUMNS + tuple(extra), rows, note)
    return replace(summary, seconds=time.perf_counter() - t0)


# --- input -----------------------------------------------------------------------------


def _check_args(
    axis: object, min_fraction: object, per_volume: object
) -> tuple[int, float, int | None]:
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer) or axis not in (0, 1, 2):
        raise ConfigError(
            f"axis must be 0, 1 or 2 (a voxel axis of the 3D volume; 2 is axial in RAS "
            f"volumes); got {axis!r}"
        )
    fraction = unit_interval("min_fraction", min_fraction, " (0.01 = 1 % of a slice's voxels)")
    if per_volume is not None:
        per_volume = whole_number("per_volume (or None)", per_volume, minimum=1)
    return int(axis), fraction, per_volume


def _read_labels(path: Path, folder: Path) -> pd.DataFrame:
    """The labels table with text columns path, label, split, patient_id (+ others)."""
    if not path.is_file():
        raise ConfigError(
            f"no labels file {path}: slices take their label, split and patient from the "
            "volumes' labels.csv (columns path,label[,split,patient_id]); export the volumes "
            "with `medres datasets medmnist`, or pass labels_csv"
        )
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read labels file {path}: {e}") from e
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise ManifestError(
            f"{path} lacks column(s) {missing}; it has {list(table.columns)}. Expected "
            "path,label[,split,patient_id], one row per 3D volume"
        )
    taken = [c for c in ("volume", "slice_index") if c in table.columns]
    if taken:
        raise ManifestError(
            f"{path} already has column(s) {taken}: it looks like a slice export; give the "
            "folder of 3D volumes instead"
        )
    if table.empty:
        raise ManifestError(f"{path} lists no volumes")
    for column in ("split", "patient_id"):
        if column not in table.columns:
            table[column] = ""
    table = table.apply(lambda c: c.str.strip())
    table["path"] = [_relative(p, folder, path) for p in table["path"]]
    repeated = sorted(table["path"][table["path"].duplicated()].unique())
    if repeated:
        raise ManifestError(f"{path}: paths repeat ({quote_some(repeated)}); list each volume once")
    flat = table["path"][table["path"].str.lower().str.endswith(_IMAGE_SUFFIXES)].tolist()
    if flat:
        raise ConfigError(
            f"{path} lists {len(flat)} 2D image(s) ({quote_some(flat)}); slices need 3D "
            "volumes (NIfTI): give the folder of a 3D dataset, e.g. adrenalmnist3d_64"
        )
    return table[list(CSV_COLUMNS[:4]) + [c for c in table.columns if c not in CSV_COLUMNS]]


def _relative(value: str, folder: Path, labels: Path) -> str:
    """``value`` as a forward-slash path inside ``folder``; ManifestError if it is not."""
    p = Path(value)
    if not value:
        raise ManifestError(f"{labels}: a row has an empty path; every row names a volume")
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(folder)
        except ValueError:
            raise ManifestError(
                f"{labels}: {value} is outside {folder}; paths must name volumes in the folder"
            ) from None
    rel = PurePosixPath(p.as_posix())
    if ".." in rel.parts:
        raise ManifestError(f"{labels}: {value} climbs out of the folder ('..'); give paths in it")
    return str(rel)


def _volume_id(rel: str) -> str:
    """The volume's path without its NIfTI suffix: ``train/train_00000``."""
    for suffix in _NIFTI_SUFFIXES:
        if rel.lower().endswith(suffix):
            return rel[: -len(suffix)]
    return rel


def _single_3d(array: np.ndarray, rel: str) -> np.ndarray:
    """The ``(X, Y, Z)`` voxels of a one-channel volume; ConfigError for anything else."""
    if array.ndim == 3:
        raise ConfigError(
            f"{rel} is a 2D image (shape {tuple(array.shape[1:])}); slices need 3D volumes: "
            "remove it from labels.csv or give a folder of 3D scans"
        )
    if array.shape[0] != 1:
        raise ConfigError(
            f"{rel} has {array.shape[0]} channels / time points (shape "
            f"{tuple(array.shape[1:])} x {array.shape[0]}); slices need one-channel 3D "
            "volumes: split the 4D file into 3D volumes first"
        )
    return array[0]


@functools.lru_cache(maxsize=64)  # volumes of one dataset share a few affines
def _plane(affine: bytes, axis: int) -> str:
    """What voxel ``axis`` of a 4x4 float64 affine (as bytes) points along: ``"S (axial)"``."""
    import nibabel as nib

    code = nib.aff2axcodes(np.frombuffer(affine, dtype=np.float64).reshape(4, 4))[axis]
    return f"{code} ({_PLANES.get(code, '?')})"


def _to_uint8(data: np.ndarray) -> np.ndarray:
    """uint8 as is; anything else min-max scaled to 0..255 over the whole volume."""
    if data.dtype == np.uint8:
        return data
    lo, hi = float(data.min()), float(data.max())
    if hi == lo:
        return np.zeros(data.shape, dtype=np.uint8)
    return np.rint((data.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.uint8)


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


def _call(folder: Path, labels: Path, out_dir: object, s: SliceExportSummary) -> str:
    args = [repr(str(folder)), repr(str(out_dir))]
    if labels != folder / LABELS_CSV:
        args.append(f"labels_csv={str(labels)!r}")
    args += [f"axis={s.axis}", f"min_fraction={s.min_fraction:g}", f"per_volume={s.per_volume}"]
    return f"from medres.datasets.slices import export_slices\nexport_slices({', '.join(args)})"


def _source_note(
    s: SliceExportSummary, folder: Path, labels: Path, out_dir: object, copied: bool
) -> SourceNote:
    lo, median, hi = s.slice_stats
    planes = ", ".join(f"{k} in {v} volume(s)" for k, v in sorted(s.planes.items()))
    licence = (
        f"Its `{SOURCE_MD}` is copied here as `{SOURCE_VOLUMES_MD}`: the licence and "
        "citation given there apply to these slices."
        if copied
        else f"The input folder has no `{SOURCE_MD}`: check the licence of the volumes."
    )
    taken = (
        f"at most {s.per_volume} per volume, evenly spaced among those (the centres of "
        f"{s.per_volume} equal runs)"
        if s.per_volume
        else "all of them"
    )
    scaling = (
        f"{s.rescaled} volume(s) were not uint8 and were **min-max scaled to 0..255 per "
        "volume** (the volume's minimum → 0, its maximum → 255, rounded); the others keep "
        "their uint8 values"
        if s.rescaled
        else "every volume was uint8: the values are kept as they are (no scaling)"
    )
    patients = (
        f"{s.patients_from_volume} volume(s) had no `patient_id`; for them `patient_id` is "
        "the volume id (every such volume is its own patient), so a patient-level split "
        "keeps all slices of a volume together. Two volumes of one person are then two "
        "patients: keep the source's patient-level test split (`split_cohort(..., "
        "keep_test_column='split')`)."
        if s.patients_from_volume
        else "Every volume had a `patient_id`; its slices carry it."
    )
    table = markdown_table(
        ["split", "volumes", "slices", "slices per label"],
        [
            (split or "(none)", s.volume_counts[split], n, counts_text(s.label_counts[split]))
            for split, n in s.counts.items()
        ],
    )
    skipped = "\n".join(f"- `{v}`" for v in s.skipped) or "- none"
    failed = "\n".join(f"- `{v}`: {why}" for v, why in s.failed) or "- none"
    body = f"""- Source: `{folder}`, {s.n_volumes} volumes listed in `{labels.name}` (sha256
  `{sha256_file(labels)}`). {licence}
- Slices along voxel axis {s.axis} ({planes}, as the volumes' affines say) where at
  least {s.min_fraction:g} of the slice's voxels are above the volume's minimum (the
  structure is present); {taken}.
- Files: PNG, 8-bit grey, `{{volume}}_slice{{index}}.png`. Orientation as in the volume
  (voxel axes kept in order, no flips): `medres.io.read_scan(png).array[0]` equals the
  volume's slice; the PNG's columns run along the slice's first axis, its rows along
  the second. No geometry is stored (nominal 1 mm pixels).
- Intensities: {scaling}.
- `labels.csv`: `path` (relative to this folder), `label`, `split`, `patient_id` (the
  volume's), `volume` (its path in the source folder without `.nii` / `.nii.gz`),
  `slice_index` (along axis {s.axis}), then the source table's other columns.
- {patients}

{table}

Slices per volume (volumes that gave any): min {lo}, median {median:g}, max {hi};
{s.n_slices} slices from {len(s.slices_per_volume)} of {s.n_volumes} volumes.

Volumes skipped (no slice passed `min_fraction`): {len(s.skipped)}

{skipped}

Volumes that could not be read: {len(s.failed)}

{failed}"""
    return SourceNote(
        f"2D slices of `{folder.name}`, cut by medres",
        body,
        made_with=_call(folder, labels, out_dir, s),
        language="python",
        rerun="that",
    )
