"""``medres predict``: a bundle (or an ensemble of bundles) over a folder of scans.

Scans are found as in ingest, decoded and preprocessed in DataLoader workers while the
main process runs the model in batches; each scan ends as a prediction row or a failure
row (:mod:`medres.predict.store` for the files and resuming). The bundle's calibration,
conformal sets, OOD model and referral rule are applied exactly as stored.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from medres import __version__
from medres.bundle import Bundle, load_bundle
from medres.calibrate import softmax
from medres.cohort import progress_task
from medres.errors import BundleError, ConfigError
from medres.explain import grad_cam, map_to_scan, write_explanation
from medres.inference import Item, LocalEngine, ScanInputs, forward
from medres.io.discover import Discovery, ScanSource, discover
from medres.io.names import path_text
from medres.predict.scans import failure_row, predict_inputs
from medres.predict.store import ResultStore
from medres.tasks import label_key
from medres.transforms import build_transform
from medres.uncertainty.sampling import tta_views
from medres.uncertainty.trust import Assessment


@dataclass
class PredictOptions:
    """How to predict (the CLI flags).

    Attributes:
        ensemble: further bundles whose calibrated probabilities are averaged with the
            first's (same task, classes and preprocessing).
        mc_samples: MC-dropout samples per scan (0: one deterministic pass).
        tta: add the preset's test-time views (flips, ± small rotation).
        explain: write a Grad-CAM heatmap for every predicted scan.
        workers: DataLoader worker processes decoding scans (None:
            :func:`default_workers`).
        batch_size: scans per forward pass.
        chunk_size: prediction rows per crash-safe chunk on disk.
        flag_below: regression only: refer every scan predicted below this value (a QA
            gate, e.g. SSIM 0.9); None: the bundle's own ``flag_below``, if any.
    """

    ensemble: list[Path] = field(default_factory=list)
    mc_samples: int = 0
    tta: bool = False
    explain: bool = False
    workers: int | None = None
    batch_size: int = 32
    chunk_size: int = 256
    flag_below: float | None = None

    def contract(self) -> dict[str, Any]:
        """The options that change a prediction (a resumed run must repeat them)."""
        contract = {"mc_samples": self.mc_samples, "tta": self.tta, "explain": self.explain}
        if self.flag_below is not None:  # runs from before the QA gate existed stay resumable
            contract["flag_below"] = self.flag_below
        return contract


@dataclass
class PredictRun:
    """What a run did: ``predictions`` (one row per scan of the folder), ``failures``
    (one dict per scan that could not be predicted) and ``summary`` (run.json)."""

    predictions: pd.DataFrame
    failures: list[dict[str, Any]]
    summary: dict[str, Any]


def default_workers() -> int:
    """2 decoding workers when there is a second core, else 0 (decode in-process).

    Measured on 2 cores (benchmarks/results/predict_speed.md): 64³ NIfTI 70 scans/s
    against 65 with 1 worker; 224² PNG within the noise of its rounds."""
    return 2 if (os.cpu_count() or 1) > 1 else 0


def predict_folder(
    bundle: str | Path,
    folder: str | Path,
    out: str | Path,
    options: PredictOptions | None = None,
    *,
    progress=None,
) -> PredictRun:
    """Predict every scan under ``folder`` into ``out`` (see :mod:`medres.predict.store`).

    Args:
        progress: optional ``rich.progress.Progress`` (one task per phase).

    Raises:
        BundleError / ConfigError: the bundles cannot be used together, ``out`` holds
        another run's predictions, or ``folder`` does not exist. A bad scan never raises.
    """
    options = options or PredictOptions()
    started, t0 = pd.Timestamp.now("UTC"), time.perf_counter()
    folder, out = _check_request(folder, out, options)
    members = [load_bundle(p) for p in [bundle, *options.ensemble]]
    _check_members(members)
    job = {
        "bundles": [{"id": b.id, "checksum": b.checksum} for b in members],
        **options.contract(),
    }
    store = ResultStore(out, job)
    found = discover(folder, progress=progress_task(progress, "Discovering scans", None))
    timing = _Timing(started, t0, discover=time.perf_counter() - t0)
    done = store.done()
    predictor = _Predictor(members, options, out, job["bundles"][0]["checksum"])
    dataset = predict_inputs(
        found.scans,
        members[0].spec,
        trained=members[0].trained_on,
        done=set(zip(done["scan_id"], done["input_hash"], strict=True)),
        keep_volume=options.explain,
    )
    workers = default_workers() if options.workers is None else options.workers
    tally = _Tally(
        [
            failure_row(f.scan_id or f.path, f.path, f.stage, f.error_type, f.message)
            for f in found.failures
        ]
    )
    advance = progress_task(progress, "Predicting", len(found.scans))
    t1 = time.perf_counter()
    _predict_batches(dataset, workers, found, predictor, store, options, tally, advance)
    timing.predict = time.perf_counter() - t1
    summary = _summary(folder, job, options, workers, predictor, found, tally, timing)
    rows = store.finish(tally.keys, tally.failures)
    summary["counts"]["referred"] = int(rows["refer"].sum()) if "refer" in rows else None
    store.write_summary(summary)
    return PredictRun(rows, tally.failures, summary)


@dataclass
class _Tally:
    """What a run has met so far: ``failures`` (failure rows, discovery's first),
    ``keys`` (each read scan's (scan_id, input_hash)), scans ``predicted`` now and
    ``already`` predicted by an earlier run."""

    failures: list[dict[str, Any]]
    keys: set[tuple[str, str]] = field(default_factory=set)
    predicted: int = 0
    already: int = 0


@dataclass
class _Timing:
    """When a run ``started`` (UTC), its ``perf_counter`` origin ``t0``, and the seconds
    spent discovering and predicting."""

    started: pd.Timestamp
    t0: float
    discover: float
    predict: float = 0.0


def _check_request(
    folder: str | Path, out: str | Path, options: PredictOptions
) -> tuple[Path, Path]:
    """``folder`` and ``out`` as paths, refused (ConfigError) with out-of-range options,
    a missing ``folder``, or ``out`` inside it."""
    if options.mc_samples < 0 or options.batch_size < 1 or options.chunk_size < 1:
        raise ConfigError("--mc-samples must be >= 0, --batch-size and --chunk-size >= 1")
    folder, out = Path(folder), Path(out)
    if not folder.exists():
        raise ConfigError(f"{folder} does not exist; give the folder of scans to predict")
    if out.resolve().is_relative_to(folder.resolve()):
        raise ConfigError(
            f"-o {out} is inside the scan folder {folder}: the next run would find its own "
            "heatmaps as scans; write the predictions outside the folder"
        )
    return folder, out


def _predict_batches(
    dataset: ScanInputs,
    workers: int,
    found: Discovery,
    predictor: _Predictor,
    store: ResultStore,
    options: PredictOptions,
    tally: _Tally,
    advance,
) -> None:
    """Run ``predictor`` over the scans of ``dataset`` in batches decoded by ``workers``
    processes, counting each scan in ``tally`` and writing prediction rows to ``store``
    in chunks of ``options.chunk_size`` (the rows so far even when interrupted)."""
    pending: list[dict[str, Any]] = []
    # numpy/OpenBLAS threads left spinning after each trust-layer call took a core from
    # the model: a 3D batch took 387 ms instead of 346 (339 with this limit)
    with threadpool_limits(limits=1, user_api="blas"):
        try:
            for batch in LocalEngine(workers).batches(dataset, options.batch_size):
                good = _sort_batch(batch, found, tally)
                if good:
                    pending += predictor.rows([found.scans[i.index] for i in good], good)
                    tally.predicted += len(good)
                if len(pending) >= options.chunk_size:
                    store.write_part(pending)
                    pending = []
                if advance:
                    done = tally.predicted + tally.already + len(tally.failures)
                    advance(done - len(found.failures))
        finally:  # even when interrupted: the rows predicted so far are kept for the rerun
            store.write_part(pending)
            pending = []


def _sort_batch(batch: list[Item], found: Discovery, tally: _Tally) -> list[Item]:
    """The items of ``batch`` to predict now; the others counted in ``tally`` (a failure
    row, or already predicted), and every read scan's key recorded."""
    good: list[Item] = []
    for item in batch:
        scan = found.scans[item.index]
        if item.input_hash:
            tally.keys.add((scan.scan_id, item.input_hash))
        if item.failure:
            tally.failures.append(failure_row(scan.scan_id, path_text(scan.path), *item.failure))
        elif item.done:
            tally.already += 1
        else:
            good.append(item)
    return good


def _summary(
    folder: Path,
    job: dict[str, Any],
    options: PredictOptions,
    workers: int,
    predictor: _Predictor,
    found: Discovery,
    tally: _Tally,
    timing: _Timing,
) -> dict[str, Any]:
    """``run.json`` (without ``counts.referred``, known once the store is finished)."""
    seconds = timing.predict
    return {
        "medres_version": __version__,
        "started": timing.started.isoformat(timespec="seconds"),
        "finished": pd.Timestamp.now("UTC").isoformat(timespec="seconds"),
        "folder": str(folder.resolve()),
        "bundles": job["bundles"],
        "options": {**asdict(options), "ensemble": [str(p) for p in options.ensemble]},
        "workers": workers,
        "precision": predictor.precision,
        "counts": {
            "scans": len(found.scans) + len(found.failures),
            "predicted_now": tally.predicted,
            "already_predicted": tally.already,
            "failed": len(tally.failures),
            "files_skipped": len(found.skipped),
            "skipped_reasons": dict(Counter(reason for _, reason in found.skipped)),
            "duplicate_files": len(found.duplicates),
        },
        "seconds": {
            "discover": round(timing.discover, 2),
            "predict": round(seconds, 2),
            "total": round(time.perf_counter() - timing.t0, 2),
        },
        "scans_per_second": (
            round(tally.predicted / seconds, 2) if tally.predicted and seconds else None
        ),
    }


class _Predictor:
    """The loaded bundles as one predictor: batch of items → prediction rows."""

    def __init__(
        self, members: list[Bundle], options: PredictOptions, out: Path, checksum: str
    ) -> None:
        self.members, self.options, self.out = members, options, out
        first = members[0]
        self.info, self.trust = first.info, first.trust
        self.flag_below = options.flag_below
        if self.flag_below is None:
            self.flag_below = first.training.flag_below
        if self.flag_below is not None and self.info.kind.classifies:
            raise ConfigError(f"--flag-below applies to regression bundles; {first.path} is not")
        self.views = tta_views(first.spec) if options.tta else None
        native_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        self.precision = "bf16" if first.config.precision == "bf16" and native_bf16 else "fp32"
        self.transform = build_transform(first.spec)
        dims = first.spec.spatial_dims
        self.memory_format = torch.channels_last if dims == 2 else torch.channels_last_3d
        for member in members:
            member.model.to(memory_format=self.memory_format)
        self.fixed = {
            "bundle_id": "+".join(m.id for m in members),
            "bundle_checksum": checksum,
            "medres_version": __version__,
        }

    def rows(self, scans: list[ScanSource], items: list[Item]) -> list[dict[str, Any]]:
        images = torch.stack([item.image.as_subclass(torch.Tensor) for item in items])
        images = images.contiguous(memory_format=self.memory_format)
        seeds = [int(item.input_hash[:15], 16) for item in items]
        outputs, features = [], None
        for member in self.members:
            logits, feats = forward(
                member.model,
                images,
                precision=self.precision,
                memory_format=self.memory_format,
                mc_samples=self.options.mc_samples,
                views=self.views,
                seed=seeds,
            )
            outputs.append(logits.numpy().astype(np.float64))
            features = feats.numpy() if features is None else features
        now = pd.Timestamp.now("UTC").isoformat(timespec="seconds")
        rows = [
            {**_scan_fields(s, i), **self.fixed, "predicted_at": now}
            for s, i in zip(scans, items, strict=True)
        ]
        if not self.info.kind.classifies:
            values = np.mean(
                [
                    m.info.outputs_to_scores(o.mean(0))
                    for m, o in zip(self.members, outputs, strict=True)
                ],
                axis=0,
            )
            for row, value in zip(rows, values, strict=True):
                row["prediction"] = float(value)
                if self.flag_below is not None:
                    row["refer"] = bool(value < self.flag_below)
                    row["refer_reason"] = (
                        f"predicted {value:.3f} below the QA threshold {self.flag_below:g}"
                        if row["refer"]
                        else ""
                    )
            shown = np.zeros(len(rows), int)
        else:
            assessment = self._assess(outputs, features)
            self._add_trust(rows, assessment)
            shown = assessment.predicted
        if self.options.explain:
            self._explain(rows, images, items, shown)
        return rows

    def _assess(self, outputs: list[np.ndarray], features: np.ndarray) -> Assessment:
        if len(outputs) == 1:
            return self.trust.assess(outputs[0], features)
        samples = np.concatenate(
            [m.trust.calibrate(o) for m, o in zip(self.members, outputs, strict=True)]
        )
        raw = np.concatenate([softmax(o) for o in outputs]).mean(0)
        return self.trust.assess_samples(samples, raw, features)

    def _add_trust(self, rows: list[dict[str, Any]], a: Assessment) -> None:
        names = [label_key(c) for c in self.info.classes]
        threshold = self.members[0].threshold if self.info.kind.operating_point else None
        for n, row in enumerate(rows):
            row["predicted_class"] = names[a.predicted[n]]
            row["confidence"] = float(a.probs[n, a.predicted[n]])
            row.update({f"prob_{c}": float(a.probs[n, k]) for k, c in enumerate(names)})
            row.update({f"prob_raw_{c}": float(a.raw_probs[n, k]) for k, c in enumerate(names)})
            row["conformal_set"] = "|".join(c for k, c in enumerate(names) if a.sets[n, k])
            row["set_size"] = int(a.sets[n].sum())
            row.update({name: float(values[n]) for name, values in a.scores.items()})
            row["ood_score"] = float(a.ood_score[n])
            row["ood"] = bool(a.ood[n])
            row["refer"] = bool(a.refer[n])
            row["refer_reason"] = a.reasons[n]
            if threshold is not None:
                row["threshold"] = float(threshold)
                row["positive_at_threshold"] = bool(a.probs[n, 1] >= threshold)

    def _explain(self, rows, images: torch.Tensor, items: list[Item], shown: np.ndarray) -> None:
        """Grad-CAM of the class shown (first bundle), written beside the rows."""
        cams = grad_cam(self.members[0].model, images, shown)
        folder = self.out / "explain"
        for row, item, cam in zip(rows, items, cams, strict=True):
            on_scan = map_to_scan(cam, item.image, self.transform)
            stem = _safe_stem(row["scan_id"], item.input_hash)
            paths = write_explanation(item.volume, on_scan, folder, stem)
            row["heatmap"] = str(Path(paths["png"]).relative_to(self.out))
            row["heatmap_map"] = str(Path(paths.get("nifti") or paths["npy"]).relative_to(self.out))


def _check_members(members: list[Bundle]) -> None:
    first = members[0]
    if first.info.kind.classifies and first.trust is None:
        raise BundleError(
            f"{first.path} has no calibration; run `medres calibrate {first.path} COHORT` first"
        )
    for other in members[1:]:
        same = (
            other.info.kind == first.info.kind
            and other.info.classes == first.info.classes
            and other.spec == first.spec
        )
        if not same:
            raise ConfigError(
                f"--ensemble bundle {other.path} differs from {first.path} in task, classes "
                "or preprocessing; an ensemble needs bundles trained for the same task"
            )
        if other.info.kind.classifies and other.trust is None:
            raise BundleError(f"{other.path} has no calibration; run `medres calibrate` on it")


def _scan_fields(scan: ScanSource, item: Item) -> dict[str, Any]:
    meta = scan.meta
    return {
        "scan_id": scan.scan_id,
        "path": path_text(scan.path),
        "patient_id": meta.get("patient_id"),
        "study_uid": meta.get("study_uid"),
        "series_uid": meta.get("series_uid"),
        "modality": meta.get("modality") or scan.kind.upper(),
        "input_hash": item.input_hash,
    }


def _safe_stem(scan_id: str, digest: str) -> str:
    """A file name for a scan's outputs: its id with unsafe characters replaced, plus
    8 hex digits of its content hash (two ids may map to the same safe text)."""
    name = re.sub(r"\.(nii\.gz|nii|dcm|png|jpe?g)$", "", scan_id, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[-80:] + "-" + digest[:8]
