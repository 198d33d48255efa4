"""Adjudication: the cases whose readers disagree, each reader's label and notes side by
side, and a form for someone who did not read the case to record the final label (which
the labels export then uses). Nothing is pre-selected."""

import pandas as pd
import streamlit as st

from medres.errors import ReviewError
from medres.review import render, ui

UNCERTAIN = "Uncertain"
DONE_KEY = "adj_done"  # what was saved, shown after the rerun that saving starts


def said(reading: dict, names: dict[str, str]) -> str:
    """What a reader said, in words: the class's display name, or uncertain."""
    label = reading["label"]
    return UNCERTAIN.lower() if label is None else names.get(str(label), str(label))


def overview(queue: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """The queue as a table a person reads: case, scan, site, each reader's label."""
    return pd.DataFrame(
        {
            "Case": queue["case_id"],
            "Scan": queue["scan_id"],
            "Site": queue["site"].fillna("—"),
            "Readers said": [
                "; ".join(f"{r['reviewer']}: {said(r, names)}" for r in readings)
                for readings in queue["readings"]
            ],
        }
    )


def decision_for(choice: str, predicted: str) -> tuple[str, str | None]:
    """The store's (decision, corrected label) for the chosen final label."""
    if choice == UNCERTAIN:
        return "uncertain", None
    if choice == predicted:
        return "agree", None
    return "disagree", choice


reviewer = ui.require_reviewer()
store = ui.store()
st.title("Adjudication")
done = st.session_state.pop(DONE_KEY, None)
if done:
    st.success(done)
queue = store.adjudication_queue()
if queue.empty:
    st.info(
        "No case is waiting for adjudication: every case's readers agree, or their "
        "disagreements are settled."
    )
    st.stop()

st.caption(
    f"{len(queue)} case(s) whose readers disagree (or one was uncertain), most urgent "
    "first. The final label is recorded by someone who did not read the case."
)
names = {c: n for mapping in store.runs()["class_names"] for c, n in mapping.items()}
st.dataframe(overview(queue, names), hide_index=True, key="adj_queue")
labels = {
    int(row.case_id): f"Case {row.case_id} · {row.scan_id}" for row in queue.itertuples(index=False)
}
case_id = st.selectbox(
    "Case to adjudicate", list(labels), format_func=labels.get, index=0, key="adj_case"
)
row = queue.set_index("case_id").loc[case_id]
case = store.case(case_id)

columns = st.columns(max(1, len(row["readings"])))
for column, reading in zip(columns, row["readings"], strict=False):
    with column:
        st.markdown(
            f"**{render.literal(reading['reviewer'])}** said "
            f"**{render.literal(said(reading, case['class_names']))}**"
        )
        st.caption(
            f"{render.literal(reading['decision'])} · {render.literal(reading['decided_at'])}"
        )
        notes = reading["notes"] or ""
        st.markdown(f"Notes: {render.literal(notes)}" if notes.strip() else "No notes.")
predicted = str(case["predicted_class"])
st.caption(f"Model said: {render.literal(case['class_names'].get(predicted, predicted))}")
if st.button("Open the case", key="adj_open"):
    ui.open_case(case_id)

if reviewer in row["readers"] or reviewer in {r["reviewer"] for r in row["readings"]}:
    st.warning(
        "You read this case: another reader must adjudicate it. Pick another case, or "
        "ask a colleague who did not read it."
    )
    st.stop()

with st.form("adj_form", clear_on_submit=True):
    choice = st.radio(
        "Final label",
        [*map(str, case["classes"]), UNCERTAIN],
        format_func=lambda c: case["class_names"].get(c, c),
        index=None,
        horizontal=True,
        key="adj_label",
    )
    notes = st.text_area("Notes (why)", key="adj_notes")
    submitted = st.form_submit_button("Record final label", type="primary", key="adj_submit")
if submitted:
    if choice is None:
        st.error("Choose the final label first.")
    else:
        decision, label = decision_for(choice, str(case["predicted_class"]))
        try:
            store.adjudicate(case_id, reviewer, decision, label, notes)
        except ReviewError as e:
            st.error(render.literal(e))
        else:
            st.session_state[DONE_KEY] = (
                f"Case {case_id}: final label "
                f"{render.literal(case['class_names'].get(choice, choice))} recorded."
            )
            st.session_state.pop("adj_case", None)
            st.rerun()
