"""The ``SOURCE.md`` of a MedMNIST export: dataset, licence, citation, files, counts.

The prose is the template ``medmnist_note.md``; this module picks the phrases that
depend on the subset (licence, file format, labels, patients) and the command that
re-makes the folder.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from medres.datasets._export import SPLITS, SourceNote, counts_text, markdown_table, note_text

# Display names of the MedMNIST v2 subsets (file stem -> name used in the paper).
NAMES = {
    "pathmnist": "PathMNIST",
    "chestmnist": "ChestMNIST",
    "dermamnist": "DermaMNIST",
    "octmnist": "OCTMNIST",
    "pneumoniamnist": "PneumoniaMNIST",
    "retinamnist": "RetinaMNIST",
    "breastmnist": "BreastMNIST",
    "bloodmnist": "BloodMNIST",
    "tissuemnist": "TissueMNIST",
    "organamnist": "OrganAMNIST",
    "organcmnist": "OrganCMNIST",
    "organsmnist": "OrganSMNIST",
    "organmnist3d": "OrganMNIST3D",
    "nodulemnist3d": "NoduleMNIST3D",
    "adrenalmnist3d": "AdrenalMNIST3D",
    "fracturemnist3d": "FractureMNIST3D",
    "vesselmnist3d": "VesselMNIST3D",
    "synapsemnist3d": "SynapseMNIST3D",
}
_FORMATS = {
    "grey": "PNG, 8-bit grey ('L')",
    "rgb": "PNG, 8-bit colour ('RGB')",
    "3d": "NIfTI-1 (.nii.gz), uint8, identity affine (1 mm isotropic, nominal)",
}
_NO_PATIENTS = (
    "`patient_id` is empty: MedMNIST carries no patient identifiers and none are invented. "
)
_KEEP_SPLIT_ADRENAL = (
    "AdrenalMNIST3D's official split is patient-level by construction, so keep it "
    "(`medres split --keep-column split`)."
)
_KEEP_SPLIT_OTHERS = (
    "A patient-level split cannot be made from these files; prefer the official split in "
    "the `split` column (`medres split --keep-column split`), since re-splitting image by "
    "image may put one patient in two splits."
)


def source_note(
    npz_path: Path,
    out_dir: Path,
    summary,
    kind: str,
    splits: list[str],
    limit: int | None,
    per_class: int | None,
) -> SourceNote:
    """The ``SOURCE.md`` note of ``summary`` (an :class:`~medres.datasets.medmnist.
    ExportSummary`) written from ``npz_path`` as ``kind`` (grey, rgb or 3d) images."""
    dataset = summary.dataset
    name = NAMES.get(dataset.removesuffix("_64").removesuffix("_128").removesuffix("_224"))
    counts_head = "positives per label" if summary.multi_label else "images per class"
    table = markdown_table(
        ["split", "images", counts_head],
        [(s, n, counts_text(summary.label_counts[s])) for s, n in summary.counts.items()],
    )
    body = note_text(
        "medmnist_note.md",
        file=npz_path.name,
        size=npz_path.stat().st_size,
        md5=summary.md5,
        licence=_licence(dataset),
        subset=_subset(limit, per_class),
        splits=", ".join(splits),
        format=_FORMATS[kind],
        shape=summary.image_shape,
        label_note="`label` is the 0/1 label vector joined with `;` (multi-label data)."
        if summary.multi_label
        else "`label` is the integer class from the `.npz`.",
        patient_note=_NO_PATIENTS
        + (_KEEP_SPLIT_ADRENAL if dataset.startswith("adrenalmnist3d") else _KEEP_SPLIT_OTHERS),
        table=table,
    )
    return SourceNote(
        f"{name or dataset} (MedMNIST v2), exported by medres",
        body,
        made_with=_command(npz_path, out_dir, splits, limit, per_class),
    )


def _licence(dataset: str) -> str:
    if dataset.startswith("dermamnist"):
        return "CC BY-NC 4.0 (Creative Commons Attribution-NonCommercial 4.0 International)"
    return "CC BY 4.0 (Creative Commons Attribution 4.0 International)"


def _subset(limit: int | None, per_class: int | None) -> str:
    if limit is not None:
        return f"the first {limit} images of each split"
    if per_class is not None:
        return f"the first {per_class} images of each class in each split"
    return "all images"


def _command(
    npz_path: Path, out_dir: Path, splits: list[str], limit: int | None, per_class: int | None
) -> str:
    """The ``medres datasets medmnist`` command line that re-makes the export."""
    parts = ["medres", "datasets", "medmnist", str(npz_path), "-o", str(out_dir)]
    if list(splits) != list(SPLITS):
        parts += ["--splits", ",".join(splits)]
    if limit is not None:
        parts += ["--limit", str(limit)]
    if per_class is not None:
        parts += ["--per-class", str(per_class)]
    return shlex.join(parts)
