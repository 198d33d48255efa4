"""Preprocessing presets on real scans: shapes, ranges, orientation, refusals."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import RandAffine

from medres.errors import ConfigError, ScanContentError
from medres.io import Volume, read_scan
from medres.transforms import PreprocessSpec, build_transform, default_spec, resolve_spec
from tests.conftest import DICOM2NIFTI, EXAMPLE, PYDICOM_FILES, needs

PNG = EXAMPLE / "test" / "test_00000.png"


def test_default_presets_follow_modality_and_shape():
    assert default_spec("IMAGE", [1, 28, 28]).preset == "xray_2d"
    assert default_spec("IMAGE", [3, 28, 28]).preset == "fundus_2d"
    assert default_spec("CT", [1, 64, 64, 40]).preset == "ct_3d"
    assert default_spec("MR", [1, 64, 64, 40]).preset == "mr_3d"
    assert default_spec("NIFTI", [1, 512, 512, 300]).spatial_size == (128, 128, 128)
    # no flips for radiographs (left and right are anatomy); every axis in 3D
    assert default_spec("IMAGE", [1, 28, 28]).augment.flip_axes == ()
    assert default_spec("CT", [1, 8, 8, 8]).augment.flip_axes == (0, 1, 2)


def test_radiograph_preset_gives_unit_range_grey_tensor_of_target_size():
    spec = PreprocessSpec(preset="xray_2d", spatial_size=(64, 64))
    image = build_transform(spec)(read_scan(PNG))
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert image.shape == (1, 64, 64)
    assert image.min() == 0 and image.max() == 1


def test_colour_scan_averages_to_grey_and_grey_scan_is_refused_by_fundus():
    rgb = Volume(np.stack([np.full((8, 8), v, np.float32) for v in (0, 30, 60)]), np.eye(4))
    rgb.array[:, :4] += 100
    grey = build_transform(PreprocessSpec(preset="xray_2d", spatial_size=(8, 8)))(rgb)
    assert grey.shape == (1, 8, 8)
    with pytest.raises(ScanContentError, match="needs RGB"):
        build_transform(PreprocessSpec(preset="fundus_2d", spatial_size=(8, 8)))(read_scan(PNG))


def test_scan_of_wrong_dimensionality_is_refused_not_reshaped():
    spec = PreprocessSpec(preset="ct_3d", spatial_size=(16, 16, 16))
    with pytest.raises(ScanContentError, match=r"2D .* expects 3D"):
        build_transform(spec)(read_scan(PNG))


def test_spec_errors_are_config_errors():
    with pytest.raises(ConfigError, match="2D but spatial_size has 3"):
        PreprocessSpec(preset="xray_2d", spatial_size=(8, 8, 8))
    with pytest.raises(ConfigError, match="flip_axes"):
        PreprocessSpec(preset="xray_2d", spatial_size=(8, 8), augment={"flip_axes": [2]})


def test_ct_window_maps_hounsfield_units():
    ct = read_scan(PYDICOM_FILES / "CT_small.dcm")  # one slice; make a tiny 3D volume of it
    volume = Volume(np.repeat(ct.array[..., None], 4, axis=-1), np.eye(4))  # RAS already
    spec = PreprocessSpec(preset="ct_3d", spatial_size=(128, 128, 4), window=(40, 400))
    out = build_transform(spec)(volume).numpy()
    hu = volume.array
    assert np.isclose(out[hu <= -160].max(), 0) and np.isclose(out[hu >= 240].min(), 1)
    inside = (hu > -150) & (hu < 230)
    assert np.allclose(out[inside], (hu[inside] + 160) / 400, atol=1e-5)


@needs(DICOM2NIFTI)
def test_dicom_series_and_its_nifti_give_the_same_tensor():
    """Orientation to RAS makes the network input independent of the file format."""
    series = DICOM2NIFTI / "philips" / "anatomical" / "001"
    truth = nib.load(DICOM2NIFTI / "philips" / "anatomical" / "001_ground_truth.nii.gz")
    flipped = nib.Nifti1Image(np.asarray(truth.dataobj)[::-1], truth.affine @ _flip_x(truth))
    spec = PreprocessSpec(preset="mr_3d", spatial_size=(32, 32, 16))
    transform = build_transform(spec)
    from_dicom = transform(read_scan(series))
    nifti = Volume(np.asarray(flipped.dataobj, np.float32)[None], flipped.affine)
    from_nifti = transform(nifti)
    assert torch.allclose(from_dicom, from_nifti, atol=1e-4)


def _flip_x(image) -> np.ndarray:
    """The affine that keeps world positions when axis 0 is reversed."""
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, image.shape[0] - 1
    return flip


def test_training_augmentation_is_random_but_repeatable():
    spec = PreprocessSpec(preset="xray_2d", spatial_size=(28, 28), augment={"prob": 1.0})
    scan = read_scan(PNG)
    first = build_transform(spec, train=True)
    first.set_random_state(seed=3)
    a, b = first(scan), first(scan)
    assert a.shape == b.shape == (1, 28, 28)
    assert not torch.equal(a, b)
    again = build_transform(spec, train=True)
    again.set_random_state(seed=3)
    assert torch.equal(again(scan), a)
    assert torch.equal(build_transform(spec)(scan), build_transform(spec)(scan))


def test_sparse_mask_is_not_blanked_by_percentile_scaling():
    """A binary mask covering < 0.5 % of the volume has equal 0.5/99.5 percentiles."""
    mask = np.zeros((1, 20, 20, 20), np.float32)
    mask[0, 5:7, 5:7, 5:7] = 255  # 8 of 8000 voxels = 0.1 %
    out = build_transform(PreprocessSpec(preset="mr_3d", spatial_size=(20, 20, 20)))(
        Volume(mask, np.eye(4))
    )
    assert out.max() == 1 and out.min() == 0 and int(out.sum()) == 8


def test_partial_spec_from_a_config_is_completed_from_the_cohort():
    given = PreprocessSpec.model_validate({"spatial_size": [64, 64], "augment": {"prob": 1.0}})
    spec = resolve_spec(given, "IMAGE", [3, 28, 28])
    assert spec.preset == "fundus_2d" and spec.spatial_size == (64, 64)
    assert spec.augment.prob == 1.0 and spec.augment.flip_axes == (0, 1)
    with pytest.raises(ConfigError, match="percentiles"):
        resolve_spec(PreprocessSpec.model_construct(percentiles=(90, 10)), "MR", [1, 8, 8, 8])


def test_ct_padding_is_below_the_window_not_water():
    """Resampling to a spacing then padding must pad with the window's bottom (0), not
    with 0 HU (water, 0.4 in a 40/400 window)."""
    volume = Volume(np.full((1, 8, 8, 8), -1000.0, np.float32), np.eye(4))
    volume.array[0, 2:6, 2:6, 2:6] = 40.0
    spec = PreprocessSpec(preset="ct_3d", spatial_size=(12, 12, 12), spacing_mm=(1, 1, 1))
    out = build_transform(spec)(volume)
    assert out.shape == (1, 12, 12, 12)
    assert out[0, 0, 0, 0] == 0 and np.isclose(out.max(), 0.5)


def test_a_multi_volume_3d_scan_is_refused_not_averaged():
    """Time points or echoes are not colour channels: a 2-volume scan into a 1-channel
    3D preset is a ScanContentError (a failure row), never averaged into one volume."""
    ramp = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    volume = Volume(np.stack([np.zeros_like(ramp), ramp]), np.eye(4))
    spec = PreprocessSpec(preset="mr_3d", spatial_size=(4, 4, 4), percentiles=(0, 100))
    with pytest.raises(ScanContentError, match="2 volumes"):
        build_transform(spec)(volume)


@pytest.mark.parametrize("size", [(28, 28), (16, 20, 24)])
def test_cached_affine_grid_changes_no_voxel(size):
    """The augmentation reuses its sampling grid; every draw must equal MONAI's uncached
    RandAffine with the same random state (a changed grid would shift every scan)."""
    spec = PreprocessSpec(preset="mr_3d" if len(size) == 3 else "xray_2d", spatial_size=size)
    cached = next(
        t for t in build_transform(spec, train=True).transforms if isinstance(t, RandAffine)
    )
    plain = RandAffine(
        prob=cached.prob,
        rotate_range=cached.rand_affine_grid.rotate_range,
        scale_range=cached.rand_affine_grid.scale_range,
        translate_range=cached.rand_affine_grid.translate_range,
        padding_mode="border",
    )
    cached.set_random_state(5)
    plain.set_random_state(5)
    image = torch.rand(1, *size)
    outputs = [(cached(image), plain(image)) for _ in range(12)]
    assert sum(not torch.equal(a, image) for a, _ in outputs) >= 3  # the affine fired
    assert all(torch.equal(a, b) for a, b in outputs)
