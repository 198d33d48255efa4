"""The review store: loading predict runs, worklist order, decisions, audit, export, users.

Every test works on a real ``medres predict`` output: a 2-epoch chest X-ray bundle over
20 test images plus one of them zero-filled (a black image the bundle flags OOD).
"""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from medres.cli import app
from medres.errors import ReviewError
from medres.review import ReviewStore, add_user, verify
from tests.pg_server import sql as _sql

runner = CliRunner()
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "chest_xray_small"


@pytest.fixture
def predicted(review_run) -> Path:
    """A finished ``medres predict --explain`` OUTDIR over 20 chest X-rays + 1 black one
    (conftest's ``review_run``: read only)."""
    return review_run


def _rows(db: Path | str, table: str) -> int:
    return _sql(db, f"SELECT count(*) FROM {table}")[0][0]


def _predictions(outdir: Path) -> pd.DataFrame:
    return pd.read_parquet(outdir / "predictions.parquet").set_index("scan_id")


def test_loading_the_same_outdir_twice_changes_nothing(predicted, db):
    with ReviewStore(db) as store:
        first = store.load_run(predicted)
        counts = {t: _rows(db, t) for t in ("runs", "cases", "decisions", "audit")}
        again = store.load_run(predicted)
        assert store.runs()["cases"].tolist() == [21]
    assert first.new and first.cases_added == 21
    assert (again.run_id, again.new, again.cases_added) == (first.run_id, False, 0)
    assert {t: _rows(db, t) for t in counts} == counts
    assert counts == {"runs": 1, "cases": 21, "decisions": 0, "audit": 1}
    if isinstance(db, Path):  # SQLite in WAL mode, as a reviewer's concurrent writes need
        assert _sql(db, "PRAGMA journal_mode")[0][0] == "wal"

    # the command line says so too, and refuses a folder that is not a predict output
    cli = runner.invoke(app, ["review", "load", str(predicted), "--store", str(db)])
    assert cli.exit_code == 0 and "nothing changed" in cli.output, cli.output
    scans = predicted.parent / "scans"
    bad = runner.invoke(app, ["review", "load", str(scans), "--store", str(db)])
    assert bad.exit_code == 2
    assert "not a finished `medres predict` output" in " ".join(bad.output.split())
    assert _rows(db, "cases") == 21


def test_worklist_puts_ood_first_then_multiclass_sets_then_the_most_uncertain(predicted, db):
    rows = _predictions(predicted)
    assert rows.loc["zz_black.png", "ood"], "the bundle should flag the black image as OOD"
    with ReviewStore(db) as store:
        run = store.load_run(predicted, site="St Elsewhere").run_id
        work = store.worklist(run)
        ood_only = store.worklist(run, reason="out of distribution")
        other_site = store.worklist(run, site="Elsewhere General")
        by_class = {c: store.worklist(run, predicted_class=c) for c in ("0", "1")}

    assert work["rank"].tolist() == list(range(1, 22)) and len(work) == len(rows)
    ood = work[work["ood"]]
    assert ood["scan_id"].tolist()[0] == "zz_black.png"
    assert work["ood"].tolist() == [True] * len(ood) + [False] * (len(work) - len(ood))
    assert ood["ood_score"].is_monotonic_decreasing
    rest = work[~work["ood"]]
    multi = rest["set_size"] > 1
    assert multi.any(), "the 2-epoch bundle gives some two-class conformal sets"
    assert multi.tolist() == sorted(multi.tolist(), reverse=True)  # sets > 1 before the rest
    for block in (rest[multi], rest[~multi]):
        assert block["uncertainty"].is_monotonic_decreasing
    expected = 1 - rows.loc[work["scan_id"], "max_prob"].to_numpy()
    assert np.allclose(work["uncertainty"], expected)

    assert ood_only["scan_id"].tolist() == ood["scan_id"].tolist()
    assert (work["site"] == "St Elsewhere").all() and other_site.empty
    assert sum(len(t) for t in by_class.values()) == 21
    assert all((t["predicted_class"] == c).all() for c, t in by_class.items())
    with ReviewStore(db) as store:
        case = store.case(work["case_id"][0])
    assert Path(case["heatmap"]).is_absolute() and Path(case["heatmap"]).is_file()
    assert case["classes"] == ["0", "1"] and set(case["probabilities"]) == {"0", "1"}


def test_decisions_keep_their_history_newest_first_with_an_audit_row_each(predicted, db):
    with ReviewStore(db) as store:
        run = store.load_run(predicted).run_id
        case = int(store.worklist(run)["case_id"][0])
        predicted_class = store.case(case)["predicted_class"]
        other = "0" if predicted_class == "1" else "1"
        first = store.decide(case, "dr_lee", "disagree", other, notes="consolidation?")
        second = store.decide(case, "dr_okafor", "agree")
        history = store.history(case)
        current = store.case(case)["decision"]
        reviewed = store.worklist(run, status="reviewed")
        pending = store.worklist(run, status="pending")
        trail = store.audit_log(case_id=case)

    assert [h["decision_id"] for h in history] == [second, first]
    assert [h["reviewer"] for h in history] == ["dr_okafor", "dr_lee"]
    assert [h["current"] for h in history] == [True, False]
    assert history[1]["corrected_label"] == other and history[1]["notes"] == "consolidation?"
    assert current["decision_id"] == second and current["decision"] == "agree"
    assert reviewed["case_id"].tolist() == [case] and reviewed["reviewer"][0] == "dr_okafor"
    assert case not in pending["case_id"].tolist() and len(pending) == 20
    assert trail["action"].tolist() == ["decide", "decide"]
    assert trail["actor"].tolist() == ["dr_lee", "dr_okafor"]
    assert [d["decision_id"] for d in trail["details"]] == [first, second]


def test_bad_decisions_are_refused_and_write_nothing(predicted, db):
    with ReviewStore(db) as store:
        case = int(store.worklist(store.load_run(predicted).run_id)["case_id"][0])
        refusals = {
            "needs the corrected label": lambda: store.decide(case, "dr_lee", "disagree"),
            "not one of this run's classes": lambda: store.decide(case, "dr_lee", "disagree", "2"),
            "no case 9999": lambda: store.decide(9999, "dr_lee", "agree"),
            "decision must be one of": lambda: store.decide(case, "dr_lee", "maybe"),
            "reviewer's name": lambda: store.decide(case, " ", "agree"),
        }
        for words, call in refusals.items():
            with pytest.raises(ReviewError, match=words):
                call()
        with pytest.raises(ReviewError, match="no case 9999"):
            store.history(9999)
    assert _rows(db, "decisions") == 0 and _rows(db, "audit") == 1  # the load only


def test_a_decision_and_its_audit_row_commit_together_and_audit_is_append_only(
    predicted, db, monkeypatch
):
    with ReviewStore(db) as store:
        case = int(store.worklist(store.load_run(predicted).run_id)["case_id"][0])
        store.decide(case, "dr_lee", "agree")

        def audit_fails(conn, actor, action, **row):
            raise OSError("disk full while writing the audit row")

        monkeypatch.setattr("medres.review.store_write.append_audit", audit_fails)
        with pytest.raises(OSError, match="disk full"):
            store.decide(case, "dr_okafor", "uncertain")
    assert _rows(db, "decisions") == 1 and _rows(db, "audit") == 2  # load + first decision
    for sql in ("UPDATE audit SET actor = 'someone else'", "DELETE FROM decisions"):
        with pytest.raises(DBAPIError, match="append-only"):
            _sql(db, sql)


def _decide_many(db: str, reviewer: str, case_ids: list[int], n: int, barrier) -> None:
    """One reviewer process: its own store, ``n`` decisions round-robin over cases."""
    store = ReviewStore(db)
    barrier.wait(timeout=120)
    for k in range(n):
        store.decide(case_ids[k % len(case_ids)], reviewer, "agree", notes=f"{reviewer} {k}")
    store.close()


def test_four_processes_deciding_at_once_lose_nothing(predicted, db):
    with ReviewStore(db) as store:
        case_ids = store.worklist(store.load_run(predicted).run_id)["case_id"].tolist()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(5)
    workers = [
        ctx.Process(target=_decide_many, args=(str(db), f"dr_{i}", case_ids, 50, barrier))
        for i in range(4)
    ]
    for w in workers:
        w.start()
    barrier.wait(timeout=120)  # all four start deciding at the same moment
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    per_reviewer = dict(_sql(db, "SELECT reviewer, count(*) FROM decisions GROUP BY reviewer"))
    audited = _sql(db, "SELECT count(*) FROM audit WHERE action = 'decide'")[0][0]
    assert per_reviewer == {f"dr_{i}": 50 for i in range(4)}
    assert audited == 200


def test_export_is_a_labels_csv_that_ingest_joins_latest_decision_only(predicted, db, tmp_path):
    from medres.cohort import build_cohort

    with ReviewStore(db) as store:
        work = store.worklist(store.load_run(predicted).run_id)
        ids = dict(zip(work["scan_id"], work["case_id"].astype(int), strict=True))
        shown = dict(zip(work["scan_id"], work["predicted_class"], strict=True))
        a, b, c, d, e = sorted(s for s in ids if s != "zz_black.png")[:5]
        flip = {"0": "1", "1": "0"}
        store.decide(ids[a], "dr_lee", "agree")
        store.decide(ids[b], "dr_lee", "disagree", flip[shown[b]])
        store.decide(ids[c], "dr_lee", "uncertain")
        store.decide(ids[d], "dr_lee", "disagree", flip[shown[d]])
        store.decide(ids[d], "dr_okafor", "agree")  # the latest decision counts
        store.decide(ids[e], "dr_lee", "agree")
        store.decide(ids[e], "dr_okafor", "uncertain")  # now uncertain: left out
        stats = store.stats()
    csv = tmp_path / "reviewed.csv"
    cli = runner.invoke(app, ["review", "export", "--store", str(db), "-o", str(csv)])
    assert cli.exit_code == 0, cli.output

    exported = pd.read_csv(csv, dtype=str)
    for column in ("path", "label", "reviewer", "decided_at", "decision", "scan_id"):
        assert column in exported.columns
    assert sorted(exported["scan_id"]) == [a, b, d]
    got = exported.set_index("scan_id")
    assert got.loc[d, "reviewer"] == "dr_okafor" and got.loc[d, "decision"] == "agree"
    assert pd.Timestamp(got.loc[d, "decided_at"]).tzname() == "UTC"

    cohort, report = build_cohort(predicted.parent / "scans", labels=csv)
    assert report.label_key == "path" and report.unmatched_labels == []
    table = cohort.table.set_index("scan_id")
    labels = table["label"].dropna().astype(str).to_dict()
    assert labels == {a: shown[a], b: flip[shown[b]], d: shown[d]}
    assert table.loc[b, "reviewer"] == "dr_lee"

    assert (stats["reviewed"], stats["agree"], stats["disagree"], stats["uncertain"]) == (
        5,
        2,
        1,
        2,
    )
    assert stats["agreement_rate"] == pytest.approx(2 / 3) and stats["pending"] == 16
    assert stats["per_class"]["reviewed"].sum() == 5
    with pytest.raises(ReviewError, match="load a run first"):
        ReviewStore(tmp_path / "missing.db", create=False)


def test_users_file_checks_passwords_and_holds_no_plaintext(tmp_path):
    users = tmp_path / "users.json"
    assert add_user(users, "dr_lee", "correct horse battery")
    assert add_user(users, "dr_okafor", "correct horse battery")
    assert verify(users, "dr_lee", "correct horse battery")
    assert not verify(users, "dr_lee", "correct horse battery ")
    assert not verify(users, "dr_lee", "")
    assert not verify(users, "dr_nobody", "correct horse battery")
    assert not verify(tmp_path / "absent.json", "dr_lee", "correct horse battery")
    text = users.read_text()
    assert "correct horse" not in text and "battery" not in text
    assert text.count('"salt"') == 2 and len(set(text.split('"hash": ')[1:])) == 2
    with pytest.raises(ReviewError, match="password is empty"):
        add_user(users, "dr_new", "")
    assert not verify(users, "dr_new", "")

    # the command line reads the password from stdin; the file sits beside the store
    store = tmp_path / "clinic" / "review.db"
    cli = runner.invoke(
        app,
        ["review", "add-user", "dr_chen", "--store", str(store), "--password-stdin"],
        input="s3cret pass\n",
    )
    assert cli.exit_code == 0, cli.output
    beside = store.parent / "review_users.json"
    assert verify(beside, "dr_chen", "s3cret pass") and not verify(beside, "dr_chen", "s3cret")
    assert "s3cret" not in beside.read_text()
    (tmp_path / "broken.json").write_text("{not json")
    assert not verify(tmp_path / "broken.json", "dr_lee", "x")


def test_patient_ids_are_pseudonymised_unless_asked(predicted, tmp_path):
    copies = {}
    for name in ("pseudonymised", "shown", "again"):
        copies[name] = tmp_path / name
        shutil.copytree(predicted, copies[name])
        table = pd.read_parquet(copies[name] / "predictions.parquet")
        table["patient_id"] = [f"PAT-{k // 2:04d}" for k in range(len(table))]  # 2 scans each
        table.to_parquet(copies[name] / "predictions.parquet", index=False)
    db = tmp_path / "review.db"
    with ReviewStore(db) as store:
        hidden = store.worklist(store.load_run(copies["pseudonymised"]).run_id)
        with pytest.raises(ReviewError, match="show_patient_ids"):
            store.load_run(copies["pseudonymised"], show_patient_ids=True)
    with ReviewStore(db) as reopened:  # the salt is kept in the store
        again = reopened.worklist(reopened.load_run(copies["again"]).run_id)
    with ReviewStore(tmp_path / "shown.db") as store:
        shown = store.worklist(store.load_run(copies["shown"], show_patient_ids=True).run_id)

    assert hidden["patient_id"].str.fullmatch(r"anon-[0-9a-f]{16}").all()
    assert hidden["patient_id"].nunique() == shown["patient_id"].nunique() == 11

    def groups(t):  # the scans of each patient, whatever the patient is called
        return sorted(tuple(sorted(g)) for _, g in t.groupby("patient_id")["scan_id"])

    assert groups(hidden) == groups(shown)
    assert sorted(again["patient_id"]) == sorted(hidden["patient_id"])
    assert shown["patient_id"].str.startswith("PAT-").all()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("review.db*"))
    assert b"anon-" in stored and b"PAT-" not in stored  # no raw id anywhere in the files


def test_review_verbs_have_help_with_an_example():
    for verb in ("load", "assign", "add-user", "export", "serve"):
        result = runner.invoke(app, ["review", verb, "--help"])
        assert result.exit_code == 0 and "Example" in result.output, verb
