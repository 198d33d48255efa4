"""`medres retrain | compare | promote | drift`: challengers, verdicts, the registry, drift."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from medres.cli.common import DeviceOption, app, check_device, console, print_metrics, user_errors
from medres.errors import ALLOW_LEAKAGE


@app.command("retrain")
def retrain_command(
    bundle: Annotated[Path, typer.Argument(help="The champion bundle.")],
    cohort: Annotated[
        list[Path], typer.Option(help="New split cohort (.parquet); repeat for several.")
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Challenger bundle folder.")],
    reviews: Annotated[
        Path | None,
        typer.Option(help="Reviewed labels (`medres review export` CSV) over the cohort's."),
    ] = None,
    from_scratch: Annotated[
        bool, typer.Option(help="Train new weights instead of fine-tuning the champion's.")
    ] = False,
    new_only: Annotated[
        bool,
        typer.Option(help="Train on the new cohorts alone, not also on the champion's cohort."),
    ] = False,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: the champion's).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a training setting: --set lr=1e-4 (repeatable)."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted retraining.")] = False,
    allow_leakage: Annotated[
        bool,
        typer.Option(
            help="When the cohorts' own splits leak, or a patient sits in train in one "
            f"cohort and in val in another: {ALLOW_LEAKAGE}. The champion's test patients "
            "and scans stay refused."
        ),
    ] = False,
    drop_leaking_rehearsal: Annotated[
        bool,
        typer.Option(
            help="Leave out of the rehearsal the champion's training scans that would leak "
            "test data (recorded in bundle.json)."
        ),
    ] = False,
    device: DeviceOption = None,
) -> None:
    """Train a challenger on new cohorts (and reviewed labels) from a champion bundle.

    Training data: the new cohorts plus the champion's own training cohort (without it,
    a model fine-tuned on a new site forgets the old one; --new-only skips it). The
    challenger keeps the champion's preprocessing, model and classes; it fine-tunes
    the champion's weights (learning rate x0.1, half the epochs, no warm-up) unless
    --from-scratch. It refuses, naming them and the cohort that holds them, any patient
    of the champion's test split or of the new cohort's test split in its training or
    validation scans, and any copy of such a test scan's pixels. When they sit in the
    champion's own training cohort (rehearsed), retrain with --new-only, or with
    --drop-leaking-rehearsal to leave them out of the rehearsal. A patient with scans in
    train and in val is refused as `medres train` refuses it, across cohorts too (e.g. a
    follow-up patient validated on in the champion's cohort, under train in the new one:
    file their new scans under the champion's split). --allow-leakage lets the cohorts'
    own leaks through as in `medres train`, never the champion's test set. Its
    bundle.json records parent_id, the lineage of cohorts and the reviews used.

    Example:

        medres retrain bundles/v1 --cohort site_b_split.parquet \\
            --reviews reviews.csv -o bundles/v2
    """
    from medres.errors import quote_some
    from medres.retrain.job import retrain_bundle

    with user_errors():
        check_device(device)
        overrides = [*(set_ or [])]
        given = (("epochs", epochs), ("seed", seed), ("device", device))
        overrides += [f"{k}={v}" for k, v in given if v is not None]
        result = retrain_bundle(
            bundle,
            cohort,
            out,
            reviews=reviews,
            from_scratch=from_scratch,
            new_only=new_only,
            overrides=overrides,
            resume=resume,
            allow_leakage=allow_leakage,
            drop_leaking_rehearsal=drop_leaking_rehearsal,
        )
    if drop_leaking_rehearsal:
        dropped = result.rehearsal_dropped
        console.print(
            f"left {len(dropped)} scan(s) of the champion's cohort out of the rehearsal"
            + (f": {escape(quote_some(dropped))}" if dropped else "")
        )
    if result.reviews is not None:
        r = result.reviews
        console.print(
            f"reviews: {r.changed} labels changed, {r.confirmed} confirmed, "
            f"{len(r.unmatched)} reviewed scans in no cohort (not used)"
        )
    print_metrics(result.evaluations)
    console.print(f"challenger: {result.bundle_json.parent}")


@app.command("compare")
def compare_command(
    champion: Annotated[Path, typer.Argument(help="The champion bundle.")],
    challenger: Annotated[Path, typer.Argument(help="The challenger bundle.")],
    cohort: Annotated[
        list[Path], typer.Option(help="New cohort whose test split to compare on; repeatable.")
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Report folder.")],
    old_cohort: Annotated[
        Path | None,
        typer.Option(help="The champion's test cohort (default: the one in its bundle.json)."),
    ] = None,
    margin: Annotated[
        float, typer.Option(help="AUC the challenger may lose on the old test set.")
    ] = 0.01,
    n_boot: Annotated[int, typer.Option(min=100, help="Paired bootstrap replicates.")] = 1000,
    drift: Annotated[
        bool, typer.Option(help="Add the drift report (old vs each new test set).")
    ] = True,
) -> None:
    """Compare champion and challenger on the same test scans, with a promotion verdict.

    Both bundles score the champion's test set and each new cohort's test split; AUC,
    accuracy and ECE are reported with paired bootstrap 95 % CIs of the difference
    (resampling patients). Verdict: promote when the challenger is non-inferior on the
    old test set (ΔAUC lower bound > -margin) and better on every new one (> 0). Exit
    code 0 either way; `medres promote` records the verdict.

    Example:

        medres compare bundles/v1 bundles/v2 --cohort site_b_split.parquet -o compare_v2
    """
    from medres.retrain.compare import compare_bundles, write_comparison

    with user_errors():
        comparison = compare_bundles(
            champion, challenger, cohort, old_cohort=old_cohort, margin=margin, n_boot=n_boot
        )
        report = write_comparison(comparison, out, drift=drift)
    for reason in comparison.reasons:
        console.print(reason)
    console.print(f"[bold]verdict: {comparison.verdict}[/]  report: {report}")


@app.command("promote")
def promote_command(
    comparison: Annotated[Path, typer.Argument(help="A `medres compare` report folder.")],
    registry: Annotated[Path, typer.Option(help="Registry file (created if missing).")] = Path(
        "registry.json"
    ),
    force_reason: Annotated[
        str | None,
        typer.Option(help="Promote against a 'keep' verdict; the reason is recorded."),
    ] = None,
) -> None:
    """Record a comparison's verdict in the model registry.

    A 'promote' verdict makes the challenger champion and archives the champion; 'keep'
    records the challenger as rejected and exits 1. Bundles are never copied or
    overwritten: the registry points at their folders, and every version stays loadable.

    Example:

        medres promote compare_v2 --registry models/registry.json
    """
    from rich.table import Table

    from medres.retrain.registry import promote

    with user_errors():
        entries, promoted = promote(registry, comparison, force_reason=force_reason)
    table = Table(title=f"registry {registry}")
    for column in ("id", "status", "since", "parent", "path"):
        table.add_column(column)
    for m in entries["models"].values():
        parent = (m["parent_id"] or "")[:8]
        table.add_row(m["id"][:8], m["status"], m["status_since"], parent, m["path"])
    Console().print(table)
    if not promoted:
        console.print("[bold]not promoted[/]: the comparison's verdict was 'keep'")
        raise typer.Exit(1)


@app.command("drift")
def drift_command(
    old: Annotated[Path, typer.Argument(help="Earlier cohort (.parquet), e.g. the training one.")],
    new: Annotated[Path, typer.Argument(help="Later cohort (.parquet), e.g. a new site's.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Report folder to write.")],
    bundle: Annotated[
        Path | None,
        typer.Option(help="Bundle whose confidence and OOD rate to compare on both cohorts."),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Compare only this split (train / val / test) of both.")
    ] = None,
    max_scans: Annotated[
        int, typer.Option(min=1, help="Scans read per cohort (a random sample).")
    ] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the scan sample.")] = 0,
    alpha: Annotated[
        float, typer.Option(help="Significance level: findings are the shifts with p < alpha.")
    ] = 0.01,
) -> None:
    """Compare two cohorts: label prevalence, site and modality mix, intensity statistics
    of the scans and, with --bundle, the model's confidence, OOD rate and predicted
    classes on each.

    Writes OUT/drift.md (tables, findings, plots), OUT/drift.json (the numbers),
    OUT/drift_scans.csv (one row per sampled scan) and PNG plots. Shares are compared
    by χ² tests, per-scan values by two-sample Kolmogorov–Smirnov tests, OOD rates by
    Fisher's exact test. Scans that cannot be read are counted, not fatal.

    Example:

        medres drift train.parquet site_b.parquet --bundle bundles/v1 --split test -o drift
    """
    from medres.retrain.drift import drift_report
    from medres.retrain.drift_write import write_drift

    with user_errors():
        report = drift_report(
            old,
            new,
            bundle,
            split=split,
            max_scans=max_scans,
            seed=seed,
            alpha=alpha,
            show_progress=True,
        )
        path = write_drift(report, out)
    Console().print("[bold]Drift findings[/] (α = " + f"{alpha:g})")
    for line in report.findings:
        Console().print(f"- {escape(line)}", soft_wrap=True)
    console.print(f"report: {path}  (numbers: {path.parent / 'drift.json'})")
