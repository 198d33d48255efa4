"""Dashboard: how much is reviewed, how often reviewers agree (overall, by class, by site),
the model's calibration against reviewer labels, and referral statistics."""

import streamlit as st
from matplotlib.figure import Figure

from medres.review import ui
from medres.review.summary import referral_reasons, reliability


def rate(value) -> str:
    return "—" if value is None else f"{value:.0%}"


def reliability_figure(bins):
    """Mean calibrated confidence against the share the reviewers agreed with."""
    figure = Figure(figsize=(4, 4))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    axes.plot(bins["confidence"], bins["accuracy"], marker="o", label="model")
    for row in bins.itertuples():
        axes.annotate(str(row.cases), (row.confidence, row.accuracy), fontsize=8)
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="calibrated confidence", ylabel="reviewers agree")
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return figure


ui.require_reviewer()
store = ui.store()
st.title("Dashboard")
stats = store.stats()
metrics = st.columns(5)
metrics[0].metric("Reviewed", f"{stats['reviewed']} / {stats['cases']}")
metrics[1].metric("Agreement", rate(stats["agreement_rate"]), help="agree / (agree + disagree)")
metrics[2].metric("Disagree", stats["disagree"])
metrics[3].metric("Uncertain", stats["uncertain"])
metrics[4].metric("Referred", stats["referred"], help=f"{stats['ood']} out of distribution")

by_class, by_site = st.columns(2)
with by_class:
    st.subheader("By predicted class")
    st.dataframe(stats["per_class"], hide_index=True, key="dash_class")
with by_site:
    st.subheader("By site")
    st.dataframe(stats["per_site"], hide_index=True, key="dash_site")

everything = store.worklist(status="all")
calibration, referral = st.columns(2)
with calibration:
    st.subheader("Calibration on reviewed cases")
    bins = reliability(everything)
    if bins.empty:
        st.caption("Appears once reviewers have agreed or disagreed with some cases.")
    else:
        st.pyplot(reliability_figure(bins), width="content")
        st.caption(
            "Each point: the cases in one confidence bin (their number beside it). On the "
            "diagonal, the model's confidence matches how often reviewers agree."
        )
with referral:
    st.subheader("Referrals")
    st.dataframe(referral_reasons(everything), hide_index=True, key="dash_referral")
    st.caption("A case with several reasons counts under each.")
