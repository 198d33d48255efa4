"""``medres run``: shipped pipelines validate; a small pipeline runs end to end and resumes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medres.errors import ConfigError
from medres.pipeline import load_pipeline, run_pipeline
from medres.pipeline.config import merge_tables
from medres.pipeline.results import gap
from tests.conftest import EXAMPLE, PROJECT, SHARED_DATA, needs

PIPELINES = sorted((PROJECT / "pipelines").glob("*/config.toml"))


def test_five_pipelines_ship_with_config_and_readme():
    names = {p.parent.name for p in PIPELINES}
    assert names == {
        "chest_xray_pneumonia",
        "fundus_dr_grading",
        "adrenal_ct_3d",
        "slice_triage",
        "mri_motion_qa",
    }
    for path in PIPELINES:
        config, _ = load_pipeline(path.parent)
        assert config.name == path.parent.name
        readme = (path.parent / "README.md").read_text()
        assert f"medres run pipelines/{config.name}" in readme
        assert "| " in readme, f"{path.parent}/README.md has no results table"


def _pipeline(tmp_path: Path, extra: str = "") -> Path:
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "config.toml").write_text(
        f"""
name = "tiny"
headline = ["auroc", "accuracy"]
[data]
source = "folder"
[split]
keep_column = "split"
[train]
epochs = 1
batch_size = 64
class_names = {{0 = "normal", 1 = "pneumonia"}}
[predict]
explain = false
{extra}
"""
    )
    return folder


def test_run_pipeline_end_to_end_then_resume(tmp_path):
    pipe, out = _pipeline(tmp_path), tmp_path / "run"
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = run_pipeline(pipe, EXAMPLE, out, log=lines.append, show_progress=False)
    (result,) = run.results
    assert 0 <= result["test"]["auroc"]["value"] <= 1
    assert result["val"]["auroc"]["value"] > 0.5
    assert result["parameters"] > 1e6 and result["seconds_per_epoch"] > 0
    test_rows = pd.read_parquet(out / "tiny" / "cohort_split.parquet").query("split == 'test'")
    predictions = pd.read_parquet(out / "tiny" / "predictions" / "predictions.parquet")
    assert len(predictions) == len(test_rows) == result["n_test_scans"]
    names = {"0": "normal", "1": "pneumonia"}  # [train] class_names reach bundle and predictions
    bundle = json.loads((out / "tiny" / "bundle" / "bundle.json").read_text())
    assert bundle["class_names"] == list(names.values())
    shown = zip(predictions["predicted_class"], predictions["predicted_name"], strict=True)
    assert all(names[c] == name for c, name in shown)
    text = run.results_md.read_text()
    assert "| val auroc | test auroc (95 % CI) |" in text and "cores" in text
    assert json.loads((out / "results.json").read_text())["runs"][0]["name"] == "tiny"

    with pytest.raises(ConfigError, match="--resume"):
        run_pipeline(pipe, EXAMPLE, out, log=lines.append, show_progress=False)
    bundle_json = out / "tiny" / "bundle" / "bundle.json"
    before = bundle_json.stat().st_mtime_ns
    again = run_pipeline(pipe, EXAMPLE, out, resume=True, log=lines.append, show_progress=False)
    assert bundle_json.stat().st_mtime_ns == before  # not retrained
    assert again.results[0]["test"]["auroc"] == result["test"]["auroc"]

    config = pipe / "config.toml"  # a typo'd headline metric: fixed by a resume, no retraining
    config.write_text(config.read_text().replace('"accuracy"]', '"acuracy"]'))
    run_pipeline(pipe, EXAMPLE, out, resume=True, log=lines.append, show_progress=False)
    assert "**No run reported acuracy**" in run.results_md.read_text()
    assert bundle_json.stat().st_mtime_ns == before
    config.write_text(config.read_text().replace("epochs = 1", "epochs = 2"))
    with pytest.raises(ConfigError, match="config differ"):
        run_pipeline(pipe, EXAMPLE, out, resume=True, log=lines.append, show_progress=False)


def test_pipeline_without_its_data_says_how_to_give_it(tmp_path):
    chest = PROJECT / "pipelines" / "chest_xray_pneumonia"
    with pytest.raises(ConfigError, match="--data"):
        run_pipeline(chest, None, tmp_path / "o")
    with pytest.raises(ConfigError, match="does not exist; check --data"):
        run_pipeline(chest, tmp_path / "typo", tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing written: the corrected command just runs


def test_run_names_must_be_plain_folder_names(tmp_path):
    pipe = _pipeline(tmp_path, '[[variants]]\nname = ".."')
    with pytest.raises(ConfigError, match="name"):
        load_pipeline(pipe)


def test_unknown_pipeline_key_names_the_close_one(tmp_path):
    pipe = _pipeline(tmp_path, "[predcit]\nexplain = true")
    with pytest.raises(ConfigError, match="did you mean 'predict'"):
        load_pipeline(pipe)


def test_variant_settings_merge_into_tables():
    base = {"epochs": 30, "trust": {"coverage": 0.9, "target_accuracy": 0.95}}
    merged = merge_tables(base, {"model": "resnet18_mc", "trust": {"coverage": 0.8}})
    assert merged == {
        "epochs": 30,
        "model": "resnet18_mc",
        "trust": {"coverage": 0.8, "target_accuracy": 0.95},
    }
    assert base["trust"]["coverage"] == 0.9


def test_gap_interval_widens_with_both_intervals():
    val = {"value": 0.9, "ci_low": 0.85, "ci_high": 0.95}
    g = gap(val, {"value": 0.8, "ci_low": 0.77, "ci_high": 0.83})
    assert g.value == pytest.approx(-0.1)
    assert g.ci_high - g.ci_low == pytest.approx(2 * (0.05**2 + 0.03**2) ** 0.5)
    certain = {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}  # a skewed test interval stays skewed
    skewed = gap(certain, {"value": 0.14, "ci_low": 0.10, "ci_high": 0.20})
    assert (skewed.ci_low, skewed.ci_high) == pytest.approx((-0.90, -0.80))
    undefined = gap(val, {"value": None, "ci_low": None, "ci_high": None})  # NaN in JSON
    assert np.isnan(undefined.value) and gap(val, None) is None


@needs(SHARED_DATA / "nifti")
def test_motion_qa_pipeline_regresses_ssim_and_gates_predictions(tmp_path):
    """A small mri_motion_qa: motion export → regression bundle with the SSIM range →
    binned accuracies and the QA gate's figures → predict refers slices below 0.9."""
    pipe = tmp_path / "motion"
    pipe.mkdir()
    (pipe / "config.toml").write_text(
        """
name = "motion_small"
headline = ["mae", "residual_sd", "bin_accuracy_3"]
[data]
source = "motion"
[data.motion]
per_slice = 3
size = [32, 32]
slab = 8
sources = [
  { path = "nilearn_mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", axes = [2] },
  { path = "nibabel_tests/anatomical.nii", split = "test", axes = [2] },
]
[split]
keep_column = "split"
[train]
task = "regression"
epochs = 1
flag_below = 0.9
[predict]
explain = false
"""
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = run_pipeline(pipe, SHARED_DATA / "nifti", tmp_path / "run", log=lambda _: None)
    (result,) = run.results
    lo, hi = result["value_range"]
    assert 0 < lo < hi == pytest.approx(1.0)  # the training SSIMs, clean copies at 1
    for name in ("residual_sd", "bin_accuracy_3", "flag_sensitivity", "flag_specificity"):
        assert np.isfinite(result["test"][name]["value"]), name
    predictions = pd.read_parquet(run.out / "motion_small" / "predictions" / "predictions.parquet")
    below = predictions["prediction"] < 0.9
    assert (predictions["refer"] == below).all()
    assert predictions.loc[below, "refer_reason"].str.contains("below the QA threshold 0.9").all()
    assert "QA gate (flag_below = 0.9)" in run.results_md.read_text()
