"""Label issues (confident learning), active learning, and their review worklist.

One small real bundle (PneumoniaMNIST subset, 3 quick epochs) serves every test; the
end-to-end ``medres label-issues`` run cross-fits a tiny cohort with one-epoch folds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medres.bundle import load_bundle
from medres.cli import app
from medres.cohort import Cohort
from medres.inference import input_hash, score_rows
from medres.retrain.label_issues import label_issues, rank_label_issues, rank_uncertain
from medres.review import ReviewStore
from medres.review.issues import LABEL_ISSUE_COLUMNS
from tests.conftest import small_cohort

runner = CliRunner()


def said(result) -> str:
    """A CLI result's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


QUICK = ["--set", "batch_size=16", "--set", "num_workers=0", "--set", "precision=fp32"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread for this module's training: on the shared 2-core test machine,
    with another process busy, two threads ran a ResNet-18 step 15× slower than one
    (4.4 s vs 0.3 s, batch 16 at 28 px)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bundle(example_cohort, tmp_path_factory):
    """A binary chest X-ray bundle trained on 96 + 32 shipped scans (never the test split)."""
    tmp = tmp_path_factory.mktemp("li_bundle")
    cohort = small_cohort(example_cohort, tmp / "c.parquet", sizes=(96, 32, 16))
    args = ["train", "--cohort", str(cohort), "--epochs", "4", "--set", "lr=3e-3", *QUICK]
    trained = runner.invoke(app, [*args, "-o", str(tmp / "b")])
    assert trained.exit_code == 0, trained.output
    return tmp / "b"


@pytest.fixture(scope="module")
def cross_fitted(bundle, example_cohort, tmp_path_factory):
    """``medres label-issues`` over a 16-scan train split (two scans per patient; the last
    scan truncated after ingest), 2 folds of 1 epoch, with every fold's scans recorded."""
    import medres.train

    tmp = tmp_path_factory.mktemp("li_cli")
    patients = [f"p{i // 2}" for i in range(16)] + [f"v{i}" for i in range(8)]
    path = small_cohort(example_cohort, tmp / "c.parquet", sizes=(16, 8, 0), patient_id=patients)
    cohort = Cohort.load(path)
    broken = tmp / "broken.png"
    data = Path(cohort.table.loc[15, "path"]).read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    cohort.table.loc[15, "path"], cohort.table.at[15, "files"] = str(broken), [str(broken)]
    cohort = cohort.save(path)
    seen, real_fit = [], medres.train.fit

    def spy(cohort, config, out_dir, **kw):
        table = cohort.table
        seen.append((table[table["split"] == "train"], table[table["split"] == "heldout"]))
        return real_fit(cohort, config, out_dir, **kw)

    out = tmp / "issues.csv"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(medres.train, "fit", spy)
        args = ["label-issues", str(bundle), str(cohort), "-o", str(out), "--folds", "2"]
        result = runner.invoke(app, [*args, "--epochs", "1"])
    assert result.exit_code == 0, result.output
    return out, cohort, seen, said(result)


def test_planted_label_flips_rank_far_above_base_rate(bundle, example_cohort):
    # probabilities of a real model on 300 scans it never trained on (as out-of-fold ones
    # are), with 10 % of the labels flipped
    loaded = load_bundle(bundle)
    rows = example_cohort.labelled("test")
    scored = score_rows(loaded.model, loaded.info, loaded.spec, rows)
    probs, truth = scored.scores(loaded.info), scored.targets
    flip = np.random.default_rng(0).choice(len(truth), len(truth) // 10, replace=False)
    given = truth.copy()
    given[flip] = 1 - given[flip]

    table = rank_label_issues(scored.rows, given, probs, classes=loaded.info.classes)

    assert table["rank"].tolist() == list(range(1, len(rows) + 1))
    assert table["label_quality"].is_monotonic_increasing
    flipped = table["scan_id"].isin(scored.rows["scan_id"].iloc[flip])
    base = len(flip) / len(table)
    top = flipped.iloc[: len(flip)].mean()  # the top 10 %
    assert top >= 3 * base, f"top 10 % holds {top:.0%} flipped labels, base rate {base:.0%}"
    flags = table["flagged"]
    assert flags[flipped].mean() > 1.5 * flags[~flipped].mean()  # cleanlab's verdict
    by_id = dict(zip(scored.rows["scan_id"], given, strict=True))
    assert (table["given_label"] == table["scan_id"].map(by_id).astype(str)).all()
    p_given = np.where(table["given_label"] == "1", table["prob_1"], table["prob_0"])
    np.testing.assert_allclose(table["p_given"], p_given)
    assert (table["reason"] == "possible label error").all()


def test_label_issues_cli_cross_fits_by_patient_and_writes_ranked_csv(bundle, cross_fitted):
    out, cohort_path, seen, output = cross_fitted
    cohort = Cohort.load(cohort_path)
    broken = cohort.table.loc[15, "scan_id"]
    train = cohort.labelled("train").drop(index=15)
    table = pd.read_csv(out, dtype={"given_label": str, "suggested_label": str})

    # the unreadable scan is left out, and said so
    assert (
        f"1 'train' scan(s) could not be read and are left out of the ranking: {broken}" in output
    )
    # every other scan scored once, by the model of the fold that held it out
    assert len(seen) == 2
    held = pd.concat([h for _, h in seen])
    assert sorted(held["scan_id"]) == sorted(train["scan_id"])
    for fit_rows, held_rows in seen:
        assert not set(fit_rows["patient_id"]) & set(held_rows["patient_id"])
        assert set(fit_rows["scan_id"]) | set(held_rows["scan_id"]) == set(train["scan_id"])

    probs = [f"prob_{c}" for c in load_bundle(bundle).info.classes]
    assert list(table.columns) == [*LABEL_ISSUE_COLUMNS, *probs]
    assert sorted(table["scan_id"]) == sorted(train["scan_id"])
    assert table["rank"].tolist() == list(range(1, 16))
    assert table["label_quality"].is_monotonic_increasing
    np.testing.assert_allclose(table[probs].sum(axis=1), 1.0, atol=1e-6)
    labels = dict(zip(train["scan_id"], train["label"].astype(int).astype(str), strict=True))
    assert (table["given_label"] == table["scan_id"].map(labels)).all()
    assert (table["bundle_id"] == load_bundle(bundle).id).all()
    files = dict(zip(train["scan_id"], train["files"], strict=True))
    first = table.iloc[0]
    assert first["input_hash"] == input_hash(tuple(files[first["scan_id"]]))
    assert f"{table['flagged'].sum()} of 15 'train' scans flagged" in output
    assert "Example" in runner.invoke(app, ["label-issues", "--help"]).output


def test_unlabelled_cohort_is_ranked_by_calibrated_uncertainty(bundle, example_cohort, tmp_path):
    rows = example_cohort.labelled("test").head(24)
    table = rows.assign(label=None, split=None).reset_index(drop=True)
    cohort = Cohort(table, dict(example_cohort.meta)).save(tmp_path / "new.parquet")

    written = label_issues(bundle, cohort, tmp_path / "al.csv")
    cli = runner.invoke(
        app, ["label-issues", str(bundle), str(cohort), "-o", str(tmp_path / "b.csv")]
    )

    assert cli.exit_code == 0, cli.output
    assert "24 unlabelled scans ranked by uncertainty" in said(cli)
    assert len(written) == 24 and (written["reason"] == "uncertain (active learning)").all()
    assert written["p_suggested"].is_monotonic_increasing  # least sure first
    assert (written["given_label"] == "").all() and not written["flagged"].any()
    # the bundle's calibrated probabilities, scan by scan
    loaded = load_bundle(bundle)
    scored = score_rows(loaded.model, loaded.info, loaded.spec, rows)
    calibrated = loaded.trust.assess(scored.outputs, scored.features).probs
    expected = dict(zip(scored.rows["scan_id"], calibrated[:, 1], strict=True))
    np.testing.assert_allclose(written["prob_1"], written["scan_id"].map(expected), atol=1e-6)
    assert all(
        s in c.split("|")
        for s, c in zip(written["suggested_label"], written["conformal_set"], strict=True)
    )
    ranked = rank_uncertain(bundle, table)  # a table of rows works too
    assert ranked["scan_id"].tolist() == written["scan_id"].tolist()

    # every row goes on the worklist by default, the least sure first
    with ReviewStore(tmp_path / "al.db") as store:
        assert store.load_label_issues(tmp_path / "al.csv").cases_added == 24
        worklist = store.worklist()
    assert worklist["scan_id"].tolist() == written["scan_id"].tolist()
    assert (worklist["refer_reason"] == "uncertain (active learning)").all()
    assert worklist["conformal_set"].map("|".join).tolist() == written["conformal_set"].tolist()


def test_review_load_label_issues_refers_them_and_reloading_adds_nothing(cross_fitted, tmp_path):
    out = cross_fitted[0]
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    db = tmp_path / "review.db"
    load = ["review", "load", "--label-issues", str(out), "--store", str(db)]

    first = runner.invoke(app, [*load, "--top", "5"])
    again = runner.invoke(app, [*load, "--top", "5"])
    more = runner.invoke(app, [*load, "--top", "8"])

    assert first.exit_code == 0, first.output
    assert "loaded run 1: 5 cases" in said(first)
    assert "nothing changed" in said(again)
    assert "added 3 new cases" in said(more)
    with ReviewStore(db) as store:
        worklist = store.worklist(reason="possible label error")
        assert worklist["scan_id"].tolist() == table["scan_id"].head(8).tolist()  # rank order
        assert worklist["refer"].all()
        top = table.iloc[0]
        case = worklist.iloc[0]
        assert case["predicted_class"] == top["suggested_label"]
        assert case["refer_reason"] == (
            f"possible label error: labelled {top['given_label']}, "
            f"model says {top['suggested_label']}"
        )
        # agree = relabel as suggested: the export gives the suggested label
        store.decide(int(case["case_id"]), "dr_lee", "agree")
        exported = store.export_labels(tmp_path / "labels.csv")
        assert exported["label"].tolist() == [top["suggested_label"]]
        assert len(store.worklist(status="all")) == 8

    # by default the rows cleanlab flagged; none flagged: asks for --top
    flags = np.zeros(len(table), bool)
    flags[[1, 4, 6]] = True
    table.assign(flagged=flags).to_csv(tmp_path / "three.csv", index=False)
    table.assign(flagged=False).to_csv(tmp_path / "none.csv", index=False)
    with ReviewStore(tmp_path / "flagged.db") as store:
        assert store.load_label_issues(tmp_path / "three.csv").cases_added == 3
        ids = store.worklist()["scan_id"].tolist()
    assert ids == table["scan_id"].iloc[[1, 4, 6]].tolist()
    none = runner.invoke(app, [*load[:3], str(tmp_path / "none.csv"), *load[4:]])
    assert none.exit_code == 2 and "flagged no scan" in said(none) and "--top N" in said(none)


def test_bad_input_gives_clear_messages(bundle, cross_fitted, example_cohort, tmp_path):
    out, cohort, _, _ = cross_fitted

    # no labelled scans in --split and none unlabelled
    empty = runner.invoke(
        app,
        [
            "label-issues",
            str(bundle),
            str(cohort),
            "-o",
            str(tmp_path / "x.csv"),
            "--split",
            "test",
        ],
    )
    assert empty.exit_code == 2
    assert "no labelled 'test' scans and no unlabelled scans" in said(empty)
    assert "choose --split among ['train', 'val']" in said(empty)
    assert not (tmp_path / "x.csv").exists()

    # the selection split cannot be cross-fitted
    val = runner.invoke(
        app,
        ["label-issues", str(bundle), str(cohort), "-o", str(tmp_path / "v.csv"), "--split", "val"],
    )
    assert val.exit_code == 2 and "selects each fold's model" in said(val)

    # a CSV without a contract column
    broken = tmp_path / "broken.csv"
    pd.read_csv(out).drop(columns="given_label").to_csv(broken, index=False)
    cli = runner.invoke(
        app, ["review", "load", "--label-issues", str(broken), "--store", str(tmp_path / "r.db")]
    )
    assert cli.exit_code == 2
    assert "lacks columns ['given_label']" in said(cli) and "medres label-issues" in said(cli)
    neither = runner.invoke(app, ["review", "load", "--store", str(tmp_path / "r.db")])
    assert neither.exit_code == 2 and "--label-issues" in said(neither)

    # a regression bundle (target: each scan's mean brightness)
    from PIL import Image

    table = Cohort.load(cohort).table.drop(index=15)  # not the truncated scan
    brightness = [float(np.mean(Image.open(f[0]))) / 255 for f in table["files"]]
    regression = Cohort(table.assign(label=brightness), {}).save(tmp_path / "r.parquet")
    trained = runner.invoke(
        app,
        ["train", "--cohort", str(regression), "--epochs", "1", *QUICK, "-o", str(tmp_path / "rb")],
    )
    assert trained.exit_code == 0, trained.output
    reg = runner.invoke(
        app, ["label-issues", str(tmp_path / "rb"), str(regression), "-o", str(tmp_path / "y.csv")]
    )
    assert reg.exit_code == 2 and "regression bundle" in said(reg) and "classifier" in said(reg)
