"""MedMNIST v2 ``.npz`` → a scan folder plus ``labels.csv`` (``medres datasets medmnist``).

MedMNIST ships each subset as one ``.npz`` holding ``{train,val,test}_images`` (uint8)
and ``{train,val,test}_labels``. medres works on folders of scans, so
:func:`export_medmnist` writes every image as a file and a labels table that
``medres ingest FOLDER --labels FOLDER/labels.csv`` joins::

    out_dir/
      train/train_00000.png ...   2D: PNG, grey ('L') or colour ('RGB')
      val/val_00000.png ...       3D: NIfTI, val_00000.nii.gz
      test/test_00000.png ...
      labels.csv                  path,label,split,patient_id
      SOURCE.md                   dataset, licence, citation, md5 of the .npz, command

The number in a file name is the image's index in its split of the ``.npz``, so a file
can always be traced back to the array it came from (also under ``limit``).

``labels.csv`` columns:

- ``path``: relative to ``out_dir``, forward slashes.
- ``label``: the integer class. For multi-label subsets (labels of shape ``(N, L)`` with
  ``L > 1``, e.g. ChestMNIST) it is the 0/1 vector joined with ``;`` (``"0;1;0;..."``).
- ``split``: the official MedMNIST split, ``train`` / ``val`` / ``test``.
- ``patient_id``: always empty. MedMNIST carries no patient identifiers and medres never
  invents them. Keep the official split (``medres split --keep-column split``) rather
  than re-splitting image by image. AdrenalMNIST3D's official split is patient-level by
  construction (MedMNIST v2 paper).

2D vs 3D is decided from the array rank and the file name:

- ``(N, H, W)`` → 2D grey;
- ``(N, H, W, 3)`` → 2D colour, unless the file name contains ``3d``;
- ``(N, D, H, W)`` with ``W != 3`` → 3D (the 3D subsets are cubes, 28³ or 64³);
- ``(N, D, H, 3)`` in a file named ``…3d…`` is ambiguous and refused, as is a file named
  ``…3d…`` whose arrays have no depth axis.

Axis conventions (no transposes, no flips: the files hold the array as it is):

- 2D: ``images[i]`` is ``(rows, columns[, RGB])`` — array axis 1 of ``{split}_images``
  is the PNG's rows (top to bottom), axis 2 its columns (left to right), so
  ``numpy.asarray(PIL.Image.open(png)) == images[i]``.
- 3D: ``numpy.asanyarray(nibabel.load(nii).dataobj) == images[i]`` (uint8, no
  scaling): nibabel's voxel axes ``(i, j, k)`` are array axes ``(1, 2, 3)`` of
  ``{split}_images``. The affine is the 4×4 identity: 1 mm isotropic voxels, voxel
  ``(0, 0, 0)`` at the origin. MedMNIST's 3D volumes were cropped and resampled from CT
  and their true orientation and spacing are not stored in the ``.npz``: treat the
  affine as nominal, not as patient anatomy.

The folder is written like every medres export (:mod:`medres.datasets._export`):
atomically, replacing an earlier MedMNIST export as a whole (no stale files from a larger
one remain) and refusing any other non-empty folder. Reading the ``.npz``:
:mod:`.medmnist_input`; the ``SOURCE.md``: :mod:`.medmnist_note` (prose in
``medmnist_note.md``).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medres.datasets._export import (
    SPLITS,
    Exporter,
    StagedExport,
    Summary,
    check_out_dir,
    write_export,
)
from medres.datasets._export import write_png as _write_png  # a global: tests patch it
from medres.datasets.medmnist_input import check_args, image_kind, load_npz, select_indices
from medres.datasets.medmnist_note import source_note
from medres.errors import ConfigError

CSV_COLUMNS: tuple[str, ...] = ("path", "label", "split", "patient_id")
PROGRESS_THRESHOLD = 1000  # show a progress bar above this many images
EXPORTER = Exporter("MedMNIST export", "`medres datasets medmnist`", "medmnist")


@dataclass(frozen=True)
class ExportSummary(Summary):
    """What :func:`export_medmnist` wrote.

    Attributes:
        dataset: the file stem, e.g. ``"pneumoniamnist"``.
        out_dir: the folder holding the scans, ``labels.csv`` and ``SOURCE.md``.
        is_3d: True for NIfTI volumes, False for PNG images.
        image_shape: the shape of one image, e.g. ``(28, 28)``, ``(28, 28, 3)``, ``(64, 64, 64)``.
        counts: images written per split, in split order.
        label_counts: per split, class → number of images. For multi-label data, label
            index → number of images where that label is 1.
        multi_label: True when labels are 0/1 vectors (stored ``;``-joined in the CSV).
        n_written: total number of image files written.
        md5: md5 of the input ``.npz``.
        seconds: wall time of the export.
        warnings: things the user should know (e.g. a split left with a single class).
    """

    dataset: str
    out_dir: Path
    is_3d: bool
    image_shape: tuple[int, ...]
    counts: dict[str, int]
    label_counts: dict[str, dict[int, int]]
    multi_label: bool
    n_written: int
    md5: str
    seconds: float
    warnings: list[str] = field(default_factory=list)


def export_medmnist(
    npz_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    splits: Sequence[str] = SPLITS,
    limit: int | None = None,
    per_class: int | None = None,
    progress: bool | None = None,
) -> ExportSummary:
    """Write a MedMNIST v2 ``.npz`` as a folder of PNG / NIfTI files plus ``labels.csv``.

    See the module docstring for the layout, the CSV columns and the axis conventions.

    Args:
        npz_path: a MedMNIST v2 file such as ``pneumoniamnist.npz``.
        out_dir: the folder to create. An existing earlier export there is replaced
            as a whole; any other non-empty folder is refused.
        splits: which official splits to export (any of ``train``, ``val``, ``test``).
        limit: keep only the first ``limit`` images of each split (small demos; class
            balance is not kept — PneumoniaMNIST's train split is ordered by class).
        per_class: keep the first ``per_class`` images of each class in each split
            (single-label data only; exclusive with ``limit``).
        progress: show a rich progress bar; by default only above 1000 images.

    Returns:
        An :class:`ExportSummary`.

    Raises:
        ConfigError: the file is absent or not a MedMNIST ``.npz``, the arguments are
            invalid, or ``out_dir`` cannot be written / is not a previous export.

    Example:
        >>> s = export_medmnist("pneumoniamnist.npz", "data/pneumonia")  # doctest: +SKIP
        >>> s.counts  # doctest: +SKIP
        {'train': 4708, 'val': 524, 'test': 624}
    """
    t0 = time.perf_counter()
    npz_path = Path(npz_path)
    out_dir = Path(out_dir)
    splits = check_args(splits, limit, per_class)
    dataset = npz_path.name.removesuffix(".npz").lower()

    data = load_npz(npz_path, splits)
    image_shape = next(iter(data.values()))[0].shape[1:]
    kind = image_kind(image_shape, named_3d="3d" in dataset, path=npz_path)
    multi_label = any(lab.shape[1] > 1 for _, lab in data.values())
    if per_class is not None and multi_label:
        raise ConfigError(
            f"{npz_path}: --per-class needs one class per image, but this file has "
            f"multi-label vectors; use --limit instead"
        )
    chosen, warnings = _choose(data, limit, per_class, multi_label)

    given_out = out_dir
    out_dir = check_out_dir(out_dir, EXPORTER)
    md5 = _md5(npz_path)
    total = sum(len(ix) for ix in chosen.values())
    show = total > PROGRESS_THRESHOLD if progress is None else progress

    with write_export(
        EXPORTER, out_dir, total=total, show_progress=show, description=dataset
    ) as export:
        rows = _write_images(export, data, chosen, kind, dataset)
        summary = ExportSummary(
            dataset=dataset,
            out_dir=out_dir,
            is_3d=kind == "3d",
            image_shape=tuple(int(x) for x in image_shape),
            counts={s: len(chosen[s]) for s in data},
            label_counts={s: _count(lab[chosen[s]], multi_label) for s, (_, lab) in data.items()},
            multi_label=multi_label,
            n_written=total,
            md5=md5,
            seconds=0.0,
            warnings=warnings,
        )
        note = source_note(npz_path, given_out, summary, kind, splits, limit, per_class)
        export.finish(CSV_COLUMNS, rows, note)
    return replace(summary, seconds=time.perf_counter() - t0)


def _choose(
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    limit: int | None,
    per_class: int | None,
    multi_label: bool,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The indices kept in each split, and a warning for each split where ``limit`` left
    out whole classes."""
    chosen: dict[str, np.ndarray] = {}
    warnings: list[str] = []
    for split, (_, labels) in data.items():
        chosen[split] = select_indices(labels, limit, per_class)
        if limit is not None and not multi_label and len(chosen[split]):
            classes = np.unique(labels[chosen[split], 0])
            all_classes = np.unique(labels[:, 0])
            if len(classes) < len(all_classes):
                warnings.append(
                    f"{split}: the first {limit} images hold only class(es) "
                    f"{classes.tolist()} of {all_classes.tolist()}; use per_class "
                    f"(--per-class) for a small export with every class"
                )
    return chosen, warnings


def _write_images(
    export: StagedExport,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    chosen: dict[str, np.ndarray],
    kind: str,
    dataset: str,
) -> list[tuple[str, str, str, str]]:
    """Write the chosen images of each split into ``export.folder/{split}/`` (PNG, or
    NIfTI for ``kind`` 3d) and return their ``labels.csv`` rows."""
    rows: list[tuple[str, str, str, str]] = []
    for split, (images, labels) in data.items():
        (export.folder / split).mkdir()
        ext = ".nii.gz" if kind == "3d" else ".png"
        for i in chosen[split]:
            rel = f"{split}/{split}_{i:05d}{ext}"
            if kind == "3d":
                _write_nifti(images[i], export.folder / rel, f"{dataset} {split} {i}")
            else:
                _write_png(images[i], os.path.join(export.folder, rel))
            rows.append((rel, _label_text(labels[i]), split, ""))
            export.advance()
    return rows


# --- choosing and writing ---------------------------------------------------------------


def _write_nifti(volume: np.ndarray, path: Path, descrip: str) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(volume), np.eye(4))
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = descrip[:79].encode()
    nib.save(img, path)


def _label_text(row: np.ndarray) -> str:
    if len(row) == 1:
        return str(int(row[0]))
    return ";".join(str(int(v)) for v in row)


def _count(labels: np.ndarray, multi_label: bool) -> dict[int, int]:
    if multi_label:
        return {int(j): int(n) for j, n in enumerate(labels.sum(axis=0))}
    return {int(c): int(n) for c, n in sorted(Counter(labels[:, 0].tolist()).items())}


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
