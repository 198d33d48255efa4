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
    blinded: Annotated[
        bool,
        typer.Option(
            "--blinded",
            help="Blinded reading: each reader records a first impression of a case before "
            "the model's output is shown, then the decision (both kept).",
        ),
    ] = False,
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

    With --blinded, readers record their first impression of each case before the app
    shows the model's output; the dashboard then says how often they changed their mind.

    Example:

        medres review load predictions/tonight --store review.db --site "St Elsewhere"
        medres review load --label-issues issues.csv --store review.db --top 30
        medres review load predictions/study --store study.db --blinded
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
                label_issues, top=top, show_patient_ids=show_patient_ids, site=site, blinded=blinded
            )
        else:
            result = db.load_run(
                outdir, show_patient_ids=show_patient_ids, site=site, blinded=blinded
            )
        pending = len(db.worklist(run_id=result.run_id, status="pending"))
    if result.new:
        what = f"loaded run {result.run_id}: {result.cases_added} cases"
    elif result.cases_added:
        what = f"run {result.run_id} was loaded before; added {result.cases_added} new cases"
    else:
        what = f"run {result.run_id} was loaded before; nothing changed"
    console.print(f"{what} ({pending} pending review){' blinded' if blinded else ''} in {store}")


@review_app.command("assign")
def review_assign(
    store: Annotated[str, typer.Option(help=_STORE_HELP)],
    readers: Annotated[
        str, typer.Option(help="Reader names, comma-separated, as they sign in: dr_a,dr_b.")
    ],
    run: Annotated[int | None, typer.Option(help="Only this run's cases.")] = None,
    per_case: Annotated[int, typer.Option(min=1, help="Readers per case (2: double reading).")] = 2,
) -> None:
    """Assign cases to readers for double reading: each case gets --per-case distinct
    readers, round-robin over --readers in the order given (each reader gets the same
    number of cases, give or take one).

    Each reader's worklist then holds their own cases and their own decisions; a case
    whose readers disagree goes to the adjudication queue (the app's Adjudication page),
    where someone who did not read it records the final label, which the export uses.
    Cases assigned before keep their readers: running it again changes nothing.

    Example:

        medres review assign --store review.db --readers dr_lee,dr_okafor --run 1
        medres review assign --store review.db --readers dr_a,dr_b,dr_c --per-case 2
    """
    from medres.review import ReviewStore

    with user_errors(), ReviewStore(store, create=False) as db:
        result = db.assign(run_id=run, readers=readers, per_case=per_case)
    shares = ", ".join(f"{name} {n}" for name, n in result.per_reader.items())
    kept = f"; {result.skipped} had readers already" if result.skipped else ""
    console.print(f"assigned {result.cases} cases, {per_case} readers each ({shares}){kept}")


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
    auth: Annotated[
        Path | None,
        typer.Option(
            "--auth",
            help="Organisation sign-in (OpenID Connect): a TOML file with Streamlit's [auth] "
            "section, chmod 600; default: review_auth.toml beside --store, if there.",
        ),
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
        medres review serve --store review.db --auth /etc/medres/review_auth.toml
    """
    import os

    from medres.review import ReviewStore, default_users_path
    from medres.review.serve import default_auth_path, streamlit_command
    from medres.review.users import list_users

    users_path = users or default_users_path(store)
    with user_errors():
        ReviewStore(store, create=False).close()  # refuse a missing store before starting
        organisation = auth is not None or default_auth_path(store).is_file()
        if not organisation and not list_users(users_path):
            raise ReviewError(
                f"no reviewer account in {users_path}; add one first: "
                f"`medres review add-user NAME --store {store}`"
            )
        argv, environment = streamlit_command(store, users_path, host=host, port=port, auth=auth)
    console.print(
        f"review app: http://{host}:{port}  (store {store}, users {users_path}); Ctrl-C stops it",
        soft_wrap=True,
    )
    os.execve(argv[0], argv, environment)  # the server replaces this process: signals reach it
