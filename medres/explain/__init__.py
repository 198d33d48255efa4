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

Modules: :mod:`~medres.explain.gradcam` (:func:`grad_cam`),
:mod:`~medres.explain.to_scan` (:func:`transform_with_meta`, :func:`map_to_scan`) and
:mod:`~medres.explain.files` (:func:`write_explanation`).
"""

from medres.explain.files import (
    GREY_PERCENTILES,
    OVERLAY_ALPHA,
    OVERLAY_CMAP,
    write_explanation,
)
from medres.explain.gradcam import TARGET_LAYER, grad_cam
from medres.explain.to_scan import map_to_scan, transform_with_meta

__all__ = [
    "GREY_PERCENTILES",
    "OVERLAY_ALPHA",
    "OVERLAY_CMAP",
    "TARGET_LAYER",
    "grad_cam",
    "map_to_scan",
    "transform_with_meta",
    "write_explanation",
]
