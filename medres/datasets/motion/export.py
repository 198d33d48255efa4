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
non-empty folder.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medres.datasets._export import (
    SPLITS,
    Exporter,
    SourceNote,
    Summary,
    check_out_dir,
    markdown_table,
    unit_interval,
    whole_number,
    write_export,
    write_png,
)
from medres.datasets.motion.simulate import (
    CENTRE_FRACTION,
    CENTRE_WEIGHT,
    MAX_FRACTION,
    MAX_PHASE_RAD,
    MAX_SHIFT_PX,
    SSIM_K1,
    SSIM_K2,
    SSIM_SIGMA,
    SSIM_WINDOW,
    one_torch_thread,
    simulate_motion,
    ssim_batch,
)
from medres.errors import ConfigError, ScanContentError

AUTO = "auto"
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
AUTO_VAL_FRACTION = 0.15  # share of the auto sources' slab groups sent to val
MIN_SIDE = 8  # an axis whose slices are thinner than this (voxels) is skipped
FOREGROUND_LEVEL = 0.10  # foreground = voxels above this fraction of the 99th percentile
EXPORTER = Exporter("motion export", "export_motion", "motion")


@dataclass(frozen=True)
class MotionSource:
    """One volume to slice.

    Attributes:
        path: a NIfTI file, a DICOM series folder, or anything ``medres.io.read_scan`` reads.
        split: ``train``, ``val``, ``test``, or ``auto`` (slab groups shared ~85/15
            between train and val by the seed).
        axes: spatial axes to slice along (subset of 0, 1, 2); None = the export's ``axes``.
    """

    path: Path
    split: str = AUTO
    axes: tuple[int, ...] | None = None


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
    srcs = _check_sources(sources, axes)
    per_slice = whole_number("per_slice", per_slice, minimum=1)
    size = _check_size(size)
    min_foreground = unit_interval("min_foreground", min_foreground)
    slab = whole_number("slab", slab, minimum=1)
    seed = whole_number("seed", seed, minimum=0)
    out_dir = check_out_dir(out_dir, EXPORTER)
    stems = _unique_stems([s.path for s in srcs])

    warnings: list[str] = []
    if per_slice == 1:
        warnings.append("per_slice=1 writes only clean slices: every label is 1.0")
    with one_torch_thread():
        prepared = [
            _prepare(s, stem, size, min_foreground, warnings)
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
        rows: list[dict[str, object]] = []
        for src, prep in zip(srcs, prepared, strict=True):
            (export.folder / prep.stem).mkdir()
            for axis, index, clean in prep.slices():
                rows += _write_slice(
                    export.folder, src, prep.stem, axis, index, clean, per_slice, seed, slab
                )
                for _ in range(per_slice):
                    export.advance()
        _assign_auto(rows, seed)
        labels = np.array([float(r["label"]) for r in rows])
        counts = {s: n for s in SPLITS if (n := sum(r["split"] == s for r in rows))}
        note = _source_note(
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


# --- arguments --------------------------------------------------------------------------


def _check_sources(sources, default_axes: Sequence[int]) -> list[MotionSource]:
    if isinstance(sources, str | os.PathLike | MotionSource):
        raise ConfigError(
            "sources must be a list of (path, split) pairs or MotionSource items; got a "
            f"single {type(sources).__name__}: wrap it in a list"
        )
    out: list[MotionSource] = []
    for item in sources:
        if isinstance(item, MotionSource):
            src = item
        elif isinstance(item, tuple | list) and len(item) in (2, 3):
            src = MotionSource(Path(item[0]), *item[1:])
        else:
            raise ConfigError(
                f"each source must be MotionSource(path, split, axes), (path, split) or "
                f"(path, split, axes); got {item!r}"
            )
        if src.split not in (*SPLITS, AUTO):
            raise ConfigError(
                f"{src.path}: unknown split {src.split!r}; use one of "
                f"{[*SPLITS, AUTO]} (auto shares slab groups ~85/15 between train and val)"
            )
        axes = _check_axes(src.axes if src.axes is not None else default_axes, src.path)
        out.append(MotionSource(Path(src.path), src.split, axes))
    if not out:
        raise ConfigError(
            "no sources given: pass at least one (path, split), e.g. "
            '[("mni_icbm152_t1.nii.gz", "auto")]'
        )
    resolved = [os.path.abspath(s.path) for s in out]
    repeated = sorted({p for p in resolved if resolved.count(p) > 1})
    if repeated:
        raise ConfigError(f"sources are repeated: {repeated}; give each volume once")
    return out


def _check_axes(axes, path: Path) -> tuple[int, ...]:
    if isinstance(axes, int):
        axes = (axes,)
    axes = tuple(axes)
    if not axes or any(isinstance(a, bool) or a not in (0, 1, 2) for a in axes):
        raise ConfigError(f"{path}: axes must be a non-empty subset of (0, 1, 2); got {axes!r}")
    if len(set(axes)) != len(axes):
        raise ConfigError(f"{path}: axes are repeated: {axes!r}")
    return axes


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, int | np.integer) and not isinstance(size, bool):
        size = (size, size)
    try:
        rows, cols = size
    except (TypeError, ValueError):
        raise ConfigError(f"size must be (X, Y) or one number; got {size!r}") from None
    return (whole_number("size", rows, minimum=16), whole_number("size", cols, minimum=16))


def _unique_stems(paths: list[Path]) -> list[str]:
    """Short names for the sources: the file stem, with parent folders added on clashes."""
    parts = []
    for p in paths:
        p = Path(os.path.abspath(p))
        name = re.sub(r"(\.nii\.gz|\.nii|\.dcm|\.png|\.jpe?g)$", "", p.name, flags=re.I)
        parts.append([*(q.name for q in reversed(p.parents) if q.name), name])
    depth = [1] * len(paths)
    while True:
        stems = [_safe("-".join(ps[-d:])) for ps, d in zip(parts, depth, strict=True)]
        clashes = {s for s in stems if stems.count(s) > 1}
        if not clashes:
            return stems
        grown = False
        for i, s in enumerate(stems):
            if s in clashes and depth[i] < len(parts[i]):
                depth[i] += 1
                grown = True
        if not grown:  # pragma: no cover - distinct absolute paths always separate
            return [f"{s}-{i}" for i, s in enumerate(stems)]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "source"


# --- slicing ----------------------------------------------------------------------------


@dataclass
class _Prepared:
    """One source's kept slices, resized to ``size`` and normalised to [0, 1]."""

    stem: str
    shape: tuple[int, ...]
    axes_used: list[int]
    axes_skipped: list[int]
    indices: list[tuple[int, int]]  # (axis, slice index) in the order of ``images``
    images: np.ndarray  # (n, X, Y) float32 in [0, 1]

    def slices(self):
        yield from ((a, i, img) for (a, i), img in zip(self.indices, self.images, strict=True))


def _prepare(
    src: MotionSource,
    stem: str,
    size: tuple[int, int],
    min_foreground: float,
    warnings: list[str],
) -> _Prepared:
    from medres.io import read_scan

    volume = read_scan(src.path)  # ScanError (naming the path) propagates
    array = np.asarray(volume.array[0], dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]  # a 2D image is one slice along axis 2
    p1, p99 = (float(v) for v in np.percentile(array, [1, 99]))
    if not p99 > p1:
        raise ScanContentError(
            str(src.path),
            f"intensities are (almost) constant (1st and 99th percentiles both {p1:g}); "
            "nothing to slice — check the file",
        )
    foreground = array > FOREGROUND_LEVEL * p99
    normalised = np.clip((array - p1) / (p99 - p1), 0.0, 1.0)

    used, skipped, indices, images, rhos, best = [], [], [], [], [], 0.0
    for axis in src.axes:
        plane = [n for a, n in enumerate(array.shape) if a != axis]
        if min(plane) < MIN_SIDE:
            skipped.append(axis)
            continue
        used.append(axis)
        others = tuple(a for a in range(3) if a != axis)
        share = foreground.mean(axis=others)
        best = max(best, float(share.max()))
        keep = np.flatnonzero(share >= min_foreground)
        if len(keep):
            indices += [(axis, int(i)) for i in keep]
            kept = np.moveaxis(normalised, axis, 0)[keep]
            rhos.append(_neighbour_correlation(kept))
            images.append(_resize(kept, size))
    if not used:
        raise ConfigError(
            f"{src.path}: shape {array.shape} has no axis among {src.axes} whose slices are "
            f"at least {MIN_SIDE}x{MIN_SIDE} voxels; choose other axes for this source"
        )
    if not indices:
        raise ConfigError(
            f"{src.path}: no slice along axes {used} has min_foreground={min_foreground:g} "
            f"of foreground (the best has {best:.3f}); lower min_foreground"
        )
    rho = min(rhos)
    if rho < 0.3:
        warnings.append(
            f"{src.path}: neighbouring pixels are nearly uncorrelated (r = {rho:.2f}); the "
            "pixels look like noise rather than anatomy, so its SSIM labels say little "
            "about motion in real scans"
        )
    return _Prepared(stem, tuple(array.shape), used, skipped, indices, np.concatenate(images))


def _resize(slices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(n, a, b) -> (n, *size) float32, bilinear with antialiasing when shrinking."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    if tuple(t.shape[-2:]) != size:
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    return t[:, 0].clamp(0.0, 1.0).numpy()


def _neighbour_correlation(images: np.ndarray) -> float:
    """Median correlation of vertically neighbouring pixels over (a sample of) the slices."""
    values = []
    for img in images[:: max(1, len(images) // 16)]:
        a, b = img[:-1].ravel(), img[1:].ravel()
        if a.std() > 0 and b.std() > 0:
            values.append(float(np.corrcoef(a, b)[0, 1]))
    return float(np.median(values)) if values else 1.0


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


def _source_note(
    srcs: list[MotionSource],
    prepared: list[_Prepared],
    rows: list[dict[str, object]],
    counts: dict[str, int],
    labels: np.ndarray,
    per_slice: int,
    size: tuple[int, int],
    min_foreground: float,
    seed: int,
    slab: int,
) -> SourceNote:
    per_source = Counter(str(r["source"]) for r in rows)
    source_rows = []
    for s, p in zip(srcs, prepared, strict=True):
        kept = (p.axes_used, p.axes_skipped or "-", len(p.indices), per_source[str(s.path)])
        source_rows.append((f"`{s.path}`", f"`{p.stem}`", s.split, p.shape, *kept))
    header = ["path", "stem", "split", "shape (X, Y, Z)", "axes used", "axes skipped"]
    sources = markdown_table([*header, "slices kept", "images"], source_rows)
    split_rows = []
    for split, n in counts.items():
        lab = np.array([float(r["label"]) for r in rows if r["split"] == split])
        groups = len({r["patient_id"] for r in rows if r["split"] == split})
        split_rows.append(
            (split, n, groups, f"{lab.min():.3f}", f"{np.median(lab):.3f}", f"{lab.max():.3f}")
        )
    splits = markdown_table(
        ["split", "images", "patient groups", "SSIM min", "SSIM median", "SSIM max"], split_rows
    )
    q = np.quantile(labels, [0, 0.1, 0.25, 0.5, 0.75, 0.9, 1])
    quantiles = " / ".join(f"{v:.3f}" for v in q)
    body = f"""Made by `medres.datasets.motion.export_motion` (seed {seed}). Keep the sources' own
licences and citations with this folder.

## Sources

{sources}

## Slices

- Channel 0, normalised to [0, 1] by the volume's 1st / 99th percentiles (clipped).
- Kept when voxels above {FOREGROUND_LEVEL:.0%} of the volume's 99th percentile cover at
  least {min_foreground:g} of the slice.
- Resized to {size[0]}x{size[1]} (bilinear, antialiased, aspect ratio not kept), rounded to
  8 bits: the clean slice. No reorientation or flips; `read_scan(png).array[0]` is the
  slice `volume.array[0].take(slice_index, axis)` (resized), PNG width along its first axis.

## Motion simulation (k-space, `simulate_motion`)

- {per_slice} images per slice: copy 0 at severity 0 (clean), copies 1..{per_slice - 1} at
  severities stratified over [0, 1].
- Phase encoding along the slice's first axis (PNG width): each k-space line is one
  k_X value. At severity s: round(s x {MAX_FRACTION:g} x X)
  lines hit; central band of {CENTRE_FRACTION:.0%} of the lines {CENTRE_WEIGHT:g} x s² as
  likely as outer lines; per hit line a translation uniform in ±s x {MAX_SHIFT_PX:g} px
  and a phase error uniform in ±s x {MAX_PHASE_RAD:.4f} rad; magnitude of the inverse FFT,
  clipped to [0, 1], rounded to 8 bits.
- Label: SSIM (MONAI; gaussian window {SSIM_WINDOW}, sigma {SSIM_SIGMA}, K1 {SSIM_K1},
  K2 {SSIM_K2}, data range 255) between the 8-bit clean slice and the 8-bit PNG written.

## Splits and patients

A source with a given split is one subject: `patient_id` = `<stem>`. `auto` sources:
`patient_id` = `<stem>-ax<axis>-slab<slice_index // {slab}>` (neighbouring slices share
an id and a split), slab groups shared between train and val
({1 - AUTO_VAL_FRACTION:.0%} / {AUTO_VAL_FRACTION:.0%}) by a permutation seeded with {seed}.
Slabs along different axes of one volume cross each other, so validation on an `auto`
source is somewhat optimistic.

{splits}

All {len(labels)} labels, SSIM quantiles 0 / 10 / 25 / 50 / 75 / 90 / 100 %: {quantiles}."""
    title = "MR motion QA: motion-corrupted slices labelled with SSIM, exported by medres"
    return SourceNote(title, body, rerun="the export")
