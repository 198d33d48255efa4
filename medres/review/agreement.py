"""Agreement between readers, and between each reader and the model: Cohen's kappa with a
95 % bootstrap interval.

Kappa is agreement beyond chance on the cases both raters labelled: 1 perfect, 0 what
chance alone gives, below 0 worse than chance. The label a reader gave is the predicted
class on agree, the corrected label on disagree; ``uncertain`` counts as a category of
its own (a reader who cannot tell does not agree with one who can). The model's label
is its predicted class.

The kappa is :func:`medres.evaluate.metrics.cohen_kappa` (the one definition medres
reports, equal to ``sklearn.metrics.cohen_kappa_score``; it takes bootstrap weights, so
2000 replicates are one vectorised call). The interval is the percentile bootstrap over
cases (:mod:`medres.evaluate.bootstrap`), with a fixed seed: the same store gives the
same interval. It is NaN where kappa is undefined in too many replicates (every case
given one and the same label).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from medres.evaluate.bootstrap import draw_counts, intervals, replicate
from medres.evaluate.metrics import cohen_kappa
from medres.review.readers import with_labels

UNCERTAIN = "(uncertain)"  # the category of an uncertain reading
PAIR_COLUMNS = ("reader_a", "reader_b", "n", "kappa", "low", "high")
MODEL_COLUMNS = ("reviewer", "n", "kappa", "low", "high")


@dataclass(frozen=True)
class Agreement:
    """Kappa tables: ``pairs`` (one row per pair of readers who read some case both:
    :data:`PAIR_COLUMNS`) and ``model`` (one row per reader, against the model's predicted
    class: :data:`MODEL_COLUMNS`). ``n`` is the number of cases; ``low`` / ``high`` the
    95 % bootstrap interval."""

    pairs: pd.DataFrame
    model: pd.DataFrame


def kappa_interval(a, b, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Cohen's kappa of two raters' labels and its 95 % percentile bootstrap interval.

    Args:
        a, b: (N,) labels of the same N cases (any hashable values; None is a category).
        n_boot: bootstrap replicates (cases drawn with replacement).
        seed: the generator's seed.

    Returns (kappa, low, high); NaN where undefined (no case, or a single label overall).
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"two raters need the same cases: {len(a)} and {len(b)} labels")
    if not a:
        return (np.nan, np.nan, np.nan)
    codes, _ = pd.factorize(pd.Series(a + b, dtype=object).fillna(UNCERTAIN))
    x, y = codes[: len(a)], codes[len(a) :]
    kappa = float(cohen_kappa(x, y))
    counts = draw_counts(len(a), n_boot=n_boot, seed=seed)
    low, high = intervals(replicate(lambda w: {"k": cohen_kappa(x, y, w)}, counts), n_boot)["k"]
    return (kappa, low, high)


def agreement(readings: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> Agreement:
    """Reader-vs-reader and reader-vs-model kappas of the current readings.

    Args:
        readings: each reader's current reading of each case (case_id, reviewer,
            decision, corrected_label, predicted_class), adjudications left out.
    """
    labelled = with_labels(readings)
    labelled["label"] = labelled["label"].where(labelled["label"].notna(), UNCERTAIN)
    by_reader = {
        r: g.set_index("case_id")["label"] for r, g in labelled.groupby("reviewer", sort=True)
    }
    pairs = []
    for first, second in combinations(sorted(by_reader), 2):
        both = by_reader[first].index.intersection(by_reader[second].index)
        if len(both) == 0:
            continue
        a, b = by_reader[first].loc[both], by_reader[second].loc[both]
        kappa, low, high = kappa_interval(a, b, n_boot, seed)
        pairs.append((first, second, len(both), kappa, low, high))
    model = []
    for reader, group in labelled.groupby("reviewer", sort=True):
        kappa, low, high = kappa_interval(group["label"], group["predicted_class"], n_boot, seed)
        model.append((reader, len(group), kappa, low, high))
    return Agreement(
        pd.DataFrame(pairs, columns=list(PAIR_COLUMNS)),
        pd.DataFrame(model, columns=list(MODEL_COLUMNS)),
    )
