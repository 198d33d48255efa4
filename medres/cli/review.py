"""`medres review load | add-user | export | serve`: clinician review."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medres.cli.common import console, review_app, user_errors
from medres.errors import ReviewError

_STORE_HELP = "Review store: a SQLite file (created when missing) or a database URL."


@review_app.command("load")
def review_load(
    store: Annotated[str, typer.Option(help=_STORE_HELP)],
    outdir: Annotated[
        Path | None, typer.Argument(help="Output folder of `medres predict`.")
    ] = None,
    label_issues: Annotated[
        Path | None,
        typer.Option(help="A `medres label-issues` CSV to load instead of an OUTDIR."),
    ] = None,
    top: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --label-issues: the first N by rank (default: the flagged rows; "
            "every row of an unlabelled cohort's CSV).",
        ),
    ] = None,
    show_patient_ids: Annotated[
        bool,
        typer.Option(
            "--show-patient-ids",
            help="Keep patient ids as they are (default: salted-hash pseudonyms).",
        ),
    ] = False,
    site: Annotated[
        str | None, typer.Option(help="Site of every scan whose prediction names none.")
    ] = None,
) -> None:
    """Load a prediction run into the review store: one case per predicted scan.

    Cases are ordered for review: out of distribution first, then multi-class
    conformal sets, then the most uncertain.

    Loading the same OUTDIR again changes nothing (scans predicted into it since are
    added). Patient ids are stored as pseudonyms unless --show-patient-ids is given.

    With --label-issues ISSUES.csv (from `medres label-issues`) the scans become cases
    referred as "possible label error: labelled X, model says Y" (or "uncertain (active
    learning)"), the suggested label as the predicted class: agree relabels the scan,
    disagree with the given label keeps it. Reloading adds only scans not loaded yet.

    Example:

        medres review load predictions/tonight --store review.db --site "St Elsewhere"
        medres review load --label-issues issues.csv --store review.db --top 30
    """
    from medres.review import ReviewStore

    with user_errors():
        if (outdir is None) == (label_issues is None):
            raise ReviewError("give either OUTDIR (a predict output) or --label-issues CSV")
        if top is not None and label_issues is None:
            raise ReviewError("--top applies to --label-issues only")
    with user_errors(), ReviewStore(store) as db:
        if label_issues is not None:
            result = db.load_label_issues(
                label_issues, top=top, show_patient_ids=show_patient_ids, site=site
            )
        else:
            result = db.load_run(outdir, show_patient_ids=show_patient_ids, site=site)
        pending = len(db.worklist(run_id=result.run_id, status="pending"))
    if result.new:
        what = f"loaded run {result.run_id}: {result.cases_added} cases"
    elif result.cases_added:
        what = f"run {result.run_id} was loaded before; added {result.cases_added} new cases"
    else:
        what = f"run {result.run_id} was loaded before; nothing changed"
    console.print(f"{what} ({pending} pending review) in {store}")


@review_app.command("add-user")
def review_add_user(
    name: Annotated[str, typer.Argument(help="Reviewer name (letters, digits, . _ @ -).")],
    users: Annotated[
        Path | None,
        typer.Option(help="Users file; default: review_users.json beside --store, or here."),
    ] = None,
    store: Annotated[
        str | None, typer.Option(help="The review store whose users file to use.")
    ] = None,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from the first stdin line."),
    ] = False,
) -> None:
    """Add a reviewer account (or set a new password for one) in the local users file.

    The password is asked for twice with hidden input (or read from stdin) and kept
    only as a salted scrypt hash; the file is readable by its owner only.

    Example:

        medres review add-user dr_lee --store review.db
        printf '%s\\n' "$PASSWORD" | medres review add-user dr_lee --password-stdin
    """
    import sys

    from medres.review import add_user, default_users_path

    path = users or default_users_path(store)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt(f"Password for {name}", hide_input=True, confirmation_prompt=True)
    with user_errors():
        new = add_user(path, name, password)
    console.print(f"{'added' if new else 'changed the password of'} {name} in {path}")


@review_app.command("export")
def review_export(
    store: Annotated[str, typer.Option(help=_STORE_HELP)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Labels CSV to write.")],
    run: Annotated[int | None, typer.Option(help="Only this run's decisions.")] = None,
) -> None:
    """Write the reviewed labels as a CSV that `medres ingest --labels` accepts.

    One row per reviewed scan, its latest decision: path, label (the corrected label on
    disagree, the predicted class on agree), scan_id, decision, reviewer, decided_at
    (UTC), predicted_class, bundle_id. Scans marked uncertain are left out.

    Example:

        medres review export --store review.db -o reviewed_labels.csv
        medres ingest /data/tonight --labels reviewed_labels.csv -o new_cohort.parquet
    """
    from medres.review import ReviewStore

    with user_errors(), ReviewStore(store, create=False) as db:
        table = db.export_labels(out, run_id=run)
    counts = table["decision"].value_counts().to_dict()
    console.print(
        f"wrote {out} ({len(table)} labels: {counts.get('agree', 0)} agree, "
        f"{counts.get('disagree', 0)} disagree)"
    )


@review_app.command("serve")
def review_serve(
    store: Annotated[str, typer.Option(help="Review store: a SQLite file or a database URL.")],
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8501,
    host: Annotated[
        str,
        typer.Option(help="Address to bind; 127.0.0.1 keeps the app on this computer."),
    ] = "127.0.0.1",
    users: Annotated[
        Path | None,
        typer.Option(help="Users file; default: review_users.json beside --store, or here."),
    ] = None,
) -> None:
    """Serve the review app (Streamlit) on the store: sign-in, worklist, case view,
    dashboard, export. Runs in the foreground; Ctrl-C stops it.

    Bound to 127.0.0.1 unless --host says otherwise: to serve several reviewers, put it
    behind an HTTPS reverse proxy rather than exposing it directly.

    Example:

        medres review serve --store review.db --port 8501
        medres review serve --store postgresql+psycopg://medres@db/review \\
            --users /etc/medres/users.json
    """
    import os

    from medres.review import ReviewStore, default_users_path
    from medres.review.serve import streamlit_command
    from medres.review.users import list_users

    users_path = users or default_users_path(store)
    with user_errors():
        ReviewStore(store, create=False).close()  # refuse a missing store before starting
        if not list_users(users_path):
            raise ReviewError(
                f"no reviewer account in {users_path}; add one first: "
                f"`medres review add-user NAME --store {store}`"
            )
        argv, environment = streamlit_command(store, users_path, host=host, port=port)
    console.print(
        f"review app: http://{host}:{port}  (store {store}, users {users_path}); Ctrl-C stops it",
        soft_wrap=True,
    )
    os.execve(argv[0], argv, environment)  # the server replaces this process: signals reach it
