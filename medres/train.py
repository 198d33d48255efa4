"""Training: :func:`fit` — a plain PyTorch loop with checkpoints, resume and early stopping.

One epoch = :func:`train_one_epoch` (which also updates an exponential moving average
of the weights, :func:`weight_average`), batch-norm statistics recomputed for the
averaged weights, then :func:`infer` of the averaged weights on the validation split; the
epoch with the best validation score (AUROC, quadratic kappa for ordinal tasks, MAE
for regression) is kept, near-ties going to the lower validation loss
(:func:`selects`). Every epoch ends with ``checkpoints/last.pt`` in the output
folder and a row in ``metrics.csv``; ``resume=True`` continues from the checkpoint.
Each epoch's randomness (shuffle, augmentation, dropout) is seeded from
``(seed, epoch)``, so a resumed run repeats exactly what an uninterrupted one does.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import Transform
from pydantic import BaseModel, ConfigDict, Field, field_validator
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from sklearn.metrics import cohen_kappa_score, mean_absolute_error, roc_auc_score
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from medres.cohort import Cohort, read_row
from medres.errors import ConfigError
from medres.files import atomic_write, write_text
from medres.models import create_model
from medres.progress import progress as progress_display
from medres.tasks import TaskInfo, infer_task, median_grade
from medres.transforms import Preprocess, PreprocessSpec, build_transform, fits_spec, resolve_spec
from medres.uncertainty.trust import TrustConfig

CHECKPOINT = Path("checkpoints") / "last.pt"
NORM_SCANS = 512  # training scans (not augmented) that set the averaged weights' BN statistics


class TrainConfig(BaseModel):
    """Everything that decides a training run (written next to the bundle).

    The defaults are the documented ``medres train --cohort`` defaults, the same for
    every dataset: ResNet-18, AdamW (lr 1e-3, weight decay 1e-4), batch 64, 30 epochs
    with one warm-up epoch and a cosine schedule, dropout 0.2, early stopping after 10
    epochs without a better validation score, and no time limit (``time_limit_minutes``,
    0 = none: a limit ends a run sooner on a busy machine, so the same command would give
    different models on different days; a benchmark with a budget sets one: then no epoch
    starts that would, at the run's mean epoch time so far, end past it); validation,
    selection and the bundle use an exponential moving average of the weights with a
    time constant of ``ema_epochs`` (2 epochs; 0 = the raw weights); ``trust``
    (calibration, conformal sets, referral, OOD) is fitted on validation after training.
    Scores within ``selection_tolerance`` of the best seen count as ties, decided by the
    lower validation loss.

    Regression only: ``value_range`` (min, max) of the target for the binned accuracies
    (default: the training targets' range); ``flag_below`` turns a prediction below it
    into a referral in ``medres predict`` (a QA gate, e.g. predicted SSIM < 0.9).
    """

    model_config = ConfigDict(extra="forbid")
    task: Literal["auto", "binary", "multiclass", "ordinal", "regression"] = "auto"
    model: str = "resnet18"
    model_args: dict[str, Any] = {}
    preprocess: PreprocessSpec | None = None
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    warmup_epochs: int = Field(1, ge=0)
    class_weights: Literal["none", "balanced"] = "none"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    ema_epochs: float = Field(2.0, ge=0)
    patience: int = Field(10, ge=1)
    time_limit_minutes: float = Field(0.0, ge=0)
    selection_tolerance: float = Field(1e-3, ge=0)
    seed: int = 0
    num_workers: int | None = Field(None, ge=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    positive_class: int | str | None = None
    referable_from: int | str | None = None
    value_range: tuple[float, float] | None = None
    flag_below: float | None = None

    @field_validator("value_range")
    @classmethod
    def _ordered(cls, span):
        if span is not None and not span[0] < span[1]:
            raise ValueError(f"value_range must be [min, max] with min < max; got {list(span)}")
        return span

    trust: TrustConfig = Field(default_factory=TrustConfig)


def auto_stem_stride(spatial_size: tuple[int, ...]) -> int:
    """The largest stem stride leaving the first stage ≥ 14 px per side in 2D (28 px → 2,
    224² → 4: the ImageNet stem) and ≥ 7 voxels in 3D (28³ → 4, 64³ → 8), where every
    halving of the first stage's grid makes a training step several times cheaper
    (measured on 2 CPU cores: 28³ at stride 2 ≈ 8 scans/s, at stride 4 ≈ 30)."""
    side, dims = min(spatial_size), len(spatial_size)
    strides, floor = ((4, 2, 1), 14) if dims == 2 else ((8, 4, 2, 1), 7)
    return next(s for s in strides if side // s >= floor or s == 1)


class ReadScan(Transform):
    """A manifest row's file list → :class:`Volume` (first step of every dataset)."""

    def __call__(self, item: dict):
        return read_row(item)


class ScanDataset(CacheDataset):
    """Scans of a manifest with their targets; deterministic steps cached in memory.

    ``dataset[i]`` is ``(image (C, *spatial_size) float32, target)``.
    """

    def __init__(
        self, rows: pd.DataFrame, targets: np.ndarray, spec: PreprocessSpec, *, train: bool
    ):
        steps = Preprocess([ReadScan(), *build_transform(spec, train=train).transforms])
        items = [
            {"files": list(f), "scan_id": s}
            for f, s in zip(rows["files"], rows["scan_id"], strict=True)
        ]
        super().__init__(items, steps, progress=False, num_workers=1, copy_cache=train)
        self.targets = torch.as_tensor(targets)

    def __getitem__(self, index):
        return super().__getitem__(index), self.targets[index]


@dataclass
class FitResult:
    """The selected model and how it was chosen."""

    model: torch.nn.Module
    info: TaskInfo
    spec: PreprocessSpec
    config: TrainConfig
    model_args: dict[str, Any]
    history: pd.DataFrame
    best_epoch: int
    metric: str
    best_score: float
    seconds: float
    stopped_by: str  # "the last epoch", "early stopping" or "the time limit"


def fit(
    cohort: Cohort,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    show_progress: bool = True,
    init_state: dict[str, torch.Tensor] | None = None,
    init_id: str = "",
) -> FitResult:
    """Train on the cohort's ``train`` split, select on ``val``.

    Args:
        cohort: a split manifest (``medres split``) with labels.
        config: the run's settings; ``preprocess=None`` picks a preset from the cohort.
        out_dir: gets ``metrics.csv`` and ``checkpoints/last.pt``.
        resume: continue from ``out_dir/checkpoints/last.pt``.
        init_state: start from these weights (fine-tuning a champion) instead of the
            seed's random initialisation; ``init_id`` names them for ``--resume``.

    Raises:
        ConfigError: no train/val rows, a bad label set, a checkpoint from another config.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    checkpoint = out_dir / CHECKPOINT
    if checkpoint.exists() and not resume:
        raise ConfigError(
            f"{out_dir} holds an interrupted run ({checkpoint}); add --resume to continue "
            "it, or choose a new output folder"
        )
    train_rows, val_rows = (_rows(cohort, split) for split in ("train", "val"))
    labelled = pd.concat([train_rows, val_rows, _rows(cohort, "test", required=False)])
    info = infer_task(labelled["label"], config.task, config.positive_class)
    if info.task == "regression":
        fitted = infer_task(train_rows["label"], "regression")
        info.target_mean, info.target_std = fitted.target_mean, fitted.target_std
        info.value_range = config.value_range or fitted.value_range
    info.referable_index(config.referable_from)  # refuse a bad value before training
    if (config.value_range or config.flag_below is not None) and info.task != "regression":
        raise ConfigError(f"value_range and flag_below apply to regression; task is {info.task}")
    if config.trust.calibration in ("platt", "isotonic") and info.task != "binary":
        raise ConfigError(
            f"trust.calibration={config.trust.calibration} fits binary tasks only and this "
            f"task is {info.task}; use --set trust.calibration=temperature"
        )
    spec = _resolve_spec(config.preprocess, train_rows, val_rows)
    precision = _precision(config.precision)
    workers = config.num_workers if config.num_workers is not None else auto_workers()
    resolved = config.model_copy(
        update={
            "task": info.task,
            "preprocess": spec,
            "precision": precision,
            "num_workers": workers,
        }
    )
    model_args = _model_args(config, spec, info)
    torch.manual_seed(config.seed)
    model = create_model(config.model, **model_args)
    if init_state is not None:
        model.load_state_dict(init_state)
    memory_format = torch.channels_last if spec.spatial_dims == 2 else torch.channels_last_3d
    model = model.to(memory_format=memory_format)

    train_set = ScanDataset(train_rows, info.encode(train_rows["label"]), spec, train=True)
    val_set = ScanDataset(val_rows, info.encode(val_rows["label"]), spec, train=False)
    some_train = train_rows.sample(min(len(train_rows), NORM_SCANS), random_state=config.seed)
    norm_set = ScanDataset(some_train, info.encode(some_train["label"]), spec, train=False)
    norm_loader = make_loader(norm_set, config.batch_size, 0, shuffle=False, seed=0)
    _require_every_class(info, val_set.targets, "val")
    loss_fn = _loss(info, config, train_set.targets)
    optimizer = _optimizer(model, config)
    averaged = weight_average(
        model, config.ema_epochs, math.ceil(len(train_set) / config.batch_size)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    metric = _selection_metric(info)
    state = {
        "epoch": 0,
        "best_score": -math.inf,
        "best_loss": math.inf,
        "top_score": -math.inf,
        "best_epoch": 0,
        "best_model": None,
        "history": [],
        "seconds": 0.0,
        "stopped_by": "the last epoch",
    }
    fingerprint = _config_fingerprint(resolved, cohort) + init_id
    if resume:
        state = _load_checkpoint(checkpoint, fingerprint, model, averaged, optimizer, scheduler)
    spent_before, resumed_at = state["seconds"], state["epoch"]  # 0, 0 unless resumed
    loop_start = time.perf_counter()

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with progress_display(*columns, disable=not show_progress) as progress:
        epochs_bar = progress.add_task("epochs", total=config.epochs, completed=state["epoch"])
        batches_bar = progress.add_task("batches", total=None)
        for epoch in range(resumed_at + 1, config.epochs + 1):
            if epoch - state["best_epoch"] > config.patience and state["best_epoch"]:
                state["stopped_by"] = "early stopping"
                break
            now = time.perf_counter()
            if epoch - 1 > resumed_at:  # the mean epoch of this session
                epoch_s = (now - loop_start) / (epoch - 1 - resumed_at)
            else:  # none yet in this session: a resumed run's earlier mean, if any
                epoch_s = spent_before / resumed_at if resumed_at else None
            if not within_time_limit(config, spent_before + now - start, epoch_s):
                state["stopped_by"] = "the time limit"
                break
            tick = time.perf_counter()
            epoch_seed = config.seed * 100_003 + epoch
            torch.manual_seed(epoch_seed)
            loader = make_loader(
                train_set, config.batch_size, workers, shuffle=True, seed=epoch_seed
            )
            progress.reset(batches_bar, total=len(loader), description=f"epoch {epoch} train")
            train_loss = train_one_epoch(
                model,
                loader,
                loss_fn,
                optimizer,
                averaged,
                precision,
                memory_format,
                on_batch=lambda: progress.advance(batches_bar),
            )
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            update_bn(norm_loader, averaged.module)
            val_loader = make_loader(
                val_set, config.batch_size, workers, shuffle=False, seed=epoch_seed
            )
            outputs = infer(averaged.module, val_loader, precision, memory_format)
            val_loss = float(loss_fn(torch.as_tensor(outputs), val_set.targets))
            score = selection_score(info, val_set.targets.numpy(), outputs)
            state["top_score"] = max(state["top_score"], score)
            improved = selects(score, val_loss, state, config.selection_tolerance)
            if improved:
                state.update(
                    best_score=score,
                    best_loss=val_loss,
                    best_epoch=epoch,
                    best_model={k: v.clone() for k, v in averaged.module.state_dict().items()},
                )
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                f"val_{metric}": _shown(metric, score),
                "lr": lr,
                "seconds": round(time.perf_counter() - tick, 2),
                "best": improved,
            }
            state["history"].append(row)
            state["epoch"] = epoch
            state["seconds"] = spent_before + time.perf_counter() - start
            _save_checkpoint(checkpoint, fingerprint, model, averaged, optimizer, scheduler, state)
            _write_history(out_dir / "metrics.csv", state["history"])
            progress.update(
                epochs_bar,
                advance=1,
                description=(
                    f"epoch {epoch}/{config.epochs} loss {train_loss:.3f} val {metric} "
                    f"{_shown(metric, score):.3f} (best {_shown(metric, state['best_score']):.3f} "
                    f"@ {state['best_epoch']})"
                ),
            )
    if state["best_model"] is None:
        raise ConfigError("training ended before any epoch completed")
    model.load_state_dict(state["best_model"])
    model = model.to(memory_format=torch.contiguous_format).eval()
    return FitResult(
        model,
        info,
        spec,
        resolved,
        model_args,
        pd.DataFrame(state["history"]),
        state["best_epoch"],
        metric,
        _shown(metric, state["best_score"]),
        spent_before + time.perf_counter() - start,
        state["stopped_by"],
    )


def within_time_limit(config: TrainConfig, spent_s: float, epoch_s: float | None) -> bool:
    """Whether an epoch of about ``epoch_s`` seconds, started after ``spent_s`` seconds
    of the run, ends within ``config.time_limit_minutes`` (0 = no limit). With no epoch
    timed yet (``epoch_s`` None) the epoch runs, so every run trains at least one."""
    limit_s = config.time_limit_minutes * 60
    return not limit_s or epoch_s is None or spent_s + epoch_s <= limit_s


def weight_average(model, ema_epochs: float, steps_per_epoch: int) -> AveragedModel:
    """An exponential moving average of ``model``'s weights (torch's ``AveragedModel``),
    updated after every optimiser step with a time constant of ``ema_epochs`` epochs; 0
    makes it a copy of the latest weights. Its batch-norm statistics are the live
    model's until :func:`fit` recomputes them for the averaged weights (``update_bn``):
    the live model's statistics do not fit averaged weights (measured on PneumoniaMNIST,
    epoch 5: validation loss 0.43 with them, 0.07 recomputed).

    Averaging the weights of a run's recent steps finds flatter minima that generalise
    better under a shift between training and test data (Izmailov et al. 2018, SWA; Cha
    et al. 2021, SWAD), and makes the per-epoch validation score, hence the selection,
    less noisy.
    """
    decay = 1 - 1 / max(ema_epochs * steps_per_epoch, 1)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def train_one_epoch(
    model, loader, loss_fn, optimizer, averaged, precision, memory_format, on_batch=None
) -> float:
    """One pass over ``loader``, updating ``averaged`` (:func:`weight_average`) after
    every step; returns the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for images, targets in loader:
        images = images.to(memory_format=memory_format)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            outputs = model(images)
        loss = loss_fn(outputs.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        averaged.update_parameters(model)
        total += float(loss.detach()) * len(targets)
        count += len(targets)
        if on_batch is not None:
            on_batch()
    return total / max(count, 1)


@torch.no_grad()
def infer(
    model, loader, precision: str = "fp32", memory_format=torch.contiguous_format
) -> np.ndarray:
    """Network outputs for every item of ``loader`` in order, shape (N, outputs), float32."""
    model.eval()
    chunks = []
    for images, _ in loader:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            chunks.append(model(images.to(memory_format=memory_format)).float())
    return torch.cat(chunks).numpy()


def selects(score: float, loss: float, state: dict, tolerance: float) -> bool:
    """Whether this epoch replaces the selected one: its score is within ``tolerance`` of
    the best score seen so far (``state["top_score"]``, this epoch included) and either the
    selected epoch no longer is, or this epoch's validation loss is lower.

    A saturated validation AUROC (0.994–0.997 from epoch 1 on PneumoniaMNIST) would
    otherwise pick an early, high-learning-rate epoch by noise in the third decimal.
    The selected epoch always stays within ``tolerance`` of the best, and every
    selection is an epoch whose weights were kept when it ran.
    """
    if not math.isfinite(score) or score < state["top_score"] - tolerance:
        return False
    return state["best_score"] < state["top_score"] - tolerance or loss < state["best_loss"]


def selection_score(info: TaskInfo, targets: np.ndarray, outputs: np.ndarray) -> float:
    """Validation score to maximise: AUROC (binary / macro one-vs-rest), quadratic
    kappa (ordinal), −MAE (regression); −inf for non-finite outputs. Every class must be
    in ``targets`` (:func:`fit` checks the validation split before training)."""
    if not np.isfinite(outputs).all():
        return -math.inf  # a diverged epoch is never selected
    scores = info.outputs_to_scores(outputs)
    if info.task == "regression":
        truth = targets * info.target_std + info.target_mean
        return -float(mean_absolute_error(truth, scores))
    if info.task == "ordinal":
        return float(cohen_kappa_score(targets, median_grade(scores), weights="quadratic"))
    if info.task == "binary":
        return float(roc_auc_score(targets, scores[:, 1]))
    return float(roc_auc_score(targets, scores, multi_class="ovr", labels=range(scores.shape[1])))


def _resolve_spec(given, train_rows: pd.DataFrame, val_rows: pd.DataFrame) -> PreprocessSpec:
    """The spec for the cohort's most common kind of scan (dimensionality and colour);
    scans that cannot go through it are refused before training, by name."""
    rows = pd.concat([train_rows, val_rows])
    kinds = rows["shape"].map(lambda s: (len(s), int(s[0]) >= 3 and len(s) == 3))
    typical = rows[kinds == kinds.mode().iloc[0]]
    shapes = typical["shape"].map(tuple)
    shape = list(shapes.mode().iloc[0])
    modality = str(typical["modality"].mode().iloc[0])
    spec = resolve_spec(given, modality, shape)
    misfits = rows[~rows["shape"].map(lambda s: fits_spec(spec, list(s)))]
    if len(misfits):
        names = ", ".join(f"{r.scan_id} {list(r.shape)}" for r in misfits.head(5).itertuples())
        raise ConfigError(
            f"{len(misfits)} training/validation scans do not fit preset {spec.preset} "
            f"({spec.spatial_dims}D, {spec.in_channels} channel(s)), e.g. {names}; remove "
            "them from the cohort (or clear their split) and train again"
        )
    return spec


def _require_every_class(info: TaskInfo, targets: torch.Tensor, split: str) -> None:
    if info.task == "regression":
        return
    missing = sorted(set(range(info.num_outputs)) - set(targets.tolist()))
    if missing:
        names = [info.classes[i] for i in missing]
        raise ConfigError(
            f"the {split} split has no scans of class(es) {names}, so validation AUROC / "
            "kappa is undefined; re-split with `medres split` (stratified by label)"
        )


def _selection_metric(info: TaskInfo) -> str:
    return {"regression": "mae", "ordinal": "kappa_quadratic"}.get(info.task, "auroc")


def _shown(metric: str, score: float) -> float:
    return -score if metric == "mae" else score


def _rows(cohort: Cohort, split: str, required: bool = True) -> pd.DataFrame:
    rows = cohort.labelled(split)
    if required and rows.empty:
        raise ConfigError(
            f"the cohort has no labelled '{split}' scans; split it first: "
            "`medres split COHORT.parquet -o COHORT_split.parquet`"
        )
    return rows


def _model_args(config: TrainConfig, spec: PreprocessSpec, info: TaskInfo) -> dict[str, Any]:
    args = {
        "in_channels": spec.in_channels,
        "num_classes": info.num_outputs,
        "spatial_dims": spec.spatial_dims,
        "dropout": config.dropout,
        "stem_stride": auto_stem_stride(spec.spatial_size),
    }
    return {**args, **config.model_args}


def _precision(requested: str) -> str:
    """bf16 autocast only where the CPU has native bf16 (without it bf16 was 10–20×
    slower than fp32 on this project's AVX2 machine)."""
    if requested == "auto":
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return requested


def auto_workers() -> int:
    """One DataLoader worker beside the training process when there is a second core."""
    return 1 if (os.cpu_count() or 1) > 1 else 0


def make_loader(dataset, batch_size: int, workers: int, *, shuffle: bool, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        drop_last=False,
    )


def _loss(info: TaskInfo, config: TrainConfig, targets: torch.Tensor):
    if info.task == "regression":
        mse = torch.nn.MSELoss()
        return lambda outputs, y: mse(outputs[:, 0], y.float())
    weight = None
    if config.class_weights == "balanced":
        counts = torch.bincount(targets, minlength=info.num_outputs).float().clamp(min=1)
        weight = counts.sum() / (len(counts) * counts)
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)


def _optimizer(model, config: TrainConfig):
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _lr_factor(config: TrainConfig):
    """Epoch → learning-rate factor: linear warm-up, then cosine / multi-step (×0.1 at
    50 % and 75 % of the epochs, the MedMNIST schedule) / constant."""
    epochs, warmup = config.epochs, min(config.warmup_epochs, config.epochs - 1)

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        if config.schedule == "cosine":
            progress = (epoch - warmup) / max(epochs - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * progress))
        if config.schedule == "multistep":
            return 0.1 ** sum(epoch >= m for m in (0.5 * epochs, 0.75 * epochs))
        return 1.0

    return factor


def _config_fingerprint(config: TrainConfig, cohort: Cohort) -> str:
    """Identifies the run a checkpoint belongs to (config + cohort scans and labels)."""
    text = config.model_dump_json(exclude={"trust"}) + cohort.fingerprint()  # fitted after
    return hashlib.sha256(text.encode()).hexdigest()


def _save_checkpoint(path: Path, fingerprint, model, averaged, optimizer, scheduler, state):
    payload = {
        "fingerprint": fingerprint,
        "model": model.state_dict(),
        "averaged": averaged.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": {**state, "history": json.dumps(state["history"])},
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _load_checkpoint(path: Path, fingerprint, model, averaged, optimizer, scheduler) -> dict:
    if not path.is_file():
        raise ConfigError(f"nothing to resume: no checkpoint at {path}; run without --resume")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload["fingerprint"] != fingerprint:
        raise ConfigError(
            f"{path} belongs to a run with another configuration or cohort; "
            "use the same settings to resume, or a new output folder"
        )
    model.load_state_dict(payload["model"])
    averaged.load_state_dict(payload["averaged"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    state = payload["state"]
    state["history"] = json.loads(state["history"])
    return state


def _write_history(path: Path, history: list[dict]) -> None:
    write_text(path, pd.DataFrame(history).to_csv(index=False))
