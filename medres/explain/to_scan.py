"""From the network grid back to the scan: MONAI's inverse of the spatial preprocessing.

:func:`transform_with_meta` runs a scan through the traced steps of a
``build_transform`` pipeline (a MetaTensor that records them); :func:`map_to_scan`
undoes those steps on a map, so a region of the map lands on the same millimetres of
the patient as the voxels the network looked at.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Spacing
from monai.transforms.inverse import InvertibleTransform
from monai.utils import TraceKeys

from medres.explain.gradcam import as_numpy
from medres.io import Volume
from medres.transforms import PlainTensor


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
    cam = torch.from_numpy(np.array(as_numpy(cam), dtype=np.float32))
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
