"""Dashboard: how much is reviewed, how often reviewers agree (overall, by class, by site),
the model's calibration against reviewer labels, referral statistics, and with several
readers: Cohen's kappa between readers and against the model, the adjudication queue,
and in blinded runs how often readers changed their mind after seeing the model."""

import streamlit as st
from matplotlib.figure import Figure

from medres.review import ui
from medres.review.summary import (
    agreement_tables,
    mind_change_table,
    referral_reasons,
    reliability,
)


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
    loaded = store.runs()
    names = {} if loaded.empty else {c: n for m in loaded["class_names"] for c, n in m.items()}
    per_class = stats["per_class"]
    shown = per_class["predicted_class"].map(lambda c: names.get(c, c))
    per_class = per_class.assign(predicted_class=shown)
    st.dataframe(per_class, hide_index=True, key="dash_class")
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

st.subheader("Readers")
agreement = store.agreement()
queue = store.adjudication_queue()
runs = store.runs()
st.metric(
    "Adjudication queue",
    len(queue),
    help="Cases whose assigned readers disagree (or one is uncertain), not yet adjudicated",
)
between, against = st.columns(2)
pairs, model = agreement_tables(agreement)
with between:
    st.markdown("**Reader vs reader**")
    if pairs.empty:
        st.caption("Appears once two readers have read the same cases.")
    else:
        st.dataframe(pairs, hide_index=True, key="dash_kappa_pairs")
with against:
    st.markdown("**Reader vs model**")
    if model.empty:
        st.caption("Appears once readers have decided some cases.")
    else:
        st.dataframe(model, hide_index=True, key="dash_kappa_model")
st.caption(
    "Cohen's κ on the cases both read: 1 full agreement, 0 no more than chance. "
    "95 % bootstrap intervals over cases; uncertain counts as a label of its own; "
    "— where κ is undefined (every case got the same label)."
)
if not runs.empty and runs["blinded"].any():
    st.markdown("**Mind changes (blinded runs)**")
    changes = store.mind_changes()
    if changes.empty:
        st.caption("Appears once readers have decided cases after a first impression.")
    else:
        st.dataframe(mind_change_table(changes), hide_index=True, key="dash_mind_changes")
        st.caption(
            "Cases where the final label differs from the reader's first impression, "
            "recorded before the model's output was shown; towards the model: the new "
            "label is the model's."
        )
