"""``TrainConfig``: everything that decides a training run, checked as a whole.

Field constraints check one setting each; the validators below check settings against
each other, so a bad combination fails when the config is read (``medres train``,
``medres run``, ``medres retrain``), before any data is prepared. A check that needs the
data (the task when ``task="auto"``, the classes) runs in :func:`~medres.train.fit`,
through the same :func:`task_conflict`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medres.tasks import task_named
from medres.train.class_names import parse_class_names
from medres.transforms import PreprocessSpec
from medres.uncertainty.trust import TrustConfig


class TrainConfig(BaseModel):
    """Everything that decides a training run (written next to the bundle).

    The defaults are the documented ``medres train --cohort`` defaults, the same for
    every dataset: ResNet-18, AdamW (lr 1e-3, weight decay 1e-4), batch 64, 30 epochs
    with one warm-up epoch and a cosine schedule, dropout 0.2, early stopping after 10
    epochs without a better validation score, and no time limit (``time_limit_minutes``,
    0 = none: a limit ends a run sooner on a busy machine, so the same command would give
    different models on different days; a benchmark with a budget sets one: then no epoch
    starts that would, at the run's mean epoch time so far, end past it); validation,
    selection and the bundle use an exponential moving average of the weights with a
    time constant of ``ema_epochs`` (2 epochs; 0 = the raw weights); ``trust``
    (calibration, conformal sets, referral, OOD) is fitted on validation after training.
    Scores within ``selection_tolerance`` of the best seen count as ties, decided by the
    lower validation loss.

    Regression only: ``value_range`` (min, max) of the target for the binned accuracies
    (default: the training targets' range); ``flag_below`` turns a prediction below it
    into a referral in ``medres predict`` (a QA gate, e.g. predicted SSIM < 0.9).

    Classifiers only: ``class_names`` maps each class to the name people read
    (``--set class_names=0=normal,1=pneumonia``, or a TOML table; :mod:`medres.train.class_names`);
    default: the labels as text. Checked against the cohort's classes when training starts.
    """

    model_config = ConfigDict(extra="forbid")
    task: Literal["auto", "binary", "multiclass", "ordinal", "regression"] = "auto"
    model: str = "resnet18"
    model_args: dict[str, Any] = {}
    preprocess: PreprocessSpec | None = None
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    warmup_epochs: int = Field(1, ge=0)
    class_weights: Literal["none", "balanced"] = "none"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    ema_epochs: float = Field(2.0, ge=0)
    patience: int = Field(10, ge=1)
    time_limit_minutes: float = Field(0.0, ge=0)
    selection_tolerance: float = Field(1e-3, ge=0)
    seed: int = 0
    num_workers: int | None = Field(None, ge=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"  # auto, cpu, cuda or cuda:N (medres.device.resolve_device)
    positive_class: int | str | None = None
    referable_from: int | str | None = None
    value_range: tuple[float, float] | None = None
    flag_below: float | None = None
    class_names: dict[str, str] | None = None

    @field_validator("class_names", mode="before")
    @classmethod
    def _names(cls, value):
        return parse_class_names(value)

    @field_validator("value_range")
    @classmethod
    def _ordered(cls, span):
        if span is not None and not span[0] < span[1]:
            raise ValueError(f"value_range must be [min, max] with min < max; got {list(span)}")
        return span

    trust: TrustConfig = Field(default_factory=TrustConfig)

    @model_validator(mode="after")
    def _fits_its_task(self):
        """A task named in the config is checked here; ``auto`` once fit knows it."""
        problem = task_conflict(self, self.task) if self.task != "auto" else None
        if problem:
            raise ValueError(problem)
        return self


def task_conflict(config: TrainConfig, task: str) -> str | None:
    """Why ``config`` cannot train a ``task`` model, or None: regression-only settings
    on another task, a binary-only calibration on a task that is not binary."""
    kind = task_named(task)
    if (config.value_range or config.flag_below is not None) and kind.classifies:
        return f"value_range and flag_below apply to regression; task is {task}"
    if config.class_names and not kind.classifies:
        return "class_names apply to classifiers; task is regression: remove class_names"
    if config.trust.calibration in ("platt", "isotonic") and not kind.operating_point:
        return (
            f"trust.calibration={config.trust.calibration} fits binary tasks only and this "
            f"task is {task}; use --set trust.calibration=temperature"
        )
    return None
