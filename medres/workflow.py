"""The two jobs behind ``medres train`` and ``medres evaluate``.

:func:`train_bundle`: cohort → :func:`~medres.train.fit` → operating point chosen on
validation → validation (and test) evaluation with patient-level CIs → bundle with
model card. :func:`evaluate_bundle`: bundle + cohort split → report folder.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medres.bundle import load_bundle, save_bundle
from medres.cohort import Cohort
from medres.errors import ConfigError
from medres.evaluate import Evaluation, choose_threshold, evaluate, write_report
from medres.train import CHECKPOINT, ScanDataset, TaskInfo, TrainConfig, fit, infer, make_loader
from medres.transforms import PreprocessSpec


def train_bundle(
    cohort_path: str | Path,
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    show_progress: bool = True,
) -> tuple[Path, dict[str, Evaluation]]:
    """Train on ``cohort_path`` and write the bundle to ``out``.

    Returns the ``bundle.json`` path and the evaluations (``val``, and ``test`` when the
    cohort has labelled test scans). The training checkpoint is removed once the bundle
    is complete.
    """
    out = Path(out)
    cohort = Cohort.load(cohort_path)
    if (out / "bundle.json").exists() and not resume:
        raise ConfigError(f"{out} already holds a bundle; choose a new -o folder")
    result = fit(cohort, config, out, resume=resume, show_progress=show_progress)
    rows = {split: _split_rows(cohort, split) for split in ("val", "test")}
    scores = {
        s: score_rows(result.model, result.info, result.spec, r)
        for s, r in rows.items()
        if not r.empty
    }
    threshold = None
    if result.info.task == "binary":
        y_val, p_val = scores["val"]
        threshold = choose_threshold(y_val, p_val[:, 1])
    evaluations = {
        split: _evaluate(result.info, rows[split], y, s, threshold, config.referable_from)
        for split, (y, s) in scores.items()
    }
    counts = _counts(cohort)
    card_facts = {
        "model": config.model,
        "spec": result.spec,
        "info": result.info,
        "best_epoch": result.best_epoch,
        "metric": result.metric,
        "counts": counts,
        "patients_known": bool(cohort.ok["patient_id"].notna().any()),
        "split_by": cohort.meta.get("split_by"),
    }
    bundle_json = save_bundle(
        out,
        model=result.model,
        model_name=config.model,
        model_args=result.model_args,
        spec=result.spec,
        info=result.info,
        config=config.model_dump(mode="json"),
        training={
            "best_epoch": result.best_epoch,
            "metric": result.metric,
            "best_score": result.best_score,
            "epochs_run": len(result.history),
            "seconds": round(result.seconds, 1),
            "seed": config.seed,
            "referable_from": config.referable_from,
        },
        cohort={
            "path": str(Path(cohort_path).resolve()),
            "fingerprint": fingerprint(cohort),
            "counts": {k: counts[k] for k in ("by_split", "sites")},
            "split_by": cohort.meta.get("split_by"),
        },
        metrics={split: ev.to_dict() for split, ev in evaluations.items()},
        model_card=model_card(card_facts, evaluations),
        threshold=threshold,
    )
    shutil.rmtree(out / CHECKPOINT.parent, ignore_errors=True)
    return bundle_json, evaluations


def evaluate_bundle(
    bundle_path: str | Path, cohort_path: str | Path, out: str | Path, *, split: str = "test"
) -> tuple[Path, Evaluation]:
    """Evaluate a bundle on one split of a cohort; writes ``out/report.json`` etc."""
    bundle = load_bundle(bundle_path)
    cohort = Cohort.load(cohort_path)
    rows = _split_rows(cohort, split)
    if rows.empty:
        raise ConfigError(
            f"{cohort_path} has no labelled '{split}' scans; choose --split among "
            f"{sorted(cohort.ok['split'].dropna().unique())}"
        )
    y, scores = score_rows(bundle.model, bundle.info, bundle.spec, rows)
    referable = bundle.manifest.get("training", {}).get("referable_from")
    evaluation = _evaluate(bundle.info, rows, y, scores, bundle.threshold, referable)
    extra = {"bundle_id": bundle.id, "split": split, "cohort": str(Path(cohort_path).resolve())}
    report = write_report(evaluation, out, title=f"medres evaluation — {split}", extra=extra)
    return report, evaluation


def score_rows(
    model, info: TaskInfo, spec: PreprocessSpec, rows: pd.DataFrame, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(targets (N,), scores) for manifest rows: probabilities (N, K) or predictions (N,)."""
    dataset = ScanDataset(rows, info.encode(rows["label"]), spec, train=False)
    outputs = infer(model, make_loader(dataset, batch_size, 0, shuffle=False, seed=0))
    targets = dataset.targets.numpy()
    if info.task == "regression":
        targets = targets * info.target_std + info.target_mean
    return targets, info.outputs_to_scores(outputs)


def fingerprint(cohort: Cohort) -> str:
    """sha256 of the cohort's usable rows (scan id, pixel hash, label, split): the same
    scans with the same labels and splits give the same fingerprint."""
    cols = ["scan_id", "pixel_hash", "label", "split"]
    table = cohort.ok[cols].astype(str).sort_values("scan_id")
    return hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()


def model_card(facts: dict[str, Any], evaluations: dict[str, Evaluation]) -> str:
    """``model_card.md``: intended use, data, metrics with CIs, limitations."""
    info, spec = facts["info"], facts["spec"]
    what = (
        "a continuous score"
        if info.task == "regression"
        else f"{info.task} classification into {', '.join(map(str, info.classes))}"
    )
    lines = [
        f"# Model card — {facts['model']} ({spec.spatial_dims}D, preset {spec.preset})",
        "",
        "## Intended use",
        "",
        f"Research and decision support: {what} of {spec.spatial_dims}D scans preprocessed "
        f"with the `{spec.preset}` preset to {'×'.join(map(str, spec.spatial_size))} voxels. "
        "Not a medical device; every output needs a clinician's review.",
        "",
        "## Data",
        "",
        facts["counts"]["markdown"],
        "",
        "## Training",
        "",
        f"Selected epoch {facts['best_epoch']} by validation {facts['metric']}.",
        "",
    ]
    for split, ev in evaluations.items():
        lines += [
            f"## Metrics — {split} ({ev.n_scans} scans, {ev.n_patients} patients)",
            "",
            "| metric | scans (95 % CI) | patients (95 % CI) |",
            "|---|---|---|",
        ]
        for name, m in ev.metrics.items():
            p = ev.patient_metrics.get(name)
            lines.append(f"| {name} | {_ci(m)} | {_ci(p) if p else 'n/a'} |")
        lines.append("")
    lines += ["## Limitations", "", *(f"- {x}" for x in _limitations(facts, evaluations)), ""]
    return "\n".join(lines)


def _limitations(facts, evaluations) -> list[str]:
    notes = []
    if not facts["patients_known"] or facts["split_by"] == "scan":
        notes.append(
            "The cohort has no patient ids: splits are by scan, so one patient's "
            "scans may sit in training and test, and the metrics may be optimistic."
        )
    sites = facts["counts"]["sites"]
    if len(sites) <= 1:
        notes.append(
            f"Trained on one site ({', '.join(sites) or 'unnamed'}): performance on "
            "other scanners and populations is unknown until measured."
        )
    if "test" not in evaluations:
        notes.append("No test split was evaluated; run `medres evaluate` on held-out data.")
    small = [s for s, ev in evaluations.items() if ev.n_patients < 100]
    if small:
        notes.append(f"Few patients in {', '.join(small)}: wide confidence intervals.")
    notes.append("Probabilities are not yet calibrated; treat them as scores, not risks.")
    return notes


def _ci(m) -> str:
    if m.value != m.value:
        return "n/a"
    ci = "" if m.ci_low != m.ci_low else f" ({m.ci_low:.3f}–{m.ci_high:.3f})"
    return f"{m.value:.3f}{ci}"


def _counts(cohort: Cohort) -> dict[str, Any]:
    ok = cohort.ok[cohort.ok["label"].notna()]
    table = pd.crosstab(ok["label"].astype(str), ok["split"].fillna("none"))
    header = "| label | " + " | ".join(table.columns) + " |"
    rows = [
        f"| {label} | " + " | ".join(str(v) for v in row) + " |" for label, row in table.iterrows()
    ]
    sites = ok["site"].dropna().astype(str).value_counts().to_dict()
    site_line = ", ".join(f"{s}: {n}" for s, n in sites.items()) or "no site recorded"
    markdown = "\n".join(
        [header, "|---" * (len(table.columns) + 1) + "|", *rows, "", f"Scans by site: {site_line}."]
    )
    return {
        "by_split": {c: table[c].to_dict() for c in table.columns},
        "sites": sites,
        "markdown": markdown,
    }


def _split_rows(cohort: Cohort, split: str) -> pd.DataFrame:
    ok = cohort.ok
    return ok[(ok["split"] == split) & ok["label"].notna()]


def _evaluate(info: TaskInfo, rows, y, scores, threshold, referable_from) -> Evaluation:
    return evaluate(
        y,
        scores,
        task=info.task,
        classes=[str(c) for c in info.classes or []] or None,
        patient_ids=rows["patient_id"].to_numpy(),
        sites=rows["site"].to_numpy(),
        threshold=threshold,
        referable_from=referable_from,
    )
