"""``bundle.json`` is sealed by ``bundle.json.sha256`` and checked against the weights."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medres.bundle import load_bundle
from medres.cli import app
from medres.errors import BundleError, ConfigError
from tests.conftest import EXAMPLE, small_cohort

runner = CliRunner()
MANIFEST_SUM = "bundle.json.sha256"  # the sidecar: `sha256sum -c bundle.json.sha256`


@pytest.fixture(scope="module")
def trained(example_cohort, tmp_path_factory) -> Path:
    """A 1-epoch binary chest X-ray bundle (28 x 28 inputs), trained once by the CLI."""
    tmp = tmp_path_factory.mktemp("integrity")
    cohort = small_cohort(example_cohort, tmp / "c.parquet", sizes=(32, 16, 16))
    quick = ["--epochs", "1", "--set", "batch_size=16", "--set", "num_workers=0"]
    result = runner.invoke(app, ["train", "--cohort", str(cohort), *quick, "-o", str(tmp / "b")])
    assert result.exit_code == 0, result.output
    return tmp / "b"


@pytest.fixture
def bundle(trained, tmp_path) -> Path:
    """A private copy of the trained bundle to edit."""
    return shutil.copytree(trained, tmp_path / "bundle")


def _edit(bundle: Path, change, *, reseal: bool = False) -> None:
    """Apply ``change`` to the manifest dict and rewrite ``bundle.json``; with ``reseal``
    also rewrite the sidecar, as a careful forger would (sha256sum format)."""
    path = bundle / "bundle.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    if reseal:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        (bundle / MANIFEST_SUM).write_text(f"{digest}  bundle.json\n")


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(manifest):
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def _said(text: str) -> str:
    return " ".join(text.split())  # rich and pytest wrap long lines


EDITS = {
    "threshold changed": _set("threshold", 0.01),
    "classes renamed": _set("classes", ["normal", "pneumonia"]),
    "task changed to regression": _set("task", "regression"),
    "classes [0, 1, 2] on a 2-class model": _set("classes", [0, 1, 2]),
    "spatial size 60000 x 60000": _set("preprocess", "spatial_size", [60000, 60000]),
}


def test_a_fresh_bundle_is_sealed_in_sha256sum_format(trained):
    sidecar = trained / MANIFEST_SUM
    digest = hashlib.sha256((trained / "bundle.json").read_bytes()).hexdigest()
    assert sidecar.read_text() == f"{digest}  bundle.json\n"
    if shutil.which("sha256sum"):
        check = subprocess.run(
            ["sha256sum", "-c", MANIFEST_SUM], cwd=trained, capture_output=True, text=True
        )
        assert check.returncode == 0 and "bundle.json: OK" in check.stdout
    assert load_bundle(trained).info.classes == [0, 1]


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_any_edit_of_bundle_json_is_refused_naming_the_file(bundle, edit):
    _edit(bundle, edit)
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle)
    said = _said(str(caught.value))
    assert f"{bundle / 'bundle.json'} was edited after the bundle was written" in said
    assert MANIFEST_SUM in said and "restore the original bundle or retrain" in said


def test_a_missing_sidecar_is_refused_saying_to_retrain(bundle):
    (bundle / MANIFEST_SUM).unlink()
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle)
    said = _said(str(caught.value))
    assert f"{bundle / MANIFEST_SUM} is missing" in said
    assert "older medres" in said and "retrain" in said


def test_a_sidecar_not_in_sha256sum_format_is_refused(bundle):
    (bundle / MANIFEST_SUM).write_text("deadbeef\n")
    with pytest.raises(BundleError, match="sha256sum format"):
        load_bundle(bundle)


CONTRADICTIONS = {
    "classes [0, 1, 2] on a 2-output head": (_set("classes", [0, 1, 2]), "classes"),
    "classes [0, 1, 2] as multiclass": (
        lambda m: m.update(task="multiclass", classes=[0, 1, 2], threshold=None),
        "classes",
    ),
    "task regression, classes kept": (_set("task", "regression"), "classes"),
    "task regression on a 2-output head": (
        lambda m: m.update(task="regression", classes=None, threshold=None),
        "task",
    ),
    "an unknown task": (_set("task", "segmentation"), "task"),
    "duplicate classes": (_set("classes", [1, "1"]), "classes"),
    "threshold above 1": (_set("threshold", 1.7), "threshold"),
    "spatial size 60000 x 60000": (
        _set("preprocess", "spatial_size", [60000, 60000]),
        "preprocess.spatial_size",
    ),
    "num_classes not the head's": (_set("model", "args", "num_classes", 3), "num_classes"),
    "in_channels not the preset's": (_set("model", "args", "in_channels", 3), "in_channels"),
}


@pytest.mark.parametrize("edit, field", CONTRADICTIONS.values(), ids=CONTRADICTIONS.keys())
def test_a_resealed_edit_that_contradicts_the_weights_is_refused_naming_the_field(
    bundle, edit, field
):
    _edit(bundle, edit, reseal=True)
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle)
    said = _said(str(caught.value))
    assert f"field '{field}'" in said or f"field 'model.args.{field}'" in said
    assert "found" in said and "expected" in said


def test_the_voxel_budget_follows_medres_max_voxels(bundle, monkeypatch):
    from medres.limits import DEFAULT_MAX_VOXELS, max_voxels

    assert max_voxels() == DEFAULT_MAX_VOXELS == 2**29
    monkeypatch.setenv("MEDRES_MAX_VOXELS", "100")  # the bundle's 28 x 28 = 784 voxels
    with pytest.raises(BundleError, match=r"field 'preprocess.spatial_size'.*784.*100"):
        load_bundle(bundle)
    _edit(bundle, _set("preprocess", "spatial_size", [60000, 60000]), reseal=True)
    monkeypatch.setenv("MEDRES_MAX_VOXELS", str(60000 * 60000))
    assert load_bundle(bundle).spec.spatial_size == (60000, 60000)  # allowed, if asked for
    monkeypatch.setenv("MEDRES_MAX_VOXELS", "lots")
    with pytest.raises(ConfigError, match="MEDRES_MAX_VOXELS='lots'"):
        max_voxels()


@pytest.mark.parametrize(
    "edit, reseal, expected",
    [
        (_set("threshold", 0.01), False, "was edited after the bundle was written"),
        (_set("classes", [0, 1, 2]), True, "field 'classes'"),
    ],
    ids=["edited", "resealed contradiction"],
)
def test_predict_with_an_edited_bundle_exits_2_with_the_message(
    bundle, tmp_path, edit, reseal, expected
):
    scans = tmp_path / "scans"
    scans.mkdir()
    for png in sorted((EXAMPLE / "test").glob("*.png"))[:2]:
        shutil.copy(png, scans / png.name)
    _edit(bundle, edit, reseal=reseal)
    result = runner.invoke(app, ["predict", str(bundle), str(scans), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert expected in _said(result.output)
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
