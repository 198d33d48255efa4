"""Reading the two cohorts' samples for :mod:`medres.retrain.drift`, and the bundle's
pass over them.

Each cohort's readable rows in scope (:func:`rows_in_scope`) are sampled at random
(:func:`draw_sample`); each sampled scan is read once for its :data:`INTENSITY`
statistics (:func:`scan_statistics`) and, given a bundle, scored with the bundle's own
preprocessing and trust layer into a :class:`ModelDrift` (:func:`read_samples`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medres.bundle import Bundle
from medres.cohort import Cohort, read_row
from medres.errors import ConfigError, ScanError
from medres.retrain.drift_stats import Mix, Shift, mix, rate_shift, shift
from medres.tasks import Task, label_key, predicted_class, task_named

INTENSITY = ("mean", "sd", "p1", "p50", "p99")  # per-scan statistics, the scans' stored units
MAX_VOXELS = 1_000_000  # percentiles of a larger scan use this many voxels drawn at random


@dataclass
class ModelDrift:
    """What a bundle says about both samples. ``shifts``: confidence (mean calibrated
    max probability; raw softmax without a trust layer), OOD rate (classifiers with an
    OOD model) or median prediction (regression); ``predicted``: predicted-class mix;
    ``failed``: scans per side the bundle's preprocessing refused."""

    bundle_id: str
    task: str
    calibrated: bool
    shifts: list[Shift]
    predicted: Mix | None
    failed: dict[str, int]

    @property
    def kind(self) -> Task:
        """The bundle's :class:`~medres.tasks.Task`."""
        return task_named(self.task)


def load_cohort(cohort: Cohort | str | Path) -> tuple[Cohort, str]:
    """The cohort (loaded when given as a path) and where it came from."""
    if isinstance(cohort, str | Path):
        return Cohort.load(cohort), str(Path(cohort).resolve())
    return cohort, str(cohort.meta.get("root") or "(cohort in memory)")


def rows_in_scope(cohort: Cohort, source: str, split: str | None, which: str) -> pd.DataFrame:
    """The cohort's readable rows (of ``split`` if given); ConfigError when there are none."""
    rows = cohort.ok
    if split is not None:
        known = sorted(rows["split"].dropna().astype(str).unique())
        rows = rows[rows["split"] == split]
        if rows.empty:
            raise ConfigError(
                f"the {which} cohort ({source}) has no readable '{split}' scans; choose "
                f"--split among {known} or leave it out"
            )
    if rows.empty:
        raise ConfigError(
            f"the {which} cohort ({source}) has no readable scans ({len(cohort.table)} rows, "
            "none with status=ok); fix or replace the files and run `medres ingest` again"
        )
    return rows


def draw_sample(rows: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Up to ``n`` of ``rows`` drawn at random, in their order."""
    if len(rows) <= n:
        return rows
    return rows.iloc[np.sort(rng.choice(len(rows), n, replace=False))]


def check_dims(bundle: Bundle, rows: pd.DataFrame, which: str) -> None:
    """Refuse before any reading when no sampled scan has the bundle's 2D / 3D shape."""
    dims = bundle.spec.spatial_dims
    found = {len(s) - 1 for s in rows["shape"] if isinstance(s, list | tuple | np.ndarray)}
    if found and dims not in found:
        raise ConfigError(
            f"bundle {bundle.path} takes {dims}D scans (preset {bundle.spec.preset}) but the "
            f"{which} cohort holds {'/'.join(map(str, sorted(found)))}D scans; drop --bundle "
            "or use a bundle trained on scans like these"
        )


def scan_statistics(array: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, float]:
    """mean, sd, 1st / 50th / 99th percentile of a scan's voxels (all channels), in its
    stored units; non-finite voxels ignored; percentiles over at most :data:`MAX_VOXELS`."""
    values = np.asarray(array, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return dict.fromkeys(INTENSITY, math.nan)
    some = values
    if values.size > MAX_VOXELS:
        rng = rng or np.random.default_rng(0)
        some = values[rng.integers(0, values.size, MAX_VOXELS)]
    p1, p50, p99 = np.percentile(some, [1, 50, 99])
    return {"mean": values.mean(), "sd": values.std(), "p1": p1, "p50": p50, "p99": p99}


def read_samples(
    samples: dict[str, pd.DataFrame], bundle: Bundle | None, show_progress: bool
) -> tuple[dict[str, tuple[pd.DataFrame, int]], ModelDrift | None]:
    """Read each side's sample (its per-scan :data:`INTENSITY` table and unreadable
    count) and, given a bundle, run it on both, under one progress display (on stderr,
    shown with ``show_progress``)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    from medres.progress import progress as progress_display

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    console = Console(stderr=True)
    display = progress_display(*columns, console=console, transient=True, disable=not show_progress)
    with display as bar:
        read = {k: _read_sample(s, k, bar) for k, s in samples.items()}
        model = None if bundle is None else _model_drift(bundle, samples, read, bar)
    return read, model


def _read_sample(rows: pd.DataFrame, which: str, bar) -> tuple[pd.DataFrame, int]:
    """Per-scan intensity statistics of the readable sampled scans (indexed like
    ``rows``), and how many could not be read."""
    task = bar.add_task(f"Reading {which} scans", total=len(rows))
    kept, found, failures = [], [], []
    for index, row in rows.iterrows():
        try:
            array = read_row(row).array
        except ScanError as e:
            failures.append(str(e))
        else:
            kept.append(index)
            found.append({"scan_id": row["scan_id"], **scan_statistics(array)})
        bar.advance(task)
    if not found:
        raise ConfigError(
            f"none of the {len(rows)} sampled {which} scans could be read now (first: "
            f"{failures[0]}); the files moved or changed since ingest: ingest them again"
        )
    return pd.DataFrame(found, index=kept, columns=["scan_id", *INTENSITY]), len(failures)


def _model_drift(bundle: Bundle, samples, read, bar) -> ModelDrift:
    """Score each side's readable sample with the bundle (its own preprocessing and
    trust layer); the per-scan outputs become columns of ``read[side][0]``."""
    from medres.inference import score_rows  # torch: imported only when a bundle is given

    info, trust = bundle.info, bundle.trust
    failed = {}
    for which, (scans, _) in read.items():
        rows = samples[which].loc[scans.index]
        task = bar.add_task(f"Scoring {which} scans with the bundle", total=len(rows))
        scored = score_rows(bundle.model, info, bundle.spec, rows, with_targets=False)
        bar.update(task, completed=len(rows))
        failed[which] = len(scored.failures)
        if scored.rows.empty:
            raise ConfigError(
                f"bundle {bundle.path} could not preprocess any of the {len(rows)} sampled "
                f"{which} scans (first: {scored.failures['message'].iloc[0]}); use a bundle "
                "trained on scans like these, or drop --bundle"
            )
        index = scored.rows.index
        if not info.kind.classifies:
            scans.loc[index, "prediction"] = scored.scores(info)
            continue
        assessment = trust.assess(scored.outputs, scored.features) if trust else None
        probs = assessment.probs if assessment else scored.scores(info)
        scans.loc[index, "confidence"] = probs.max(axis=1)
        classes = [label_key(c) for c in info.classes]
        scans.loc[index, "predicted"] = [classes[i] for i in predicted_class(info.task, probs)]
        if trust is not None and trust.ood is not None:
            scans.loc[index, "ood_score"] = assessment.ood_score
            scans.loc[index, "ood"] = assessment.ood.astype(float)
    old, new = read["old"][0], read["new"][0]
    shifts, predicted = [], None
    if not info.kind.classifies:
        shifts.append(shift("prediction", old["prediction"], new["prediction"], True))
    else:
        shifts.append(shift("confidence", old["confidence"], new["confidence"], True, stat="mean"))
        if "ood" in old:
            shifts.append(rate_shift("OOD rate", old["ood"], new["ood"]))
        order = [label_key(c) for c in info.classes]
        predicted = mix("predicted", old["predicted"].dropna(), new["predicted"].dropna(), order)
    return ModelDrift(bundle.id, info.task, trust is not None, shifts, predicted, failed)
