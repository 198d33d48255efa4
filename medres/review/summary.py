"""Plain-language badges for a case and the dashboard's tables (no Streamlit, no files).

:func:`case_badges` says in one line each what the conformal set, the uncertainty and
the out-of-distribution score of a case mean; :func:`reliability` and
:func:`referral_reasons` turn the store's worklist into the dashboard's figures.
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
