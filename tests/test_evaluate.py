"""medres.evaluate: metrics equal scikit-learn's, honest patient-level intervals, reports.

The inputs are model outputs (probability arrays), so they are built here: small examples
whose answers are known, and cohorts whose patients contribute several correlated scans.
"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from rich.console import Console
from scipy import stats
from sklearn import metrics as skm

from medres.errors import ConfigError
from medres.evaluate import choose_threshold, evaluate, metrics_table, write_report


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def binary_probs(p: np.ndarray) -> np.ndarray:
    return np.column_stack([1 - p, p])


def clustered_cohort(n_patients=40, scans=5, seed=0):
    """Binary cohort: each patient's scans share a latent score (highly correlated)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n_patients)
    latent = rng.normal(size=n_patients) + 1.2 * label
    y = np.repeat(label, scans)
    score = np.repeat(latent, scans) + 0.1 * rng.normal(size=n_patients * scans)
    pids = np.repeat([f"P{i:03d}" for i in range(n_patients)], scans)
    return y, binary_probs(1 / (1 + np.exp(-score))), pids


def no_nan(text: str):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in report.json"))


# ---------------------------------------------------------------- metric values


def test_binary_metrics_equal_sklearn():
    y = np.array([0, 0, 0, 1, 1, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.45, 0.6, 0.9, 0.2, 0.05, 0.55])
    ev = evaluate(y, binary_probs(p), task="binary", threshold=0.3, n_boot=0)
    at, half = (p >= 0.3).astype(int), (p >= 0.5).astype(int)
    expected = {
        "auroc": skm.roc_auc_score(y, p),
        "auprc": skm.average_precision_score(y, p),
        "accuracy": skm.accuracy_score(y, half),
        "balanced_accuracy": skm.balanced_accuracy_score(y, half),
        "sensitivity": skm.recall_score(y, at),
        "specificity": skm.recall_score(y, at, pos_label=0),
        "f1": skm.f1_score(y, at),
        "ppv": skm.precision_score(y, at),
        "npv": skm.precision_score(y, at, pos_label=0),
        "accuracy_at_threshold": skm.accuracy_score(y, at),
        "brier": skm.brier_score_loss(y, p),
    }
    assert {k: m.value for k, m in ev.metrics.items()} == pytest.approx(expected)
    assert ev.metrics["auroc"].value == pytest.approx(0.8)  # 20 of 25 pairs ordered
    assert ev.metrics["sensitivity"].value == pytest.approx(0.8)  # 0.2 < 0.3 is missed
    assert ev.threshold == 0.3 and ev.n_scans == 10 and ev.n_patients == 10


def test_multiclass_metrics_equal_sklearn():
    rng = np.random.default_rng(3)
    y = np.tile(np.arange(4), 15)
    z = rng.normal(size=(60, 4))
    z[np.arange(60), y] += 1.0
    probs = softmax(z)
    ev = evaluate(y, probs, task="multiclass", classes=list("abcd"), n_boot=0)
    pred = probs.argmax(axis=1)
    hot = np.eye(4)[y]
    got = {k: m.value for k, m in ev.metrics.items()}
    assert got == pytest.approx(
        {
            "auroc": skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"),
            "auprc": skm.average_precision_score(hot, probs, average="macro"),
            "accuracy": skm.accuracy_score(y, pred),
            "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
            "f1": skm.f1_score(y, pred, average="macro"),
            "kappa": skm.cohen_kappa_score(y, pred),
        }
    )
    assert ev.curves["confusion"].sum() == 60 and set(ev.curves["roc"]) == set("abcd")


def test_ordinal_uses_the_median_grade_and_quadratic_kappa():
    # row 0: argmax is grade 0 (first of a tie) but the median grade is 1
    probs = np.array(
        [
            [0.45, 0.10, 0.45],
            [0.70, 0.20, 0.10],
            [0.10, 0.30, 0.60],
            [0.30, 0.40, 0.30],
            [0.05, 0.15, 0.80],
            [0.60, 0.30, 0.10],
        ]
    )
    y = np.array([1, 0, 2, 1, 1, 2])
    median = np.array([1, 0, 2, 1, 2, 0])
    ev = evaluate(y, probs, task="ordinal", referable_from=2, n_boot=0)
    got = {k: m.value for k, m in ev.metrics.items()}
    assert got["accuracy"] == pytest.approx(4 / 6)  # argmax would give 3 / 6
    assert got["kappa_quadratic"] == pytest.approx(
        skm.cohen_kappa_score(y, median, weights="quadratic")
    )
    assert got["kappa"] == pytest.approx(skm.cohen_kappa_score(y, median))
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, median))
    assert got["accuracy_argmax"] == pytest.approx(3 / 6)
    assert got["referable_auroc"] == pytest.approx(
        skm.roc_auc_score(y >= 2, probs[:, 2:].sum(axis=1))
    )
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"))


def test_regression_metrics_equal_sklearn_and_scipy():
    y = np.array([1.0, 2.0, 3.5, 4.0, 6.0, 7.5])
    pred = np.array([1.2, 2.5, 3.0, 4.4, 5.0, 8.0])
    ev = evaluate(y, pred, task="regression", n_boot=0)
    got = {k: m.value for k, m in ev.metrics.items()}
    assert got == pytest.approx(
        {
            "mae": skm.mean_absolute_error(y, pred),
            "rmse": skm.root_mean_squared_error(y, pred),
            "r2": skm.r2_score(y, pred),
            "pearson": stats.pearsonr(y, pred)[0],
            "spearman": stats.spearmanr(y, pred)[0],
            "residual_mean": np.mean(pred - y),
            "residual_sd": np.std(pred - y),
            # bins of the truth's range 1..7.5: thirds cut at 3.17 and 5.33, so 3.0
            # predicted for 3.5 and 5.0 for 6.0 land one bin lower
            "bin_accuracy_3": 4 / 6,
            "bin_accuracy_5": 5 / 6,  # fifths cut at 2.3, 3.6, 4.9, 6.2: only 2.5 for 2.0
            "bin_accuracy_10": 3 / 6,
        }
    )


def test_binned_accuracy_uses_the_given_range_and_end_bins():
    y = np.array([0.95, 0.85, 0.55, 0.20, 1.00])
    pred = np.array([0.99, 0.62, 0.62, 0.25, 1.20])  # 1.2 is outside [0, 1]: top bin
    got = evaluate(y, pred, task="regression", value_range=(0, 1), n_boot=0).metrics
    assert got["bin_accuracy_3"].value == pytest.approx(4 / 5)  # 0.85 -> 0.62 crosses 2/3
    assert got["bin_accuracy_10"].value == pytest.approx(3 / 5)  # also 0.55 -> 0.62
    flat = evaluate(np.ones(4), np.ones(4), task="regression", n_boot=0).metrics
    assert np.isnan(flat["bin_accuracy_3"].value)  # constant truth and no range: undefined
    with pytest.raises(ConfigError, match="value_range"):
        evaluate(y, pred, task="regression", value_range=(1, 1), n_boot=0)


# The weighted formulas behind both the values and the intervals: tests/test_metrics.py.


# ---------------------------------------------------------------- intervals


def test_patient_bootstrap_is_wider_than_naive_scan_bootstrap():
    y, probs, pids = clustered_cohort(seed=2)
    honest = evaluate(y, probs, task="binary", patient_ids=pids, n_boot=400, seed=1)
    naive = evaluate(y, probs, task="binary", patient_ids=None, n_boot=400, seed=1)
    assert honest.n_patients == 40 and naive.n_patients == 200
    assert honest.metrics["auroc"].value == naive.metrics["auroc"].value

    def width(ev, name):
        return ev.metrics[name].ci_high - ev.metrics[name].ci_low

    for name in ("auroc", "accuracy", "sensitivity", "brier"):
        assert width(honest, name) > 1.5 * width(naive, name), name


def test_one_scan_per_patient_equals_the_scan_bootstrap():
    y, probs, _ = clustered_cohort(n_patients=60, scans=1)
    ids = [f"patient-{i}" for i in np.random.default_rng(0).permutation(60)]
    with_ids = evaluate(y, probs, task="binary", patient_ids=ids, n_boot=200, seed=5)
    scans = evaluate(y, probs, task="binary", n_boot=200, seed=5)
    assert with_ids.metrics == scans.metrics
    assert with_ids.patient_metrics == scans.metrics


def test_cluster_bootstrap_matches_a_reference_resampling_of_patients():
    """The CI is the percentile of sklearn's AUROC over resamples of whole patients."""
    y, probs, pids = clustered_cohort(n_patients=25, scans=3, seed=2)
    ev = evaluate(y, probs, task="binary", patient_ids=pids, n_boot=100, seed=9)
    rng = np.random.default_rng(9)
    scans_of = [np.flatnonzero(pids == p) for p in dict.fromkeys(pids)]
    aucs = []
    for _ in range(100):
        idx = np.concatenate([scans_of[i] for i in rng.integers(0, 25, 25)])
        if 0 < y[idx].sum() < len(idx):
            aucs.append(skm.roc_auc_score(y[idx], probs[idx, 1]))
    low, high = np.percentile(aucs, [2.5, 97.5])
    assert (ev.metrics["auroc"].ci_low, ev.metrics["auroc"].ci_high) == pytest.approx((low, high))


def test_intervals_contain_the_estimate_and_are_seeded():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 300)
    z = rng.normal(size=(300, 3))
    z[np.arange(300), y] += 1.0
    pids = rng.integers(0, 100, 300).astype(str)
    run = [
        evaluate(y, softmax(z), task="ordinal", patient_ids=pids, n_boot=200, seed=s)
        for s in (0, 0, 1)
    ]
    for ev in run[:1]:
        for m in [*ev.metrics.values(), *ev.patient_metrics.values()]:
            assert m.ci_low <= m.value <= m.ci_high
    assert run[0].metrics == run[1].metrics and run[0].patient_metrics == run[1].patient_metrics
    assert run[0].metrics != run[2].metrics


def test_thousand_replicates_on_5000_scans_take_seconds():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)
    p = np.clip(0.3 * y + 0.7 * rng.random(5000), 0, 1)
    start = time.perf_counter()
    evaluate(
        y, binary_probs(p), task="binary", patient_ids=rng.integers(0, 1500, 5000), n_boot=1000
    )
    assert time.perf_counter() - start < 10  # sklearn per replicate took ~40 s here


# ---------------------------------------------------------------- patient level


def test_one_positive_scan_makes_the_patient_positive_and_aggregation_matters():
    # patient A: one positive scan of 3 (probabilities 0.9, 0.1, 0.1); patient B: negative
    y = np.array([1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.1, 0.1, 0.4, 0.4, 0.4])
    pids = ["A", "A", "A", "B", "B", "B"]
    mean = evaluate(y, binary_probs(p), task="binary", patient_ids=pids, n_boot=0)
    peak = evaluate(
        y, binary_probs(p), task="binary", patient_ids=pids, n_boot=0, patient_aggregate="max"
    )
    assert mean.n_patients == 2
    # A is positive; its probability is 1.1/3 by mean, 0.9 by max; B stays 0.4
    assert mean.patient_metrics["brier"].value == pytest.approx(((1 - 1.1 / 3) ** 2 + 0.4**2) / 2)
    assert peak.patient_metrics["brier"].value == pytest.approx((0.1**2 + 0.4**2) / 2)
    assert mean.patient_metrics["auroc"].value == 0.0
    assert peak.patient_metrics["auroc"].value == 1.0
    assert peak.patient_metrics["sensitivity"].value == 1.0
    assert peak.metrics == mean.metrics  # scan level does not depend on aggregation


def test_unknown_patients_are_never_merged():
    y = np.array([0, 1, 0, 1, 0, 1])
    p = np.array([0.2, 0.7, 0.3, 0.8, 0.1, 0.9])
    pids = ["a", "a", None, np.nan, "", "None"]
    ev = evaluate(y, binary_probs(p), task="binary", patient_ids=pids, n_boot=0)
    assert ev.n_patients == 5  # "a" + three unknown scans + the patient named "None"


def test_multiclass_patient_truth_is_the_most_frequent_label():
    y = np.array([2, 2, 1, 0])
    probs = np.array([[0.1, 0.1, 0.8], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1]])
    ev = evaluate(y, probs, task="multiclass", patient_ids=["p", "p", "p", "q"], n_boot=0)
    assert ev.patient_metrics["accuracy"].value == 1.0  # p: truth 2, mean probs argmax 2


def test_per_site_rows_and_counts():
    y = np.array([0, 1, 0, 1, 1, 0, 1])
    p = np.array([0.2, 0.9, 0.6, 0.7, 0.3, 0.1, 0.8])
    sites = ["north", "north", "north", "south", "south", "south", None]
    pids = ["a", "a", "b", "c", "c", "d", "e"]
    ev = evaluate(y, binary_probs(p), task="binary", patient_ids=pids, sites=sites, n_boot=0)
    table = ev.per_site.set_index("site")
    assert list(table.index) == ["(unknown)", "north", "south"]
    assert table["n_scans"].to_dict() == {"(unknown)": 1, "north": 3, "south": 3}
    assert table["n_patients"].to_dict() == {"(unknown)": 1, "north": 2, "south": 2}
    assert table.loc["north", "auroc"] == pytest.approx(
        skm.roc_auc_score([0, 1, 0], [0.2, 0.9, 0.6])
    )
    assert table.loc["south", "sensitivity"] == 0.5
    assert np.isnan(table.loc["(unknown)", "auroc"])
    assert evaluate(y, binary_probs(p), task="binary", n_boot=0).per_site.empty


# ---------------------------------------------------------------- thresholds


def test_choose_threshold_falls_between_separable_classes():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.8, 0.9])
    assert choose_threshold(y, p) == pytest.approx(0.45)


def test_choose_threshold_maximises_youden():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.25 * y + 0.75 * rng.random(200), 0, 1)

    def youden(t):  # sensitivity + specificity - 1
        return (p[y == 1] >= t).mean() + (p[y == 0] < t).mean() - 1

    best = max(youden(t) for t in [*np.unique(p), 1.01])
    assert youden(choose_threshold(y, p)) == pytest.approx(best)
    with pytest.raises(ConfigError, match="both classes"):
        choose_threshold(np.zeros(5), p[:5])


# ---------------------------------------------------------------- reports


def test_one_class_sample_gives_nan_auroc_and_valid_json(tmp_path):
    y = np.zeros(20, dtype=int)
    p = np.linspace(0.05, 0.6, 20)
    ev = evaluate(y, binary_probs(p), task="binary", n_boot=50)
    assert np.isnan(ev.metrics["auroc"].value) and np.isnan(ev.metrics["auroc"].ci_low)
    assert ev.metrics["specificity"].value == pytest.approx(0.8)
    report = no_nan(write_report(ev, tmp_path).read_text())
    assert report["metrics"]["auroc"] == {"value": None, "ci_low": None, "ci_high": None}
    assert (tmp_path / "roc.png").exists()


def test_write_report_binary(tmp_path):
    y, probs, pids = clustered_cohort(n_patients=20, scans=2)
    sites = np.where(np.arange(40) % 2, "A", "B")
    ev = evaluate(y, probs, task="binary", patient_ids=pids, sites=sites, threshold=0.4, n_boot=100)
    path = write_report(ev, tmp_path / "out", title="Test report", extra={"split": "test"})
    assert path == tmp_path / "out" / "report.json"
    report = no_nan(path.read_text())
    assert set(report["metrics"]["auroc"]) == {"value", "ci_low", "ci_high"}
    assert report["metrics"]["auroc"]["value"] == pytest.approx(ev.metrics["auroc"].value)
    assert report["split"] == "test" and report["threshold"] == 0.4
    assert (report["n_scans"], report["n_patients"]) == (40, 20)
    assert [r["site"] for r in report["per_site"]] == ["A", "B"]
    assert "auroc" in report["patient_metrics"]
    for png in ("roc.png", "pr.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "out" / "report.md").read_text()
    m = ev.metrics["auroc"]
    assert f"| auroc | {m.value:.3f} ({m.ci_low:.3f}–{m.ci_high:.3f}) |" in md
    assert "![roc](roc.png)" in md and "## Per site" in md and "0.400" in md
    assert not list((tmp_path / "out").glob(".*.tmp"))
    with pytest.raises(ConfigError, match="overwrite"):
        write_report(ev, tmp_path / "out", extra={"metrics": 1})


@pytest.mark.parametrize(
    ("task", "plots"),
    [("ordinal", {"roc.png", "confusion.png"}), ("regression", {"scatter.png"})],
)
def test_write_report_other_tasks(tmp_path, task, plots):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 50)
    probs = softmax(rng.normal(size=(50, 3)) + 2 * np.eye(3)[y])
    if task == "regression":
        y, probs = y.astype(float), y + rng.normal(size=50)
    ev = evaluate(y, probs, task=task, n_boot=20)
    write_report(ev, tmp_path)
    assert {p.name for p in tmp_path.glob("*.png")} == plots
    assert no_nan((tmp_path / "report.json").read_text())["task"] == task


def test_metrics_table_renders_intervals():
    y, probs, pids = clustered_cohort(n_patients=20, scans=2)
    ev = evaluate(y, probs, task="binary", patient_ids=pids, n_boot=50)
    console = Console(record=True, width=120)
    console.print(metrics_table(ev))
    text = console.export_text()
    assert "binary: 40 scans, 20 patients" in text  # the title says what was evaluated
    cells = [[c.strip() for c in re.split("[│┃]", line)[1:4]] for line in text.splitlines()]
    rows = {row[0]: row[1:] for row in cells if len(row) == 3}
    assert rows["metric"] == ["scans (95% CI)", "patients (95% CI)"]
    assert set(rows) == {"metric", *ev.metrics}  # one row per metric
    m, p = ev.metrics["auroc"], ev.patient_metrics["auroc"]  # scan- and patient-level
    assert rows["auroc"] == [
        f"{m.value:.3f} ({m.ci_low:.3f}–{m.ci_high:.3f})",
        f"{p.value:.3f} ({p.ci_low:.3f}–{p.ci_high:.3f})",
    ]


# ---------------------------------------------------------------- bad input


GOOD_Y = np.array([0, 1, 1, 0])
GOOD_P = binary_probs(np.array([0.2, 0.7, 0.6, 0.3]))


@pytest.mark.parametrize(
    ("y", "probs", "kwargs", "message"),
    [
        (GOOD_Y[:3], GOOD_P, {}, "lengths differ: y_true has 3 scans but probs has 4 rows"),
        (GOOD_Y, GOOD_P[:, 1], {}, r"shape \(N, 2\)"),
        (GOOD_Y, GOOD_P * 0.9, {}, "summing to 1"),
        (np.array([0, 1, 2, 0]), GOOD_P, {}, r"class indices in \[0, 2\)"),
        (GOOD_Y, np.where(GOOD_P > 0.65, np.nan, GOOD_P), {}, "NaN"),
        (GOOD_Y, GOOD_P, {"task": "segmentation"}, "unknown task 'segmentation'"),
        (GOOD_Y, GOOD_P, {"patient_ids": ["a"]}, "4 scans but 1 patient_ids"),
        (GOOD_Y, GOOD_P, {"task": "multiclass", "patient_aggregate": "max"}, "'max' for binary"),
        (GOOD_Y, GOOD_P, {"task": "multiclass", "threshold": 0.3}, "binary tasks only"),
        (GOOD_Y, GOOD_P, {"task": "ordinal", "referable_from": 2}, "grade in 1..K-1"),
        (GOOD_Y + 0.5, GOOD_P, {}, "integer class indices"),
    ],
)
def test_bad_input_raises_config_error(y, probs, kwargs, message):
    kwargs = {"task": "binary", **kwargs}
    with pytest.raises(ConfigError, match=message):
        evaluate(y, probs, **kwargs)
