"""The patient-level (cluster) bootstrap behind every interval medres reports.

Scans of one patient are correlated, so resampling scans would make intervals too narrow:
a replicate draws *patients* with replacement and keeps all of their scans. A replicate is
a vector of draw counts, one per patient; a scan's weight is its patient's count, and the
metrics of :mod:`medres.evaluate.metrics` take those weights directly. With one scan per
patient it is the ordinary bootstrap.

Example::

    codes = patient_codes(patient_ids, len(y))
    counts = draw_counts(codes.max() + 1, n_boot=1000, seed=0)
    reps = replicate(lambda w: {"auroc": roc_auc(y, p, w)}, counts, codes)
    intervals(reps, n_boot=1000)     # {"auroc": (low, high)}
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from medres.errors import ConfigError

_CHUNK_ELEMENTS = 1 << 17  # weights evaluated at once (replicates × scans): 1 MiB, cache-sized


def id_text(values, n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(N,) values as stripped text and (N,) known-mask (None, NaN and blank are unknown)."""
    raw = pd.Series(np.asarray(values, dtype=object).ravel())
    if len(raw) != n:
        raise ConfigError(f"lengths differ: {n} scans but {len(raw)} {what}")
    text = np.array([str(v).strip() for v in raw], dtype=object)
    return text, raw.notna().to_numpy() & (text != "")


def patient_codes(patient_ids, n: int) -> np.ndarray:
    """(N,) patient index 0..P-1 by first appearance; an unknown id is a patient of its own."""
    if patient_ids is None:
        return np.arange(n)
    text, known = id_text(patient_ids, n, "patient_ids")
    return pd.factorize(np.where(known, "p:" + text, "s:" + np.arange(n).astype(str)))[0]


def draw_counts(n_patients: int, n_boot: int, seed) -> np.ndarray:
    """(n_boot, P) how often each patient is drawn in each replicate (P draws each)."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((int(n_boot), n_patients))
    for r in range(int(n_boot)):  # one call per replicate, as ever: the same seed, the same draws
        counts[r] = np.bincount(rng.integers(0, n_patients, size=n_patients), minlength=n_patients)
    return counts


def replicate(
    statistics: Callable[[np.ndarray], dict],
    counts: np.ndarray,
    codes: np.ndarray | None = None,
    *,
    batched: bool = True,
) -> dict[str, np.ndarray]:
    """Each statistic on each replicate: name -> (n_boot,) values.

    Args:
        statistics: weights -> {name: value}; with ``batched``, weights (R, N) -> {name: (R,)}.
        counts: (n_boot, P) from :func:`draw_counts`.
        codes: (N,) patient of each scan: the statistics get scan weights ``counts[:, codes]``;
            None: they get the patient counts.
    """

    def weights(rows: np.ndarray) -> np.ndarray:
        return rows if codes is None else np.take(rows, codes, axis=-1)

    if batched:
        step = max(1, _CHUNK_ELEMENTS // max(1, weights(counts[:1]).shape[1]))
        parts = [statistics(weights(counts[i : i + step])) for i in range(0, len(counts), step)]
    else:
        parts = [{k: np.reshape(v, 1) for k, v in statistics(weights(c)).items()} for c in counts]
    if not parts:  # n_boot = 0
        return {}
    return {k: np.concatenate([np.asarray(p[k], dtype=float) for p in parts]) for k in parts[0]}


def intervals(replicates: dict[str, np.ndarray], n_boot: int) -> dict[str, tuple[float, float]]:
    """Percentile 95 % intervals; NaN where fewer than half the replicates define the
    metric (replicates where it is undefined are dropped)."""
    out = {}
    for name, values in replicates.items():
        v = values[~np.isnan(values)]
        ok = n_boot > 0 and len(v) >= n_boot / 2
        out[name] = tuple(float(x) for x in np.percentile(v, [2.5, 97.5])) if ok else (np.nan,) * 2
    return out
