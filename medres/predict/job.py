"""``medres predict``: a bundle (or an ensemble of bundles) over a folder of scans.

Scans are found as in ingest. The ``local`` engine decodes and preprocesses them in
DataLoader workers while this process runs the model in batches; the ``ray`` engine
(:mod:`medres.predict.ray_engine`) does both on a Ray cluster. Either way each scan ends
as a prediction row or a failure row, written here (:mod:`medres.predict.store` for the
files and resuming). The bundle's calibration,
conformal sets, OOD model and referral rule are applied exactly as stored
(:mod:`medres.predict.predictor` turns each batch into prediction rows).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from medres import __version__
from medres.bundle import Bundle, load_bundle
from medres.cohort import progress_task
from medres.device import resolve_device
from medres.errors import ConfigError
from medres.inference import LocalEngine, ScanInputs
from medres.io.discover import Discovery, discover
from medres.predict.predictor import Outcome, Predictor, check_members
from medres.predict.runtime import check_runtime
from medres.predict.scans import failure_row, predict_inputs
from medres.predict.store import ResultStore

ENGINES = ("local", "ray")


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
        device: where the network runs (:func:`medres.device.resolve_device`); not part
            of the run's contract: a run may resume on another device.
        runtime: what runs the network (:mod:`medres.predict.runtime`): ``torch`` (the
            bundle's model) or ``onnx`` (its verified ``model.onnx`` in ONNX Runtime, on
            the CPU); like the device not part of the contract (the export was verified
            to give torch's probabilities within 1e-4).
        engine: where scans are decoded and the network runs: ``local`` (this machine:
            ``workers`` decoding processes beside this one) or ``ray`` (a Ray cluster:
            decoding in tasks, the network in ``workers`` actors; None workers: one
            actor per node). Not part of the contract: a run may resume on either.
        address: ``ray`` only: the cluster to join (``ray start --head`` printed it);
            None: a local cluster that starts and stops with the run.
        gpus_per_worker: ``ray`` only: GPUs each actor holds (0: actors run on CPUs).
    """

    ensemble: list[Path] = field(default_factory=list)
    mc_samples: int = 0
    tta: bool = False
    explain: bool = False
    workers: int | None = None
    batch_size: int = 32
    chunk_size: int = 256
    flag_below: float | None = None
    device: str = "auto"
    runtime: str = "torch"
    engine: str = "local"
    address: str | None = None
    gpus_per_worker: float = 0.0

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


def default_workers(device: str = "cpu") -> int:
    """On a CPU 2 decoding workers when there is a second core, else 0 (decode
    in-process); feeding a GPU every core but one, up to 8.

    Measured on 2 cores (benchmarks/results/predict_speed.md): 64³ NIfTI 70 scans/s
    against 65 with 1 worker; 224² PNG within the noise of its rounds."""
    cores = os.cpu_count() or 1
    if device.startswith("cuda"):
        return max(2, min(8, cores - 1))
    return 2 if cores > 1 else 0


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
    check_members(members)
    job = {
        "bundles": [{"id": b.id, "checksum": b.checksum} for b in members],
        **options.contract(),
    }
    checksum = job["bundles"][0]["checksum"]
    local = options.engine == "local"
    predictor = Predictor(members, options, out, checksum) if local else None
    store = ResultStore(out, job)
    found = discover(folder, progress=progress_task(progress, "Discovering scans", None))
    timing = _Timing(started, t0, discover=time.perf_counter() - t0)
    done = store.done()
    dataset = predict_inputs(
        found.scans,
        members[0].spec,
        trained=members[0].trained_on,
        done=set(zip(done["scan_id"], done["input_hash"], strict=True)),
        keep_volume=options.explain,
    )
    tally = _Tally(
        [
            failure_row(f.scan_id or f.path, f.path, f.stage, f.error_type, f.message)
            for f in found.failures
        ]
    )
    advance = progress_task(progress, "Predicting", len(found.scans))
    t1 = time.perf_counter()
    if local:
        device = str(predictor.device)
        workers = default_workers(device) if options.workers is None else options.workers
        engine = {
            "workers": workers,
            "device": device,
            "precision": predictor.precision,
            "threads": torch.get_num_threads(),
        }
        outcomes = _local_outcomes(dataset, workers, found, predictor, options.batch_size)
        _record(outcomes, store, options, tally, advance)
    else:
        from medres.predict.ray_engine import RayRun

        with RayRun(options, [bundle, *options.ensemble], out, checksum) as ray_run:
            outcomes = ray_run.outcomes(dataset)
            _record(outcomes, store, options, tally, advance)
            engine = ray_run.summary(members[0].config.precision)
    timing.predict = time.perf_counter() - t1
    summary = _summary(folder, job, options, engine, members, found, tally, timing)
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
    failed: dict[int, dict[str, Any]] = field(default_factory=dict)  # scan index → its row
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
    a device this machine lacks or the runtime does not run on, a missing ``folder``, or
    ``out`` inside it."""
    resolve_device(options.device)
    check_runtime(options.runtime, options.device)
    if options.engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}; got {options.engine!r}")
    if options.engine == "local" and (options.address or options.gpus_per_worker):
        raise ConfigError("--address and --gpus-per-worker apply to --engine ray")
    if options.gpus_per_worker < 0:
        raise ConfigError("--gpus-per-worker must be >= 0")
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


def _local_outcomes(
    dataset: ScanInputs, workers: int, found: Discovery, predictor: Predictor, batch_size: int
) -> Iterator[list[Outcome]]:
    """The local engine: ``dataset`` decoded in batches by ``workers`` processes, each
    batch predicted here."""
    # numpy/OpenBLAS threads left spinning after each trust-layer call took a core from
    # the model: a 3D batch took 387 ms instead of 346 (339 with this limit)
    with threadpool_limits(limits=1, user_api="blas"):
        for batch in LocalEngine(workers).batches(dataset, batch_size):
            yield predictor.outcomes([found.scans[item.index] for item in batch], batch)


def _record(
    outcomes: Iterable[list[Outcome]],
    store: ResultStore,
    options: PredictOptions,
    tally: _Tally,
    advance,
) -> None:
    """Count each scan's outcome in ``tally`` and write prediction rows to ``store`` in
    chunks of ``options.chunk_size`` (the rows so far even when interrupted). Failure
    rows end in scan order whatever order the engine delivered them in."""
    pending: list[dict[str, Any]] = []
    try:
        for batch in outcomes:
            for outcome in batch:
                if outcome.key:
                    tally.keys.add(outcome.key)
                if outcome.failure:
                    tally.failed[outcome.index] = outcome.failure
                elif outcome.row:
                    pending.append(outcome.row)
                    tally.predicted += 1
                else:
                    tally.already += 1
            if len(pending) >= options.chunk_size:
                store.write_part(pending)
                pending = []
            if advance:
                advance(tally.predicted + tally.already + len(tally.failed))
    finally:  # even when interrupted: the rows predicted so far are kept for the rerun
        store.write_part(pending)
        tally.failures += [tally.failed[i] for i in sorted(tally.failed)]


def _summary(
    folder: Path,
    job: dict[str, Any],
    options: PredictOptions,
    engine: dict[str, Any],
    members: list[Bundle],
    found: Discovery,
    tally: _Tally,
    timing: _Timing,
) -> dict[str, Any]:
    """``run.json`` (without ``counts.referred``, known once the store is finished);
    ``engine``: what the engine ran with (workers, device, precision, threads ...)."""
    seconds = timing.predict
    return {
        "medres_version": __version__,
        "started": timing.started.isoformat(timespec="seconds"),
        "finished": pd.Timestamp.now("UTC").isoformat(timespec="seconds"),
        "folder": str(folder.resolve()),
        "bundles": job["bundles"],
        "class_names": members[0].class_names or None,
        "options": {**asdict(options), "ensemble": [str(p) for p in options.ensemble]},
        "engine": options.engine,
        **engine,  # workers, device, precision (ray: also the cluster's nodes and CPUs)
        "runtime": options.runtime,
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
