"""`medres export --runtime onnx` and `medres predict --runtime onnx`: the export is
accepted only within 1e-4 of torch's calibrated probabilities, checksummed in the bundle,
and predicts what torch predicts."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medres.bundle import load_bundle
from medres.cli import app
from medres.errors import BundleError
from tests.conftest import EXAMPLE

pytest.importorskip("onnxruntime", reason='the ONNX runtime needs `pip install "medres[onnx]"`')
pytest.importorskip("onnxscript", reason='torch.onnx.export needs `pip install "medres[onnx]"`')

runner = CliRunner()
TEST_PNGS = sorted((EXAMPLE / "test").glob("*.png"))


def _copy(bundle: Path, to: Path) -> Path:
    shutil.copytree(bundle, to)
    return to


@pytest.fixture(scope="module")
def exported(chest_bundle, tmp_path_factory) -> Path:
    """A copy of the chest X-ray bundle after `medres export --runtime onnx` (read only)."""
    bundle = _copy(chest_bundle, tmp_path_factory.mktemp("exported") / "b")
    result = runner.invoke(app, ["export", str(bundle), "--runtime", "onnx"])
    assert result.exit_code == 0, result.output
    assert "accepted" in result.output
    return bundle


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """20 shipped test X-rays, one black image (out of distribution) and a truncated PNG."""
    root = tmp_path_factory.mktemp("scans")
    for png in TEST_PNGS[:20]:
        shutil.copy(png, root / png.name)
    real = np.asarray(Image.open(TEST_PNGS[0]))
    Image.fromarray(np.zeros_like(real)).save(root / "zz_black.png")
    data = TEST_PNGS[1].read_bytes()
    (root / "zz_truncated.png").write_bytes(data[: len(data) // 2])
    return root


def test_export_passes_the_gate_and_is_recorded_in_the_bundle(exported):
    manifest = json.loads((exported / "bundle.json").read_text())
    onnx = manifest["runtimes"]["onnx"]
    assert onnx["file"] == "model.onnx" and onnx["precision"] == "fp32"
    digest = hashlib.sha256((exported / "model.onnx").read_bytes()).hexdigest()
    assert manifest["files"]["model.onnx"] == digest
    assert onnx["weights_sha256"] == manifest["files"]["weights.safetensors"]
    verified = onnx["verified"]
    assert verified["against"] == "torch" and verified["quantity"] == "calibrated probabilities"
    assert verified["split"] == "val" and verified["scans"] == 24  # the fixture's val split
    assert 0 <= verified["max_abs_diff"] <= verified["tolerance"] == 1e-4
    card = (exported / "model_card.md").read_text()
    assert "## Runtime: onnx (fp32" in card and f"{verified['max_abs_diff']:.2g}" in card
    assert load_bundle(exported).manifest.runtimes["onnx"].file == "model.onnx"


def _predict(bundle: Path, folder: Path, out: Path, *flags: str) -> pd.DataFrame:
    result = runner.invoke(app, ["predict", str(bundle), str(folder), "-o", str(out), *flags])
    assert result.exit_code == 0, result.output
    return pd.read_parquet(out / "predictions.parquet").set_index("scan_id").sort_index()


def test_predict_on_onnx_gives_torchs_rows(exported, folder, tmp_path, monkeypatch):
    # torch in fp32, the precision the export was verified in: on a CPU with native bf16 a
    # bundle trained in bf16 predicts under bf16 autocast, up to ~2e-2 away from fp32
    monkeypatch.setattr("medres.predict.predictor.predict_precision", lambda *_: "fp32")
    torch_rows = _predict(exported, folder, tmp_path / "torch", "--workers", "0")
    onnx_rows = _predict(
        exported, folder, tmp_path / "onnx", "--workers", "0", "--runtime", "onnx", "--explain"
    )
    assert list(onnx_rows.index) == list(torch_rows.index)
    assert len(onnx_rows) == 21  # the 20 X-rays and the black image
    assert (onnx_rows["predicted_class"] == torch_rows["predicted_class"]).all()
    probs = [c for c in torch_rows if c.startswith("prob_")]
    assert np.abs(onnx_rows[probs].to_numpy() - torch_rows[probs].to_numpy()).max() <= 1e-4
    assert (onnx_rows["conformal_set"] == torch_rows["conformal_set"]).all()
    assert (onnx_rows["ood"] == torch_rows["ood"]).all() and onnx_rows.loc["zz_black.png", "ood"]
    assert (onnx_rows["refer"] == torch_rows["refer"]).all()
    # Grad-CAM from the torch weights beside the ONNX rows
    assert all((tmp_path / "onnx" / png).is_file() for png in onnx_rows["heatmap"])
    failures = [pd.read_csv(tmp_path / run / "failures.csv") for run in ("torch", "onnx")]
    assert list(failures[0]["scan_id"]) == ["zz_truncated.png"]
    pd.testing.assert_frame_equal(failures[0], failures[1])
    runs = [json.loads((tmp_path / run / "run.json").read_text()) for run in ("torch", "onnx")]
    assert [r["runtime"] for r in runs] == ["torch", "onnx"]
    assert runs[1]["device"] == "cpu" and runs[1]["precision"] == "fp32"


def test_a_changed_model_onnx_is_refused_when_the_bundle_is_loaded(exported, folder, tmp_path):
    bundle = _copy(exported, tmp_path / "b")
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx fails its checksum.*export it again"):
        load_bundle(bundle)
    result = runner.invoke(
        app, ["predict", str(bundle), str(folder), "-o", str(tmp_path / "o"), "--runtime", "onnx"]
    )
    assert result.exit_code == 2
    assert "fails its checksum" in result.output and not (tmp_path / "o").exists()


def test_runtime_onnx_without_an_export_says_to_export_first(chest_bundle, folder, tmp_path):
    out = tmp_path / "o"
    result = runner.invoke(
        app, ["predict", str(chest_bundle), str(folder), "-o", str(out), "--runtime", "onnx"]
    )
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "has no model.onnx" in text and "--runtime onnx` first" in text
    assert not out.exists()  # refused before anything was written


def test_the_gate_refuses_a_wrong_model_with_the_figure(chest_bundle, tmp_path, monkeypatch):
    import medres.predict.export as export

    bundle = _copy(chest_bundle, tmp_path / "b")
    before = (bundle / "bundle.json").read_bytes()
    write_onnx = export.write_onnx

    def perturbed(model, bundle, path):  # the head's bias moved: a model that is not torch's
        wrong = copy.deepcopy(model)
        with torch.no_grad():
            wrong.head.bias += torch.tensor([0.5, -0.5])
        return write_onnx(wrong, bundle, path)

    monkeypatch.setattr(export, "write_onnx", perturbed)
    result = runner.invoke(app, ["export", str(bundle), "--runtime", "onnx"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "is refused" in text and "(tolerance 0.0001)" in text and "24 validation scans" in text
    figure = float(text.split("by up to ")[1].split()[0])
    assert figure > 1e-3
    assert (bundle / "bundle.json").read_bytes() == before  # nothing written
    assert not (bundle / "model.onnx").exists()


def test_without_its_cohort_export_asks_for_one(chest_bundle, tmp_path, monkeypatch):
    bundle = _copy(chest_bundle, tmp_path / "b")
    monkeypatch.setattr("medres.predict.export.calibration_cohort", lambda _: None)  # moved
    result = runner.invoke(app, ["export", str(bundle), "--runtime", "onnx"])
    assert result.exit_code == 2
    assert "--cohort COHORT.parquet" in " ".join(result.output.split())
    assert not (bundle / "model.onnx").exists()
    cohort = chest_bundle.parent / "c.parquet"  # the cohort it was trained on, given
    result = runner.invoke(app, ["export", str(bundle), "--cohort", str(cohort)])
    assert result.exit_code == 0, result.output
    verified = load_bundle(bundle).manifest.runtimes["onnx"].verified
    assert verified["cohort"] == str(cohort.resolve()) and verified["scans"] == 24


def test_a_3d_resnet_exports_with_a_dynamic_batch(tmp_path):
    from types import SimpleNamespace

    from medres.models import create_model
    from medres.predict.export import write_onnx
    from medres.predict.runtime import RuntimeClassifier, onnx_session

    model = create_model("resnet18", in_channels=1, num_classes=3, spatial_dims=3, stem_stride=4)
    spec = SimpleNamespace(in_channels=1, spatial_size=(28, 28, 28))
    path = write_onnx(model.eval(), SimpleNamespace(spec=spec), tmp_path / "model.onnx")
    on_onnx = RuntimeClassifier(onnx_session(path), model)
    for batch in (1, 5):  # exported with 2 scans: any batch size runs
        images = torch.randn(batch, 1, 28, 28, 28)
        with torch.no_grad():
            gap = (on_onnx(images) - model(images)).abs().max()
        assert gap < 1e-4
