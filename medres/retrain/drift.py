"""Cohort drift: how a new cohort differs from an old one, and how a bundle sees both.

:func:`drift_report` compares two cohorts (e.g. the training cohort and tonight's scans)
on label prevalence, site and modality mix, intensity statistics read from a random
sample of the scans, and — given a bundle — the model's confidence, OOD rate and
predicted-class mix on the same samples. Each comparison carries a test (χ² for mixes,
two-sample Kolmogorov–Smirnov for per-scan values, Fisher's exact test for the OOD
rate) and the findings name the shifts significant at ``alpha``.

:mod:`medres.retrain.drift_write` writes it: ``write_drift`` (``drift.md``,
``drift.json``, ``drift_scans.csv``, plots) and ``drift_markdown`` (the Markdown alone,
to embed in another report)::

    report = drift_report(Cohort.load(old), Cohort.load(new), load_bundle(b))
    write_drift(report, out / "drift")            # the plots land in out/drift/
    section = drift_markdown(report, plot_prefix="drift/", level=2)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medres.bundle import Bundle, load_bundle
from medres.cohort import Cohort
from medres.errors import ConfigError
from medres.files import jsonable
from medres.retrain.drift_samples import (
    INTENSITY,
    MAX_VOXELS,
    ModelDrift,
    check_dims,
    draw_sample,
    load_cohort,
    read_samples,
    rows_in_scope,
    scan_statistics,
)
from medres.retrain.drift_stats import Mix, Shift, mix, num_text, p_text, shift, test_text
from medres.tasks import MAX_AUTO_CLASSES, label_key

__all__ = [
    "INTENSITY",
    "MAX_VOXELS",
    "TESTED",
    "DriftReport",
    "Mix",
    "ModelDrift",
    "Shift",
    "Side",
    "drift_report",
    "num_text",
    "p_text",
    "scan_statistics",
    "test_text",
]

TESTED = ("mean", "sd")  # the ones compared by a KS test (the others are shown)


@dataclass
class Side:
    """One cohort: where it came from, how many readable rows are in scope (``rows``),
    rows that failed at ingest (``error_rows``), scans sampled and unreadable now, and
    ``scans``: one row per sampled readable scan with the :data:`INTENSITY` statistics
    (plus confidence, ood, ood_score, predicted / prediction with a bundle)."""

    source: str
    fingerprint: str
    rows: int
    error_rows: int
    sampled: int
    unreadable: int
    scans: pd.DataFrame
    labelled: int = 0


@dataclass
class DriftReport:
    """Everything :func:`write_drift` writes. ``labels`` is None (with ``label_note``
    saying why) when a cohort has no labels; ``label_shift`` holds continuous labels."""

    old: Side
    new: Side
    split: str | None
    alpha: float
    seed: int
    labels: Mix | None
    label_shift: Shift | None
    label_note: str
    sites: Mix
    modalities: Mix
    intensity: list[Shift]
    model: ModelDrift | None
    findings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The numbers, JSON-ready: the fields above, nested as they are (tables as lists
        of rows), without the per-scan ``scans`` tables (see ``drift_scans.csv``)."""
        return jsonable(_plain(self))


def _plain(x):
    if isinstance(x, pd.DataFrame):
        return x.to_dict("records")
    if is_dataclass(x):
        return {f.name: _plain(getattr(x, f.name)) for f in fields(x) if f.name != "scans"}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def drift_report(
    old: Cohort | str | Path,
    new: Cohort | str | Path,
    bundle: Bundle | str | Path | None = None,
    *,
    split: str | None = None,
    max_scans: int = 500,
    seed: int = 0,
    alpha: float = 0.01,
    show_progress: bool = False,
) -> DriftReport:
    """Compare two cohorts' readable rows (of one ``split`` if given).

    Prevalence and site / modality mix use every row in scope; intensity and the
    bundle's outputs use a random sample of up to ``max_scans`` scans per cohort
    (``seed``). A scan that cannot be read now is counted, not fatal. Findings are the
    shifts with p < ``alpha``. Cohorts and the bundle may be given as paths.

    Raises:
        ConfigError: a cohort has no readable scans (in the split), none of a sample
            could be read, or the bundle cannot take the cohorts' scans (2D vs 3D).
    """
    if max_scans < 1 or not 0 < alpha < 1:
        raise ConfigError(f"need max_scans >= 1 and 0 < alpha < 1; got {max_scans}, {alpha}")
    old_c, old_src = load_cohort(old)
    new_c, new_src = load_cohort(new)
    bundle = load_bundle(bundle) if isinstance(bundle, str | Path) else bundle
    rng = np.random.default_rng(seed)
    rows = {
        "old": rows_in_scope(old_c, old_src, split, "old"),
        "new": rows_in_scope(new_c, new_src, split, "new"),
    }
    samples = {k: draw_sample(r, max_scans, rng).reset_index(drop=True) for k, r in rows.items()}
    if bundle is not None:
        for k, s in samples.items():
            check_dims(bundle, s, k)
    read, model = read_samples(samples, bundle, show_progress)
    sides = {
        k: _side(cohort, src, split, rows[k], samples[k], read[k])
        for k, cohort, src in (("old", old_c, old_src), ("new", new_c, new_src))
    }
    labels, label_shift, note = _label_drift(rows["old"], rows["new"], bundle)
    report = DriftReport(
        sides["old"],
        sides["new"],
        split,
        alpha,
        seed,
        labels,
        label_shift,
        note,
        mix("site", rows["old"]["site"], rows["new"]["site"]),
        mix("modality", rows["old"]["modality"], rows["new"]["modality"]),
        _intensity_shifts(read["old"][0], read["new"][0]),
        model,
    )
    report.findings = _findings(report)
    return report


def _side(
    cohort: Cohort,
    source: str,
    split: str | None,
    rows: pd.DataFrame,
    sample: pd.DataFrame,
    read: tuple[pd.DataFrame, int],
) -> Side:
    """One cohort's :class:`Side`: its readable ``rows`` in scope, its rows (of ``split``)
    that failed at ingest, its ``sample`` and what reading it gave (scans, unreadable)."""
    in_split = cohort.table if split is None else cohort.table[cohort.table["split"] == split]
    scans, unreadable = read
    return Side(
        source,
        cohort.fingerprint(),
        len(rows),
        int((in_split["status"] != "ok").sum()),
        len(sample),
        unreadable,
        scans,
        int(rows["label"].notna().sum()),
    )


def _intensity_shifts(old: pd.DataFrame, new: pd.DataFrame) -> list[Shift]:
    """One :class:`Shift` per :data:`INTENSITY` statistic of the sampled scans (KS-tested
    for :data:`TESTED`)."""
    return [shift(f"intensity {s}", old[s], new[s], s in TESTED) for s in INTENSITY]


def _label_drift(old: pd.DataFrame, new: pd.DataFrame, bundle: Bundle | None):
    """(label mix, continuous-label shift, note): one of the first two, or a note why
    neither applies."""
    o, n = old["label"].dropna(), new["label"].dropna()
    if o.empty or n.empty:
        which = " and ".join(k for k, v in (("old", o), ("new", n)) if v.empty)
        return None, None, f"no label prevalence: the {which} cohort has no labels"
    if _continuous(o) or _continuous(n) or (bundle and not bundle.info.kind.classifies):
        values = [pd.to_numeric(v, errors="coerce") for v in (o, n)]
        return None, shift("label", *values, True), "continuous labels: medians compared"
    order = None
    if bundle is not None:
        order = [label_key(c) for c in bundle.info.classes]
    return mix("label", o.map(label_key), n.map(label_key), order), None, ""


def _continuous(labels: pd.Series) -> bool:
    """Numbers that are not class codes: some not whole, or too many to be classes."""
    numbers = pd.to_numeric(labels, errors="coerce")
    if numbers.isna().any():
        return False
    return bool((numbers % 1 != 0).any() or numbers.nunique() > MAX_AUTO_CLASSES)


# -------------------------------------------------------------------------- findings


def _findings(r: DriftReport) -> list[str]:
    """Plain-language lines: each shift with p < alpha, then counts worth knowing."""
    mixes = [r.labels, r.sites, r.modalities, r.model.predicted if r.model else None]
    shifts = [r.label_shift, *r.intensity, *(r.model.shifts if r.model else [])]
    found = [_mix_line(m) for m in mixes if m is not None and m.p_value < r.alpha]
    found += [_shift_line(s) for s in shifts if s is not None and s.p_value < r.alpha]
    if not found:
        found.append(
            f"no shift detected at α = {r.alpha:g} (label and site / modality mix, intensity"
            + (", model outputs)" if r.model else ")")
        )
    notes = []
    for which, side in (("old", r.old), ("new", r.new)):
        if side.unreadable:
            notes.append(
                f"{side.unreadable} of {side.sampled} sampled {which} scans are unreadable"
            )
        if r.model and r.model.failed.get(which):
            notes.append(
                f"{r.model.failed[which]} sampled {which} scans could not be preprocessed "
                "for the bundle"
            )
    few = min(len(r.old.scans), len(r.new.scans))
    if few < 20:
        notes.append(f"only {few} scans in the smaller sample: small shifts go undetected")
    if r.label_note and r.labels is None and r.label_shift is None:
        notes.append(r.label_note)
    return found + notes


def _mix_line(mix: Mix) -> str:
    t = mix.table
    if len(t) == 2 and mix.name in ("label", "predicted"):
        row = t.iloc[-1]  # binary: the positive class (last in the bundle's order)
    else:
        row = t.loc[t["difference"].abs().idxmax()]
    return (
        f"{mix.name} {row['value']} share {row['old_share']:.2f} → {row['new_share']:.2f} "
        f"(χ² {p_text(mix.p_value)})"
    )


def _shift_line(s: Shift) -> str:
    return f"{s.stat} {s.name}".strip() + f" {num_text(s.old)} → {num_text(s.new)} ({test_text(s)})"
