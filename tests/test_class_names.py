"""Class display names (``class_names``): from ``--set`` or a config file to the bundle,
predictions, ``run.json``, the model card, evaluation reports and retrained children;
bad settings refused with the fix; bundles written before names load with the labels."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from medres.bundle import load_bundle, write_manifest
from medres.cli import app
from medres.config import apply_overrides, validate
from medres.errors import BundleError, ConfigError
from medres.predict import PredictOptions, predict_folder
from medres.train import TrainConfig
from medres.train.class_names import display_name, resolve_class_names
from tests.conftest import EXAMPLE, PROJECT, small_cohort

runner = CliRunner()
QUICK = ["--epochs", "1", "--set", "batch_size=16", "--set", "num_workers=0"]
NAMES = {"0": "normal", "1": "pneumonia"}


def config(*overrides: str) -> TrainConfig:
    """A TrainConfig as ``medres train --set ...`` reads it."""
    return validate(TrainConfig, apply_overrides({}, list(overrides)), "training settings")


# ---------------------------------------------------------------- the setting


def test_command_line_json_and_toml_spellings_give_one_mapping():
    assert config("class_names=0=normal,1=pneumonia").class_names == NAMES
    assert config("class_names= 0 = normal , 1=pneumonia ").class_names == NAMES
    assert config('class_names={"0": "normal", "1": "pneumonia"}').class_names == NAMES
    assert TrainConfig(class_names={0: "normal", 1.0: "pneumonia"}).class_names == NAMES
    assert config().class_names is None


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("class_names=0normal,1=pneumonia", "class=name pairs joined by commas"),
        ("class_names=0=normal,1=", "class '1' has an empty name"),
        ("class_names=0=normal,1.0=x,1=pneumonia", "names class '1' twice"),
        ('class_names=["normal", "pneumonia"]', "mapping from each class to its name"),
        ("class_names=0=a\\\\b,1=c", "backslash"),
    ],
)
def test_a_malformed_setting_says_how_to_write_it(setting, says):
    with pytest.raises(ConfigError, match="class_names") as caught:
        config(setting)
    assert says in str(caught.value)


def test_names_are_checked_against_the_classes():
    assert resolve_class_names([0, 1], None) == ["0", "1"]
    assert resolve_class_names(["normal", "pneumonia"], None) == ["normal", "pneumonia"]
    assert resolve_class_names([0, 1], NAMES) == ["normal", "pneumonia"]
    with pytest.raises(ConfigError, match=r"names class '2' that the labels do not have.*0, 1"):
        resolve_class_names([0, 1], {"0": "normal", "2": "pneumonia"})
    with pytest.raises(ConfigError, match=r"no name to class '1'.*class_names=0=normal,1=\.\.\."):
        resolve_class_names([0, 1], {"0": "normal"})
    with pytest.raises(ConfigError, match=r"one name \('Normal'\) to classes 0 and 1"):
        resolve_class_names([0, 1], {"0": "Normal", "1": "normal"})
    with pytest.raises(ConfigError, match="class_names apply to classifiers"):
        config("task=regression", "class_names=0=low,1=high")


def test_display_name_shows_the_label_beside_a_name():
    assert display_name(0, "normal") == "normal (0)"
    assert display_name("pneumonia", "pneumonia") == "pneumonia"
    assert display_name(1, None) == "1"


# ---------------------------------------------------------------- a named bundle


@pytest.fixture(scope="module")
def named(example_cohort, tmp_path_factory):
    """A 1-epoch bundle trained by the CLI with ``--set class_names=0=normal,1=pneumonia``,
    and the cohort it trained on."""
    tmp = tmp_path_factory.mktemp("named")
    cohort = small_cohort(example_cohort, tmp / "c.parquet", sizes=(32, 16, 16))
    result = runner.invoke(
        app,
        [
            "train",
            "--cohort",
            str(cohort),
            *QUICK,
            "--set",
            "class_names=0=normal,1=pneumonia",
            "-o",
            str(tmp / "b"),
        ],
    )
    assert result.exit_code == 0, result.output
    return cohort, tmp / "b"


def test_a_bundle_trained_with_names_carries_them(named):
    _, bundle = named
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["classes"] == [0, 1]
    assert manifest["class_names"] == ["normal", "pneumonia"]
    loaded = load_bundle(bundle)
    assert loaded.class_names == NAMES
    assert loaded.shown_class(1) == "pneumonia (1)"
    assert loaded.config.class_names == NAMES  # config.json: what a retraining starts from
    card = (bundle / "model_card.md").read_text()
    assert "binary classification into normal (0), pneumonia (1) (positive: pneumonia (1))" in card
    assert "| normal (0) |" in card and "| pneumonia (1) |" in card  # the data table
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert metrics["val"]["class_names"] == ["normal", "pneumonia"]
    assert metrics["val"]["classes"] == ["0", "1"]  # the labels stay what code keys on


def test_evaluation_report_shows_the_names(named, tmp_path):
    cohort, bundle = named
    result = runner.invoke(app, ["evaluate", str(bundle), str(cohort), "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Classes: normal (0), pneumonia (1)." in md
    assert "operating point: p(pneumonia (1)) >=" in md
    assert "| normal (0) | 8 |" in md and "| pneumonia (1) | 8 |" in md  # per true class
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["classes"] == ["0", "1"] and report["class_names"] == ["normal", "pneumonia"]
    rows = report["conformal_per_class"]
    assert [(r["class"], r["name"]) for r in rows] == [("0", "normal"), ("1", "pneumonia")]


def test_predictions_and_run_json_carry_the_names(named, tmp_path):
    _, bundle = named
    scans = tmp_path / "scans"
    scans.mkdir()
    for png in sorted((EXAMPLE / "test").glob("*.png"))[:6]:
        shutil.copy(png, scans / png.name)
    predict_folder(bundle, scans, tmp_path / "out", PredictOptions(workers=0))
    table = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert len(table) == 6
    assert list(table["predicted_name"]) == [NAMES[c] for c in table["predicted_class"]]
    assert {"prob_0", "prob_1"} <= set(table.columns)  # unchanged: code keys on them
    columns = list(table.columns)
    assert columns.index("predicted_name") == columns.index("predicted_class") + 1
    csv = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype=str)
    assert list(csv["predicted_name"]) == list(table["predicted_name"])
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["class_names"] == NAMES


def test_a_retrained_child_inherits_the_names_unless_renamed(named):
    from medres.retrain.job import _challenger_config

    parent = load_bundle(named[1])
    assert _challenger_config(parent, False, ()).class_names == NAMES
    renamed = _challenger_config(parent, False, ["class_names=0=no pneumonia,1=pneumonia"])
    assert renamed.class_names == {"0": "no pneumonia", "1": "pneumonia"}


def test_a_bad_setting_is_refused_before_training(named, tmp_path):
    cohort, _ = named
    result = runner.invoke(
        app,
        [
            "train",
            "--cohort",
            str(cohort),
            *QUICK,
            "--set",
            "class_names=0=normal,2=pneumonia",
            "-o",
            str(tmp_path / "b"),
        ],
    )
    assert result.exit_code == 2
    assert "class_names names class '2' that the labels do not have" in result.output
    assert "remove it or fix the key" in result.output
    assert not (tmp_path / "b" / "bundle.json").exists()


def test_an_old_bundle_without_names_loads_with_the_labels(named, tmp_path):
    _, bundle = named
    old = shutil.copytree(bundle, tmp_path / "old")
    manifest = json.loads((old / "bundle.json").read_text())
    del manifest["class_names"]
    write_manifest(old, manifest)  # resealed, as an older medres wrote it
    loaded = load_bundle(old)
    assert loaded.class_names == {"0": "0", "1": "1"}
    assert loaded.shown_class(0) == "0"


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["normal"], "a list of 2 names, one per class"),
        (["normal", "Normal"], "a different name for each class"),
        (["normal", ""], "non-empty text names"),
    ],
)
def test_bundle_class_names_that_do_not_fit_its_classes_are_refused(
    named, tmp_path, names, expected
):
    _, bundle = named
    bad = shutil.copytree(bundle, tmp_path / "bad")
    manifest = json.loads((bad / "bundle.json").read_text())
    manifest["class_names"] = names
    write_manifest(bad, manifest)
    with pytest.raises(BundleError, match="field 'class_names'") as caught:
        load_bundle(bad)
    assert expected in str(caught.value)


def test_pipeline_configs_name_their_documented_classes():
    from medres.pipeline.config import load_pipeline

    for name, names in [
        ("chest_xray_pneumonia", NAMES),
        ("adrenal_ct_3d", {"0": "normal", "1": "mass"}),
        ("slice_triage", {"0": "normal", "1": "mass"}),
    ]:
        pipeline, _ = load_pipeline(PROJECT / "pipelines" / name)
        assert TrainConfig.model_validate(pipeline.train).class_names == names
