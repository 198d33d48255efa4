"""`medres split` and `medres audit`: split a cohort by patient, audit a split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from medres.cli.common import app, console, user_errors


def _print_split_warnings(caught) -> None:
    """Print each distinct SplitWarning caught during a split or audit, in bold red."""
    from medres.split import SplitWarning

    for message in dict.fromkeys(str(w.message) for w in caught if w.category is SplitWarning):
        console.print(f"[bold red]warning:[/] {escape(message)}")


@app.command("split")
def split_command(
    cohort: Annotated[Path, typer.Argument(help="Cohort manifest (.parquet) to split.")],
    fractions: Annotated[
        str, typer.Option(help="train,val,test shares summing to 1; val may be 0.")
    ] = "0.7,0.15,0.15",
    keep_column: Annotated[
        str | None,
        typer.Option(help="Keep the train/val/test split already in this column."),
    ] = None,
    holdout_site: Annotated[
        str | None, typer.Option(help="Make every scan of this site the test set.")
    ] = None,
    keep_test_column: Annotated[
        str | None,
        typer.Option(help="Keep the test set in this column; draw train/val from the rest."),
    ] = None,
    unit: Annotated[
        str,
        typer.Option(
            help="patient, or scan: draw train/val scan by scan (leaky on purpose; needs "
            "--keep-test-column)."
        ),
    ] = "patient",
    seed: Annotated[int, typer.Option(help="The same seed gives the same split.")] = 0,
    move_copies_to_test: Annotated[
        bool,
        typer.Option(
            help="Move train/val scans whose pixels repeat a test scan's into test "
            "(`medres train` refuses such copies)."
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("-o", "--out", help="Manifest to write; default: replace COHORT."),
    ] = None,
) -> None:
    """Split a cohort into train / val / test by patient, stratified by label, and audit it.

    Each patient's scans go to one split; label shares stay close to the cohort's.
    Scans without a patient id are split one by one, with a loud warning.
    --keep-test-column keeps a given (e.g. official, patient-level) test set and redraws
    train / val; with --unit scan they are drawn slice by slice, so one patient sits in
    both and validation figures are optimistic: the slice-level split of the PET/CT
    study, for measuring how much it flatters a model. --move-copies-to-test moves
    every train/val scan with the same pixels as a test scan (pixel_hash) into test and
    lists them: `medres train` refuses a cohort whose test scans have copies in train
    or val (official splits sometimes hold such copies). The result is audited, then
    written atomically.

    Example:

        medres split cohort.parquet --fractions 0.8,0.1,0.1 --seed 1
        medres split slices.parquet --keep-test-column split --unit scan -o leaky.parquet
        medres split cohort.parquet --keep-column split --move-copies-to-test
    """
    import warnings

    from medres.cohort import Cohort
    from medres.errors import quote_some
    from medres.split import (
        SplitWarning,
        audit_cohort,
        parse_fractions,
        split_cohort,
        summary_table,
    )

    with user_errors(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SplitWarning)
        result = split_cohort(
            Cohort.load(cohort),
            fractions=parse_fractions(fractions),
            seed=seed,
            keep_column=keep_column,
            holdout_site=holdout_site,
            keep_test_column=keep_test_column,
            unit=unit,
            move_copies_to_test=move_copies_to_test,
        )
        report = audit_cohort(result, splitting=True)
        path = result.save(out or cohort)
    Console().print(summary_table(report, title=f"Split of {path.name}"))
    _print_split_warnings(caught)
    if move_copies_to_test:
        moved = result.meta["split_copies_moved_to_test"]
        shown = f": {escape(quote_some(moved))}" if moved else ""
        console.print(
            f"moved {len(moved)} train/val scan(s) to test, copies of test scans' pixels{shown}"
        )
    console.print(f"wrote {path} (split by {result.meta['split_by']})")


@app.command("audit")
def audit_command(
    cohort: Annotated[Path, typer.Argument(help="Split cohort manifest (.parquet).")],
) -> None:
    """Audit a split cohort as `medres train` does, and count each split.

    Refused (exit 2, with the message `medres train` gives): a patient in two splits
    (train + val is allowed in a deliberately scan-level split, `medres split --unit
    scan`), and copies of test scans in train or val (the same pixel_hash; `medres split
    --keep-column split --move-copies-to-test` moves them into test). Identical pixels in
    train and val only are a warning, and so are scans without a patient id.

    Example:

        medres audit cohort.parquet
    """
    import warnings

    from medres.cohort import Cohort
    from medres.split import SplitWarning, audit_cohort, summary_table

    with user_errors(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SplitWarning)
        report = audit_cohort(Cohort.load(cohort))
    Console().print(summary_table(report, title=f"Audit of {cohort.name}"))
    _print_split_warnings(caught)
    if report.scans_without_patient_id:
        console.print(
            f"[bold red]warning:[/] {report.scans_without_patient_id} split scans have no "
            "patient_id: the audit cannot tell whether their patients cross splits"
        )
    console.print(
        "no patient appears in more than one split and no test scan has a copy in train or val"
    )
