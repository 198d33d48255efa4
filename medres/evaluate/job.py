"""The jobs behind ``medres evaluate`` and ``medres calibrate``, and a bundle over rows.

:func:`evaluate_bundle`: bundle + cohort split → report folder. :func:`calibrate_bundle`:
refit a bundle's trust layer on a cohort's validation split (its weights untouched).
:func:`fit_trust_and_evaluate` (also run by the train job, :mod:`medres.train_job`):
trust layer, operating point and val/test evaluations of a model.
:func:`bundle_probabilities`: a bundle's (calibrated) probabilities for manifest rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medres.bundle import Bundle, load_bundle, update_bundle
from medres.cohort import Cohort
from medres.device import resolve_device
from medres.errors import ConfigError
from medres.evaluate.evaluation import Evaluation, choose_threshold, evaluate
from medres.evaluate.report import format_metric, write_report
from medres.evaluate.trust import trust_report
from medres.files import write_text
from medres.inference import Scored, score_rows
from medres.tasks import TaskInfo
from medres.uncertainty.trust import Trust, TrustConfig, fit_trust


def calibrate_bundle(
    bundle_path: str | Path,
    cohort_path: str | Path,
    config: TrustConfig | None = None,
    *,
    device: str = "auto",
) -> dict[str, Evaluation]:
    """Fit (or refit) a bundle's trust layer on a cohort's validation split — e.g. a
    bundle from an older medres, or a new site's validation scans — and rewrite its
    ``calibration.json``, ``ood.safetensors``, operating point and ``metrics.json``.
    The weights are untouched. Returns the new evaluations (val, and test if present).
    ``device``: where the network runs (:func:`medres.device.resolve_device`)."""
    where = resolve_device(device)
    bundle = load_bundle(bundle_path)
    if not bundle.info.kind.classifies:
        raise ConfigError("regression bundles have no calibration, conformal sets or referral")
    cohort = Cohort.load(cohort_path)
    referable = bundle.training.referable_from
    trust, evaluations, threshold = fit_trust_and_evaluate(
        bundle.model,
        bundle.info,
        bundle.spec,
        cohort,
        config or TrustConfig(),
        referable,
        device=where,
        class_names=list(bundle.class_names.values()),
    )
    card = Path(bundle_path) / "model_card.md"
    write_text(card, _recalibrated_card(card.read_text(), cohort_path, trust, evaluations))
    update_bundle(
        bundle_path,
        files=[*trust.save(bundle_path), "model_card.md"],
        metrics={split: ev.to_dict() for split, ev in evaluations.items()},
        fields={
            "threshold": threshold,
            "calibrated": True,
            "calibration_cohort": {
                "path": str(Path(cohort_path).resolve()),
                "fingerprint": cohort.fingerprint(),
            },
        },
    )
    return evaluations


def _recalibrated_card(card: str, cohort_path, trust: Trust, evaluations) -> str:
    """The model card with its "not yet calibrated" note dropped and a section on the
    refit appended (the training metrics above it stay as they were)."""
    card = card.replace(
        "- Probabilities are not yet calibrated; treat them as scores, not risks.\n", ""
    )
    when = pd.Timestamp.now("UTC").strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Recalibrated {when}",
        "",
        f"Trust layer refit on the validation split of `{cohort_path}` "
        f"({trust.config.calibration}, {trust.config.coverage:.0%} conformal sets, referral "
        f"for {trust.config.target_accuracy:.0%} accuracy). Figures after the refit:",
        "",
        "| split | ece (uncalibrated) | conformal coverage | referral rate | accuracy kept |",
        "|---|---|---|---|---|",
    ]
    for split, ev in evaluations.items():
        m = ev.metrics
        lines.append(
            f"| {split} | {format_metric(m['ece'])} ({format_metric(m['ece_uncalibrated'])}) | "
            f"{format_metric(m['conformal_coverage'])} | {format_metric(m['referral_rate'])} | "
            f"{format_metric(m['accuracy_not_referred'])} |"
        )
    return card.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"


def fit_trust_and_evaluate(
    model,
    info,
    spec,
    cohort,
    trust_config,
    referable_from,
    flag_below=None,
    *,
    device="cpu",
    class_names: list[str] | None = None,
):
    """Trust layer (classifiers) fitted on validation, the binary operating point chosen
    on the calibrated validation probabilities, and val/test evaluations; the network runs
    on ``device``. ``class_names``: the display names of ``info.classes`` for the
    evaluations' tables (default: the labels)."""
    rows = {split: cohort.labelled(split) for split in ("val", "test")}
    scored = {
        split: score_rows(model, info, spec, r, device=device)
        for split, r in rows.items()
        if not r.empty
    }
    if "val" not in scored:
        raise ConfigError("the cohort has no labelled validation scans to calibrate on")
    trust = None
    if info.kind.classifies:
        train = score_rows(model, info, spec, cohort.labelled("train"), device=device)
        val = scored["val"]
        trust = fit_trust(
            info.task,
            trust_config,
            val_logits=val.outputs[0],
            val_targets=val.targets,
            val_features=val.features,
            train_features=train.features if len(train.targets) else None,
            train_targets=train.targets,
        )
    assessed = {split: _assess(info, s, trust, class_names) for split, s in scored.items()}
    threshold = None
    if info.kind.operating_point:
        threshold = choose_threshold(scored["val"].targets, assessed["val"][0][:, 1])
    referable = info.referable_index(referable_from)
    evaluations = {
        split: _evaluate(info, s, assessed[split], threshold, referable, flag_below, class_names)
        for split, s in scored.items()
    }
    return trust, evaluations, threshold


def evaluate_bundle(
    bundle_path: str | Path,
    cohort_path: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    device: str = "auto",
) -> tuple[Path, Evaluation, pd.DataFrame]:
    """Evaluate a bundle on one split of a cohort; writes ``out/report.json``, the plots
    and ``out/failures.csv`` (scans that could not be read: one row each, header always).
    ``device``: where the network runs (:func:`medres.device.resolve_device`).

    Returns the report path, the evaluation and the failures table."""
    where = resolve_device(device)
    bundle = load_bundle(bundle_path)
    cohort = Cohort.load(cohort_path)
    rows = cohort.labelled(split)
    if rows.empty:
        raise ConfigError(
            f"{cohort_path} has no labelled '{split}' scans; choose --split among "
            f"{sorted(cohort.ok['split'].dropna().unique())}"
        )
    scored = score_rows(bundle.model, bundle.info, bundle.spec, rows, device=where)
    if scored.rows.empty:
        raise ConfigError(f"none of the {len(rows)} '{split}' scans could be read; see the errors")
    referable = bundle.info.referable_index(bundle.training.referable_from)
    names = list(bundle.class_names.values()) or None
    assessed = _assess(bundle.info, scored, bundle.trust, names)
    flag_below = bundle.training.flag_below
    evaluation = _evaluate(
        bundle.info, scored, assessed, bundle.threshold, referable, flag_below, names
    )
    extra = {
        "bundle_id": bundle.id,
        "split": split,
        "cohort": str(Path(cohort_path).resolve()),
        "failed_scans": len(scored.failures),
    }
    report = write_report(
        evaluation, out, title=f"medres evaluation — {split}", extra=extra, trust=assessed[1]
    )
    write_text(Path(out) / "failures.csv", scored.failures.to_csv(index=False), private=True)
    return report, evaluation, scored.failures


def bundle_probabilities(
    bundle: Bundle, rows: pd.DataFrame, device="cpu"
) -> tuple[Scored, np.ndarray]:
    """A bundle over manifest rows: the :class:`Scored` readable rows and their
    calibrated class probabilities (N, K) (raw ones for a bundle without a trust layer;
    predictions (N,) for regression)."""
    scored = score_rows(bundle.model, bundle.info, bundle.spec, rows, device=device)
    return scored, _assess(bundle.info, scored, bundle.trust)[0]


def _assess(info: TaskInfo, scored: Scored, trust: Trust | None, class_names=None):
    """``(scores, trust report or None)``: calibrated probabilities (N, K) when the bundle
    has a trust layer (else the raw ones; predictions (N,) for regression)."""
    if trust is None:
        return scored.scores(info), None
    assessment = trust.assess(scored.outputs, scored.features)
    report = trust_report(
        assessment,
        scored.targets,
        referral_score=trust.referral["score"],
        coverage_target=trust.config.coverage,
        classes=[str(c) for c in info.classes],
        class_names=class_names,
        patient_ids=scored.rows["patient_id"].to_numpy(),
    )
    return assessment.probs, report


def _evaluate(
    info: TaskInfo,
    scored: Scored,
    assessed,
    threshold,
    referable_index,
    flag_below=None,
    class_names=None,
) -> Evaluation:
    scores, trust = assessed
    evaluation = evaluate(
        scored.targets,
        scores,
        task=info.task,
        classes=[str(c) for c in info.classes or []] or None,
        class_names=class_names if info.kind.classifies else None,
        patient_ids=scored.rows["patient_id"].to_numpy(),
        sites=scored.rows["site"].to_numpy(),
        threshold=threshold,
        referable_from=referable_index,
        value_range=None if info.kind.classifies else info.value_range,
        flag_below=flag_below,
    )
    if trust is not None:
        evaluation.metrics.update(trust.metrics)
    return evaluation
