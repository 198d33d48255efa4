"""The typed ``bundle.json`` (:class:`Manifest`) and the checks between its fields
(:func:`validate_manifest`); each refusal names the field, what was found and expected."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medres.bundle.layout import _RESTORE, FORMAT, MANIFEST, model_files
from medres.errors import BundleError, ConfigError
from medres.limits import MAX_VOXELS_ENV, max_voxels
from medres.tasks import TASKS, label_key, task_named
from medres.train.class_names import names_problem
from medres.transforms import PreprocessSpec


class ManifestTarget(BaseModel):
    """``target``: regression targets' mean and sd (for standardising) and range."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    mean: float = 0.0
    std: float = Field(1.0, gt=0)
    range: tuple[float, float] | None = None


class ManifestModel(BaseModel):
    """``model``: the registered model's name and its :func:`create_model` arguments."""

    model_config = ConfigDict(extra="forbid")
    name: str
    args: dict[str, Any]  # free-form: create_model checks each argument


class ManifestTraining(BaseModel):
    """``training``: facts of the run that made the weights. Keys beyond these (seconds,
    leakage counts, ...) are kept as they were written."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    best_epoch: int | None = None
    metric: str | None = None
    epochs_run: int | None = None
    stopped_by: str | None = None  # a medres.train.StopReason value
    seed: int | None = None
    device: str | None = None  # where it trained (cpu, cuda:0); the weights are CPU tensors
    precision: str | None = None  # fp32, bf16 or fp16
    processes: int = 1  # torchrun ranks that trained it
    referable_from: Any = None  # ordinal: the lowest referable grade
    flag_below: float | None = None  # regression: flag predictions below this value
    leakage_allowed: bool = False


class TrainedOn(BaseModel):
    """``cohort``: what the training cohort was (path, fingerprint, counts, the DICOM
    modalities and the photometry of its training scans)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    path: str | None = None
    fingerprint: str | None = None
    modalities: list[str] = []
    channels: list[int] = []
    photometric: Literal["grey", "colour"] | None = None

    def grey(self, in_channels: int) -> bool:
        """Whether the training scans were grey: judged on their content
        (``photometric``), else their channel counts, else (the oldest bundles) the
        model's ``in_channels``."""
        if self.photometric:
            return self.photometric == "grey"
        if self.channels:
            return max(self.channels) < 3
        return in_channels == 1


class ManifestRuntime(BaseModel):
    """One entry of ``runtimes``: the model compiled for a runtime by ``medres export``
    (``file``, checksummed in ``files``), the weights it was exported from
    (``weights_sha256``) and what it was verified against (``verified``: the reference
    runtime, the quantity compared, the scans, the maximum absolute difference found and
    the tolerance it had to meet). A quantised model has its own trust layer: ``trust``
    names the bundle folder holding its ``calibration.json`` (and ``ood.safetensors``);
    it keeps the bundle's binary operating point. Keys beyond these (opset, versions,
    ...) are kept."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    file: str
    precision: str = "fp32"
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    verified: dict[str, Any]
    trust: str | None = None  # folder of the runtime's own trust layer (int8)


class Manifest(BaseModel):
    """The typed fields of ``bundle.json``. Free-form records (``training``, ``cohort``,
    ``lineage``, ``versions``) are dicts, and keys added later (``updated``,
    ``calibration_cohort`` ...) are allowed. :func:`validate_manifest` adds the checks
    between fields; :func:`load_bundle` those against the weights."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    format: Literal[FORMAT]
    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    parent_id: str | None = None
    created: str | None = None
    task: Literal[TASKS]
    classes: list[Any] | None
    class_names: list[str] | None = None  # aligned with classes; None: labels as text
    target: ManifestTarget = ManifestTarget()
    threshold: float | None = None
    calibrated: bool = False
    model: ManifestModel
    preprocess: PreprocessSpec
    training: ManifestTraining = ManifestTraining()
    cohort: TrainedOn = TrainedOn()
    lineage: list[dict[str, Any]] | None = None  # None: a bundle from before lineage
    versions: dict[str, str] = {}
    files: dict[str, str]
    runtimes: dict[str, ManifestRuntime] = {}  # `medres export`: compiled models, verified

    @field_validator("classes")
    @classmethod
    def _labels(cls, classes: list[Any] | None) -> list[Any] | None:
        if classes is None:
            return None
        odd = [c for c in classes if isinstance(c, bool) or not isinstance(c, int | str)]
        if odd:
            raise ValueError(f"whole numbers or text labels (not {odd[0]!r})")
        keys = [label_key(c) for c in classes]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"unique labels (1, 1.0 and '1' are one class); {repeated} repeat")
        return classes


def _field_error(path: Path, field: str, found: Any, expected: str) -> BundleError:
    found = found if isinstance(found, str) else repr(found)
    found = found if len(found) <= 200 else found[:200] + " ..."
    return BundleError(
        f"{path / MANIFEST} field '{field}' does not fit this bundle: found {found}, "
        f"expected {expected}; {_RESTORE}"
    )


def check_class_names(path: str | Path, typed: Manifest) -> None:
    """``class_names``, when present: one distinct, non-empty name per class of
    ``classes``, none for regression. Checked after the classes (and, when loading, the
    weights), so an edited ``classes`` is named as the field that contradicts them.

    Raises:
        BundleError: naming ``class_names``, what was found and expected.
    """
    classes = typed.classes if task_named(typed.task).classifies else None
    problem = names_problem(classes, typed.class_names)
    if problem:
        raise _field_error(Path(path), "class_names", typed.class_names, problem)


def validate_manifest(path: str | Path, manifest: dict[str, Any]) -> Manifest:
    """The typed manifest of the bundle at ``path``, with its fields consistent with each
    other: classes with the task, the threshold with the task, the model's input
    channels and dimensions with the preprocessing, the input grid within
    :func:`medres.limits.max_voxels`. (``class_names``: :func:`check_class_names`.)

    Raises:
        BundleError: naming the first field that fails, what was found and expected.
    """
    path = Path(path)
    try:
        typed = Manifest.model_validate(manifest)
    except ValidationError as e:
        error = e.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        expected = error["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
        found = repr(error["input"]) if error["type"] != "missing" else "no value"
        raise _field_error(path, field, found, expected) from None
    except ConfigError as e:  # PreprocessSpec's checks between its own fields
        raise _field_error(path, "preprocess", manifest.get("preprocess"), str(e)) from None
    task, classes = task_named(typed.task), typed.classes
    problem = task.classes_problem(classes)
    if problem:
        raise _field_error(path, "classes", classes, problem)
    if typed.threshold is not None:
        if not task.operating_point:
            raise _field_error(
                path,
                "threshold",
                typed.threshold,
                f"null for task {task.name!r} (only binary bundles have an operating point)",
            )
        # choose_threshold may return the float just above 1 (nothing positive)
        if not 0 <= typed.threshold <= 1 + 1e-9:
            raise _field_error(
                path, "threshold", typed.threshold, "a probability of the positive class in [0, 1]"
            )
    for runtime, entry in typed.runtimes.items():
        unlisted = [name for name in model_files(entry.file) if name not in typed.files]
        if unlisted:  # an OpenVINO IR's .bin too: its weights are checked like the graph
            raise _field_error(
                path,
                f"runtimes.{runtime}.file",
                entry.file,
                f"a file listed with its checksum in 'files' ({', '.join(unlisted)} is not)",
            )
        if entry.trust is not None and f"{entry.trust}/calibration.json" not in typed.files:
            raise _field_error(
                path,
                f"runtimes.{runtime}.trust",
                entry.trust,
                "a folder whose calibration.json is listed with its checksum in 'files'",
            )
    spec = typed.preprocess
    for name in ("preset", "spatial_size"):
        if getattr(spec, name) is None:
            raise _field_error(
                path, f"preprocess.{name}", None, "a value (a bundle's spec is complete)"
            )
    voxels, limit = math.prod(spec.spatial_size), max_voxels()
    if voxels > limit:
        grid = " x ".join(map(str, spec.spatial_size))
        raise _field_error(
            path,
            "preprocess.spatial_size",
            f"{grid} = {voxels} voxels",
            f"at most {limit} voxels per input (medres.limits.max_voxels; set "
            f"{MAX_VOXELS_ENV} to allow more if the model really takes such inputs)",
        )
    args = typed.model.args
    for name, wanted, why in (
        ("in_channels", spec.in_channels, f"the channels preset {spec.preset!r} makes"),
        ("spatial_dims", spec.spatial_dims, f"the dimensions of preset {spec.preset!r}"),
    ):
        if args.get(name) != wanted:
            raise _field_error(path, f"model.args.{name}", args.get(name), f"{wanted}, {why}")
    return typed
