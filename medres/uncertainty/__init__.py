"""Uncertainty: sampling predictors, per-scan scores, conformal sets, OOD scores and referral."""

from medres.uncertainty.conformal import CONFORMITY_SCORES, ConformalClassifier, set_report

__all__ = [
    "CONFORMITY_SCORES",
    "ConformalClassifier",
    "set_report",
]
