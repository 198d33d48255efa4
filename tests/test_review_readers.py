"""Several readers per case in the review store: assignment, each reader's worklist, the
adjudication queue, Cohen's kappa between readers and against the model, blinded first
impressions, and opening a version 1 store.

Every store test runs on SQLite and on a real PostgreSQL server (tests/pg_server.py), on
a real ``medres predict`` output (conftest's ``review_run``: a 2-epoch chest X-ray bundle
over 20 test images plus a black one).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score
from sqlalchemy import create_engine, insert, inspect
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from medres.cli import app
from medres.errors import ReviewError
from medres.review import ReviewStore
from medres.review.agreement import kappa_interval
from tests import review_schema_v1 as v1
from tests.pg_server import sql as _sql

runner = CliRunner()
FLIP = {"0": "1", "1": "0"}


def _copy(review_run: Path, where: Path) -> Path:
    """The predict OUTDIR copied elsewhere: another run of the same 21 scans."""
    shutil.copytree(review_run, where)
    return where


def say(store: ReviewStore, case_id: int, reader: str, label: str | None) -> None:
    """``reader`` reads ``case_id`` as class ``label`` (None: uncertain)."""
    predicted = store.case(case_id)["predicted_class"]
    if label is None:
        store.decide(case_id, reader, "uncertain")
    elif label == predicted:
        store.decide(case_id, reader, "agree")
    else:
        store.decide(case_id, reader, "disagree", label)


def test_assignment_is_balanced_deterministic_and_each_reader_sees_their_own(
    review_run, db, tmp_path
):
    with ReviewStore(db) as store:
        run = store.load_run(review_run).run_id
        other = store.load_run(_copy(review_run, tmp_path / "copy")).run_id
        result = store.assign(run, readers=["dr_a", "dr_b", "dr_c"], per_case=2, actor="lead")
        again = store.assign(run, readers="dr_a,dr_b,dr_c", per_case=2)
        ids = sorted(store.worklist(run, status="all")["case_id"].astype(int))
        first_case = ids[0]
        say(store, first_case, "dr_a", "1")
        mine = store.worklist(run, reader="dr_a", status="all")
        mine_pending = store.worklist(run, reader="dr_a")
        mine_done = store.worklist(run, reader="dr_a", status="reviewed")
        theirs = store.worklist(run, reader="dr_b", status="all")
        everyone = store.worklist(run, status="all")
        unassigned_run = store.worklist(other, reader="dr_a", status="all")
        case = store.case(first_case)
        trail = store.audit_log(run_id=run)

    # 21 cases x 2 readers over 3 readers: 14 each; case k gets readers 2k, 2k+1 (mod 3)
    assert (result.cases, result.skipped) == (21, 0)
    assert result.per_reader == {"dr_a": 14, "dr_b": 14, "dr_c": 14}
    assert (again.cases, again.skipped) == (0, 21)  # assigning again changes nothing
    rows = _sql(db, "SELECT case_id, reader FROM assignments ORDER BY case_id, id")
    names = ["dr_a", "dr_b", "dr_c"]
    expected = [(c, names[(2 * k + j) % 3]) for k, c in enumerate(ids) for j in range(2)]
    assert rows == expected
    assert case["readers"] == ["dr_a", "dr_b"]
    assert trail[trail["action"] == "assign"]["actor"].tolist() == ["lead"]

    # a reader's worklist: their 14 cases, in the worklist's order, their own decision
    dr_a_cases = {c for c, r in rows if r == "dr_a"}
    assert set(mine["case_id"]) == dr_a_cases and len(mine) == 14
    order = [c for c in everyone["case_id"] if c in dr_a_cases]
    assert mine["case_id"].tolist() == order and mine["rank"].tolist() == list(range(1, 15))
    assert mine_done["case_id"].tolist() == [first_case]
    assert mine_done["reviewer"][0] == "dr_a" and mine_done["decision"][0] in ("agree", "disagree")
    assert first_case not in set(mine_pending["case_id"]) and len(mine_pending) == 13
    # dr_b shares that case but has not read it: pending for dr_b, no decision shown
    shared = theirs[theirs["case_id"] == first_case]
    assert len(shared) == 1 and shared["decision"].isna().all()
    assert len(everyone) == 21 and everyone["decision"].notna().sum() == 1  # reader=None as before
    assert len(unassigned_run) == 21  # nothing assigned in that run: every case

    # the command line, on the run with nothing assigned yet; and its refusals
    cli = runner.invoke(
        app, ["review", "assign", "--store", str(db), "--readers", "dr_x,dr_y", "--run", str(other)]
    )
    assert cli.exit_code == 0, cli.output
    assert "assigned 21 cases, 2 readers each (dr_x 21, dr_y 21)" in cli.output
    with ReviewStore(db) as store:
        assert len(store.worklist(other, reader="dr_a", status="all")) == 0
        with pytest.raises(ReviewError, match="needs at least 2 readers"):
            store.assign(other, readers=["dr_a"])
        with pytest.raises(ReviewError, match="named twice"):
            store.assign(other, readers=["dr_a", "dr_a"])
        with pytest.raises(ReviewError, match="no case 9999"):
            store.assign(case_ids=[9999], readers=["dr_a", "dr_b"])
        with pytest.raises(ReviewError, match="no run 99 in this review store"):
            store.assign(99, readers=["dr_a", "dr_b"])
    one = runner.invoke(app, ["review", "assign", "--store", str(db), "--readers", "dr_a"])
    assert one.exit_code == 2 and "needs at least 2 readers" in " ".join(one.output.split())


def test_disagreements_wait_for_an_adjudicator_whose_label_the_export_uses(
    review_run, db, tmp_path
):
    with ReviewStore(db) as store:
        run = store.load_run(review_run).run_id
        store.assign(run, readers=["dr_a", "dr_b"])
        work = store.worklist(run, status="all")
        ids = dict(zip(work["scan_id"], work["case_id"].astype(int), strict=True))
        shown = dict(zip(work["scan_id"], work["predicted_class"], strict=True))
        same, differ, unsure, half = sorted(s for s in ids if s != "zz_black.png")[:4]
        say(store, ids[same], "dr_a", shown[same])
        say(store, ids[same], "dr_b", shown[same])
        say(store, ids[differ], "dr_a", shown[differ])
        store.decide(ids[differ], "dr_b", "disagree", FLIP[shown[differ]], notes="see apex")
        say(store, ids[unsure], "dr_a", shown[unsure])
        say(store, ids[unsure], "dr_b", None)
        say(store, ids[half], "dr_a", FLIP[shown[half]])
        queue = store.adjudication_queue(run)

        with pytest.raises(ReviewError, match="dr_a is one of the readers of case"):
            store.adjudicate(ids[differ], "dr_a", "agree")
        with pytest.raises(ReviewError, match="not waiting for adjudication"):
            store.adjudicate(ids[same], "dr_c", "agree")
        with pytest.raises(ReviewError, match="not waiting for adjudication"):
            store.adjudicate(ids[half], "dr_c", "agree")  # dr_b has not read it yet
        final = store.adjudicate(
            ids[differ], "dr_c", "disagree", FLIP[shown[differ]], notes="apical opacity"
        )
        say(store, ids[differ], "dr_a", shown[differ])  # a reader's later word changes nothing
        after = store.adjudication_queue(run)
        case = store.case(ids[differ])
        trail = store.audit_log(case_id=ids[differ])
        csv = tmp_path / "labels.csv"
        exported = store.export_labels(csv, actor="dr_c").set_index("scan_id")

    assert queue["case_id"].tolist() == [
        c for c in work["case_id"] if c in (ids[differ], ids[unsure])
    ]
    row = queue.set_index("scan_id").loc[differ]
    assert row["readers"] == ["dr_a", "dr_b"]
    readings = {r["reviewer"]: r for r in row["readings"]}
    assert readings["dr_a"]["label"] == shown[differ]
    assert readings["dr_b"]["label"] == FLIP[shown[differ]]
    assert readings["dr_b"]["notes"] == "see apex"
    assert {r["label"] for r in queue.set_index("scan_id").loc[unsure, "readings"]} == {
        shown[unsure],
        None,
    }

    assert after["case_id"].tolist() == [ids[unsure]]  # adjudicated: out of the queue
    assert case["decision"]["decision_id"] == final and case["decision"]["kind"] == "adjudication"
    assert case["decision"]["reviewer"] == "dr_c"
    assert trail["action"].tolist() == ["decide", "decide", "adjudicate", "decide"]
    # the export: the adjudicated label; the disputed case left out until adjudicated
    assert exported.loc[differ, "label"] == FLIP[shown[differ]]
    assert exported.loc[differ, "reviewer"] == "dr_c"
    assert unsure not in exported.index
    assert exported.loc[same, "label"] == shown[same]
    assert exported.loc[half, "label"] == FLIP[shown[half]]  # one reader so far: their label
    assert (
        pd.read_csv(csv, dtype=str).set_index("scan_id").loc[differ, "label"] == FLIP[shown[differ]]
    )


def test_kappa_of_a_textbook_table_and_its_bootstrap_interval():
    # Wikipedia's "Cohen's kappa" example: 50 proposals, both yes 20, A yes B no 5,
    # A no B yes 10, both no 15: p_o = 0.7, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5, kappa 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    kappa, low, high = kappa_interval(a, b, n_boot=2000, seed=0)
    assert kappa == pytest.approx(0.4)
    assert 0.1 < low < 0.4 < high < 0.7
    assert kappa_interval(a, b, seed=0) == (kappa, low, high)  # the seed fixes the interval
    assert kappa_interval(a, b, seed=1)[1:] != (low, high)
    # perfect agreement is 1; one label given to every case leaves kappa undefined
    assert kappa_interval(a, a)[0] == pytest.approx(1.0)
    assert all(pd.isna(v) for v in kappa_interval(["yes"] * 5, ["yes"] * 5))
    # uncertain (None) is a category of its own
    assert kappa_interval(["yes", None, "no", None], ["yes", None, "no", None])[0] == 1.0


def test_store_kappa_between_readers_and_against_the_model(review_run, db):
    # 20 cases read by both: both "1" 8, A "1" B "0" 2, A "0" B "1" 2, both "0" 8:
    # p_o = 16/20 = 0.8, p_e = 0.5 * 0.5 + 0.5 * 0.5 = 0.5, kappa = 0.3 / 0.5 = 0.6
    table = [("1", "1")] * 8 + [("1", "0")] * 2 + [("0", "1")] * 2 + [("0", "0")] * 8
    with ReviewStore(db) as store:
        run = store.load_run(review_run).run_id
        work = store.worklist(run, status="all")
        work = work[work["scan_id"] != "zz_black.png"]
        for case_id, (label_a, label_b) in zip(work["case_id"], table, strict=True):
            say(store, int(case_id), "dr_a", label_a)
            say(store, int(case_id), "dr_b", label_b)
        say(store, int(work["case_id"].iloc[0]), "dr_c", "1")  # one case only
        result = store.agreement(run)
        again = store.agreement(run)

    pairs = result.pairs.set_index(["reader_a", "reader_b"])
    ab = pairs.loc[("dr_a", "dr_b")]
    assert ab["n"] == 20 and ab["kappa"] == pytest.approx(0.6)
    assert ab["low"] < 0.6 < ab["high"]
    assert pairs.loc[("dr_a", "dr_c"), "n"] == 1
    pd.testing.assert_frame_equal(result.pairs, again.pairs)  # fixed seed: the same interval
    # each reader against the model: as scikit-learn computes it on the same labels
    model = result.model.set_index("reviewer")
    for reader, column in (("dr_a", 0), ("dr_b", 1)):
        labels = [pair[column] for pair in table]
        expected = cohen_kappa_score(labels, work["predicted_class"].tolist())
        assert model.loc[reader, "n"] == 20
        assert model.loc[reader, "kappa"] == pytest.approx(expected)
        assert model.loc[reader, "low"] <= expected <= model.loc[reader, "high"]


def test_a_blinded_run_keeps_first_impressions_and_counts_mind_changes(review_run, db, tmp_path):
    with ReviewStore(db) as store:
        run = store.load_run(review_run, blinded=True).run_id
        work = store.worklist(run, status="all")
        cases = [int(c) for c in work["case_id"][:4]]
        shown = dict(zip(work["case_id"].astype(int), work["predicted_class"], strict=True))
        first = cases[0]
        with pytest.raises(ReviewError, match="blinded run: record your first impression"):
            store.decide(first, "dr_a", "agree")
        assert store.impression(first, "dr_a") is None
        impression_id = store.first_impression(first, "dr_a", "label", shown[first], "looks clear")
        with pytest.raises(ReviewError, match=r"recorded a first impression of case \d+ already"):
            store.first_impression(first, "dr_a", "label", FLIP[shown[first]])
        with pytest.raises(ReviewError, match="the class you see"):
            store.first_impression(cases[1], "dr_a", "label", "7")
        with pytest.raises(ReviewError, match="first impression is label or uncertain"):
            store.first_impression(cases[1], "dr_a", "agree")
        say(store, first, "dr_a", shown[first])  # the same as the first impression
        # changes: to the model's class, and from uncertain to a class; one kept the same
        store.first_impression(cases[1], "dr_a", "label", FLIP[shown[cases[1]]])
        say(store, cases[1], "dr_a", shown[cases[1]])
        store.first_impression(cases[2], "dr_a", "uncertain")
        say(store, cases[2], "dr_a", FLIP[shown[cases[2]]])
        store.first_impression(cases[3], "dr_b", "label", FLIP[shown[cases[3]]])
        say(store, cases[3], "dr_b", FLIP[shown[cases[3]]])
        store.first_impression(cases[0], "dr_b", "uncertain")  # no decision yet: not counted
        kept = store.impression(first, "dr_a")
        changes = store.mind_changes(run).set_index("reviewer")
        case = store.case(first)
        history = store.history(first)
        trail = store.audit_log(case_id=first)
        with pytest.raises(ReviewError, match="blinded=True"):
            store.load_run(review_run)  # loaded blinded: it stays so
        open_run = store.load_run(_copy(review_run, tmp_path / "open")).run_id
        open_case = int(store.worklist(open_run)["case_id"][0])
        with pytest.raises(ReviewError, match="not in a blinded run"):
            store.first_impression(open_case, "dr_a", "uncertain")
        runs = store.runs()

    assert kept["impression_id"] == impression_id and kept["label"] == shown[first]
    assert (kept["decision"], kept["notes"]) == ("label", "looks clear")
    assert case["blinded"] and runs.set_index("id").loc[run, "blinded"]
    assert not runs.set_index("id").loc[open_run, "blinded"]
    assert [h["decision"] for h in history] == ["agree"]  # the impression is kept apart
    assert trail["action"].tolist() == ["first_impression", "decide", "first_impression"]
    assert changes.loc["dr_a", "cases"] == 3 and changes.loc["dr_a", "changed"] == 2
    assert changes.loc["dr_a", "rate"] == pytest.approx(2 / 3)
    assert changes.loc["dr_a", "to_model"] == 1  # the first change only
    assert changes.loc["dr_b"].tolist() == [1, 0, 0.0, 0]
    with pytest.raises(DBAPIError, match="append-only"):
        _sql(db, "UPDATE impressions SET label = NULL")

    # the command line loads a run blinded
    blinded = _copy(review_run, tmp_path / "study")
    cli = runner.invoke(app, ["review", "load", str(blinded), "--store", str(db), "--blinded"])
    assert cli.exit_code == 0 and "blinded" in cli.output, cli.output
    with ReviewStore(db) as store:
        assert store.runs()["blinded"].tolist() == [True, False, True]


def _version_1_store(db: Path | str) -> str:
    """A store as medres wrote it at schema version 1: its tables, one run, two cases,
    a decision on the first; returns its URL."""
    url = f"sqlite:///{db}" if isinstance(db, Path) else db
    engine = create_engine(url)
    case = {
        "path": "/scans/a.png",
        "input_hash": "0" * 64,
        "bundle_id": "b1",
        "predicted_class": "1",
        "probabilities": {"0": 0.2, "1": 0.8},
        "conformal_set": ["1"],
        "set_size": 1,
        "uncertainty": 0.2,
        "ood": False,
        "refer": False,
        "refer_reason": "",
        "priority_tier": 2,
        "priority_score": 0.2,
    }
    with engine.begin() as conn:
        v1.metadata.create_all(conn)
        conn.execute(insert(v1.settings).values(name="schema_version", value="1"))
        conn.execute(insert(v1.settings).values(name="patient_id_salt", value="ab" * 16))
        conn.execute(
            insert(v1.runs).values(
                run_key="k" * 64,
                bundle_id="b1",
                bundle_checksum="c" * 64,
                outdir="/out",
                classes=["0", "1"],
                show_patient_ids=False,
                loaded_at="2026-11-22T19:41:14.123456+00:00",
                loaded_by="lead",
                summary={},
            )
        )
        conn.execute(insert(v1.cases), [{**case, "run_id": 1, "scan_id": s} for s in "ab"])
        conn.execute(
            insert(v1.decisions).values(
                case_id=1,
                reviewer="dr_old",
                decision="agree",
                notes="",
                decided_at="2026-11-22T19:42:00.000000+00:00",
                bundle_id="b1",
            )
        )
    engine.dispose()
    return url


def test_a_version_1_store_opens_and_is_migrated_in_place(db):
    url = _version_1_store(db)
    with ReviewStore(db) as store:
        history = store.history(1)
        case = store.case(1)
        store.assign(1, readers=["dr_a", "dr_b"])
        store.decide(2, "dr_a", "disagree", "0")
        store.decide(2, "dr_b", "agree")
        queue = store.adjudication_queue()
        runs = store.runs()
    assert _sql(db, "SELECT value FROM settings WHERE name = 'schema_version'") == [("2",)]
    engine = create_engine(url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"assignments", "impressions"} <= tables
    assert [(h["reviewer"], h["kind"], h["current"]) for h in history] == [
        ("dr_old", "reading", True)
    ]
    assert case["blinded"] is False and runs["blinded"].tolist() == [False]
    assert queue["case_id"].tolist() == [2]
    with ReviewStore(db) as store:  # opening it again changes nothing
        assert len(store.history(1)) == 1
    with pytest.raises(DBAPIError, match="append-only"):
        _sql(db, "DELETE FROM decisions")
    # a store from a later medres is refused, naming the versions this one reads
    _sql(db, "UPDATE settings SET value = '3' WHERE name = 'schema_version'")
    with pytest.raises(ReviewError, match=r"format version '3'.*reads format version 1, 2"):
        ReviewStore(db)
