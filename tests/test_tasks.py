"""The Task objects (medres/tasks.py): what each task means for a user, asserted through
the objects every stage asks instead of comparing task names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medres.errors import ConfigError
from medres.evaluate import evaluate
from medres.evaluate.evaluation import HEADLINE
from medres.tasks import BINARY, MULTICLASS, ORDINAL, REGRESSION, TASK, TaskInfo, task_named


def test_each_name_is_its_task_and_an_unknown_name_lists_the_four():
    assert [task_named(n) for n in ("binary", "multiclass", "ordinal", "regression")] == [
        BINARY,
        MULTICLASS,
        ORDINAL,
        REGRESSION,
    ]
    with pytest.raises(ConfigError, match="binary, multiclass, ordinal, regression") as e:
        task_named("bogus")
    assert "'bogus'" in str(e.value)
    with pytest.raises(ConfigError, match="unknown task"):
        task_named(["binary"])  # unhashable: still a ConfigError


def test_ordinal_shows_the_median_grade_other_classifiers_the_most_probable_class():
    # argmax is grade 0 (0.42), but P(grade <= 1) = 0.47 < 0.5: the median is grade 2
    probs = np.array([[0.42, 0.05, 0.2, 0.33]])
    assert ORDINAL.shown_class(probs).tolist() == [2]
    assert MULTICLASS.shown_class(probs).tolist() == [0]
    assert TaskInfo("ordinal", [0, 1, 2, 3]).kind.shown_class(probs).tolist() == [2]


def test_binary_needs_exactly_two_classes_and_says_so():
    assert BINARY.classes_problem(["normal", "abnormal"]) is None
    assert BINARY.classes_problem(["a", "b", "c"]) == "2 classes for task 'binary'"
    assert MULTICLASS.classes_problem(["a", "b", "c"]) is None
    assert MULTICLASS.classes_problem(["a"]) == "at least 2 classes for task 'multiclass'"
    assert REGRESSION.classes_problem([1, 2]) == "null (or []) for task 'regression'"
    assert REGRESSION.classes_problem(None) is None


def test_capabilities_and_the_metric_that_selects_the_epoch():
    assert [t.classifies for t in TASK.values()] == [True, True, True, False]
    assert [t.operating_point for t in TASK.values()] == [True, False, False, False]
    assert [t.ordered for t in TASK.values()] == [True, False, True, False]
    assert {t.name: t.selection_metric for t in TASK.values()} == {
        "binary": "auroc",
        "multiclass": "auroc",
        "ordinal": "kappa_quadratic",
        "regression": "mae",
    }
    probs = np.array([[0.3, 0.7], [0.9, 0.1]])
    assert BINARY.metric_scores(probs).tolist() == [0.7, 0.1]  # P(positive)
    assert MULTICLASS.metric_scores(probs) is probs


def test_headline_metrics_are_the_per_site_columns():
    assert HEADLINE == {  # the per-site columns of report.json, unchanged
        "binary": ("auroc", "accuracy", "sensitivity", "specificity"),
        "multiclass": ("auroc", "accuracy", "kappa"),
        "ordinal": ("auroc", "accuracy", "kappa", "kappa_quadratic"),
        "regression": ("mae", "r2"),
    }
    y = np.array([0, 1, 2, 1, 0, 2])
    probs = np.eye(3)[[0, 1, 2, 2, 0, 1]] * 0.8 + 0.2 / 3
    ev = evaluate(y, probs, task="ordinal", sites=list("aabbab"), n_boot=0)
    assert list(ev.per_site.columns) == ["site", "n_scans", "n_patients", *ORDINAL.headline]
    assert ev.kind is ORDINAL and ev.to_dict()["task"] == "ordinal"


def test_loss_is_mse_for_regression_and_cross_entropy_for_classifiers():
    outputs = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    targets = torch.tensor([0, 1])
    ce = BINARY.loss(targets, 2, class_weights="none", label_smoothing=0.0)
    assert torch.equal(ce(outputs, targets), torch.nn.functional.cross_entropy(outputs, targets))
    mse = REGRESSION.loss(None, 1, class_weights="balanced", label_smoothing=0.0)
    y = torch.tensor([1.0, 0.0])
    assert float(mse(outputs, y)) == pytest.approx(((2.0 - 1.0) ** 2 + 0.5**2) / 2)
    # balanced: the rarer class weighs more
    weighted = MULTICLASS.loss(
        torch.tensor([0, 0, 0, 1]), 2, class_weights="balanced", label_smoothing=0.0
    )
    assert weighted.weight.tolist() == pytest.approx([4 / 6, 4 / 2])
