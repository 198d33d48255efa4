"""`medres train` → bundle → `medres evaluate`, through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medres.bundle import WEIGHTS, load_bundle, verify_bundle
from medres.cli import app
from medres.cohort import Cohort
from medres.errors import BundleError
from medres.inference import score_rows
from tests.conftest import small_cohort

runner = CliRunner()
QUICK = ["--epochs", "2", "--set", "batch_size=16", "--set", "num_workers=0"]


@pytest.fixture(scope="module")
def trained(example_cohort, tmp_path_factory):
    """A bundle trained by the CLI on 48 / 24 / 24 scans; patients of 3 test scans each."""
    tmp = tmp_path_factory.mktemp("trained")
    patients = [None] * 72 + [f"P{i // 3}" for i in range(24)]
    cohort = small_cohort(
        example_cohort, tmp / "c.parquet", patient_id=patients, site=["north", "south"] * 48
    )
    result = runner.invoke(app, ["train", "--cohort", str(cohort), *QUICK, "-o", str(tmp / "b")])
    assert result.exit_code == 0, result.output
    return cohort, tmp / "b", result.output


def test_train_writes_a_complete_bundle(trained):
    _, bundle, output = trained
    manifest = verify_bundle(bundle)
    assert manifest["parent_id"] is None and len(manifest["id"]) == 32
    assert manifest["task"] == "binary" and manifest["classes"] == [0, 1]
    assert manifest["model"]["name"] == "resnet18"
    assert manifest["model"]["args"]["stem_stride"] == 2
    assert manifest["preprocess"]["preset"] == "xray_2d"
    assert len(manifest["cohort"]["fingerprint"]) == 64
    assert {"medres", "torch", "monai"} <= set(manifest["versions"])
    assert 0 < manifest["threshold"] < 1
    assert set(manifest["files"]) >= {WEIGHTS, "model_card.md", "metrics.json", "config.json"}
    card = (bundle / "model_card.md").read_text()
    for section in ("## Intended use", "## Data", "## Metrics — val", "## Limitations"):
        assert section in card
    # 72 of the 96 scans (train and val) have no patient id: the card says so in its Data
    # section, and that the audit could check only the 24 test scans that have one
    assert (
        "72 of 96 scans have no patient id; among the 24 with one, the audit before "
        "training found no patient with scans in two splits." in card
    )
    limitations = card[card.index("## Limitations") :]
    assert "- 72 of 96 scans have no patient id: the audit could not check their " in limitations
    assert "Every scan has a patient id" not in card and "No scan has a patient id" not in card
    assert manifest["training"]["stopped_by"] == "the last epoch"
    training = manifest["training"]
    assert training["device"] == "cpu" and training["processes"] == 1
    assert training["precision"] in ("fp32", "bf16")  # bf16 where the CPU has it natively
    assert f"Trained 2 epochs on cpu ({training['precision']}; ended by the last epoch)" in card
    assert "The weights are stored as CPU tensors" in card
    assert "bundle:" in output and "auroc" in output and "limit" not in output


def test_train_past_its_time_limit_keeps_the_best_epoch_and_says_so(example_cohort, tmp_path):
    cohort = small_cohort(example_cohort, tmp_path / "c.parquet")
    limit = ["--set", "time_limit_minutes=1e-4"]
    result = runner.invoke(
        app, ["train", "--cohort", str(cohort), *QUICK, *limit, "-o", str(tmp_path / "b")]
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps long lines
    assert "reached its 0.0001-minute limit after 1 of 2 epochs" in said
    assert "time_limit_minutes=0 lifts the limit" in said
    training = verify_bundle(tmp_path / "b")["training"]
    assert training["stopped_by"] == "the time limit" and training["epochs_run"] == 1
    assert "ended by the time limit" in (tmp_path / "b" / "model_card.md").read_text()


def test_loaded_bundle_predicts_like_the_trained_model(trained):
    cohort_path, bundle_path, _ = trained
    bundle = load_bundle(bundle_path)
    rows = Cohort.load(cohort_path).ok.query("split == 'val'")
    raw = score_rows(bundle.model, bundle.info, bundle.spec, rows).scores(bundle.info)
    metrics = json.loads((bundle_path / "metrics.json").read_text())["val"]
    from sklearn.metrics import roc_auc_score

    # the bundle reports calibrated probabilities; scaling never changes the ranking
    auc = roc_auc_score(bundle.info.encode(rows["label"]), raw[:, 1])
    assert np.isclose(auc, metrics["metrics"]["auroc"]["value"], atol=1e-6)


def test_bundle_carries_a_fitted_trust_layer(trained):
    _, bundle_path, _ = trained
    manifest = verify_bundle(bundle_path)
    assert manifest["calibrated"] and {"calibration.json", "ood.safetensors"} <= set(
        manifest["files"]
    )
    trust = load_bundle(bundle_path).trust
    assert trust.calibrator.temperature_ > 0
    assert trust.conformal.to_dict()["coverage"] == 0.9
    assert np.isfinite(trust.ood.threshold_)
    assert trust.referral["score"] == "max_prob" and trust.referral["target_accuracy"] == 0.95


def test_tampered_or_incomplete_bundle_is_refused_naming_the_file(trained, tmp_path):
    import shutil

    _, bundle, _ = trained
    copy = shutil.copytree(bundle, tmp_path / "copy")
    weights = copy / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{WEIGHTS} fails its checksum"):
        load_bundle(copy)
    weights.unlink()
    with pytest.raises(BundleError, match="is missing"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not a medres bundle"):
        load_bundle(tmp_path)


def test_evaluate_reports_metrics_with_cis_patients_and_sites(trained, tmp_path):
    cohort, bundle, _ = trained
    out = tmp_path / "report"
    result = runner.invoke(app, ["evaluate", str(bundle), str(cohort), "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    for name in ("auroc", "accuracy", "auprc", "sensitivity", "specificity", "f1"):
        metric = report["metrics"][name]
        assert set(metric) == {"value", "ci_low", "ci_high"}
    assert report["n_scans"] == 24 and report["n_patients"] == 8
    assert report["patient_metrics"]["auroc"]["value"] is not None
    assert {row["site"] for row in report["per_site"]} == {"north", "south"}
    assert report["threshold"] == load_bundle(bundle).threshold
    assert (out / "report.md").is_file() and (out / "roc.png").is_file()
    # trust figures, each with a patient-bootstrap interval
    for name in (
        "ece",
        "ece_uncalibrated",
        "nll",
        "brier",
        "conformal_coverage",
        "conformal_mean_set_size",
        "aurc",
        "referral_rate",
    ):
        metric = report["metrics"][name]
        assert metric["value"] >= 0 and metric["ci_low"] <= metric["value"] <= metric["ci_high"]
    assert 0 <= report["metrics"]["ece"]["value"] <= 1
    assert [row["class"] for row in report["conformal_per_class"]] == ["0", "1"]
    markdown = (out / "report.md").read_text()
    assert "Referring " in markdown
    for plot in ("reliability.png", "risk_coverage.png", "coverage.png"):
        assert (out / plot).stat().st_size > 1000


def test_calibrate_refits_the_trust_layer_of_a_copy(trained, tmp_path):
    import shutil

    cohort, bundle, _ = trained
    copy = shutil.copytree(bundle, tmp_path / "copy")
    before = load_bundle(copy)
    result = runner.invoke(
        app,
        [
            "calibrate",
            str(copy),
            str(cohort),
            "--set",
            "coverage=0.8",
            "--set",
            "conformal_score=aps",
        ],
    )
    assert result.exit_code == 0, result.output
    after = load_bundle(copy)  # checksums were updated with the new files
    assert after.trust.conformal.to_dict()["coverage"] == 0.8
    assert after.trust.config.conformal_score == "aps"
    assert after.id == before.id and after.manifest.updated
    assert "## Recalibrated" in (copy / "model_card.md").read_text()
    weights = zip(
        before.model.state_dict().values(), after.model.state_dict().values(), strict=True
    )
    for a, b in weights:
        assert (a == b).all()  # weights untouched
    typo = runner.invoke(app, ["calibrate", str(copy), str(cohort), "--set", "coverag=0.8"])
    assert typo.exit_code == 2 and "did you mean 'coverage'" in typo.output


def test_cli_errors_are_one_line_with_the_fix(trained, tmp_path):
    cohort, bundle, _ = trained
    bad = runner.invoke(
        app,
        ["train", "--cohort", str(cohort), "--set", "epoch=1", "-o", str(tmp_path / "x")],
    )
    assert bad.exit_code == 2 and "did you mean 'epochs'" in bad.output
    assert "[train] settings" in bad.output
    again = runner.invoke(app, ["train", "--cohort", str(cohort), "-o", str(bundle)])
    assert again.exit_code == 2 and "already holds a bundle" in again.output
    split = runner.invoke(
        app, ["evaluate", str(bundle), str(cohort), "--split", "nope", "-o", str(tmp_path / "r")]
    )
    assert split.exit_code == 2 and "choose --split among" in split.output


def test_train_from_a_config_file(trained, tmp_path):
    cohort, _, _ = trained
    config = tmp_path / "train.toml"
    config.write_text(
        f'cohort = "{cohort}"\n[train]\nepochs = 1\nbatch_size = 16\nnum_workers = 0\n'
        '[train.preprocess]\npreset = "xray_2d"\nspatial_size = [32, 32]\n'
    )
    result = runner.invoke(app, ["train", str(config), "-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    manifest = verify_bundle(tmp_path / "b")
    assert manifest["preprocess"]["spatial_size"] == [32, 32]
    assert json.loads((tmp_path / "b" / "config.json").read_text())["epochs"] == 1

    config.write_text(f'cohort = "{cohort}"\n[train.preprocess]\nspatial_sise = [32, 32]\n')
    typo = runner.invoke(app, ["train", str(config), "-o", str(tmp_path / "c")])
    assert typo.exit_code == 2 and "did you mean 'spatial_size'" in typo.output


def test_evaluate_records_an_unreadable_scan_and_goes_on(trained, tmp_path):
    cohort_path, bundle, _ = trained
    cohort = Cohort.load(cohort_path)
    table = cohort.table.copy()
    victim = table.index[table["split"] == "test"][0]
    broken = tmp_path / "truncated.png"
    broken.write_bytes(Path(table.at[victim, "files"][0]).read_bytes()[:40])
    table.at[victim, "files"] = [str(broken)]
    path = Cohort(table, cohort.meta).save(tmp_path / "c.parquet")
    out = tmp_path / "r"
    result = runner.invoke(app, ["evaluate", str(bundle), str(path), "-o", str(out)])
    assert result.exit_code == 0 and "could not be read" in result.output
    failures = __import__("pandas").read_csv(out / "failures.csv")
    assert list(failures["scan_id"]) == [table.at[victim, "scan_id"]]
    assert failures["error_type"].iloc[0] == "ScanReadError"
    report = json.loads((out / "report.json").read_text())
    assert report["n_scans"] == 23 and report["failed_scans"] == 1
    strict = runner.invoke(app, ["evaluate", str(bundle), str(path), "-o", str(out), "--strict"])
    assert strict.exit_code == 1
