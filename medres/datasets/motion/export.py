"""MR motion QA data: clean MR slices, motion-corrupted copies and their SSIM as the label.

The "MR motion QA" study trains a ResNet-18 to regress how much a slice was degraded by
patient motion, measured as the SSIM between the corrupted slice and its clean version.
:func:`export_motion` turns real volumes into such a training set (the motion model and
the SSIM are in :mod:`medres.datasets.motion.simulate`)::

    out_dir/
      <stem>/ax<axis>_s<slice:03d>_m<j>.png   8-bit grey, one per corrupted copy
      labels.csv     path,label,patient_id,split,source,axis,slice_index,severity
      SOURCE.md      sources, simulation parameters, counts per split, SSIM distribution

``<stem>`` names the source (the file name without ``.nii.gz`` / ``.nii``, or the DICOM
series folder's name, lengthened with its parent folders when two sources would share
it). Files do not depend on the split, so changing a source's split only changes
``labels.csv`` (the seed changes the corruptions, so the images too).

Slices: along axis ``a`` slice ``i`` is ``volume.array[0].take(i, axis=a)``, which keeps
the two other voxel axes in order, no flips. It is written the way medres reads images
(:func:`medres.io.image.read_image`: first axis along the PNG's columns, second down its
rows), so ``read_scan(png).array[0]`` is the (resized) slice and
``numpy.asarray(Image.open(png))`` is it transposed. The PNG carries no geometry.

- the volume (channel 0) is normalised to [0, 1] by its 1st and 99th percentiles (clipped);
- a slice is kept when its foreground, voxels above 10 % of the volume's 99th percentile,
  covers at least ``min_foreground`` of it;
- an axis is skipped when its slices would be thinner than 8 voxels (a 4-slice DICOM
  series keeps only its in-plane slices); a 2D image is one slice along axis 2;
- each kept slice is resized to ``size`` = its (X, Y) shape after resizing, i.e. the PNG's
  (width, height) (bilinear, antialiased; the aspect ratio is not kept) and rounded to
  8 bits: that is the clean slice.

Each clean slice gets ``per_slice`` corrupted copies by :func:`simulate_motion`: copy 0 at
severity 0 (the clean slice itself, SSIM 1), copies 1.. at severities stratified over
[0, 1] (one uniform draw in each of ``per_slice - 1`` equal bins). The label is
:func:`ssim` between the 8-bit clean slice and the 8-bit copy exactly as written.

``patient_id``: a source with a given split (``train`` / ``val`` / ``test``) is one
subject, so all its slices share the id ``<stem>`` and patient-level intervals count
subjects. An ``auto`` source is shared between train and val (~85 / 15 %) by a seeded
permutation of slab groups ``<stem>-ax<axis>-slab<slice_index // slab>``: neighbouring
slices, nearly identical, stay on one side. Slabs of different axes of one volume still
share the voxels where their planes cross, so validation on an ``auto`` source is
somewhat optimistic; hold out whole volumes for an honest estimate.

The folder is written like every medres export (:mod:`medres.datasets._export`):
atomically, replacing an earlier motion export as a whole and refusing any other
non-empty folder. The sources: :mod:`.sources`; slicing: :mod:`.slicing`; the
``SOURCE.md``: :mod:`.note` (prose in ``note.md``).
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medres.datasets._export import (
    SPLITS,
    Exporter,
    StagedExport,
    Summary,
    check_out_dir,
    unit_interval,
    whole_number,
    write_export,
    write_png,
)
from medres.datasets.motion.note import source_note
from medres.datasets.motion.simulate import one_torch_thread, simulate_motion, ssim_batch
from medres.datasets.motion.slicing import (
    FOREGROUND_LEVEL,
    MIN_SIDE,
    PreparedSource,
    prepare_source,
)
from medres.datasets.motion.sources import (
    AUTO,
    AUTO_VAL_FRACTION,
    MotionSource,
    check_size,
    check_sources,
    unique_stems,
)

__all__ = [
    "AUTO",
    "AUTO_VAL_FRACTION",
    "CSV_COLUMNS",
    "EXPORTER",
    "FOREGROUND_LEVEL",
    "MIN_SIDE",
    "MotionExportSummary",
    "MotionSource",
    "export_motion",
]

CSV_COLUMNS: tuple[str, ...] = (
    "path",
    "label",
    "patient_id",
    "split",
    "source",
    "axis",
    "slice_index",
    "severity",
)


EXPORTER = Exporter("motion export", "export_motion", "motion")


@dataclass(frozen=True)
class MotionExportSummary(Summary):
    """What :func:`export_motion` wrote.

    Attributes:
        out_dir: the folder holding the PNGs, ``labels.csv`` and ``SOURCE.md``.
        counts: images per split (train, val, test order; splits with none left out).
        n_images: PNG files written (= rows of ``labels.csv``).
        n_slices: clean slices kept (each written ``per_slice`` times).
        ssim_min, ssim_median, ssim_max: the distribution of the ``label`` column.
        seconds: wall time of the export.
        warnings: things the user should know (e.g. a source that looks like noise).
    """

    out_dir: Path
    counts: dict[str, int]
    n_images: int
    n_slices: int
    ssim_min: float
    ssim_median: float
    ssim_max: float
    seconds: float
    warnings: list[str] = field(default_factory=list)


def export_motion(
    sources: Sequence[MotionSource | tuple],
    out_dir: str | os.PathLike[str],
    *,
    per_slice: int = 8,
    size: tuple[int, int] | int = (96, 96),
    axes: Sequence[int] = (0, 1, 2),
    min_foreground: float = 0.15,
    seed: int = 0,
    slab: int = 16,
    show_progress: bool = True,
) -> MotionExportSummary:
    """Write motion-corrupted slices of real volumes as PNGs plus ``labels.csv`` (SSIM).

    See the module docstring for the layout, the slicing and the labels.

    Args:
        sources: :class:`MotionSource` items, or ``(path, split)`` / ``(path, split,
            axes)`` tuples; split is ``train``, ``val``, ``test`` or ``auto``.
        out_dir: the folder to create; an earlier motion export there is replaced.
        per_slice: images written per kept slice (copy 0 is the clean slice, severity 0).
        size: (X, Y) of every slice = (width, height) of its PNG, or one number for a
            square; at least 16.
        axes: the default slicing axes (0, 1, 2 = sagittal, coronal, axial for an
            RAS-ordered NIfTI); a source's own ``axes`` overrides it.
        min_foreground: keep slices whose foreground covers at least this share.
        seed: drives the corruption (one generator per slice, seeded by seed, source
            stem, axis and slice index) and the auto split.
        slab: slices per patient group (neighbours within a slab share ``patient_id``).
        show_progress: show a rich progress bar on stderr.

    Returns:
        A :class:`MotionExportSummary`.

    Raises:
        ConfigError: invalid arguments, a source with no usable slice (lower
            ``min_foreground``), or an ``out_dir`` that cannot be written.
        ScanError: a source cannot be read (``ScanReadError`` names its path) or is
            constant.

    Example:
        >>> s = export_motion([("mni.nii.gz", "auto")], "data/motion")  # doctest: +SKIP
        >>> s.counts, s.ssim_median  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    srcs = check_sources(sources, axes)
    per_slice = whole_number("per_slice", per_slice, minimum=1)
    size = check_size(size)
    min_foreground = unit_interval("min_foreground", min_foreground)
    slab = whole_number("slab", slab, minimum=1)
    seed = whole_number("seed", seed, minimum=0)
    out_dir = check_out_dir(out_dir, EXPORTER)
    stems = unique_stems([s.path for s in srcs])

    warnings: list[str] = []
    if per_slice == 1:
        warnings.append("per_slice=1 writes only clean slices: every label is 1.0")
    with one_torch_thread():
        prepared = [
            prepare_source(s, stem, size, min_foreground, warnings)
            for s, stem in zip(srcs, stems, strict=True)
        ]
    n_slices = sum(len(p.indices) for p in prepared)
    total = n_slices * per_slice

    with (
        write_export(
            EXPORTER, out_dir, total=total, show_progress=show_progress, description="motion"
        ) as export,
        one_torch_thread(),
    ):
        rows = _write_sources(export, srcs, prepared, per_slice, seed, slab)
        _assign_auto(rows, seed)
        labels = np.array([float(r["label"]) for r in rows])
        counts = {s: n for s in SPLITS if (n := sum(r["split"] == s for r in rows))}
        note = source_note(
            srcs, prepared, rows, counts, labels, per_slice, size, min_foreground, seed, slab
        )
        export.finish(CSV_COLUMNS, [[r[c] for c in CSV_COLUMNS] for r in rows], note)

    return MotionExportSummary(
        out_dir=out_dir,
        counts=counts,
        n_images=len(rows),
        n_slices=n_slices,
        ssim_min=float(labels.min()),
        ssim_median=float(np.median(labels)),
        ssim_max=float(labels.max()),
        seconds=time.perf_counter() - t0,
        warnings=warnings,
    )


def _write_sources(
    export: StagedExport,
    srcs: list[MotionSource],
    prepared: list[PreparedSource],
    per_slice: int,
    seed: int,
    slab: int,
) -> list[dict[str, object]]:
    """Write ``per_slice`` images of every kept slice of every source into
    ``export.folder/<stem>/`` and return their ``labels.csv`` rows (auto splits unset)."""
    rows: list[dict[str, object]] = []
    for src, prep in zip(srcs, prepared, strict=True):
        (export.folder / prep.stem).mkdir()
        for axis, index, clean in prep.slices():
            rows += _write_slice(
                export.folder, src, prep.stem, axis, index, clean, per_slice, seed, slab
            )
            for _ in range(per_slice):
                export.advance()
    return rows


# --- writing ----------------------------------------------------------------------------


def _severities(per_slice: int, rng: np.random.Generator) -> np.ndarray:
    """0 for copy 0, then one uniform draw in each of ``per_slice - 1`` bins of [0, 1]."""
    n = per_slice - 1
    return np.concatenate([[0.0], (np.arange(n) + rng.uniform(size=n)) / max(n, 1)])


def _write_slice(
    staging: Path,
    src: MotionSource,
    stem: str,
    axis: int,
    index: int,
    clean: np.ndarray,
    per_slice: int,
    seed: int,
    slab: int,
) -> list[dict[str, object]]:
    # one generator per slice: adding or reordering sources leaves the others' images alone
    rng = np.random.default_rng([seed, zlib.crc32(stem.encode()), axis, index])
    clean_u8 = np.round(clean * 255.0).astype(np.uint8)
    level = clean_u8 / 255.0
    severities = _severities(per_slice, rng)
    copies = np.stack(
        [
            np.round(np.clip(simulate_motion(level, rng, severity=s), 0.0, 1.0) * 255.0)
            for s in severities
        ]
    ).astype(np.uint8)
    labels = ssim_batch(clean_u8, copies, 255.0)
    rows = []
    for j, (copy, severity, label) in enumerate(zip(copies, severities, labels, strict=True)):
        rel = f"{stem}/ax{axis}_s{index:03d}_m{j}.png"
        write_png(np.ascontiguousarray(copy.T), staging / rel)  # medres reads PNGs (X, Y)
        rows.append(
            {
                "path": rel,
                "label": f"{label:.6f}",
                "patient_id": f"{stem}-ax{axis}-slab{index // slab}" if src.split == AUTO else stem,
                "split": src.split,
                "source": str(src.path),
                "axis": axis,
                "slice_index": index,
                "severity": f"{severity:.4f}",
            }
        )
    return rows


def _assign_auto(rows: list[dict[str, object]], seed: int) -> None:
    """Send ~15 % of the auto sources' slab groups to val, the rest to train."""
    groups = sorted({str(r["patient_id"]) for r in rows if r["split"] == AUTO})
    if not groups:
        return
    n_val = round(AUTO_VAL_FRACTION * len(groups))
    if len(groups) >= 2:
        n_val = max(1, n_val)
    order = np.random.default_rng(seed).permutation(len(groups))
    val = {groups[i] for i in order[:n_val]}
    for r in rows:
        if r["split"] == AUTO:
            r["split"] = "val" if r["patient_id"] in val else "train"
