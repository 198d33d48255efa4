"""Sign-in: a reviewer account from the local users file (or OpenID Connect)."""

import streamlit as st

from medres.review import ui

st.title("medres review")
st.write("Sign in with your reviewer account to see the worklist.")
why = st.session_state.pop("signed_out_why", None)
if why:
    st.info(why)
with st.form("sign_in_form", clear_on_submit=True):
    name = st.text_input("Reviewer name", key="sign_in_name", autocomplete="username")
    password = st.text_input(  # "current-password": a password manager may fill it in
        "Password", type="password", key="sign_in_password", autocomplete="current-password"
    )
    submitted = st.form_submit_button("Sign in", type="primary", key="sign_in_submit")
if submitted:
    refused = ui.sign_in(name, password)
    if refused is None:
        st.rerun()
    st.error(refused)
if ui.oidc_configured():
    st.divider()
    st.button("Sign in with your organisation account", on_click=st.login, key="sign_in_oidc")
st.caption("No account? An administrator adds one with `medres review add-user NAME --store DB`.")
