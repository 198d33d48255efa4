"""The review app's Adjudication page and the dashboard's reader figures, driven with
streamlit.testing.v1.AppTest on a real ``medres predict --explain`` run (conftest's
``review_run``), read by two assigned readers who disagree on some cases."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from medres.review import ReviewStore, add_user
from medres.review.summary import kappa_text
from medres.review.ui import ADJUDICATION_PAGE, DASHBOARD_PAGE, STORE_ENV, USERS_ENV

APP = Path(__file__).resolve().parents[1] / "app"
PASSWORD = "correct horse battery"
TIMEOUT = 60  # seconds per script run: the first one imports pandas, PIL, nibabel
FLIP = {"0": "1", "1": "0"}


def _read(store: ReviewStore, case_id: int, reader: str, label: str | None, notes="") -> None:
    """``reader`` reads ``case_id`` as class ``label`` (None: uncertain)."""
    predicted = store.case(case_id)["predicted_class"]
    if label is None:
        store.decide(case_id, reader, "uncertain", notes=notes)
    elif label == predicted:
        store.decide(case_id, reader, "agree", notes=notes)
    else:
        store.decide(case_id, reader, "disagree", label, notes=notes)


@pytest.fixture
def store(review_run, tmp_path, monkeypatch):
    """The run loaded and assigned to dr_a and dr_b, who agree on 6 cases and disagree on
    two (dr_b's notes say why); accounts dr_a, dr_b and dr_lee (the adjudicator)."""
    db, users = tmp_path / "review.db", tmp_path / "users.json"
    for name in ("dr_a", "dr_b", "dr_lee"):
        add_user(users, name, PASSWORD)
    monkeypatch.setenv(STORE_ENV, str(db))
    monkeypatch.setenv(USERS_ENV, str(users))
    with ReviewStore(db) as review:
        run = review.load_run(review_run, site="St Elsewhere").run_id
        review.assign(run, readers=["dr_a", "dr_b"])
        work = review.worklist(run)
        work = work[work["scan_id"] != "zz_black.png"].head(8)
        for k, (case_id, shown) in enumerate(
            zip(work["case_id"], work["predicted_class"], strict=True)
        ):
            _read(review, int(case_id), "dr_a", shown)
            if k < 2:
                _read(review, int(case_id), "dr_b", FLIP[shown], notes=f"opacity {k}")
            else:
                _read(review, int(case_id), "dr_b", shown)
        yield review


def start(name: str) -> AppTest:
    """The app signed in as ``name``."""
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=TIMEOUT).run()
    at.text_input(key="sign_in_name").input(name)
    at.text_input(key="sign_in_password").input(PASSWORD)
    at = at.button(key="sign_in_submit").click().run()
    assert at.session_state["reviewer"] == name
    return at


def table_with(at: AppTest, column: str) -> pd.DataFrame:
    return next(f.value for f in at.dataframe if column in f.value.columns)


def test_an_adjudicator_sees_both_readings_and_records_the_final_label(store):
    queue = store.adjudication_queue()
    assert len(queue) == 2
    first = int(queue["case_id"][0])
    predicted = store.case(first)["predicted_class"]
    at = start("dr_lee")
    at.switch_page(ADJUDICATION_PAGE).run()
    assert not at.exception
    listed = table_with(at, "Readers said")
    assert listed["Case"].tolist() == queue["case_id"].tolist()
    assert listed["Readers said"][0] == f"dr_a: {predicted}; dr_b: {FLIP[predicted]}"
    text = "\n".join(m.value for m in at.markdown)
    assert "Notes: opacity 0" in text and "**dr\\_b** said" in text
    assert at.radio(key="adj_label").value is None  # nothing pre-selected

    # saving without a label records nothing
    at = at.button(key="adj_submit").click().run()
    assert [e.value for e in at.error] == ["Choose the final label first."]
    assert len(store.adjudication_queue()) == 2

    at.radio(key="adj_label").set_value(FLIP[predicted])
    at.text_area(key="adj_notes").input("dr_b is right: apical opacity")
    at = at.button(key="adj_submit").click().run()
    assert not at.exception
    assert f"Case {first}: final label {FLIP[predicted]} recorded." in at.success[0].value
    final = store.case(first)["decision"]
    assert (final["kind"], final["reviewer"], final["corrected_label"]) == (
        "adjudication",
        "dr_lee",
        FLIP[predicted],
    )
    assert final["notes"] == "dr_b is right: apical opacity"
    assert store.adjudication_queue()["case_id"].tolist() == [int(queue["case_id"][1])]
    assert table_with(at, "Readers said")["Case"].tolist() == [int(queue["case_id"][1])]


def test_a_reader_of_the_case_cannot_adjudicate_it(store):
    at = start("dr_a")
    at.switch_page(ADJUDICATION_PAGE).run()
    assert not at.exception
    assert "You read this case: another reader must adjudicate it" in at.warning[0].value
    assert not at.get("radio") and not at.text_area  # no form to record a final label
    assert len(store.adjudication_queue()) == 2


def test_the_dashboard_shows_reader_agreement_and_the_queue(store):
    agreement = store.agreement()
    pair = agreement.pairs.iloc[0]
    at = start("dr_lee")
    at.switch_page(DASHBOARD_PAGE).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Adjudication queue"] == "2"
    pairs = table_with(at, "Cohen's κ")
    assert pairs["Readers"].tolist() == ["dr_a · dr_b"] and pairs["Cases"].tolist() == [8]
    assert pairs["Cohen's κ"][0] == kappa_text(pair["kappa"], pair["low"], pair["high"])
    model = table_with(at, "κ vs the model").set_index("Reader")
    assert model.loc["dr_a", "Cases"] == 8
    assert model.loc["dr_a", "κ vs the model"].startswith("1.00")  # dr_a agreed every time
    assert not any("Changed" in f.value.columns for f in at.dataframe)  # no blinded run


def test_the_dashboard_counts_mind_changes_in_a_blinded_run(store, review_run, tmp_path):
    study = shutil.copytree(review_run, tmp_path / "study")
    run = store.load_run(study, blinded=True).run_id
    case_id, predicted = store.worklist(run)[["case_id", "predicted_class"]].iloc[0]
    store.first_impression(int(case_id), "dr_a", "label", FLIP[predicted])
    store.decide(int(case_id), "dr_a", "agree")  # changed to the model's class
    at = start("dr_lee")
    at.switch_page(DASHBOARD_PAGE).run()
    assert not at.exception
    changes = table_with(at, "Towards the model").set_index("Reader")
    assert changes.loc["dr_a"].tolist() == [1, 1, "100%", 1]


def test_the_adjudication_page_shows_nothing_without_a_sign_in(store):
    at = AppTest.from_file(str(APP / "views" / "adjudication.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert [w.value for w in at.warning] == ["Sign in to see the worklist and the cases."]
    assert not at.dataframe and not at.get("radio")
