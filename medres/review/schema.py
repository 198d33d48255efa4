"""The review store's tables (SQLAlchemy Core; SQLite by default, any SQLAlchemy URL).

==========  ====================================================================
settings    name → value: the pseudonymisation salt (created once per store) and the
            store's ``schema_version`` (:data:`SCHEMA_VERSION`)
runs        one per loaded ``medres predict`` OUTDIR: bundle id(s) and checksum, the
            OUTDIR and the scan folder it predicted, classes, run.json summary;
            ``run_key`` (unique) makes loading the same OUTDIR twice a no-op
cases       one per scan per run: ids, paths, the prediction fields, and the priority
            (``priority_tier`` ascending, then ``priority_score`` descending);
            unique on (run_id, scan_id, input_hash)
decisions   a reviewer's verdict on a case (agree / disagree / uncertain); never
            updated: a later decision on the same case is a new row. ``kind``
            ``reading`` (a reader's) or ``adjudication`` (the final word on a case
            its readers disagree on). A reader's latest reading is that reader's
            current one; a case's current decision is its latest adjudication, else
            its latest reading
assignments which reader reads which case (several readers per case: double reading);
            unique on (case_id, reader)
impressions a reader's first impression of a case in a blinded run, recorded before
            the model's output is shown: a class, or uncertain; one per reader and case
audit       append-only log: who did what to which run / case, when, details
==========  ====================================================================

Times are ISO 8601 UTC text (``2026-11-22T19:41:14.123456+00:00``): portable across
SQLite and PostgreSQL and sortable as text. On SQLite and PostgreSQL, triggers refuse UPDATE and
DELETE on ``decisions``, ``impressions`` and ``audit``.

:func:`check_schema` refuses a store whose ``schema_version`` has a major version this
medres does not read, migrates a version 1 store (or one created before versions
existed) to version 2 in place, and records the version. docs/formats.md is the written
contract.
"""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    JSON,
    Boolean,
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    false,
    insert,
    inspect,
    select,
    update,
)

from medres.errors import ReviewError
from medres.files import check_format

SCHEMA_KEY = "schema_version"  # the settings row holding the store's schema version
SCHEMA_VERSION = 2  # the review store's schema version (docs/formats.md#review-store)
READS = (1, 2)  # the major versions this medres opens (no row: before versions, 1); 1 is migrated

DECISIONS: tuple[str, ...] = ("agree", "disagree", "uncertain")
READING, ADJUDICATION = "reading", "adjudication"  # decisions.kind
IMPRESSIONS: tuple[str, ...] = ("label", "uncertain")  # impressions.decision

metadata = MetaData()

settings = Table(
    "settings",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_key", String(64), nullable=False, unique=True),
    Column("bundle_id", String(512), nullable=False),  # ensembles: ids joined by "+"
    Column("bundle_checksum", String(64), nullable=False),  # sha256 of the first bundle.json
    Column("outdir", Text, nullable=False),  # the predict OUTDIR, absolute
    Column("scan_folder", Text),  # the folder it predicted (run.json "folder")
    Column("classes", JSON, nullable=False),  # ["0", "1"]: the run's class names, in order
    Column("show_patient_ids", Boolean, nullable=False),
    Column("loaded_at", String(40), nullable=False),
    Column("loaded_by", String(128), nullable=False),
    Column("summary", JSON, nullable=False),  # run.json as written by medres predict
    # v2: readers record a first impression before they see the model's output
    Column("blinded", Boolean, nullable=False, server_default=false()),
)

cases = Table(
    "cases",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("scan_id", Text, nullable=False),
    Column("path", Text, nullable=False),  # the scan's file or DICOM series folder
    Column("input_hash", String(64), nullable=False),
    Column("modality", String(32)),
    Column("site", String(256)),
    Column("patient_id", String(256)),  # pseudonym unless the run shows patient ids
    Column("study_uid", String(128)),
    Column("series_uid", String(128)),
    Column("bundle_id", String(512), nullable=False),
    Column("predicted_class", String(256), nullable=False),
    Column("confidence", Float),  # calibrated probability of predicted_class
    Column("probabilities", JSON, nullable=False),  # {class: calibrated probability}
    Column("conformal_set", JSON, nullable=False),  # [class, ...]
    Column("set_size", Integer, nullable=False),
    Column("max_prob", Float),
    Column("entropy", Float),
    Column("mutual_information", Float),
    Column("variance", Float),
    Column("uncertainty", Float, nullable=False),  # 1 - max_prob
    Column("ood_score", Float),
    Column("ood", Boolean, nullable=False),
    Column("refer", Boolean, nullable=False),
    Column("refer_reason", Text, nullable=False),
    Column("heatmap", Text),  # overlay PNG, absolute (None without --explain)
    Column("heatmap_map", Text),  # raw map .npy / .nii.gz, absolute
    Column("predicted_at", String(40)),
    Column("priority_tier", Integer, nullable=False),  # 0 OOD, 1 set > 1 class, 2 the rest
    Column("priority_score", Float, nullable=False),  # within a tier, higher first
    UniqueConstraint("run_id", "scan_id", "input_hash", name="uq_case_scan"),
    Index("ix_cases_order", "priority_tier", "priority_score"),
)

decisions = Table(
    "decisions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("case_id", Integer, ForeignKey("cases.id"), nullable=False, index=True),
    Column("reviewer", String(128), nullable=False),
    Column("decision", String(16), nullable=False),
    Column("corrected_label", String(256)),  # set for disagree only
    Column("notes", Text, nullable=False),
    Column("decided_at", String(40), nullable=False),
    Column("bundle_id", String(512), nullable=False),  # the model whose output was judged
    # v2: reading (a reader's own) or adjudication (the final word on a disputed case)
    Column("kind", String(16), nullable=False, server_default=READING),
)

assignments = Table(
    "assignments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("case_id", Integer, ForeignKey("cases.id"), nullable=False, index=True),
    Column("reader", String(128), nullable=False, index=True),
    Column("assigned_at", String(40), nullable=False),
    Column("assigned_by", String(128), nullable=False),
    UniqueConstraint("case_id", "reader", name="uq_assignment"),
)

impressions = Table(
    "impressions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("case_id", Integer, ForeignKey("cases.id"), nullable=False, index=True),
    Column("reviewer", String(128), nullable=False),
    Column("decision", String(16), nullable=False),  # label / uncertain (IMPRESSIONS)
    Column("label", String(256)),  # the class the reader saw; None when uncertain
    Column("notes", Text, nullable=False),
    Column("recorded_at", String(40), nullable=False),
    UniqueConstraint("case_id", "reviewer", name="uq_impression"),
)

audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", String(40), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(32), nullable=False),  # load_run, decide, export, sign_in... (docs)
    Column("run_id", Integer, ForeignKey("runs.id")),
    Column("case_id", Integer, ForeignKey("cases.id")),
    Column("details", JSON, nullable=False),
)


def _append_only(table: Table) -> None:
    """Triggers that refuse UPDATE and DELETE on ``table`` (SQLite and PostgreSQL)."""
    refusal = f"{table.name} is append-only: add a new row instead"
    for verb in ("UPDATE", "DELETE"):
        trigger = DDL(
            f"CREATE TRIGGER IF NOT EXISTS {table.name}_no_{verb.lower()} BEFORE {verb} "
            f"ON {table.name} BEGIN SELECT RAISE(ABORT, '{refusal}'); END"
        )
        event.listen(table, "after_create", trigger.execute_if(dialect="sqlite"))
    function = f"medres_{table.name}_append_only"
    for statement in (
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN RAISE EXCEPTION '{refusal}'; END $$",
        f"CREATE TRIGGER {table.name}_append_only BEFORE UPDATE OR DELETE ON {table.name} "
        f"FOR EACH ROW EXECUTE FUNCTION {function}()",
    ):
        event.listen(table, "after_create", DDL(statement).execute_if(dialect="postgresql"))


_append_only(decisions)
_append_only(impressions)
_append_only(audit)

# Columns version 2 added to version 1 tables: a v1 store gets them by ALTER TABLE
ADDED_COLUMNS = ((runs, "blinded"), (decisions, "kind"))


def check_schema(conn: Connection, store: str) -> None:
    """Refuse the store ``store`` (named in the message) when its ``schema_version`` has a
    major version this medres does not read; migrate a version 1 store (or one without a
    version: created before versions existed) to :data:`SCHEMA_VERSION` and record it.

    Call inside the write transaction that creates the tables (``create_all`` has added
    the tables new in version 2; this adds the new columns, with their defaults)."""
    found = conn.execute(select(settings.c.value).where(settings.c.name == SCHEMA_KEY)).scalar()
    major = 1 if found is None else check_format(f"review store {store}", found, READS, ReviewError)
    if major == SCHEMA_VERSION and found is not None:
        return
    _add_columns(conn)
    if found is None:
        conn.execute(insert(settings).values(name=SCHEMA_KEY, value=str(SCHEMA_VERSION)))
    else:
        conn.execute(
            update(settings).where(settings.c.name == SCHEMA_KEY).values(value=str(SCHEMA_VERSION))
        )


def _add_columns(conn: Connection) -> None:
    """ALTER TABLE ... ADD COLUMN for each of :data:`ADDED_COLUMNS` the store lacks (a new
    store has them all already; a version 1 store none)."""
    inspector = inspect(conn)
    for table, name in ADDED_COLUMNS:
        if name in {c["name"] for c in inspector.get_columns(table.name)}:
            continue
        column = table.c[name]
        kind = column.type.compile(dialect=conn.dialect)
        default = column.server_default.arg  # a text or an SQL expression (false())
        default = f"'{default}'" if isinstance(default, str) else default.compile(conn)
        conn.exec_driver_sql(
            f"ALTER TABLE {table.name} ADD COLUMN {name} {kind} NOT NULL DEFAULT {default}"
        )
