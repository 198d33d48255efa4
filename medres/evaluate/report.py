"""Reports: ``report.json``, ``report.md`` and plots of an :class:`Evaluation`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from rich.table import Table

from medres.calibrate import reliability_diagram
from medres.errors import ConfigError
from medres.evaluate.evaluation import Evaluation
from medres.evaluate.metrics import MetricCI
from medres.evaluate.trust import TrustReport
from medres.files import (
    FORMAT_KEY,
    atomic_write,
    jsonable,
    read_versioned_json,
    write_json,
    write_text,
)
from medres.train.class_names import display_name

REPORT = "report.json"
FORMAT = 1  # report.json's format version (docs/formats.md#reportjson)
READS = (1,)  # the major versions read_report reads (no version: before versions, 1)


def write_report(
    evaluation: Evaluation,
    out_dir,
    *,
    title: str = "medres evaluation",
    extra: dict | None = None,
    trust: TrustReport | None = None,
) -> Path:
    """Write ``report.json``, ``report.md`` and the plots into ``out_dir``; return the JSON path.

    ``report.json`` holds its format version (``"format": 1``) and
    :meth:`Evaluation.to_dict` (NaN written as null) with ``extra`` merged at top level.
    Plots: binary ``roc.png``, ``pr.png``; multiclass/ordinal ``roc.png``,
    ``confusion.png``; regression ``scatter.png``; with a ``trust`` report also
    ``reliability.png`` (before / after calibration), ``risk_coverage.png`` and
    ``coverage.png`` (conformal coverage per class), and its sections in ``report.md``.
    Files are replaced atomically.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {FORMAT_KEY: FORMAT, **evaluation.to_dict()}
    clash = sorted(set(extra or {}) & set(data))
    if clash:
        raise ConfigError(
            f"extra keys {clash} would overwrite the report's own fields; rename them"
        )
    data.update(jsonable(extra or {}))
    plots = _write_plots(evaluation, out)
    if trust is not None:
        data["conformal_per_class"] = jsonable(trust.per_class.to_dict("records"))
        data["referral_sentence"] = trust.sentence
        plots += _write_trust_plots(trust, out)
    write_json(out / REPORT, data)
    md = _markdown(evaluation, title, plots, trust)
    write_text(out / "report.md", md)
    return out / REPORT


def read_report(path) -> dict:
    """A ``report.json`` (a file, or the folder holding it), its format version checked.

    Raises:
        ConfigError: not a JSON object, or a format version this medres does not read
            (the message names the file, the version found and the versions read).
    """
    path = Path(path)
    path = path / REPORT if path.is_dir() else path
    return read_versioned_json(path, "report", READS, ConfigError)


def metrics_table(evaluation: Evaluation) -> Table:
    """A rich table of scan- and patient-level metrics with their 95 % intervals."""
    ev = evaluation
    table = Table(title=f"{ev.task}: {ev.n_scans} scans, {ev.n_patients} patients")
    table.add_column("metric")
    table.add_column("scans (95% CI)", justify="right")
    table.add_column("patients (95% CI)", justify="right")
    for name, m in ev.metrics.items():
        table.add_row(name, format_metric(m), format_metric(ev.patient_metrics.get(name)))
    return table


def format_metric(m: MetricCI | None) -> str:
    """``0.912 (0.880–0.940)``; ``n/a`` for a missing or undefined value."""
    if m is None or math.isnan(m.value):
        return "n/a"
    ci = "" if math.isnan(m.ci_low) else f" ({m.ci_low:.3f}–{m.ci_high:.3f})"
    return f"{m.value:.3f}{ci}"


def _markdown(ev: Evaluation, title: str, plots: list[str], trust: TrustReport | None) -> str:
    shown = ev.shown_classes
    positive = shown[1] if ev.kind.operating_point and shown else "positive"
    op = "" if ev.threshold is None else f" · operating point: p({positive}) >= {ev.threshold:.3f}"
    lines = [
        f"# {title}",
        "",
        f"Task **{ev.task}** · {ev.n_scans} scans · {ev.n_patients} patients{op}",
        "",
        *([f"Classes: {', '.join(shown)}.", ""] if shown else []),
        f"95 % CIs: percentile bootstrap, {ev.n_boot} replicates resampling patients "
        f"(seed {ev.seed}); patient probabilities aggregated by {ev.patient_aggregate}.",
        "",
        "| metric | scans (95 % CI) | patients (95 % CI) |",
        "|---|---|---|",
        *(
            f"| {k} | {format_metric(m)} | {format_metric(ev.patient_metrics.get(k))} |"
            for k, m in ev.metrics.items()
        ),
    ]
    if len(ev.per_site):
        cols = list(ev.per_site.columns)
        lines += ["", "## Per site", "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
        for row in ev.per_site.itertuples(index=False):
            cells = [
                format_metric(MetricCI(v, math.nan, math.nan)) if isinstance(v, float) else str(v)
                for v in row
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if trust is not None:
        lines += [
            "",
            "## Calibration, conformal sets and referral",
            "",
            f"**{trust.sentence}**",
            "",
            f"By true class: conformal sets (target {trust.coverage_target:.0%} coverage), "
            "accuracy, how uncertain the model was, and how often it referred:",
            "",
            "| class | scans | coverage | mean set size | accuracy | mean confidence "
            "| mean entropy | referred |",
            "|---|---|---|---|---|---|---|---|",
            *(
                f"| {display_name(r['class'], r.get('name'))} | {r['n']} "
                f"| {r['coverage']:.3f} | {r['mean_set_size']:.2f} "
                f"| {r['accuracy']:.3f} | {r['mean_confidence']:.3f} | {r['mean_entropy']:.3f} "
                f"| {r['referral_rate']:.1%} |"
                for r in trust.per_class.to_dict("records")
            ),
        ]
    lines += ["", "## Plots", "", *(f"![{p[:-4]}]({p})" for p in plots)]
    return "\n".join(lines) + "\n"


def _write_plots(ev: Evaluation, out: Path) -> list[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg, no pyplot state
    from matplotlib.figure import Figure

    plots = _PLOTS.get(ev.task, _PLOTS["multiclass"])
    for name, plot in plots.items():
        fig = Figure(figsize=(5, 5), layout="constrained")
        FigureCanvasAgg(fig)
        plot(ev, fig.add_subplot())
        atomic_write(out / name, lambda tmp, f=fig: f.savefig(tmp, format="png", dpi=110))
    return list(plots)


def _write_trust_plots(trust: TrustReport, out: Path) -> list[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = trust.curves
    reliability_diagram(curves["reliability"], curves["targets"], out / "reliability.png")
    for name, plot in (("risk_coverage.png", _plot_risk), ("coverage.png", _plot_coverage)):
        fig = Figure(figsize=(5, 4), layout="constrained")
        FigureCanvasAgg(fig)
        plot(trust, fig.add_subplot())
        atomic_write(out / name, lambda tmp, f=fig: f.savefig(tmp, format="png", dpi=110))
    return ["reliability.png", "risk_coverage.png", "coverage.png"]


def _plot_risk(trust: TrustReport, ax) -> None:
    for name, (coverage, risk) in trust.curves["risk_coverage"].items():
        ax.plot(coverage, risk, label=name)
    rate = trust.metrics["referral_rate"].value
    ax.axvline(1 - rate, ls=":", color="grey", label=f"bundle's referral ({rate:.0%})")
    ax.set(
        xlabel="share of scans decided by the model",
        ylabel="error rate among them",
        title=f"Risk–coverage (AURC {format_metric(trust.metrics['aurc'])})",
        xlim=(0, 1),
    )
    ax.legend(fontsize="small")


def _plot_coverage(trust: TrustReport, ax) -> None:
    table = trust.per_class
    names = table["name"] if "name" in table else table["class"]
    shown = [display_name(c, n) for c, n in zip(table["class"], names, strict=True)]
    ax.bar(shown, table["coverage"], color="tab:blue")
    ax.axhline(trust.coverage_target, ls="--", color="k", label="target")
    for i, size in enumerate(table["mean_set_size"]):
        ax.text(i, 0.05, f"size {size:.2f}", ha="center", color="white", fontsize="small")
    ax.set(ylim=(0, 1), ylabel="coverage", title="Conformal coverage per class")
    ax.legend(loc="lower right", fontsize="small")


def _plot_roc(ev: Evaluation, ax) -> None:
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1))
    roc = ev.curves.get("roc") or {}
    if ev.kind.operating_point and roc:
        ax.plot(roc["fpr"], roc["tpr"], label=f"AUROC {format_metric(ev.metrics['auroc'])}")
        op = ev.curves["operating_point"]
        ax.plot(op["fpr"], op["tpr"], "o", label=f"threshold {op['threshold']:.3f}")
    elif not ev.kind.operating_point:
        shown = dict(zip(ev.classes or [], ev.shown_classes, strict=True))
        for name, c in roc.items():
            ax.plot(c["fpr"], c["tpr"], label=f"{shown.get(name, name)} vs rest")
    if not roc:
        ax.text(0.5, 0.5, "undefined: one class only", ha="center")
    else:
        ax.legend(loc="lower right", fontsize="small")


def _plot_pr(ev: Evaluation, ax) -> None:
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall")
    pr = ev.curves.get("pr")
    if pr is None:
        ax.text(0.5, 0.5, "undefined: no positives", ha="center")
        return
    ax.plot(pr["recall"], pr["precision"], label=f"AUPRC {format_metric(ev.metrics['auprc'])}")
    ax.axhline(ev.curves["prevalence"], ls=":", color="grey", label="prevalence")
    ax.legend(loc="lower left", fontsize="small")


def _plot_confusion(ev: Evaluation, ax) -> None:
    c = ev.curves["confusion"]
    ax.imshow(c, cmap="Blues")
    for (i, j), v in np.ndenumerate(c):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > c.max() / 2 else "k")
    ax.set_xticks(range(len(c)), ev.shown_classes, rotation=45)
    ax.set_yticks(range(len(c)), ev.shown_classes)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion (rows: truth)")


def _plot_scatter(ev: Evaluation, ax) -> None:
    y, p = ev.curves["scatter"]["y_true"], ev.curves["scatter"]["y_pred"]
    ax.scatter(y, p, s=8, alpha=0.5)
    lo, hi = min(y.min(), p.min()), max(y.max(), p.max())
    ax.plot([lo, hi], [lo, hi], ls=":", color="grey")
    ax.set(xlabel="true", ylabel="predicted", title=f"MAE {format_metric(ev.metrics['mae'])}")


_PLOTS = {
    "binary": {"roc.png": _plot_roc, "pr.png": _plot_pr},
    "multiclass": {"roc.png": _plot_roc, "confusion.png": _plot_confusion},
    "regression": {"scatter.png": _plot_scatter},
}
