"""Worklist: the cases most in need of a human first, with filters, counts and "next case"."""

import streamlit as st

from medres.review import ui
from medres.review.summary import reasons_in

ui.require_reviewer()
store = ui.store()
st.title("Worklist")

runs = store.runs()
if runs.empty:
    st.info("No prediction run is loaded: `medres review load OUTDIR --store DB`.")
    st.stop()
everything = store.worklist(status="all")
ANY = "(any)"
run_labels = {
    int(r.id): f"run {r.id}: model {str(r.bundle_id)[:12]}, {r.cases} cases, {r.loaded_at[:10]}"
    for r in runs.itertuples()
}
classes = sorted({str(c) for r in runs["classes"] for c in r})
sites = sorted(everything["site"].dropna().unique().tolist())

first, second, third, fourth, fifth = st.columns([1.7, 1.6, 1, 1, 1.6])
status = first.radio("Status", ["pending", "reviewed", "all"], horizontal=True, key="wl_status")
run = second.selectbox(
    "Run", [ANY, *run_labels], format_func=lambda r: run_labels.get(r, r), key="wl_run"
)
predicted = third.selectbox("Predicted class", [ANY, *classes], key="wl_class")
site = fourth.selectbox("Site", [ANY, *sites], key="wl_site")
reason = fifth.selectbox("Referral reason", [ANY, *reasons_in(everything)], key="wl_reason")

table = store.worklist(
    run_id=None if run == ANY else run,
    status=status,
    predicted_class=None if predicted == ANY else predicted,
    site=None if site == ANY else site,
    reason=None if reason == ANY else reason,
)
scope = everything if run == ANY else everything[everything["run_id"] == run]
reviewed = int(scope["decision"].notna().sum())
counts = st.columns(4)
counts[0].metric("In this list", len(table))
counts[1].metric("Pending", len(scope) - reviewed)
counts[2].metric("Reviewed", reviewed)
counts[3].metric("Referred", int(scope["refer"].sum()))

st.session_state[ui.ORDER_KEY] = table["case_id"].astype(int).tolist()  # for next / previous
if table.empty:
    st.success("No case matches these filters.")
    st.stop()
labels = {
    int(row.case_id): f"#{row.rank}  {row.scan_id}  (predicted {row.predicted_class})"
    for row in table.itertuples()
}
pick, next_button, open_button = st.columns([3, 1, 1], vertical_alignment="bottom")
chosen = pick.selectbox("Case", list(labels), format_func=labels.get, key="wl_case")
if next_button.button("Next case", type="primary", key="wl_next"):
    ui.open_case(int(table["case_id"].iloc[0]))
if open_button.button("Open case", key="wl_open"):
    ui.open_case(chosen)

shown = table.assign(
    conformal_set=table["conformal_set"].map(lambda s: ", ".join(s or [])),
)[
    [
        "rank",
        "case_id",
        "scan_id",
        "predicted_class",
        "confidence",
        "conformal_set",
        "uncertainty",
        "ood",
        "refer_reason",
        "site",
        "patient_id",
        "decision",
        "corrected_label",
        "reviewer",
    ]
]
st.dataframe(
    shown,
    hide_index=True,
    key="wl_table",
    column_config={
        "confidence": st.column_config.NumberColumn("confidence", format="%.2f"),
        "uncertainty": st.column_config.NumberColumn("uncertainty", format="%.2f"),
        "ood": st.column_config.CheckboxColumn("OOD"),
    },
)
