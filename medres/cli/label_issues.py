"""`medres label-issues`: scans whose label looks wrong, or worth labelling first."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from medres.cli.common import DeviceOption, app, console, progress_columns, user_errors


@app.command("label-issues")
def label_issues_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by `medres train`.")],
    cohort: Annotated[Path, typer.Argument(help="Cohort manifest (.parquet) to rank.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Label-issues CSV to write.")],
    split: Annotated[str, typer.Option(help="Labelled split to cross-fit.")] = "train",
    folds: Annotated[int, typer.Option(min=2, help="Cross-fitting folds (by patient).")] = 4,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Epochs per fold (default: the bundle's).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the folds and fold models.")] = 0,
    device: DeviceOption = None,
) -> None:
    """Rank scans whose label looks wrong (confident learning), or, for an unlabelled
    cohort, the scans a labeller should look at first (active learning).

    A cohort with labelled SPLIT scans is cross-fitted: FOLDS models, each trained with
    the bundle's own configuration on the other folds (grouped by patient, stratified
    by label) and selected on the cohort's val split, give every scan out-of-fold
    probabilities; cleanlab ranks the scans by how little those support the given
    label and flags the likely errors. A cohort without labels is ranked by the
    bundle's calibrated uncertainty instead.

    Writes OUT (one row per scan, rank 1 first: given and suggested label, label
    quality, probabilities, flagged, reason); load it for review with
    `medres review load --label-issues OUT --store DB`.

    Example:

        medres label-issues bundles/pneumonia cohort_split.parquet -o issues.csv --epochs 10
        medres review load --label-issues issues.csv --store review.db
    """
    import warnings

    from rich.table import Table

    from medres.progress import progress as progress_display
    from medres.retrain.label_issues import SkippedScansWarning, label_issues

    columns = progress_columns()
    with (
        user_errors(),
        warnings.catch_warnings(record=True) as caught,
        progress_display(*columns, console=console, transient=True) as progress,  # fit's nest
    ):
        warnings.simplefilter("always")
        table = label_issues(
            bundle,
            cohort,
            out,
            split=split,
            folds=folds,
            epochs=epochs,
            seed=seed,
            progress=progress,
            device=device or "auto",
        )
    for message in dict.fromkeys(
        str(w.message) for w in caught if w.category is SkippedScansWarning
    ):
        console.print(f"[yellow]warning:[/] {escape(message)}")
    labelled = bool((table["given_label"] != "").any())
    shown = Table(title=f"medres label-issues → {out} (top {min(10, len(table))})")
    names = ["rank", "scan_id", "given_label", "suggested_label", "label_quality", "flagged"]
    if not labelled:
        names = ["rank", "scan_id", "suggested_label", "p_suggested"]
    for name in names:
        shown.add_column(name.replace("_", " "), justify="right" if name != "scan_id" else "left")
    for row in table.head(10).to_dict("records"):
        cells = [row[name] for name in names]
        shown.add_row(*(f"{v:.3f}" if isinstance(v, float) else escape(str(v)) for v in cells))
    Console().print(shown)
    if labelled:
        console.print(
            f"{int(table['flagged'].sum())} of {len(table)} '{split}' scans flagged as possible "
            f"label errors; review them: medres review load --label-issues {out} --store DB"
        )
    else:
        console.print(
            f"{len(table)} unlabelled scans ranked by uncertainty; review the first: "
            f"medres review load --label-issues {out} --store DB --top 50"
        )
