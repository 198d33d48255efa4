"""Training: :func:`fit` — a plain PyTorch loop with checkpoints, resume and early stopping.

One epoch = :func:`~medres.train.steps.train_one_epoch` (which also updates an
exponential moving average of the weights, :func:`~medres.train.steps.weight_average`),
batch-norm statistics recomputed for the averaged weights, then
:func:`~medres.train.steps.infer` of the averaged weights on the validation split; the
epoch with the best validation score (AUROC, quadratic kappa for ordinal tasks, MAE for
regression) is kept, near-ties going to the lower validation loss
(:func:`~medres.train.steps.selects`). Every epoch ends with ``checkpoints/last.pt`` in
the output folder and a row in ``metrics.csv``; ``resume=True`` continues from the
checkpoint. Each epoch's randomness (shuffle, augmentation, dropout) is seeded from
``(seed, epoch)``, so a resumed run repeats exactly what an uninterrupted one does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.optim.swa_utils import AveragedModel, update_bn

from medres.cohort import Cohort
from medres.device import prepare_device, resolve_device, resolve_precision
from medres.errors import ConfigError
from medres.inference import auto_workers
from medres.models import create_model
from medres.progress import progress as progress_display
from medres.tasks import TaskInfo, infer_task
from medres.train.checkpoint import (
    CHECKPOINT,
    config_fingerprint,
    load_checkpoint,
    refuse_overwrite,
    save_checkpoint,
    write_history,
)
from medres.train.class_names import class_name_map, resolve_class_names
from medres.train.config import TrainConfig, task_conflict
from medres.train.data import (
    ScanDataset,
    cohort_spec,
    make_loader,
    require_every_class,
    split_rows,
)
from medres.train.distributed import (
    Ranks,
    agree,
    device_for,
    from_env,
    gather,
    same_on_every_rank,
    shard,
    wrap,
)
from medres.train.distributed import start as start_ranks
from medres.train.distributed import stop as stop_ranks
from medres.train.state import RunState, Selection, StopReason
from medres.train.steps import (
    infer,
    loss_function,
    lr_factor,
    model_args,
    optimizer,
    selection_metric,
    selection_score,
    selects,
    shown,
    train_one_epoch,
    weight_average,
    within_time_limit,
)
from medres.transforms import PreprocessSpec

NORM_SCANS = 512  # training scans (not augmented) that set the averaged weights' BN statistics
RANK_SEED = 7_919  # ranks draw different shuffles and augmentations (rank 0: a single process's)


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
    stopped_by: StopReason
    class_names: list[str] | None = None  # display names aligned with info.classes


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

    Under torchrun every rank runs this with its shard of the scans
    (:mod:`medres.train.distributed`); only rank 0 writes, and every rank returns the same
    selected weights.

    Raises:
        ConfigError: no train/val rows, a bad label set, a checkpoint from another config.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    refuse_overwrite(out_dir, resume)
    run = _prepare(cohort, config, init_state)
    try:
        fingerprint = config_fingerprint(run.resolved, cohort) + init_id
        parts = (run.model, run.averaged, run.optimizer, run.scheduler)
        state = load_checkpoint(out_dir / CHECKPOINT, fingerprint, *parts) if resume else RunState()
        clock = _Clock(start, spent_before=state.seconds, resumed_at=state.epoch)
        shown_here = show_progress and run.ranks.main
        with progress_display(*_columns(), disable=not shown_here) as progress:
            bars = _Bars(progress, config.epochs, done=state.epoch)
            for epoch in range(state.epoch + 1, config.epochs + 1):
                stop = agree(_stop_reason(config, state.selection, epoch, clock), run.ranks)
                if stop is not None:
                    state.stopped_by = stop
                    break
                row = _run_epoch(run, state.selection, epoch, bars)
                state.history.append(row)
                state.epoch, state.seconds = epoch, clock.spent()
                if run.ranks.main:
                    save_checkpoint(out_dir / CHECKPOINT, fingerprint, *parts, state)
                    write_history(out_dir / "metrics.csv", state.history)
                bars.epoch_done(row, run, state.selection)
        if state.selection.best_model is not None:
            same_on_every_rank(state.selection.best_model, run.ranks)
    finally:
        stop_ranks(run.ranks)
    return _result(run, state, clock)


@dataclass
class _Run:
    """What every epoch of one run uses, built once by :func:`_prepare`."""

    config: TrainConfig  # as given
    resolved: TrainConfig  # task, preprocess, precision and workers filled in
    info: TaskInfo
    spec: PreprocessSpec
    model_args: dict[str, Any]
    model: torch.nn.Module
    memory_format: torch.memory_format
    device: torch.device
    ranks: Ranks
    trainer: torch.nn.Module  # the model as trained: DistributedDataParallel under torchrun
    train_set: ScanDataset  # this rank's shard (all of train for one process)
    val_set: ScanDataset  # this rank's shard of val
    val_targets: torch.Tensor  # every validation scan's, in the split's order
    norm_loader: Any
    loss_fn: Any
    optimizer: torch.optim.Optimizer
    averaged: AveragedModel
    scheduler: torch.optim.lr_scheduler.LambdaLR
    metric: str

    @property
    def precision(self) -> str:
        return self.resolved.precision

    @property
    def workers(self) -> int:
        return self.resolved.num_workers

    @property
    def batch_size(self) -> int:
        """Scans per step on this rank: the configured batch shared by the ranks, so one
        step of all ranks takes the batch one process would."""
        return max(1, self.config.batch_size // self.ranks.world)

    @property
    def pin(self) -> bool:
        """Page-locked batches for a GPU (copies overlap the computation)."""
        return self.device.type == "cuda"


def _prepare(cohort: Cohort, config: TrainConfig, init_state) -> _Run:
    """Task, spec, model, datasets, loss, optimiser, weight average and schedule; every
    refusal that needs the data happens here, before the first epoch."""
    train_rows, val_rows = (split_rows(cohort, split) for split in ("train", "val"))
    info = _task(config, train_rows, val_rows, split_rows(cohort, "test", required=False))
    names = resolve_class_names(info.classes, config.class_names) if info.classes else None
    spec = cohort_spec(config.preprocess, train_rows, val_rows)
    ranks = from_env()
    device = device_for(ranks, resolve_device(config.device))
    prepare_device(device)
    start_ranks(ranks, device)
    workers = config.num_workers if config.num_workers is not None else auto_workers(device)
    resolved = config.model_copy(
        update={
            "task": info.task,
            "preprocess": spec,
            "precision": resolve_precision(config.precision, device, spec.spatial_dims),
            "num_workers": workers,
            "device": str(device),
            "class_names": class_name_map(info.classes, names) or None,
        }
    )
    args = model_args(config, spec, info)
    torch.manual_seed(config.seed)
    model = create_model(config.model, **args)
    if init_state is not None:
        model.load_state_dict(init_state)
    memory_format = torch.channels_last if spec.spatial_dims == 2 else torch.channels_last_3d
    model = model.to(device, memory_format=memory_format)

    train_set, val_set, norm_loader = _datasets(config, info, spec, train_rows, val_rows, ranks)
    all_train = torch.as_tensor(info.encode(train_rows["label"]))  # class weights: every rank's
    loss_fn = loss_function(info, config, all_train, device)
    opt = optimizer(model, config)
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    averaged = weight_average(model, config.ema_epochs, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(config))
    return _Run(
        config=config,
        resolved=resolved,
        info=info,
        spec=spec,
        model_args=args,
        model=model,
        memory_format=memory_format,
        device=device,
        ranks=ranks,
        trainer=wrap(model, ranks, device),
        train_set=train_set,
        val_set=val_set,
        val_targets=torch.as_tensor(info.encode(val_rows["label"])),
        norm_loader=norm_loader,
        loss_fn=loss_fn,
        optimizer=opt,
        averaged=averaged,
        scheduler=scheduler,
        metric=selection_metric(info),
    )


def _datasets(config: TrainConfig, info: TaskInfo, spec, train_rows, val_rows, ranks: Ranks):
    """This rank's training and validation shards (cached in memory: each rank reads only
    its own scans) and the loader of the scans that recompute the averaged weights'
    batch-norm statistics (the same scans on every rank, so every rank gets the same)."""
    mine = shard(train_rows, ranks, pad=True)
    train_set = ScanDataset(mine, info.encode(mine["label"]), spec, train=True)
    val_mine = shard(val_rows, ranks, pad=False)
    val_set = ScanDataset(val_mine, info.encode(val_mine["label"]), spec, train=False)
    require_every_class(info, torch.as_tensor(info.encode(val_rows["label"])), "val")
    some_train = train_rows.sample(min(len(train_rows), NORM_SCANS), random_state=config.seed)
    norm_set = ScanDataset(some_train, info.encode(some_train["label"]), spec, train=False)
    norm_loader = make_loader(norm_set, config.batch_size, 0, shuffle=False, seed=0)
    return train_set, val_set, norm_loader


def _task(config: TrainConfig, train_rows, val_rows, test_rows) -> TaskInfo:
    """The task from every labelled row (``config.task`` unless "auto"); a regression
    target is standardised with the training rows' mean and sd."""
    labelled = pd.concat([train_rows, val_rows, test_rows])
    info = infer_task(labelled["label"], config.task, config.positive_class)
    if not info.kind.classifies:
        fitted = infer_task(train_rows["label"], "regression")
        info.target_mean, info.target_std = fitted.target_mean, fitted.target_std
        info.value_range = config.value_range or fitted.value_range
    info.referable_index(config.referable_from)  # refuse a bad value before training
    problem = task_conflict(config, info.task)  # TrainConfig checked a named task already
    if problem:
        raise ConfigError(problem)
    return info


def _run_epoch(run: _Run, selection: Selection, epoch: int, bars: _Bars) -> dict:
    """Train one epoch, validate the averaged weights, update the selection; returns the
    epoch's ``metrics.csv`` row."""
    tick = time.perf_counter()
    config = run.config
    epoch_seed = config.seed * 100_003 + epoch + RANK_SEED * run.ranks.rank
    torch.manual_seed(epoch_seed)
    loader = make_loader(
        run.train_set, run.batch_size, run.workers, shuffle=True, seed=epoch_seed, pin=run.pin
    )
    bars.start_epoch(epoch, len(loader))
    train_loss, skipped = train_one_epoch(
        run.trainer,
        loader,
        run.loss_fn,
        run.optimizer,
        run.averaged,
        run.precision,
        run.memory_format,
        on_batch=bars.batch,
        device=run.device,
    )
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    update_bn(run.norm_loader, run.averaged.module, device=run.device)
    val_loader = make_loader(
        run.val_set, config.batch_size, run.workers, shuffle=False, seed=epoch_seed, pin=run.pin
    )
    mine = infer(run.averaged.module, val_loader, run.precision, run.memory_format, run.device)
    outputs = gather(mine, run.ranks, len(run.val_targets))  # every val scan, once, in order
    val_outputs = torch.as_tensor(outputs, device=run.device)
    val_loss = float(run.loss_fn(val_outputs, run.val_targets.to(run.device)))
    score = selection_score(run.info, run.val_targets.numpy(), outputs)
    selection.top_score = max(selection.top_score, score)
    improved = selects(score, val_loss, selection, config.selection_tolerance)
    if improved:
        selection.keep(epoch, score, val_loss, run.averaged.module)
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "skipped_steps": skipped,
        "val_loss": val_loss,
        f"val_{run.metric}": shown(run.metric, score),
        "lr": lr,
        "val_scans": len(outputs),
        "seconds": round(time.perf_counter() - tick, 2),
        "best": improved,
    }


def _stop_reason(
    config: TrainConfig, selection: Selection, epoch: int, clock: _Clock
) -> StopReason | None:
    """Why ``epoch`` does not run (``patience`` epochs without a selection, or the time
    limit), or None."""
    best = selection.best_epoch
    if epoch - best > config.patience and best:
        return StopReason.EARLY_STOPPING
    if not clock.allows(config, epoch):
        return StopReason.TIME_LIMIT
    return None


def _result(run: _Run, state: RunState, clock: _Clock) -> FitResult:
    """The selected epoch's weights, in the default memory layout, in eval mode."""
    selection = state.selection
    if selection.best_model is None:
        if state.history:  # epochs ran, and none gave finite validation outputs
            losses = ", ".join(f"{h['train_loss']:.3g}" for h in state.history)
            raise ConfigError(
                f"training diverged: no epoch gave finite validation outputs (training "
                f"loss per epoch: {losses}); lower the learning rate (--set lr=...) or "
                "train in fp32 (--set precision=fp32)"
            )
        raise ConfigError("training ended before any epoch completed")
    run.model.load_state_dict(selection.best_model)
    model = run.model.to("cpu", memory_format=torch.contiguous_format).eval()  # device-neutral
    history = pd.DataFrame(state.history)
    best = shown(run.metric, selection.best_score)
    return FitResult(
        model,
        run.info,
        run.spec,
        run.resolved,
        run.model_args,
        history,
        selection.best_epoch,
        run.metric,
        best,
        clock.spent(),
        state.stopped_by,
        list(run.resolved.class_names.values()) if run.resolved.class_names else None,
    )


@dataclass
class _Clock:
    """The time-limit arithmetic: seconds spent across resumes, and the mean epoch."""

    start: float  # fit's start (perf_counter)
    spent_before: float  # seconds of the run before this resume
    resumed_at: int  # epochs done before this resume
    loop_start: float = field(default_factory=time.perf_counter)

    def spent(self) -> float:
        return self.spent_before + time.perf_counter() - self.start

    def allows(self, config: TrainConfig, epoch: int) -> bool:
        """Whether ``epoch``, at the mean epoch time so far, ends within the limit."""
        now = time.perf_counter()
        if epoch - 1 > self.resumed_at:  # the mean epoch of this session
            epoch_s = (now - self.loop_start) / (epoch - 1 - self.resumed_at)
        else:  # none yet in this session: a resumed run's earlier mean, if any
            epoch_s = self.spent_before / self.resumed_at if self.resumed_at else None
        return within_time_limit(config, self.spent_before + now - self.start, epoch_s)


def _columns():
    return [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]


class _Bars:
    """An epochs bar and a batches bar (lines in a log when not on a terminal)."""

    def __init__(self, progress, epochs: int, done: int):
        self.progress, self.epochs = progress, epochs
        self.epochs_bar = progress.add_task("epochs", total=epochs, completed=done)
        self.batches_bar = progress.add_task("batches", total=None)

    def start_epoch(self, epoch: int, batches: int) -> None:
        description = f"epoch {epoch} train"
        self.progress.reset(self.batches_bar, total=batches, description=description)

    def batch(self) -> None:
        self.progress.advance(self.batches_bar)

    def epoch_done(self, row: dict, run: _Run, selection: Selection) -> None:
        metric = run.metric
        best = shown(metric, selection.best_score)
        self.progress.update(
            self.epochs_bar,
            advance=1,
            description=(
                f"epoch {row['epoch']}/{self.epochs} loss {row['train_loss']:.3f} val {metric} "
                f"{row[f'val_{metric}']:.3f} (best {best:.3f} @ {selection.best_epoch})"
                + (
                    f"; {row['skipped_steps']} step(s) skipped: gradients not finite "
                    "(if it recurs: --set precision=fp32)"
                    if row["skipped_steps"]
                    else ""
                )
            ),
        )
