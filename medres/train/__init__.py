"""Training: a split cohort → the selected model (:func:`fit`).

- :mod:`~medres.train.config`: :class:`TrainConfig` and its cross-field validators;
- :mod:`~medres.train.data`: the cohort's rows, the preprocessing spec, datasets, loaders;
- :mod:`~medres.train.steps`: loss, optimiser, schedule, weight average, one epoch,
  inference, the selection score and rule, the time limit;
- :mod:`~medres.train.state`: :class:`Selection`, the run's state, :class:`StopReason`;
- :mod:`~medres.train.checkpoint`: ``checkpoints/last.pt`` and ``metrics.csv``;
- :mod:`~medres.train.loop`: :func:`fit`, which calls them in order.

The train *job* (cohort → audit → fit → trust → bundle and model card) is
:func:`medres.train_job.train_bundle`: it writes a bundle, a later stage than training.
"""

from medres.inference import auto_workers
from medres.train.checkpoint import CHECKPOINT
from medres.train.config import TrainConfig, task_conflict
from medres.train.data import ReadScan, ScanDataset, make_loader
from medres.train.loop import NORM_SCANS, FitResult, fit
from medres.train.state import RunState, Selection, StopReason
from medres.train.steps import (
    auto_stem_stride,
    infer,
    selection_score,
    selects,
    train_one_epoch,
    weight_average,
    within_time_limit,
)

__all__ = [
    "CHECKPOINT",
    "NORM_SCANS",
    "FitResult",
    "ReadScan",
    "RunState",
    "ScanDataset",
    "Selection",
    "StopReason",
    "TrainConfig",
    "auto_stem_stride",
    "auto_workers",
    "fit",
    "infer",
    "make_loader",
    "selection_score",
    "selects",
    "task_conflict",
    "train_one_epoch",
    "weight_average",
    "within_time_limit",
]
