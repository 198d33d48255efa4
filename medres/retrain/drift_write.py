"""Writing a :class:`~medres.retrain.drift.DriftReport`: ``drift.md``, ``drift.json``,
``drift_scans.csv`` and the plots (matplotlib Agg), or the Markdown alone to embed in
another report (``medres compare``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medres.files import atomic_write, write_json, write_text
from medres.retrain.drift import DriftReport, Mix, ModelDrift, Shift, num_text, p_text, test_text


def write_drift(report: DriftReport, out_dir: str | Path) -> Path:
    """Write ``drift.md``, ``drift.json``, ``drift_scans.csv`` (one row per sampled
    readable scan: cohort, scan_id, intensity statistics, model outputs) and the plots
    that apply into ``out_dir``, atomically; returns the ``drift.md`` path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_drift_plots(report, out)
    write_json(out / "drift.json", report.to_dict() | {"plots": plots})
    scans = pd.concat(
        [report.old.scans.assign(cohort="old"), report.new.scans.assign(cohort="new")]
    )
    table = scans[["cohort", *scans.columns[:-1]]]
    write_text(out / "drift_scans.csv", table.to_csv(index=False), private=True)
    return write_text(out / "drift.md", drift_markdown(report, plots=plots))


def drift_markdown(
    report: DriftReport, *, plot_prefix: str = "", level: int = 1, plots: list[str] | None = None
) -> str:
    """The report as Markdown. Headings start at ``level`` (2 to nest it in another
    report); plots are linked as ``plot_prefix + name`` (e.g. ``"drift/"`` when
    :func:`write_drift` wrote into a ``drift`` folder beside the embedding report);
    ``plots`` defaults to those that apply to ``report``."""
    r, h = report, "#" * level
    plots = _plots_for(r) if plots is None else plots
    lines = _overview_lines(r, h)
    lines += _prevalence_lines(r, h, plot_prefix, plots)
    for mix in (r.sites, r.modalities):
        lines += ["", f"{h}# {mix.name.capitalize()} mix", "", *_mix_table(mix)]
    lines += _intensity_lines(r, h, plot_prefix, plots)
    if r.model is not None:
        lines += _model_lines(r.model, h, plot_prefix, plots)
    return "\n".join(lines).rstrip("\n") + "\n"


def _overview_lines(r: DriftReport, h: str) -> list[str]:
    """The title (heading ``h``), the old / new counts table and the findings."""
    where = f"split `{r.split}`" if r.split else "all splits"
    return [
        f"{h} Cohort drift",
        "",
        "| | old | new |",
        "|---|---|---|",
        f"| cohort | `{_cell(r.old.source)}` | `{_cell(r.new.source)}` |",
        f"| fingerprint | `{r.old.fingerprint[:16]}` | `{r.new.fingerprint[:16]}` |",
        f"| readable scans ({where}) | {r.old.rows} | {r.new.rows} |",
        f"| rows unreadable at ingest | {r.old.error_rows} | {r.new.error_rows} |",
        f"| labelled scans | {r.old.labelled} | {r.new.labelled} |",
        f"| scans sampled (seed {r.seed}) | {r.old.sampled} | {r.new.sampled} |",
        f"| sampled scans unreadable now | {r.old.unreadable} | {r.new.unreadable} |",
        "",
        f"{h}# Findings",
        "",
        f"Significance level α = {r.alpha:g} for every test (χ² for mixes, two-sample "
        "Kolmogorov–Smirnov for per-scan values, Fisher's exact test for the OOD rate); "
        "with large cohorts even small shifts are significant, so read the sizes too.",
        "",
        *(f"- {line}" for line in r.findings),
        "",
    ]


def _prevalence_lines(r: DriftReport, h: str, plot_prefix: str, plots: list[str]) -> list[str]:
    """The label prevalence section: a mix (classes), a shift (regression targets) or
    why there is neither, then its plot's link."""
    lines = [f"{h}# Label prevalence", ""]
    if r.labels is not None:
        lines += _mix_table(r.labels)
    elif r.label_shift is not None:
        lines += _shift_table([r.label_shift])
    else:
        lines.append(f"{r.label_note}.")
    return [*lines, "", *_plot_link(plot_prefix, "drift_prevalence.png", plots)]


def _intensity_lines(r: DriftReport, h: str, plot_prefix: str, plots: list[str]) -> list[str]:
    """The intensity section: per-scan statistics' medians, their tests, the plot."""
    return [
        "",
        f"{h}# Intensity",
        "",
        f"Per-scan statistics of the voxel values in the scans' stored units (all channels), "
        f"median over {len(r.old.scans)} old and {len(r.new.scans)} new scans; KS tests "
        "compare the per-scan means and sds.",
        "",
        *_shift_table(r.intensity),
        "",
        *_plot_link(plot_prefix, "drift_intensity.png", plots),
    ]


def _model_lines(m: ModelDrift, h: str, plot_prefix: str, plots: list[str]) -> list[str]:
    """The model section: the bundle's shifts, its predicted-class mix, the plot."""
    if not m.kind.classifies:
        what = "The median prediction is compared (a regression bundle)."
    else:
        what = (
            f"Confidence: the mean {'calibrated' if m.calibrated else 'uncalibrated'} "
            "probability of the predicted class"
            + (
                "; OOD rate: the share of scans flagged out of distribution."
                if any(s.name == "OOD rate" for s in m.shifts)
                else " (the bundle has no OOD model)."
            )
        )
    lines = [
        "",
        f"{h}# Model",
        "",
        f"Bundle `{m.bundle_id}` ({m.task}) on the sampled scans; scans it could not "
        f"preprocess: {m.failed.get('old', 0)} old, {m.failed.get('new', 0)} new. {what}",
        "",
        *_shift_table(m.shifts),
    ]
    if m.predicted is not None:
        lines += ["", "Predicted classes:", "", *_mix_table(m.predicted)]
    return [*lines, "", *_plot_link(plot_prefix, "drift_confidence.png", plots)]


def _mix_table(mix: Mix) -> list[str]:
    rows = [
        f"| {_cell(v.value)} | {v.old_n} | {_share(v.old_share)} | {v.new_n} | "
        f"{_share(v.new_share)} | {v.difference:+.3f} |"
        for v in mix.table.itertuples()
    ]
    return [
        f"| {mix.name} | old n | old share | new n | new share | difference |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"χ² test of equal shares: {p_text(mix.p_value)}.",
    ]


def _shift_table(shifts: list[Shift]) -> list[str]:
    rows = [
        f"| {f'{s.stat} {s.name}'.strip()} | {num_text(s.old)} | {num_text(s.new)} "
        f"| {test_text(s)} |"
        for s in shifts
    ]
    return ["| quantity | old | new | test |", "|---|---|---|---|", *rows]


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _share(x: float) -> str:
    return "—" if x != x else f"{x:.3f}"


def _plot_link(prefix: str, name: str, plots: list[str]) -> list[str]:
    return [f"![{name[:-4]}]({prefix}{name})"] if name in plots else []


def _plots_for(r: DriftReport) -> list[str]:
    """The plots that apply: prevalence (labels or predicted classes), intensity,
    confidence (or predictions) with a bundle."""
    names = []
    if r.labels is not None or (r.model and r.model.predicted):
        names.append("drift_prevalence.png")
    names.append("drift_intensity.png")
    if r.model is not None:
        names.append("drift_confidence.png")
    return names


def write_drift_plots(report: DriftReport, out_dir: str | Path) -> list[str]:
    """Write the PNG plots that apply to ``report`` (:func:`_plots_for`) into ``out_dir``
    with matplotlib's Agg backend; returns their file names."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg, no pyplot state
    from matplotlib.figure import Figure

    out = Path(out_dir)
    names = _plots_for(report)
    draw = {
        "drift_prevalence.png": _plot_prevalence,
        "drift_intensity.png": _plot_intensity,
        "drift_confidence.png": _plot_confidence,
    }
    for name in names:
        fig = Figure(figsize=(9, 3.8), layout="constrained")
        FigureCanvasAgg(fig)
        draw[name](report, fig)
        atomic_write(out / name, lambda tmp, f=fig: f.savefig(tmp, format="png", dpi=100))
    return names


def _hist(ax, old, new, title: str, xlabel: str) -> None:
    o, n = (pd.to_numeric(v, errors="coerce").dropna().to_numpy(float) for v in (old, new))
    both = np.concatenate([o, n])
    bins = np.histogram_bin_edges(both, bins=30) if both.size else 10
    for values, label, colour in ((o, "old", "tab:blue"), (n, "new", "tab:orange")):
        if values.size:
            ax.hist(values, bins=bins, density=True, alpha=0.55, color=colour, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel="density")
    ax.legend(fontsize="small")


def _plot_intensity(r: DriftReport, fig) -> None:
    left, right = fig.subplots(1, 2)
    for ax, (stat, shift) in zip(
        (left, right), (("mean", r.intensity[0]), ("sd", r.intensity[1])), strict=True
    ):
        title = f"Per-scan intensity {stat} (KS {p_text(shift.p_value)})"
        _hist(ax, r.old.scans[stat], r.new.scans[stat], title, f"{stat} (stored units)")


def _plot_confidence(r: DriftReport, fig) -> None:
    first = r.model.shifts[0]  # confidence, or the prediction of a regression bundle
    title = f"Model {first.name} (KS {p_text(first.p_value)})"
    for s in r.model.shifts[1:]:
        title += f"; {s.name} {s.old:.2f} → {s.new:.2f}"
    column = "confidence" if r.model.kind.classifies else "prediction"
    _hist(fig.add_subplot(), r.old.scans[column], r.new.scans[column], title, first.name)


def _plot_prevalence(r: DriftReport, fig) -> None:
    panels = [m for m in (r.labels, r.model.predicted if r.model else None) if m is not None]
    for ax, mix in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        x = np.arange(len(mix.table))
        ax.bar(x - 0.2, mix.table["old_share"], 0.4, label="old", color="tab:blue")
        ax.bar(x + 0.2, mix.table["new_share"], 0.4, label="new", color="tab:orange")
        ax.set_xticks(x, mix.table["value"].astype(str), rotation=45 if len(x) > 6 else 0)
        title = f"{mix.name.capitalize()} shares (χ² {p_text(mix.p_value)})"
        ax.set(ylim=(0, 1), ylabel="share", title=title)
        ax.legend(fontsize="small")
