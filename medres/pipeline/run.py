"""``medres run pipelines/NAME``: data → ingest → split → train → evaluate → predict.

Every step is a general medres function; the pipeline folder only configures them
(:mod:`medres.pipeline.config`). The run folder holds each step's output::

    OUT/scans/                 the prepared scan folder (+ labels.csv, SOURCE.md)
    OUT/cohort.parquet         the ingested manifest
    OUT/<run>/cohort_split.parquet, bundle/, report/, test_scans/, predictions/
    OUT/results.md, results.json, pipeline.toml (the configuration used)

A step whose output is complete is skipped, so ``resume=True`` continues an
interrupted run where it stopped (training itself resumes from its last checkpoint);
it refuses when the configuration, the data path or the overrides changed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medres.cohort import Cohort, build_cohort, real_files
from medres.errors import ConfigError
from medres.files import write_text
from medres.pipeline.config import (
    PipelineConfig,
    SplitConfig,
    Variant,
    load_pipeline,
    variant_split_config,
    variant_train_config,
)
from medres.pipeline.results import collect, write_results

Log = Callable[[str], None]


@dataclass
class PipelineRun:
    """What :func:`run_pipeline` produced: the run folder, one result dict per variant
    (see :func:`medres.pipeline.results.collect`) and the step timings in seconds."""

    out: Path
    results: list[dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def results_md(self) -> Path:
        return self.out / "results.md"


def run_pipeline(
    pipeline: str | Path,
    data: str | Path | None,
    out: str | Path,
    *,
    resume: bool = False,
    overrides: list[str] | None = None,
    log: Log = print,
    show_progress: bool = True,
) -> PipelineRun:
    """Run a pipeline end to end into ``out``.

    Args:
        pipeline: the pipeline folder (with ``config.toml``) or the TOML file.
        data: the data the pipeline names: a MedMNIST file or the folder holding it,
            a scan folder, or the folder the motion sources are relative to.
        out: the run folder; must be new unless ``resume``.
        overrides: ``key=value`` settings applied to every run's [train] table.

    Raises:
        ConfigError: bad configuration, missing data, or ``out`` already used.
    """
    config, file = load_pipeline(pipeline, overrides or [])
    _check_data(config, data)  # before anything is written: a wrong --data can be retried
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError(f"{out} is not empty; add --resume to continue that run, or pick -o")
    out.mkdir(parents=True, exist_ok=True)
    _record_settings(config, data, overrides or [], out)
    shutil.copyfile(file, out / "pipeline.toml")
    timer = _Timer(log, out / "steps.json")
    with timer("prepare data"):
        folder, labels = _prepare(config, data, out, show_progress)
    with timer("ingest"):
        cohort_path = _ingest(config, folder, labels, out / "cohort.parquet")
    results = []
    for variant in config.runs():
        results.append(
            _run_variant(config, variant, cohort_path, out, timer, overrides or [], show_progress)
        )
    write_results(config, results, out, timer.seconds)
    return PipelineRun(out, results, timer.seconds)


def _check_data(config: PipelineConfig, data) -> None:
    """Raise :class:`ConfigError` unless ``data`` holds what the pipeline reads."""
    spec = config.data
    if spec.source == "medmnist":
        _data_file(data, config)
    elif spec.source == "folder":
        if not _need_data(data, config).is_dir():
            raise ConfigError(f"--data {data} must be a folder of scans with {spec.labels}")
    else:
        root = _need_data(data, config)
        for source in spec.motion.sources:
            _exists(root / source.path)


def _record_settings(config: PipelineConfig, data, overrides: list[str], out: Path) -> None:
    """Write ``out/settings.json`` (the resolved configuration, data path and overrides);
    on a resumed run, refuse when they differ from the recorded ones in anything a step
    reads. The question, headline metrics, data description and run labels may change
    (results.md is rebuilt from them)."""
    settings = {
        "config": config.model_dump(mode="json"),
        "data": str(Path(data).resolve()) if data is not None else None,
        "overrides": list(overrides),
    }
    path = out / "settings.json"
    if path.is_file():
        before = json.loads(path.read_text())
        before["config"] = _what_steps_read(before.get("config") or {})
        now = {**settings, "config": _what_steps_read(settings["config"])}
        changed = sorted(k for k in now if before.get(k) != now[k])
        if changed:
            raise ConfigError(
                f"{out} was run with other settings ({', '.join(changed)} differ from "
                f"{path}); resume with the same pipeline, --data and --set, or pick a new -o"
            )
    write_text(path, json.dumps(settings, indent=2) + "\n")


def _what_steps_read(config: dict) -> dict:
    """A dumped :class:`PipelineConfig` without the keys only results.md shows."""
    kept = {k: v for k, v in config.items() if k not in ("question", "headline")}
    kept["data"] = {k: v for k, v in config.get("data", {}).items() if k != "about"}
    # split keys added later, at their default: a run recorded before them still resumes
    kept["split"] = {
        k: v
        for k, v in config.get("split", {}).items()
        if not (k in ("move_copies_to_test", "allow_leakage") and v is False)
    }
    kept["variants"] = [
        {k: v for k, v in variant.items() if k != "label"} for variant in config.get("variants", [])
    ]
    return kept


def _prepare(config: PipelineConfig, data, out: Path, show_progress: bool) -> tuple[Path, Path]:
    """The scan folder to ingest and its labels CSV (written under ``out`` if derived)."""
    spec, scans = config.data, out / "scans"
    if spec.source == "folder":
        scans = _need_data(data, config)
        if spec.slices is None:
            return scans, scans / spec.labels
    elif not (scans / "labels.csv").is_file():
        if spec.source == "medmnist":
            from medres.datasets.medmnist import export_medmnist

            npz = _data_file(data, config)
            export_medmnist(npz, scans, limit=spec.limit, progress=show_progress)
        else:
            from medres.datasets.motion import MotionSource, export_motion

            root, motion = _need_data(data, config), spec.motion
            sources = [
                MotionSource(
                    _exists(root / s.path), s.split, None if s.axes is None else tuple(s.axes)
                )
                for s in motion.sources
            ]
            export_motion(
                sources,
                scans,
                per_slice=motion.per_slice,
                size=tuple(motion.size),
                min_foreground=motion.min_foreground,
                slab=motion.slab,
                seed=motion.seed,
                show_progress=show_progress,
            )
    if spec.slices is None:
        return scans, scans / "labels.csv"
    slices = out / "slices"
    if not (slices / "labels.csv").is_file():
        from medres.datasets.slices import export_slices

        export_slices(
            scans,
            slices,
            labels_csv=scans / spec.labels if spec.source == "folder" else None,
            axis=spec.slices.axis,
            min_fraction=spec.slices.min_fraction,
            per_volume=spec.slices.per_volume,
            show_progress=show_progress,
        )
    return slices, slices / "labels.csv"


def _need_data(data, config: PipelineConfig) -> Path:
    if data is None:
        hint = f" holding {config.data.file}" if config.data.file else ""
        raise ConfigError(
            f"pipeline {config.name} needs its data: give --data PATH (the file or the "
            f"folder{hint}; the pipeline's README says where to get it)"
        )
    return _exists(Path(data))


def _data_file(data, config: PipelineConfig) -> Path:
    path = _need_data(data, config)
    if path.is_dir():
        if not config.data.file:
            raise ConfigError(f"--data {path} is a folder; give the file itself")
        path = _exists(path / config.data.file)
    return path


def _exists(path: Path) -> Path:
    if not path.exists():
        raise ConfigError(f"{path} does not exist; check --data")
    return path


def _ingest(config: PipelineConfig, folder: Path, labels: Path, path: Path) -> Path:
    if not path.is_file():
        cohort, _ = build_cohort(folder, labels=labels, site=config.data.site)
        cohort.save(path)
    return path


def _run_variant(
    config, variant: Variant, cohort_path, out: Path, timer, overrides, show_progress
) -> dict:
    from medres.bundle import is_bundle
    from medres.evaluate.job import evaluate_bundle
    from medres.predict import PredictOptions, predict_folder
    from medres.train import CHECKPOINT
    from medres.train_job import train_bundle

    here = out / variant.name
    here.mkdir(exist_ok=True)
    split_path = here / "cohort_split.parquet"
    split_config = variant_split_config(config, variant)
    with timer(f"{variant.name}: split"):
        if not split_path.is_file():
            _split(split_config, cohort_path, split_path)
    bundle = here / "bundle"
    train_config = variant_train_config(config, variant, overrides)
    with timer(f"{variant.name}: train"):
        if not is_bundle(bundle):
            resume = (bundle / CHECKPOINT).is_file()
            train_bundle(
                split_path,
                train_config,
                bundle,
                resume=resume,
                show_progress=show_progress,
                allow_leakage=split_config.allow_leakage,
            )
    report = here / "report"
    with timer(f"{variant.name}: evaluate"):
        if not (report / "failures.csv").is_file():  # the last file evaluate writes
            evaluate_bundle(bundle, split_path, report, split="test", device=train_config.device)
    predictions = here / "predictions"
    with timer(f"{variant.name}: predict"):
        if not (predictions / "run.json").is_file():  # written once every scan is done
            scans = _link_test_scans(split_path, here / "test_scans")
            p = config.predict
            options = PredictOptions(
                explain=p.explain,
                mc_samples=p.mc_samples,
                tta=p.tta,
                batch_size=p.batch_size,
                device=train_config.device,
            )
            predict_folder(bundle, scans, predictions, options)
    return collect(variant, here)


def _split(options: SplitConfig, cohort_path: Path, path: Path) -> None:
    from medres.split import split_cohort

    result = split_cohort(
        Cohort.load(cohort_path),
        fractions=options.fractions,
        seed=options.seed,
        keep_column=options.keep_column,
        keep_test_column=options.keep_test_column,
        unit=options.unit,
        move_copies_to_test=options.move_copies_to_test,
    )
    result.save(path)


def _link_test_scans(split_path: Path, folder: Path) -> Path:
    """A folder of links to the test split's scan files (what ``medres predict`` reads).

    Links keep the scans' relative layout, so a DICOM series stays one series."""
    cohort = Cohort.load(split_path)
    rows = cohort.ok[cohort.ok["split"] == "test"]
    root = Path(cohort.meta.get("root", "."))
    for files in rows["files"]:
        for source in map(Path, real_files(files)):
            if not source.is_relative_to(root):
                raise ConfigError(f"{source} lies outside the cohort's root {root}; re-ingest")
            target = folder / source.relative_to(root)
            if target.is_symlink() and target.resolve() == source.resolve():
                continue
            target.unlink(missing_ok=True)  # a stale link from moved data
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve())
    return folder


class _Timer:
    """``with timer("step"):`` logs the step and adds its wall time to ``seconds``, kept
    in ``path`` so that a resumed run reports the time of all its sessions."""

    def __init__(self, log: Log, path: Path) -> None:
        self.log, self.path = log, path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    @contextmanager
    def __call__(self, name: str):
        self.log(f"[{name}] ...")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - t0
            self.seconds[name] = self.seconds.get(name, 0.0) + took
            write_text(self.path, json.dumps(self.seconds, indent=2) + "\n")
        self.log(f"[{name}] done in {took:.0f} s")
