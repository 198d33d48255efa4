"""The ``SOURCE.md`` of a slice export: what was cut, how, counts, skipped volumes.

The prose is the template ``slices_note.md``; this module fills it in from a
:class:`~medres.datasets.slices.SliceExportSummary` and picks the phrases that depend on
the export (licence copied or not, slices per volume, intensity scaling, patients).
"""

from __future__ import annotations

from pathlib import Path

from medres.datasets._export import (
    LABELS_CSV,
    SOURCE_MD,
    SourceNote,
    counts_text,
    markdown_table,
    note_text,
)
from medres.files import sha256_file

SOURCE_VOLUMES_MD = "SOURCE-volumes.md"


def source_note(s, folder: Path, labels: Path, out_dir: object, copied: bool) -> SourceNote:
    """The note of the slice export ``s`` (a ``SliceExportSummary``) of ``folder`` with
    the labels table ``labels``; ``copied``: the input's ``SOURCE.md`` was copied."""
    lo, median, hi = s.slice_stats
    table = markdown_table(
        ["split", "volumes", "slices", "slices per label"],
        [
            (split or "(none)", s.volume_counts[split], n, counts_text(s.label_counts[split]))
            for split, n in s.counts.items()
        ],
    )
    body = note_text(
        "slices_note.md",
        folder=folder,
        n_volumes=s.n_volumes,
        labels_name=labels.name,
        labels_sha256=sha256_file(labels),
        licence=_licence(copied),
        axis=s.axis,
        planes=", ".join(f"{k} in {v} volume(s)" for k, v in sorted(s.planes.items())),
        min_fraction=f"{s.min_fraction:g}",
        taken=_taken(s.per_volume),
        scaling=_scaling(s.rescaled),
        patients=_patients(s.patients_from_volume),
        table=table,
        slices_min=lo,
        slices_median=f"{median:g}",
        slices_max=hi,
        n_slices=s.n_slices,
        n_sliced=len(s.slices_per_volume),
        n_skipped=len(s.skipped),
        skipped="\n".join(f"- `{v}`" for v in s.skipped) or "- none",
        n_failed=len(s.failed),
        failed="\n".join(f"- `{v}`: {why}" for v, why in s.failed) or "- none",
    )
    return SourceNote(
        f"2D slices of `{folder.name}`, cut by medres",
        body,
        made_with=_call(folder, labels, out_dir, s),
        language="python",
        rerun="that",
    )


def _licence(copied: bool) -> str:
    if copied:
        return (
            f"Its `{SOURCE_MD}` is copied here as `{SOURCE_VOLUMES_MD}`: the licence and "
            "citation given there apply to these slices."
        )
    return f"The input folder has no `{SOURCE_MD}`: check the licence of the volumes."


def _taken(per_volume: int | None) -> str:
    if per_volume:
        return (
            f"at most {per_volume} per volume, evenly spaced among those (the centres of "
            f"{per_volume} equal runs)"
        )
    return "all of them"


def _scaling(rescaled: int) -> str:
    if rescaled:
        return (
            f"{rescaled} volume(s) were not uint8 and were **min-max scaled to 0..255 per "
            "volume** (the volume's minimum → 0, its maximum → 255, rounded); the others "
            "keep their uint8 values"
        )
    return "every volume was uint8: the values are kept as they are (no scaling)"


def _patients(patients_from_volume: int) -> str:
    if patients_from_volume:
        return (
            f"{patients_from_volume} volume(s) had no `patient_id`; for them `patient_id` "
            "is the volume id (every such volume is its own patient), so a patient-level "
            "split keeps all slices of a volume together. Two volumes of one person are "
            "then two patients: keep the source's patient-level test split "
            "(`split_cohort(..., keep_test_column='split')`)."
        )
    return "Every volume had a `patient_id`; its slices carry it."


def _call(folder: Path, labels: Path, out_dir: object, s) -> str:
    """The Python call that re-makes the export."""
    args = [repr(str(folder)), repr(str(out_dir))]
    if labels != folder / LABELS_CSV:
        args.append(f"labels_csv={str(labels)!r}")
    args += [f"axis={s.axis}", f"min_fraction={s.min_fraction:g}", f"per_volume={s.per_volume}"]
    return f"from medres.datasets.slices import export_slices\nexport_slices({', '.join(args)})"
