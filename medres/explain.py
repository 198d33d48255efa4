"""Grad-CAM explanations (2D and 3D), mapped back onto each scan's own voxel grid.

Three steps, one function each::

    cams = grad_cam(model, images, predicted)                  # (N, *network grid), [0, 1]
    image = transform_with_meta(volume, transform)             # the input, with its history
    on_scan = map_to_scan(cams[n], image, transform)           # volume.spatial_shape, [0, 1]
    paths = write_explanation(volume, on_scan, out_dir, stem)  # PNG overlay + .npy / .nii.gz

:func:`grad_cam` runs MONAI's ``GradCAM`` on ``backbone.layer4`` of a
:class:`~medres.models.Classifier`. :func:`map_to_scan` undoes the preprocessing's spatial
steps (orientation to RAS, resampling, resize, pad/crop) with MONAI's own inverse, so a
region of the map lands on the same millimetres of the patient as the voxels the network
looked at. :func:`write_explanation` writes what a reader opens: a PNG overlay for every
scan and the raw map (``.npy`` for 2D images, a NIfTI on the scan's affine for volumes).
"""

from __future__ import annotations

import copy
import gzip
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from matplotlib import colormaps
from monai.data import MetaTensor
from monai.transforms import Compose, Spacing
from monai.transforms.inverse import InvertibleTransform
from monai.utils import TraceKeys
from monai.visualize import GradCAM
from PIL import Image
from torch import nn

from medres.files import atomic_write
from medres.io import Volume
from medres.transforms import PlainTensor

TARGET_LAYER = "backbone.layer4"
OVERLAY_ALPHA = 0.4  # weight of the colour map over the grey scan
OVERLAY_CMAP = "jet"  # 0 = dark blue (no evidence), 1 = dark red (strongest)
GREY_PERCENTILES = (1.0, 99.0)  # scan intensity percentiles shown as black / white


# ---- Grad-CAM on the network grid ------------------------------------------------------


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
    classes = _as_numpy(class_index)
    if classes.ndim == 0:
        classes = np.full(n, classes)
    if classes.shape != (n,) or classes.dtype.kind not in "iu":
        raise ValueError(
            f"class_index must be {n} integer class indices (one per image); got {class_index!r}"
        )
    num_classes = _num_classes(model)
    if n and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"class_index must lie in [0, {num_classes}); got {classes.tolist()}")
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


def _as_numpy(values) -> np.ndarray:
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


# ---- from the network grid back to the scan --------------------------------------------


def transform_with_meta(volume: Volume, transform: Compose) -> MetaTensor:
    """The network input for ``volume`` as a MONAI MetaTensor that records its spatial steps.

    ``transform`` is ``medres.transforms.build_transform(spec)``: it ends with a step that
    drops MONAI's metadata (plain tensors batch and cache faster), so this runs every step
    before that one. ``result.as_tensor()`` equals ``transform(volume)`` (C, *spatial),
    float32; ``result.affine`` maps its voxels to RAS mm and ``result.applied_operations``
    lets :func:`map_to_scan` undo the spatial steps. Training augmentations are not run.
    """
    end = _traced_end(transform)
    image = transform(volume, end=end)
    if not isinstance(image, MetaTensor):
        raise ValueError(
            f"transform produced a {type(image).__name__}, not a MetaTensor; expected "
            "medres.transforms.build_transform(spec)"
        )
    return image


def map_to_scan(
    cam: np.ndarray | torch.Tensor, image: MetaTensor | Volume, transform: Compose
) -> np.ndarray:
    """Carry a map on the network grid back onto the scan's own voxel grid.

    Args:
        cam: (X', Y'[, Z']) a map on the network input grid (one of :func:`grad_cam`'s).
        image: the scan's network input as a MetaTensor (C, X', Y'[, Z']) from
            :func:`transform_with_meta`, or the scan's :class:`Volume` itself (then
            preprocessed here to learn the steps).
        transform: ``build_transform(spec)`` for the same spec (the same object or one
            built again from that spec, e.g. in another process).

    Returns:
        (X, Y[, Z]) float32 in [0, 1]: ``volume.spatial_shape``, voxel (i, j, k) of the
        scan (same indices as ``volume.array[c]``, placed in RAS mm by ``volume.affine``).
        Parts of the scan the network never saw (cropped away) are 0.

    How: the map is wrapped in a MetaTensor carrying a copy of the image's metadata and
    ``applied_operations``, and MONAI's ``Compose.inverse`` undoes them in reverse order
    (``Orientation``, ``Spacing``'s resample, ``Resize``, ``ResizeWithPadOrCrop`` are all
    invertible; ``ToTensor`` and intensity scaling change no geometry). MONAI matches each
    recorded step to the transform object that made it by ``id``; that check is turned off
    here (a DataLoader worker's copy or a rebuilt transform is another object) and
    replaced by matching the steps' class names in order.

    Raises:
        ValueError: ``cam``'s shape is not the image's spatial shape, ``image`` is a plain
            tensor (its spatial history is lost), or the recorded steps do not fit
            ``transform``.
    """
    if isinstance(image, Volume):
        image = transform_with_meta(image, transform)
    if not isinstance(image, MetaTensor):
        raise ValueError(
            f"image is a plain {type(image).__name__}: its spatial steps are not recorded. "
            "Pass the MetaTensor from transform_with_meta(volume, transform), or the Volume"
        )
    cam = torch.from_numpy(np.array(_as_numpy(cam), dtype=np.float32))
    if tuple(cam.shape) != tuple(image.shape[1:]):
        raise ValueError(
            f"cam has shape {tuple(cam.shape)} but the network input's grid is "
            f"{tuple(image.shape[1:])}"
        )
    operations = copy.deepcopy(list(image.applied_operations))
    _skip_id_check(operations)  # see the docstring: matched by class names below
    steps = _matching_steps(transform, operations)
    data = MetaTensor(cam[None], meta=copy.deepcopy(dict(image.meta)))
    data.applied_operations = operations
    out = Compose(steps).inverse(data) if steps else data
    result = np.asarray(torch.as_tensor(out)[0].detach().cpu(), dtype=np.float32)
    if operations:
        original = tuple(int(s) for s in operations[0][TraceKeys.ORIG_SIZE])
        if result.shape != original:  # a MONAI inverse that misses its target size
            raise ValueError(f"map came back as {result.shape}, expected the scan's {original}")
    return np.clip(np.nan_to_num(result, nan=0.0), 0.0, 1.0)


def _skip_id_check(record) -> None:
    """Mark every traced step in ``record`` (nested ones too: ``ResizeWithPadOrCrop``
    keeps its pad and crop inside its own entry) as matching any transform object."""
    if isinstance(record, dict):
        if TraceKeys.ID in record:
            record[TraceKeys.ID] = TraceKeys.NONE
        for value in record.values():
            _skip_id_check(value)
    elif isinstance(record, list | tuple):
        for value in record:
            _skip_id_check(value)


def _traced_end(transform: Compose) -> int:
    """Index of the first step that drops metadata (or the end): steps before it trace."""
    steps = list(transform.transforms)
    return next((i for i, t in enumerate(steps) if isinstance(t, PlainTensor)), len(steps))


def _recorded_names(step: InvertibleTransform) -> set[str]:
    # Spacing records its resample under the name of the array transform doing it
    if isinstance(step, Spacing):
        return {"Spacing", "SpatialResample"}
    return {type(step).__name__}


def _matching_steps(transform: Compose, operations: list[dict]) -> list[InvertibleTransform]:
    """The transform's invertible steps that recorded ``operations`` (in order)."""
    traced = transform.transforms[: _traced_end(transform)]
    candidates = [t for t in traced if isinstance(t, InvertibleTransform)]
    names = [str(op.get(TraceKeys.CLASS_NAME, "?")) for op in operations]
    steps, i = [], 0
    for name in names:
        while i < len(candidates) and name not in _recorded_names(candidates[i]):
            i += 1  # a step that recorded nothing
        if i == len(candidates):
            expected = [type(t).__name__ for t in candidates]
            raise ValueError(
                f"the image's recorded spatial steps {names} do not come from this transform "
                f"(its invertible steps: {expected}); use the transform that made the image"
            )
        steps.append(candidates[i])
        i += 1
    return steps


# ---- files -----------------------------------------------------------------------------


def write_explanation(
    volume: Volume, cam_on_scan: np.ndarray, out_dir: str | Path, stem: str
) -> dict[str, str]:
    """Write one scan's explanation files into ``out_dir``; return ``{kind: path}``.

    Args:
        volume: the scan as read (:func:`medres.io.read_scan`).
        cam_on_scan: ``volume.spatial_shape`` map in [0, 1] (from :func:`map_to_scan`).
        out_dir: folder, created if missing.
        stem: file name without suffix (the caller makes it safe and unique).

    2D scans (``{"png", "npy"}``):
        ``stem.png``: RGB uint8 overlay at the image's own size and orientation (width =
        X, height = Y, pixel (row, col) = the original's (row, col)): the scan in grey (a
        colour image in colour), intensities 1st–99th percentile → 0–255, with the map in
        ``jet`` at alpha 0.4 on top. ``stem.npy``: the map, float32 (X, Y), [0, 1].
    3D scans (``{"nifti", "png"}``):
        ``stem.nii.gz``: the map, float32 (X, Y, Z), on ``volume.affine`` (RAS mm), so it
        opens over the scan in any viewer. ``stem.png``: the axial slice with the most
        total activation, shown radiologically (anterior up, patient's right on the image
        left), one pixel per voxel; the axial axis is the voxel axis closest to
        superior–inferior (the last one for axially acquired scans).

    Every file is written atomically (temporary file + rename), mode 0600: it shows the
    patient's image, and its name comes from the scan's id (README "Privacy of outputs").

    Raises:
        ValueError: ``cam_on_scan``'s shape is not the scan's spatial shape.
    """
    cam = np.asarray(_as_numpy(cam_on_scan), dtype=np.float32)
    if cam.shape != volume.spatial_shape:
        raise ValueError(
            f"cam_on_scan has shape {cam.shape} but the scan's grid is {volume.spatial_shape}; "
            "map it with map_to_scan first"
        )
    cam = np.clip(np.nan_to_num(cam, nan=0.0), 0.0, 1.0)
    out_dir = Path(out_dir)
    paths: dict[str, str] = {}
    if not volume.is_3d:
        rgb = _overlay(_display_grey(volume.array), cam)  # (X, Y, 3)
        paths["png"] = str(_write_png(out_dir / f"{stem}.png", rgb))
        npy = atomic_write(out_dir / f"{stem}.npy", lambda tmp: _save_npy(tmp, cam), private=True)
        paths["npy"] = str(npy)
        return paths
    paths["nifti"] = str(
        atomic_write(
            out_dir / f"{stem}.nii.gz",
            lambda tmp: _save_nifti(tmp, cam, volume.affine),
            private=True,
        )
    )
    grey, heat = _axial_display(volume, cam)  # (X, Y) each: L→ along X, P→ along Y
    k = _strongest_slice(heat)
    rgb = _overlay(_display_grey(grey[None, ..., k], reference=grey), heat[..., k])
    paths["png"] = str(_write_png(out_dir / f"{stem}.png", rgb))
    return paths


def _display_grey(array: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """(C, X, Y) scan -> (X, Y, 3) float in [0, 255]: grey, or colour for RGB(A) images.

    Percentiles come from ``reference`` (the whole volume for a slice) or ``array``.
    """
    array = np.asarray(array, dtype=np.float32)
    channels = array.shape[0]
    if channels in (3, 4):
        shown = array[:3]
    elif channels == 2:
        shown = array[:1]  # grey + alpha
    else:
        shown = array.mean(axis=0, keepdims=True)  # grey, or time points of a series
    values = shown if reference is None else np.asarray(reference, dtype=np.float32)
    flat = values.reshape(-1)[:: max(1, values.size // (1 << 22))]
    lo, hi = np.percentile(flat, GREY_PERCENTILES)
    if hi <= lo:
        lo, hi = float(flat.min()), float(flat.max())
    scaled = (shown - lo) / (hi - lo) if hi > lo else np.zeros_like(shown)
    scaled = np.clip(scaled, 0.0, 1.0) * 255.0
    if len(scaled) == 1:
        scaled = np.repeat(scaled, 3, axis=0)
    return scaled.transpose(1, 2, 0)


def _overlay(background: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """(X, Y, 3) in [0, 255] and an (X, Y) map -> (X, Y, 3) uint8 blend."""
    heat = colormaps[OVERLAY_CMAP](cam)[..., :3] * 255.0
    blend = (1.0 - OVERLAY_ALPHA) * background + OVERLAY_ALPHA * heat
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def _write_png(path: Path, rgb_xy: np.ndarray) -> Path:
    """Save an (X, Y, 3) image as a PNG of width X, height Y (rows = Y, as medres reads)."""
    pixels = np.ascontiguousarray(rgb_xy.transpose(1, 0, 2))
    save = lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG")  # noqa: E731
    return atomic_write(path, save, private=True)


def _save_npy(tmp: str, array: np.ndarray) -> None:
    with open(tmp, "wb") as f:  # np.save(name) would append ".npy" to the temporary name
        np.save(f, array)


def _save_nifti(tmp: str, cam: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(cam.astype(np.float32), affine)
    image.header.set_xyzt_units("mm")
    image.header.set_sform(affine, code="aligned")  # aligned to the scan it explains
    image.header.set_qform(affine, code="aligned")
    image.header["cal_min"], image.header["cal_max"] = 0.0, 1.0
    # nibabel picks the format from the file name; the temporary name has none
    Path(tmp).write_bytes(gzip.compress(image.to_bytes(), compresslevel=6))


def _axial_display(volume: Volume, cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The scan (channels averaged) and the map reordered to the axes closest to L, P, S.

    Index 0 then runs to the patient's left, 1 to posterior, 2 to superior: a slice
    ``[..., k]`` shown with rows along P and columns along L is a radiological axial view.
    """
    current = nib.orientations.io_orientation(volume.affine)
    wanted = nib.orientations.axcodes2ornt(("L", "P", "S"))
    change = nib.orientations.ornt_transform(current, wanted)
    grey = np.asarray(volume.array, dtype=np.float32).mean(axis=0)
    return (
        nib.orientations.apply_orientation(grey, change),
        nib.orientations.apply_orientation(cam, change),
    )


def _strongest_slice(heat: np.ndarray) -> int:
    """Index of the last-axis slice with the largest summed map (the middle if all 0)."""
    totals = heat.reshape(-1, heat.shape[-1]).sum(axis=0)
    return int(np.argmax(totals)) if totals.max() > 0 else heat.shape[-1] // 2
