"""A pipeline's ``config.toml``, validated (DESIGN §8): data, split, training, prediction.

A pipeline holds configuration only; every step is a general medres feature::

    name = "chest_xray_pneumonia"
    question = "Does this paediatric chest X-ray show pneumonia?"
    headline = ["auroc", "accuracy"]       # metrics shown first in the results table

    [data]                                 # where the scans come from (--data PATH)
    source = "medmnist"                    # medmnist | folder | motion
    file = "pneumoniamnist.npz"            # looked up in --data when it is a folder

    [split]                                # medres split options
    keep_test_column = "split"
    move_copies_to_test = true             # train/val copies of test scans go to test

    [train]                                # medres.train.TrainConfig
    epochs = 30

    [predict]                              # medres predict options on the test scans
    explain = true

    [[variants]]                           # optional: several runs in one table
    name = "slice_level"
    split = { unit = "scan" }              # merged into [split], table by table
    train = { model = "resnet18" }         # merged into [train]

Unknown keys are errors naming the closest valid key (:func:`medres.config.validate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medres.config import apply_overrides, read_toml, validate
from medres.errors import ConfigError

RESERVED_NAMES = {"scans", "slices"}  # run folders already used by the data steps
NAME = r"^[A-Za-z0-9_][A-Za-z0-9_-]*$"  # a folder name: no dots, slashes or spaces


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SlicesConfig(_Strict):
    """Cut 2D slices from the 3D volumes (:func:`medres.datasets.slices.export_slices`)."""

    axis: int = 2
    min_fraction: float = Field(0.01, ge=0, le=1)
    per_volume: int | None = Field(None, ge=1)


class MotionSourceConfig(_Strict):
    """One MR volume (NIfTI file or DICOM series folder, relative to --data) and its split."""

    path: str
    split: Literal["auto", "train", "val", "test"] = "auto"
    axes: list[int] | None = None


class MotionConfig(_Strict):
    """Motion-corrupted slices with their SSIM (:func:`medres.datasets.motion.export_motion`)."""

    sources: list[MotionSourceConfig]
    per_slice: int = Field(8, ge=1)
    size: tuple[int, int] = (96, 96)
    min_foreground: float = Field(0.15, ge=0, le=1)
    slab: int = Field(16, ge=1)
    seed: int = 0


class DataConfig(_Strict):
    """Where the scans come from; ``--data PATH`` points at the file or its folder."""

    source: Literal["medmnist", "folder", "motion"]
    file: str | None = None
    labels: str = "labels.csv"
    site: str | None = None
    limit: int | None = Field(None, ge=1)
    slices: SlicesConfig | None = None
    motion: MotionConfig | None = None
    about: str = ""

    @model_validator(mode="after")
    def _keys_fit_the_source(self):
        used = {
            "medmnist": {"file", "limit", "slices"},
            "folder": {"labels", "slices"},
            "motion": {"motion"},
        }[self.source]
        given = self.model_fields_set & {"file", "limit", "labels", "slices", "motion"}
        unused = sorted(given - used)
        if unused:
            raise ValueError(
                f"{', '.join(unused)} do(es) nothing with source = '{self.source}' "
                f"(it uses {', '.join(sorted(used))})"
            )
        if self.source == "motion" and self.motion is None:
            raise ValueError("source = 'motion' needs a [data.motion] table")
        return self


class SplitConfig(_Strict):
    """Options of :func:`medres.split.split_cohort`, and ``allow_leakage``: train on the
    split although it leaks (a patient in two splits, a test scan's pixel copy in train
    or val), as ``medres train --allow-leakage`` does."""

    keep_column: str | None = None
    keep_test_column: str | None = None
    unit: Literal["patient", "scan"] = "patient"
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    move_copies_to_test: bool = False
    allow_leakage: bool = False


class PredictConfig(_Strict):
    """``medres predict`` options used on the test scans."""

    explain: bool = True
    mc_samples: int = Field(0, ge=0)
    tta: bool = False
    batch_size: int = Field(32, ge=1)


class Variant(_Strict):
    """One run of a comparison: overrides of the split and training settings."""

    name: str = Field(pattern=NAME)
    label: str = ""
    split: dict[str, Any] = {}
    train: dict[str, Any] = {}


class PipelineConfig(_Strict):
    """A whole pipeline (see the module docstring)."""

    name: str = Field(pattern=NAME)
    question: str = ""
    headline: list[str] = ["auroc", "accuracy"]
    data: DataConfig
    split: SplitConfig = Field(default_factory=SplitConfig)
    train: dict[str, Any] = {}
    predict: PredictConfig = Field(default_factory=PredictConfig)
    variants: list[Variant] = []

    def runs(self) -> list[Variant]:
        """The variants, or one run named after the pipeline when none is given."""
        return self.variants or [Variant(name=self.name)]


def merge_tables(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied, nested tables merged key by key."""
    merged = dict(base)
    for key, value in changes.items():
        old = merged.get(key)
        both = isinstance(old, dict) and isinstance(value, dict)
        merged[key] = merge_tables(old, value) if both else value
    return merged


def variant_split_config(config: PipelineConfig, variant: Variant) -> SplitConfig:
    """The validated split options of one run: [split], then the variant's table."""
    split = merge_tables(config.split.model_dump(), variant.split)
    return validate(SplitConfig, split, f"[split] of {config.name}/{variant.name}")


def variant_train_config(config: PipelineConfig, variant: Variant, overrides: list[str]):
    """The validated :class:`~medres.train.TrainConfig` of one run: [train], then the
    variant's table, then ``--set`` overrides."""
    from medres.train.config import TrainConfig

    settings = apply_overrides(merge_tables(config.train, variant.train), overrides)
    return validate(TrainConfig, settings, f"[train] of {config.name}/{variant.name}")


def load_pipeline(
    path: str | Path, overrides: list[str] | None = None
) -> tuple[PipelineConfig, Path]:
    """``path``: a pipeline folder holding ``config.toml``, or the TOML file itself.

    Every run's split and training settings (with ``overrides``) are validated here,
    so a typo fails before any data is prepared. Returns the config and its file."""
    path = Path(path)
    file = path / "config.toml" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(
            f"no pipeline at {path}: expected a folder with config.toml (e.g. "
            "pipelines/chest_xray_pneumonia) or a .toml file"
        )
    config = validate(PipelineConfig, read_toml(file), f"pipeline {file}")
    names = [v.name for v in config.runs()]
    clash = sorted({n for n in names if names.count(n) > 1} | (set(names) & RESERVED_NAMES))
    if clash:
        raise ConfigError(f"{file}: run names must differ and not be scans/slices: {clash}")
    for variant in config.runs():
        variant_split_config(config, variant)
        variant_train_config(config, variant, overrides or [])
    return config, file
