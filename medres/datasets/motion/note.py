"""The ``SOURCE.md`` of a motion export: sources, slicing, the motion model, splits.

The prose is the template ``note.md`` next to this module; this module fills it in
with the sources table, the simulation's parameters and the SSIM distribution per split.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from medres.datasets._export import SourceNote, markdown_table, note_text
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
)
from medres.datasets.motion.slicing import FOREGROUND_LEVEL, PreparedSource
from medres.datasets.motion.sources import AUTO_VAL_FRACTION, MotionSource

TITLE = "MR motion QA: motion-corrupted slices labelled with SSIM, exported by medres"


def source_note(
    srcs: list[MotionSource],
    prepared: list[PreparedSource],
    rows: list[dict[str, object]],
    counts: dict[str, int],
    labels: np.ndarray,
    per_slice: int,
    size: tuple[int, int],
    min_foreground: float,
    seed: int,
    slab: int,
) -> SourceNote:
    """The note of an export of ``srcs`` whose ``labels.csv`` rows are ``rows`` (SSIM
    ``labels``, images per split ``counts``), made with these arguments."""
    q = np.quantile(labels, [0, 0.1, 0.25, 0.5, 0.75, 0.9, 1])
    body = note_text(
        "motion/note.md",
        seed=seed,
        sources=_sources_table(srcs, prepared, rows),
        foreground_level=f"{FOREGROUND_LEVEL:.0%}",
        min_foreground=f"{min_foreground:g}",
        size_x=size[0],
        size_y=size[1],
        per_slice=per_slice,
        last_copy=per_slice - 1,
        max_fraction=f"{MAX_FRACTION:g}",
        centre_fraction=f"{CENTRE_FRACTION:.0%}",
        centre_weight=f"{CENTRE_WEIGHT:g}",
        max_shift_px=f"{MAX_SHIFT_PX:g}",
        max_phase_rad=f"{MAX_PHASE_RAD:.4f}",
        ssim_window=SSIM_WINDOW,
        ssim_sigma=SSIM_SIGMA,
        ssim_k1=SSIM_K1,
        ssim_k2=SSIM_K2,
        slab=slab,
        train_share=f"{1 - AUTO_VAL_FRACTION:.0%}",
        val_share=f"{AUTO_VAL_FRACTION:.0%}",
        splits=_splits_table(rows, counts),
        n_labels=len(labels),
        quantiles=" / ".join(f"{v:.3f}" for v in q),
    )
    return SourceNote(TITLE, body, rerun="the export")


def _sources_table(
    srcs: list[MotionSource], prepared: list[PreparedSource], rows: list[dict[str, object]]
) -> str:
    """One row per source: path, stem, split, shape, axes used / skipped, slices, images."""
    per_source = Counter(str(r["source"]) for r in rows)
    source_rows = []
    for s, p in zip(srcs, prepared, strict=True):
        kept = (p.axes_used, p.axes_skipped or "-", len(p.indices), per_source[str(s.path)])
        source_rows.append((f"`{s.path}`", f"`{p.stem}`", s.split, p.shape, *kept))
    header = ["path", "stem", "split", "shape (X, Y, Z)", "axes used", "axes skipped"]
    return markdown_table([*header, "slices kept", "images"], source_rows)


def _splits_table(rows: list[dict[str, object]], counts: dict[str, int]) -> str:
    """One row per split: images, patient groups, SSIM min / median / max."""
    split_rows = []
    for split, n in counts.items():
        lab = np.array([float(r["label"]) for r in rows if r["split"] == split])
        groups = len({r["patient_id"] for r in rows if r["split"] == split})
        split_rows.append(
            (split, n, groups, f"{lab.min():.3f}", f"{np.median(lab):.3f}", f"{lab.max():.3f}")
        )
    return markdown_table(
        ["split", "images", "patient groups", "SSIM min", "SSIM median", "SSIM max"], split_rows
    )
