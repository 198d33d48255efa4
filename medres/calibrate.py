"""Calibrators fitted on validation logits, and calibration metrics (DESIGN §2).

Calibrators follow scikit-learn: ``fit(logits, targets)`` returns ``self``, fitted state ends
in ``_``, ``predict_proba(logits)`` gives (M, K) rows summing to 1; ``to_dict()`` and
:func:`calibrator_from_dict` store them as JSON. Fit on the validation split, never on test.
Temperature scaling (one T > 0 for all logits) never changes a scan's predicted class or the
order of classes within a scan, and for K = 2 keeps the order of scans (AUROC); for K >= 3 a
column's order across scans can move slightly. Platt and isotonic are binary only.

Example::

    cal = make_calibrator("temperature").fit(val_logits, val_targets)
    p = cal.predict_proba(test_logits)
    calibration_metrics(p, y_test)  # ece, adaptive_ece, mce, brier, nll, slope, intercept
    reliability_diagram({"uncalibrated": softmax(test_logits), "temperature": p}, y_test, "r.png")
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, logit
from scipy.special import softmax as scipy_softmax

from medres.errors import ConfigError
from medres.files import atomic_write

METHODS = ("temperature", "platt", "isotonic", "none")
_LOG_T_BOUNDS = (-4.0, 4.0)  # T in [0.018, 54.6]
_WEAK_C = 1e4  # inverse L2 strength: negligible against N log-losses, finite if separable
_EPS = 1e-12
_ROW_SUM_TOL = 1e-3


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """(N, K) logits -> (N, K) float64 ``softmax(logits / temperature)``; stable for any finite
    logits (the row maximum is subtracted before ``exp``)."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0; got {temperature!r}")
    return scipy_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)


class Calibrator:
    """Base of the calibrators: input checks, ``predict_proba`` and ``to_dict``."""

    method: ClassVar[str]
    binary_only: ClassVar[bool] = False
    _params: ClassVar[tuple[str, ...]] = ()  # fitted attributes stored by to_dict
    _param_ndim: ClassVar[int] = 0

    def fit(self, logits, targets) -> Calibrator:
        """Fit on (N, K) finite logits and (N,) integer targets in [0, K); return ``self``."""
        z = _as_array(logits)
        y = _as_targets(targets, len(z), z.shape[1])
        if self.binary_only and (z.shape[1] != 2 or y.min() == y.max()):
            raise ConfigError(
                f"{self.method!r} calibration is binary only: it needs K = 2 logit columns (got "
                f"{z.shape[1]}) and both classes in targets; use 'temperature' for K > 2"
            )
        self.n_classes_ = z.shape[1]
        self._fit(z, y)
        return self

    def predict_proba(self, logits) -> np.ndarray:
        """(M, K) logits -> (M, K) float64 calibrated probabilities, rows summing to 1."""
        z = _as_array(logits, min_rows=0)
        if z.shape[1] != self._check_fitted():
            raise ConfigError(f"fitted on {self.n_classes_} logit columns; got {z.shape}")
        return self._proba(z)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fitted state: ``method``, ``n_classes`` and the fitted parameters."""
        self._check_fitted()
        out: dict[str, Any] = {"method": self.method, "n_classes": int(self.n_classes_)}
        for name in self._params:
            v = getattr(self, name)
            out[name.rstrip("_")] = v.tolist() if isinstance(v, np.ndarray) else float(v)
        return out

    def _check_fitted(self) -> int:
        if not hasattr(self, "n_classes_"):
            raise ConfigError(f"{type(self).__name__} is not fitted: call fit(logits, targets)")
        return self.n_classes_


class TemperatureScaler(Calibrator):
    """``softmax(logits / T)``, one T > 0 minimising the NLL (Guo et al. 2017).
    Fitted: ``temperature_`` (T > 1 softens an over-confident model), ``n_classes_``."""

    method = "temperature"
    _params = ("temperature_",)

    def _fit(self, z, y):
        rows = np.arange(len(y))

        def nll(log_t: float) -> float:
            return float(-log_softmax(z / math.exp(log_t), axis=1)[rows, y].mean())

        # NLL is convex in 1/T, hence unimodal in log T: bounded Brent finds the optimum, no
        # gradient code, and keeps T in [e^-4, e^4].
        res = minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-7})
        self.temperature_ = float(math.exp(res.x))

    def _proba(self, z):
        return softmax(z, self.temperature_)


class PlattScaler(Calibrator):
    """Binary: ``p1 = sigmoid(a_ * (logit1 - logit0) + b_)``, logistic regression with C = 1e4.
    A negative slope (it would reverse the ranking; usually swapped labels) is clamped to 0
    with a warning. Fitted: ``a_``, ``b_``, ``n_classes_`` (2)."""

    method = "platt"
    binary_only = True
    _params = ("a_", "b_")

    def _fit(self, z, y):
        a, b = _logistic_fit(z[:, 1] - z[:, 0], y)
        if a < 0:
            msg = f"Platt slope {a:.3g} < 0: scores anti-correlate with targets (labels swapped?)"
            warnings.warn(msg + "; using a constant probability", UserWarning, stacklevel=3)
            a, b = 0.0, float(logit(y.mean()))  # the NLL optimum over slopes >= 0 (convexity)
        self.a_, self.b_ = a, b

    def _proba(self, z):
        p1 = expit(self.a_ * (z[:, 1] - z[:, 0]) + self.b_)
        return np.column_stack([1 - p1, p1])


class IsotonicCalibrator(Calibrator):
    """Binary: a non-decreasing step-linear map of softmax p1 (sklearn IsotonicRegression,
    values outside the fitted range clipped). Fitted: ``X_thresholds_``, ``y_thresholds_``
    ((T,) arrays, applied with ``np.interp``), ``n_classes_`` (2)."""

    method = "isotonic"
    binary_only = True
    _params = ("X_thresholds_", "y_thresholds_")
    _param_ndim = 1

    def _fit(self, z, y):
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(softmax(z)[:, 1], y)
        self.X_thresholds_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.y_thresholds_ = np.asarray(iso.y_thresholds_, dtype=np.float64)

    def _proba(self, z):
        p1 = np.interp(softmax(z)[:, 1], self.X_thresholds_, self.y_thresholds_)
        return np.column_stack([1 - p1, p1])


class IdentityCalibrator(Calibrator):
    """Method ``"none"``: plain softmax (fit only checks the inputs and records K)."""

    method = "none"

    def _fit(self, z, y):  # nothing to learn
        pass

    def _proba(self, z):
        return softmax(z)


_CALIBRATORS = {
    c.method: c for c in (TemperatureScaler, PlattScaler, IsotonicCalibrator, IdentityCalibrator)
}


def make_calibrator(method: str) -> Calibrator:
    """An unfitted calibrator: ``temperature`` | ``platt`` | ``isotonic`` | ``none``."""
    if not isinstance(method, str) or method not in _CALIBRATORS:
        raise ConfigError(f"unknown calibration method {method!r}; choose one of {METHODS}")
    return _CALIBRATORS[method]()


def calibrator_from_dict(d: dict) -> Calibrator:
    """Rebuild a fitted calibrator from :meth:`to_dict` output (identical probabilities)."""
    cal = make_calibrator(d.get("method") if isinstance(d, dict) else None)
    try:
        k = int(d["n_classes"])
        values = [np.asarray(d[name.rstrip("_")], dtype=np.float64) for name in cal._params]
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"malformed calibration dict ({e!r}): pass to_dict() output") from e
    shapes = {v.shape for v in values}  # one shared shape: () or, isotonic, (T,) with T >= 1
    ok = len(shapes) <= 1 and all(v.ndim == cal._param_ndim and v.size for v in values)
    ok = ok and all(np.isfinite(v).all() for v in values) and k >= 2
    if not ok or (cal.binary_only and k != 2) or (cal.method == "temperature" and values[0] <= 0):
        raise ConfigError(f"calibration dict has invalid values: {d}; refit the calibrator")
    for name, v in zip(cal._params, values, strict=True):
        setattr(cal, name, v if v.ndim else float(v))
    cal.n_classes_ = k
    return cal


# ---------------------------------------------------------------- metrics


def expected_calibration_error(
    probs, targets, bins: int = 15, adaptive: bool = False, weights=None
) -> float:
    """Top-label ECE (Guo et al. 2017) of (N, K) probs and (N,) targets, in [0, 1]: the
    bin-size-weighted mean |accuracy - mean confidence|, confidence = max probability, correct =
    argmax == target. Bins: equal-width, right-closed over [0, 1]; ``adaptive``: equal-mass.
    ``weights`` (N,): scan weights (bootstrap counts), default 1."""
    count, acc, conf = _bin_stats(*_top_label(probs, targets), bins, adaptive, weights)
    return float(min(1.0, np.dot(count, np.abs(acc - conf)) / count.sum()))


def max_calibration_error(probs, targets, bins: int = 15) -> float:
    """Largest |accuracy - mean confidence| over the non-empty equal-width bins, in [0, 1]."""
    count, acc, conf = _bin_stats(*_top_label(probs, targets), bins)
    return float(np.abs(acc - conf)[count > 0].max())


def brier_score(probs, targets) -> float:
    """Multi-class Brier: mean over scans of sum_k (p_k - onehot_k)^2, in [0, 2]. For K = 2
    it is twice scikit-learn's binary ``brier_score_loss`` (both columns count)."""
    p, y = _probs_targets(probs, targets)
    return float(((p - np.eye(p.shape[1])[y]) ** 2).sum(axis=1).mean())


def negative_log_likelihood(probs, targets) -> float:
    """Mean -log p(target), probabilities clipped at 1e-12."""
    p, y = _probs_targets(probs, targets)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0)).mean())


def calibration_slope_intercept(probs, targets) -> tuple[float, float]:
    """(slope, intercept) of a logistic regression (C = 1e4, practically unpenalised) of the
    outcome on logit(score): binary, target on p1; multi-class, argmax == target on max prob.
    Perfect calibration gives about (1, 0), over-confidence a slope < 1; NaN if constant."""
    p, y = _probs_targets(probs, targets)
    score, hit = (p[:, 1], y) if p.shape[1] == 2 else (p.max(axis=1), p.argmax(axis=1) == y)
    x = logit(np.clip(score, _EPS, 1 - _EPS))
    if hit.min() == hit.max() or np.ptp(x) == 0:
        return math.nan, math.nan
    return _logistic_fit(x, hit.astype(int))


def calibration_metrics(probs, targets, bins: int = 15) -> dict[str, float]:
    """ece, adaptive_ece, mce, brier, nll, slope, intercept of (N, K) probs and (N,) targets."""
    slope, intercept = calibration_slope_intercept(probs, targets)
    return {
        "ece": expected_calibration_error(probs, targets, bins),
        "adaptive_ece": expected_calibration_error(probs, targets, bins, adaptive=True),
        "mce": max_calibration_error(probs, targets, bins),
        "brier": brier_score(probs, targets),
        "nll": negative_log_likelihood(probs, targets),
        "slope": slope,
        "intercept": intercept,
    }


def reliability_diagram(
    curves: dict[str, np.ndarray], targets, path, bins: int = 15, title: str | None = None
) -> Path:
    """One PNG with a column per labelled (N, K) probs array: accuracy against confidence per
    equal-width bin with the diagonal and the ECE (top), the count per bin (bottom)."""
    if not curves:
        raise ConfigError("curves is empty: pass {label: probs (N, K)}, e.g. {'uncalibrated': p}")
    stats = {str(k): _bin_stats(*_top_label(p, targets), bins) for k, p in curves.items()}
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg, no pyplot state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * len(stats), 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(stats), squeeze=False, sharex=True, height_ratios=[3, 1])
    centers = (np.arange(bins) + 0.5) / bins
    for (label, (count, acc, conf)), top, bottom in zip(stats.items(), *axes, strict=True):
        ece = np.dot(count, np.abs(acc - conf)) / count.sum()
        top.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
        top.bar(centers[count > 0], acc[count > 0], width=1 / bins, edgecolor="k", alpha=0.7)
        top.plot(
            conf[count > 0], acc[count > 0], "o", color="C1", label=f"bin accuracy · ECE {ece:.3f}"
        )
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=label)
        top.legend(loc="upper left", fontsize="small")
        bottom.bar(centers, count, width=1 / bins, edgecolor="k", color="grey")
        bottom.set(xlabel="confidence (max probability)", ylabel="count")
    if title:
        fig.suptitle(title)
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110))


# ---------------------------------------------------------------- helpers


def _logistic_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=_WEAK_C, max_iter=1000).fit(x[:, None], y)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def _as_array(values, what: str = "logits", min_rows: int = 1) -> np.ndarray:
    """A finite float64 (N, K) array with N >= min_rows and K >= 2, or ConfigError."""
    try:
        z = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what} must be a numeric (N, K) array: {e}") from e
    if z.ndim != 2 or z.shape[1] < 2 or len(z) < min_rows:
        raise ConfigError(f"{what} must have shape (N, K), N >= {min_rows}, K >= 2; got {z.shape}")
    if not np.isfinite(z).all():
        bad = int((~np.isfinite(z)).any(axis=1).sum())
        raise ConfigError(f"{what} have NaN or inf in {bad} rows: drop or fix those scans first")
    return z


def _as_targets(targets, n: int, k: int) -> np.ndarray:
    y = np.asarray(targets)
    if y.shape != (n,) or y.dtype.kind not in "biuf":
        got = f"{y.shape} {y.dtype}"
        raise ConfigError(f"targets must be ({n},) integer class indices, one per row; got {got}")
    bad = ~np.isfinite(y) | (y != np.round(y)) | (y < 0) | (y >= k)
    if bad.any():
        found = np.unique(y[bad])[:5]
        raise ConfigError(f"targets must be class indices in [0, {k}); found {found}: map them")
    return y.astype(np.int64)


def _probs_targets(probs, targets) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) probabilities (checked, clipped to [0, 1]) and (N,) class indices."""
    p = _as_array(probs, "probs")
    sums = p.sum(axis=1)
    if (np.abs(sums - 1) > _ROW_SUM_TOL).any() or (p < -_ROW_SUM_TOL).any():
        raise ConfigError(
            f"probs rows must be probabilities summing to 1 (±{_ROW_SUM_TOL}); got sums in "
            f"[{sums.min():.4g}, {sums.max():.4g}]: apply softmax or predict_proba first"
        )
    return np.clip(p, 0.0, 1.0), _as_targets(targets, len(p), p.shape[1])


def _top_label(probs, targets) -> tuple[np.ndarray, np.ndarray]:
    """(N,) confidence (max probability) and (N,) 1.0 where argmax == target."""
    p, y = _probs_targets(probs, targets)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def _bin_stats(conf, correct, bins, adaptive=False, weights=None) -> tuple[np.ndarray, ...]:
    """(B,) (weighted) count, accuracy and mean confidence per bin (0 in empty bins)."""
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ConfigError(f"bins must be a whole number >= 1; got {bins!r}")
    if adaptive:  # equal mass: the r-th smallest confidence goes to bin r * B // N
        idx = np.empty(len(conf), dtype=np.int64)
        idx[np.argsort(conf, kind="stable")] = np.arange(len(conf)) * bins // len(conf)
    else:  # right-closed equal-width bins (i/B, (i+1)/B], bin 0 also holds 0
        idx = np.searchsorted(np.linspace(0, 1, bins + 1)[1:-1], conf, side="left")
    w = np.ones(len(conf)) if weights is None else np.asarray(weights, dtype=np.float64)
    count = np.bincount(idx, w, minlength=bins)
    safe = np.where(count > 0, count, 1)
    return (
        count,
        np.bincount(idx, correct * w, bins) / safe,
        np.bincount(idx, conf * w, bins) / safe,
    )
