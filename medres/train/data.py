"""What training reads: the cohort's train/val rows, the preprocessing spec that fits
them, the datasets (deterministic steps cached in memory) and their loaders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import Transform

from medres.cohort import Cohort, read_row
from medres.errors import ConfigError
from medres.tasks import TaskInfo
from medres.transforms import Preprocess, PreprocessSpec, build_transform, fits_spec, resolve_spec


class ReadScan(Transform):
    """A manifest row's file list → :class:`Volume` (first step of every dataset)."""

    def __call__(self, item: dict):
        return read_row(item)


class ScanDataset(CacheDataset):
    """Scans of a manifest with their targets; deterministic steps cached in memory.

    ``dataset[i]`` is ``(image (C, *spatial_size) float32, target)``.
    """

    def __init__(
        self, rows: pd.DataFrame, targets: np.ndarray, spec: PreprocessSpec, *, train: bool
    ):
        steps = Preprocess([ReadScan(), *build_transform(spec, train=train).transforms])
        items = [
            {"files": list(f), "scan_id": s}
            for f, s in zip(rows["files"], rows["scan_id"], strict=True)
        ]
        super().__init__(items, steps, progress=False, num_workers=1, copy_cache=train)
        self.targets = torch.as_tensor(targets)

    def __getitem__(self, index):
        return super().__getitem__(index), self.targets[index]


def make_loader(
    dataset, batch_size: int, workers: int, *, shuffle: bool, seed: int, pin: bool = False
) -> DataLoader:
    """Batches of ``dataset`` (reshuffled from ``seed``); ``pin``: page-locked host memory,
    so the copies to a GPU can overlap the computation."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        drop_last=False,
        pin_memory=pin,
    )


def split_rows(cohort: Cohort, split: str, required: bool = True) -> pd.DataFrame:
    """The cohort's labelled rows of ``split``; none in a required split is refused."""
    rows = cohort.labelled(split)
    if required and rows.empty:
        raise ConfigError(
            f"the cohort has no labelled '{split}' scans; split it first: "
            "`medres split COHORT.parquet -o COHORT_split.parquet`"
        )
    return rows


def cohort_spec(given, train_rows: pd.DataFrame, val_rows: pd.DataFrame) -> PreprocessSpec:
    """The spec for the cohort's most common kind of scan (dimensionality and colour);
    scans that cannot go through it are refused before training, by name."""
    rows = pd.concat([train_rows, val_rows])
    kinds = rows["shape"].map(lambda s: (len(s), int(s[0]) >= 3 and len(s) == 3))
    typical = rows[kinds == kinds.mode().iloc[0]]
    shapes = typical["shape"].map(tuple)
    shape = list(shapes.mode().iloc[0])
    modality = str(typical["modality"].mode().iloc[0])
    spec = resolve_spec(given, modality, shape)
    misfits = rows[~rows["shape"].map(lambda s: fits_spec(spec, list(s)))]
    if len(misfits):
        names = ", ".join(f"{r.scan_id} {list(r.shape)}" for r in misfits.head(5).itertuples())
        raise ConfigError(
            f"{len(misfits)} training/validation scans do not fit preset {spec.preset} "
            f"({spec.spatial_dims}D, {spec.in_channels} channel(s)), e.g. {names}; remove "
            "them from the cohort (or clear their split) and train again"
        )
    return spec


def require_every_class(info: TaskInfo, targets: torch.Tensor, split: str) -> None:
    """Every class in ``split``, or its AUROC / kappa (the selection score) is undefined."""
    if not info.kind.classifies:
        return
    missing = sorted(set(range(info.num_outputs)) - set(targets.tolist()))
    if missing:
        names = [info.classes[i] for i in missing]
        raise ConfigError(
            f"the {split} split has no scans of class(es) {names}, so validation AUROC / "
            "kappa is undefined; re-split with `medres split` (stratified by label)"
        )
