"""Sampling predictors: several probability vectors per scan from one or more models.

- MC dropout: the classifier's only dropout sits before its linear head
  (:class:`medres.models.Classifier`), so the backbone runs once and only the head is
  sampled: N passes cost about one (identical to N full passes with dropout alone on).
- Test-time augmentation: the preset's flips and a small rotation each way.
- Ensembles: the samples of several bundles side by side (:func:`ensemble_samples`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medres.errors import ConfigError
from medres.transforms import PreprocessSpec

View = tuple[str, tuple[int, ...] | float]  # ("identity", ()), ("flip", dims), ("rotate", deg)


def tta_views(spec: PreprocessSpec) -> list[View]:
    """Identity, one flip per preset flip axis, and ± half the preset's rotation (in the
    first two spatial axes): augmentations the model saw in training."""
    views: list[View] = [("identity", ())]
    augment = spec.augment
    if augment is None:
        return views
    views += [("flip", (axis + 2,)) for axis in augment.flip_axes]
    if augment.rotate_deg > 0:
        views += [("rotate", augment.rotate_deg / 2), ("rotate", -augment.rotate_deg / 2)]
    return views


def apply_view(images: torch.Tensor, view: View) -> torch.Tensor:
    """One test-time view of a batch (N, C, *spatial)."""
    kind, arg = view
    if kind == "identity":
        return images
    if kind == "flip":
        return torch.flip(images, dims=arg)
    return _rotate(images, float(arg))


@torch.no_grad()
def forward_samples(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    mc_samples: int = 0,
    views: list[View] | None = None,
    seed: int | Sequence[int] = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logit samples and features of one batch.

    Args:
        model: a :class:`~medres.models.Classifier` (``features``, ``dropout``, ``head``).
        images: (N, C, *spatial) preprocessed batch.
        mc_samples: dropout samples per view (0 = dropout off, one deterministic pass).
        views: test-time views (default: the identity only).
        seed: seeds the dropout masks, so a rerun gives the same samples: one seed for
            the batch, or one per scan (N,) so a scan's samples do not depend on the
            batch it lands in (resumed batch prediction).

    Returns:
        ``(logits (S, N, K), features (N, F))`` with S = len(views) * max(mc_samples, 1);
        the features are those of the unaugmented images (for the OOD score).
    """
    if mc_samples < 0:
        raise ConfigError(f"mc_samples must be >= 0; got {mc_samples}")
    model.eval()
    p = float(model.dropout.p)
    if mc_samples and p == 0:
        raise ConfigError("MC dropout needs a model trained with dropout > 0; this one has 0")
    views = views or [("identity", ())]
    masks = _dropout_masks(seed, len(views) * mc_samples, len(images), model.num_features, p)
    samples, first = [], None
    for v, view in enumerate(views):
        feats = model.features(apply_view(images, view)).float()
        first = feats if first is None else first
        if not mc_samples:
            samples.append(model.head(feats))
            continue
        for keep in masks[v * mc_samples : (v + 1) * mc_samples]:
            samples.append(model.head(feats * keep / (1 - p)))
    return torch.stack(samples).float(), first


def _dropout_masks(seed: int | Sequence[int], s: int, n: int, f: int, p: float) -> torch.Tensor:
    """(s, n, f) keep-masks (1 with probability 1 - p): from one generator for the batch,
    or one generator per scan when ``seed`` is a sequence of n seeds."""
    if isinstance(seed, int):
        generator = torch.Generator().manual_seed(seed)
        return torch.bernoulli(torch.full((s, n, f), 1 - p), generator=generator)
    if len(seed) != n:
        raise ConfigError(f"got {len(seed)} seeds for {n} scans")
    per_scan = [
        torch.bernoulli(torch.full((s, f), 1 - p), generator=torch.Generator().manual_seed(int(x)))
        for x in seed
    ]
    return torch.stack(per_scan, 1) if per_scan else torch.zeros(s, 0, f)


def ensemble_samples(member_samples: list[np.ndarray]) -> np.ndarray:
    """Probability samples of several members (each (S_i, N, K)) → (sum S_i, N, K)."""
    shapes = {s.shape[1:] for s in member_samples}
    if len(shapes) != 1:
        raise ConfigError(f"ensemble members disagree on (scans, classes): {sorted(shapes)}")
    return np.concatenate(member_samples, axis=0)


def _rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate about the image centre in the plane of the first two spatial axes
    (bilinear, zeros outside)."""
    n, dims = images.shape[0], images.ndim - 2
    a = math.radians(degrees)
    theta = torch.eye(dims, dims + 1).repeat(n, 1, 1)
    # affine_grid lists coordinates last tensor axis first, so spatial axes 0 and 1
    # (tensor dims 2, 3) are grid entries (1, 0) in 2D and (2, 1) in 3D
    i, j = dims - 1, dims - 2
    theta[:, i, i], theta[:, i, j] = math.cos(a), -math.sin(a)
    theta[:, j, i], theta[:, j, j] = math.sin(a), math.cos(a)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
