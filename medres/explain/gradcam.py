"""Grad-CAM on the network's input grid: :func:`grad_cam` over a medres Classifier.

MONAI's ``GradCAM`` on ``backbone.layer4``, one call per distinct class in the batch,
with the model in eval mode and given back exactly as it came (:func:`_explaining`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import numpy as np
import torch
from monai.data import MetaTensor
from monai.visualize import GradCAM
from torch import nn

TARGET_LAYER = "backbone.layer4"


def grad_cam(
    model: nn.Module, images: torch.Tensor, class_index: Sequence[int] | np.ndarray | int
) -> np.ndarray:
    """Grad-CAM maps of ``class_index`` for a batch, on the network's input grid.

    Args:
        model: a :class:`~medres.models.Classifier` (its backbone, a MONAI ResNet or a
            medres ``_ResNet18_3d``, has a ``layer4``), on the device of ``images``.
        images: preprocessed network input, (N, C, X, Y) or (N, C, X, Y, Z) (a plain
            tensor or a MetaTensor).
        class_index: (N,) the class to explain for each scan (usually the predicted
            one); a single int explains that class for every scan.

    Returns:
        (N, X, Y[, Z]) float32 on the CPU. Each map is Grad-CAM (ReLU of the
        gradient-weighted ``layer4`` activations) upsampled (bi/trilinear) to the input
        size and divided by its own maximum: 1 marks the strongest evidence for the class
        in that scan, 0 none. Maps are scaled per scan, so they compare regions within a
        scan, not scans with each other; a map with no positive evidence stays all 0.

    MONAI's ``GradCAM`` takes one class index for the whole batch: a per-sample tensor
    is indexed as ``logits[:, idx]`` and mixes the scans' gradients. The batch is
    therefore grouped by class, one MONAI call per distinct class (in eval mode the scans
    of a group do not interact, so each map equals the one computed for its scan alone).

    The model runs in eval mode (dropout off, BatchNorm on its running statistics, so the
    maps are deterministic), and is given back as it came: each module's train/eval flag,
    each parameter's ``requires_grad`` and ``.grad``, and no hooks left behind (MONAI
    registers hooks it never removes). Gradients are enabled internally, so calling this
    under ``torch.no_grad()`` or ``torch.inference_mode()`` works.

    Raises:
        ValueError: images not a batch of 2D/3D images, ``class_index`` of the wrong
            length or outside ``[0, num_classes)``, or a model without ``backbone.layer4``.
    """
    x = images.as_tensor() if isinstance(images, MetaTensor) else torch.as_tensor(images)
    if x.ndim not in (4, 5):
        raise ValueError(
            f"images must be a batch (N, C, X, Y) or (N, C, X, Y, Z); got shape {tuple(x.shape)}"
        )
    n = x.shape[0]
    classes = _class_indices(class_index, n, _num_classes(model))
    if n == 0:
        return np.zeros((0, *x.shape[2:]), dtype=np.float32)
    with _explaining(model):
        out = torch.zeros((n, *x.shape[2:]), dtype=torch.float32)
        dtype = next(model.parameters()).dtype
        x = x.detach().clone().to(dtype)  # a normal tensor even if made in inference mode
        cam = GradCAM(model, target_layers=TARGET_LAYER, postprocessing=_scale_by_max)
        for k in np.unique(classes):
            rows = torch.from_numpy(np.flatnonzero(classes == k))
            maps = cam(x[rows.to(x.device)], class_idx=int(k))
            out[rows] = maps[:, 0].detach().float().cpu()
    return out.numpy()


def _class_indices(class_index, n: int, num_classes: int) -> np.ndarray:
    """``class_index`` as (n,) integers in ``[0, num_classes)`` (one int: n copies of it);
    ValueError otherwise."""
    classes = as_numpy(class_index)
    if classes.ndim == 0:
        classes = np.full(n, classes)
    if classes.shape != (n,) or classes.dtype.kind not in "iu":
        raise ValueError(
            f"class_index must be {n} integer class indices (one per image); got {class_index!r}"
        )
    if n and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"class_index must lie in [0, {num_classes}); got {classes.tolist()}")
    return classes


def as_numpy(values) -> np.ndarray:
    """A tensor (detached, on the CPU) or array-like as a NumPy array."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _num_classes(model: nn.Module) -> int:
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError("grad_cam needs a medres Classifier (backbone, dropout, linear head)")
    return int(head.out_features)


def _scale_by_max(maps: torch.Tensor) -> torch.Tensor:
    """(N, 1, *spatial) non-negative maps -> each divided by its maximum; 0 stays 0."""
    maps = torch.nan_to_num(maps.detach().float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    peak = maps.flatten(1).amax(1).view(-1, *[1] * (maps.ndim - 1))
    return torch.where(peak > 0, maps / peak.clamp_min(1e-30), torch.zeros_like(maps)).clamp(0, 1)


@contextmanager
def _explaining(model: nn.Module) -> Iterator[None]:
    """Eval mode, gradients only where Grad-CAM needs them; everything restored after.

    Only ``layer4``'s parameters require grad during the call: the backward pass then
    stops at ``layer4``'s input instead of running through the whole network.
    """
    layer = dict(model.named_modules()).get(TARGET_LAYER)
    if layer is None:
        raise ValueError(f"grad_cam needs a model with a {TARGET_LAYER!r} module")
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    in_layer = {id(p) for p in layer.parameters()}
    hooks = {name: dict(getattr(layer, name)) for name in _HOOK_DICTS if hasattr(layer, name)}
    full_backward = layer._is_full_backward_hook
    try:
        model.eval()
        for p, _, _ in params:
            p.requires_grad_(id(p) in in_layer)
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(warnings.catch_warnings())
            # expected: layer4's input needs no gradient, so its hook fires on the outputs
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            yield
    finally:
        for name, before in hooks.items():
            registered = getattr(layer, name)
            for key in [k for k in registered if k not in before]:
                del registered[key]
        layer._is_full_backward_hook = full_backward
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad
        for m, training in modes:
            m.training = training


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_hooks",
)
