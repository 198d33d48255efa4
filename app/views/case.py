"""Case view: the scan (window/level, slices, Grad-CAM), the model's output in plain words,
the decision form and the case's decision history.

Not steering the reader (automation bias): the scan comes first; the model's output, the
Grad-CAM overlay and the decision form (whose "agree" names the model's class) stay hidden
until the reader asks for them, and no decision is pre-selected: Save without a choice
saves nothing."""

import pandas as pd
import streamlit as st

from medres.errors import ReviewError
from medres.review import render, ui, viewer
from medres.review.summary import case_badges


def model_output(case: dict) -> None:
    """Prediction, calibrated probabilities (not for an out-of-distribution scan, where
    they mean nothing), badges, referral, model id."""
    st.subheader(f"Model says: {render.literal(case['predicted_class'])}")
    confidence = case.get("confidence")
    if case.get("ood"):
        st.warning(
            "This scan is unlike the scans the model was trained on (out of distribution): "
            "its probabilities are not reliable, whatever they say. Read it without them."
        )
    elif confidence is not None:
        st.write(f"Calibrated confidence **{confidence:.0%}**")
    if not case.get("ood"):
        probabilities = pd.DataFrame(
            {"probability": pd.Series(case["probabilities"], dtype=float)}
        ).rename_axis("class")
        st.bar_chart(probabilities, horizontal=True, height=60 + 30 * len(probabilities))
    for badge in case_badges(case):
        ui.badge(badge.label, badge.colour)
        st.caption(render.literal(badge.explanation))
    if case["refer"]:
        st.markdown(f"**Referred for review:** {render.literal(case['refer_reason'])}")
    model, predicted_at = case["bundle_id"], case.get("predicted_at") or "?"
    st.caption(f"Model {render.literal(model)} · predicted {render.literal(predicted_at)}")


def decision_form(case: dict, reviewer: str, following: int | None) -> None:
    """Agree / disagree with a corrected label / uncertain, with notes: one Save click,
    which then opens ``following`` (the next case of the worklist; None: stay)."""
    others = [c for c in case["classes"] if c != case["predicted_class"]]
    choices = {
        "agree": f"Agree ({render.literal(case['predicted_class'])})",  # radio: Markdown
        "disagree": "Disagree",
        "uncertain": "Uncertain",
    }
    key = f"case{case['case_id']}"
    with st.form(f"{key}_decision", clear_on_submit=True):
        decision = st.radio(
            "Your decision",
            list(choices),
            format_func=choices.get,
            horizontal=True,
            index=None,  # nothing pre-selected: the reader chooses
            key=f"{key}_choice",
        )
        corrected = st.selectbox(
            "Corrected label (when you disagree)",
            others,
            index=None,
            placeholder="choose the right class",
            key=f"{key}_label",
        )
        notes = st.text_area("Notes", key=f"{key}_notes", height=80)
        saved = st.form_submit_button("Save decision", type="primary", key=f"{key}_save")
    if saved and decision is None:
        st.error("Choose agree, disagree or uncertain first: nothing was saved.")
    elif saved:
        try:
            store.decide(
                case["case_id"],
                reviewer,
                decision,
                corrected if decision == "disagree" else None,
                notes=notes,
            )
        except ReviewError as e:
            st.error(render.literal(e))
        else:
            label = f" → {render.literal(corrected)}" if decision == "disagree" else ""
            note = f"Saved: {decision}{label} by {render.literal(reviewer)}."
            if following is None:  # the end of the worklist: stay, and say so
                st.success(note + " That was the last case of the worklist.")
            else:  # save and next: the next case of the worklist, in its order
                st.session_state["case_saved"] = f"{note} Next case:"
                ui.open_case(following)


def history(case_id: int) -> None:
    """Every decision on the case, newest (current) first."""
    rows = store.history(case_id)
    st.subheader("Decision history")
    if not rows:
        st.caption("No decision yet.")
        return
    table = pd.DataFrame(rows)[
        ["decided_at", "reviewer", "decision", "corrected_label", "notes", "current"]
    ]
    st.dataframe(table, hide_index=True, key="case_history")


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
if back.button("Previous", disabled=previous_case is None, key="case_previous"):
    ui.open_case(previous_case)
if skip.button("Skip", disabled=next_case is None, key="case_next", help="Next case, no decision"):
    ui.open_case(next_case)
saved_note = st.session_state.pop("case_saved", None)
if saved_note:
    st.success(saved_note)
facts = {
    "patient": case.get("patient_id") or "(none)",
    "site": case.get("site") or "(none)",
    "modality": case.get("modality") or "?",
    "run": case["run_id"],
}
st.caption(" · ".join(f"{name} {render.literal(value)}" for name, value in facts.items()))

image_column, output_column = st.columns([3, 2], gap="large")
with image_column:
    viewer.show(case)
with output_column:
    revealed = st.toggle(
        "Show the model's output",
        value=False,
        key=f"case{case_id}_reveal",
        help="Read the scan first: the model's class, probabilities and the decision form "
        "appear when you ask for them.",
    )
    if revealed:
        model_output(case)
        decision_form(case, reviewer, next_case)
    history(case_id)
