"""Case view: the scan (window/level, slices, Grad-CAM), the model's output in plain words,
the reader's decision and the case's decision history; every step has a key.

Not steering the reader (automation bias): the scan comes first; the model's output, the
Grad-CAM overlay and the decision buttons (whose "agree" names the model's class) stay
hidden until the reader asks for them (M), and nothing is pre-selected. In a blinded run
the reader first records a first impression, kept beside the final decision."""

import pandas as pd
import streamlit as st

from medres.errors import ReviewError
from medres.review import render, ui, viewer
from medres.review.summary import case_badges

IMPRESSION_KEYS = "JKLHGYTBV"  # first-impression keys, one per class in order (U: uncertain)
KEYS = (
    "Keys: **M** model output · **A** agree · **D** disagree · **U** uncertain · "
    "**N** next · **P** previous; the viewer's keys are under the picture"
)


def named(case: dict, label) -> str:
    """A class's display name (the bundle's ``class_names``; else the label itself)."""
    return case["class_names"].get(str(label), str(label))


def model_summary(case: dict) -> None:
    """The model's class and how far to trust it: a calibrated confidence, or for an
    out-of-distribution scan a plain warning instead (its probabilities mean nothing)."""
    st.subheader(f"Model says: {render.literal(named(case, case['predicted_class']))}")
    confidence = case.get("confidence")
    if case.get("ood"):
        st.warning(
            "This scan is unlike the scans the model was trained on (out of distribution): "
            "its probabilities are not reliable, whatever they say. Read it without them."
        )
    elif confidence is not None:
        st.write(f"Calibrated confidence **{confidence:.0%}**")


def model_details(case: dict) -> None:
    """Calibrated probabilities (not for an out-of-distribution scan), badges, referral,
    model id."""
    if not case.get("ood"):
        probabilities = (
            pd.DataFrame({"probability": pd.Series(case["probabilities"], dtype=float)})
            .rename(index=case["class_names"])
            .rename_axis("class")
        )
        st.bar_chart(probabilities, horizontal=True, height=60 + 30 * len(probabilities))
    members = [named(case, c) for c in case.get("conformal_set") or []]
    for badge in case_badges({**case, "conformal_set": members}):
        ui.badge(badge.label, badge.colour)
        st.caption(render.literal(badge.explanation))
    if case["refer"]:
        st.markdown(f"**Referred for review:** {render.literal(case['refer_reason'])}")
    model, predicted_at = case["bundle_id"], case.get("predicted_at") or "?"
    st.caption(f"Model {render.literal(model)} · predicted {render.literal(predicted_at)}")


def saved(note: str, following: int | None) -> None:
    """After a save: the next case of the worklist, in its order, saying what was saved
    (None: the end of the worklist; stay, and say so)."""
    if following is None:
        st.success(note + " That was the last case of the worklist.")
    else:
        st.session_state["case_saved"] = f"{note} Next case:"
        ui.open_case(following)


def first_impression(case: dict, reviewer: str, following: int | None) -> None:
    """A blinded run: the reader's own reading (a class, or uncertain) before the model's
    output, one key each; kept, and shown beside the final decision."""
    key = f"case{case['case_id']}"
    st.subheader("Your first impression")
    st.caption("A blinded run: record your own reading before you see the model's.")
    notes = st.text_area("Notes", key=f"{key}_first_notes", height=68)
    choices = [*case["classes"], None]  # None: uncertain
    row = st.container(horizontal=True)
    for at, label in enumerate(choices):
        shortcut = "U" if label is None else IMPRESSION_KEYS[at : at + 1] or None
        text = "Uncertain" if label is None else render.literal(named(case, label))
        if row.button(text, key=f"{key}_first_{at}", shortcut=shortcut):
            try:
                decision = "uncertain" if label is None else "label"
                store.first_impression(case["case_id"], reviewer, decision, label, notes=notes)
            except ReviewError as e:
                st.error(render.literal(e))
            else:
                st.rerun()


def decision_buttons(case: dict, reviewer: str, following: int | None) -> None:
    """Agree / disagree (with the corrected label) / uncertain, one key each; a click or
    a key saves at once and opens ``following``. Notes are typed first."""
    key = f"case{case['case_id']}"
    predicted = case["predicted_class"]
    others = [c for c in case["classes"] if c != predicted]
    if len(others) == 1:  # two classes: disagreeing names the other one
        corrected = others[0]
    else:
        corrected = st.selectbox(
            "Corrected label (when you disagree)",
            others,
            format_func=lambda c: named(case, c),
            index=None,
            placeholder="choose the right class",
            key=f"{key}_label",
        )
    notes = st.text_area("Notes", key=f"{key}_notes", height=68)
    disagree = "Disagree" + (
        f": {render.literal(named(case, corrected))}" if len(others) == 1 else ""
    )
    labels = {
        "agree": (f"Agree: {render.literal(named(case, predicted))}", "A"),
        "disagree": (disagree, "D"),
        "uncertain": ("Uncertain", "U"),
    }
    chosen = None
    with st.container(horizontal=True):  # side by side, on two lines when names are long
        for decision, (text, shortcut) in labels.items():
            if st.button(text, key=f"{key}_{decision}", shortcut=shortcut):
                chosen = decision
    if chosen is None:
        return
    label = corrected if chosen == "disagree" else None
    try:
        store.decide(case["case_id"], reviewer, chosen, label, notes=notes)
    except ReviewError as e:
        st.error(render.literal(e))
        return
    shown = f" → {render.literal(named(case, label))}" if label else ""
    saved(f"Saved: {chosen}{shown} by {render.literal(reviewer)}.", following)


def reading(case: dict, reviewer: str, following: int | None) -> None:
    """The right-hand column: first impression (blinded runs), then the model's output
    and the decision on request."""
    key = f"case{case['case_id']}"
    if case.get("blinded"):
        impression = store.impression(case["case_id"], reviewer)
        if impression is None:
            first_impression(case, reviewer, following)
            return
        label = impression.get("label")
        first = "uncertain" if label is None else named(case, label)
        st.caption(f"Your first impression: **{render.literal(first)}**")
    revealed = st.session_state.get(f"{key}_reveal", False)
    if not revealed:
        if st.button(
            "Show the model's output",
            key=f"{key}_show",
            shortcut="M",
            type="primary",
            help="Read the scan first: the model's class, probabilities and the decision "
            "appear when you ask for them.",
        ):
            st.session_state[f"{key}_reveal"] = True
            st.rerun()
        return
    model_summary(case)
    decision_buttons(case, reviewer, following)
    model_details(case)


def history(case: dict) -> None:
    """Every decision on the case, newest (current) first."""
    rows = store.history(case["case_id"])
    st.subheader("Decision history")
    if not rows:
        st.caption("No decision yet.")
        return
    table = pd.DataFrame(rows)[
        ["decided_at", "reviewer", "decision", "corrected_label", "notes", "current"]
    ]
    table["corrected_label"] = table["corrected_label"].map(
        lambda c: None if c is None else named(case, c)
    )
    headers = ["Decided", "Reader", "Decision", "Corrected to", "Notes", "Current"]
    config = {c: st.column_config.Column(h) for c, h in zip(table.columns, headers, strict=True)}
    st.dataframe(table, hide_index=True, key="case_history", column_config=config)


reviewer = ui.require_reviewer()
store = ui.store()
case_id = ui.current_case()
if case_id is None:
    waiting = store.worklist(status="pending")
    if waiting.empty:
        st.info("No case is open and none is pending. Pick one on the Worklist.")
        st.stop()
    case_id = int(waiting["case_id"].iloc[0])
    st.session_state["case_id"] = case_id
try:
    case = store.case(case_id)
except ReviewError as e:
    st.error(render.literal(e))
    st.stop()

in_order = store.worklist(status="all")["case_id"].astype(int).tolist()  # without a worklist
previous_case = ui.neighbour(case_id, -1, in_order)
next_case = ui.neighbour(case_id, +1, in_order)
title, back, skip = st.columns([4, 1, 1], vertical_alignment="bottom")
title.title(f"Case {render.literal(case['scan_id'])}")
if back.button("Previous", disabled=previous_case is None, key="case_previous", shortcut="P"):
    ui.open_case(previous_case)
if skip.button(
    "Skip", disabled=next_case is None, key="case_next", shortcut="N", help="Next case, no decision"
):
    ui.open_case(next_case)
saved_note = st.session_state.pop("case_saved", None)
if saved_note:
    st.success(saved_note)
st.query_params["case"] = str(case_id)  # the address names the case: reload, bookmark
st.caption(f"Site {render.literal(case.get('site') or '(none)')} · run {case['run_id']}")

image_column, output_column = st.columns([3, 2], gap="large")
with image_column:
    viewer.show(case)
with output_column:
    reading(case, reviewer, next_case)
    history(case)
    st.caption(KEYS)
