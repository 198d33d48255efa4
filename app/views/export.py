"""Export: the reviewed labels as a CSV that `medres ingest --labels` accepts."""

import tempfile
from pathlib import Path

import streamlit as st

from medres.review import ui

reviewer = ui.require_reviewer()
store = ui.store()
st.title("Export reviewed labels")
st.write(
    "One row per reviewed scan, its latest decision: `path`, `label` (the corrected label "
    "on disagree, the predicted class on agree), `scan_id`, `decision`, `reviewer`, "
    "`decided_at` (UTC), `predicted_class`, `bundle_id`. Scans marked uncertain are left "
    "out. Use it with `medres ingest FOLDER --labels reviewed_labels.csv`."
)
runs = store.runs()
choices = [None, *[int(r) for r in runs["id"]]] if not runs.empty else [None]
run = st.selectbox(
    "Decisions of",
    choices,
    format_func=lambda r: "every run" if r is None else f"run {r}",
    key="export_run",
)
if st.button("Export", type="primary", key="export_button"):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "reviewed_labels.csv"
        table = store.export_labels(path, run_id=run, actor=reviewer)
        st.session_state["export"] = (path.read_bytes(), table)
if "export" in st.session_state:
    data, table = st.session_state["export"]
    counts = table["decision"].value_counts()
    st.success(
        f"{len(table)} labels: {counts.get('agree', 0)} agree, {counts.get('disagree', 0)} "
        "disagree."
    )
    st.download_button(
        "Download reviewed_labels.csv",
        data,
        file_name="reviewed_labels.csv",
        mime="text/csv",
        key="export_download",
    )
    st.dataframe(table, hide_index=True, key="export_table")
