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

import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from medres.bundle import Bundle, load_bundle
from medres.cohort import Cohort, read_row
from medres.errors import ConfigError, ScanError
from medres.files import jsonable
from medres.tasks import MAX_AUTO_CLASSES, Task, label_key, predicted_class, task_named

INTENSITY = ("mean", "sd", "p1", "p50", "p99")  # per-scan statistics, the scans' stored units
TESTED = ("mean", "sd")  # the ones compared by a KS test (the others are shown)
MAX_VOXELS = 1_000_000  # percentiles of a larger scan use this many voxels drawn at random


@dataclass
class Mix:
    """Shares of one categorical column in both cohorts. ``table``: value, old_n,
    old_share, new_n, new_share, difference (new − old share); ``p_value``: χ² test of
    homogeneity (NaN with fewer than two values or an empty side)."""

    name: str
    table: pd.DataFrame
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return {"p_value": self.p_value, "values": self.table.to_dict("records")}


@dataclass
class Shift:
    """One quantity in both cohorts: ``old``, ``new`` (the ``stat`` — median or mean — of
    per-scan values, or a rate when ``stat`` is empty) and the p-value of ``test``
    (KS, Fisher; NaN and "" when not tested). ``ks_d``: the KS statistic, the largest
    gap between the two cumulative distributions (0 to 1): the size of a KS shift."""

    name: str
    old: float
    new: float
    p_value: float = math.nan
    test: str = "KS"
    stat: str = "median"
    ks_d: float = math.nan


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
class ModelDrift:
    """What a bundle says about both samples. ``shifts``: confidence (mean calibrated
    max probability; raw softmax without a trust layer), OOD rate (classifiers with an
    OOD model) or median prediction (regression); ``predicted``: predicted-class mix;
    ``failed``: scans per side the bundle's preprocessing refused."""

    bundle_id: str
    task: str
    calibrated: bool
    shifts: list[Shift]
    predicted: Mix | None
    failed: dict[str, int]

    @property
    def kind(self) -> Task:
        """The bundle's :class:`~medres.tasks.Task`."""
        return task_named(self.task)


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
    old_c, old_src = _cohort(old)
    new_c, new_src = _cohort(new)
    bundle = load_bundle(bundle) if isinstance(bundle, str | Path) else bundle
    rng = np.random.default_rng(seed)
    rows = {
        "old": _in_scope(old_c, old_src, split, "old"),
        "new": _in_scope(new_c, new_src, split, "new"),
    }
    samples = {k: _sample(r, max_scans, rng).reset_index(drop=True) for k, r in rows.items()}
    if bundle is not None:
        for k, s in samples.items():
            _check_dims(bundle, s, k)
    read, model = _read_samples(samples, bundle, show_progress)
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
        _mix("site", rows["old"]["site"], rows["new"]["site"]),
        _mix("modality", rows["old"]["modality"], rows["new"]["modality"]),
        _intensity_shifts(read["old"][0], read["new"][0]),
        model,
    )
    report.findings = _findings(report)
    return report


def _read_samples(
    samples: dict[str, pd.DataFrame], bundle: Bundle | None, show_progress: bool
) -> tuple[dict[str, tuple[pd.DataFrame, int]], ModelDrift | None]:
    """Read each side's sample (its per-scan :data:`INTENSITY` table and unreadable
    count) and, given a bundle, run it on both, under one progress display (on stderr,
    shown with ``show_progress``)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    from medres.progress import progress as progress_display

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    console = Console(stderr=True)
    display = progress_display(*columns, console=console, transient=True, disable=not show_progress)
    with display as bar:
        read = {k: _read_sample(s, k, bar) for k, s in samples.items()}
        model = None if bundle is None else _model_drift(bundle, samples, read, bar)
    return read, model


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
    return [_shift(f"intensity {s}", old[s], new[s], s in TESTED) for s in INTENSITY]


# ------------------------------------------------------------------------- gathering


def _cohort(cohort: Cohort | str | Path) -> tuple[Cohort, str]:
    if isinstance(cohort, str | Path):
        return Cohort.load(cohort), str(Path(cohort).resolve())
    return cohort, str(cohort.meta.get("root") or "(cohort in memory)")


def _in_scope(cohort: Cohort, source: str, split: str | None, which: str) -> pd.DataFrame:
    rows = cohort.ok
    if split is not None:
        known = sorted(rows["split"].dropna().astype(str).unique())
        rows = rows[rows["split"] == split]
        if rows.empty:
            raise ConfigError(
                f"the {which} cohort ({source}) has no readable '{split}' scans; choose "
                f"--split among {known} or leave it out"
            )
    if rows.empty:
        raise ConfigError(
            f"the {which} cohort ({source}) has no readable scans ({len(cohort.table)} rows, "
            "none with status=ok); fix or replace the files and run `medres ingest` again"
        )
    return rows


def _sample(rows: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    if len(rows) <= n:
        return rows
    return rows.iloc[np.sort(rng.choice(len(rows), n, replace=False))]


def _check_dims(bundle: Bundle, rows: pd.DataFrame, which: str) -> None:
    """Refuse before any reading when no sampled scan has the bundle's 2D / 3D shape."""
    dims = bundle.spec.spatial_dims
    found = {len(s) - 1 for s in rows["shape"] if isinstance(s, list | tuple | np.ndarray)}
    if found and dims not in found:
        raise ConfigError(
            f"bundle {bundle.path} takes {dims}D scans (preset {bundle.spec.preset}) but the "
            f"{which} cohort holds {'/'.join(map(str, sorted(found)))}D scans; drop --bundle "
            "or use a bundle trained on scans like these"
        )


def scan_statistics(array: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, float]:
    """mean, sd, 1st / 50th / 99th percentile of a scan's voxels (all channels), in its
    stored units; non-finite voxels ignored; percentiles over at most :data:`MAX_VOXELS`."""
    values = np.asarray(array, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return dict.fromkeys(INTENSITY, math.nan)
    some = values
    if values.size > MAX_VOXELS:
        rng = rng or np.random.default_rng(0)
        some = values[rng.integers(0, values.size, MAX_VOXELS)]
    p1, p50, p99 = np.percentile(some, [1, 50, 99])
    return {"mean": values.mean(), "sd": values.std(), "p1": p1, "p50": p50, "p99": p99}


def _read_sample(rows: pd.DataFrame, which: str, bar) -> tuple[pd.DataFrame, int]:
    """Per-scan intensity statistics of the readable sampled scans (indexed like
    ``rows``), and how many could not be read."""
    task = bar.add_task(f"Reading {which} scans", total=len(rows))
    kept, found, failures = [], [], []
    for index, row in rows.iterrows():
        try:
            array = read_row(row).array
        except ScanError as e:
            failures.append(str(e))
        else:
            kept.append(index)
            found.append({"scan_id": row["scan_id"], **scan_statistics(array)})
        bar.advance(task)
    if not found:
        raise ConfigError(
            f"none of the {len(rows)} sampled {which} scans could be read now (first: "
            f"{failures[0]}); the files moved or changed since ingest: ingest them again"
        )
    return pd.DataFrame(found, index=kept, columns=["scan_id", *INTENSITY]), len(failures)


def _model_drift(bundle: Bundle, samples, read, bar) -> ModelDrift:
    """Score each side's readable sample with the bundle (its own preprocessing and
    trust layer); the per-scan outputs become columns of ``read[side][0]``."""
    from medres.inference import score_rows  # torch: imported only when a bundle is given

    info, trust = bundle.info, bundle.trust
    failed = {}
    for which, (scans, _) in read.items():
        rows = samples[which].loc[scans.index]
        task = bar.add_task(f"Scoring {which} scans with the bundle", total=len(rows))
        scored = score_rows(bundle.model, info, bundle.spec, rows, with_targets=False)
        bar.update(task, completed=len(rows))
        failed[which] = len(scored.failures)
        if scored.rows.empty:
            raise ConfigError(
                f"bundle {bundle.path} could not preprocess any of the {len(rows)} sampled "
                f"{which} scans (first: {scored.failures['message'].iloc[0]}); use a bundle "
                "trained on scans like these, or drop --bundle"
            )
        index = scored.rows.index
        if not info.kind.classifies:
            scans.loc[index, "prediction"] = scored.scores(info)
            continue
        assessment = trust.assess(scored.outputs, scored.features) if trust else None
        probs = assessment.probs if assessment else scored.scores(info)
        scans.loc[index, "confidence"] = probs.max(axis=1)
        classes = [label_key(c) for c in info.classes]
        scans.loc[index, "predicted"] = [classes[i] for i in predicted_class(info.task, probs)]
        if trust is not None and trust.ood is not None:
            scans.loc[index, "ood_score"] = assessment.ood_score
            scans.loc[index, "ood"] = assessment.ood.astype(float)
    old, new = read["old"][0], read["new"][0]
    shifts, predicted = [], None
    if not info.kind.classifies:
        shifts.append(_shift("prediction", old["prediction"], new["prediction"], True))
    else:
        shifts.append(_shift("confidence", old["confidence"], new["confidence"], True, stat="mean"))
        if "ood" in old:
            shifts.append(_rate("OOD rate", old["ood"], new["ood"]))
        order = [label_key(c) for c in info.classes]
        predicted = _mix("predicted", old["predicted"].dropna(), new["predicted"].dropna(), order)
    return ModelDrift(bundle.id, info.task, trust is not None, shifts, predicted, failed)


def _label_drift(old: pd.DataFrame, new: pd.DataFrame, bundle: Bundle | None):
    """(label mix, continuous-label shift, note): one of the first two, or a note why
    neither applies."""
    o, n = old["label"].dropna(), new["label"].dropna()
    if o.empty or n.empty:
        which = " and ".join(k for k, v in (("old", o), ("new", n)) if v.empty)
        return None, None, f"no label prevalence: the {which} cohort has no labels"
    if _continuous(o) or _continuous(n) or (bundle and not bundle.info.kind.classifies):
        values = [pd.to_numeric(v, errors="coerce") for v in (o, n)]
        return None, _shift("label", *values, True), "continuous labels: medians compared"
    order = None
    if bundle is not None:
        order = [label_key(c) for c in bundle.info.classes]
    return _mix("label", o.map(label_key), n.map(label_key), order), None, ""


def _continuous(labels: pd.Series) -> bool:
    """Numbers that are not class codes: some not whole, or too many to be classes."""
    numbers = pd.to_numeric(labels, errors="coerce")
    if numbers.isna().any():
        return False
    return bool((numbers % 1 != 0).any() or numbers.nunique() > MAX_AUTO_CLASSES)


def _mix(name: str, old: pd.Series, new: pd.Series, order: list[str] | None = None) -> Mix:
    """Counts and shares per value (missing values as ``unknown``) and a χ² p-value."""
    o, n = (s.astype(object).where(s.notna(), "unknown").astype(str) for s in (old, new))
    seen = set(o) | set(n)
    first = [v for v in order or [] if v in seen]
    values = first + sorted(seen - set(first), key=_natural)
    counts = np.array([[int((s == v).sum()) for v in values] for s in (o, n)])
    totals = counts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = counts / totals
    p = math.nan
    if len(values) > 1 and totals.min() > 0:
        p = float(stats.chi2_contingency(counts).pvalue)
    table = pd.DataFrame(
        {
            "value": values,
            "old_n": counts[0],
            "old_share": shares[0],
            "new_n": counts[1],
            "new_share": shares[1],
            "difference": shares[1] - shares[0],
        }
    )
    return Mix(name, table, p)


def _natural(value: str):
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _shift(name: str, old, new, test: bool, stat: str = "median") -> Shift:
    """``stat`` (median or mean) of each side's finite values; a two-sample KS test."""
    o, n = (pd.to_numeric(pd.Series(v), errors="coerce").to_numpy(float) for v in (old, new))
    o, n = o[np.isfinite(o)], n[np.isfinite(n)]
    agg = np.median if stat == "median" else np.mean
    d = p = math.nan
    if test and len(o) and len(n):
        result = stats.ks_2samp(o, n)
        d, p = float(result.statistic), float(result.pvalue)
    old_v = float(agg(o)) if len(o) else math.nan
    new_v = float(agg(n)) if len(n) else math.nan
    return Shift(name, old_v, new_v, p, "KS" if test else "", stat, d)


def _rate(name: str, old: pd.Series, new: pd.Series) -> Shift:
    """Share of flagged scans on each side; Fisher's exact test on the 2×2 table."""
    o, n = old.dropna().astype(bool), new.dropna().astype(bool)
    table = [[int(o.sum()), int((~o).sum())], [int(n.sum()), int((~n).sum())]]
    p = float(stats.fisher_exact(table).pvalue) if len(o) and len(n) else math.nan
    return Shift(name, float(o.mean()), float(n.mean()), p, "Fisher", "")


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


def test_text(s: Shift) -> str:
    if not s.test:
        return "—"
    size = "" if s.ks_d != s.ks_d else f"D = {s.ks_d:.2f}, "
    return f"{s.test} {size}{p_text(s.p_value)}"


def p_text(p: float) -> str:
    if p != p:
        return "—"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def num_text(x: float) -> str:
    return "—" if x != x else f"{x:.4g}"
