"""The parts of one training run: model arguments, loss, optimiser and schedule, the
weight average, one epoch of training, inference, the selection score and rule, and the
time-limit rule. Each is a small function; :func:`~medres.train.fit` calls them in order.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import cohen_kappa_score, mean_absolute_error, roc_auc_score
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from medres.device import autocast, needs_grad_scaler
from medres.inference import forward
from medres.tasks import TaskInfo
from medres.train.config import TrainConfig
from medres.transforms import PreprocessSpec

if TYPE_CHECKING:
    from medres.train.state import Selection

CPU = torch.device("cpu")


def auto_stem_stride(spatial_size: tuple[int, ...]) -> int:
    """The largest stem stride leaving the first stage ≥ 14 px per side in 2D (28 px → 2,
    224² → 4: the ImageNet stem) and ≥ 7 voxels in 3D (28³ → 4, 64³ → 8), where every
    halving of the first stage's grid makes a training step several times cheaper
    (measured on 2 CPU cores: 28³ at stride 2 ≈ 8 scans/s, at stride 4 ≈ 30)."""
    side, dims = min(spatial_size), len(spatial_size)
    strides, floor = ((4, 2, 1), 14) if dims == 2 else ((8, 4, 2, 1), 7)
    return next(s for s in strides if side // s >= floor or s == 1)


def model_args(config: TrainConfig, spec: PreprocessSpec, info: TaskInfo) -> dict[str, Any]:
    """``create_model``'s arguments: from the spec and task, then ``config.model_args``."""
    args = {
        "in_channels": spec.in_channels,
        "num_classes": info.num_outputs,
        "spatial_dims": spec.spatial_dims,
        "dropout": config.dropout,
        "stem_stride": auto_stem_stride(spec.spatial_size),
    }
    return {**args, **config.model_args}


def loss_function(
    info: TaskInfo, config: TrainConfig, targets: torch.Tensor, device: torch.device = CPU
):
    """MSE on the standardised target (regression), else cross-entropy (optionally with
    balanced class weights and label smoothing): :meth:`~medres.tasks.Task.loss`, on
    ``device``."""
    loss = info.kind.loss(
        targets,
        info.num_outputs,
        class_weights=config.class_weights,
        label_smoothing=config.label_smoothing,
    )
    return loss.to(device) if isinstance(loss, torch.nn.Module) else loss


def optimizer(model, config: TrainConfig):
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(config: TrainConfig):
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


def weight_average(model, ema_epochs: float, steps_per_epoch: int) -> AveragedModel:
    """An exponential moving average of ``model``'s weights (torch's ``AveragedModel``),
    updated after every optimiser step with a time constant of ``ema_epochs`` epochs; 0
    makes it a copy of the latest weights. Its batch-norm statistics are the live
    model's until :func:`~medres.train.fit` recomputes them for the averaged weights
    (``update_bn``): the live model's statistics do not fit averaged weights (measured on
    PneumoniaMNIST, epoch 5: validation loss 0.43 with them, 0.07 recomputed).

    Averaging the weights of a run's recent steps finds flatter minima that generalise
    better under a shift between training and test data (Izmailov et al. 2018, SWA; Cha
    et al. 2021, SWAD), and makes the per-epoch validation score, hence the selection,
    less noisy.
    """
    decay = 1 - 1 / max(ema_epochs * steps_per_epoch, 1)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def train_one_epoch(
    model,
    loader,
    loss_fn,
    optimizer,
    averaged,
    precision,
    memory_format,
    on_batch=None,
    device: torch.device = CPU,
) -> tuple[float, int]:
    """One pass over ``loader``, updating ``averaged`` (:func:`weight_average`) after
    every step; returns the mean training loss of the steps taken and how many were
    skipped. ``precision`` fp16 scales the loss (a GPU's fp16 gradients underflow
    without it).

    A step whose gradients are not finite is skipped, weights and average untouched, as
    fp16's loss scaler does (an unexplained NaN in one bf16 3D step on a CPU once
    poisoned every later epoch); a model that diverges skips them all, and the caller
    says so."""
    model.train()
    scaler = torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(precision))
    total, count, skipped = 0.0, 0, 0
    for images, targets in loader:
        images = images.to(device, memory_format=memory_format, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, precision):
            outputs = model(images)
        loss = loss_fn(outputs.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if not scaler.is_enabled() and not _finite_gradients(model):
            skipped += 1
            if on_batch is not None:
                on_batch()
            continue
        scaler.step(optimizer)
        scaler.update()
        averaged.update_parameters(model)
        total += float(loss.detach()) * len(targets)
        count += len(targets)
        if on_batch is not None:
            on_batch()
    return (total / count if count else math.nan), skipped


def _finite_gradients(model) -> bool:
    """Whether every gradient of ``model`` is finite, element by element (not through
    their norms: a finite gradient of ~1e20 squares past float32's range, and a check on
    norms skipped 45 of 270 sound steps of a 3D training)."""
    grads = [torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None]
    return bool(torch.stack(grads).all()) if grads else True


@torch.no_grad()
def infer(
    model,
    loader,
    precision: str = "fp32",
    memory_format=torch.contiguous_format,
    device: torch.device = CPU,
) -> np.ndarray:
    """Network outputs for every item of ``loader`` in order, shape (N, outputs), float32
    (:func:`medres.inference.forward`, one pass without dropout)."""
    chunks = []
    for images, _ in loader:
        logits, _ = forward(
            model, images, device=device, precision=precision, memory_format=memory_format
        )
        chunks.append(logits[0])
    return torch.cat(chunks).numpy()


def selection_metric(info: TaskInfo) -> str:
    return info.kind.selection_metric


def shown(metric: str, score: float) -> float:
    """A selection score as reported: MAE is maximised as −MAE and shown as MAE."""
    return -score if metric == "mae" else score


def selection_score(info: TaskInfo, targets: np.ndarray, outputs: np.ndarray) -> float:
    """Validation score to maximise: AUROC (binary / macro one-vs-rest), quadratic
    kappa (ordinal), −MAE (regression); −inf for non-finite outputs. Every class must be
    in ``targets`` (:func:`~medres.train.fit` checks the validation split before training)."""
    if not np.isfinite(outputs).all():
        return -math.inf  # a diverged epoch is never selected
    scores = info.kind.metric_scores(info.outputs_to_scores(outputs))
    return _SELECTION_SCORE[info.kind.selection_metric](info, targets, scores)


def _negative_mae(info: TaskInfo, targets: np.ndarray, predictions: np.ndarray) -> float:
    truth = targets * info.target_std + info.target_mean  # standardised → label units
    return -float(mean_absolute_error(truth, predictions))


def _kappa_quadratic(info: TaskInfo, targets: np.ndarray, probs: np.ndarray) -> float:
    """Of the shown class (ordinal: the median grade)."""
    return float(cohen_kappa_score(targets, info.kind.shown_class(probs), weights="quadratic"))


def _auroc(info: TaskInfo, targets: np.ndarray, scores: np.ndarray) -> float:
    """Binary: of P(positive) (N,); else macro one-vs-rest over the K columns."""
    if scores.ndim == 1:
        return float(roc_auc_score(targets, scores))
    return float(roc_auc_score(targets, scores, multi_class="ovr", labels=range(scores.shape[1])))


_SELECTION_SCORE = {  # Task.selection_metric -> the score, maximised
    "mae": _negative_mae,
    "kappa_quadratic": _kappa_quadratic,
    "auroc": _auroc,
}


def selects(score: float, loss: float, selection: Selection, tolerance: float) -> bool:
    """Whether this epoch replaces the selected one: its score is within ``tolerance`` of
    the best score seen so far (``selection.top_score``, this epoch included) and either
    the selected epoch no longer is, or this epoch's validation loss is lower.

    A saturated validation AUROC (0.994–0.997 from epoch 1 on PneumoniaMNIST) would
    otherwise pick an early, high-learning-rate epoch by noise in the third decimal.
    The selected epoch always stays within ``tolerance`` of the best, and every
    selection is an epoch whose weights were kept when it ran.
    """
    if not math.isfinite(score) or score < selection.top_score - tolerance:
        return False
    best, top = selection.best_score, selection.top_score
    return best < top - tolerance or loss < selection.best_loss


def within_time_limit(config: TrainConfig, spent_s: float, epoch_s: float | None) -> bool:
    """Whether an epoch of about ``epoch_s`` seconds, started after ``spent_s`` seconds
    of the run, ends within ``config.time_limit_minutes`` (0 = no limit). With no epoch
    timed yet (``epoch_s`` None) the epoch runs, so every run trains at least one."""
    limit_s = config.time_limit_minutes * 60
    return not limit_s or epoch_s is None or spent_s + epoch_s <= limit_s
