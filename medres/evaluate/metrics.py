"""Every metric, defined once on frequency weights (DESIGN §2: one definition each).

Each function takes the truth, the prediction (or score) and optional weights ``w``: how
often each scan counts. Without weights (all 1) it is the point estimate, equal to
scikit-learn's (the tests use sklearn as the oracle, and the same function on integer
weights equals sklearn on the sample with rows repeated). The patient bootstrap passes the
draw counts of many replicates at once, ``w`` of shape (R, N), and gets (R,) values back:
one pass of numpy per metric instead of one sklearn call per metric and replicate (~20 ms
each on 5000 scans, ~20 s for 1000 replicates). We write the formulas rather than call
sklearn because sklearn takes one sample per call. The name closing a docstring is the
function it equals, its test oracle (tests/test_metrics.py).

A metric that is undefined for a sample (AUROC with one class, a recall without positives)
is NaN, never a warning.

Example::

    from medres.evaluate.metrics import roc_auc

    roc_auc(y, p)                    # scikit-learn's roc_auc_score(y, p)
    roc_auc(y, p, counts)            # roc_auc_score(np.repeat(y, counts), np.repeat(p, counts))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medres.tasks import Task, task_named

BIN_COUNTS = (3, 5, 10)  # regression: equal-width bins for the binned accuracies
_NAN = float("nan")


@dataclass
class MetricCI:
    """A metric's point estimate and its 95 % bootstrap interval (NaN where undefined)."""

    value: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


# ---------------------------------------------------------------- weights


def _weights(w, n: int) -> np.ndarray:
    """(N,) ones for ``None``, else the weights as floats: (N,) or (R, N) for R replicates,
    C-ordered (numpy's sums over a row depend on the memory layout)."""
    return np.ones(n) if w is None else np.ascontiguousarray(w, dtype=float)


def _sum(w: np.ndarray, x=None):
    """Weighted sum of ``x`` (N,) or (R, N) over scans (the last axis): a number, or (R,)."""
    if x is None:
        return w.sum(axis=-1)
    return (w * np.asarray(x, dtype=float)).sum(axis=-1)  # not BLAS: its sums vary with layout


def _ratio(a, b):
    """a / b, NaN where b is 0 (an undefined metric), without a warning."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out = np.full(np.broadcast(a, b).shape, _NAN)
    np.divide(a, b, out=out, where=b > 0)
    return out[()]


def _mean(w, x):
    return _ratio(_sum(w, x), _sum(w))


def _nanmean(values: np.ndarray):
    """Mean over the last axis ignoring NaN; NaN where every value is NaN."""
    ok = ~np.isnan(values)
    return _ratio(np.where(ok, values, 0).sum(axis=-1), ok.sum(axis=-1))


def _group_sums(w: np.ndarray, index: np.ndarray, size: int) -> np.ndarray:
    """(..., size): the weights of the scans in each group ``index`` (N,) in [0, size)."""
    if w.ndim == 1:
        return np.bincount(index, w, size)
    rows = np.arange(len(w))[:, None] * size
    return np.bincount((rows + index).ravel(), w.ravel(), len(w) * size).reshape(len(w), size)


def _drawn_constant(x: np.ndarray, w: np.ndarray):
    """Whether ``x`` takes one value among the scans of positive weight."""
    drawn = w > 0
    return np.where(drawn, x, np.inf).min(axis=-1) == np.where(drawn, x, -np.inf).max(axis=-1)


# ---------------------------------------------------------------- ranking (scores)


def _ranked(y_true, score, w) -> tuple[np.ndarray, np.ndarray]:
    """Weighted true and false positives scored at or above each distinct score, highest
    first: (..., G) each. The AUROC and AP of a score are formulas of these."""
    score = np.asarray(score, dtype=float)
    order = np.argsort(-score, kind="stable")
    pos = np.asarray(y_true).astype(bool)[order]
    w = np.take(_weights(w, len(score)), order, axis=-1)
    tps, fps = np.cumsum(w * pos, axis=-1), np.cumsum(w * ~pos, axis=-1)
    last = np.append(score[order][1:] != score[order][:-1], True)  # last scan of each score
    return (tps, fps) if last.all() else (np.compress(last, tps, -1), np.compress(last, fps, -1))


def _steps(cumulative: np.ndarray) -> np.ndarray:
    """Per-step increments of a cumulative count (along the last axis)."""
    return np.diff(cumulative, axis=-1, prepend=0)


def _auc(tps: np.ndarray, fps: np.ndarray):
    above = tps - _steps(tps) / 2  # positives scored above each negative, ties one half
    return _ratio((_steps(fps) * above).sum(axis=-1), tps[..., -1] * fps[..., -1])


def _ap(tps: np.ndarray, fps: np.ndarray):
    seen = tps + fps  # > 0 wherever positives are gained; 0 only before any weight
    precision = tps / np.where(seen > 0, seen, 1)
    return _ratio((_steps(tps) * precision).sum(axis=-1), tps[..., -1])


def roc_auc(y_true, score, w=None):
    """Area under the ROC curve (ties count one half); NaN without both classes.
    ``roc_auc_score``."""
    return _auc(*_ranked(y_true, score, w))


def average_precision(y_true, score, w=None):
    """Average precision: the precision at each distinct score, weighted by the positives
    it adds; NaN without positives. ``average_precision_score``."""
    return _ap(*_ranked(y_true, score, w))


def _one_vs_rest(y_true, probs, w) -> list[tuple[np.ndarray, np.ndarray]]:
    y, p = np.asarray(y_true), np.asarray(probs)
    return [_ranked(y == c, p[:, c], w) for c in range(p.shape[1])]


def _macro(formula, rankings):
    """Mean of ``formula`` over the classes where it is defined."""
    return _nanmean(np.stack([formula(*r) for r in rankings], axis=-1))


def ovr_roc_auc(y_true, probs, w=None):
    """Macro one-vs-rest AUROC over the classes where it is defined (present and absent).
    ``roc_auc_score(multi_class="ovr")`` when every class is present."""
    return _macro(_auc, _one_vs_rest(y_true, probs, w))


def ovr_average_precision(y_true, probs, w=None):
    """Macro one-vs-rest average precision over the classes present.
    ``average_precision_score(one_hot(y_true), probs)`` when every class is present."""
    return _macro(_ap, _one_vs_rest(y_true, probs, w))


# ---------------------------------------------------------------- decisions (labels)


def confusion(y_true, y_pred, w=None, k: int | None = None) -> np.ndarray:
    """(..., K, K) weighted confusion matrix, rows = truth, K = largest label + 1 by default.
    ``confusion_matrix``."""
    y, pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    k = max(y.max(), pred.max()) + 1 if k is None else k
    c = _group_sums(_weights(w, len(y)), y * k + pred, k * k)
    return c.reshape(*c.shape[:-1], k, k)


def accuracy(y_true, y_pred, w=None):
    """Share of correct decisions. ``accuracy_score``."""
    correct = np.asarray(y_true) == np.asarray(y_pred)
    return _mean(_weights(w, len(correct)), correct)


def recall(y_true, y_pred, w=None, label=1):
    """Share of the scans truly ``label`` decided ``label`` (label 1: sensitivity, label 0:
    specificity). ``recall_score(pos_label=label, zero_division=nan)``."""
    truly, said = np.asarray(y_true) == label, np.asarray(y_pred) == label
    w = _weights(w, len(truly))
    return _ratio(_sum(w, truly & said), _sum(w, truly))


def precision(y_true, y_pred, w=None, label=1):
    """Share of the scans decided ``label`` that truly are (label 1: PPV, label 0: NPV).
    ``precision_score(pos_label=label, zero_division=nan)``."""
    return recall(y_pred, y_true, w, label)


def f1(y_true, y_pred, w=None, label=1):
    """Harmonic mean of precision and recall of ``label``: 2 TP / (2 TP + FP + FN).
    ``f1_score(pos_label=label, zero_division=nan)``."""
    truly, said = np.asarray(y_true) == label, np.asarray(y_pred) == label
    w = _weights(w, len(truly))
    return _ratio(2 * _sum(w, truly & said), _sum(w, truly) + _sum(w, said))


def balanced_accuracy(y_true, y_pred, w=None):
    """Mean recall over the classes present in the truth. ``balanced_accuracy_score``."""
    c = confusion(y_true, y_pred, w)
    return _nanmean(_ratio(np.diagonal(c, axis1=-2, axis2=-1), c.sum(axis=-1)))


def macro_f1(y_true, y_pred, w=None):
    """Mean F1 over the classes present in the truth or the decisions.
    ``f1_score(average="macro", zero_division=nan)``."""
    c = confusion(y_true, y_pred, w)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    return _nanmean(_ratio(2 * tp, c.sum(axis=-1) + c.sum(axis=-2)))


def cohen_kappa(y_true, y_pred, w=None, quadratic: bool = False):
    """Cohen's kappa: agreement beyond chance; ``quadratic`` weighs a disagreement by the
    squared grade distance. ``cohen_kappa_score(weights=None | "quadratic")``."""
    c = confusion(y_true, y_pred, w)
    i, j = np.indices(c.shape[-2:])
    cost = (i - j) ** 2 if quadratic else (i != j)
    rows, cols = c.sum(axis=-1), c.sum(axis=-2)
    total = rows.sum(axis=-1)[..., None, None]
    expected = rows[..., :, None] * cols[..., None, :] / np.where(total > 0, total, 1)
    return 1 - _ratio((cost * c).sum(axis=(-2, -1)), (cost * expected).sum(axis=(-2, -1)))


# ---------------------------------------------------------------- errors (values)


def brier(y_true, prob, w=None):
    """Mean squared error of P(positive) against 0/1 truth. ``brier_score_loss``."""
    sq = (np.asarray(prob, dtype=float) - np.asarray(y_true, dtype=float)) ** 2
    return _mean(_weights(w, len(sq)), sq)


def mean_absolute_error(y_true, y_pred, w=None):
    """``mean_absolute_error``."""
    err = np.abs(np.asarray(y_pred, dtype=float) - np.asarray(y_true, dtype=float))
    return _mean(_weights(w, len(err)), err)


def root_mean_squared_error(y_true, y_pred, w=None):
    """``root_mean_squared_error``."""
    sq = (np.asarray(y_pred, dtype=float) - np.asarray(y_true, dtype=float)) ** 2
    return np.sqrt(_mean(_weights(w, len(sq)), sq))


def r2(y_true, y_pred, w=None):
    """Coefficient of determination; NaN when the truth is constant. ``r2_score``."""
    y, pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    w = _weights(w, len(y))
    centred = y - _mean(w, y)[..., None]
    ss_tot = np.where(_drawn_constant(y, w), 0, _sum(w, centred**2))
    return 1 - _ratio(_sum(w, (pred - y) ** 2), ss_tot)


def pearson(a, b, w=None):
    """Pearson correlation; NaN when either side is constant. ``scipy.stats.pearsonr``."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    w = _weights(w, a.shape[-1])
    flat = _drawn_constant(a, w) | _drawn_constant(b, w)
    a = a - _mean(w, a)[..., None]
    b = b - _mean(w, b)[..., None]
    r = _ratio(_sum(w, a * b), np.sqrt(_sum(w, a * a) * _sum(w, b * b)))
    return np.where(flat, _NAN, r)[()]


def _ranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties shared) of x in the sample that repeats x[i] w[i] times."""
    group = np.unique(x, return_inverse=True)[1].ravel()
    gw = _group_sums(w, group, group.max() + 1)
    return np.take(np.cumsum(gw, axis=-1) - gw + (gw + 1) / 2, group, axis=-1)


def spearman(a, b, w=None):
    """Spearman rank correlation (ties share their mean rank); NaN when either side is
    constant. ``scipy.stats.spearmanr``."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    w = _weights(w, len(a))
    return pearson(_ranks(a, w), _ranks(b, w), w)


def residual_mean(y_true, y_pred, w=None):
    """Mean of prediction − truth (the bias)."""
    err = np.asarray(y_pred, dtype=float) - np.asarray(y_true, dtype=float)
    return _mean(_weights(w, len(err)), err)


def residual_sd(y_true, y_pred, w=None):
    """Standard deviation (ddof 0) of prediction − truth."""
    err = np.asarray(y_pred, dtype=float) - np.asarray(y_true, dtype=float)
    w = _weights(w, len(err))
    return np.sqrt(_mean(w, (err - _mean(w, err)[..., None]) ** 2))


def bin_accuracy(y_true, y_pred, value_range, bins: int, w=None):
    """Share of scans whose prediction falls in the same of ``bins`` equal-width bins of
    ``value_range`` as the truth (values outside count in the end bins)."""
    cut = np.linspace(*value_range, bins + 1)[1:-1]
    same = np.searchsorted(cut, y_true, "right") == np.searchsorted(cut, y_pred, "right")
    return _mean(_weights(w, len(same)), same)


# ---------------------------------------------------------------- the metrics of a task


def binary_metrics(y, p, w=None, *, threshold: float = 0.5) -> dict[str, Any]:
    """auroc, auprc, accuracy and balanced_accuracy at p >= 0.5, sensitivity, specificity,
    f1, ppv, npv and accuracy_at_threshold at ``threshold``, brier."""
    half, at = (p >= 0.5).astype(int), (p >= threshold).astype(int)
    ranked = _ranked(y, p, w)  # roc_auc and average_precision, ranking once
    return {
        "auroc": _auc(*ranked),
        "auprc": _ap(*ranked),
        "accuracy": accuracy(y, half, w),
        "balanced_accuracy": balanced_accuracy(y, half, w),
        "sensitivity": recall(y, at, w, 1),
        "specificity": recall(y, at, w, 0),
        "f1": f1(y, at, w),
        "ppv": precision(y, at, w, 1),
        "npv": precision(y, at, w, 0),
        "accuracy_at_threshold": accuracy(y, at, w),
        "brier": brier(y, p, w),
    }


def class_metrics(task, y, probs, w=None, *, referable_from=None) -> dict[str, Any]:
    """Multiclass and ordinal (``task``: a :class:`~medres.tasks.Task` or its name):
    auroc, auprc (macro one-vs-rest), accuracy, balanced_accuracy, f1 (macro), kappa of
    the shown class; ordinal (graded) also kappa_quadratic, mae, accuracy_argmax and, with
    ``referable_from``, referable_auroc."""
    kind = _kind(task)
    pred = kind.shown_class(probs)
    ranked = _one_vs_rest(y, probs, w)  # ovr_roc_auc and ovr_average_precision
    m = {
        "auroc": _macro(_auc, ranked),
        "auprc": _macro(_ap, ranked),
        "accuracy": accuracy(y, pred, w),
        "balanced_accuracy": balanced_accuracy(y, pred, w),
        "f1": macro_f1(y, pred, w),
        "kappa": cohen_kappa(y, pred, w),
    }
    if kind.graded:
        m["kappa_quadratic"] = cohen_kappa(y, pred, w, quadratic=True)
        m["mae"] = mean_absolute_error(y, pred, w)
        m["accuracy_argmax"] = accuracy(y, probs.argmax(axis=1), w)
        if referable_from is not None:
            referable = y >= referable_from
            m["referable_auroc"] = roc_auc(referable, probs[:, referable_from:].sum(axis=1), w)
    return m


def regression_metrics(y, pred, w=None, *, value_range=None, flag_below=None) -> dict[str, Any]:
    """mae, rmse, r2, pearson, spearman, residual_mean, residual_sd, bin_accuracy_3 / _5 /
    _10 (NaN without ``value_range``) and, with ``flag_below``, flag_sensitivity (truly-below
    scans flagged) and flag_specificity."""
    m = {
        "mae": mean_absolute_error(y, pred, w),
        "rmse": root_mean_squared_error(y, pred, w),
        "r2": r2(y, pred, w),
        "pearson": pearson(y, pred, w),
        "spearman": spearman(y, pred, w),
        "residual_mean": residual_mean(y, pred, w),
        "residual_sd": residual_sd(y, pred, w),
    }
    for k in BIN_COUNTS:
        undefined = np.full(np.shape(m["mae"]), _NAN)[()]
        m[f"bin_accuracy_{k}"] = (
            undefined if value_range is None else bin_accuracy(y, pred, value_range, k, w)
        )
    if flag_below is not None:
        below, flagged = y < flag_below, pred < flag_below
        m["flag_sensitivity"] = recall(below, flagged, w, True)
        m["flag_specificity"] = recall(below, flagged, w, False)
    return m


def task_metrics(
    task, y, s, w=None, *, threshold=None, referable_from=None, value_range=None, flag_below=None
) -> dict[str, Any]:
    """The metrics of ``task`` (a :class:`~medres.tasks.Task` or its name) on truth ``y``
    and scores ``s`` (:meth:`~medres.tasks.Task.metric_scores`: binary: P(positive) (N,);
    multiclass / ordinal: probabilities (N, K); regression: predictions (N,)), each a
    number, or (R,) for weights (R, N)."""
    kind = _kind(task)
    if kind.operating_point:
        return binary_metrics(y, s, w, threshold=0.5 if threshold is None else threshold)
    if not kind.classifies:
        return regression_metrics(y, s, w, value_range=value_range, flag_below=flag_below)
    return class_metrics(kind, y, s, w, referable_from=referable_from)


def _kind(task: Task | str) -> Task:
    return task if isinstance(task, Task) else task_named(task)


def __getattr__(name: str):
    """Names that lived here before ``evaluation.py`` held them keep working."""
    if name in ("Evaluation", "evaluate", "choose_threshold", "HEADLINE", "TASKS"):
        from medres.evaluate import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
