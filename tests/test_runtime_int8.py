"""`medres export --runtime onnx --int8` and `medres predict --runtime onnx-int8`: the
int8 model is written with its own refitted trust layer only when it passes the gate
(AUROC, ECE, conformal coverage, predicted classes against torch on validation);
otherwise every figure is printed and the bundle is left byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import numpy_helper
from PIL import Image
from typer.testing import CliRunner

from medres.bundle import load_bundle
from medres.cli import app
from medres.predict.quantize import Int8Figures, Int8Limits, int8_gate
from medres.uncertainty.trust import Trust
from tests.conftest import EXAMPLE

pytest.importorskip("onnxruntime", reason='the ONNX runtime needs `pip install "medres[onnx]"`')
pytest.importorskip("onnxscript", reason='torch.onnx.export needs `pip install "medres[onnx]"`')

runner = CliRunner()
INT8 = ["--runtime", "onnx", "--int8"]


def _copy(bundle: Path, to: Path) -> Path:
    shutil.copytree(bundle, to)
    return to


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# The 2-epoch test bundle's 24 validation scans are too few for the real gate (one
# swapped pair of scans moves its AUROC by 0.007, above the 0.005 allowed; measured: a
# drop of 0.021 refused), so the accepted export below runs under loose limits, recorded
# as such. The demo bundle (285 validation scans) passes the real gate.
LOOSE = Int8Limits(auroc_drop=0.2, ece_rise=0.2, coverage_gap=0.2, agreement=0.8)


@pytest.fixture(scope="module")
def quantised(chest_bundle, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the chest X-ray bundle after `medres export --runtime onnx --int8` under
    :data:`LOOSE` limits, and the command's output (read only)."""
    import medres.predict.quantize as quantizer

    bundle = _copy(chest_bundle, tmp_path_factory.mktemp("int8") / "b")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(quantizer.export_int8.__kwdefaults__, "limits", LOOSE)
        result = runner.invoke(app, ["export", str(bundle), *INT8, "--calibration-scans", "16"])
    assert result.exit_code == 0, result.output
    return bundle, " ".join(result.output.split())


def test_an_accepted_int8_export_is_recorded_with_its_figures(quantised, chest_bundle):
    bundle, output = quantised
    assert "accepted on 24 validation scans" in output
    for figure in ("AUROC", "ECE", "conformal coverage", "predicted class unchanged"):
        assert figure in output
    manifest = json.loads((bundle / "bundle.json").read_text())
    record = manifest["runtimes"]["onnx-int8"]
    assert record["file"] == "model.int8.onnx" and record["precision"] == "int8"
    assert record["quantization"]["format"] == "QDQ" and record["quantization"]["scans"] == 16
    for name in ("model.int8.onnx", "onnx-int8/calibration.json", "onnx-int8/ood.safetensors"):
        assert manifest["files"][name] == hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    verified = record["verified"]
    assert verified["accepted"] and verified["split"] == "val" and verified["scans"] == 24
    assert Int8Limits(**verified["limits"]) == LOOSE
    figures = Int8Figures(**verified["figures"])
    checks = int8_gate(figures, LOOSE)
    assert all(ok for _, ok in checks) and verified["checks"] == [line for line, _ in checks]
    card = (bundle / "model_card.md").read_text()
    assert "## Runtime: onnx-int8 (int8" in card
    assert all(f"- {check}" in card for check in verified["checks"])
    # the bundle's own trust layer is untouched; the int8 one is its own
    assert (bundle / "calibration.json").read_bytes() == (
        chest_bundle / "calibration.json"
    ).read_bytes()
    int8 = load_bundle(bundle).on_runtime("onnx-int8")
    assert int8.threshold == load_bundle(chest_bundle).threshold  # the operating point kept
    assert 0 <= figures.calls_unchanged <= 1
    assert int8.trust.referral == Trust.load(bundle / "onnx-int8").referral


def test_predict_on_int8_gives_a_row_for_every_scan(quantised, tmp_path):
    bundle, _ = quantised
    scans = tmp_path / "scans"
    scans.mkdir()
    pngs = sorted((EXAMPLE / "test").glob("*.png"))[:10]
    for png in pngs:
        shutil.copy(png, scans / png.name)
    Image.fromarray(np.zeros_like(np.asarray(Image.open(pngs[0])))).save(scans / "zz_black.png")
    data = pngs[1].read_bytes()
    (scans / "zz_truncated.png").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["predict", str(bundle), str(scans), "-o", str(out), "--runtime", "onnx-int8"],
    )
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(out / "predictions.parquet").set_index("scan_id")
    assert len(rows) == 11 and "zz_black.png" in rows.index  # 10 X-rays and the black image
    assert list(pd.read_csv(out / "failures.csv")["scan_id"]) == ["zz_truncated.png"]
    # its own trust layer (the bundle's operating point)
    int8 = load_bundle(bundle).on_runtime("onnx-int8")
    assert (rows["threshold"] == int8.threshold).all()
    temperature = int8.trust.calibrator.temperature_
    raw = rows[["prob_raw_0", "prob_raw_1"]].to_numpy()
    expected = int8.trust.calibrate(np.log(raw))  # softmax logits up to a constant
    assert np.abs(rows[["prob_0", "prob_1"]].to_numpy() - expected).max() < 1e-6
    assert temperature != load_bundle(bundle).trust.calibrator.temperature_
    run = json.loads((out / "run.json").read_text())
    assert run["runtime"] == "onnx-int8" and run["precision"] == "int8"


def _scrambled(quantize):
    """The real quantiser, then every int8 weight tensor replaced by random values."""

    def bad(fp32, out, reader):
        quantize(fp32, out, reader)
        model = onnx.load(str(out))
        rng = np.random.default_rng(0)
        for init in model.graph.initializer:
            values = numpy_helper.to_array(init)
            if values.dtype == np.int8 and values.size > 64:
                noise = rng.integers(-127, 128, values.shape, dtype=np.int8)
                init.CopyFrom(numpy_helper.from_array(noise, init.name))
        onnx.save(model, str(out))
        return out

    return bad


def test_a_bad_quantisation_is_refused_with_every_figure(chest_bundle, tmp_path, monkeypatch):
    import medres.predict.quantize as quantizer

    bundle = _copy(chest_bundle, tmp_path / "b")
    before = _digests(bundle)
    monkeypatch.setattr(quantizer, "quantize", _scrambled(quantizer.quantize))
    result = runner.invoke(app, ["export", str(bundle), *INT8, "--calibration-scans", "16"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "is refused on 24 validation scans" in text and "Nothing was written" in text
    for figure in ("AUROC", "ECE", "conformal coverage", "predicted class unchanged"):
        assert figure in text
    assert "FAILED" in text
    assert _digests(bundle) == before  # byte for byte, no new file


def _figures(**changed) -> Int8Figures:
    base = dict(
        scans=100,
        auroc_fp32=0.95,
        auroc_int8=0.95,
        ece_fp32=0.03,
        ece_int8=0.03,
        coverage_target=0.9,
        coverage_int8=0.9,
        agreement=1.0,
    )
    return Int8Figures(**{**base, **changed})


@pytest.mark.parametrize(
    ("changed", "failing"),
    [
        ({}, []),
        ({"auroc_int8": 0.945}, []),  # a drop of exactly 0.005 passes
        ({"auroc_int8": 0.9449}, [0]),
        ({"auroc_int8": 0.99}, []),  # a better AUROC passes
        ({"ece_int8": 0.0399}, []),
        ({"ece_int8": 0.0401}, [1]),
        ({"ece_int8": 0.0}, []),  # a lower ECE passes
        ({"coverage_int8": 0.8801}, []),
        ({"coverage_int8": 0.8799}, [2]),
        ({"coverage_int8": 0.97}, []),  # over-covering is allowed (the shown class is in)
        ({"agreement": 0.99}, []),
        ({"agreement": 0.989}, [3]),
        ({"auroc_int8": math.nan, "ece_int8": math.nan}, [0, 1]),  # NaN never passes
        (
            {"auroc_int8": 0.5, "ece_int8": 0.2, "coverage_int8": 0.5, "agreement": 0.5},
            [0, 1, 2, 3],
        ),
    ],
)
def test_the_int8_gate_applies_each_limit(changed, failing):
    checks = int8_gate(_figures(**changed))
    assert len(checks) == 4
    assert [n for n, (_, ok) in enumerate(checks) if not ok] == failing


def test_the_gate_limits_can_be_tightened():
    strict = Int8Limits(auroc_drop=0.0, ece_rise=0.0, coverage_gap=0.0, agreement=1.0)
    assert all(ok for _, ok in int8_gate(_figures(), strict))
    assert not int8_gate(_figures(agreement=0.999), strict)[3][1]
