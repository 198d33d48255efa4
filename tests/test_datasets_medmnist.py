"""MedMNIST .npz → scan folder + labels.csv, on the real files in ../shared/data/medmnist."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medres.cli import app
from medres.datasets import medmnist
from medres.datasets.medmnist import export_medmnist
from medres.errors import ConfigError
from tests.conftest import SHARED_DATA, labels_rows, shared_file

DATA = SHARED_DATA / "medmnist"


def _npz(name: str) -> Path:
    return shared_file(DATA / f"{name}.npz")


@pytest.fixture(scope="module")
def pneumonia(tmp_path_factory):
    npz = _npz("pneumoniamnist")
    out = tmp_path_factory.mktemp("export") / "pneumonia"
    return npz, out, export_medmnist(npz, out)


def test_pneumonia_full_export_counts_and_labels(pneumonia):
    npz, out, summary = pneumonia
    rows = labels_rows(out)
    assert list(rows[0]) == ["path", "label", "split", "patient_id"]
    per_split = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert per_split == {"train": 4708, "val": 524, "test": 624}
    assert summary.counts == per_split and summary.n_written == 5856 and not summary.is_3d
    assert summary.label_counts["test"] == {0: 234, 1: 390}
    assert all(r["patient_id"] == "" for r in rows)  # never invented
    assert len(list(out.glob("*/*.png"))) == 5856
    with np.load(npz) as d:
        for split in ("train", "val", "test"):
            labels = d[f"{split}_labels"][:, 0]
            got = [int(r["label"]) for r in rows if r["split"] == split]
            np.testing.assert_array_equal(got, labels)


def test_pneumonia_pngs_equal_the_arrays(pneumonia):
    npz, out, _ = pneumonia
    with np.load(npz) as d:
        for split, i in [("train", 0), ("train", 4707), ("val", 17), ("test", 623)]:
            with Image.open(out / split / f"{split}_{i:05d}.png") as im:
                assert im.mode == "L"
                pixels = np.asarray(im)
            np.testing.assert_array_equal(pixels, d[f"{split}_images"][i])


def test_source_md_names_dataset_licence_and_md5(pneumonia):
    npz, out, summary = pneumonia
    text = (out / "SOURCE.md").read_text()
    md5 = hashlib.md5(npz.read_bytes()).hexdigest()
    assert summary.md5 == md5 and md5 in text
    assert "PneumoniaMNIST" in text and "CC BY 4.0" in text and "Scientific Data" in text
    assert "medres datasets medmnist" in text


def test_retina_colour_round_trip_per_channel(tmp_path):
    npz = _npz("retinamnist")
    summary = export_medmnist(npz, tmp_path / "retina", limit=25)
    assert summary.image_shape == (28, 28, 3) and not summary.is_3d
    assert summary.counts == {"train": 25, "val": 25, "test": 25}
    rows = labels_rows(tmp_path / "retina")
    with np.load(npz) as d:
        images, labels = d["test_images"], d["test_labels"][:, 0]
    for i in (0, 7, 24):
        with Image.open(tmp_path / "retina" / "test" / f"test_{i:05d}.png") as im:
            assert im.mode == "RGB"
            pixels = np.asarray(im)
        for c in range(3):
            np.testing.assert_array_equal(pixels[..., c], images[i][..., c])
    test_labels = [int(r["label"]) for r in rows if r["split"] == "test"]
    np.testing.assert_array_equal(test_labels, labels[:25])


def test_adrenal_3d_nifti_equals_array(tmp_path):
    npz = _npz("adrenalmnist3d")
    summary = export_medmnist(npz, tmp_path / "adrenal", limit=4)
    assert summary.is_3d and summary.image_shape == (28, 28, 28)
    rows = labels_rows(tmp_path / "adrenal")
    assert [r["path"] for r in rows][:2] == ["train/train_00000.nii.gz", "train/train_00001.nii.gz"]
    with np.load(npz) as d:
        for split in ("train", "test"):
            for i in (0, 3):
                img = nib.load(tmp_path / "adrenal" / split / f"{split}_{i:05d}.nii.gz")
                data = np.asanyarray(img.dataobj)
                assert data.shape == (28, 28, 28) and data.dtype == np.uint8
                np.testing.assert_array_equal(data, d[f"{split}_images"][i])
                np.testing.assert_allclose(img.affine, np.eye(4))
                assert img.header.get_zooms() == (1.0, 1.0, 1.0)
    assert "patient-level by construction" in (tmp_path / "adrenal" / "SOURCE.md").read_text()


def test_rerun_replaces_the_previous_export_without_stale_files(tmp_path):
    npz = _npz("pneumoniamnist")
    out = tmp_path / "p"
    export_medmnist(npz, out, limit=30)
    summary = export_medmnist(npz, out, limit=10, splits=("test",))
    assert sorted(p.parent.name for p in out.glob("*/*.png")) == ["test"] * 10
    assert len(labels_rows(out)) == 10 and summary.counts == {"test": 10}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temporary folders left


def test_interrupted_export_keeps_the_previous_one(tmp_path, monkeypatch):
    npz = _npz("pneumoniamnist")
    out = tmp_path / "p"
    export_medmnist(npz, out, limit=5)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    calls = []
    real = medmnist._write_png

    def failing(image, path):
        calls.append(path)
        if len(calls) > 7:
            raise KeyboardInterrupt
        real(image, path)

    monkeypatch.setattr(medmnist, "_write_png", failing)
    with pytest.raises(KeyboardInterrupt):
        export_medmnist(npz, out, limit=20)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_per_class_keeps_every_class_and_limit_warns_when_it_cannot(tmp_path):
    npz = _npz("pneumoniamnist")
    balanced = export_medmnist(npz, tmp_path / "b", per_class=3)
    assert balanced.label_counts["train"] == {0: 3, 1: 3} and not balanced.warnings
    limited = export_medmnist(npz, tmp_path / "l", limit=3)  # train is ordered by class
    assert limited.label_counts["train"] == {0: 3}
    assert any("train" in w and "per_class" in w for w in limited.warnings)


def test_multi_label_is_stored_semicolon_joined(tmp_path):
    with np.load(_npz("pneumoniamnist")) as d:
        arrays = {k: d[k][:6] for k in d.files}
    for split in ("train", "val", "test"):  # two labels per image: (y, 1 - y)
        y = arrays[f"{split}_labels"]
        arrays[f"{split}_labels"] = np.concatenate([y, 1 - y], axis=1)
    np.savez(tmp_path / "two.npz", **arrays)
    summary = export_medmnist(tmp_path / "two.npz", tmp_path / "out")
    assert summary.multi_label
    rows = labels_rows(tmp_path / "out")
    expected = [f"{a};{b}" for a, b in arrays["train_labels"]]
    assert [r["label"] for r in rows if r["split"] == "train"] == expected


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d, t: t / "absent.npz", "no such file"),
        (lambda d, t: _write(t / "x.npz", b"not a zip archive"), "not a readable .npz"),
        (lambda d, t: _write(t / "cut.npz", d.read_bytes()[:5000]), "not a readable .npz"),
        (lambda d, t: _savez(t / "nolabels.npz", d, drop="val_labels"), "lacks ['val_labels']"),
        (lambda d, t: _savez(t / "short.npz", d, cut="test_labels"), "holds 624 images but"),
        (lambda d, t: _savez(t / "fake3d.npz", d), "named as a 3D dataset"),
    ],
)
def test_bad_input_gives_a_config_error_that_says_what_to_do(tmp_path, make, message):
    path = make(_npz("pneumoniamnist"), tmp_path)
    with pytest.raises(ConfigError) as e:
        export_medmnist(path, tmp_path / "out")
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_refuses_to_replace_a_folder_that_is_not_an_export(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an earlier MedMNIST export"):
        export_medmnist(_npz("pneumoniamnist"), out, limit=2)
    assert (out / "notes.txt").read_text() == "keep me"


def test_bad_arguments(tmp_path):
    npz = _npz("pneumoniamnist")
    with pytest.raises(ConfigError, match="splits must be"):
        export_medmnist(npz, tmp_path / "o", splits=("training",))
    with pytest.raises(ConfigError, match="not both"):
        export_medmnist(npz, tmp_path / "o", limit=2, per_class=2)
    with pytest.raises(ConfigError, match="limit must be"):
        export_medmnist(npz, tmp_path / "o", limit=0)


def test_cli_exports_and_prints_a_summary(tmp_path):
    npz = _npz("pneumoniamnist")
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(
        app, ["datasets", "medmnist", str(npz), "-o", str(out), "--per-class", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "pneumoniamnist" in result.output and "0: 2, 1: 2" in result.output
    assert len(labels_rows(out)) == 12

    bad = runner.invoke(app, ["datasets", "medmnist", str(tmp_path / "no.npz"), "-o", str(out)])
    assert bad.exit_code == 2 and "no such file" in bad.output

    help_text = runner.invoke(app, ["datasets", "medmnist", "--help"]).output
    assert "Example" in help_text and "medres datasets medmnist" in help_text


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _savez(path: Path, source: Path, drop: str | None = None, cut: str | None = None) -> Path:
    """A copy of a real .npz with one array dropped or shortened by one row."""
    with np.load(source) as d:
        arrays = {k: d[k] for k in d.files if k != drop}
    if cut:
        arrays[cut] = arrays[cut][:-1]
    np.savez(path, **arrays)
    return path
