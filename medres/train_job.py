"""The job behind ``medres train`` (and the training step of ``retrain`` and ``run``).

:func:`train_bundle`: cohort → leakage audit → :func:`~medres.train.fit` → trust layer
and operating point chosen on validation → validation (and test) evaluation with
patient-level CIs → bundle with model card (:mod:`medres.model_card`).

Not ``train/job.py``: the job imports ``bundle`` and ``evaluate``, which sit above
``train`` in the import layers (pyproject.toml, ``[tool.importlinter]``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medres.bundle import Bundle, is_bundle, save_bundle
from medres.cohort import Cohort, photometric
from medres.errors import ConfigError
from medres.evaluate import Evaluation
from medres.evaluate.job import fit_trust_and_evaluate
from medres.frozen import freeze, hash_id, hash_patient
from medres.model_card import model_card
from medres.split import TrainingAudit, audit_training_cohort
from medres.tasks import Task, label_key
from medres.train import CHECKPOINT, FitResult, TrainConfig, fit
from medres.train.class_names import class_name_map, display_name
from medres.train.distributed import from_env
from medres.uncertainty.trust import Trust


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
) -> tuple[Path | None, dict[str, Evaluation]]:
    """Train on ``cohort_path`` and write the bundle to ``out``.

    The cohort is audited first (:func:`~medres.split.audit_training_cohort`): a patient
    in two splits, or a test scan's pixel copy in train / val, is refused before anything
    is trained or written, unless ``allow_leakage`` (a deliberate experiment), which
    ``bundle.json`` and the model card record (:func:`_training_record`), as they record
    ``rehearsal_dropped``: scan_ids a retraining left out of its rehearsal
    (:mod:`medres.retrain`).

    With ``parent`` (retraining, :mod:`medres.retrain`) the bundle records it as its
    parent and extends its lineage; training starts from the parent's weights unless
    ``from_scratch``. ``frozen_before``: the parent's frozen test set, extended here with
    this cohort's test split (:mod:`medres.frozen`).

    Returns the ``bundle.json`` path and the evaluations (``val``, and ``test`` when the
    cohort has labelled test scans); under torchrun, ``(None, {})`` on every rank but 0
    (:mod:`medres.train.distributed`). The training checkpoint is removed once the bundle
    is complete.

    Raises:
        LeakageError: the audit found leakage and ``allow_leakage`` is False.
    """
    out = Path(out)
    cohort = Cohort.load(cohort_path)
    if is_bundle(out) and not resume:
        raise ConfigError(f"{out} already holds a bundle; choose a new -o folder")
    audit = audit_training_cohort(cohort, allow_leakage=allow_leakage)
    frozen_test = freeze(cohort.ok[cohort.ok["split"] == "test"], frozen_before)
    start_from = parent if parent is not None and not from_scratch else None
    trained = _train_and_evaluate(cohort, config, out, start_from, resume, show_progress)
    if trained is None:  # another rank than 0 of a torchrun job: rank 0 writes the bundle
        return None, {}
    bundle_json = _write_bundle(
        out,
        _Run(cohort_path, cohort, config, audit, list(rehearsal_dropped or [])),
        trained,
        frozen_test=frozen_test,
        parent=parent,
    )
    shutil.rmtree(out / CHECKPOINT.parent, ignore_errors=True)
    return bundle_json, trained.evaluations


@dataclass
class _Run:
    """What a training run was given: its cohort (path and table), configuration, the
    audit before training, and the scan_ids a retraining left out of its rehearsal."""

    cohort_path: str | Path
    cohort: Cohort
    config: TrainConfig
    audit: TrainingAudit
    rehearsal_dropped: list[str]


@dataclass
class _Trained:
    """What training and the trust fit made: the fit's result, the trust layer (None
    for regression), the val/test evaluations and the binary operating point."""

    result: FitResult
    trust: Trust | None
    evaluations: dict[str, Evaluation]
    threshold: float | None


def _train_and_evaluate(
    cohort: Cohort,
    config: TrainConfig,
    out: Path,
    start_from: Bundle | None,
    resume: bool,
    show_progress: bool,
) -> _Trained | None:
    """:func:`~medres.train.fit` (from ``start_from``'s weights when given), then the
    trust layer, operating point and evaluations on the cohort's val and test splits, by
    one process (None on the other ranks of a torchrun job)."""
    result = fit(
        cohort,
        config,
        out,
        resume=resume,
        show_progress=show_progress,
        init_state=start_from.model.state_dict() if start_from else None,
        init_id=start_from.id if start_from else "",
    )
    if not from_env().main:
        return None
    trust, evaluations, threshold = fit_trust_and_evaluate(
        result.model,
        result.info,
        result.spec,
        cohort,
        config.trust,
        config.referable_from,
        config.flag_below,
        device=result.config.device,
        class_names=result.class_names,
    )
    return _Trained(result, trust, evaluations, threshold)


def _write_bundle(
    out: Path,
    run: _Run,
    trained: _Trained,
    *,
    frozen_test: dict[str, Any],
    parent: Bundle | None,
) -> Path:
    """The bundle (:func:`~medres.bundle.save_bundle`) with its training and cohort
    records, metrics and model card; returns the ``bundle.json`` path."""
    result, evaluations = trained.result, trained.evaluations
    names = class_name_map(result.info.classes, result.class_names)
    counts = _counts(run.cohort, result.info.kind, names)
    return save_bundle(
        out,
        model=result.model,
        model_name=run.config.model,
        model_args=result.model_args,
        spec=result.spec,
        info=result.info,
        config=result.config.model_dump(mode="json"),
        training=_training_record(run, result, frozen_test["salt"]),
        cohort=_cohort_record(run, counts),
        metrics={split: ev.to_dict() for split, ev in evaluations.items()},
        model_card=model_card(_card_facts(run, trained, counts), evaluations),
        threshold=trained.threshold,
        trust=trained.trust,
        parent_id=parent.id if parent is not None else None,
        parent_lineage=parent.lineage if parent is not None else [],
        frozen_test=frozen_test,
        class_names=result.class_names,
    )


def _training_record(run: _Run, result: FitResult, salt: str) -> dict[str, Any]:
    """``training`` of bundle.json: the selected epoch and why training stopped, the seed
    and operating-point settings, and what the audit let through: ``leakage_allowed``,
    ``leakage`` (:func:`_leakage_record`) and, after a retraining that left scans out of
    its rehearsal, ``rehearsal_dropped`` (a count and hashes: bundle.json is meant to be
    shared, and a scan_id is a path that may hold a patient's name, or a DICOM UID)."""
    config = run.config
    return {
        "best_epoch": result.best_epoch,
        "metric": result.metric,
        "best_score": result.best_score,
        "epochs_run": len(result.history),
        "stopped_by": result.stopped_by.value,
        "seconds": round(result.seconds, 1),
        "device": result.config.device,
        "precision": result.config.precision,
        "processes": from_env().world,  # torchrun's ranks (1: one process)
        "seed": config.seed,
        "referable_from": config.referable_from,
        "flag_below": config.flag_below,
        "leakage_allowed": run.audit.leakage_allowed,
        "leakage": _leakage_record(run.audit, salt),
        **(
            {"rehearsal_dropped": _hashed_scans(run.rehearsal_dropped, salt)}
            if run.rehearsal_dropped
            else {}
        ),
    }


def _cohort_record(run: _Run, counts: dict[str, Any]) -> dict[str, Any]:
    """``cohort`` of bundle.json: the training cohort's path, fingerprint and counts,
    and what its training scans are (modalities, channels, photometric)."""
    cohort = run.cohort
    train = cohort.labelled("train")
    return {
        "path": str(Path(run.cohort_path).resolve()),
        "fingerprint": cohort.fingerprint(),
        "counts": {k: counts[k] for k in ("by_split", "sites")},
        "split_by": cohort.meta.get("split_by"),
        "modalities": sorted(set(train["modality"].dropna().astype(str))),
        "channels": sorted({int(shape[0]) for shape in train["shape"].dropna()}),
        "photometric": photometric(train),
        **{k: cohort.meta[k] for k in ("sources", "reviews") if k in cohort.meta},
    }


def _card_facts(run: _Run, trained: _Trained, counts: dict[str, Any]) -> dict[str, Any]:
    """What :func:`~medres.model_card.model_card` is told of the run."""
    result = trained.result
    return {
        "model": run.config.model,
        "task": result.info.task,
        "spec": result.spec,
        "info": result.info,
        "class_names": result.class_names,
        "best_epoch": result.best_epoch,
        "metric": result.metric,
        "epochs_run": len(result.history),
        "stopped_by": result.stopped_by.value,
        "device": result.config.device,
        "precision": result.config.precision,
        "counts": counts,
        "split_by": run.cohort.meta.get("split_by"),
        "split_unit": run.cohort.meta.get("split_unit"),
        "trust": trained.trust,
        "audit": run.audit,
        "rehearsal_dropped": run.rehearsal_dropped,
    }


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


def _counts(cohort: Cohort, task: Task, names: dict[str, str] | None = None) -> dict[str, Any]:
    """Scans per split and class (per split: n, mean, sd of the target for regression);
    the markdown table shows each class with its display name from ``names``
    (``{label: name}``), e.g. ``normal (0)``."""
    ok = cohort.ok[cohort.ok["label"].notna()]
    splits = ok["split"].fillna("none")
    if not task.classifies:
        values = pd.to_numeric(ok["label"], errors="coerce")
        table = values.groupby(splits).agg(["count", "mean", "std"]).round(4).T
        table.index = ["n", "mean", "sd"]
    else:
        table = pd.crosstab(ok["label"].map(label_key), splits)
    header = f"| {'class' if task.classifies else 'label'} | " + " | ".join(table.columns) + " |"
    names = names or {}
    rows = [
        f"| {display_name(label, names.get(label)) if task.classifies else label} | "
        + " | ".join(str(v) for v in row)
        + " |"
        for label, row in table.iterrows()
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
