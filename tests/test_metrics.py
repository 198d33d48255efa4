"""medres.evaluate.metrics against scikit-learn (and scipy / numpy where sklearn has no such
metric), the oracle: on many random samples, with ties, one class, tiny sizes,

- every weight 1 (the point estimate) equals sklearn on the sample,
- integer weights equal sklearn on the sample with each row repeated that often, and
  sklearn's ``sample_weight`` where it takes one,
- weights for R replicates at once, (R, N), equal R separate calls.

Equal means within 1e-12; NaN (undefined) must be NaN on both sides.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from medres.evaluate import metrics as m

N_SAMPLES = 150
NAN = float("nan")


def close(ours, oracle) -> None:
    np.testing.assert_allclose(ours, oracle, rtol=1e-12, atol=1e-12, equal_nan=True)


def sklearn(fn: Callable, *args, **kwargs) -> float:
    with warnings.catch_warnings():  # undefined cases are asserted on, not warned about
        warnings.simplefilter("ignore")
        return float(fn(*args, **kwargs))


# ---------------------------------------------------------------- random samples


def labels(rng, n: int, k: int) -> np.ndarray:
    """Labels in [0, k), sometimes one class only, sometimes a class missing."""
    p = rng.dirichlet(np.full(k, 0.5))
    return rng.choice(k, size=n, p=p)


def scores(rng, n: int) -> np.ndarray:
    """Scores in [0, 1] with many ties (rounded) or none."""
    s = rng.random(n)
    return np.round(s, int(rng.integers(1, 3))) if rng.random() < 0.7 else s


def counts(rng, n: int) -> np.ndarray:
    """Integer weights 0..3 with at least one row drawn (a bootstrap replicate)."""
    c = rng.integers(0, 4, n)
    c[rng.integers(n)] += 1
    return c


def samples(seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(N_SAMPLES):
        n = int(rng.integers(1, 40))
        yield rng, n


@dataclass
class Case:
    """A metric of ours, its oracle (sklearn on (truth, prediction[, sample_weight]))
    and how to draw (truth, prediction) of n rows."""

    ours: Callable
    oracle: Callable
    draw: Callable
    sample_weight: bool = True  # the oracle takes sklearn's sample_weight


def binary_scores(rng, n):
    return labels(rng, n, 2), scores(rng, n)


def binary_decisions(rng, n):
    y = labels(rng, n, 2)
    return y, np.where(rng.random(n) < 0.7, y, 1 - y)


def class_decisions(rng, n):
    k = int(rng.integers(2, 6))
    y = labels(rng, n, k)
    return y, np.where(rng.random(n) < 0.5, y, rng.integers(0, k, n))


def values(rng, n):
    y = np.round(rng.normal(size=n), int(rng.integers(0, 3)))
    if rng.random() < 0.1:
        y[:] = y[0]  # constant truth
    return y, np.round(y + rng.normal(size=n), 1)


def both_classes(y) -> bool:
    return 0 < np.sum(y) < len(y)


def nan_unless(defined: bool, fn, *args, **kwargs) -> float:
    return sklearn(fn, *args, **kwargs) if defined else NAN


def _r2(y, p, sample_weight=None):  # undefined (NaN, not sklearn's 0 or 1) for constant truth
    drawn = y if sample_weight is None else y[sample_weight > 0]
    return nan_unless(np.ptp(drawn) > 0, skm.r2_score, y, p, sample_weight=sample_weight)


def _corr(fn):
    def oracle(a, b):
        return NAN if np.ptp(a) == 0 or np.ptp(b) == 0 else fn(a, b)[0]

    return oracle


def _residual_sd(y, p, sample_weight=None):
    err = p - y
    return np.sqrt(
        np.average((err - np.average(err, weights=sample_weight)) ** 2, weights=sample_weight)
    )


def _bin_oracle(y, p, sample_weight=None):  # sklearn's accuracy of the binned values
    edges = np.linspace(-1, 1, 6)[1:-1]
    return skm.accuracy_score(
        np.digitize(y, edges), np.digitize(p, edges), sample_weight=sample_weight
    )


CASES = {
    "roc_auc": Case(
        m.roc_auc,
        lambda y, s, **kw: nan_unless(both_classes(y), skm.roc_auc_score, y, s, **kw),
        binary_scores,
    ),
    "average_precision": Case(
        m.average_precision,
        lambda y, s, **kw: nan_unless(np.any(y), skm.average_precision_score, y, s, **kw),
        binary_scores,
    ),
    "accuracy": Case(m.accuracy, skm.accuracy_score, class_decisions),
    "balanced_accuracy": Case(m.balanced_accuracy, skm.balanced_accuracy_score, class_decisions),
    "sensitivity": Case(
        lambda y, p, w=None: m.recall(y, p, w, 1),
        lambda y, p, **kw: skm.recall_score(y, p, pos_label=1, zero_division=NAN, **kw),
        binary_decisions,
    ),
    "specificity": Case(
        lambda y, p, w=None: m.recall(y, p, w, 0),
        lambda y, p, **kw: skm.recall_score(y, p, pos_label=0, zero_division=NAN, **kw),
        binary_decisions,
    ),
    "ppv": Case(
        lambda y, p, w=None: m.precision(y, p, w, 1),
        lambda y, p, **kw: skm.precision_score(y, p, pos_label=1, zero_division=NAN, **kw),
        binary_decisions,
    ),
    "npv": Case(
        lambda y, p, w=None: m.precision(y, p, w, 0),
        lambda y, p, **kw: skm.precision_score(y, p, pos_label=0, zero_division=NAN, **kw),
        binary_decisions,
    ),
    "f1": Case(
        m.f1, lambda y, p, **kw: skm.f1_score(y, p, zero_division=NAN, **kw), binary_decisions
    ),
    "macro_f1": Case(
        m.macro_f1,
        lambda y, p, **kw: skm.f1_score(y, p, average="macro", zero_division=NAN, **kw),
        class_decisions,
    ),
    "kappa": Case(m.cohen_kappa, skm.cohen_kappa_score, class_decisions),
    "kappa_quadratic": Case(  # grades are the labels' values, as evaluate passes labels=range(K)
        lambda y, p, w=None: m.cohen_kappa(y, p, w, quadratic=True),
        lambda y, p, **kw: skm.cohen_kappa_score(y, p, labels=range(6), weights="quadratic", **kw),
        class_decisions,
    ),
    "brier": Case(
        m.brier, lambda y, s, **kw: skm.brier_score_loss(y, s, pos_label=1, **kw), binary_scores
    ),
    "mae": Case(m.mean_absolute_error, skm.mean_absolute_error, values),
    "rmse": Case(m.root_mean_squared_error, skm.root_mean_squared_error, values),
    "r2": Case(m.r2, _r2, values),
    "pearson": Case(m.pearson, _corr(stats.pearsonr), values, sample_weight=False),
    "spearman": Case(m.spearman, _corr(stats.spearmanr), values, sample_weight=False),
    "residual_mean": Case(
        m.residual_mean,
        lambda y, p, sample_weight=None: np.average(p - y, weights=sample_weight),
        values,
    ),
    "residual_sd": Case(m.residual_sd, _residual_sd, values),
    "bin_accuracy_5": Case(
        lambda y, p, w=None: m.bin_accuracy(y, p, (-1, 1), 5, w), _bin_oracle, values
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_weight_one_equals_the_oracle(name):
    case = CASES[name]
    for rng, n in samples(seed=1):
        y, p = case.draw(rng, n)
        close(case.ours(y, p), sklearn(case.oracle, y, p))


@pytest.mark.parametrize("name", CASES)
def test_integer_weights_equal_the_oracle_on_repeated_rows(name):
    case = CASES[name]
    for rng, n in samples(seed=2):
        y, p = case.draw(rng, n)
        w = counts(rng, n)
        ours = case.ours(y, p, w)
        close(ours, sklearn(case.oracle, np.repeat(y, w), np.repeat(p, w)))
        if case.sample_weight:
            close(ours, sklearn(case.oracle, y, p, sample_weight=w))


@pytest.mark.parametrize("name", CASES)
def test_replicates_at_once_equal_one_at_a_time(name):
    case = CASES[name]
    for rng, n in samples(seed=3):
        y, p = case.draw(rng, n)
        w = np.stack([counts(rng, n) for _ in range(5)])
        close(case.ours(y, p, w), [case.ours(y, p, row) for row in w])


# ---------------------------------------------------------------- multi-class scores


def class_scores(rng, n, k):
    y = np.concatenate([np.arange(k), labels(rng, n, k)])  # every class present
    z = np.round(rng.normal(size=(len(y), k)) + np.eye(k)[y], 1)
    return y, np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def test_one_vs_rest_equals_sklearn():
    for rng, n in samples(seed=4):
        k = int(rng.integers(2, 6))
        y, probs = class_scores(rng, n, k)
        hot = np.eye(k)[y]
        w = counts(rng, len(y))
        if k > 2:
            auc = skm.roc_auc_score(y, probs, multi_class="ovr", labels=range(k))
            ap = skm.average_precision_score(hot, probs, average="macro")
        else:  # sklearn scores a binary y by column 1 only; ours averages both columns
            auc = np.mean([skm.roc_auc_score(y == c, probs[:, c]) for c in (0, 1)])
            ap = np.mean([skm.average_precision_score(y == c, probs[:, c]) for c in (0, 1)])
        close(m.ovr_roc_auc(y, probs), auc)
        close(m.ovr_average_precision(y, probs), ap)
        if k > 2:  # sklearn's weighted one-vs-rest: macro over the classes drawn
            ry, rp = np.repeat(y, w), np.repeat(probs, w, axis=0)
            drawn = [c for c in range(k) if 0 < (ry == c).sum() < len(ry)]
            per_class = [skm.roc_auc_score(ry == c, rp[:, c]) for c in drawn]
            close(m.ovr_roc_auc(y, probs, w), np.mean(per_class) if drawn else NAN)


def test_confusion_equals_sklearn():
    for rng, n in samples(seed=5):
        y, pred = class_decisions(rng, n)
        w = counts(rng, n)
        k = 6
        close(m.confusion(y, pred, k=k), skm.confusion_matrix(y, pred, labels=range(k)))
        close(
            m.confusion(y, pred, w, k=k),
            skm.confusion_matrix(y, pred, labels=range(k), sample_weight=w),
        )


# ---------------------------------------------------------------- the metrics of a task


@pytest.mark.parametrize("task", ["binary", "multiclass", "ordinal", "regression"])
def test_task_metrics_of_replicates_equal_the_point_estimate_of_each_resample(task):
    """What the bootstrap computes: (R, N) draw counts give, for each replicate, the point
    estimate of the resampled scans."""
    rng = np.random.default_rng(7)
    n = 80
    if task == "binary":
        y, s = rng.integers(0, 2, n), np.round(rng.random(n), 1)
        opts = {"threshold": 0.45}
    elif task == "regression":
        y = np.round(rng.normal(size=n), 1)
        s = np.round(y + rng.normal(size=n), 1)
        opts = {"value_range": (-1.0, 1.5), "flag_below": 0.0}
    else:
        y, s = class_scores(rng, n - 4, 4)
        opts = {"referable_from": 2 if task == "ordinal" else None}
    w = np.stack([np.bincount(rng.integers(0, n, size), minlength=n) for size in [n] * 8 + [3] * 4])
    batched = m.task_metrics(task, y, s, w, **opts)
    for r, row in enumerate(w):
        idx = np.repeat(np.arange(n), row)
        point = m.task_metrics(task, y[idx], s[idx], **opts)
        assert list(point) == list(batched)
        for name, value in point.items():
            close(batched[name][r], value)


def test_undefined_metrics_are_nan_without_warnings():
    y = np.zeros(6, dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = m.binary_metrics(y, np.linspace(0.1, 0.9, 6))
        flat = m.regression_metrics(np.ones(4), np.arange(4.0))
    assert np.isnan(got["auroc"]) and np.isnan(got["auprc"]) and np.isnan(got["sensitivity"])
    assert got["specificity"] == pytest.approx(3 / 6)
    assert np.isnan(flat["r2"]) and np.isnan(flat["pearson"]) and np.isnan(flat["spearman"])
    assert flat["mae"] == pytest.approx(1.0)
