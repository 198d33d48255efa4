"""Worklist: the cases most in need of a human first, with filters, counts per reason,
clickable rows and "next case" (N).

Not steering the reader: the table says why a case is here and what was decided, not
what the model predicted or how sure it was. The filters are kept while the reader
moves through cases (Streamlit forgets a widget's value once its page is left, so
:func:`keep` restores them from a copy)."""

import pandas as pd
import streamlit as st

from medres.review import render, ui
from medres.review.summary import reasons_in, referral_reasons

ANY = "(any)"
FILTERS = {
    "wl_whose": "mine",
    "wl_status": "pending",
    "wl_run": ANY,
    "wl_class": ANY,
    "wl_site": ANY,
    "wl_reason": ANY,
}
WHOSE = {
    "mine": "My cases",  # assigned to me (every case of a run without assignments)
    "everyone": "Everyone's",  # every case, with its current decision by anyone
}
HEADERS = {  # column: (header, help); the others stay out of the table
    "rank": ("#", "Reading order: out of distribution first, then the most uncertain"),
    "scan_id": ("Scan", None),
    "modality": ("Modality", None),
    "site": ("Site", None),
    "refer_reason": ("Why it is here", "The referral reasons; empty: not referred"),
    "decision": ("Decision", None),
    "corrected_label": ("Corrected to", None),
    "reviewer": ("Reader", None),
    "decided_at": ("Decided", None),
}


def keep(defaults: dict[str, object]) -> None:
    """Give each filter widget its last value (else its default) before it is drawn."""
    state = st.session_state
    for key, default in defaults.items():
        if key not in state:
            state[key] = state.get(f"kept_{key}", default)


def remember(defaults: dict[str, object]) -> None:
    """Copy the filter widgets' values where Streamlit keeps them across pages."""
    for key in defaults:
        st.session_state[f"kept_{key}"] = st.session_state[key]


def reason_counts(scope: pd.DataFrame) -> pd.DataFrame:
    """Pending and reviewed cases per referral reason (a case counts under each reason)."""
    counts = referral_reasons(scope)
    return pd.DataFrame(
        {
            "Why it is here": counts["reason"],
            "Pending": counts["cases"] - counts["reviewed"],
            "Reviewed": counts["reviewed"],
        }
    )


def table_view(table: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The worklist as shown: readable headers, no column that is empty throughout."""
    shown = [c for c in HEADERS if c in table.columns and table[c].notna().any()]
    frame = table.assign(
        refer_reason=table["refer_reason"].fillna(""),
        decided_at=table["decided_at"].map(lambda t: t[:16].replace("T", " ") if t else t),
    )
    config = {
        c: st.column_config.Column(header, help=text)
        for c, (header, text) in HEADERS.items()
        if c in shown
    }
    config["rank"] = st.column_config.NumberColumn("#", help=HEADERS["rank"][1], width="small")
    return frame[["case_id", *shown]], config | {"case_id": None}


reviewer = ui.require_reviewer()
store = ui.store()
st.title("Worklist")

runs = store.runs()
if runs.empty:
    st.info("No prediction run is loaded: `medres review load OUTDIR --store DB`.")
    st.stop()
everything = store.worklist(status="all")
run_labels = {
    int(r.id): f"run {r.id}: model {str(r.bundle_id)[:12]}, {r.cases} cases, {r.loaded_at[:10]}"
    for r in runs.itertuples()
}
names = {c: n for mapping in runs["class_names"] for c, n in mapping.items()}  # {label: name}
classes = sorted(names, key=names.get)
sites = sorted(everything["site"].dropna().unique().tolist())

keep(FILTERS)
whose_column, first, second, third, fourth, fifth = st.columns([1.5, 1.7, 1.6, 1, 1, 1.6])
whose = whose_column.radio(
    "Cases",
    list(WHOSE),
    format_func=WHOSE.get,
    horizontal=True,
    key="wl_whose",
    help="My cases: those assigned to you, with your own decisions (every case of a run "
    "without assignments). Everyone's: every case with its current decision, by anyone.",
)
status = first.radio("Status", ["pending", "reviewed", "all"], horizontal=True, key="wl_status")
run = second.selectbox(
    "Run", [ANY, *run_labels], format_func=lambda r: run_labels.get(r, r), key="wl_run"
)
predicted = third.selectbox(
    "Predicted class", [ANY, *classes], format_func=lambda c: names.get(c, c), key="wl_class"
)
site = fourth.selectbox("Site", [ANY, *sites], key="wl_site")
reason = fifth.selectbox("Referral reason", [ANY, *reasons_in(everything)], key="wl_reason")
remember(FILTERS)

table = store.worklist(
    run_id=None if run == ANY else run,
    status=status,
    predicted_class=None if predicted == ANY else predicted,
    site=None if site == ANY else site,
    reason=None if reason == ANY else reason,
    reader=reviewer if whose == "mine" else None,
)
if whose == "mine":
    everything = store.worklist(status="all", reader=reviewer)
scope = everything if run == ANY else everything[everything["run_id"] == run]
reviewed = int(scope["decision"].notna().sum())
counts, reasons = st.columns([1, 1])
with counts:
    numbers = st.columns(4)
    numbers[0].metric("In this list", len(table))
    numbers[1].metric("Pending", len(scope) - reviewed)
    numbers[2].metric("Reviewed", reviewed)
    numbers[3].metric("Referred", int(scope["refer"].sum()))
with reasons:
    st.dataframe(reason_counts(scope), hide_index=True, key="wl_reasons")

st.session_state[ui.ORDER_KEY] = table["case_id"].astype(int).tolist()  # for next / previous
if table.empty:
    st.success("No case matches these filters.")
    st.stop()
if st.button("Next case", type="primary", key="wl_next", shortcut="N"):
    ui.open_case(int(table["case_id"].iloc[0]))
st.caption("Click a row to open its case; N opens the first one.")
frame, config = table_view(table.assign(corrected_label=table["corrected_label"].map(names)))
picked = st.dataframe(
    frame,
    hide_index=True,
    key="wl_table",
    column_config=config,
    on_select="rerun",
    selection_mode="single-row",
)
if picked.selection.rows:
    ui.open_case(int(frame["case_id"].iloc[picked.selection.rows[0]]))
st.caption(
    f"{render.literal(len(table))} case(s). The model's prediction shows in the case "
    "view, after you have looked at the scan."
)
