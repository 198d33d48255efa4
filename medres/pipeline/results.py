"""A pipeline run's results: one table row per run, written as ``results.md`` / ``.json``.

For each headline metric the table shows the model's own validation estimate beside
its test result with the 95 % patient-bootstrap interval, and the gap test − val. The
gap's interval treats the two estimates as independent (they come from disjoint
scans) and combines each side of the two intervals separately (MOVER, Newcombe 1998),
so a skewed interval stays skewed and a gap of bounded metrics stays within its bounds
— an approximation, stated in the table's notes.
"""

from __future__ import annotations

import json
import math
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from medres import __version__
from medres.evaluate.metrics import MetricCI
from medres.evaluate.report import format_metric
from medres.files import jsonable, write_text
from medres.pipeline.config import PipelineConfig, Variant


def collect(variant: Variant, here: Path) -> dict[str, Any]:
    """Everything a results row needs from one run folder (bundle, report, predictions)."""
    from medres.bundle import load_bundle

    bundle = load_bundle(here / "bundle")
    manifest = bundle.manifest
    training = manifest.training
    val = json.loads((here / "bundle" / "metrics.json").read_text())["val"]
    report = json.loads((here / "report" / "report.json").read_text())
    run = json.loads((here / "predictions" / "run.json").read_text())
    history = pd.read_csv(here / "bundle" / "metrics.csv")  # one row per epoch, all sessions
    return {
        "name": variant.name,
        "label": variant.label or variant.name,
        "model": manifest.model.name,
        "task": manifest.task,
        "parameters": sum(p.numel() for p in bundle.model.parameters()),
        "train_seconds": float(history["seconds"].sum()),
        "seconds_per_epoch": float(history["seconds"].mean()),
        "epochs_run": training.epochs_run,
        "best_epoch": training.best_epoch,
        "val": val["metrics"],
        "test": report["metrics"],
        "test_patient": report.get("patient_metrics", {}),
        "n_test_scans": report["n_scans"],
        "n_test_patients": report["n_patients"],
        "n_val_scans": val["n_scans"],
        "per_class": report.get("conformal_per_class"),
        "value_range": manifest.target.range,
        "flag_below": training.flag_below,
        "referral_sentence": report.get("referral_sentence"),
        "predict": {
            "scans_per_second": run["scans_per_second"],
            "counts": run["counts"],
            "options": run["options"],
        },
        "heatmaps": _heatmaps(here / "predictions"),
        "folder": str(here),
    }


def _heatmaps(predictions: Path, n: int = 4) -> list[str]:
    table = pd.read_parquet(predictions / "predictions.parquet")
    if "heatmap" not in table:
        return []
    run = predictions.parents[1]  # paths relative to the run folder, like results.md
    return [str((predictions / p).relative_to(run)) for p in table["heatmap"].dropna().head(n)]


def as_metric(m: dict | None) -> MetricCI | None:
    """A ``{value, ci_low, ci_high}`` dict read from JSON (null = NaN) as a MetricCI."""
    if not m:
        return None
    number = [math.nan if m.get(k) is None else float(m[k]) for k in ("value", "ci_low", "ci_high")]
    return MetricCI(*number)


def gap(val: dict | None, test: dict | None) -> MetricCI | None:
    """test − val with an approximate 95 % interval for independent estimates (MOVER:
    lower end from the test interval's lower and validation's upper distance, and vice
    versa); None when either is missing; NaN ends when either interval is missing."""
    v, t = as_metric(val), as_metric(test)
    if v is None or t is None:
        return None
    diff = t.value - v.value
    down = math.hypot(t.value - t.ci_low, v.ci_high - v.value)  # NaN propagates
    up = math.hypot(t.ci_high - t.value, v.value - v.ci_low)
    return MetricCI(diff, diff - down, diff + up)


def machine() -> str:
    """One line naming the machine a run was measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu}, {cores} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, medres {__version__}"
    )


def write_results(
    config: PipelineConfig, results: list[dict], out: Path, seconds: dict[str, float]
) -> Path:
    """``out/results.json`` and ``out/results.md``; returns the Markdown path."""
    facts = {
        "pipeline": config.name,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "total_minutes": round(sum(seconds.values()) / 60, 1),
        "step_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "runs": results,
    }
    write_text(out / "results.json", json.dumps(jsonable(facts), indent=2) + "\n")
    path = out / "results.md"
    write_text(path, results_markdown(config, facts))
    return path


def results_markdown(config: PipelineConfig, facts: dict) -> str:
    """The results as Markdown: the headline table, then per-run details."""
    runs = facts["runs"]
    lines = [
        f"# {config.name}: results",
        "",
        *([f"**Question.** {config.question}", ""] if config.question else []),
        *([f"**Data.** {config.data.about}", ""] if config.data.about else []),
        f"Machine: {facts['machine']}. Results written {facts['finished']}; "
        f"whole pipeline {facts['total_minutes']} min (all sessions of the run).",
        "",
        *_headline_table(config.headline, runs),
        "",
        "Test figures: the test split with 95 % patient-bootstrap intervals. *val* is the "
        "model's own validation estimate (what you would have believed without a test set); "
        "the gap's interval treats the two as independent samples (approximate). "
        "Inference speed: `medres predict`'s prediction loop (reading, preprocessing, model, "
        "calibration and uncertainty; finding the files and loading the bundle excluded).",
        *_threshold_note(runs),
        *_missing_headline(config.headline, runs),
        "",
        *_cost_table(runs),
    ]
    for run in runs:
        lines += _details(run)
    lines += ["", "## Step times", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in facts["step_seconds"].items()]
    return "\n".join(lines) + "\n"


def _fmt(m: dict | None) -> str:
    return format_metric(as_metric(m))


def _headline_table(headline: list[str], runs: list[dict]) -> list[str]:
    head, rule = ["run"], ["---"]
    for name in headline:
        head += [f"val {name}", f"test {name} (95 % CI)", f"gap test − val ({name})"]
        rule += ["---"] * 3
    rows = [f"| {' | '.join(head)} |", f"|{'|'.join(rule)}|"]
    for run in runs:
        cells = [run["label"]]
        for name in headline:
            val, test = run["val"].get(name), run["test"].get(name)
            shown = as_metric(val) and MetricCI(as_metric(val).value, math.nan, math.nan)
            cells += [format_metric(shown), _fmt(test)]
            cells += [format_metric(gap(val, test))]
        rows.append(f"| {' | '.join(cells)} |")
    return rows


def _threshold_note(runs: list[dict]) -> list[str]:
    """Binary runs mix two decisions; say which figure uses which."""
    if not any("sensitivity" in run["test"] for run in runs):
        return []
    return [
        "",
        "Binary runs: sensitivity, specificity, F1, PPV, NPV and accuracy_at_threshold use the "
        "decision threshold chosen on validation; accuracy and balanced_accuracy use argmax "
        "(probability ≥ 0.5, as the MedMNIST paper), so balanced accuracy is not the mean of "
        "the sensitivity and specificity shown.",
    ]


def _missing_headline(headline: list[str], runs: list[dict]) -> list[str]:
    """A note naming the headline metrics no run reported, and the ones it could use."""
    reported = {name for run in runs for name in (*run["val"], *run["test"])}
    missing = [name for name in headline if name not in reported]
    if not missing:
        return []
    return [
        "",
        f"**No run reported {', '.join(missing)}** (shown as n/a): fix `headline` in "
        f"config.toml and run again with --resume (results are rebuilt, nothing retrains). "
        f"Reported metrics: {', '.join(sorted(reported))}.",
    ]


def _cost_table(runs: list[dict]) -> list[str]:
    rows = [
        "| run | model | parameters | train s/epoch | epochs run (best) | inference scans/s "
        "| test scans (patients) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        rate = r["predict"]["scans_per_second"]
        rows.append(
            f"| {r['label']} | {r['model']} | {r['parameters'] / 1e6:.1f} M "
            f"| {r['seconds_per_epoch']:.0f} | {r['epochs_run']} ({r['best_epoch']}) "
            f"| {f'{rate:.1f}' if rate else '—'} | {r['n_test_scans']} ({r['n_test_patients']}) |"
        )
    options = runs[0]["predict"]["options"] if runs else {}
    extras = [k for k in ("explain", "tta") if options.get(k)]
    if options.get("mc_samples"):
        extras.append(f"{options['mc_samples']} MC-dropout samples")
    note = f" (with {', '.join(extras)})" if extras else ""
    return [*rows, "", f"Inference: `medres predict` over the test scans{note}."]


def _details(run: dict) -> list[str]:
    lines = ["", f"## {run['label']}", ""]
    test = run["test"]
    shown = [k for k in test if isinstance(test[k], dict) and "value" in test[k]]
    lines += ["| test metric | value (95 % CI) |", "|---|---|"]
    lines += [f"| {k} | {_fmt(test[k])} |" for k in shown]
    patient = {k: m for k, m in run.get("test_patient", {}).items() if k in test}
    if run["n_test_patients"] < run["n_test_scans"] and patient:
        lines += ["", f"Patient level ({run['n_test_patients']} patients):", ""]
        lines += ["| metric | value (95 % CI) |", "|---|---|"]
        lines += [f"| {k} | {_fmt(m)} |" for k, m in patient.items()]
    if run.get("value_range"):
        lo, hi = run["value_range"]
        lines += ["", f"Binned accuracies: 3, 5 and 10 equal-width bins of [{lo:.3f}, {hi:.3f}]."]
    if run.get("flag_below") is not None:
        flagged = run["predict"]["counts"].get("referred")
        lines += [
            "",
            f"QA gate (flag_below = {run['flag_below']:g}): `medres predict` referred "
            f"{flagged} of {run['n_test_scans']} test scans; flag_sensitivity / "
            "flag_specificity above count the scans truly below / above the threshold.",
        ]
    if run.get("referral_sentence"):
        lines += ["", run["referral_sentence"]]
    if run.get("per_class"):
        keys = list(run["per_class"][0])
        lines += ["", "By true class:", "", f"| {' | '.join(keys)} |", f"|{'---|' * len(keys)}"]
        for row in run["per_class"]:
            cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
            lines.append(f"| {' | '.join(cells)} |")
    if run.get("heatmaps"):
        lines += ["", "Grad-CAM examples: " + ", ".join(f"`{h}`" for h in run["heatmaps"])]
    return lines
