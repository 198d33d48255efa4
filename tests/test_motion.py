"""MR motion QA data (medres.datasets.motion) on the real MNI152 T1 and dicom2nifti series."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from medres.datasets.motion import (
    CSV_COLUMNS,
    MotionSource,
    export_motion,
    simulate_motion,
    ssim,
)
from medres.errors import ConfigError, ScanReadError
from medres.io import read_scan
from tests.conftest import DICOM2NIFTI, SHARED_DATA, labels_rows, shared_file

MNI = SHARED_DATA / "nifti" / "nilearn_mni152" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
GE_SERIES = DICOM2NIFTI / "ge" / "anatomical" / "001"


@pytest.fixture(scope="module")
def mni_slice() -> np.ndarray:
    """A real axial MNI152 T1 slice through the ventricles, 197x233, scaled to [0, 1]."""
    import nibabel as nib

    volume = np.asarray(nib.load(shared_file(MNI)).dataobj, dtype=np.float64)
    image = volume[:, :, 90]
    return image / np.percentile(volume, 99)


# --- simulate_motion and ssim ----------------------------------------------------------


def test_severity_zero_leaves_the_image_unchanged(mni_slice):
    out = simulate_motion(mni_slice, np.random.default_rng(0), severity=0.0)
    np.testing.assert_array_equal(out, mni_slice)
    assert ssim(mni_slice, out, data_range=1.0) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("pe_axis", [0, 1])
def test_corrupted_image_is_finite_non_negative_and_same_shape(mni_slice, pe_axis):
    out = simulate_motion(mni_slice, np.random.default_rng(1), severity=0.8, pe_axis=pe_axis)
    assert out.shape == mni_slice.shape  # not square: the axes are not swapped
    assert out.dtype == np.float64
    assert np.all(np.isfinite(out)) and out.min() >= 0.0
    assert not np.allclose(out, mni_slice)
    # the brain is still there: motion smears, it does not replace the image
    assert np.corrcoef(out.ravel(), mni_slice.ravel())[0, 1] > 0.5


def test_higher_severity_lowers_the_mean_ssim(mni_slice):
    rng = np.random.default_rng(2)
    means = []
    for severity in (0.1, 0.3, 0.6, 1.0):
        draws = [simulate_motion(mni_slice, rng, severity=severity) for _ in range(6)]
        means.append(np.mean([ssim(mni_slice, d, data_range=1.0) for d in draws]))
    assert all(a > b for a, b in pairwise(means)), means
    assert means[0] > 0.9 and means[-1] < 0.8, means


def test_simulation_is_deterministic_for_a_seed(mni_slice):
    def draw(seed):
        return simulate_motion(mni_slice, np.random.default_rng(seed), severity=0.5)

    np.testing.assert_array_equal(draw(7), draw(7))
    assert not np.array_equal(draw(7), draw(8))


def test_ssim_uses_the_wang_constants_and_the_data_range():
    # constant images: the contrast term is 1, SSIM is the luminance term
    # (2 c (c + b) + C1) / (c² + (c + b)² + C1) with C1 = (0.01 * data_range)²
    x, y = np.full((32, 32), 0.02), np.full((32, 32), 0.03)

    def expected(data_range):
        c1 = (0.01 * data_range) ** 2
        return (2 * 0.02 * 0.03 + c1) / (0.02**2 + 0.03**2 + c1)

    assert expected(1.0) - expected(0.1) > 5e-3  # the data range visibly matters here
    assert ssim(x, y, data_range=1.0) == pytest.approx(expected(1.0), abs=1e-4)
    assert ssim(x, y, data_range=0.1) == pytest.approx(expected(0.1), abs=1e-4)
    # the same images in 8-bit units with data_range 255 give the same value
    assert ssim(x * 255, y * 255, data_range=255) == pytest.approx(expected(1.0), abs=1e-4)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ssim(np.zeros((32, 32)), np.zeros((32, 31)), 1.0), "same shape"),
        (lambda: ssim(np.zeros((8, 8)), np.zeros((8, 8)), 1.0), "at least 11x11"),
        (lambda: ssim(np.zeros((32, 32)), np.zeros((32, 32)), 0), "data_range"),
        (lambda: simulate_motion(np.zeros((4, 4, 4)), 0, severity=0.5), "2D"),
        (lambda: simulate_motion(np.zeros((16, 16)), 0, severity=1.5), "severity"),
        (lambda: simulate_motion(-np.ones((16, 16)), 0, severity=0.5), "magnitude"),
    ],
)
def test_bad_inputs_to_simulation_and_ssim_are_config_errors(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


# --- export_motion ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    """MNI axial slices (auto split) + one real GE DICOM series (test), tiny settings."""
    out = tmp_path_factory.mktemp("motion") / "qa"
    sources = [(shared_file(MNI), "auto", (2,)), MotionSource(shared_file(GE_SERIES), "test")]
    summary = export_motion(
        sources, out, per_slice=2, size=(40, 32), seed=3, slab=8, show_progress=False
    )
    return sources, out, summary


def test_export_writes_labels_that_match_the_pngs(small_export):
    _, out, summary = small_export
    rows = labels_rows(out)
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == summary.n_images == 2 * summary.n_slices
    assert summary.labels_csv == out / "labels.csv" and summary.labels_csv.is_file()
    by_slice: dict[tuple[str, str, str], dict[int, np.ndarray]] = {}
    for r in rows:
        image = read_scan(out / r["path"]).array[0]  # (X, Y) as medres reads PNGs
        assert image.shape == (40, 32) and image.dtype == np.uint8
        copy = int(r["path"].removesuffix(".png").rsplit("_m", 1)[1])
        by_slice.setdefault((r["source"], r["axis"], r["slice_index"]), {})[copy] = image
    for r in rows:
        images = by_slice[(r["source"], r["axis"], r["slice_index"])]
        copy = int(r["path"].removesuffix(".png").rsplit("_m", 1)[1])
        label = float(r["label"])
        assert 0.0 <= label <= 1.0
        # the label is the SSIM of exactly the written file against its clean copy (m0)
        assert label == pytest.approx(ssim(images[0], images[copy], 255), abs=1e-6)
        if copy == 0:
            assert float(r["severity"]) == 0.0 and label == 1.0
    labels = np.array([float(r["label"]) for r in rows])
    assert labels.min() < 0.95  # some copies really are corrupted
    assert summary.ssim_min == pytest.approx(labels.min())
    assert summary.ssim_max == pytest.approx(labels.max())


def test_export_pngs_keep_the_volume_orientation(small_export, mni_slice):
    # read back by medres, a clean PNG is the volume's slice, resized: not transposed,
    # not flipped (compared with a plain subsampling of the same MNI slice)
    _, out, _ = small_export
    png = read_scan(out / MNI.name.removesuffix(".nii.gz") / "ax2_s090_m0.png").array[0]
    rows = np.linspace(0, mni_slice.shape[0] - 1, 40).round().astype(int)
    cols = np.linspace(0, mni_slice.shape[1] - 1, 32).round().astype(int)
    naive = np.clip(mni_slice[np.ix_(rows, cols)], 0, 1)

    def error(reference):
        return np.abs(png / 255.0 - reference).mean()

    assert error(naive) < 0.05
    assert error(naive[:, ::-1]) > 1.6 * error(naive)  # front-back flip
    # (no left-right check: the symmetric MNI template is its own mirror image)


def test_export_splits_by_slab_and_keeps_explicit_splits(small_export):
    _, out, summary = small_export
    rows = labels_rows(out)
    splits_of: dict[str, set[str]] = {}
    for r in rows:
        splits_of.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values()), "a slab group is in two splits"
    dicom = [r for r in rows if r["source"] == str(GE_SERIES)]
    assert len({r["patient_id"] for r in dicom}) == 1  # a held-out subject is one patient
    mni = [r for r in rows if r["source"] == str(MNI)]
    assert dicom and {r["split"] for r in dicom} == {"test"}
    assert {r["axis"] for r in dicom} == {"2"}  # 256x4 slices along axes 0 and 1 skipped
    assert {r["split"] for r in mni} == {"train", "val"}  # auto
    assert all(r["patient_id"].endswith(f"-slab{int(r['slice_index']) // 8}") for r in mni)
    assert {r["axis"] for r in mni} == {"2"}  # the per-source axes
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert summary.counts == counts
    assert counts["val"] < counts["train"]
    source_md = (out / "SOURCE.md").read_text(encoding="utf-8")
    assert f"| test | {counts['test']} |" in source_md and "K2 0.03" in source_md


def test_export_warns_about_a_source_that_is_noise(small_export):
    # the dicom2nifti "anatomical" series hold uncorrelated (anonymised) pixels
    _, _, summary = small_export
    assert any(str(GE_SERIES) in w and "noise" in w for w in summary.warnings)
    assert not any(str(MNI) in w for w in summary.warnings)


def test_export_is_deterministic_and_replaces_its_folder(small_export, tmp_path):
    sources, out, _ = small_export
    again = tmp_path / "again"
    (again).mkdir()
    export_motion(sources, again, per_slice=2, size=(40, 32), seed=3, slab=8, show_progress=False)
    assert (again / "labels.csv").read_bytes() == (out / "labels.csv").read_bytes()
    # a different seed re-splits and re-corrupts, replacing the earlier export whole
    summary = export_motion(
        sources[:1], again, per_slice=2, size=(40, 32), seed=4, slab=8, show_progress=False
    )
    assert summary.counts.get("test", 0) == 0
    assert not any(p.name.startswith("ge-") for p in again.iterdir())
    assert (again / "labels.csv").read_bytes() != (out / "labels.csv").read_bytes()


def test_failed_export_leaves_the_earlier_one_in_place(small_export, tmp_path):
    _, out, _ = small_export
    missing = tmp_path / "no_such_scan.nii.gz"
    before = (out / "labels.csv").read_bytes()
    with pytest.raises(ScanReadError, match="no_such_scan"):
        export_motion([(MNI, "auto"), (missing, "train")], out, show_progress=False)
    assert (out / "labels.csv").read_bytes() == before


@pytest.mark.parametrize(
    ("sources", "kwargs", "message"),
    [
        ([], {}, "no sources"),
        ("mni.nii.gz", {}, "wrap it in a list"),
        ([("x.nii.gz", "testing")], {}, "unknown split 'testing'"),
        ([("x.nii.gz", "train", (3,))], {}, "axes must be"),
        ([("x.nii.gz", "train")], {"per_slice": 0}, "per_slice must be"),
        ([("x.nii.gz", "train")], {"size": (8, 8)}, "size must be"),
        ([("x.nii.gz", "train")], {"min_foreground": 2}, "min_foreground must be"),
        ([("x.nii.gz", "train"), ("./x.nii.gz", "test")], {}, "repeated"),
    ],
)
def test_bad_export_arguments_are_config_errors(tmp_path, sources, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        export_motion(sources, tmp_path / "out", show_progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_no_slice_with_enough_foreground_says_to_lower_it(tmp_path):
    with pytest.raises(ConfigError, match="lower min_foreground"):
        export_motion(
            [(shared_file(MNI), "auto", (2,))],
            tmp_path / "out",
            min_foreground=1.0,
            show_progress=False,
        )


def test_a_foreign_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        export_motion([(shared_file(GE_SERIES), "test")], tmp_path, show_progress=False)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
