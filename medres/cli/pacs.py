"""`medres pacs echo | pull | push | listen`: DICOM in, DICOM out."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Annotated

import typer

from medres.cli.common import DeviceOption, app, check_device, console, user_errors

pacs_app = typer.Typer(
    help="DICOM in, DICOM out: check a PACS connection, pull studies from it, push results "
    "(TID 1500 SR, parametric map, secondary capture) back, or listen for studies sent to "
    "medres. A PACS is a URL: http(s)://host:port/dicom-web (DICOMweb) or "
    "dicom://AET@host:port (DIMSE). Credentials come from MEDRES_PACS_USER and "
    "MEDRES_PACS_PASSWORD (or MEDRES_PACS_TOKEN), or a chmod-600 JSON file given with "
    "--credentials; never from the command line.",
    no_args_is_help=True,
)
app.add_typer(pacs_app, name="pacs")

UrlArgument = Annotated[
    str,
    typer.Argument(help="The PACS: http(s)://host:port/dicom-web or dicom://AET@host:port."),
]
CallingAet = Annotated[
    str, typer.Option(help="medres's own AE title (DIMSE), as registered in the PACS.")
]
CredentialsOption = Annotated[
    Path | None,
    typer.Option(
        help="JSON file with user/password/token/ca_file, readable by you only (chmod 600); "
        "default: $MEDRES_PACS_CREDENTIALS, else the MEDRES_PACS_* variables."
    ),
]


def _peer(url: str, calling_aet: str, credentials: Path | None, **how):
    from medres.pacs.peer import Peer
    from medres.pacs.url import check_ae_title, load_credentials, parse_url

    check_ae_title(calling_aet, "--calling-aet")
    return Peer(parse_url(url), calling_aet, load_credentials(credentials), **how)


@pacs_app.command("echo")
def echo_command(
    url: UrlArgument,
    calling_aet: CallingAet = "MEDRES",
    credentials: CredentialsOption = None,
) -> None:
    """Check that medres can talk to a PACS: a C-ECHO (DIMSE) or one QIDO-RS search
    (DICOMweb). Says what failed: connection refused, association rejected (AE titles),
    authentication, TLS.

    Example:

        medres pacs echo dicom://ORTHANC@pacs.hospital:4242 --calling-aet MEDRES
        MEDRES_PACS_USER=ai MEDRES_PACS_PASSWORD=... medres pacs echo https://pacs/dicom-web
    """
    with user_errors():
        peer = _peer(url, calling_aet, credentials)
        peer.echo()
    console.print(f"[green]ok:[/] {peer.url} answers ({_how(peer)})")


@pacs_app.command("pull")
def pull_command(
    url: UrlArgument,
    out: Annotated[
        Path, typer.Option("-o", "--out", help="Folder: OUT/<study>/<series>/<sop>.dcm.")
    ],
    study: Annotated[
        list[str] | None, typer.Option(help="A Study Instance UID (repeatable).")
    ] = None,
    accession: Annotated[str | None, typer.Option(help="An Accession Number.")] = None,
    modality: Annotated[
        str | None, typer.Option(help="Studies holding this modality, e.g. CR.")
    ] = None,
    since: Annotated[
        dt.datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="Studies from this date on (YYYY-MM-DD)."),
    ] = None,
    retrieve: Annotated[
        str,
        typer.Option(
            help="DIMSE: get (C-GET, one connection) or move (C-MOVE to medres's own storage "
            "SCP on --port: the PACS must know medres's AE title, address and port)."
        ),
    ] = "get",
    port: Annotated[int, typer.Option(help="With --retrieve move: the SCP's port.")] = 11112,
    calling_aet: CallingAet = "MEDRES",
    credentials: CredentialsOption = None,
) -> None:
    """Query a PACS and retrieve the matching studies' images into OUT.

    Each study lands in OUT/<study>/<series>/<sop>.dcm only once all its images are
    there (until then in the hidden OUT/.incoming, which `medres predict` never reads):
    a study still arriving at the PACS, or a pull interrupted half-way, is never
    half-predicted. Run the same command again to fetch only what is missing.
    Structured reports, presentation states and medres's own results are counted, not
    fetched. Exit 1 when a study could not be pulled (the others are).

    Example:

        medres pacs pull dicom://ORTHANC@pacs:4242 --modality CR --since 2026-12-01 -o scans/
        medres pacs pull https://pacs/dicom-web --study 1.2.840.113619.2.55.3.1 -o scans/
    """
    from medres.errors import ConfigError
    from medres.pacs.pull import pull
    from medres.pacs.query import StudyQuery
    from medres.progress import progress as progress_display

    with user_errors():
        if retrieve not in ("get", "move"):
            raise ConfigError(f"--retrieve {retrieve!r}: use get or move")
        peer = _peer(url, calling_aet, credentials, retrieve_with=retrieve, move_port=port)
        query = StudyQuery(tuple(study or ()), accession, modality, since and since.date())
        with progress_display(console=console, transient=True) as progress:
            task = progress.add_task("pulling studies", total=None)

            def on_study(done, total, summary):
                progress.update(
                    task, total=total, completed=done, description=f"pulled {done}/{total} studies"
                )

            summary = pull(peer, query, out, on_study=on_study)
    skipped = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.skipped.items()))
    console.print(
        f"{summary.studies} study(ies) found at {peer.url}; {summary.complete} complete in "
        f"{out}: {summary.fetched} image(s) fetched, {summary.already_there} already there"
        + (f"; not fetched: {skipped}" if skipped else "")
    )
    for uid in summary.still_arriving:
        console.print(f"[yellow]still arriving:[/] study {uid}: pull again later")
    for uid, reason in summary.failed.items():
        console.print(f"[red]failed:[/] study {uid}: {reason}")
    if summary.failed:
        raise typer.Exit(1)


@pacs_app.command("push")
def push_command(
    outdir: Annotated[Path, typer.Argument(help="Output folder of `medres predict`.")],
    url: UrlArgument,
    bundle: Annotated[
        Path | None,
        typer.Option(
            help="The bundle that predicted OUTDIR: (re)write OUTDIR/dicom from its "
            "predictions first. Without it, OUTDIR/dicom is sent as it is."
        ),
    ] = None,
    again: Annotated[
        bool, typer.Option(help="Send every object, also those pacs.json lists as sent.")
    ] = False,
    calling_aet: CallingAet = "MEDRES",
    credentials: CredentialsOption = None,
) -> None:
    """Send a prediction run's results to the PACS, into each scan's own study: a TID
    1500 Structured Report (class, calibrated probability, conformal set, referral, OOD
    flag), and with `medres predict --explain` the Grad-CAM heatmap as a parametric map
    and as an RGB secondary capture, all marked "not for diagnostic use unless validated
    locally". UIDs are derived from the bundle and the source images, so sending again
    replaces instead of duplicating. OUTDIR/pacs.json records what was sent where.

    Predict with --explain first to send the heatmaps, e.g. `medres predict
    bundles/pneumonia scans/ -o predictions/ --explain`.

    Example:

        medres pacs push predictions/ dicom://ORTHANC@pacs:4242 --bundle bundles/pneumonia
    """
    from medres.pacs.push import push

    with user_errors():
        peer = _peer(url, calling_aet, credentials)
        if bundle is not None:
            _write_results(outdir, bundle)
        summary = push(outdir, peer, again=again)
    console.print(
        f"sent {len(summary.sent)} object(s) to {peer.url} ({summary.unchanged} already "
        f"sent unchanged); record: {summary.record}"
    )


@pacs_app.command("listen")
def listen_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by `medres train`.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (new, or to resume).")],
    port: Annotated[int, typer.Option(help="TCP port of the storage SCP.")] = 11112,
    ae_title: Annotated[str, typer.Option(help="medres's AE title (the called AE).")] = "MEDRES",
    host: Annotated[
        str, typer.Option(help="Address to listen on (default: every interface).")
    ] = "0.0.0.0",
    push: Annotated[
        str | None, typer.Option(help="PACS URL to send each study's results to.")
    ] = None,
    stable_seconds: Annotated[
        float, typer.Option(help="Seconds without a new instance before a study is complete.")
    ] = 30.0,
    max_studies: Annotated[
        int | None, typer.Option(help="Stop after this many studies (default: run until Ctrl-C).")
    ] = None,
    allow_aet: Annotated[
        list[str] | None,
        typer.Option(help="Accept studies only from this calling AE title (repeatable)."),
    ] = None,
    calling_aet: CallingAet = "MEDRES",
    credentials: CredentialsOption = None,
    device: DeviceOption = None,
) -> None:
    """Receive studies (C-STORE), predict each once complete, and push its results.

    Every instance is on disk (OUT/incoming/<study>/<series>/<sop>.dcm, fsynced) before
    the sender hears success. A study is complete after --stable-seconds without a new
    instance; it is then predicted with the heatmaps (as `medres predict --explain`, into
    OUT/results/<study>) and, with --push, its SR, parametric map and secondary capture
    are sent. Restarted after a crash or a kill, it finishes the studies received but not
    predicted. Logs name studies by a short hash, never patients. Studies from any
    calling AE title are accepted unless --allow-aet names those to accept.

    Example:

        medres pacs listen bundles/pneumonia -o listener/ --push dicom://ORTHANC@pacs:4242
    """
    from medres.pacs.listen import listen
    from medres.pacs.push import push as push_results
    from medres.predict import PredictOptions

    with user_errors():
        check_device(device)
        sender = _peer(push, calling_aet, credentials) if push else None

        def send(results: Path) -> None:  # quiet: the path names the study; the log does
            from medres.pacs.results import write_results

            if (results / "predictions.parquet").exists() and write_results(
                results, bundle
            ).written:
                push_results(results, sender)

        _log_to_console()
        listen(
            bundle,
            out,
            host=host,
            port=port,
            ae_title=ae_title,
            stable_seconds=stable_seconds,
            push=send if sender else None,
            predict_options=PredictOptions(explain=True, device=device or "auto"),
            max_studies=max_studies,
            allowed_aets=allow_aet,
        )


def _write_results(outdir: Path, bundle: Path) -> None:
    from medres.pacs.results import write_results

    summary = write_results(outdir, bundle)
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(summary.skipped.items()))
    console.print(
        f"wrote {len(summary.written)} DICOM object(s) into {outdir / 'dicom'}"
        + (f" (not written: {skipped})" if skipped else "")
    )


def _how(peer) -> str:
    if peer.url.kind == "dimse":
        return f"C-ECHO from AE title {peer.calling_aet!r}"
    return "QIDO-RS" + (" with credentials" if peer.credentials.given else "")


def _log_to_console() -> None:
    """The listener's log lines on stderr with a time stamp (redirect them to a log file);
    pynetdicom's own logger at WARNING: it names SOP Instance UIDs at lower levels."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    medres_log = logging.getLogger("medres.pacs")
    medres_log.addHandler(handler)
    medres_log.setLevel(logging.INFO)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
