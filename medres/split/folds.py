"""Drawing a split: label-balanced patient folds, or scan by scan.

:func:`fold_split` cuts the rows into *K* folds with scikit-learn's
``StratifiedGroupKFold`` (labels balanced, patients as groups) and hands whole folds to
train, val and test so that their shares match the fractions as closely as a small *K*
allows. :func:`scan_split` draws train / val scan by scan (the deliberately leaky
``unit="scan"``). Both return an (N,) object array of split names, one per row.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from medres.cohort import SPLITS
from medres.errors import ConfigError
from medres.split.rows import label_codes, patient_groups

_MAX_FOLDS = 20  # sklearn's greedy is O(patients x folds) Python steps: keep K small
_FOLD_TOLERANCE = 0.02  # smallest K whose fold shares are this close to every fraction


def stratified_split(rows: pd.DataFrame, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Split names for ``rows`` drawn by StratifiedGroupKFold (patients as groups)."""
    return fold_split(label_codes(rows), patient_groups(rows), fractions, seed)


def fold_split(
    labels: np.ndarray, groups: np.ndarray, fractions: Sequence[float], seed: int
) -> np.ndarray:
    """Cut into K label-balanced group folds and hand whole folds to each split."""
    from sklearn.model_selection import StratifiedGroupKFold

    wanted = sum(f > 0 for f in fractions)
    n_groups = len(np.unique(groups))
    if n_groups < wanted:
        raise ConfigError(
            f"cannot fill {wanted} splits from {n_groups} patient(s); add scans, or ask "
            "for fewer splits (e.g. --fractions 0.8,0,0.2)"
        )
    largest_class = int(np.bincount(labels).max())
    if largest_class < wanted:  # every class too rare to stratify: split by group only
        labels = np.zeros_like(labels)
        largest_class = len(labels)
    k, counts = _fold_allocation(fractions, min(_MAX_FOLDS, n_groups, largest_class))
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class has fewer members than K"
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        folds = [test for _, test in splitter.split(np.zeros(len(labels)), labels, groups)]
    names = np.empty(len(labels), dtype=object)
    start = 0
    for name, count in zip(SPLITS, counts, strict=True):
        for test in folds[start : start + count]:
            names[test] = name
        start += count
    empty = [name for name, f in zip(SPLITS, fractions, strict=True) if f > 0]
    empty = [name for name in empty if not (names == name).any()]
    if empty:
        raise ConfigError(
            f"the {'/'.join(empty)} split came out empty ({n_groups} patients); the cohort "
            "is too small for these fractions: add scans or set that fraction to 0"
        )
    return names


def _fold_allocation(fractions: Sequence[float], max_folds: int) -> tuple[int, tuple[int, ...]]:
    """Pick K folds and how many go to each split so shares approximate ``fractions``.

    The smallest K within ``_FOLD_TOLERANCE`` of every fraction wins (fewer folds are
    faster and better balanced); otherwise the closest K up to ``max_folds``.
    Each split with a positive fraction gets at least one fold; a zero fraction none.
    """
    best: tuple[float, int, tuple[int, ...]] | None = None
    for k in range(2, max(max_folds, 2) + 1):
        counts = _apportion(fractions, k)
        if counts is None:
            continue
        error = max(abs(c / k - f) for c, f in zip(counts, fractions, strict=True))
        if best is None or error < best[0] - 1e-12:
            best = (error, k, counts)
        if error <= _FOLD_TOLERANCE:
            break
    if best is None:  # max_folds too small for the splits asked: guarded by the caller
        raise ConfigError(f"cannot split into {fractions} with only {max_folds} fold(s)")
    return best[1], best[2]


def _apportion(fractions: Sequence[float], k: int) -> tuple[int, ...] | None:
    """Fold counts summing to ``k``: >= 1 where the fraction is > 0, 0 where it is 0.

    Largest-remainder rounding of ``fraction * k``; None if ``k`` is too small.
    """
    positive = [f > 0 for f in fractions]
    if sum(positive) > k:
        return None
    counts = [max(int(f * k), 1) if p else 0 for f, p in zip(fractions, positive, strict=True)]
    while sum(counts) > k:  # the minimum of one fold overshot: take from the largest
        counts[int(np.argmax(counts))] -= 1
    while sum(counts) < k:
        short = [
            f * k - c if p else -math.inf
            for f, c, p in zip(fractions, counts, positive, strict=True)
        ]
        counts[int(np.argmax(short))] += 1
    return tuple(counts)


def scan_split(rows: pd.DataFrame, val: float, seed: int) -> np.ndarray:
    """train/val names drawn scan by scan, stratified by label, ignoring patients.

    sklearn's ``train_test_split``: exact shares, and fast on tens of thousands of
    slices (``StratifiedGroupKFold`` with one group per scan took 25 s on 50,000).
    Scans are ordered by scan_id first, so the split does not depend on row order.
    """
    from sklearn.model_selection import train_test_split

    names = np.full(len(rows), "train", dtype=object)
    n_val = round(val * len(rows))
    if val == 0:
        return names
    if not 1 <= n_val < len(rows):
        raise ConfigError(
            f"cannot draw a val share of {val:.3f} from {len(rows)} train/val scan(s): the "
            "pool is too small; add scans or set the val fraction to 0"
        )
    order = np.argsort(rows["scan_id"].astype(str).to_numpy(), kind="stable")
    labels = label_codes(rows)[order]
    counts = np.bincount(labels)
    can_stratify = counts.min() >= 2 and min(n_val, len(rows) - n_val) >= len(counts)
    stratify = labels if can_stratify else None  # a class too rare: shares by scan only
    _, val_rows = train_test_split(
        order, test_size=n_val, random_state=seed, shuffle=True, stratify=stratify
    )
    names[val_rows] = "val"
    return names
