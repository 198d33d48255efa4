"""The preprocessing shortcut: a scan already at the model's size (and, in 3D, in RAS
orientation) skips MONAI's orientation and resize steps, with the same output, value for
value, as the full chain — on real scans."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medres.io import Volume
from medres.transforms import PreprocessSpec, build_transform
from tests.conftest import EXAMPLE, SHARED_DATA, needs

ADRENAL = SHARED_DATA / "medmnist" / "adrenalmnist3d_64.npz"


def full_chain(transform, volume: Volume) -> torch.Tensor:
    """The MONAI chain, every step (the shortcut bypassed)."""
    return super(type(transform), transform).__call__(volume)


def check_same(transform, volumes: list[Volume], shortcut: bool) -> None:
    for volume in volumes:
        fast = transform(volume)
        assert torch.equal(fast, full_chain(transform, volume))
        assert fast.dtype == torch.float32 and type(fast) is torch.Tensor
        spatial = tuple(volume.array.shape[1:])
        assert (spatial == transform.shortcut[0]) == shortcut


@needs(ADRENAL)
@pytest.mark.parametrize("preset", ["mr_3d", "ct_3d"])
def test_a_3d_volume_in_place_takes_the_shortcut_to_the_same_values(preset):
    images = np.load(ADRENAL)["test_images"][:12].astype(np.float32)
    spacing = np.diag([0.8, 0.8, 1.5, 1.0])
    volumes = [Volume(image[None], spacing) for image in images]
    transform = build_transform(PreprocessSpec(preset=preset, spatial_size=(64, 64, 64)))
    check_same(transform, volumes, shortcut=True)


@needs(ADRENAL)
def test_a_3d_volume_out_of_place_or_of_another_size_goes_the_full_way():
    image = np.load(ADRENAL)["test_images"][0].astype(np.float32)[None]
    flipped = Volume(image, np.diag([-1.0, 1.0, 1.0, 1.0]))  # LAS: reoriented first
    oblique = np.eye(4)
    oblique[:2, :2] = [[0.0, 1.0], [1.0, 0.0]]  # axes swapped
    spec = PreprocessSpec(preset="mr_3d", spatial_size=(64, 64, 64))
    transform = build_transform(spec)
    for volume in (flipped, Volume(image, oblique)):
        assert not torch.equal(transform(volume), transform(Volume(image, np.eye(4))))
        assert torch.equal(transform(volume), full_chain(transform, volume))
    small = build_transform(PreprocessSpec(preset="mr_3d", spatial_size=(32, 32, 32)))
    check_same(small, [Volume(image, np.eye(4))], shortcut=False)


def test_a_2d_image_at_the_model_size_takes_the_shortcut_to_the_same_values():
    pngs = sorted((EXAMPLE / "test").glob("*.png"))[:6]
    images = [np.asarray(Image.open(p).resize((224, 224), Image.BILINEAR)) for p in pngs]
    volumes = [Volume(image.T[None].astype(np.float32), np.eye(4)) for image in images]
    transform = build_transform(PreprocessSpec(preset="xray_2d", spatial_size=(224, 224)))
    check_same(transform, volumes, shortcut=True)
    native = [Volume(np.asarray(Image.open(p)).T[None].astype(np.float32), np.eye(4)) for p in pngs]
    check_same(transform, native, shortcut=False)  # 28² upsampled: the full chain


def test_training_and_explanations_never_take_it():
    spec = PreprocessSpec(preset="mr_3d", spatial_size=(64, 64, 64))
    assert build_transform(spec, train=True).shortcut is None
    spaced = PreprocessSpec(preset="mr_3d", spatial_size=(64, 64, 64), spacing_mm=(1, 1, 1))
    assert build_transform(spaced).shortcut is None
