"""Honest evaluation: metrics with patient-level bootstrap CIs, per site, and reports."""

from medres.evaluate.evaluation import (
    TASKS,
    Evaluation,
    choose_threshold,
    evaluate,
)
from medres.evaluate.metrics import MetricCI
from medres.evaluate.report import metrics_table, write_report

__all__ = [
    "TASKS",
    "Evaluation",
    "MetricCI",
    "choose_threshold",
    "evaluate",
    "metrics_table",
    "write_report",
]
