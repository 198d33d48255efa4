"""The review store's tables as medres wrote them at schema version 1 (frozen: never
edit), for the test that opens a version 1 store and migrates it
(tests/test_review_readers.py). A copy of ``medres/review/schema.py`` before version 2
added ``assignments``, ``impressions``, ``runs.blinded`` and ``decisions.kind``.
"""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    JSON,
    Boolean,
    Column,
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
)

SCHEMA_KEY = "schema_version"  # the settings row holding the store's schema version
SCHEMA_VERSION = 1  # the review store's schema version (docs/formats.md#review-store)
READS = (1,)  # the major versions this medres opens (no row: before versions, 1)

DECISIONS: tuple[str, ...] = ("agree", "disagree", "uncertain")

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
_append_only(audit)
