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
one remain) and refusing any other non-empty folder.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medres.datasets._export import (
    SPLITS,
    Exporter,
    SourceNote,
    Summary,
    check_out_dir,
    counts_text,
    markdown_table,
    whole_number,
    write_export,
)
from medres.datasets._export import write_png as _write_png  # a global: tests patch it
from medres.errors import ConfigError

CSV_COLUMNS: tuple[str, ...] = ("path", "label", "split", "patient_id")
PROGRESS_THRESHOLD = 1000  # show a progress bar above this many images

EXPORTER = Exporter("MedMNIST export", "`medres datasets medmnist`", "medmnist")

# Display names of the MedMNIST v2 subsets (file stem -> name used in the paper).
_NAMES = {
    "pathmnist": "PathMNIST",
    "chestmnist": "ChestMNIST",
    "dermamnist": "DermaMNIST",
    "octmnist": "OCTMNIST",
    "pneumoniamnist": "PneumoniaMNIST",
    "retinamnist": "RetinaMNIST",
    "breastmnist": "BreastMNIST",
    "bloodmnist": "BloodMNIST",
    "tissuemnist": "TissueMNIST",
    "organamnist": "OrganAMNIST",
    "organcmnist": "OrganCMNIST",
    "organsmnist": "OrganSMNIST",
    "organmnist3d": "OrganMNIST3D",
    "nodulemnist3d": "NoduleMNIST3D",
    "adrenalmnist3d": "AdrenalMNIST3D",
    "fracturemnist3d": "FractureMNIST3D",
    "vesselmnist3d": "VesselMNIST3D",
    "synapsemnist3d": "SynapseMNIST3D",
}
_CITATION = (
    "Jiancheng Yang, Rui Shi, Donglai Wei, Zequan Liu, Lin Zhao, Bilian Ke, Hanspeter "
    "Pfister, Bingbing Ni. MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D "
    "biomedical image classification. Scientific Data 10, 41 (2023). "
    "https://doi.org/10.1038/s41597-022-01721-8"
)
_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


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
    splits = _check_args(splits, limit, per_class)
    dataset = npz_path.name.removesuffix(".npz").lower()

    data = _load(npz_path, splits)
    image_shape = next(iter(data.values()))[0].shape[1:]
    kind = _kind(image_shape, named_3d="3d" in dataset, path=npz_path)
    multi_label = any(lab.shape[1] > 1 for _, lab in data.values())
    if per_class is not None and multi_label:
        raise ConfigError(
            f"{npz_path}: --per-class needs one class per image, but this file has "
            f"multi-label vectors; use --limit instead"
        )

    chosen: dict[str, np.ndarray] = {}
    warnings: list[str] = []
    for split, (_, labels) in data.items():
        chosen[split] = _select(labels, limit, per_class)
        if limit is not None and not multi_label and len(chosen[split]):
            classes = np.unique(labels[chosen[split], 0])
            all_classes = np.unique(labels[:, 0])
            if len(classes) < len(all_classes):
                warnings.append(
                    f"{split}: the first {limit} images hold only class(es) "
                    f"{classes.tolist()} of {all_classes.tolist()}; use per_class "
                    f"(--per-class) for a small export with every class"
                )

    given_out = out_dir
    out_dir = check_out_dir(out_dir, EXPORTER)
    md5 = _md5(npz_path)
    total = sum(len(ix) for ix in chosen.values())
    show = total > PROGRESS_THRESHOLD if progress is None else progress

    with write_export(
        EXPORTER, out_dir, total=total, show_progress=show, description=dataset
    ) as export:
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
        counts = {s: len(chosen[s]) for s in data}
        label_counts = {s: _count(lab[chosen[s]], multi_label) for s, (_, lab) in data.items()}
        note = _source_note(
            npz_path,
            given_out,
            dataset,
            md5,
            kind,
            image_shape,
            counts,
            label_counts,
            multi_label,
            splits,
            limit,
            per_class,
        )
        export.finish(CSV_COLUMNS, rows, note)

    return ExportSummary(
        dataset=dataset,
        out_dir=out_dir,
        is_3d=kind == "3d",
        image_shape=tuple(int(x) for x in image_shape),
        counts=counts,
        label_counts=label_counts,
        multi_label=multi_label,
        n_written=total,
        md5=md5,
        seconds=time.perf_counter() - t0,
        warnings=warnings,
    )


# --- input -----------------------------------------------------------------------------


def _check_args(splits: Sequence[str], limit: int | None, per_class: int | None) -> list[str]:
    if isinstance(splits, str):
        splits = [s.strip() for s in splits.split(",") if s.strip()]
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ConfigError(
            f"splits must be a non-empty selection of {list(SPLITS)}; got {list(splits)}"
        )
    if len(set(splits)) != len(splits):
        raise ConfigError(f"splits are repeated: {list(splits)}")
    for name, value in (("limit", limit), ("per_class", per_class)):
        if value is not None:
            whole_number(name, value, minimum=1)
    if limit is not None and per_class is not None:
        raise ConfigError("give either limit (first N per split) or per_class, not both")
    return [s for s in SPLITS if s in splits]  # always in train, val, test order


def _load(path: Path, splits: Iterable[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read and check the requested splits: {split: (images, labels as (N, L) int64)}."""
    if not path.exists():
        raise ConfigError(
            f"no such file: {path}. Give the path of a MedMNIST v2 .npz "
            f"(e.g. pneumoniamnist.npz; downloads: https://medmnist.com)"
        )
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the MedMNIST .npz file itself")
    try:
        npz = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as e:
        raise ConfigError(
            f"{path} is not a readable .npz archive ({type(e).__name__}: {e}); "
            f"expected a MedMNIST v2 file such as pneumoniamnist.npz — re-download it"
        ) from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ConfigError(
            f"{path} holds a single array (.npy), not a MedMNIST .npz archive with "
            f"train_images, train_labels, val_images, ..."
        )
    with npz:
        needed = [f"{s}_{what}" for s in splits for what in ("images", "labels")]
        missing = [k for k in needed if k not in npz.files]
        if missing:
            raise ConfigError(
                f"{path} lacks {missing}; it holds {sorted(npz.files)}. A MedMNIST v2 file "
                f"has {{train,val,test}}_images and {{train,val,test}}_labels — check that "
                f"this is a MedMNIST .npz, or export only the splits it has (--splits)"
            )
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        shape0: tuple[int, ...] | None = None
        for split in splits:
            try:
                images = npz[f"{split}_images"]
                labels = npz[f"{split}_labels"]
            except _NPZ_ERRORS as e:
                raise ConfigError(
                    f"{path}: cannot read {split}_images / {split}_labels "
                    f"({type(e).__name__}: {e}); the file is damaged — re-download it"
                ) from e
            out[split] = (images, _check_labels(path, split, images, labels))
            if images.dtype != np.uint8:
                raise ConfigError(
                    f"{path}: {split}_images has dtype {images.dtype}; MedMNIST images are "
                    f"uint8 — this file is not a MedMNIST v2 release"
                )
            if images.ndim not in (3, 4):
                raise ConfigError(
                    f"{path}: {split}_images has shape {images.shape}; expected (N, H, W) "
                    f"grey, (N, H, W, 3) colour or (N, D, H, W) 3D"
                )
            if shape0 is None:
                shape0 = images.shape[1:]
            elif images.shape[1:] != shape0:
                raise ConfigError(
                    f"{path}: image shapes differ between splits ({shape0} vs "
                    f"{images.shape[1:]} in {split}); a MedMNIST file has one size"
                )
    return out


def _check_labels(path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2:
        raise ConfigError(
            f"{path}: {split}_labels has shape {labels.shape}; expected (N, 1) or (N, L)"
        )
    if len(labels) != len(images):
        raise ConfigError(
            f"{path}: {split}_images holds {len(images)} images but {split}_labels holds "
            f"{len(labels)} labels; the file is inconsistent — re-download it"
        )
    integral = labels.dtype.kind in "iub" or (
        labels.dtype.kind == "f" and bool(np.all(np.isfinite(labels) & (labels % 1 == 0)))
    )
    if not integral:
        raise ConfigError(
            f"{path}: {split}_labels has dtype {labels.dtype} with non-integer values; "
            f"MedMNIST labels are integer classes"
        )
    return labels.astype(np.int64)


def _kind(shape: tuple[int, ...], *, named_3d: bool, path: Path) -> str:
    """'grey', 'rgb' or '3d' for one image of ``shape``; see the module docstring."""
    if len(shape) == 2:
        if named_3d:
            raise ConfigError(
                f"{path.name} is named as a 3D dataset but its images have shape {shape} "
                f"(2D); rename the file if it is a 2D MedMNIST subset"
            )
        return "grey"
    if shape[-1] == 3:
        if named_3d:
            raise ConfigError(
                f"{path.name} is named as a 3D dataset but its images have shape {shape}, "
                f"which also reads as 2D colour (H, W, RGB); cannot tell which it is"
            )
        return "rgb"
    return "3d"


def _select(labels: np.ndarray, limit: int | None, per_class: int | None) -> np.ndarray:
    n = len(labels)
    if limit is not None:
        return np.arange(min(n, limit))
    if per_class is not None:
        keep = np.zeros(n, dtype=bool)
        for c in np.unique(labels[:, 0]):
            keep[np.flatnonzero(labels[:, 0] == c)[:per_class]] = True
        return np.flatnonzero(keep)
    return np.arange(n)


# --- output ----------------------------------------------------------------------------


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


def _command(
    npz_path: Path, out_dir: Path, splits: list[str], limit: int | None, per_class: int | None
) -> str:
    parts = ["medres", "datasets", "medmnist", str(npz_path), "-o", str(out_dir)]
    if list(splits) != list(SPLITS):
        parts += ["--splits", ",".join(splits)]
    if limit is not None:
        parts += ["--limit", str(limit)]
    if per_class is not None:
        parts += ["--per-class", str(per_class)]
    return shlex.join(parts)


def _source_note(
    npz_path: Path,
    out_dir: Path,
    dataset: str,
    md5: str,
    kind: str,
    image_shape: tuple[int, ...],
    counts: dict[str, int],
    label_counts: dict[str, dict[int, int]],
    multi_label: bool,
    splits: list[str],
    limit: int | None,
    per_class: int | None,
) -> SourceNote:
    name = _NAMES.get(dataset.removesuffix("_64").removesuffix("_128").removesuffix("_224"))
    title = name or dataset
    licence = (
        "CC BY-NC 4.0 (Creative Commons Attribution-NonCommercial 4.0 International)"
        if dataset.startswith("dermamnist")
        else "CC BY 4.0 (Creative Commons Attribution 4.0 International)"
    )
    fmt = {
        "grey": "PNG, 8-bit grey ('L')",
        "rgb": "PNG, 8-bit colour ('RGB')",
        "3d": "NIfTI-1 (.nii.gz), uint8, identity affine (1 mm isotropic, nominal)",
    }[kind]
    label_note = (
        "`label` is the 0/1 label vector joined with `;` (multi-label data)."
        if multi_label
        else "`label` is the integer class from the `.npz`."
    )
    if dataset.startswith("adrenalmnist3d"):
        patient_note = (
            "`patient_id` is empty: MedMNIST carries no patient identifiers and none are "
            "invented. AdrenalMNIST3D's official split is patient-level by construction, so "
            "keep it (`medres split --keep-column split`)."
        )
    else:
        patient_note = (
            "`patient_id` is empty: MedMNIST carries no patient identifiers and none are "
            "invented. A patient-level split cannot be made from these files; prefer the "
            "official split in the `split` column (`medres split --keep-column split`), since "
            "re-splitting image by image may put one patient in two splits."
        )
    subset = "all images"
    if limit is not None:
        subset = f"the first {limit} images of each split"
    elif per_class is not None:
        subset = f"the first {per_class} images of each class in each split"
    counts_head = "positives per label" if multi_label else "images per class"
    table = markdown_table(
        ["split", "images", counts_head],
        [(s, counts[s], counts_text(label_counts[s])) for s in counts],
    )
    body = f"""- Source file: `{npz_path.name}`, {npz_path.stat().st_size} bytes, md5 `{md5}`.
- Licence: {licence}.
  Keep this notice and cite the MedMNIST v2 paper, and, as MedMNIST asks, the source
  dataset of this subset named in that paper:
  {_CITATION}
- Subset: {subset}; official splits {", ".join(splits)}.
- Files: {fmt}.
  One image of shape {tuple(int(x) for x in image_shape)} per file, named
  `{{split}}/{{split}}_{{index:05d}}`, index = the image's position in its split of the `.npz`.
- `labels.csv`: `path` (relative to this folder), `label`, `split` (the official MedMNIST
  split), `patient_id`. {label_note}
- {patient_note}

{table}"""
    return SourceNote(
        f"{title} (MedMNIST v2), exported by medres",
        body,
        made_with=_command(npz_path, out_dir, splits, limit, per_class),
    )
