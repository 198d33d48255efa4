"""Cheaper 3D decoding, same results: the in-memory .nii.gz path of read_nifti (ISA-L
inflate, one file read, cache-friendly F→C copy) gives what nibabel's streaming path
gives (arrays, affines, meta, flags on real files; errors on damaged ones), and the
percentile scaling gives numpy's percentiles and MONAI's metadata exactly."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import medres.io.nifti as nifti
import medres.transforms as transforms
from medres.datasets.medmnist import export_medmnist
from medres.errors import ScanError
from medres.io.nifti import read_nifti
from tests.adversarial import ANATOMICAL, _lying_nifti, flip_gzip
from tests.conftest import SHARED_DATA, shared_file


@pytest.fixture(scope="module")
def adrenal(tmp_path_factory) -> list[Path]:
    """AdrenalMNIST3D test volumes as medres exports them: 64³ and 28³ .nii.gz."""
    root = tmp_path_factory.mktemp("adrenal")
    files = []
    for name in ("adrenalmnist3d_64.npz", "adrenalmnist3d.npz"):
        npz = shared_file(SHARED_DATA / "medmnist" / name)
        export_medmnist(npz, root / name, splits=["test"], limit=6)
        files += sorted((root / name / "test").glob("*.nii.gz"))
    return files


def shared_niftis() -> list[Path]:
    files = sorted(SHARED_DATA.glob("**/*.nii*"))
    if not files:
        pytest.skip(f"no NIfTI files under {SHARED_DATA}")
    return files


def _streamed(path: Path, monkeypatch):
    """read_nifti through nibabel's own streaming reader (the reader before this path)."""
    with monkeypatch.context() as m:
        m.setattr(nifti, "_load_gzipped", lambda path: None)
        return _outcome(path)


def _outcome(path: Path):
    try:
        return read_nifti(path)
    except ScanError as e:
        return e


def _assert_same(a, b) -> None:
    if isinstance(a, Exception) or isinstance(b, Exception):
        assert (type(a), str(a)) == (type(b), str(b))
        return
    assert a.array.dtype == b.array.dtype and a.array.shape == b.array.shape
    assert np.array_equal(a.array, b.array)
    assert a.array.flags.c_contiguous and b.array.flags.c_contiguous
    assert a.array.flags.writeable == b.array.flags.writeable
    assert np.array_equal(a.affine, b.affine)
    assert a.meta == b.meta


def test_exported_volumes_read_in_memory_as_nibabel_reads_them(adrenal, monkeypatch):
    for path in adrenal:
        assert nifti._load_gzipped(path) is not None  # the in-memory path is taken
        volume = read_nifti(path)
        image = nib.load(path)
        assert np.array_equal(volume.array[0], np.asanyarray(image.dataobj))
        assert np.array_equal(volume.affine, image.affine)
        _assert_same(volume, _streamed(path, monkeypatch))


def test_shared_niftis_read_as_before_and_as_nibabel(monkeypatch):
    in_memory = 0
    for path in shared_niftis():
        if path.name.endswith(".gz"):
            in_memory += nifti._load_gzipped(path) is not None
        volume = _outcome(path)
        _assert_same(volume, _streamed(path, monkeypatch))
        if isinstance(volume, Exception):
            continue
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
        assert np.array_equal(volume.affine, image.affine)
        if data.ndim == 3:
            assert np.array_equal(volume.array[0], data, equal_nan=data.dtype.kind == "f")
    assert in_memory >= 10


def test_plain_zlib_gives_the_same_volume(adrenal, monkeypatch):
    monkeypatch.setattr(nifti, "_zlib", zlib)
    for path in adrenal[:3] + adrenal[-3:]:
        _assert_same(read_nifti(path), _streamed(path, monkeypatch))


def _damaged() -> dict[str, bytes]:
    body = ANATOMICAL.read_bytes()
    packed = gzip.compress(body, mtime=0)
    return {
        "flipped_early": flip_gzip(ANATOMICAL, 30),
        "flipped_middle": flip_gzip(ANATOMICAL, None),
        "flipped_end": flip_gzip(ANATOMICAL, len(packed) - 12, 4),
        "wrong_crc": packed[:-8] + bytes(4) + packed[-4:],
        "truncated_half": packed[: len(packed) // 2],
        "truncated_header": packed[:100],
        "truncated_trailer": packed[:-8],
        "trailing_garbage": packed + b"garbage!",
        "two_members": gzip.compress(body[:200]) + gzip.compress(body[200:]),
        "empty": b"",
        "not_gzip": b"hello world" * 40,
        "declares_600x600x300": _lying_nifti((600, 600, 300), np.float32, True),
        "declares_30000_cubed": _lying_nifti((30000,) * 3, np.float32, True),
    }


@pytest.mark.parametrize("name", sorted(_damaged()))
def test_damaged_files_fail_or_read_as_before(name, tmp_path, monkeypatch):
    path = tmp_path / f"{name}.nii.gz"
    path.write_bytes(_damaged()[name])
    result = _outcome(path)
    _assert_same(result, _streamed(path, monkeypatch))
    if name.startswith(("flipped_early", "flipped_middle", "truncated_h", "empty", "not_")):
        assert "not a readable NIfTI" in str(result)
    if name.startswith("declares"):
        assert isinstance(result, ScanError)


def test_size_checks_come_before_inflating(tmp_path, monkeypatch):
    path = tmp_path / "lies.nii.gz"
    path.write_bytes(_lying_nifti((600, 600, 300), np.float32, True))
    sizes = []
    real = nifti._inflate
    monkeypatch.setattr(nifti, "_inflate", lambda raw, size: sizes.append(size) or real(raw, size))
    with pytest.raises(ScanError, match="truncated"):
        read_nifti(path)
    assert sizes == [nifti._HEADER_BYTES]  # the header only


@pytest.mark.parametrize(
    "shape,dtype",
    [
        ((64, 64, 64), np.uint8),
        ((64, 64, 64), np.int16),
        ((32, 64, 48), np.float32),
        ((28, 28, 28), np.uint8),
        ((91, 109, 91), np.float64),
        ((256, 4, 3), np.int16),
    ],
)
def test_fortran_to_c_is_a_plain_copy(shape, dtype):
    data = np.asfortranarray(np.random.default_rng(0).integers(-100, 100, shape).astype(dtype))
    copied = nifti._fortran_to_c(data)
    assert copied.flags.c_contiguous and copied.dtype == data.dtype
    assert np.array_equal(copied, data)
    assert not np.shares_memory(copied, data)


def _arrays():
    rng = np.random.default_rng(7)
    mask = np.zeros(64**3, np.float32)
    mask[rng.choice(mask.size, 20000, replace=False)] = 255
    sparse = np.zeros(28**3, np.float32)
    sparse[:50] = 1  # foreground under 0.5 %: both percentiles 0
    background = rng.normal(100, 20, 50000).astype(np.float32)
    background[:5000] = 0  # an MR's background: the low percentile is its minimum
    yield from (mask, sparse, background, rng.normal(size=1000).astype(np.float32))
    yield from (np.full(10, 3.0, np.float32), np.array([5.0], np.float32))
    for n in (2, 3, 199, 200, 201, 1000, 4099):  # runs just at, under and over the indices
        for ties in (1, 2, 3, 4, 5, 6, int(0.005 * n), int(0.005 * n) + 1, int(0.005 * n) + 2):
            values = rng.integers(1, 50, n).astype(np.float32)
            values[: min(ties, n)] = 0
            values[n - min(ties, n) :] = 99
            yield rng.permutation(values)


def test_percentiles_are_numpys_exactly():
    for values in _arrays():
        for low, high in ((0.5, 99.5), (0.0, 100.0), (1.0, 99.0), (10.0, 90.0)):
            expected = tuple(float(v) for v in np.percentile(values, [low, high]))
            assert transforms._percentiles(values, low, high) == expected, (values.size, low)


def test_scale_percentiles_gives_what_monai_ops_gave(adrenal):
    """The step computes on the plain tensor: the same values and the same metadata as the
    MetaTensor arithmetic it replaced."""
    spec = transforms.default_spec("NIFTI", [1, 64, 64, 64])
    steps = transforms.build_transform(spec).transforms
    step = transforms.ScalePercentiles(*spec.percentiles)
    rng = np.random.default_rng(1)
    images = [steps[2](steps[1](steps[0](read_nifti(p)))) for p in adrenal[:6]]
    images.append(MetaTensor(torch.from_numpy(rng.normal(size=(1, 8, 9, 10)).astype(np.float32))))
    images.append(MetaTensor(torch.zeros(1, 4, 4, 4)))
    for image in images:
        lo, hi = np.percentile(image.as_tensor().numpy().ravel(), spec.percentiles)
        if hi <= lo:
            lo, hi = float(image.min()), float(image.max())
        expected = (
            torch.zeros_like(image) if hi <= lo else ((image - lo) / (hi - lo)).clamp(0.0, 1.0)
        )
        got = step(image)
        assert type(got) is MetaTensor and torch.equal(got.as_tensor(), expected.as_tensor())
        assert got.applied_operations == expected.applied_operations == image.applied_operations
        assert torch.equal(got.affine, expected.affine) and got.meta.keys() == expected.meta.keys()
        assert torch.equal(step(image.as_tensor()), expected.as_tensor())


def test_a_memory_error_is_not_taken_for_damage(adrenal, monkeypatch):
    """read_scan names MemoryError itself: the in-memory path lets it through."""

    def no_memory(raw, size):
        raise MemoryError

    monkeypatch.setattr(nifti, "_inflate", no_memory)
    with pytest.raises(MemoryError):
        read_nifti(adrenal[0])
