"""3D volumes → 2D PNG slices + labels.csv (medres.datasets.slices), on real AdrenalMNIST3D.

The volumes come from ../shared/data/medmnist/adrenalmnist3d.npz (28³ binary adrenal
shape masks, 0 / 255), exported with export_medmnist; broken inputs are made from them.
"""

from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medres.cohort import build_cohort
from medres.datasets import slices
from medres.datasets.medmnist import export_medmnist
from medres.datasets.slices import export_slices, select_slices
from medres.errors import ConfigError, ManifestError
from medres.io import read_scan
from medres.split import SplitWarning, audit_cohort, split_cohort
from tests.conftest import SHARED_DATA, labels_rows, shared_file

DATA = SHARED_DATA / "medmnist"


def _npz(name: str) -> Path:
    return shared_file(DATA / f"{name}.npz")


def _write_rows(folder: Path, rows: list[dict[str, str]]) -> None:
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def _voxels(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def _kept(data: np.ndarray, axis: int, min_fraction: float) -> list[int]:
    """The slices with enough foreground, computed one slice at a time (the reference)."""
    lo = data.min()
    return [
        k for k in range(data.shape[axis]) if (data.take(k, axis=axis) > lo).mean() >= min_fraction
    ]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    """18 real AdrenalMNIST3D volumes (3 per class and split), as export_medmnist writes them."""
    out = tmp_path_factory.mktemp("volumes") / "adrenal"
    export_medmnist(_npz("adrenalmnist3d"), out, per_class=3)
    return out


@pytest.fixture(scope="module")
def cut(volumes, tmp_path_factory):
    out = tmp_path_factory.mktemp("slices") / "adrenal_slices"
    return out, export_slices(volumes, out, show_progress=False)


@pytest.fixture
def folder(volumes, tmp_path) -> Path:
    """A private copy of the volumes, for tests that break or relabel them."""
    return Path(shutil.copytree(volumes, tmp_path / "vols"))


def test_each_slice_carries_its_volumes_label_split_and_patient(volumes, cut):
    out, summary = cut
    source = {r["path"].removesuffix(".nii.gz"): r for r in labels_rows(volumes)}
    rows = labels_rows(out)
    assert list(rows[0]) == ["path", "label", "split", "patient_id", "volume", "slice_index"]
    by_volume: dict[str, list[int]] = {}
    for r in rows:
        vol = source[r["volume"]]
        assert (r["label"], r["split"]) == (vol["label"], vol["split"])
        assert vol["patient_id"] == "" and r["patient_id"] == r["volume"]  # its own patient
        assert r["path"] == f"{r['volume']}_slice{int(r['slice_index']):03d}.png"
        by_volume.setdefault(r["volume"], []).append(int(r["slice_index"]))
    assert set(by_volume) == set(source)  # every volume holds structure in some slices
    for vid, indices in by_volume.items():
        assert indices == _kept(_voxels(volumes / f"{vid}.nii.gz"), 2, 0.01)

    assert summary.n_volumes == 18 and summary.n_slices == len(rows)
    assert len(list(out.rglob("*.png"))) == len(rows)
    assert summary.counts == {
        s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")
    }
    assert summary.volume_counts == {"train": 6, "val": 6, "test": 6}
    assert summary.label_counts["test"] == {
        c: sum(r["split"] == "test" and r["label"] == c for r in rows) for c in ("0", "1")
    }
    n = [len(v) for v in by_volume.values()]
    assert summary.slice_stats == (min(n), float(np.median(n)), max(n))
    assert summary.skipped == [] and summary.failed == [] and summary.rescaled == 0
    assert summary.patients_from_volume == 18 and summary.planes == {"S (axial)": 18}
    assert summary.labels_csv == out / "labels.csv"

    text = (out / "SOURCE.md").read_text()
    assert "values are kept as they are" in text and "its own patient" in text
    assert f"min {min(n)}, median {np.median(n):g}, max {max(n)}" in text
    assert "CC BY 4.0" in (out / "SOURCE-volumes.md").read_text()  # the licence travels


@pytest.mark.parametrize(("axis", "plane"), [(0, "R (sagittal)"), (1, "A (coronal)"), (2, None)])
def test_a_png_is_its_volume_slice_in_the_volumes_orientation(volumes, cut, tmp_path, axis, plane):
    if axis == 2:
        out = cut[0]
    else:
        out = tmp_path / "s"
        assert export_slices(volumes, out, axis=axis, show_progress=False).planes == {plane: 18}
    rows = labels_rows(out)
    for r in rows[:: max(1, len(rows) // 40)]:
        data = _voxels(volumes / f"{r['volume']}.nii.gz")
        expected = data.take(int(r["slice_index"]), axis=axis)
        png = out / r["path"]
        assert read_scan(png).array[0].dtype == np.uint8
        np.testing.assert_array_equal(read_scan(png).array[0], expected)  # medres: (a, b)
        np.testing.assert_array_equal(np.asarray(Image.open(png)), expected.T)  # rows = b


def test_per_volume_keeps_evenly_spaced_slices_deterministically(volumes, tmp_path):
    first = export_slices(volumes, tmp_path / "a", per_volume=4, show_progress=False)
    again = export_slices(volumes, tmp_path / "b", per_volume=4, show_progress=False)
    rows = labels_rows(tmp_path / "a")
    assert rows == labels_rows(tmp_path / "b")
    assert set(first.slices_per_volume.values()) == {4} and first.n_slices == 4 * 18
    assert first.slice_stats == (4, 4.0, 4) and again.n_slices == first.n_slices
    for vid in first.slices_per_volume:
        kept = _kept(_voxels(volumes / f"{vid}.nii.gz"), 2, 0.01)
        got = [int(r["slice_index"]) for r in rows if r["volume"] == vid]
        step = len(kept) / 4
        assert got == [kept[int((i + 0.5) * step)] for i in range(4)]
        assert got[0] > kept[0] and got[-1] < kept[-1]  # spread over the structure, not its ends


def test_select_slices_edge_cases(volumes):
    data = _voxels(volumes / "train" / "train_00000.nii.gz")
    kept = _kept(data, 2, 0.01)
    assert select_slices(data, per_volume=1).tolist() == [kept[len(kept) // 2]]  # the middle
    assert select_slices(data, per_volume=len(kept) + 5).tolist() == kept  # fewer than asked
    assert select_slices(data, min_fraction=0).tolist() == list(range(28))  # 0 keeps all
    assert select_slices(np.zeros_like(data)).tolist() == []


def test_a_non_uint8_volume_is_min_max_scaled_and_said_so(folder, tmp_path):
    path = folder / "train" / "train_00001.nii.gz"
    data = _voxels(path)
    ramp = np.arange(28, dtype=np.float32)[None, None, :] * 4.0
    values = data.astype(np.float32) * 0.37 - 12.5 + ramp  # a real shape on a gradient
    nib.save(nib.Nifti1Image(values, np.eye(4)), path)

    out = tmp_path / "s"
    summary = export_slices(folder, out, show_progress=False)
    assert summary.rescaled == 1
    assert "min-max scaled to 0..255 per volume" in (out / "SOURCE.md").read_text()
    lo, hi = values.min(), values.max()
    expected = np.rint((values.astype(np.float64) - lo) * (255 / (hi - lo))).astype(np.uint8)
    rows = [r for r in labels_rows(out) if r["volume"] == "train/train_00001"]
    assert [int(r["slice_index"]) for r in rows] == _kept(values, 2, 0.01)
    for r in rows:
        np.testing.assert_array_equal(
            read_scan(out / r["path"]).array[0], expected[:, :, int(r["slice_index"])]
        )


def test_a_volume_without_structure_is_skipped_and_listed(folder, tmp_path):
    empty = folder / "val" / "val_00002.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((28, 28, 28), np.uint8), np.eye(4)), empty)
    out = tmp_path / "s"
    summary = export_slices(folder, out, show_progress=False)
    assert summary.skipped == ["val/val_00002"]
    assert summary.volume_counts["val"] == 5 and "val/val_00002" not in summary.slices_per_volume
    assert not any(r["volume"] == "val/val_00002" for r in labels_rows(out))
    assert (
        "Volumes skipped (no slice passed `min_fraction`): 1\n\n- `val/val_00002`"
        in (out / "SOURCE.md").read_text()
    )


def test_an_unreadable_volume_is_recorded_and_the_rest_exported(folder, tmp_path):
    broken = folder / "test" / "test_00000.nii.gz"
    broken.write_bytes(broken.read_bytes()[:300])  # truncated
    summary = export_slices(folder, tmp_path / "s", show_progress=False)
    assert [v for v, _ in summary.failed] == ["test/test_00000"]
    assert summary.volume_counts["test"] == 5
    assert "test/test_00000" in (tmp_path / "s" / "SOURCE.md").read_text()


def test_patient_ids_travel_and_a_patient_split_keeps_each_volume_whole(folder, tmp_path):
    rows = labels_rows(folder)
    for i, r in enumerate(rows):  # two volumes per patient, like left and right organ
        r["patient_id"] = f"P{i // 2}"
        r["site"] = "north" if i % 3 else "south"
    _write_rows(folder, rows)
    out = tmp_path / "s"
    summary = export_slices(folder, out, show_progress=False)
    assert summary.patients_from_volume == 0
    cut = labels_rows(out)
    assert list(cut[0])[-1] == "site"  # other columns are copied to every slice
    sources = {r["path"].removesuffix(".nii.gz"): r for r in rows}
    assert all(r["patient_id"] == sources[r["volume"]]["patient_id"] for r in cut)
    assert all(r["site"] == sources[r["volume"]]["site"] for r in cut)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cohort, _ = build_cohort(out, labels=out / "labels.csv")
    assert (cohort.table["status"] == "ok").sum() == len(cut)
    table = split_cohort(cohort, fractions=(0.5, 0.25, 0.25), seed=1).table
    assert (table.groupby("volume")["split"].nunique() == 1).all()  # slices stay together
    assert (table.groupby("patient_id")["split"].nunique() == 1).all()

    # the leaky scan-level split on purpose: the kept test set stays patient-disjoint
    with pytest.warns(SplitWarning, match="both train and val"):
        leaky = split_cohort(cohort, keep_test_column="split", unit="scan", seed=1)
    t = leaky.table
    test_volumes = set(t.loc[t["split"] == "test", "volume"])
    assert test_volumes == {v for v, r in sources.items() if r["split"] == "test"}
    assert (t[t["split"] != "test"].groupby("volume")["split"].nunique() == 2).any()
    with pytest.warns(SplitWarning, match="optimistic"):
        assert audit_cohort(leaky).train_val_patients


def test_rerun_replaces_the_export_and_an_interrupted_run_keeps_it(volumes, tmp_path, monkeypatch):
    out = tmp_path / "s"
    export_slices(volumes, out, per_volume=2, show_progress=False)
    export_slices(volumes, out, per_volume=1, show_progress=False)
    assert len(list(out.rglob("*.png"))) == 18
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    calls = []
    real = slices._write_png

    def failing(image, path):
        calls.append(path)
        if len(calls) > 7:
            raise KeyboardInterrupt
        real(image, path)

    monkeypatch.setattr(slices, "_write_png", failing)
    with pytest.raises(KeyboardInterrupt):
        export_slices(volumes, out, show_progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no staging folder left


def test_an_export_killed_between_its_two_renames_is_put_back_by_the_next_run(tmp_path):
    from medres.datasets._export import staging_folder

    out = tmp_path / "s"  # the state a kill leaves: the old export set aside, none in place
    aside = tmp_path / ".s.slices-old-x1" / "s"
    aside.mkdir(parents=True)
    (aside / "labels.csv").write_text("path,label\n")
    with pytest.raises(RuntimeError), staging_folder(out, "slices"):
        raise RuntimeError("the next run fails too")
    assert (out / "labels.csv").read_text() == "path,label\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_an_export_body_that_never_finishes_leaves_the_earlier_export(volumes, tmp_path):
    from medres.datasets._export import write_export

    out = tmp_path / "s"
    export_slices(volumes, out, per_volume=1, show_progress=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with (  # no labels.csv, no marked SOURCE.md: refused, the earlier export stays
        pytest.raises(RuntimeError, match="finish"),
        write_export(slices.EXPORTER, out, total=1, show_progress=False, description="x") as e,
    ):
        (e.folder / "a.png").write_bytes(b"")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_refuses_a_folder_that_is_not_a_slice_export_or_overlaps_the_input(volumes, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an earlier slice export"):
        export_slices(volumes, mine, show_progress=False)
    assert (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="overlaps the input folder"):
        export_slices(volumes, volumes / "slices", show_progress=False)
    with pytest.raises(ConfigError, match="overlaps the input folder"):
        export_slices(volumes, volumes.parent, show_progress=False)
    assert not (volumes / "slices").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"axis": 3}, "axis must be 0, 1 or 2"),
        ({"axis": -1}, "axis must be 0, 1 or 2"),
        ({"axis": True}, "axis must be 0, 1 or 2"),
        ({"axis": 2.0}, "axis must be 0, 1 or 2"),
        ({"min_fraction": 1.5}, r"min_fraction must be a number in \[0, 1\]"),
        ({"min_fraction": "x"}, r"min_fraction must be a number in \[0, 1\]"),
        ({"per_volume": 0}, r"per_volume \(or None\) must be a whole number >= 1"),
        ({"min_fraction": 1.0}, "no slice to write from 18 volume"),
    ],
)
def test_bad_arguments_are_config_errors(volumes, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        export_slices(volumes, tmp_path / "s", show_progress=False, **kwargs)
    assert not (tmp_path / "s").exists()


def test_a_folder_without_labels_csv_or_with_a_bad_one(folder, tmp_path):
    (folder / "labels.csv").rename(folder / "elsewhere.csv")
    with pytest.raises(ConfigError, match=r"no labels file .*labels\.csv"):
        export_slices(folder, tmp_path / "s", show_progress=False)
    # an explicit labels_csv works, with paths relative to the folder
    summary = export_slices(
        folder, tmp_path / "s", labels_csv=folder / "elsewhere.csv", show_progress=False
    )
    assert summary.n_volumes == 18

    (folder / "labels.csv").write_text("path,diagnosis\ntrain/train_00000.nii.gz,0\n")
    with pytest.raises(ManifestError, match=r"lacks column\(s\) \['label'\]"):
        export_slices(folder, tmp_path / "t", show_progress=False)
    with pytest.raises(ManifestError, match="looks like a slice export"):
        export_slices(tmp_path / "s", tmp_path / "t", show_progress=False)
    (folder / "labels.csv").write_text("path,label\n../outside.nii.gz,0\n")
    with pytest.raises(ManifestError, match="climbs out of the folder"):
        export_slices(folder, tmp_path / "t", show_progress=False)


def test_2d_scans_are_refused_by_name(folder, tmp_path):
    pngs = tmp_path / "pneumonia"
    export_medmnist(_npz("pneumoniamnist"), pngs, limit=2)
    with pytest.raises(ConfigError, match=r"2D image\(s\) \(train/train_00000.png.*need 3D"):
        export_slices(pngs, tmp_path / "s", show_progress=False)

    flat = folder / "train" / "train_00002.nii.gz"  # a 2D NIfTI: one slice of a real volume
    nib.save(nib.Nifti1Image(_voxels(flat)[:, :, 14], np.eye(4)), flat)
    with pytest.raises(ConfigError, match=r"train/train_00002.nii.gz is a 2D image.*need 3D"):
        export_slices(folder, tmp_path / "s", show_progress=False)
    assert not (tmp_path / "s").exists()
