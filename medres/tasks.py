"""What the labels mean: the task, the classes in output order, the target scaling.

Labels are matched by a canonical key, so ``1``, ``1.0``, ``"1"``, ``"1.0"`` and ``True``
are one class whatever type the manifest stored them in. Whole-number labels stay
integers in the bundle (JSON round trip).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import softmax

from medres.errors import ConfigError

MAX_AUTO_CLASSES = 20


def label_key(value: Any) -> str:
    """The canonical text of a label: whole numbers (and booleans) without ``.0``,
    text stripped."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value).strip()
    return str(int(number)) if number.is_integer() else str(value).strip()


def median_grade(probs: np.ndarray) -> np.ndarray:
    """(N,) the median of each row's predictive distribution over ordered grades (N, K):
    the grade minimising the expected absolute error."""
    cum = np.cumsum(probs, axis=1) / probs.sum(axis=1, keepdims=True)
    return np.argmax(cum >= 0.5 - 1e-9, axis=1)


@dataclass(frozen=True)
class Task:
    """What kind of task a model solves, and everything that follows from it: whether
    its outputs are class probabilities, which class a clinician is shown, the metric
    that selects the epoch and the metrics shown first. One object per task
    (:data:`TASK`); :attr:`TaskInfo.kind` gives a model's.

    Attributes:
        name: ``binary``, ``multiclass``, ``ordinal`` or ``regression`` (as stored in
            ``bundle.json``).
        classifies: outputs are K class logits (softmax probabilities, calibration,
            conformal sets, referral); False: one value in label units (regression).
        operating_point: one positive class (binary): its probability P(positive) is
            what the metrics score, a threshold on it (the operating point) decides the
            shown class, platt and isotonic calibrate it and a patient's scans may be
            aggregated by its maximum.
        graded: the classes are ordered grades: the shown class is the median grade (it
            minimises the expected grade error) and grade-error metrics apply (ordinal).
        selection_metric: the validation metric that selects the epoch (maximised;
            ``mae`` is maximised as −MAE).
        headline: the metrics shown first (per site, in tables), in order.
    """

    name: str
    classifies: bool
    operating_point: bool
    graded: bool
    selection_metric: str
    headline: tuple[str, ...]

    @property
    def min_classes(self) -> int:
        """Classes a model of this task needs (0: regression has none)."""
        return 2 if self.classifies else 0

    def classes_problem(self, classes: list[Any] | None) -> str | None:
        """Why ``classes`` cannot be this task's classes (None when they can)."""
        if not self.classifies:
            return "null (or []) for task 'regression'" if classes else None
        exact = self.operating_point  # binary: exactly two
        if not classes or len(classes) < 2 or (exact and len(classes) != 2):
            return f"{2 if exact else 'at least 2'} classes for task {self.name!r}"
        return None

    def shown_class(self, probs: np.ndarray) -> np.ndarray:
        """The class a clinician is shown for probabilities (N, K), (N,) int: the median
        grade for graded tasks, else the most probable class. (Binary with an operating
        point: the caller applies its threshold to P(positive).)"""
        return median_grade(probs) if self.graded else probs.argmax(axis=1)

    @property
    def ordered(self) -> bool:
        """The classes are ordered (binary: negative < positive; ordinal: grades), so a
        patient's truth is their highest class (multiclass: their most frequent one)."""
        return self.operating_point or self.graded

    def metric_scores(self, scores: np.ndarray) -> np.ndarray:
        """What this task's metrics score, from the scores of
        :meth:`TaskInfo.outputs_to_scores`: P(positive) (N,) for binary, the probabilities
        (N, K) for other classifiers, the predictions (N,) for regression."""
        return scores[:, 1] if self.operating_point else scores

    def loss(self, targets, num_outputs: int, *, class_weights: str, label_smoothing: float):
        """The training loss ``(outputs, targets) -> loss`` (torch): MSE on the
        standardised target (regression), else cross-entropy, with class weights
        inversely proportional to the class counts of ``targets`` when ``class_weights``
        is ``balanced``, and ``label_smoothing``."""
        import torch  # here, not at the top: `medres --help` imports this module

        if not self.classifies:
            mse = torch.nn.MSELoss()
            return lambda outputs, y: mse(outputs[:, 0], y.float())
        weight = None
        if class_weights == "balanced":
            counts = torch.bincount(targets, minlength=num_outputs).float().clamp(min=1)
            weight = counts.sum() / (len(counts) * counts)
        return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


BINARY = Task(
    "binary", True, True, False, "auroc", ("auroc", "accuracy", "sensitivity", "specificity")
)
MULTICLASS = Task("multiclass", True, False, False, "auroc", ("auroc", "accuracy", "kappa"))
ORDINAL = Task(
    "ordinal",
    True,
    False,
    True,
    "kappa_quadratic",
    ("auroc", "accuracy", "kappa", "kappa_quadratic"),
)
REGRESSION = Task("regression", False, False, False, "mae", ("mae", "r2"))
TASK: dict[str, Task] = {t.name: t for t in (BINARY, MULTICLASS, ORDINAL, REGRESSION)}
TASKS = tuple(TASK)  # the task names a TaskInfo can hold


def task_named(name: str) -> Task:
    """The :class:`Task` called ``name``.

    Raises:
        ConfigError: an unknown name, listing the known ones.
    """
    try:
        return TASK[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name
        raise ConfigError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}") from None


def predicted_class(task: str, probs: np.ndarray) -> np.ndarray:
    """The class a clinician is shown, (N,) int (:meth:`Task.shown_class`)."""
    return task_named(task).shown_class(probs)


@dataclass
class TaskInfo:
    """The task and its classes in the network's output order (the positive class of a
    binary task last), or for regression the target's mean and sd used to standardise
    and its (min, max) range, over which binned accuracies are computed."""

    task: str
    classes: list[Any] | None
    target_mean: float = 0.0
    target_std: float = 1.0
    value_range: tuple[float, float] | None = None

    @property
    def kind(self) -> Task:
        """The :class:`Task` this model solves."""
        return task_named(self.task)

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.kind.classifies else 1

    def encode(self, labels: pd.Series) -> np.ndarray:
        """Labels → class indices (int64) or standardised targets (float32)."""
        if not self.kind.classifies:
            values = pd.to_numeric(labels, errors="coerce").astype(float)
            return ((values - self.target_mean) / self.target_std).to_numpy("float32")
        index = {label_key(c): i for i, c in enumerate(self.classes)}
        keys = [label_key(v) for v in labels]
        unknown = sorted({k for k in keys if k not in index})
        if unknown:
            raise ConfigError(f"labels {unknown} are not among the model's classes {self.classes}")
        return np.array([index[k] for k in keys], dtype=np.int64)

    def outputs_to_scores(self, outputs: np.ndarray) -> np.ndarray:
        """Network outputs → class probabilities (N, K), or predictions (N,) in label units."""
        if not self.kind.classifies:
            return outputs[:, 0] * self.target_std + self.target_mean
        return softmax(np.asarray(outputs, dtype=np.float64), axis=1)

    def referable_index(self, referable_from: Any) -> int | None:
        """The class index of grade ``referable_from`` (ordinal tasks), None if not given."""
        if referable_from is None:
            return None
        keys = [label_key(c) for c in self.classes or []]
        if not self.kind.graded or label_key(referable_from) not in keys[1:]:
            raise ConfigError(
                f"referable_from={referable_from!r} needs task=ordinal and one of the grades "
                f"above the lowest: {self.classes[1:] if self.classes else []}"
            )
        return keys.index(label_key(referable_from))


def infer_task(labels: pd.Series, requested: str = "auto", positive_class: Any = None) -> TaskInfo:
    """Decide the task from labels.

    ``auto``: non-integer numbers → regression; 2 classes → binary; 3 to
    :data:`MAX_AUTO_CLASSES` → multiclass; more whole numbers is refused (ask for
    ``regression`` or ``multiclass``). ``ordinal`` must be asked for: order is a claim.
    Binary: ``positive_class`` is output 1; without it the larger of two numbers, and
    two texts must name it (no guessing which of "normal"/"abnormal" is positive).
    """
    values = labels.dropna()
    if values.empty:
        raise ConfigError("no labelled scans; ingest with `--labels labels.csv`")
    numeric = pd.to_numeric(values, errors="coerce")
    is_number = bool(numeric.notna().all())
    integral = is_number and bool(np.all(np.mod(numeric, 1) == 0))
    task = requested
    if task == "auto":  # the user's request, not yet a task
        if is_number and not integral:
            task = "regression"
        else:
            distinct = values.map(label_key).nunique()
            if distinct > MAX_AUTO_CLASSES:
                raise ConfigError(
                    f"{distinct} distinct whole-number labels: is this a measurement? use "
                    "--set task=regression (or task=multiclass if they are classes)"
                )
            task = "binary" if distinct == 2 else "multiclass"
    kind = task_named(task)
    if not kind.classifies:
        if not is_number:
            raise ConfigError("regression needs numeric labels")
        std = float(numeric.std()) if len(numeric) > 1 else 0.0
        std = std if np.isfinite(std) and std > 0 else 1.0
        lo, hi = float(numeric.min()), float(numeric.max())
        span = (lo, hi) if hi > lo else None
        return TaskInfo("regression", None, float(numeric.mean()), std, span)
    if kind.graded and not integral:
        raise ConfigError("ordinal grades must be integers (0, 1, 2 ...)")
    if integral:
        classes: list[Any] = sorted({int(v) for v in numeric})
    else:
        classes = sorted({label_key(v) for v in values})
    if len(classes) < 2:
        raise ConfigError(f"only one class ({classes}) in the labels; a classifier needs two")
    if kind.operating_point:
        classes = _positive_last(classes, positive_class, integral)
    elif positive_class is not None:
        raise ConfigError("positive_class applies to binary tasks only")
    return TaskInfo(task, classes)


def _positive_last(classes: list[Any], positive: Any, integral: bool) -> list[Any]:
    if len(classes) != 2:
        raise ConfigError(f"task binary but {len(classes)} classes: {classes}")
    if positive is None:
        if integral:
            return classes
        raise ConfigError(
            f"which of {classes} is the positive class? add --set positive_class={classes[1]!r}"
        )
    keys = [label_key(c) for c in classes]
    if label_key(positive) not in keys:
        raise ConfigError(f"positive_class {positive!r} is not one of the labels {classes}")
    return sorted(classes, key=lambda c: label_key(c) == label_key(positive))
