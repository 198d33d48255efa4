"""The cohort manifest: one row per scan, saved as Parquet (DESIGN §3).

Columns (docs/formats.md "Cohort manifest" is the written contract):

==============  ==========================================================
scan_id         unique, stable id of the scan (series UID, or relative path)
path            the scan's file, or the folder holding a DICOM series
files           every file of the scan (a DICOM series spans many)
patient_id      PatientID from the header or the labels file; null if unknown
study_uid       StudyInstanceUID (null for non-DICOM)
series_uid      SeriesInstanceUID (null for non-DICOM)
modality        DICOM Modality, or ``NIFTI`` / ``IMAGE`` when the file has none
site            InstitutionName, or ``--site``
shape           array shape, channels first: [C, X, Y] or [C, X, Y, Z]
spacing_mm      voxel size per spatial axis in mm
pixel_hash      sha256 of the decoded pixels (finds duplicates across splits)
label           the label joined from the labels file (null if none)
split           train / val / test (null until ``medres split``)
status          ``ok`` or ``error``
error           the reason a scan could not be read (null when ok)
error_type      the error's class name (ScanReadError, ...)
==============  ==========================================================

The Parquet file's key-value metadata holds ``medres`` JSON: the format version
(``format``, :data:`FORMAT`), the medres version, the folder ingested, and flags such as
``split_by`` (``patient`` or ``scan``). docs/formats.md is the written contract.

Modules: :mod:`~medres.cohort.manifest` (the :class:`Cohort` table, Parquet, reading a
row's scan), :mod:`~medres.cohort.ingest` (:func:`build_cohort`: a folder into a
manifest), :mod:`~medres.cohort.labels` (joining a labels CSV) and
:mod:`~medres.cohort.summary` (the terminal summary).
"""

from medres.cohort.ingest import IngestReport, build_cohort, progress_task
from medres.cohort.labels import LABEL_KEYS, MISSING_LABELS, join_labels
from medres.cohort.manifest import (
    COLUMNS,
    FORMAT,
    READS,
    SPLITS,
    Cohort,
    photometric,
    read_row,
    real_files,
)
from medres.cohort.summary import summary_tables

__all__ = [
    "COLUMNS",
    "FORMAT",
    "LABEL_KEYS",
    "MISSING_LABELS",
    "READS",
    "SPLITS",
    "Cohort",
    "IngestReport",
    "build_cohort",
    "join_labels",
    "photometric",
    "progress_task",
    "read_row",
    "real_files",
    "summary_tables",
]
