"""``model_card.md`` of a trained bundle: intended use, data, training, metrics with CIs,
limitations (what the audit before training found, sites, sample sizes, the trust layer).

Written by the train job (:mod:`medres.train_job`) from its facts about the run; the
calibrate job's note on a refit is :func:`medres.evaluate.job.calibrate_bundle`'s.
"""

from __future__ import annotations

from typing import Any

from medres.evaluate import Evaluation
from medres.evaluate.report import format_metric
from medres.split import TrainingAudit
from medres.train.class_names import display_name


def model_card(facts: dict[str, Any], evaluations: dict[str, Evaluation]) -> str:
    """``model_card.md``: intended use, data, metrics with CIs, limitations."""
    info, spec = facts["info"], facts["spec"]
    what = (
        f"{info.task} classification into {_classes_text(info, facts.get('class_names'))}"
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
        f"Trained {facts['epochs_run']} epochs on {facts['device']} ({facts['precision']}; "
        f"ended by {facts['stopped_by']}); selected epoch {facts['best_epoch']} by validation "
        f"{facts['metric']}. The weights are stored as CPU tensors: the bundle runs on any "
        "device.",
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


# a runtime family's engine as the card names it, and the package whose version it gives
_ENGINES = {"onnx": ("ONNX Runtime", "onnxruntime"), "openvino": ("OpenVINO", "openvino")}


def with_runtime(card: str, runtime: str, record: dict[str, Any]) -> str:
    """The model card with a section on the model exported for ``runtime`` (its
    ``runtimes`` record in ``bundle.json``: file, precision, versions and what it was
    verified against; int8: the gate's figures), replacing that runtime's section of an
    earlier export."""
    heading = f"## Runtime: {runtime}"
    kept, skipping = [], False
    for line in card.rstrip("\n").split("\n"):
        if line.startswith("## "):
            skipping = line == heading or line.startswith(f"{heading} (")
        if not skipping:
            kept.append(line)
    v, versions = record["verified"], record.get("versions", {})
    family = runtime.partition("-")[0]  # onnx-int8: onnx
    engine, package = _ENGINES.get(family, (runtime, family))
    converted = " (OpenVINO IR converted from the ONNX graph)" if family == "openvino" else ""
    lines = [
        f"{heading} ({record['precision']}, exported {record['exported'][:10]})",
        "",
        f"`{record.get('file', 'model.onnx')}`{converted} runs the network in {engine} "
        f"{versions.get(package, '').split('-')[0]} (`medres predict --runtime {runtime}`; "
        "Grad-CAM heatmaps still come from the torch weights). ",
    ]
    if "figures" not in v:  # fp32: the same probabilities as torch
        lines[-1] += (
            f"Verified against {v['against']} on the {v['scans']} scans of the {v['split']} "
            f"split of `{v['cohort']}`: {v['quantity']} differ by at most "
            f"{v['max_abs_diff']:.2g} (accepted up to {v['tolerance']:g})."
        )
        return "\n".join(kept).rstrip("\n") + "\n\n" + "\n".join([*lines, ""])
    q = record.get("quantization", {})
    lines[-1] += (
        f"Quantised to int8 ({q.get('format', 'QDQ')}, weights {q.get('weights', 'int8')}, "
        f"activations {q.get('activations', 'uint8')}), the activation ranges from "
        f"{q.get('scans', '?')} scans of the {q.get('split', 'train')} split of "
        f"`{q.get('cohort', v['cohort'])}`. Its own trust layer (calibration, conformal "
        f"sets, referral threshold; `{record.get('trust')}/`) was refit on the "
        f"{v['scans']} scans of the {v['split']} split of `{v['cohort']}`, where it was "
        f"verified against {v['against']} (fp32) and accepted:"
    )
    lines += ["", *(f"- {check}" for check in v.get("checks", [])), ""]
    return "\n".join(kept).rstrip("\n") + "\n\n" + "\n".join(lines)


def _classes_text(info, class_names: list[str] | None) -> str:
    """The classes as a reader sees them: ``normal (0), pneumonia (1)`` (the label
    alone when it is its own name); binary tasks say which class is positive."""
    names = class_names or [None] * len(info.classes)
    shown = [display_name(c, n) for c, n in zip(info.classes, names, strict=True)]
    text = ", ".join(shown)
    return f"{text} (positive: {shown[-1]})" if info.kind.operating_point else text


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
