"""The two jobs behind ``medres train`` and ``medres evaluate``.

:func:`train_bundle`: cohort → :func:`~medres.train.fit` → operating point chosen on
validation → validation (and test) evaluation with patient-level CIs → bundle with
model card. :func:`evaluate_bundle`: bundle + cohort split → report folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medres.bundle import Bundle, load_bundle, save_bundle, update_bundle
from medres.cohort import Cohort, photometric
from medres.errors import ConfigError
from medres.evaluate import Evaluation, choose_threshold, evaluate, write_report
from medres.evaluate.report import format_metric
from medres.evaluate.trust import trust_report
from medres.files import write_text
from medres.frozen import freeze, hash_id, hash_patient
from medres.inference import Scored, score_rows
from medres.split import TrainingAudit, audit_training_cohort
from medres.tasks import Task, TaskInfo, label_key
from medres.train import CHECKPOINT, TrainConfig, fit
from medres.uncertainty.trust import Trust, TrustConfig, fit_trust


def train_bundle(
    cohort_path: str | Path,
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    show_progress: bool = True,
    parent: Bundle | None = None,
    from_scratch: bool = False,
    frozen_before: dict[str, Any] | None = None,
    allow_leakage: bool = False,
    rehearsal_dropped: list[str] | None = None,
) -> tuple[Path, dict[str, Evaluation]]:
    """Train on ``cohort_path`` and write the bundle to ``out``.

    The cohort is audited first (:func:`~medres.split.audit_training_cohort`): a patient
    in two splits, or a test scan's pixel copy in train / val, is refused before anything
    is trained or written, unless ``allow_leakage`` (a deliberate experiment), which
    ``bundle.json`` (``training.leakage_allowed``, ``training.leakage``: counts, the
    patients and the copied scans' ids salted and hashed as in ``frozen_test.json``) and
    the model card's limitations record. ``rehearsal_dropped``: scan_ids a retraining left
    out of its rehearsal (:mod:`medres.retrain`), recorded the same way (a count and
    hashes: bundle.json is meant to be shared, and a scan_id is a path that may hold a
    patient's name, or a DICOM UID).

    With ``parent`` (retraining, :mod:`medres.retrain`) the bundle records it as its
    parent and extends its lineage; training starts from the parent's weights unless
    ``from_scratch``. ``frozen_before``: the parent's frozen test set, extended here with
    this cohort's test split (:mod:`medres.frozen`).

    Returns the ``bundle.json`` path and the evaluations (``val``, and ``test`` when the
    cohort has labelled test scans). The training checkpoint is removed once the bundle
    is complete.

    Raises:
        LeakageError: the audit found leakage and ``allow_leakage`` is False.
    """
    out = Path(out)
    cohort = Cohort.load(cohort_path)
    if (out / "bundle.json").exists() and not resume:
        raise ConfigError(f"{out} already holds a bundle; choose a new -o folder")
    audit = audit_training_cohort(cohort, allow_leakage=allow_leakage)
    frozen_test = freeze(cohort.ok[cohort.ok["split"] == "test"], frozen_before)
    start_from = parent if parent is not None and not from_scratch else None
    result = fit(
        cohort,
        config,
        out,
        resume=resume,
        show_progress=show_progress,
        init_state=start_from.model.state_dict() if start_from else None,
        init_id=start_from.id if start_from else "",
    )
    info = result.info
    trust, evaluations, threshold = _fit_trust_and_evaluate(
        result.model,
        info,
        result.spec,
        cohort,
        config.trust,
        config.referable_from,
        config.flag_below,
    )
    counts = _counts(cohort, result.info.kind)
    card_facts = {
        "model": config.model,
        "task": result.info.task,
        "spec": result.spec,
        "info": result.info,
        "best_epoch": result.best_epoch,
        "metric": result.metric,
        "epochs_run": len(result.history),
        "stopped_by": result.stopped_by.value,
        "counts": counts,
        "split_by": cohort.meta.get("split_by"),
        "split_unit": cohort.meta.get("split_unit"),
        "trust": trust,
        "audit": audit,
        "rehearsal_dropped": list(rehearsal_dropped or []),
    }
    bundle_json = save_bundle(
        out,
        model=result.model,
        model_name=config.model,
        model_args=result.model_args,
        spec=result.spec,
        info=result.info,
        config=result.config.model_dump(mode="json"),
        training={
            "best_epoch": result.best_epoch,
            "metric": result.metric,
            "best_score": result.best_score,
            "epochs_run": len(result.history),
            "stopped_by": result.stopped_by.value,
            "seconds": round(result.seconds, 1),
            "seed": config.seed,
            "referable_from": config.referable_from,
            "flag_below": config.flag_below,
            "leakage_allowed": allow_leakage,
            "leakage": _leakage_record(audit, frozen_test["salt"]),
            **(
                {"rehearsal_dropped": _hashed_scans(rehearsal_dropped, frozen_test["salt"])}
                if rehearsal_dropped
                else {}
            ),
        },
        cohort={
            "path": str(Path(cohort_path).resolve()),
            "fingerprint": cohort.fingerprint(),
            "counts": {k: counts[k] for k in ("by_split", "sites")},
            "split_by": cohort.meta.get("split_by"),
            "modalities": sorted(set(cohort.labelled("train")["modality"].dropna().astype(str))),
            "channels": sorted(
                {int(shape[0]) for shape in cohort.labelled("train")["shape"].dropna()}
            ),
            "photometric": photometric(cohort.labelled("train")),
            **{k: cohort.meta[k] for k in ("sources", "reviews") if k in cohort.meta},
        },
        metrics={split: ev.to_dict() for split, ev in evaluations.items()},
        model_card=model_card(card_facts, evaluations),
        threshold=threshold,
        trust=trust,
        parent_id=parent.id if parent is not None else None,
        parent_lineage=parent.lineage if parent is not None else [],
        frozen_test=frozen_test,
    )
    shutil.rmtree(out / CHECKPOINT.parent, ignore_errors=True)
    return bundle_json, evaluations


def _leakage_record(audit: TrainingAudit, salt: str) -> dict[str, Any]:
    """``training.leakage`` of bundle.json: what the audit let through. Patient ids and
    scan_ids are salted and hashed with the bundle's frozen-test salt (:mod:`medres.frozen`),
    never written in clear text: ``test_copy_hashes`` holds one list per group of
    identical images (a test scan and its copies)."""
    return {
        "patients": len(audit.leaked_patients),
        "patient_hashes": sorted(hash_patient(salt, p) for p in audit.leaked_patients),
        "test_copies": len(audit.test_copies),
        "test_copy_hashes": sorted(sorted(hash_id(salt, s) for s in g) for g in audit.test_copies),
        "train_val_copies": len(audit.train_val_copies),
    }


def _hashed_scans(scan_ids: list[str], salt: str) -> dict[str, Any]:
    """A count and the salted hashes of ``scan_ids``, as bundle.json may hold them."""
    return {"scans": len(scan_ids), "scan_hashes": sorted(hash_id(salt, s) for s in scan_ids)}


def calibrate_bundle(
    bundle_path: str | Path, cohort_path: str | Path, config: TrustConfig | None = None
) -> dict[str, Evaluation]:
    """Fit (or refit) a bundle's trust layer on a cohort's validation split — e.g. a
    bundle from an older medres, or a new site's validation scans — and rewrite its
    ``calibration.json``, ``ood.safetensors``, operating point and ``metrics.json``.
    The weights are untouched. Returns the new evaluations (val, and test if present)."""
    bundle = load_bundle(bundle_path)
    if not bundle.info.kind.classifies:
        raise ConfigError("regression bundles have no calibration, conformal sets or referral")
    cohort = Cohort.load(cohort_path)
    referable = bundle.training.referable_from
    trust, evaluations, threshold = _fit_trust_and_evaluate(
        bundle.model, bundle.info, bundle.spec, cohort, config or TrustConfig(), referable
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


def _fit_trust_and_evaluate(
    model, info, spec, cohort, trust_config, referable_from, flag_below=None
):
    """Trust layer (classifiers) fitted on validation, the binary operating point chosen
    on the calibrated validation probabilities, and val/test evaluations."""
    rows = {split: cohort.labelled(split) for split in ("val", "test")}
    scored = {split: score_rows(model, info, spec, r) for split, r in rows.items() if not r.empty}
    if "val" not in scored:
        raise ConfigError("the cohort has no labelled validation scans to calibrate on")
    trust = None
    if info.kind.classifies:
        train = score_rows(model, info, spec, cohort.labelled("train"))
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
    assessed = {split: _assess(info, s, trust) for split, s in scored.items()}
    threshold = None
    if info.kind.operating_point:
        threshold = choose_threshold(scored["val"].targets, assessed["val"][0][:, 1])
    referable = info.referable_index(referable_from)
    evaluations = {
        split: _evaluate(info, s, assessed[split], threshold, referable, flag_below)
        for split, s in scored.items()
    }
    return trust, evaluations, threshold


def evaluate_bundle(
    bundle_path: str | Path, cohort_path: str | Path, out: str | Path, *, split: str = "test"
) -> tuple[Path, Evaluation, pd.DataFrame]:
    """Evaluate a bundle on one split of a cohort; writes ``out/report.json``, the plots
    and ``out/failures.csv`` (scans that could not be read: one row each, header always).

    Returns the report path, the evaluation and the failures table."""
    bundle = load_bundle(bundle_path)
    cohort = Cohort.load(cohort_path)
    rows = cohort.labelled(split)
    if rows.empty:
        raise ConfigError(
            f"{cohort_path} has no labelled '{split}' scans; choose --split among "
            f"{sorted(cohort.ok['split'].dropna().unique())}"
        )
    scored = score_rows(bundle.model, bundle.info, bundle.spec, rows)
    if scored.rows.empty:
        raise ConfigError(f"none of the {len(rows)} '{split}' scans could be read; see the errors")
    referable = bundle.info.referable_index(bundle.training.referable_from)
    assessed = _assess(bundle.info, scored, bundle.trust)
    flag_below = bundle.training.flag_below
    evaluation = _evaluate(bundle.info, scored, assessed, bundle.threshold, referable, flag_below)
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


def bundle_probabilities(bundle: Bundle, rows: pd.DataFrame) -> tuple[Scored, np.ndarray]:
    """A bundle over manifest rows: the :class:`Scored` readable rows and their
    calibrated class probabilities (N, K) (raw ones for a bundle without a trust layer;
    predictions (N,) for regression)."""
    scored = score_rows(bundle.model, bundle.info, bundle.spec, rows)
    return scored, _assess(bundle.info, scored, bundle.trust)[0]


def model_card(facts: dict[str, Any], evaluations: dict[str, Evaluation]) -> str:
    """``model_card.md``: intended use, data, metrics with CIs, limitations."""
    info, spec = facts["info"], facts["spec"]
    what = (
        f"{info.task} classification into {', '.join(map(str, info.classes))}"
        if info.kind.classifies
        else "a continuous score"
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
        _patient_notes(facts["audit"])[0],
        "",
        "## Training",
        "",
        f"Trained {facts['epochs_run']} epochs (ended by {facts['stopped_by']}); selected "
        f"epoch {facts['best_epoch']} by validation {facts['metric']}.",
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
            lines.append(f"| {name} | {format_metric(m)} | {format_metric(p) if p else 'n/a'} |")
        lines.append("")
    lines += ["## Limitations", "", *(f"- {x}" for x in _limitations(facts, evaluations)), ""]
    return "\n".join(lines)


def _patient_notes(audit: TrainingAudit) -> tuple[str, list[str]]:
    """What the model card says of the cohort's patient ids, from the audit before
    training: a sentence for its Data section and the limitations they bring."""
    n, known = audit.scans, audit.with_patient_id
    missing = n - known
    scan_level = audit.split_unit == "scan"
    if audit.leaked_patients:
        found = (
            f"{len(audit.leaked_patients)} patient(s) with scans in more than one split "
            "(trained with --allow-leakage, see Limitations)."
        )
    elif scan_level and audit.train_val_patients:
        found = (
            f"{len(audit.train_val_patients)} patient(s) shared by train and validation on "
            "purpose (a scan-level split), none of them in test."
        )
    else:
        found = "no patient with scans in two splits."
    notes = []
    if scan_level:
        notes.append(
            "Train and validation were split scan by scan on purpose (the test set is "
            "patient-level): one patient's scans sit on both sides, so the validation "
            "figures, and the epoch and calibration chosen on them, are optimistic."
        )
    if known == 0:
        line = (
            "No scan has a patient id, so the audit before training could not check "
            "that training and test patients differ."
        )
        notes.append(
            "The cohort has no patient ids: nothing shows that training and test "
            "patients differ, so one patient's scans may sit in both, and the metrics "
            "may be optimistic."
        )
    elif missing == 0:
        line = f"Every scan has a patient id; the audit before training found {found}"
    else:
        line = (
            f"{missing} of {n} scans have no patient id; among the {known} with one, the "
            f"audit before training found {found}"
        )
        notes.append(
            f"{missing} of {n} scans have no patient id: the audit could not check their "
            "patients, so one patient's scans may sit in training and test, and the "
            "metrics may be optimistic."
        )
    return line, notes


def _leakage_notes(audit: TrainingAudit, rehearsal_dropped: list[str]) -> list[str]:
    """Limitations for what the audit let through or found, and for the scans a
    retraining left out of its rehearsal."""
    notes = []
    if audit.leakage_allowed:
        found = []
        if audit.leaked_patients:
            found.append(f"{len(audit.leaked_patients)} patient(s) have scans in two splits")
        if audit.test_copies:
            found.append(f"{len(audit.test_copies)} test scan(s) have copies in train or val")
        if found:
            notes.append(
                "Trained with leakage allowed (--allow-leakage), a deliberate experiment: "
                f"{' and '.join(found)}, so the test figures are optimistic. Not a model "
                "to deploy."
            )
        else:
            notes.append(
                "Trained with --allow-leakage, but the audit found no patient in two "
                "splits and no test scan copied into train or val."
            )
    if audit.train_val_copies:
        notes.append(
            f"{len(audit.train_val_copies)} group(s) of identical images sit in both train "
            "and val: the validation figures, and the epoch and calibration chosen on "
            "them, are slightly optimistic."
        )
    if rehearsal_dropped:
        notes.append(
            f"{len(rehearsal_dropped)} scan(s) of the champion's training cohort were left "
            "out of the rehearsal (--drop-leaking-rehearsal): they belong to test patients "
            "or copy test scans."
        )
    return notes


def _limitations(facts, evaluations) -> list[str]:
    audit = facts["audit"]
    notes = _patient_notes(audit)[1]
    notes += _leakage_notes(audit, facts.get("rehearsal_dropped") or [])
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
    trust = facts.get("trust")
    if trust is not None:
        ref = trust.referral
        notes.append(
            f"Probabilities are calibrated ({trust.config.calibration}) and conformal sets "
            f"target {trust.config.coverage:.0%} coverage on the validation split; on "
            "another site or scanner check both with `medres evaluate` before relying on them."
        )
        if not ref["reachable"]:
            notes.append(
                f"No share of validation scans reached {ref['target_accuracy']:.0%} accuracy, "
                "so every scan is referred for review."
            )
    return notes


def _counts(cohort: Cohort, task: Task) -> dict[str, Any]:
    """Scans per split and class (per split: n, mean, sd of the target for regression)."""
    ok = cohort.ok[cohort.ok["label"].notna()]
    splits = ok["split"].fillna("none")
    if not task.classifies:
        values = pd.to_numeric(ok["label"], errors="coerce")
        table = values.groupby(splits).agg(["count", "mean", "std"]).round(4).T
        table.index = ["n", "mean", "sd"]
    else:
        table = pd.crosstab(ok["label"].map(label_key), splits)
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


def _assess(info: TaskInfo, scored: Scored, trust: Trust | None):
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
        patient_ids=scored.rows["patient_id"].to_numpy(),
    )
    return assessment.probs, report


def _evaluate(
    info: TaskInfo, scored: Scored, assessed, threshold, referable_index, flag_below=None
) -> Evaluation:
    scores, trust = assessed
    evaluation = evaluate(
        scored.targets,
        scores,
        task=info.task,
        classes=[str(c) for c in info.classes or []] or None,
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
