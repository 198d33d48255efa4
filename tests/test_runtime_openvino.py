"""`medres export --runtime openvino [--int8]` and `medres predict --runtime
openvino|openvino-int8`: the OpenVINO IR (converted from the ONNX graph) passes the same
1e-4 check as the ONNX export, or the same int8 gate, is checksummed in the bundle and
predicts what torch predicts. Fixtures and helpers are the ONNX tests' own."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medres.bundle import load_bundle
from medres.cli import app
from medres.errors import BundleError, ConfigError
from medres.predict.quantize import Int8Figures, int8_gate
from medres.predict.runtime import check_runtime, import_openvino
from tests.test_runtime_int8 import LOOSE, _digests, _scrambled
from tests.test_runtime_onnx import _copy, _predict, folder  # noqa: F401 (a fixture)

pytest.importorskip(
    "openvino", reason='the OpenVINO runtime needs `pip install "medres[openvino]"`'
)

runner = CliRunner()
OPENVINO, INT8 = ["--runtime", "openvino"], ["--runtime", "openvino", "--int8"]
IR = ("model.openvino.xml", "model.openvino.bin")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def exported(chest_bundle, tmp_path_factory) -> Path:
    """A copy of the chest X-ray bundle after `medres export --runtime openvino`."""
    bundle = _copy(chest_bundle, tmp_path_factory.mktemp("openvino") / "b")
    result = runner.invoke(app, ["export", str(bundle), *OPENVINO])
    assert result.exit_code == 0, result.output
    assert "accepted" in result.output
    return bundle


def test_export_passes_the_check_and_both_ir_files_are_checksummed(exported):
    manifest = json.loads((exported / "bundle.json").read_text())
    record = manifest["runtimes"]["openvino"]
    assert record["file"] == "model.openvino.xml" and record["precision"] == "fp32"
    assert "openvino" in record["versions"] and "convert_model" in record["converted"]
    for name in IR:  # the graph and its weights
        assert manifest["files"][name] == _sha256(exported / name)
    verified = record["verified"]
    assert verified["quantity"] == "calibrated probabilities" and verified["scans"] == 24
    assert 0 <= verified["max_abs_diff"] <= verified["tolerance"] == 1e-4
    card = (exported / "model_card.md").read_text()
    assert "## Runtime: openvino (fp32" in card and "OpenVINO" in card


def test_predict_on_openvino_gives_torchs_rows(exported, folder, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr("medres.predict.predictor.predict_precision", lambda *_: "fp32")
    torch_rows = _predict(exported, folder, tmp_path / "torch", "--workers", "0")
    rows = _predict(exported, folder, tmp_path / "ov", "--workers", "0", *OPENVINO)
    assert list(rows.index) == list(torch_rows.index) and len(rows) == 21
    probs = [c for c in torch_rows if c.startswith("prob_")]
    assert np.abs(rows[probs].to_numpy() - torch_rows[probs].to_numpy()).max() <= 1e-4
    for column in ("predicted_class", "conformal_set", "ood", "refer"):
        assert (rows[column] == torch_rows[column]).all(), column
    assert json.loads((tmp_path / "ov" / "run.json").read_text())["runtime"] == "openvino"


@pytest.mark.parametrize("name", IR)
def test_a_changed_ir_file_is_refused_when_the_bundle_is_loaded(exported, tmp_path, name):
    bundle = _copy(exported, tmp_path / "b")
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{name} fails its checksum.*--runtime openvino`"):
        load_bundle(bundle)


def test_int8_is_accepted_under_the_gate_with_its_own_trust_layer(chest_bundle, tmp_path):
    import medres.predict.quantize as quantizer

    bundle = _copy(chest_bundle, tmp_path / "b")
    with pytest.MonkeyPatch.context() as patch:  # 24 val scans: loose limits, as for onnx
        patch.setitem(quantizer.export_int8.__kwdefaults__, "limits", LOOSE)
        result = runner.invoke(app, ["export", str(bundle), *INT8, "--calibration-scans", "16"])
    assert result.exit_code == 0, result.output
    record = json.loads((bundle / "bundle.json").read_text())["runtimes"]["openvino-int8"]
    assert record["file"] == "model.int8.openvino.xml" and record["trust"] == "openvino-int8"
    assert record["quantization"]["format"] == "QDQ" and record["quantization"]["scans"] == 16
    checks = int8_gate(Int8Figures(**record["verified"]["figures"]), LOOSE)
    assert all(ok for _, ok in checks)
    assert record["verified"]["checks"] == [line for line, _ in checks]
    assert "## Runtime: openvino-int8 (int8" in (bundle / "model_card.md").read_text()
    int8 = load_bundle(bundle).on_runtime("openvino-int8")
    assert (bundle / "model.int8.openvino.bin").is_file()
    assert int8.trust.calibrator.temperature_ != load_bundle(bundle).trust.calibrator.temperature_


def test_a_bad_int8_quantisation_is_refused(chest_bundle, tmp_path, monkeypatch):
    import medres.predict.quantize as quantizer

    bundle = _copy(chest_bundle, tmp_path / "b")
    before = _digests(bundle)
    monkeypatch.setattr(quantizer, "quantize", _scrambled(quantizer.quantize))
    result = runner.invoke(app, ["export", str(bundle), *INT8, "--calibration-scans", "16"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "is refused on 24 validation scans" in text and "FAILED" in text
    assert "`--runtime openvino`" in text  # the fp32 export is the way out
    assert _digests(bundle) == before


def test_without_openvino_each_command_says_how_to_install_it(
    exported,
    folder,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` fails
    with pytest.raises(ConfigError, match=r'pip install "medres\[openvino\]"'):
        import_openvino()
    for args in (
        ["export", str(_copy(exported, tmp_path / "b")), *OPENVINO],
        ["predict", str(exported), str(folder), "-o", str(tmp_path / "o"), *OPENVINO],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert 'pip install "medres[openvino]"' in " ".join(result.output.split())


def test_openvino_runs_on_the_cpu_only():
    with pytest.raises(ConfigError, match="runs on the CPU"):
        check_runtime("openvino-int8", "cuda")
