"""Split conformal prediction sets for classifiers, on already-calibrated probabilities.

Fit on a calibration split the model never trained on; then, for exchangeable scans, the
set of each new scan holds its true class with probability at least ``coverage``.

Conformity scores (higher = the true class looks less plausible):

- ``lac`` (Sadinle et al. 2019): ``1 - p_true``. Smallest sets on average.
- ``aps`` (Romano et al. 2020, non-randomised): the total probability of the classes
  ranked at or above the true class (descending probability, ties by class index).
  Sets grow on hard scans.

The threshold is the ``ceil((n + 1) * coverage)``-th smallest of the n calibration scores
(the split-conformal order statistic, the same value as MAPIE 1.6). When that rank
exceeds n there are too few scans for the coverage: the threshold is then 1.0, the
largest value either score can take, and every set holds every class. A class enters
the set when its own score is at most the threshold (LAC: ``1 - p_k <= q``; APS: mass of
the classes ranked at or above k ``<= q``), with MAPIE's 1e-8 float tolerance.
``class_conditional=True`` (Mondrian conformal) computes one threshold per class from
that class's calibration scans, so coverage holds for each class, minority ones too.

A set is never empty: the most probable class is always added (a set that only grows
can only raise coverage). Written here rather than wrapped from MAPIE (DESIGN §5)
because MAPIE needs a fitted scikit-learn estimator, has no Mondrian sets, and always
randomises APS calibration scores; ``tests/test_conformal.py`` checks the sets against
MAPIE's.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator

from medres.errors import ConfigError

CONFORMITY_SCORES = ("lac", "aps")
_ALL = 1.0  # a threshold of 1.0 (the largest score) puts every class in the set
_EPS = 1e-8  # MAPIE's tolerance: round-off never drops a class sitting on the threshold
_SUM_TOL = 1e-4


def _check_probs(probs) -> np.ndarray:
    try:
        p = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"probs must be a numeric (N, K) array: {e}") from e
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ConfigError(
            f"probs must be a non-empty (N, K) array with K >= 2 classes; got shape {p.shape}."
        )
    bad = ~np.isfinite(p).all(axis=1)
    if bad.any():
        raise ConfigError(
            f"probs has NaN or infinite values in {bad.sum()} rows (first: row "
            f"{np.flatnonzero(bad)[0]}); drop or fix those scans first."
        )
    sums = p.sum(axis=1)
    bad = (np.abs(sums - 1.0) > _SUM_TOL) | (p < 0).any(axis=1)
    if bad.any():
        i = np.flatnonzero(bad)[0]
        raise ConfigError(
            f"probs rows must be non-negative and sum to 1 (tolerance {_SUM_TOL}); "
            f"{bad.sum()} rows are not (row {i} sums to {sums[i]:.6g}). Pass calibrated "
            "probabilities (the softmax of the logits), not logits or scores."
        )
    return p


def _check_targets(targets, n: int, k: int) -> np.ndarray:
    t = np.asarray(targets)
    if t.shape != (n,):
        raise ConfigError(f"targets must have shape ({n},) like probs' rows; got {t.shape}.")
    integral = np.issubdtype(t.dtype, np.integer) or (
        np.issubdtype(t.dtype, np.floating) and bool(np.all(t == np.round(t)))
    )
    if not integral or ((t < 0) | (t >= k)).any():
        raise ConfigError(
            f"targets must be class indices 0..{k - 1} (the columns of probs); found "
            f"{np.unique(t)[:10].tolist()}. Encode labels as integers first."
        )
    return t.astype(np.int64)


def _mass_at_or_above(p: np.ndarray) -> np.ndarray:
    """(N, K) -> (N, K): total probability of the classes ranked at or above each class."""
    order = np.argsort(-p, axis=1, kind="stable")  # descending; ties by class index
    out = np.empty_like(p)
    np.put_along_axis(out, order, np.cumsum(np.take_along_axis(p, order, axis=1), 1), 1)
    return out


def _class_scores(p: np.ndarray, score: str) -> np.ndarray:
    """(N, K) -> (N, K): the score each class would have if it were the true one."""
    return 1.0 - p if score == "lac" else _mass_at_or_above(p)


def _rank(n: int, coverage: float) -> int:
    # the guard keeps float noise from adding a rank: 100 * 0.55 is 55.00000000000001
    return math.ceil((n + 1) * coverage - 1e-9)


def _quantile(scores: np.ndarray, coverage: float) -> float:
    r = _rank(len(scores), coverage)
    return _ALL if r > len(scores) else float(np.sort(scores)[r - 1])


def _min_scans(coverage: float) -> int:
    n = 1
    while _rank(n, coverage) > n:
        n += 1
    return n


class ConformalClassifier(BaseEstimator):
    """Split conformal prediction sets over K classes (see the module docstring).

    Args:
        coverage: target probability, in (0, 1), that a set holds the true class.
        score: ``"lac"`` or ``"aps"``.
        class_conditional: one threshold per true class (Mondrian conformal).

    Fitted: ``quantile_`` (float), or ``quantiles_`` (K,) when class-conditional;
    ``conformity_scores_`` (N,); ``n_calibration_``; ``n_classes_``; ``warnings_``
    (list of str: thresholds that fell back to 1.0 for lack of calibration scans).
    """

    def __init__(self, coverage: float = 0.9, score: str = "lac", class_conditional: bool = False):
        self.coverage = coverage
        self.score = score
        self.class_conditional = class_conditional

    def _check_params(self) -> None:
        c = self.coverage
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not 0 < c < 1:
            raise ConfigError(f"coverage must be a number in (0, 1), e.g. 0.9; got {c!r}.")
        if self.score not in CONFORMITY_SCORES:
            raise ConfigError(f"score must be one of {CONFORMITY_SCORES}; got {self.score!r}.")

    def fit(self, probs, targets) -> ConformalClassifier:
        """Calibrate on probs (N, K), rows summing to 1, and targets (N,) in 0..K-1."""
        self._check_params()
        p = _check_probs(probs)
        t = _check_targets(targets, *p.shape)
        s = np.take_along_axis(_class_scores(p, self.score), t[:, None], axis=1)[:, 0]
        self.n_calibration_, self.n_classes_ = p.shape
        self.conformity_scores_ = s
        self.warnings_: list[str] = []
        self.__dict__.pop("quantile_", None)
        self.__dict__.pop("quantiles_", None)
        groups = range(self.n_classes_) if self.class_conditional else [None]
        qs = []
        for c in groups:
            sc = s if c is None else s[t == c]
            qs.append(_quantile(sc, self.coverage))
            if _rank(len(sc), self.coverage) > len(sc):
                who = "the calibration set" if c is None else f"class {c}"
                every = "every set holds every class" if c is None else f"class {c} is in every set"
                msg = (
                    f"{who} has {len(sc)} calibration scans but coverage {self.coverage} needs "
                    f"at least {_min_scans(self.coverage)}: {every}. Add calibration scans "
                    "or lower the coverage."
                )
                self.warnings_.append(msg)
                warnings.warn(msg, UserWarning, stacklevel=2)
        if self.class_conditional:
            self.quantiles_ = np.asarray(qs)
        else:
            self.quantile_ = qs[0]
        return self

    def _thresholds(self) -> np.ndarray:
        if not hasattr(self, "n_classes_"):
            raise ConfigError(
                "this ConformalClassifier is not fitted: call fit(probs, targets) on a "
                "calibration split, or load one with ConformalClassifier.from_dict()."
            )
        if self.class_conditional:
            return self.quantiles_
        return np.full(self.n_classes_, self.quantile_)

    def predict_sets(self, probs) -> np.ndarray:
        """probs (M, K) -> bool (M, K): True where class k is in scan m's set."""
        q = self._thresholds()
        p = _check_probs(probs)
        if p.shape[1] != self.n_classes_:
            raise ConfigError(
                f"probs has {p.shape[1]} classes but this conformal predictor was fitted on "
                f"{self.n_classes_}; use the one calibrated for this model."
            )
        sets = (_class_scores(p, self.score) - q <= _EPS) | (q >= _ALL)
        sets[np.arange(len(p)), p.argmax(axis=1)] = True
        return sets

    def to_dict(self) -> dict:
        """A JSON-able description of the fitted predictor (see :meth:`from_dict`)."""
        q = self._thresholds()
        return {
            "coverage": float(self.coverage),
            "score": self.score,
            "class_conditional": bool(self.class_conditional),
            "n_calibration": int(self.n_calibration_),
            "n_classes": int(self.n_classes_),
            "quantile": None if self.class_conditional else float(q[0]),
            "quantiles": [float(v) for v in q] if self.class_conditional else None,
            "warnings": list(self.warnings_),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ConformalClassifier:
        """Rebuild a fitted predictor from :meth:`to_dict` output."""
        try:
            obj = cls(d["coverage"], d["score"], bool(d["class_conditional"]))
            obj._check_params()
            obj.n_calibration_, obj.n_classes_ = int(d["n_calibration"]), int(d["n_classes"])
            if obj.class_conditional:
                obj.quantiles_ = np.asarray(d["quantiles"], dtype=np.float64)
                ok = obj.quantiles_.shape == (obj.n_classes_,)
            else:
                obj.quantile_ = float(d["quantile"])
                ok = True
            obj.warnings_ = list(d.get("warnings", []))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(
                f"not a ConformalClassifier.to_dict() result ({type(e).__name__}: {e})."
            ) from e
        if not ok or not np.isfinite(obj._thresholds()).all():
            raise ConfigError("conformal quantiles must be finite, one per class (n_classes).")
        return obj


def set_report(sets, targets, class_names: list[str] | None = None) -> dict:
    """Coverage and size of prediction sets (N, K) bool against targets (N,).

    Returns ``coverage``, ``mean_set_size``, ``singleton_rate`` and ``per_class``: a list of
    ``{class, n, coverage, mean_set_size}`` by true class (None where n is 0).
    """
    s = np.asarray(sets)
    if s.ndim != 2 or s.dtype != bool or len(s) == 0:
        raise ConfigError(f"sets must be a non-empty (N, K) bool array; got {s.dtype} {s.shape}.")
    t = _check_targets(targets, *s.shape)
    names = list(range(s.shape[1])) if class_names is None else list(class_names)
    if len(names) != s.shape[1]:
        raise ConfigError(f"class_names has {len(names)} names for {s.shape[1]} classes.")
    covered, size = s[np.arange(len(t)), t], s.sum(axis=1)
    per_class = []
    for k, name in enumerate(names):
        m = t == k
        n = int(m.sum())
        cov, mss = (float(covered[m].mean()), float(size[m].mean())) if n else (None, None)
        per_class.append({"class": name, "n": n, "coverage": cov, "mean_set_size": mss})
    return {
        "coverage": float(covered.mean()),
        "mean_set_size": float(size.mean()),
        "singleton_rate": float((size == 1).mean()),
        "per_class": per_class,
    }
