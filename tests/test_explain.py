"""Grad-CAM explanations on real scans: maps, their way back onto the scan, the files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from matplotlib import colormaps
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image

from medres.explain import (
    OVERLAY_ALPHA,
    OVERLAY_CMAP,
    grad_cam,
    map_to_scan,
    transform_with_meta,
    write_explanation,
)
from medres.io import Volume, read_scan
from medres.models import create_model
from medres.transforms import PreprocessSpec, build_transform
from tests.conftest import EXAMPLE, SHARED_DATA, needs

ANATOMICAL = Path(NIBABEL_DATA) / "anatomical.nii"  # real T1 MRI, 33x41x25, 2 mm, LAS
XRAYS = sorted((EXAMPLE / "train").glob("*.png"))[:4]  # real 28x28 chest X-rays


def _xray_crop(tmp_path: Path, name: str = "xray.png") -> Path:
    """A real chest X-ray cropped to 20 columns x 28 rows (non-square shows transposes)."""
    pixels = np.asarray(Image.open(XRAYS[0]))[:, 3:23]
    path = tmp_path / name
    Image.fromarray(pixels).save(path)
    return path


def _reoriented(tmp_path: Path, axcodes: tuple[str, str, str]) -> Path:
    """The real anatomical MRI rewritten with its voxel axes in ``axcodes`` order."""
    image = nib.load(ANATOMICAL)
    change = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(image.affine), nib.orientations.axcodes2ornt(axcodes)
    )
    out = tmp_path / f"anat_{''.join(axcodes)}.nii.gz"
    nib.save(image.as_reoriented(change), out)
    assert nib.aff2axcodes(nib.load(out).affine) == axcodes
    return out


def _model_state(model: torch.nn.Module):
    layer4 = model.backbone.layer4
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.grad is None for p in model.parameters()],
        len(layer4._forward_hooks) + len(layer4._backward_hooks),
    )


def _voxel_world(affine: np.ndarray, ijk) -> np.ndarray:
    return (np.asarray(affine, dtype=float) @ np.r_[np.asarray(ijk, dtype=float), 1.0])[:3]


def _centre_of_mass(values: np.ndarray) -> np.ndarray:
    grids = np.indices(values.shape)
    return np.array([(values * g).sum() / values.sum() for g in grids])


def _read_map_from_overlay(png: str, background_png: str) -> np.ndarray:
    """The map values an overlay PNG shows, (rows, columns): its colours minus those of
    the same scan's overlay of an all-zero map, looked up in the colour map."""
    levels = np.linspace(0, 1, 1001)
    lut = colormaps[OVERLAY_CMAP](levels)[:, :3] * 255
    shown = np.asarray(Image.open(png)).astype(float)
    background = np.asarray(Image.open(background_png)).astype(float)
    heat = lut[0] + (shown - background) / OVERLAY_ALPHA
    return levels[((heat[..., None, :] - lut) ** 2).sum(-1).argmin(-1)]


# ---- grad_cam --------------------------------------------------------------------------


def test_grad_cam_2d_batch_equals_each_scan_and_model_is_left_as_it_was():
    torch.manual_seed(0)
    spec = PreprocessSpec(preset="xray_2d", spatial_size=(28, 28))
    transform = build_transform(spec)
    images = torch.stack([transform(read_scan(p)) for p in XRAYS])
    model = create_model("resnet18", in_channels=1, num_classes=2, spatial_dims=2).eval()
    model.backbone.conv1.weight.requires_grad_(False)  # a partly frozen model stays so
    before = _model_state(model)
    classes = np.array([0, 1, 1, 0])

    with torch.no_grad():  # as in batch prediction
        maps = grad_cam(model, images, classes)

    assert maps.shape == (4, 28, 28) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert all(m.max() in (0.0, 1.0) for m in maps)  # scaled per scan
    assert (maps.reshape(4, -1).max(1) == 1).sum() >= 2
    # MONAI indexes a per-sample class tensor as logits[:, idx]; a batch must not mix scans
    one_by_one = np.concatenate(
        [grad_cam(model, images[i : i + 1], [c]) for i, c in enumerate(classes)]
    )
    np.testing.assert_allclose(maps, one_by_one, atol=1e-5)
    assert not np.allclose(grad_cam(model, images, [1, 1, 1, 1]), maps)  # the class matters
    assert _model_state(model) == before  # eval, requires_grad, no grads, no hooks left
    assert not model.training

    model.dropout.train()  # MC dropout's state: dropout alone in train mode
    np.testing.assert_allclose(grad_cam(model, images, classes), maps, atol=1e-5)
    assert model.dropout.training and not model.backbone.training


@pytest.mark.parametrize("name", ["resnet18", "resnet18_2p1d"])  # MONAI's and medres's own
def test_grad_cam_3d_on_real_mri(name):
    torch.manual_seed(0)
    transform = build_transform(PreprocessSpec(preset="mr_3d", spatial_size=(16, 16, 12)))
    volume = read_scan(ANATOMICAL)
    shifted = Volume(np.roll(volume.array, 6, axis=1), volume.affine)
    images = torch.stack([transform(volume), transform(shifted)])
    model = create_model(name, in_channels=1, num_classes=3, spatial_dims=3).eval()

    maps = grad_cam(model, images, [2, 0])

    assert maps.shape == (2, 16, 16, 12) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    single = grad_cam(model, images[1:], [0])
    np.testing.assert_allclose(maps[1:], single, atol=1e-5)
    assert not model.training and not any(m.training for m in model.modules())


def test_blank_scan_gives_an_all_zero_map_not_nan(tmp_path):
    blank = read_scan(XRAYS[0])
    blank = Volume(np.zeros_like(blank.array), blank.affine, dict(blank.meta))  # zero-filled
    transform = build_transform(PreprocessSpec(preset="xray_2d", spatial_size=(28, 28)))
    model = create_model("resnet18", in_channels=1, num_classes=2, spatial_dims=2).eval()

    maps = grad_cam(model, transform(blank)[None], [1])
    on_scan = map_to_scan(maps[0], transform_with_meta(blank, transform), transform)
    paths = write_explanation(blank, on_scan, tmp_path, "blank")

    assert np.array_equal(maps, np.zeros((1, 28, 28), np.float32))
    assert np.array_equal(np.load(paths["npy"]), np.zeros((28, 28), np.float32))


# ---- map_to_scan -----------------------------------------------------------------------

SPECS_3D = {
    "resize": PreprocessSpec(preset="mr_3d", spatial_size=(16, 16, 16)),
    "spacing+crop/pad": PreprocessSpec(
        preset="mr_3d", spatial_size=(14, 14, 14), spacing_mm=(4.0, 4.0, 4.0)
    ),
}


@pytest.mark.parametrize("spec_name", list(SPECS_3D))
@pytest.mark.parametrize("axcodes", [("L", "A", "S"), ("P", "I", "L")])
def test_map_to_scan_puts_a_blob_at_the_same_world_position(tmp_path, axcodes, spec_name):
    path = ANATOMICAL if axcodes == ("L", "A", "S") else _reoriented(tmp_path, axcodes)
    volume = read_scan(path)
    spec = SPECS_3D[spec_name]
    image = transform_with_meta(volume, build_transform(spec))
    assert torch.equal(image.as_tensor(), build_transform(spec)(volume))  # the network input
    grid = tuple(image.shape[1:])
    blob = tuple(round(f * (n - 1)) for f, n in zip((0.3, 0.6, 0.45), grid, strict=True))
    cam = np.zeros(grid, np.float32)
    cam[blob] = 1.0

    # a transform rebuilt from the spec (as in another process) undoes the steps too
    on_scan = map_to_scan(cam, image, build_transform(spec))

    assert on_scan.shape == volume.spatial_shape and on_scan.dtype == np.float32
    assert on_scan.min() >= 0 and on_scan.max() <= 1 and on_scan.max() > 0.1
    expected = _voxel_world(image.affine, blob)  # where the network saw the blob, RAS mm
    voxel_mm = max(volume.spacing_mm)
    peak = np.unravel_index(np.argmax(on_scan), on_scan.shape)
    assert np.linalg.norm(_voxel_world(volume.affine, peak) - expected) <= 1.5 * voxel_mm
    centre = _voxel_world(volume.affine, _centre_of_mass(on_scan))
    assert np.linalg.norm(centre - expected) <= voxel_mm


def test_map_to_scan_2d_blob_lands_on_the_same_pixel_of_the_png(tmp_path):
    volume = read_scan(_xray_crop(tmp_path))  # (1, 20, 28): 20 columns, 28 rows
    transform = build_transform(PreprocessSpec(preset="xray_2d", spatial_size=(32, 32)))
    image = transform_with_meta(volume, transform)
    cam = np.zeros((32, 32), np.float32)
    cam[24, 8] = 1.0  # network voxel (x=24, y=8)

    on_scan = map_to_scan(cam, image, transform)

    assert on_scan.shape == (20, 28)
    expected = _voxel_world(image.affine, (24, 8, 0))
    peak = np.unravel_index(np.argmax(on_scan), on_scan.shape)
    assert np.linalg.norm(_voxel_world(volume.affine, (*peak, 0)) - expected) <= 1.0
    shown = write_explanation(volume, on_scan, tmp_path, "x")["png"]
    background = write_explanation(volume, 0 * on_scan, tmp_path, "zero")["png"]
    np.testing.assert_allclose(_read_map_from_overlay(shown, background), on_scan.T, atol=0.01)


def test_map_to_scan_refuses_a_tensor_without_its_history():
    volume = read_scan(XRAYS[0])
    transform = build_transform(PreprocessSpec(preset="xray_2d", spatial_size=(28, 28)))
    with pytest.raises(ValueError, match="transform_with_meta"):
        map_to_scan(np.zeros((28, 28)), transform(volume), transform)
    mri = build_transform(PreprocessSpec(preset="mr_3d", spatial_size=(8, 8, 8)))
    with pytest.raises(ValueError, match="do not come from this transform"):  # no Orientation
        map_to_scan(np.zeros((8, 8, 8)), transform_with_meta(read_scan(ANATOMICAL), mri), transform)


# ---- write_explanation -----------------------------------------------------------------


def test_2d_overlay_png_has_the_original_size_and_orientation(tmp_path):
    source = _xray_crop(tmp_path)
    original = np.asarray(Image.open(source)).astype(float)  # (28 rows, 20 columns)
    volume = read_scan(source)
    cam = np.zeros(volume.spatial_shape, np.float32)
    cam[15, 5] = 1.0  # column 15, row 5
    cam[14:17, 4:7] = np.maximum(cam[14:17, 4:7], 0.5)

    paths = write_explanation(volume, cam, tmp_path / "out", "scan-1")

    assert set(paths) == {"png", "npy"}
    png = Image.open(paths["png"])
    assert png.size == Image.open(source).size == (20, 28) and png.mode == "RGB"
    overlay = np.asarray(png)
    assert overlay.dtype == np.uint8
    background = write_explanation(volume, 0 * cam, tmp_path, "zero")["png"]
    shown = _read_map_from_overlay(paths["png"], background)  # (rows, columns)
    np.testing.assert_allclose(shown, cam.T, atol=0.01)
    assert np.unravel_index(np.argmax(shown), shown.shape) == (5, 15)
    cold = np.ones(original.shape, bool)
    cold[3:8, 13:18] = False  # away from the blob the overlay is the X-ray, tinted
    assert np.corrcoef(overlay[..., 0][cold], original[cold])[0, 1] > 0.99
    saved = np.load(paths["npy"])
    assert saved.shape == volume.spatial_shape and saved.dtype == np.float32
    assert saved.min() >= 0 and saved.max() <= 1
    np.testing.assert_array_equal(saved, cam)
    assert not [p for p in (tmp_path / "out").iterdir() if p.suffix == ".tmp"]


@needs(SHARED_DATA / "medmnist")
def test_colour_image_overlay_stays_in_colour(tmp_path):
    fundus = np.load(SHARED_DATA / "medmnist" / "retinamnist.npz")["test_images"][0][:, :22]
    source = tmp_path / "fundus.png"
    Image.fromarray(fundus).save(source)  # a real fundus photograph, 22 x 28 px, RGB
    volume = read_scan(source)
    assert volume.channels == 3

    paths = write_explanation(volume, np.zeros(volume.spatial_shape), tmp_path, "fundus")

    overlay = np.asarray(Image.open(paths["png"]))
    assert overlay.shape == fundus.shape
    for c in range(3):  # each colour channel follows the photograph's
        assert np.corrcoef(overlay[..., c].ravel(), fundus[..., c].ravel())[0, 1] > 0.98
    assert np.abs(overlay[..., 0].astype(int) - overlay[..., 1]).mean() > 5  # not grey


@pytest.mark.parametrize("axcodes", [("L", "A", "S"), ("P", "I", "L")])
def test_3d_heatmap_nifti_sits_on_the_scan_and_png_shows_the_hottest_axial_slice(tmp_path, axcodes):
    path = ANATOMICAL if axcodes == ("L", "A", "S") else _reoriented(tmp_path, axcodes)
    volume = read_scan(path)
    world = np.stack(
        [_voxel_world(volume.affine, ijk) for ijk in np.ndindex(volume.spatial_shape)]
    ).reshape(*volume.spatial_shape, 3)
    target = np.array([10.0, -4.0, 6.0])  # the blob, RAS mm (inside the brain)
    blob = np.unravel_index(np.argmin(np.linalg.norm(world - target, axis=-1)), world.shape[:3])
    distance = np.linalg.norm(world - world[blob], axis=-1)
    cam = np.exp(-((distance / 4.0) ** 2)).astype(np.float32)

    paths = write_explanation(volume, cam, tmp_path / "out", "mri")

    assert set(paths) == {"nifti", "png"}
    heatmap = nib.load(paths["nifti"])
    assert heatmap.shape == volume.spatial_shape
    assert np.allclose(heatmap.affine, volume.affine)
    assert heatmap.get_data_dtype() == np.float32
    np.testing.assert_allclose(heatmap.get_fdata(), cam, atol=1e-6)
    # the PNG: the axial slice through the blob, anterior up, patient's right on the left
    x_mm, y_mm = (np.unique(np.round(world[..., a], 3)) for a in (0, 1))
    overlay = np.asarray(Image.open(paths["png"]))
    assert overlay.shape == (len(y_mm), len(x_mm), 3) and overlay.dtype == np.uint8
    in_slice = np.isclose(world[..., 2], world[blob][2])
    rows = len(y_mm) - 1 - np.searchsorted(y_mm, np.round(world[in_slice][:, 1], 3))
    cols = len(x_mm) - 1 - np.searchsorted(x_mm, np.round(world[in_slice][:, 0], 3))
    expected_map, expected_scan = np.zeros((2, *overlay.shape[:2]))
    expected_map[rows, cols] = cam[in_slice]
    expected_scan[rows, cols] = volume.array[0][in_slice]
    faint = write_explanation(volume, cam * 1e-6, tmp_path, "faint")["png"]  # same slice
    shown = _read_map_from_overlay(paths["png"], faint)
    np.testing.assert_allclose(shown, expected_map, atol=0.01)
    background = np.asarray(Image.open(faint))[..., 1]  # green: the grey scan alone
    assert np.corrcoef(background.ravel(), expected_scan.ravel())[0, 1] > 0.95
