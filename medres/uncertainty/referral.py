"""Referral: which scans go to a clinician, and the risk–coverage trade-off behind it.

A scan is referred when it is out of distribution, when its conformal set holds more
than one class, or when its uncertainty passes a threshold chosen on validation so that
the decisions left to the model reach a target accuracy. Every referral keeps its
reasons.
"""

from __future__ import annotations

import numpy as np

from medres.errors import ConfigError


def risk_coverage(uncertainty: np.ndarray, correct: np.ndarray, weights=None):
    """The risk–coverage curve: keep the least uncertain scans first.

    Args:
        uncertainty: (N,) higher = less certain.
        correct: (N,) bool, the model's decision was right.
        weights: (N,) non-negative scan weights (bootstrap counts), default 1.

    Returns:
        ``(coverage, risk, aurc)``: coverage (M,) the kept fraction after each distinct
        uncertainty value, risk (M,) the error rate among the kept scans, and the area
        under the curve (mean risk over every kept-prefix, lower is better; Geifman et al.).
    """
    u = np.asarray(uncertainty, dtype=float)
    err = 1.0 - np.asarray(correct, dtype=float)
    w = np.ones_like(u) if weights is None else np.asarray(weights, dtype=float)
    order = np.argsort(u, kind="stable")
    u, err, w = u[order], err[order], w[order]
    kept, errors = np.cumsum(w), np.cumsum(w * err)
    last = np.r_[u[1:] != u[:-1], True] & (w > 0)  # ties are kept or referred together
    if not last.any():
        return np.zeros(0), np.zeros(0), float("nan")
    coverage, risk = kept[last] / kept[-1], errors[last] / kept[last]
    steps = np.diff(np.r_[0.0, kept[last]])  # each prefix weighted by the scans it adds
    return coverage, risk, float((risk * steps).sum() / steps.sum())


def accuracy_after_referral(uncertainty: np.ndarray, correct: np.ndarray, rate: float) -> float:
    """Accuracy of the scans left after referring the ``rate`` fraction most uncertain
    (ties at the cut broken by order, so exactly round(rate·N) scans are referred)."""
    if not 0 <= rate < 1:
        raise ConfigError(f"referral rate must be in [0, 1); got {rate}")
    order = np.argsort(-np.asarray(uncertainty, dtype=float), kind="stable")
    kept = order[round(rate * len(order)) :]
    return float(np.asarray(correct, dtype=float)[kept].mean())


def choose_uncertainty_threshold(
    uncertainty: np.ndarray, correct: np.ndarray, target_accuracy: float
) -> float:
    """The largest threshold t such that the validation scans with uncertainty <= t are
    right at least ``target_accuracy`` of the time (refer scans above t).

    Returns -inf when no share of the validation scans reaches the target: every scan
    is then referred, since the model cannot be trusted alone at that accuracy.
    """
    if not 0 < target_accuracy <= 1:
        raise ConfigError(f"target accuracy must be in (0, 1]; got {target_accuracy}")
    u = np.asarray(uncertainty, dtype=float)
    order = np.argsort(u, kind="stable")
    u_sorted = u[order]
    hits = np.cumsum(np.asarray(correct, dtype=float)[order])
    accuracy = hits / np.arange(1, len(u) + 1)
    last = np.r_[u_sorted[1:] != u_sorted[:-1], True]
    ok = np.flatnonzero(last & (accuracy >= target_accuracy - 1e-12))
    return float(u_sorted[ok[-1]]) if len(ok) else float("-inf")


def referral_reasons(
    *,
    ood: np.ndarray,
    set_size: np.ndarray,
    uncertainty: np.ndarray,
    threshold: float,
) -> list[str]:
    """One reason string per scan ("" = not referred; several joined by "; ").

    Args:
        ood: (N,) bool, out of distribution.
        set_size: (N,) int, classes in the conformal set.
        uncertainty: (N,) the bundle's referral score, higher = less certain.
        threshold: refer when uncertainty > threshold.
    """
    reasons = []
    for is_ood, size, u in zip(ood, set_size, uncertainty, strict=True):
        why = []
        if is_ood:
            why.append("out of distribution")
        if size > 1:
            why.append(f"conformal set holds {int(size)} classes")
        if u > threshold:
            why.append("uncertainty above the validation threshold")
        reasons.append("; ".join(why))
    return reasons
