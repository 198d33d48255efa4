"""How far a bundle's probabilities, conformal sets and referrals can be trusted on a
labelled split: calibration error before and after, conformal coverage and set size
(overall and per class), the risk–coverage curve, and what referral buys.

Every figure has a 95 % patient-bootstrap interval from the same resampling as
:func:`medres.evaluate.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from medres.calibrate import expected_calibration_error
from medres.evaluate.bootstrap import draw_counts, intervals, patient_codes, replicate
from medres.evaluate.metrics import MetricCI
from medres.uncertainty.referral import risk_coverage
from medres.uncertainty.scores import as_uncertainty
from medres.uncertainty.trust import Assessment

_EPS = 1e-12


@dataclass
class TrustReport:
    """Trust figures of one split.

    Attributes:
        metrics: ece, ece_uncalibrated, nll, nll_uncalibrated, brier, conformal_coverage,
            conformal_mean_set_size, aurc, referral_rate, accuracy_not_referred, ood_rate.
        per_class: per true class (``class``, the label, and ``name``, its display
            name): n, coverage and mean_set_size (conformal sets),
            accuracy, mean_confidence (max probability), mean_entropy, referral_rate.
        curves: ``risk_coverage`` {score name: (coverage, risk)}; ``reliability``
            {"uncalibrated" | "calibrated": (N, K) probs} and ``targets`` (N,).
        sentence: "Referring X % of scans, the automated decisions reach Y % accuracy ...".
    """

    metrics: dict[str, MetricCI]
    per_class: pd.DataFrame
    curves: dict
    sentence: str
    coverage_target: float


def trust_report(
    assessment: Assessment,
    targets: np.ndarray,
    *,
    referral_score: str,
    coverage_target: float,
    classes: list[str],
    class_names: list[str] | None = None,
    patient_ids=None,
    n_boot: int = 1000,
    seed: int = 0,
) -> TrustReport:
    """Trust figures of N assessed scans with their true class indices ``targets`` (N,);
    ``classes`` the labels as text and ``class_names`` their display names (default: the
    labels)."""
    y = np.asarray(targets, dtype=int)
    n = len(y)
    a = assessment
    covered = a.sets[np.arange(n), y]
    set_size = a.sets.sum(1).astype(float)
    correct = a.predicted == y
    uncertainty = as_uncertainty(referral_score, a.scores)
    nll_cal = -np.log(np.clip(a.probs[np.arange(n), y], _EPS, 1))
    nll_raw = -np.log(np.clip(a.raw_probs[np.arange(n), y], _EPS, 1))
    onehot = np.eye(a.probs.shape[1])[y]
    # binary: the usual Brier score of P(positive); else the multi-class sum over classes
    brier = ((a.probs - onehot) ** 2).sum(1) / (2 if a.probs.shape[1] == 2 else 1)

    def kernel(w: np.ndarray) -> dict[str, float]:
        kept = w * ~a.refer
        return {
            "ece": expected_calibration_error(a.probs, y, weights=w),
            "ece_uncalibrated": expected_calibration_error(a.raw_probs, y, weights=w),
            "nll": _wmean(nll_cal, w),
            "nll_uncalibrated": _wmean(nll_raw, w),
            "brier": _wmean(brier, w),
            "conformal_coverage": _wmean(covered, w),
            "conformal_mean_set_size": _wmean(set_size, w),
            "aurc": risk_coverage(uncertainty, correct, w)[2],
            "referral_rate": _wmean(a.refer, w),
            "accuracy_not_referred": _wmean(correct, kept) if kept.sum() else np.nan,
            "ood_rate": _wmean(a.ood, w),
        }

    point = kernel(np.ones(n))
    codes = patient_codes(patient_ids, n)
    counts = draw_counts(codes.max() + 1, n_boot, seed)
    cis = intervals(replicate(kernel, counts, codes, batched=False), n_boot)
    metrics = {k: MetricCI(float(v), *cis.get(k, (np.nan, np.nan))) for k, v in point.items()}
    per_class = pd.DataFrame(
        [
            {"class": label, "name": name, **_class_row(y == k, covered, set_size, correct, a)}
            for k, (label, name) in enumerate(zip(classes, class_names or classes, strict=True))
        ]
    )
    curves = {
        "risk_coverage": {
            name: risk_coverage(as_uncertainty(name, a.scores), correct)[:2]
            for name in dict.fromkeys([referral_score, "max_prob", "entropy"])
        },
        "reliability": {"uncalibrated": a.raw_probs, "calibrated": a.probs},
        "targets": y,
    }
    sentence = _sentence(metrics, float(correct.mean()))
    return TrustReport(metrics, per_class, curves, sentence, coverage_target)


def _class_row(member, covered, set_size, correct, a: Assessment) -> dict:
    """Per true class: conformal coverage and set size, accuracy, and how uncertain the
    model was (mean max probability and entropy) and how often it referred."""

    def mean(values) -> float:
        return float(np.mean(values[member])) if member.any() else np.nan

    return {
        "n": int(member.sum()),
        "coverage": mean(covered),
        "mean_set_size": mean(set_size),
        "accuracy": mean(correct),
        "mean_confidence": mean(a.scores["max_prob"]),
        "mean_entropy": mean(a.scores["entropy"]),
        "referral_rate": mean(a.refer),
    }


def _sentence(m: dict[str, MetricCI], overall_accuracy: float) -> str:
    rate, acc = m["referral_rate"].value, m["accuracy_not_referred"].value
    if np.isnan(acc):
        return f"Referring {rate:.0%} of scans: every scan goes to a clinician."
    return (
        f"Referring {rate:.0%} of scans, the automated decisions reach {acc:.1%} accuracy "
        f"(all scans: {overall_accuracy:.1%})."
    )


def _wmean(values: np.ndarray, w: np.ndarray) -> float:
    total = w.sum()
    return float((np.asarray(values, dtype=float) * w).sum() / total) if total else np.nan
