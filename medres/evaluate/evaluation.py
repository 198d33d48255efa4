"""Evaluation of a model on a labelled split: metrics with patient-level bootstrap
confidence intervals, per site (DESIGN §1, §2).

:func:`evaluate` takes what a model said about each scan (class probabilities, or a
prediction for regression), the truth, and optionally who the patient is and where the
scan came from. It returns an :class:`Evaluation`: scan-level and patient-level metrics,
each with a 95 % percentile-bootstrap interval, a per-site table and curve data.
:func:`write_report` writes ``report.json``, ``report.md`` and the plots.

Each metric is defined once, on frequency weights (:mod:`medres.evaluate.metrics`): the
point estimate is it with every weight 1, an interval replicate is it with the draw counts
of :mod:`medres.evaluate.bootstrap`. Scan- and patient-level intervals come from the same
draws of patients.

Example::

    from medres.evaluate import choose_threshold, evaluate, write_report

    t = choose_threshold(y_val, p_val[:, 1])
    ev = evaluate(y_test, p_test, task="binary", patient_ids=pids, sites=sites, threshold=t)
    write_report(ev, "reports/test", extra={"bundle_id": "abc", "split": "test"})
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from medres.errors import ConfigError
from medres.evaluate.bootstrap import draw_counts, id_text, intervals, patient_codes, replicate
from medres.evaluate.metrics import MetricCI, task_metrics
from medres.files import jsonable
from medres.tasks import TASK, TASKS, Task, task_named
from medres.train.class_names import display_name

__all__ = ["HEADLINE", "TASKS", "Evaluation", "choose_threshold", "evaluate"]

HEADLINE: dict[str, tuple[str, ...]] = {t.name: t.headline for t in TASK.values()}  # per site
_ROW_SUM_TOL = 1e-3
_NAN = float("nan")


@dataclass
class Evaluation:
    """The result of :func:`evaluate`.

    Attributes:
        metrics / patient_metrics: metric name -> :class:`MetricCI`, on scans / on patients.
        per_site: one row per site: ``site``, ``n_scans``, ``n_patients`` and the task's
            :attr:`~medres.tasks.Task.headline` metrics (scan level, no intervals); empty
            without sites.
        threshold: the binary operating point used (``None`` for other tasks).
        curves: plot data (numpy arrays): binary ``roc``, ``operating_point``, ``pr``;
            multiclass/ordinal ``roc`` per class name and ``confusion`` (K, K) with rows =
            truth; regression ``scatter``. A curve that is undefined is absent.
        classes: the K classes as text (labels), in output order; None for regression.
        class_names: their display names (``normal``), aligned; the labels when not given.
    """

    task: str
    n_scans: int
    n_patients: int
    metrics: dict[str, MetricCI]
    patient_metrics: dict[str, MetricCI]
    per_site: pd.DataFrame
    threshold: float | None
    curves: dict = field(default_factory=dict)
    classes: list[str] | None = None
    class_names: list[str] | None = None
    patient_aggregate: str = "mean"
    n_boot: int = 1000
    seed: Any = 0

    def to_dict(self) -> dict[str, Any]:
        """Everything but the curves, JSON-ready (NaN becomes ``None``)."""
        return jsonable(
            {
                "task": self.task,
                "n_scans": self.n_scans,
                "n_patients": self.n_patients,
                "threshold": self.threshold,
                "classes": self.classes,
                "class_names": self.class_names,
                "patient_aggregate": self.patient_aggregate,
                "bootstrap": {"n_boot": self.n_boot, "seed": self.seed, "resampled": "patients"},
                "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
                "patient_metrics": {k: m.to_dict() for k, m in self.patient_metrics.items()},
                "per_site": self.per_site.to_dict("records"),
            }
        )

    @property
    def kind(self) -> Task:
        """The :class:`~medres.tasks.Task` evaluated."""
        return task_named(self.task)

    @property
    def shown_classes(self) -> list[str]:
        """How tables and plots show each class: ``normal (0)``, or the label when it is
        its own name (``[]`` for regression)."""
        names = self.class_names or self.classes or []
        return [display_name(c, n) for c, n in zip(self.classes or [], names, strict=True)]


def choose_threshold(y_true, prob_pos) -> float:
    """The operating point maximising Youden's J (sensitivity + specificity - 1).

    Choose it on the validation split, never on test. Each point of the ROC curve is
    reached by any cut between two consecutive distinct scores; the cut returned is the
    midpoint, so validation scores never sit on it. Ties in J go to the cut nearest 0.5.

    Args:
        y_true: (N,) labels 0/1 with both classes present.
        prob_pos: (N,) probability of the positive class; predict positive when >= cut.
    """
    y = _labels(y_true, 2, "y_true")
    p = np.asarray(prob_pos, dtype=float)
    if p.shape != y.shape or not np.isfinite(p).all():
        raise ConfigError(f"prob_pos must be {len(y)} finite values like y_true; got {p.shape}")
    if y.min() == y.max():
        raise ConfigError(
            f"choose_threshold needs positives and negatives; y_true is all {y[0]}: "
            "choose the operating point on a validation split with both classes"
        )
    fpr, tpr, thr = skm.roc_curve(y, p, drop_intermediate=False)
    cuts = np.append(np.nextafter(thr[1], np.inf), (thr[1:-1] + thr[2:]) / 2)
    cuts = np.append(cuts, thr[-1])  # point 0: nothing positive ... last: everything positive
    j = tpr - fpr
    best = np.flatnonzero(j >= j.max() - 1e-12)
    return float(cuts[best[np.argmin(np.abs(cuts[best] - 0.5))]])


def evaluate(
    y_true,
    probs,
    *,
    task: str,
    classes=None,
    class_names=None,
    patient_ids=None,
    sites=None,
    threshold: float | None = None,
    referable_from: int | None = None,
    patient_aggregate: str = "mean",
    value_range: tuple[float, float] | None = None,
    flag_below: float | None = None,
    n_boot: int = 1000,
    seed=0,
) -> Evaluation:
    """Scan- and patient-level metrics with 95 % patient-bootstrap intervals.

    Args:
        y_true: (N,) class indices in [0, K) (floats for regression).
        probs: (N, K) class probabilities, rows summing to 1 (binary: K = 2, column 1 is
            positive); (N,) predictions for regression.
        task: ``binary`` | ``multiclass`` | ``ordinal`` (grades 0..K-1) | ``regression``.
        classes: K class labels for tables and plots (default "0".."K-1").
        class_names: K display names of those classes (``normal``, ``pneumonia``),
            shown beside the labels; default: the labels.
        patient_ids: (N,) ids; None, NaN or blank = unknown: that scan is its own patient.
        sites: (N,) site names (NaN = "(unknown)") for the per-site table.
        threshold: binary operating point for sensitivity, specificity, f1, ppv, npv and
            accuracy_at_threshold (default 0.5); use :func:`choose_threshold` on validation.
        referable_from: ordinal only: adds ``referable_auroc``, the AUC of grade >= r
            scored by ``probs[:, r:].sum(1)``.
        patient_aggregate: how a patient's scan probabilities combine: ``mean`` (rows
            renormalised) or, binary only, ``max`` of P(positive).
        value_range: regression only: (min, max) of the target, cut into 3, 5 and 10
            equal-width bins for the binned accuracies (default: the range of y_true).
        flag_below: regression only: a QA gate that flags predictions below it; adds
            flag_sensitivity (truly-below scans flagged) and flag_specificity.
        n_boot, seed: bootstrap replicates (0 = no intervals) and the Generator seed.

    Metrics (NaN when undefined for the sample, e.g. AUROC with one class):

    - binary: auroc, auprc (average precision), accuracy and balanced_accuracy at p >= 0.5
      (argmax, as MedMNIST reports), sensitivity, specificity, f1, ppv, npv and
      accuracy_at_threshold at ``threshold``, brier.
    - multiclass: auroc and auprc (macro one-vs-rest over the classes present), accuracy,
      balanced_accuracy, f1 (macro), kappa (Cohen, unweighted) of the argmax class.
    - ordinal: the same plus kappa_quadratic and mae (in grades), all of the *median*
      grade (smallest k with cumulative probability >= 0.5, which minimises the expected
      absolute grade error) instead of the argmax; accuracy_argmax (what MedMNIST
      reports); referable_auroc if asked.
    - regression: mae, rmse, r2, pearson, spearman; residual_mean and residual_sd of
      prediction − truth; bin_accuracy_3 / _5 / _10, the share of scans whose predicted
      value falls in the same equal-width bin of ``value_range`` as the truth (values
      outside the range count in the end bins), as the SSIM-regression study reports;
      with ``flag_below``, flag_sensitivity and flag_specificity.

    A patient's truth is: binary, positive if any scan is; multiclass, the most frequent
    label (ties: the lowest index); ordinal, the highest grade; regression, the mean.
    Patient metrics use the same threshold. A replicate where a metric is undefined is
    dropped; the interval is NaN when fewer than half of the replicates define it.

    Raises:
        ConfigError: inputs of the wrong shape, length, range or option.
    """
    kind = task_named(task)
    y, scores, names = _check_inputs(y_true, probs, kind, classes)
    thr = _check_options(kind, scores, threshold, referable_from, patient_aggregate, n_boot)
    n = len(y)
    codes = patient_codes(patient_ids, n)
    site_of = _site_labels(sites, n)
    s = kind.metric_scores(scores)
    opts = {"threshold": thr, "referable_from": referable_from}
    if not kind.classifies:
        opts["value_range"] = _value_range(value_range, y)
        opts["flag_below"] = flag_below
    y_pat, s_pat = _aggregate(kind, y, s, codes, patient_aggregate)
    point, p_point = task_metrics(kind, y, s, **opts), task_metrics(kind, y_pat, s_pat, **opts)
    counts = draw_counts(len(y_pat), n_boot, seed)  # both levels from the same draws of patients
    scans = replicate(lambda w: task_metrics(kind, y, s, w, **opts), counts, codes)
    patients = replicate(lambda w: task_metrics(kind, y_pat, s_pat, w, **opts), counts)
    cis, p_cis = intervals(scans, n_boot), intervals(patients, n_boot)
    return Evaluation(
        task=task,
        n_scans=n,
        n_patients=len(y_pat),
        metrics={k: MetricCI(float(v), *cis.get(k, (_NAN, _NAN))) for k, v in point.items()},
        patient_metrics={
            k: MetricCI(float(v), *p_cis.get(k, (_NAN, _NAN))) for k, v in p_point.items()
        },
        per_site=_per_site(kind, y, s, codes, site_of, opts),
        threshold=thr,
        curves=_curves(kind, y, s, names, point, thr),
        classes=names,
        class_names=_display_names(names, class_names),
        patient_aggregate=patient_aggregate,
        n_boot=n_boot,
        seed=seed,
    )


# ---------------------------------------------------------------- inputs


def _labels(y_true, k: int, what: str) -> np.ndarray:
    """(N,) integer class indices in [0, k), or ConfigError."""
    y = _numeric(y_true, what)
    if (y != np.round(y)).any():
        raise ConfigError(
            f"{what} must hold integer class indices; found {y[y != np.round(y)][:3]}"
        )
    bad = (y < 0) | (y >= k)
    if bad.any():
        raise ConfigError(
            f"{what} must be class indices in [0, {k}) to match {k} probability columns; "
            f"found {np.unique(y[bad])[:5]}: map labels to indices before evaluating"
        )
    return y.astype(int)


def _numeric(values, what: str) -> np.ndarray:
    try:
        y = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what} must be numeric: {e}") from e
    if y.ndim != 1 or len(y) == 0:
        raise ConfigError(
            f"{what} must be a non-empty 1-D array (one value per scan); got {y.shape}"
        )
    if np.isnan(y).any():
        raise ConfigError(f"{what} has {int(np.isnan(y).sum())} NaN values: drop those scans first")
    return y


def _check_inputs(y_true, probs, kind: Task, classes) -> tuple[np.ndarray, np.ndarray, Any]:
    y = _numeric(y_true, "y_true")
    p = np.asarray(probs, dtype=float)
    if p.ndim == 0 or len(p) != len(y):
        got = "a scalar" if p.ndim == 0 else f"{len(p)} rows"
        raise ConfigError(f"lengths differ: y_true has {len(y)} scans but probs has {got}")
    if np.isnan(p).any():
        raise ConfigError(f"probs has NaN in {int(np.isnan(p).any(axis=-1).sum())} scans")
    if not kind.classifies:
        p = p.reshape(len(p), -1)
        if p.shape[1] != 1:
            raise ConfigError(f"regression predictions must have shape (N,); got {p.shape}")
        return y, p[:, 0], None
    if p.ndim != 2 or kind.classes_problem(list(range(p.shape[1]))):
        want = "(N, 2): P(negative), P(positive)" if kind.operating_point else "(N, K), K >= 2"
        raise ConfigError(f"probs for a {kind.name} task must have shape {want}; got {p.shape}")
    k = p.shape[1]
    sums = p.sum(axis=1)
    off = np.flatnonzero((np.abs(sums - 1) > _ROW_SUM_TOL) | (p < -_ROW_SUM_TOL).any(axis=1))
    if len(off):
        raise ConfigError(
            f"rows of probs must be probabilities summing to 1 (±{_ROW_SUM_TOL}); "
            f"{len(off)} rows are not (row {off[0]} sums to {sums[off[0]]:.4g}): apply softmax"
        )
    names = [str(c) for c in (range(k) if classes is None else classes)]
    if len(names) != k:
        raise ConfigError(f"{len(names)} class names given for {k} probability columns")
    return _labels(y, k, "y_true"), p, names


def _display_names(classes: list[str] | None, class_names) -> list[str] | None:
    """K display names aligned with ``classes`` (the labels when not given)."""
    if classes is None:
        return None
    if class_names is None:
        return list(classes)
    names = [str(n) for n in class_names]
    if len(names) != len(classes):
        raise ConfigError(f"{len(names)} class_names given for {len(classes)} classes")
    return names


def _check_options(kind, scores, threshold, referable_from, aggregate, n_boot) -> float | None:
    task = kind.name
    if threshold is not None and not kind.operating_point:
        raise ConfigError(f"threshold applies to binary tasks only; task is {task!r}")
    if threshold is not None and not 0 <= threshold <= 1:
        raise ConfigError(f"threshold must be a probability in [0, 1]; got {threshold}")
    if referable_from is not None:
        k = scores.shape[1] if kind.graded else 0
        if not isinstance(referable_from, int | np.integer) or not 0 < referable_from < k:
            raise ConfigError(
                f"referable_from must be an ordinal grade in 1..K-1 (grades >= it are "
                f"referable); got {referable_from!r} for task {task!r}"
            )
    if aggregate not in ("mean", "max") or (aggregate == "max" and not kind.operating_point):
        raise ConfigError(
            f"patient_aggregate must be 'mean', or 'max' for binary tasks; got {aggregate!r} "
            f"for task {task!r}"
        )
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise ConfigError(f"n_boot must be a whole number >= 0; got {n_boot!r}")
    return (0.5 if threshold is None else float(threshold)) if kind.operating_point else None


def _site_labels(sites, n: int) -> np.ndarray | None:
    if sites is None:
        return None
    text, known = id_text(sites, n, "sites")
    return np.where(known, text, "(unknown)")


def _aggregate(kind, y, s, codes, how) -> tuple[np.ndarray, np.ndarray]:
    """Per patient (P rows): the truth and the aggregated score (see :func:`evaluate`)."""
    g = codes.max() + 1
    count = np.bincount(codes, minlength=g)
    if not kind.classifies:
        return np.bincount(codes, y, g) / count, np.bincount(codes, s, g) / count
    y_pat = np.zeros(g, dtype=int)
    if kind.ordered:  # the highest class: binary, positive if any scan is; ordinal grade
        np.maximum.at(y_pat, codes, y)
    else:
        votes = np.zeros((g, s.shape[1]))
        np.add.at(votes, (codes, y), 1)
        y_pat = votes.argmax(axis=1)
    if kind.operating_point and how == "max":  # s is P(positive), (N,)
        s_pat = np.zeros(g)
        np.maximum.at(s_pat, codes, s)
    elif kind.operating_point:
        s_pat = np.bincount(codes, s, g) / count
    else:
        s_pat = np.zeros((g, s.shape[1]))
        np.add.at(s_pat, codes, s)
        s_pat /= s_pat.sum(axis=1, keepdims=True)
    return y_pat, s_pat


def _value_range(given, y) -> tuple[float, float] | None:
    """The binning range: ``given`` (checked), else the range of ``y`` (None if constant)."""
    if given is None:
        lo, hi = float(np.min(y)), float(np.max(y))
        return (lo, hi) if hi > lo else None
    lo, hi = map(float, given)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ConfigError(f"value_range must be (min, max) with min < max; got {(lo, hi)}")
    return lo, hi


# ---------------------------------------------------------------- per site, curves


def _per_site(kind, y, s, codes, site_of, opts) -> pd.DataFrame:
    columns = ["site", "n_scans", "n_patients", *kind.headline]
    rows = []
    for site in [] if site_of is None else sorted(set(site_of)):
        mask = site_of == site
        m = task_metrics(kind, y[mask], s[mask], **opts)
        counts = {"n_scans": int(mask.sum()), "n_patients": len(np.unique(codes[mask]))}
        rows.append({"site": site, **counts, **{k: float(m[k]) for k in kind.headline}})
    return pd.DataFrame(rows, columns=columns)


def _curves(kind, y, s, names, point, threshold) -> dict:
    if not kind.classifies:
        return {"scatter": {"y_true": y, "y_pred": s}}
    if kind.operating_point:
        curves: dict = {"prevalence": float(y.mean())}
        if 0 < y.sum() < len(y):
            fpr, tpr, thr = skm.roc_curve(y, s)
            curves["roc"] = {"fpr": fpr, "tpr": tpr, "thresholds": thr}
            op = (1 - float(point["specificity"]), float(point["sensitivity"]))
            curves["operating_point"] = {"threshold": threshold, "fpr": op[0], "tpr": op[1]}
        if y.any():
            precision, recall, _ = skm.precision_recall_curve(y, s)
            curves["pr"] = {"precision": precision, "recall": recall}
        return curves
    k = s.shape[1]
    roc = {}
    for c in range(k):
        if 0 < (y == c).sum() < len(y):
            fpr, tpr, _ = skm.roc_curve(y == c, s[:, c])
            roc[names[c]] = {"fpr": fpr, "tpr": tpr}
    pred = kind.shown_class(s)
    return {"roc": roc, "confusion": skm.confusion_matrix(y, pred, labels=range(k))}
