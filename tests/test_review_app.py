"""The Streamlit review app (app/), driven with streamlit.testing.v1.AppTest.

The store holds a real ``medres predict --explain`` run (a 2-epoch chest X-ray bundle
over 20 shipped test images plus a zero-filled one the bundle flags out of
distribution); each test loads it into its own store and signs in as a real account.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from medres.review import ReviewStore, add_user
from medres.review.schema import DECISIONS
from medres.review.ui import CASE_PAGE, EXPORT_PAGE, STORE_ENV, USERS_ENV, WORKLIST_PAGE

APP = Path(__file__).resolve().parents[1] / "app"
PASSWORD = "correct horse battery"
TIMEOUT = 60  # seconds per script run: the first one imports pandas, PIL, nibabel


@pytest.fixture
def store(review_run, tmp_path, monkeypatch) -> ReviewStore:
    """A fresh store with the run loaded (site "St Elsewhere"), one reviewer account
    dr_lee, and the app pointed at both."""
    db = tmp_path / "review.db"
    users = tmp_path / "users.json"
    add_user(users, "dr_lee", PASSWORD)
    monkeypatch.setenv(STORE_ENV, str(db))
    monkeypatch.setenv(USERS_ENV, str(users))
    with ReviewStore(db) as review:
        review.load_run(review_run, site="St Elsewhere")
        yield review


def start(name: str = "dr_lee", password: str = PASSWORD) -> AppTest:
    """The app from its entry script, after submitting the sign-in form."""
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=TIMEOUT).run()
    at.text_input(key="sign_in_name").input(name)
    at.text_input(key="sign_in_password").input(password)
    return at.button(key="sign_in_submit").click().run()


def shown(at: AppTest) -> str:
    """Every text and table the run rendered, as one string."""
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "text", "metric"):
        parts += [str(getattr(e, "value", "")) + str(getattr(e, "label", "")) for e in at.get(kind)]
    for kind in ("error", "warning", "info", "success"):
        parts += [e.value for e in at.get(kind)]
    parts += [frame.value.to_csv() for frame in at.dataframe]
    return "\n".join(parts)


def worklist_table(at: AppTest) -> pd.DataFrame:
    return next(f.value for f in at.dataframe if "rank" in f.value.columns)


def test_no_case_data_without_a_valid_sign_in(store):
    scan_ids = store.worklist(status="all")["scan_id"].tolist()
    for name, password in (("dr_lee", "wrong password"), ("dr_nobody", PASSWORD)):
        at = start(name, password)
        assert not at.exception
        assert [e.value for e in at.error] == ["Wrong reviewer name or password."]
        assert "reviewer" not in at.session_state
        text = shown(at)
        assert not any(s in text for s in scan_ids) and not at.get("image")
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page(CASE_PAGE)  # not even navigable before sign-in

    # a page file opened on its own stops at the sign-in notice
    for page in ("worklist", "case", "dashboard", "export"):
        at = AppTest.from_file(str(APP / "views" / f"{page}.py"), default_timeout=TIMEOUT).run()
        assert not at.exception, page
        assert [w.value for w in at.warning] == ["Sign in to see the worklist and the cases."]
        text = shown(at)
        assert not any(s in text for s in scan_ids) and not at.dataframe, page
        assert not at.get("image") and "anon-" not in text, page


def test_sign_ins_are_audited_and_a_name_locks_after_five_failures(store, tmp_path):
    from medres.review.sign_ins import LOCK, locked_until

    for _ in range(5):
        assert [e.value for e in start("dr_lee", "guess").error] == [
            "Wrong reviewer name or password."
        ]
    sixth = start("dr_lee", PASSWORD)  # the right password, refused for a while
    assert "reviewer" not in sixth.session_state
    assert "Too many failed sign-ins for this name: try again in 15 minute(s)" in (
        sixth.error[0].value
    )
    trail = store.audit_log()
    attempts = trail[trail["actor"] == "dr_lee"]["action"].tolist()
    assert sorted(attempts) == ["sign_in_failed"] * 5 + ["sign_in_locked"]  # each one a row
    until = locked_until(store, "dr_lee")
    assert until is not None and locked_until(store, "dr_lee", at=until + LOCK) is None
    # the store and the users file are the owner's only
    for path in (tmp_path / "review.db", tmp_path / "users.json"):
        assert oct(path.stat().st_mode & 0o777) == "0o600", path


def test_worklist_shows_the_most_urgent_cases_first_with_counts(store):
    at = start()
    assert not at.exception and at.session_state["reviewer"] == "dr_lee"
    table = worklist_table(at)
    expected = store.worklist()
    assert table["scan_id"].tolist() == expected["scan_id"].tolist()
    assert table["scan_id"].iloc[0] == "zz_black.png"  # out of distribution: first
    assert table["rank"].tolist() == list(range(1, 22))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["In this list"] == "21" and metrics["Pending"] == "21"
    assert metrics["Reviewed"] == "0"
    assert "Signed in as **dr\\_lee**" in [c.value for c in at.sidebar.caption]
    # nothing is decided yet: no empty decision columns; the pending cases per reason
    assert {"decision", "reviewer", "corrected_label"}.isdisjoint(table.columns)
    reasons = next(f.value for f in at.dataframe if "Why it is here" in f.value.columns)
    ood = reasons.set_index("Why it is here").loc["out of distribution", "Pending"]
    assert ood == len(store.worklist(reason="out of distribution")) >= 1


def test_worklist_filters_by_status_class_site_and_reason(store):
    work = store.worklist()
    reviewed_case = int(work["case_id"].iloc[3])
    store.decide(reviewed_case, "dr_okafor", "agree")
    at = start()

    at.radio(key="wl_status").set_value("reviewed").run()
    assert [e.value for e in at.success] == ["No case matches these filters."]  # not mine
    at.radio(key="wl_whose").set_value("everyone").run()  # another reader decided it
    assert worklist_table(at)["case_id"].tolist() == [reviewed_case]
    assert worklist_table(at)["reviewer"].tolist() == ["dr_okafor"]
    at.radio(key="wl_status").set_value("pending").run()
    assert len(worklist_table(at)) == 20

    counts = work["predicted_class"].value_counts()
    cls = counts.index[0]
    at.selectbox(key="wl_class").set_value(cls).run()
    table = worklist_table(at)
    expected = store.worklist(predicted_class=cls)["case_id"].tolist()
    assert table["case_id"].tolist() == expected
    assert len(table) == counts[cls] - (work["predicted_class"].iloc[3] == cls)
    # the table says why a case is here, not what the model said
    assert {"predicted_class", "confidence", "conformal_set"}.isdisjoint(table.columns)
    # the filters stay while the reader opens a case and comes back
    at.switch_page(CASE_PAGE).run()
    at.switch_page(WORKLIST_PAGE).run()
    assert at.selectbox(key="wl_class").value == cls
    assert worklist_table(at)["case_id"].tolist() == expected
    at.selectbox(key="wl_class").set_value("(any)").run()

    assert at.selectbox(key="wl_site").options == ["(any)", "St Elsewhere"]
    at.selectbox(key="wl_site").set_value("St Elsewhere").run()
    assert len(worklist_table(at)) == 20

    at.selectbox(key="wl_reason").set_value("out of distribution").run()
    table = worklist_table(at)
    assert "zz_black.png" in table["scan_id"].tolist()
    assert table["refer_reason"].str.contains("out of distribution").all()
    assert (
        table["scan_id"].tolist()
        == store.worklist(reason="out of distribution")["scan_id"].tolist()
    )


def test_decision_flow_saves_shows_history_and_audits(store):
    at = start()
    at.button(key="wl_next").click().run()  # the first case of the worklist
    assert not at.exception
    first = store.worklist()
    case_id = int(first["case_id"].iloc[0])
    assert at.title[0].value == "Case zz\\_black\\.png" and at.session_state["case_id"] == case_id
    assert at.query_params["case"] == str(case_id)  # a reload or a bookmark comes back
    predicted_class = first["predicted_class"].iloc[0]
    other = "0" if predicted_class == "1" else "1"
    key = f"case{case_id}"

    # the scan first: the model's output and the decision wait to be asked for (M)
    assert not [h for h in at.subheader if h.value.startswith("Model says")]
    assert not [b for b in at.button if b.key in (f"{key}_agree", f"{key}_disagree")]
    assert at.button(key=f"{key}_show").proto.shortcut.lower() == "m"
    at.button(key=f"{key}_show").click().run()
    assert [h.value for h in at.subheader if h.value.startswith("Model says")]
    # an out-of-distribution case: its badge, its probabilities called unreliable, not shown
    assert any("Out of distribution" in m.value for m in at.markdown)
    assert any("not reliable" in w.value for w in at.warning)
    assert not [m for m in at.markdown if "Calibrated confidence" in m.value]
    # nothing is chosen for the reader: notes committed (Ctrl+Enter) save nothing
    at.text_area(key=f"{key}_notes").input("no decision chosen yet").run()
    assert not at.exception and store.history(case_id) == []
    keys = {at.button(key=f"{key}_{d}").proto.shortcut.lower(): d for d in DECISIONS}
    assert keys == {"a": "agree", "d": "disagree", "u": "uncertain"}

    at.text_area(key=f"{key}_notes").input("no lung fields: blank export")
    at.button(key=f"{key}_disagree").click().run()  # D: saves, opens the next case
    assert not at.exception and not at.error
    # save and next: the worklist's second case opens, saying what was saved
    second = int(first["case_id"].iloc[1])
    assert at.session_state["case_id"] == second
    assert at.success[0].value == f"Saved: disagree → {other} by dr\\_lee. Next case:"
    at.button(key="case_previous").click().run()  # P: back to the case just decided
    assert at.session_state["case_id"] == case_id
    history = next(f.value for f in at.dataframe if "decided_at" in f.value.columns)
    assert history[["reviewer", "decision", "corrected_label", "current"]].values.tolist() == [
        ["dr_lee", "disagree", other, True]
    ]
    at.button(key="case_next").click().run()  # N (skip): the next case, nothing decided
    assert at.session_state["case_id"] == second and store.history(second) == []
    saved = store.history(case_id)
    assert [(h["reviewer"], h["decision"], h["corrected_label"]) for h in saved] == [
        ("dr_lee", "disagree", other)
    ]
    assert saved[0]["notes"] == "no lung fields: blank export"
    trail = store.audit_log(case_id=case_id)
    assert trail[["actor", "action"]].values.tolist() == [["dr_lee", "decide"]]

    # back on the worklist the case is no longer pending
    at.switch_page(WORKLIST_PAGE).run()
    assert case_id not in worklist_table(at)["case_id"].tolist()
    assert {m.label: m.value for m in at.metric}["Reviewed"] == "1"


def test_window_level_preset_and_manual_sliders(store):
    at = start()
    at.button(key="wl_next").click().run()
    key = f"case{at.session_state['case_id']}"
    preset = at.selectbox(key=f"{key}_preset")
    assert preset.value.startswith("auto")  # a radiograph: percentile auto-window
    at.slider(key=f"{key}_level").set_value(at.slider(key=f"{key}_level").value + 10).run()
    assert at.selectbox(key=f"{key}_preset").value == "manual"
    at.toggle(key=f"{key}_heat").set_value(False).run()
    viewers = [c.proto.component_name for c in at.get("bidi_component")]
    assert not at.exception and viewers == ["medres_scan_viewer"]  # the picture, inline


def test_export_page_gives_the_labels_csv_and_the_dashboard_counts(store):
    work = store.worklist()
    ids = work["case_id"].astype(int).tolist()
    shown_class = work["predicted_class"].tolist()
    store.decide(ids[1], "dr_okafor", "agree")
    store.decide(ids[2], "dr_okafor", "disagree", "0" if shown_class[2] == "1" else "1")
    store.decide(ids[3], "dr_okafor", "uncertain")
    at = start()

    at.switch_page(EXPORT_PAGE).run()
    at.button(key="export_button").click().run()
    assert not at.exception
    data, table = at.session_state["export"]
    exported = pd.read_csv(io.BytesIO(data), dtype=str)
    assert exported["scan_id"].tolist() == table["scan_id"].tolist()  # the preview is the file
    assert sorted(exported["scan_id"]) == sorted(work["scan_id"].iloc[[1, 2]])
    assert {"path", "label", "reviewer", "decided_at"} <= set(exported.columns)
    assert at.success[0].value == "2 labels: 1 agree, 1 disagree."
    exports = store.audit_log().query("action == 'export'")
    assert exports["actor"].tolist() == ["dr_lee"]

    at.switch_page("views/dashboard.py").run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Reviewed"] == "3 / 21" and metrics["Agreement"] == "50%"
    referral = next(f.value for f in at.dataframe if "reason" in f.value.columns)
    assert "out of distribution" in referral["reason"].tolist()


def test_serve_runs_streamlit_on_localhost_and_refuses_a_missing_store_or_no_reviewer(
    store, tmp_path, monkeypatch
):
    import os

    from typer.testing import CliRunner

    from medres.cli import app

    runner = CliRunner()
    db = str(tmp_path / "review.db")

    def said(result) -> str:
        return " ".join(result.output.split())

    missing = runner.invoke(app, ["review", "serve", "--store", str(tmp_path / "none.db")])
    assert missing.exit_code == 2 and "load a run first" in said(missing)
    nobody = runner.invoke(app, ["review", "serve", "--store", db])  # no review_users.json
    assert nobody.exit_code == 2 and "no reviewer account" in said(nobody)

    started = []
    monkeypatch.setattr(os, "execve", lambda *call: started.append(call))
    users = str(tmp_path / "users.json")
    served = runner.invoke(
        app, ["review", "serve", "--store", db, "--users", users, "--port", "8601"]
    )
    assert served.exit_code == 0, served.output
    assert "http://127.0.0.1:8601" in said(served)
    _, argv, environment = started[0]
    assert argv[1:4] == ["-m", "streamlit", "run"] and argv[4] == str(APP / "Home.py")
    options = dict(zip(argv[5::2], argv[6::2], strict=True))
    assert options["--server.address"] == "127.0.0.1" and options["--server.port"] == "8601"
    assert options["--server.headless"] == "true"
    assert options["--browser.gatherUsageStats"] == "false"
    assert environment[STORE_ENV] == db and environment[USERS_ENV] == users
    assert PASSWORD not in " ".join(argv)
    help_text = runner.invoke(app, ["review", "serve", "--help"]).output
    assert "Example" in help_text and "127.0.0.1" in help_text


# Markdown in data: a DICOM SeriesInstanceUID that became a scan id, a class name, a
# site, a refer reason, a bundle id, a file path, notes and a reviewer's (OIDC) name.
LINKED = "![u](http://example.invalid/x.png)[Open the full report](http://example.invalid/r)"
HOSTILE = {
    "scan_id": LINKED,
    "site": f"<b>St</b> :red[Elsewhere] $x^2$ {LINKED}",
    "patient_id": f"# **p** `c` ~~s~~ :material/home: :smile: p@example.invalid {LINKED}",
    "modality": f"_MR_ {LINKED}",
    "refer_reason": f"out of distribution; [see](http://example.invalid/why) <i>now</i> {LINKED}",
    "bundle_id": f"[bundle](http://example.invalid/b) www.example.invalid {LINKED}",
    "predicted_at": f"2026 | x | {LINKED}",
    "heatmap_map": f"/nonexistent/{LINKED}.npy",
}
CLASS_P = f"**P** {LINKED}"
CLASS_Q = f"`Q` :blue[q] {LINKED}"
REVIEWER = f"dr.lee@example.invalid {LINKED}"


def _make_hostile(store: ReviewStore, case_id: int, **values) -> None:
    """Overwrite a case's data (and its run's classes) with Markdown-laden values."""
    from sqlalchemy import update

    from medres.review.schema import cases, runs

    with store.engine.begin() as conn:
        conn.execute(update(cases).where(cases.c.id == case_id).values(**values))
    run_id = store.case(case_id)["run_id"]
    with store.engine.begin() as conn:
        conn.execute(update(runs).where(runs.c.id == run_id).values(classes=[CLASS_P, CLASS_Q]))


def _markdown_bodies(at: AppTest) -> list[str]:
    """The body of every element Streamlit renders as Markdown, with radio options."""
    bodies = []
    for kind in ("title", "header", "subheader", "markdown", "caption"):
        bodies += [e.value for e in at.get(kind)]
    for kind in ("error", "warning", "info", "success"):
        bodies += [e.value for e in at.get(kind)]
    for radio in at.radio:
        bodies += [radio.label, *radio.options]
    return bodies


def _columns(frame) -> list[dict]:
    import json

    return list(json.loads(frame.proto.columns or "{}").values())


def _live_markup(body: str) -> list[str]:
    """Links, images and raw HTML a CommonMark + GFM-table parser finds in ``body``, and
    the LaTeX and emoji shortcodes Streamlit's own checks (its StreamlitMarkdown
    component, 1.67) would render."""
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    found = []
    for token in parser.parse(body):
        for t in [token, *(token.children or [])]:
            if t.type in ("link_open", "image", "html_inline", "html_block"):
                found.append(f"{t.type}: {t.attrs or t.content}")
    unescaped = re.sub(r"(?<!`)(`+)[^`\n]+\1(?!`)|\\[\\$`]", "_", body)
    inline_math = r"(?<!\$)\$(?![\s$])[^$\n]*?[^\s$]\$(?!\d)"
    if re.search(inline_math + r"|(?<!\$)\$\$+(?!\$)[\s\S]*?\$\$", unescaped):
        found.append("latex")
    if re.search(r":(?!material/|streamlit:)[\w+-][\w_+-]*:", body, re.ASCII):
        found.append("emoji shortcode")
    return found


def _assert_plain(bodies: list[str]) -> None:
    """No body holds live markup from the data, and the data does show."""
    from medres.review.render import literal

    for body in bodies:
        assert _live_markup(body) == [], body
        assert "](http" not in body and "<b>" not in body and "<i>" not in body, body
        assert ":material/" not in body and ":red[" not in body and ":blue[" not in body, body
    assert any(literal("http://example.invalid/") in body for body in bodies)


def test_data_shows_as_plain_text_never_as_markdown_links_or_images(store):
    from medres.review.render import literal

    work = store.worklist()
    case_id, broken_id = int(work["case_id"].iloc[0]), int(work["case_id"].iloc[1])
    _make_hostile(
        store,
        case_id,
        **HOSTILE,
        refer=True,
        predicted_class=CLASS_P,
        probabilities={CLASS_P: 0.7, CLASS_Q: 0.3},
        conformal_set=[CLASS_P, CLASS_Q],
    )
    _make_hostile(store, broken_id, path=f"/nonexistent/{LINKED}/scan.png")
    store.decide(case_id, REVIEWER, "disagree", CLASS_Q, notes=LINKED)

    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=TIMEOUT)
    at.session_state["reviewer"] = REVIEWER  # as an OpenID Connect e-mail would be
    at.session_state["case_id"] = case_id
    at.run()
    at.switch_page(CASE_PAGE).run()
    assert not at.exception
    key = f"case{case_id}"
    at.button(key=f"{key}_show").click().run()
    assert at.button(key=f"{key}_agree").label == f"Agree: {literal(CLASS_P)}"
    assert at.button(key=f"{key}_disagree").label == f"Disagree: {literal(CLASS_Q)}"
    at.button(key=f"{key}_disagree").click().run()  # saved: the next case opens, saying so
    assert not at.exception
    assert at.success[0].value == (
        f"Saved: disagree → {literal(CLASS_Q)} by {literal(REVIEWER)}. Next case:"
    )
    _assert_plain(_markdown_bodies(at))
    at.query_params["case"] = str(case_id)  # back to the hostile case, by its address
    at.switch_page(CASE_PAGE).run()  # the model's output stays shown: it was asked for

    # the values are there, escaped, where the reviewer reads them
    assert at.title[0].value == f"Case {literal(LINKED)}"
    assert at.subheader[0].value == f"Model says: {literal(CLASS_P)}"
    assert any(c.value.startswith(f"Site {literal(HOSTILE['site'])}") for c in at.caption)
    assert any(literal(HOSTILE["refer_reason"]) in m.value for m in at.markdown)
    assert any(literal(HOSTILE["bundle_id"]) in c.value for c in at.caption)
    assert any(literal(CLASS_P) in m.value for m in at.markdown)  # the conformal badge
    assert f"Signed in as **{literal(REVIEWER)}**" in [c.value for c in at.sidebar.caption]
    assert any(literal(Path(HOSTILE["heatmap_map"])) in w.value for w in at.warning)
    # tables show data as it is: no escaping, no link columns
    history = next(f.value for f in at.dataframe if "decided_at" in f.value.columns)
    assert history["notes"].tolist() == ["", LINKED]
    assert set(history["reviewer"]) == {REVIEWER}

    at.query_params["case"] = str(broken_id)
    at.switch_page(CASE_PAGE).run()
    assert not at.exception
    assert literal(Path(f"/nonexistent/{LINKED}/scan.png")) in at.error[0].value
    broken_page = _markdown_bodies(at)

    pages = []
    for page in (WORKLIST_PAGE, "views/dashboard.py", EXPORT_PAGE):
        at.switch_page(page).run()
        assert not at.exception, page
        pages += _markdown_bodies(at)
        for frame in at.dataframe:  # cells are text; a link column would make them links
            kinds = {c.get("type_config", {}).get("type") for c in _columns(frame)}
            assert not kinds & {"link", "image", "json"}, (page, kinds)

    _assert_plain(broken_page + pages)


def test_a_blinded_run_keeps_the_first_impression_before_showing_the_model(
    review_run, tmp_path, monkeypatch
):
    db, users = tmp_path / "blinded.db", tmp_path / "users.json"
    add_user(users, "dr_lee", PASSWORD)
    monkeypatch.setenv(STORE_ENV, str(db))
    monkeypatch.setenv(USERS_ENV, str(users))
    with ReviewStore(db) as store:
        store.load_run(review_run, blinded=True)
        work = store.worklist()
    case_id, second = (int(c) for c in work["case_id"].iloc[:2])
    predicted = work["predicted_class"].iloc[0]
    classes = sorted({*work["predicted_class"], "0", "1"})
    key = f"case{case_id}"

    at = start()
    at.button(key="wl_next").click().run()
    assert at.session_state["case_id"] == case_id
    # no model output and no way to ask for it before the first impression
    assert f"{key}_show" not in [b.key for b in at.button]
    assert not [h for h in at.subheader if h.value.startswith("Model says")]
    keys = {b.label: b.proto.shortcut.lower() for b in at.button if "_first_" in str(b.key)}
    assert keys == {classes[0]: "j", classes[1]: "k", "Uncertain": "u"}
    mine = next(c for c in classes if c != predicted)  # the reader first reads it otherwise
    at.text_area(key=f"{key}_first_notes").input("first look")
    at.button(key=f"{key}_first_{classes.index(mine)}").click().run()
    assert not at.exception
    assert any(f"Your first impression: **{mine}**" in c.value for c in at.caption)
    at.button(key=f"{key}_show").click().run()  # now the model's output may be seen
    assert [h.value for h in at.subheader if h.value.startswith("Model says")]
    at.button(key=f"{key}_agree").click().run()  # ... and the reader changes their mind
    assert at.session_state["case_id"] == second

    with ReviewStore(db) as store:
        impression = store.impression(case_id, "dr_lee")
        assert (impression["label"], impression["notes"]) == (mine, "first look")
        assert [h["decision"] for h in store.history(case_id)] == ["agree"]
        changes = store.mind_changes().set_index("reviewer").loc["dr_lee"]
        assert (changes["cases"], changes["changed"], changes["to_model"]) == (1, 1, 1)


def test_my_cases_are_the_ones_assigned_to_me(store):
    store.assign(readers=["dr_lee", "dr_okafor"], per_case=1)
    mine = store.worklist(reader="dr_lee")["case_id"].tolist()
    assert 0 < len(mine) < len(store.worklist())
    at = start()
    assert worklist_table(at)["case_id"].tolist() == mine
    at.radio(key="wl_whose").set_value("everyone").run()
    assert len(worklist_table(at)) == len(store.worklist())


def test_classes_show_by_their_names(review_run, tmp_path, monkeypatch):
    """A run whose run.json names its classes (medres predict writes the bundle's
    class_names) reads 'normal' and 'pneumonia', never '0' and '1'."""
    import json
    import shutil

    outdir = tmp_path / "named"
    shutil.copytree(review_run, outdir)
    summary = json.loads((outdir / "run.json").read_text())
    summary["class_names"] = {"0": "normal", "1": "pneumonia"}
    (outdir / "run.json").write_text(json.dumps(summary))
    db, users = tmp_path / "named.db", tmp_path / "users.json"
    add_user(users, "dr_lee", PASSWORD)
    monkeypatch.setenv(STORE_ENV, str(db))
    monkeypatch.setenv(USERS_ENV, str(users))
    with ReviewStore(db) as store:
        store.load_run(outdir)
        first = store.worklist().iloc[1]  # not the blank scan: its output is all shown
    names = {"0": "normal", "1": "pneumonia"}
    predicted, other = (
        names[first["predicted_class"]],
        names[str(1 - int(first["predicted_class"]))],
    )

    at = start()
    assert at.selectbox(key="wl_class").options == ["(any)", "normal", "pneumonia"]
    at.query_params["case"] = str(int(first["case_id"]))
    at.switch_page(CASE_PAGE).run()
    key = f"case{int(first['case_id'])}"
    at.button(key=f"{key}_show").click().run()
    assert at.subheader[0].value == f"Model says: {predicted}"
    assert at.button(key=f"{key}_agree").label == f"Agree: {predicted}"
    assert at.button(key=f"{key}_disagree").label == f"Disagree: {other}"
    at.button(key=f"{key}_disagree").click().run()
    assert at.success[0].value == f"Saved: disagree → {other} by dr\\_lee. Next case:"
    with ReviewStore(db) as store:  # the store keeps the label itself, for retraining
        assert store.history(int(first["case_id"]))[0]["corrected_label"] in ("0", "1")


def test_an_idle_session_is_signed_out_and_the_password_field_suits_a_password_manager(store):
    from datetime import UTC, datetime

    from medres.review.sessions import IDLE

    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=TIMEOUT).run()
    assert at.text_input(key="sign_in_password").proto.autocomplete == "current-password"
    assert at.text_input(key="sign_in_name").proto.autocomplete == "username"
    at = start()
    assert at.session_state["reviewer"] == "dr_lee"
    at.session_state["last_active"] = datetime.now(UTC) - IDLE  # 30 minutes without a click
    at.run()
    assert "reviewer" not in at.session_state
    assert "signed out after 30 minutes without activity" in at.info[0].value
    assert at.text_input(key="sign_in_name")  # back at the sign-in form
    trail = store.audit_log()
    assert trail[trail["actor"] == "dr_lee"]["action"].tolist()[-1] == "sign_out"
