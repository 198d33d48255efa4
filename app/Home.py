"""medres review app: the entry point that ``medres review serve`` runs.

Before sign-in the navigation holds the sign-in page only (also at the other pages'
addresses, hidden, so a bookmark or a reload signs in instead of "page not found"),
so no URL reaches a page with case data; every page also checks the reviewer itself
(``ui.require_reviewer``). A ``/?case=ID`` link is kept across the sign-in.
"""

import streamlit as st

from medres.review import render, ui

st.set_page_config(page_title="medres review", page_icon=":material/radiology:", layout="wide")

signed_in = ui.reviewer() is not None
if not signed_in:
    sign_in = st.Page(ui.SIGN_IN_PAGE, title="Sign in", icon=":material/login:", default=True)
    hidden = [
        st.Page(ui.SIGN_IN_PAGE, title="Sign in", url_path=path, visibility="hidden")
        for path in ("worklist", "case", "dashboard", "export", "adjudication")
    ]
    page = st.navigation([sign_in, *hidden])
else:
    page = st.navigation(
        [
            st.Page(ui.WORKLIST_PAGE, title="Worklist", icon=":material/list:", default=True),
            st.Page(ui.CASE_PAGE, title="Case", icon=":material/radiology:"),
            st.Page(ui.DASHBOARD_PAGE, title="Dashboard", icon=":material/monitoring:"),
            st.Page(ui.ADJUDICATION_PAGE, title="Adjudication", icon=":material/gavel:"),
            st.Page(ui.EXPORT_PAGE, title="Export", icon=":material/download:"),
        ]
    )
    with st.sidebar:
        st.caption(f"Signed in as **{render.literal(ui.reviewer())}**")
        if st.button("Sign out", key="sign_out"):
            ui.sign_out()
            st.rerun()
ui.follow_link(signed_in, page.url_path)
ui.keep_session()
page.run()
