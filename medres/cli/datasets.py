"""`medres datasets medmnist | slices | motion`: public datasets into scan folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from medres.cli.common import console, datasets_app, user_errors


@datasets_app.command("medmnist")
def datasets_medmnist(
    npz: Annotated[Path, typer.Argument(help="A MedMNIST v2 file, e.g. pneumoniamnist.npz.")],
    out: Annotated[
        Path, typer.Option("-o", "--out", help="Folder to write (replaced if an earlier export).")
    ],
    limit: Annotated[
        int | None, typer.Option(min=1, help="Keep the first N images of each split.")
    ] = None,
    per_class: Annotated[
        int | None,
        typer.Option(min=1, help="Keep the first N images of each class in each split."),
    ] = None,
    splits: Annotated[
        str, typer.Option(help="Comma-separated official splits to export.")
    ] = "train,val,test",
) -> None:
    """Write a MedMNIST .npz as PNG (2D) or NIfTI (3D) files plus labels.csv and SOURCE.md.

    labels.csv has path, label, split (the official MedMNIST split) and an empty
    patient_id (MedMNIST has no patient ids). Then: medres ingest FOLDER --labels
    FOLDER/labels.csv -o COHORT.parquet

    Example:

        medres datasets medmnist pneumoniamnist.npz -o pneumonia --per-class 50
    """
    from rich.table import Table

    from medres.datasets.medmnist import export_medmnist

    with user_errors():
        s = export_medmnist(npz, out, splits=splits, limit=limit, per_class=per_class)
    head = "positives per label" if s.multi_label else "images per class"
    kind = "3D NIfTI" if s.is_3d else "2D PNG"
    shape = "x".join(map(str, s.image_shape))
    table = Table(title=f"{s.dataset}: {s.n_written} {kind} files")
    table.add_column("split")
    table.add_column("images", justify="right")
    table.add_column(head)
    for split, n in s.counts.items():
        per_label = ", ".join(f"{k}: {v}" for k, v in s.label_counts[split].items())
        table.add_row(split, str(n), per_label)
    Console().print(table)
    Console().print(
        f"wrote {s.out_dir} ({shape} images, labels.csv, SOURCE.md) in {s.seconds:.1f} s; "
        f"md5 of the input {s.md5}"
    )
    for w in s.warnings:
        console.print(f"[yellow]warning:[/] {escape(str(w))}")


@datasets_app.command("slices")
def datasets_slices(
    folder: Annotated[
        Path, typer.Argument(help="Folder of 3D volumes with labels.csv (path, label, ...).")
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder of 2D slices to write.")],
    axis: Annotated[int, typer.Option(help="Voxel axis to cut along (2: axial in RAS).")] = 2,
    min_fraction: Annotated[
        float, typer.Option(help="Keep slices where this share of voxels is above the minimum.")
    ] = 0.01,
    per_volume: Annotated[
        int | None, typer.Option(min=1, help="At most N evenly spaced slices per volume.")
    ] = None,
) -> None:
    """Cut 3D volumes into 2D PNG slices that carry their volume's label, split and
    patient (a volume without a patient id stands for its own patient), for slice-level
    classifiers such as the PET/CT slice-triage study's.

    Writes OUT/*.png, OUT/labels.csv (path, label, split, patient_id, volume,
    slice_index) and OUT/SOURCE.md (counts, skipped volumes).

    Example:

        medres datasets medmnist adrenalmnist3d_64.npz -o adrenal
        medres datasets slices adrenal -o adrenal_slices --per-volume 8
    """
    from medres.datasets.slices import export_slices

    with user_errors():
        s = export_slices(folder, out, axis=axis, min_fraction=min_fraction, per_volume=per_volume)
    low, median, high = s.slice_stats
    Console().print(
        f"wrote {s.n_slices} slices of {s.n_volumes} volumes to {s.out_dir} in {s.seconds:.1f} s "
        f"(per volume: {low}-{high}, median {median:g}; per split: {s.counts})"
    )
    if s.skipped or s.failed:
        console.print(
            f"[yellow]warning:[/] {len(s.skipped)} volume(s) had no slice above "
            f"--min-fraction and {len(s.failed)} could not be read; see {s.out_dir}/SOURCE.md"
        )


@datasets_app.command("motion")
def datasets_motion(
    volumes: Annotated[
        list[Path], typer.Argument(help="MR volumes: NIfTI files or DICOM series folders.")
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder of corrupted slices.")],
    test: Annotated[
        list[Path] | None,
        typer.Option(help="A volume whose slices form the test set (repeatable)."),
    ] = None,
    per_slice: Annotated[
        int, typer.Option(min=1, help="Versions of each slice (one motion-free).")
    ] = 8,
    size: Annotated[str, typer.Option(help="Slice size X,Y in pixels.")] = "96,96",
    min_foreground: Annotated[
        float, typer.Option(help="Keep slices whose head covers at least this share.")
    ] = 0.15,
    slab: Annotated[
        int, typer.Option(min=1, help="Neighbouring slices kept on one side of a split.")
    ] = 16,
    seed: Annotated[int, typer.Option(help="The same seed gives the same images.")] = 0,
) -> None:
    """Simulate patient motion in k-space on real MR slices and label each with its SSIM
    against the motion-free slice (the SSIM-regression study's training data).

    VOLUMES are sliced along all three axes and shared between train and val by slabs;
    --test volumes are sliced in-plane where they are thin and form the test split.
    Writes OUT/<volume>/*.png, OUT/labels.csv (path, label = SSIM, patient_id, split,
    source, axis, slice_index, severity) and OUT/SOURCE.md.

    Example:

        medres datasets motion mni152_t1.nii.gz --test subject2.nii.gz -o motion
    """
    from medres.datasets.motion import MotionSource, export_motion

    with user_errors():
        try:
            shape = tuple(int(v) for v in size.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 2:
            from medres.errors import ConfigError

            raise ConfigError(f"--size expects X,Y such as 96,96; got {size!r}")
        sources = [MotionSource(v) for v in volumes] + [MotionSource(v, "test") for v in test or []]
        s = export_motion(
            sources,
            out,
            per_slice=per_slice,
            size=shape,
            min_foreground=min_foreground,
            slab=slab,
            seed=seed,
        )
    Console().print(
        f"wrote {s.n_images} images ({s.n_slices} slices x {per_slice}) to {s.out_dir} in "
        f"{s.seconds:.1f} s; per split {s.counts}; SSIM {s.ssim_min:.3f} / "
        f"{s.ssim_median:.3f} / {s.ssim_max:.3f} (min / median / max)"
    )
    for w in s.warnings:
        console.print(f"[yellow]warning:[/] {escape(str(w))}")
