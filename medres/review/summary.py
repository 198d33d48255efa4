"""Plain-language badges for a case and the dashboard's tables (no Streamlit, no files).

:func:`case_badges` says in one line each what the conformal set, the uncertainty and
the out-of-distribution score of a case mean; :func:`reliability` and
:func:`referral_reasons` turn the store's worklist into the dashboard's figures;
:func:`agreement_tables` and :func:`mind_change_table` word the readers' kappas and
mind changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

UNCERTAIN_REASON = "uncertainty above the validation threshold"
OOD_REASON = "out of distribution"


@dataclass(frozen=True)
class Badge:
    """A short label, its colour (green / orange / red) and one plain sentence."""

    label: str
    colour: str
    explanation: str


def case_badges(case: dict[str, Any]) -> list[Badge]:
    """The conformal-set, uncertainty and OOD badges of a case (a ``ReviewStore.case``
    dict or a worklist row)."""
    return [_conformal(case), _uncertainty(case), _ood(case)]


def _conformal(case: dict[str, Any]) -> Badge:
    members = list(case.get("conformal_set") or [])
    shown = "{" + ", ".join(members) + "}"
    if len(members) == 1:
        return Badge(
            f"Conformal set {shown}",
            "green",
            "Only this class is plausible at the coverage the model was calibrated for "
            "(90 % unless set otherwise).",
        )
    if not members:
        return Badge(
            "Empty conformal set",
            "red",
            "No class is plausible for this scan: it is unlike what the model learned.",
        )
    return Badge(
        f"Conformal set {shown}",
        "orange",
        f"The model cannot rule out any of these {len(members)} classes: the true class "
        "is among them at the calibrated coverage, but it cannot say which.",
    )


def _uncertainty(case: dict[str, Any]) -> Badge:
    value = float(case.get("uncertainty") or 0.0)
    high = UNCERTAIN_REASON in (case.get("refer_reason") or "")
    sentence = (
        f"1 − the highest calibrated probability ({value:.2f}): 0 means sure, 0.5 a coin "
        "toss between two classes"
    )
    if high:
        return Badge(
            f"High uncertainty {value:.2f}",
            "orange",
            sentence + "; above the level where validation accuracy fell below target.",
        )
    return Badge(f"Uncertainty {value:.2f}", "green", sentence + ".")


def _ood(case: dict[str, Any]) -> Badge:
    score = case.get("ood_score")
    distance = "" if score is None else f" (feature distance {float(score):.3g})"
    if case.get("ood"):
        return Badge(
            "Out of distribution",
            "red",
            f"This scan looks unlike the images the model was trained on{distance}: "
            "do not rely on the prediction.",
        )
    return Badge(
        "In distribution",
        "green",
        f"This scan resembles the images the model was trained on{distance}.",
    )


def reliability(table: pd.DataFrame, bins: int = 10) -> pd.DataFrame:
    """Calibrated confidence against the reviewers' verdicts, for a reliability diagram.

    Args:
        table: worklist rows with ``confidence`` and ``decision``; only agree (the
            model was right) and disagree (it was wrong) count.
        bins: equal-width confidence bins over [0, 1].

    Returns one row per non-empty bin: ``bin`` (e.g. ``0.8–0.9``), ``confidence``
    (mean calibrated confidence), ``accuracy`` (share the reviewers agreed with),
    ``cases``. A calibrated model has accuracy ≈ confidence in every bin.
    """
    judged = table[table["decision"].isin(["agree", "disagree"]) & table["confidence"].notna()]
    columns = ["bin", "confidence", "accuracy", "cases"]
    if judged.empty:
        return pd.DataFrame(columns=columns)
    confidence = judged["confidence"].astype(float).clip(0.0, 1.0).to_numpy()
    correct = (judged["decision"] == "agree").to_numpy()
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    rows = []
    for k in np.unique(index):
        inside = index == k
        rows.append(
            {
                "bin": f"{k / bins:.1f}–{(k + 1) / bins:.1f}",
                "confidence": float(confidence[inside].mean()),
                "accuracy": float(correct[inside].mean()),
                "cases": int(inside.sum()),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def referral_reasons(table: pd.DataFrame) -> pd.DataFrame:
    """How many cases each referral reason sent to a reviewer, and how the reviewers
    judged them: ``reason``, ``cases``, ``reviewed``, ``agree``, ``disagree``.

    ``refer_reason`` lists several reasons joined by ``; ``: a case counts once under
    each; ``(not referred)`` collects the rest.
    """
    rows: dict[str, dict[str, Any]] = {}
    for reason_text, decision in zip(table["refer_reason"], table["decision"], strict=True):
        reasons = [r.strip() for r in (reason_text or "").split(";") if r.strip()]
        for reason in reasons or ["(not referred)"]:
            row = rows.setdefault(
                reason, {"reason": reason, "cases": 0, "reviewed": 0, "agree": 0, "disagree": 0}
            )
            row["cases"] += 1
            if isinstance(decision, str):
                row["reviewed"] += 1
                if decision in ("agree", "disagree"):
                    row[decision] += 1
    columns = ["reason", "cases", "reviewed", "agree", "disagree"]
    result = pd.DataFrame(list(rows.values()), columns=columns)
    return result.sort_values(["cases", "reason"], ascending=[False, True]).reset_index(drop=True)


def reasons_in(table: pd.DataFrame) -> list[str]:
    """The distinct referral reasons of a worklist, sorted (for a filter)."""
    found = {
        r.strip() for text in table["refer_reason"].fillna("") for r in text.split(";") if r.strip()
    }
    return sorted(found)


def kappa_text(kappa, low, high) -> str:
    """``0.60 (95 % CI 0.25–0.86)``; ``—`` where kappa is undefined (NaN)."""
    if kappa is None or pd.isna(kappa):
        return "—"
    if low is None or pd.isna(low) or pd.isna(high):
        return f"{kappa:.2f}"
    return f"{kappa:.2f} (95 % CI {low:.2f}–{high:.2f})"


def agreement_tables(agreement) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The dashboard's two kappa tables from a :class:`medres.review.agreement.Agreement`:
    ``Readers`` / ``Cases`` / ``Cohen's κ`` (with its interval) between readers, and
    ``Reader`` / ``Cases`` / ``κ vs the model`` per reader."""
    pairs = pd.DataFrame(
        {
            "Readers": [
                f"{a} · {b}"
                for a, b in zip(
                    agreement.pairs["reader_a"], agreement.pairs["reader_b"], strict=True
                )
            ],
            "Cases": agreement.pairs["n"].astype(int),
            "Cohen's κ": [
                kappa_text(*r)
                for r in agreement.pairs[["kappa", "low", "high"]].itertuples(index=False)
            ],
        }
    )
    model = pd.DataFrame(
        {
            "Reader": agreement.model["reviewer"],
            "Cases": agreement.model["n"].astype(int),
            "κ vs the model": [
                kappa_text(*r)
                for r in agreement.model[["kappa", "low", "high"]].itertuples(index=False)
            ],
        }
    )
    return pairs, model


def mind_change_table(changes: pd.DataFrame) -> pd.DataFrame:
    """``ReviewStore.mind_changes`` with readable headers: Reader, Cases (first impression
    and decision), Changed (final label ≠ first impression), Rate, Towards the model."""
    return pd.DataFrame(
        {
            "Reader": changes["reviewer"],
            "Cases": changes["cases"].astype(int),
            "Changed": changes["changed"].astype(int),
            "Rate": [f"{r:.0%}" for r in changes["rate"]],
            "Towards the model": changes["to_model"].astype(int),
        }
    )
