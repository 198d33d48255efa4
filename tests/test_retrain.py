"""medres retrain / compare / promote: lineage, frozen test patients, reviewed labels,
paired comparison and the registry — on the shipped chest X-ray subset."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from medres.cli import app
from medres.cohort import Cohort
from medres.errors import ConfigError, LeakageError
from medres.frozen import read_frozen
from medres.retrain.compare import compare_bundles
from medres.retrain.job import retrain_bundle
from medres.retrain.reviews import apply_reviews

QUICK = ["--epochs", "1", "--set", "batch_size=16", "--set", "num_workers=0"]


def _cohort(example_cohort, path, part: int, prefix: str):
    """Scans ``part`` (0 or 1) of each split — disjoint halves — each its own patient."""
    parts = []
    for split, n in (("train", 32), ("val", 16), ("test", 16)):
        rows = example_cohort.table[example_cohort.table["split"] == split]
        for _, group in rows.groupby("label"):
            parts.append(group.iloc[part * n // 2 : (part + 1) * n // 2])
    table = pd.concat(parts).reset_index(drop=True)
    table["patient_id"] = [f"{prefix}{i:03d}" for i in range(len(table))]
    Cohort(table, dict(example_cohort.meta)).save(path)
    return path


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def lineage(example_cohort, tmp_path_factory):
    """A champion on half A and a challenger fine-tuned on half B with one reviewed label."""
    tmp = tmp_path_factory.mktemp("retrain")
    site_a = _cohort(example_cohort, tmp / "site_a.parquet", 0, "A")
    site_b = _cohort(example_cohort, tmp / "site_b.parquet", 1, "B")
    trained = _invoke("train", "--cohort", site_a, "--epochs", "2", *QUICK[2:], "-o", tmp / "v1")
    assert trained.exit_code == 0, trained.output
    b_train = Cohort.load(site_b).labelled("train")
    flipped = b_train.iloc[0]
    reviews = tmp / "reviews.csv"
    pd.DataFrame(
        {
            "path": [flipped["path"]],
            "label": [str(1 - int(flipped["label"]))],
            "reviewer": ["dr_a"],
            "decided_at": ["2026-11-20T10:00:00+00:00"],
        }
    ).to_csv(reviews, index=False)
    retrained = _invoke(
        "retrain", tmp / "v1", "--cohort", site_b, "--reviews", reviews, *QUICK, "-o", tmp / "v2"
    )
    assert retrained.exit_code == 0, retrained.output
    return tmp, site_a, site_b, flipped


def _manifest(bundle):
    return json.loads((bundle / "bundle.json").read_text())


def test_challenger_names_its_parent_its_cohorts_and_the_reviews(lineage):
    tmp, site_a, site_b, flipped = lineage
    v1, v2 = _manifest(tmp / "v1"), _manifest(tmp / "v2")
    assert v1["parent_id"] is None and v2["parent_id"] == v1["id"]
    assert [e["bundle_id"] for e in v2["lineage"]] == [v1["id"], v2["id"]]
    assert v2["lineage"][0]["fingerprint"] == Cohort.load(site_a).fingerprint()
    sources = v2["lineage"][1]["sources"]
    # the new cohort, and the champion's own rehearsed so that site A is not forgotten
    assert [s["fingerprint"] for s in sources] == [
        Cohort.load(site_a).fingerprint(),
        Cohort.load(site_b).fingerprint(),
    ]
    assert v2["cohort"]["reviews"]["changed"] == 1
    trained_on = Cohort.load(tmp / "v2" / "training_cohort.parquet").table.set_index("path")
    row = trained_on.loc[flipped["path"]]
    assert row["label"] == 1 - int(flipped["label"])  # the reviewer's label is trained on
    assert row["label_source"] == "review" and row["label_reviewer"] == "dr_a"
    assert row["label_before_review"] == flipped["label"]
    assert (trained_on["label_source"] == "review").sum() == 1


def test_fine_tuning_starts_from_the_champion_and_from_scratch_does_not(lineage, tmp_path):
    tmp, _, site_b, _ = lineage
    frozen_lr = ["--set", "lr=1e-12"]
    tuned = _invoke(
        "retrain", tmp / "v1", "--cohort", site_b, *QUICK, *frozen_lr, "-o", tmp_path / "t"
    )
    scratch = _invoke(
        "retrain",
        tmp / "v1",
        "--cohort",
        site_b,
        "--from-scratch",
        *QUICK,
        *frozen_lr,
        "-o",
        tmp_path / "s",
    )
    assert tuned.exit_code == 0 and scratch.exit_code == 0, tuned.output + scratch.output
    weights = {
        n: load_file(p / "weights.safetensors")
        for n, p in (("v1", tmp / "v1"), ("t", tmp_path / "t"), ("s", tmp_path / "s"))
    }
    conv = [k for k in weights["v1"] if k.endswith("conv1.weight")]
    assert conv
    for k in conv:
        assert np.allclose(weights["t"][k], weights["v1"][k], atol=1e-6)
    assert not all(np.allclose(weights["s"][k], weights["v1"][k], atol=1e-3) for k in conv)


def test_frozen_test_patients_are_hashed_and_grow_along_the_lineage(lineage):
    tmp, site_a, site_b, _ = lineage
    v1, v2 = read_frozen(tmp / "v1"), read_frozen(tmp / "v2")
    text = (tmp / "v1" / "frozen_test.json").read_text()
    a_test = Cohort.load(site_a).labelled("test")
    assert len(v1["patients"]) == len(a_test) and "A0" not in text  # no clear-text ids
    assert v2["salt"] == v1["salt"] and set(v1["patients"]) < set(v2["patients"])
    b_test = Cohort.load(site_b).labelled("test")
    assert len(v2["patients"]) == len(a_test) + len(b_test)


def test_a_champion_test_patient_in_training_is_refused_naming_them(lineage, tmp_path):
    tmp, site_a, site_b, _ = lineage
    table = Cohort.load(site_b).table.copy()
    a_test = Cohort.load(site_a).labelled("test")
    leaked = a_test["patient_id"].iloc[:2].tolist()
    train = table.index[table["split"] == "train"][:2]
    table.loc[train, "patient_id"] = leaked  # the same patients, other scans
    bad = Cohort(table, {}).save(tmp_path / "leaky.parquet")
    result = _invoke("retrain", tmp / "v1", "--cohort", bad, *QUICK, "-o", tmp_path / "v3")
    assert result.exit_code == 2
    assert "leak" in result.output and all(p in result.output for p in leaked)
    assert not (tmp_path / "v3" / "bundle.json").exists()

    # a champion test scan re-ingested without a patient id is caught by its pixels
    table = Cohort.load(site_b).table.copy()
    moved = a_test.iloc[[0]].assign(split="train", patient_id=None, scan_id="copied.png")
    with pytest.raises(LeakageError, match=r"leak.*copies of its test scans' pixels: copied"):
        retrain_bundle(
            tmp / "v1",
            [Cohort(pd.concat([table, moved]), {}).save(tmp_path / "copy.parquet")],
            tmp_path / "v4",
        )


def test_reviews_with_unknown_labels_or_columns_are_refused(lineage, tmp_path):
    _, _, site_b, flipped = lineage
    table = Cohort.load(site_b).table
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"path": [flipped["path"]], "label": ["pneumothorax"]}).to_csv(bad, index=False)
    with pytest.raises(ConfigError, match="not a class of the model"):
        apply_reviews(table, bad, [0, 1])
    pd.DataFrame({"scan": ["x"], "label": ["1"]}).to_csv(bad, index=False)
    with pytest.raises(ConfigError, match=r"lacks columns \['path'\]"):
        apply_reviews(table, bad, [0, 1])
    unlabelled = table.assign(label=None)  # e.g. a new cohort labelled only by review
    pd.DataFrame({"path": [flipped["path"], "/nowhere/x.png"], "label": ["1.0", "0"]}).to_csv(
        bad, index=False
    )
    relabelled, applied = apply_reviews(unlabelled, bad, [0, 1])
    assert applied.unmatched == ["/nowhere/x.png"] and applied.changed == 1
    assert relabelled.set_index("path").at[flipped["path"], "label"] == 1


def test_retraining_keeps_the_champions_model_and_preprocessing(lineage, tmp_path):
    tmp, _, site_b, _ = lineage
    for setting in ("dropout=0.5", "preprocess.spatial_size=[64,64]", "model=resnet50"):
        result = _invoke(
            "retrain", tmp / "v1", "--cohort", site_b, "--set", setting, "-o", tmp_path / "x"
        )
        assert result.exit_code == 2 and "keeps the champion's" in result.output, setting
    v1, v2 = (json.loads((tmp / v / "config.json").read_text()) for v in ("v1", "v2"))
    assert v2["preprocess"] == v1["preprocess"] and v2["trust"] == v1["trust"]
    assert v2["lr"] == pytest.approx(v1["lr"] * 0.1) and v2["warmup_epochs"] == 0


def test_compare_reports_paired_differences_and_promote_records_the_verdict(lineage, tmp_path):
    tmp, _, site_b, _ = lineage
    registry = tmp_path / "registry.json"
    same = _invoke(
        "compare",
        tmp / "v1",
        tmp / "v1",
        "--cohort",
        site_b,
        "--n-boot",
        "200",
        "-o",
        tmp_path / "same",
    )
    assert same.exit_code == 0, same.output
    report = json.loads((tmp_path / "same" / "compare.json").read_text())
    assert [t["role"] for t in report["test_sets"]] == ["old", "new"]
    for t in report["test_sets"]:
        assert t["n_scans"] == 16 and t["n_patients"] == 16
        for m in t["metrics"].values():  # a model against itself: exactly no difference
            assert m["difference"] == 0 and m["ci_low"] == 0 and m["ci_high"] == 0
    assert report["verdict"] == "keep"  # not better on the new test set
    markdown = (tmp_path / "same" / "compare.md").read_text()
    assert markdown.count("| auroc |") == 2
    assert "## Cohort drift" in markdown  # old vs new test scans, as the champion sees them
    assert (tmp_path / "same" / "drift_site_b" / "drift.json").is_file()

    itself = _invoke("promote", tmp_path / "same", "--registry", registry)
    assert itself.exit_code == 2 and "with itself" in itself.output

    other = _invoke(
        "compare",
        tmp / "v1",
        tmp / "v2",
        "--cohort",
        site_b,
        "--n-boot",
        "200",
        "--no-drift",
        "-o",
        tmp_path / "v2",
    )
    assert other.exit_code == 0, other.output
    report = json.loads((tmp_path / "v2" / "compare.json").read_text())
    for t in report["test_sets"]:
        for m in t["metrics"].values():
            assert m["ci_low"] <= m["ci_high"] and m["replicates"] > 150
            assert m["difference"] == pytest.approx(m["challenger"] - m["champion"])
    v1, v2 = _manifest(tmp / "v1")["id"], _manifest(tmp / "v2")["id"]
    decided = _invoke("promote", tmp_path / "v2", "--registry", registry)
    models = json.loads(registry.read_text())["models"]
    if report["verdict"] == "keep":  # 16 test scans rarely show a 1-epoch model better
        assert decided.exit_code == 1 and "not promoted" in decided.output
        assert models[v1]["status"] == "champion" and models[v2]["status"] == "rejected"
        forced = _invoke(
            "promote", tmp_path / "v2", "--registry", registry, "--force-reason", "pilot at B"
        )
        assert forced.exit_code == 0, forced.output
    else:
        assert decided.exit_code == 0, decided.output
    models = json.loads(registry.read_text())["models"]
    assert models[v1]["status"] == "archived" and models[v2]["status"] == "champion"
    assert models[v2]["parent_id"] == v1
    events = json.loads(registry.read_text())["events"]
    assert events[-1]["action"] == "promote" and events[-1]["challenger"] == v2

    again = _invoke("promote", tmp_path / "v2", "--registry", registry)  # v1 is archived now
    assert again.exit_code == 2 and "registry's champion is" in again.output


def test_compare_refuses_a_test_set_a_bundle_trained_on_naming_its_cohort(lineage, tmp_path):
    tmp, site_a, _, _ = lineage
    table = Cohort.load(site_a).table.copy()
    table["split"] = table["split"].map({"train": "test", "val": "val", "test": "train"})
    swapped = Cohort(table, {}).save(tmp_path / "swapped.parquet")  # A's train is its test
    with pytest.raises(LeakageError) as err:
        compare_bundles(tmp / "v1", tmp / "v2", [swapped], n_boot=100)
    said = " ".join(str(err.value).split())
    champion_id = json.loads((tmp / "v1" / "bundle.json").read_text())["id"][:8]
    assert f"bundle {champion_id}'s training cohort {site_a.resolve()} holds" in said
    assert "swapped.parquet's test split's scans of patients A" in said
    assert "retraining" not in said and "new cohort" not in said
    assert "compare on a test split" in said.lower()
