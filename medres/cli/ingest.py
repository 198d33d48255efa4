"""`medres ingest`: a folder of scans into a cohort manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from medres.cli.common import app, console, progress_columns, user_errors


@app.command()
def ingest(
    folder: Annotated[Path, typer.Argument(help="Folder of scans (DICOM, NIfTI, PNG/JPEG).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Manifest to write (.parquet).")],
    labels: Annotated[
        Path | None,
        typer.Option(
            help="CSV with a 'label' column keyed by path, scan_id, series_uid, "
            "study_uid or patient_id."
        ),
    ] = None,
    site: Annotated[str | None, typer.Option(help="Site name for every scan.")] = None,
    modality: Annotated[
        str | None,
        typer.Option(
            help="DICOM modality of the files that carry none (PNG/JPEG, NIfTI), e.g. DX "
            "for radiograph exports: a bundle trained on them then accepts DX DICOM."
        ),
    ] = None,
    headers_only: Annotated[
        bool,
        typer.Option(
            "--headers-only",
            help="Do not decode pixels (fast; geometry is still checked, corrupt pixel "
            "data is not).",
        ),
    ] = False,
    strict: Annotated[bool, typer.Option(help="Exit 1 when any scan could not be read.")] = False,
) -> None:
    """Find every scan under FOLDER and write one manifest row per scan.

    DICOM series are grouped by SeriesInstanceUID (they may span folders), ordered by
    position, and checked (tilt, missing slices, mixed orientations). Unreadable scans
    become rows with status=error and the reason; other files are skipped and counted.

    Example:

        medres ingest scans/ --labels scans/labels.csv --site "St Elsewhere" -o cohort.parquet
        medres ingest png_exports/ --labels labels.csv --modality DX -o cohort.parquet
    """
    from medres.cohort import build_cohort, summary_tables
    from medres.progress import progress as progress_display

    columns = progress_columns(time_remaining=True)
    with user_errors():
        with progress_display(*columns, console=console, transient=True) as progress:
            cohort, report = build_cohort(
                folder,
                labels=labels,
                site=site,
                modality=modality,
                verify_pixels=not headers_only,
                progress=progress,
            )
        cohort.save(out)
    for table in summary_tables(cohort, report):
        Console().print(table)
    if report.unmatched_labels:
        shown = ", ".join(map(str, report.unmatched_labels[:5]))
        console.print(
            f"[yellow]warning:[/] {len(report.unmatched_labels)} labels match no scan ({shown})"
        )
    n_errors = int((cohort.table["status"] == "error").sum())
    console.print(f"wrote {out} ({len(cohort.table)} rows, {n_errors} with errors)")
    if strict and n_errors:
        raise typer.Exit(1)
