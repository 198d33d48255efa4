"""The model bundle on disk (DESIGN §3): save, load, verify.

A bundle is a folder::

    bundle.json         id, parent_id, task, classes, model name + arguments, preprocessing
                        spec, operating point, training cohort fingerprint, versions, and
                        the sha256 of every file below but bundle.json.sha256
    bundle.json.sha256  the sha256 of bundle.json itself, in ``sha256sum`` format
                        (``<64 hex digits>  bundle.json``): ``sha256sum -c bundle.json.sha256``
                        in the folder verifies it
    weights.safetensors the selected epoch's weights (no pickle)
    config.json         the resolved training configuration
    metrics.json        validation (and test, when the cohort has one) metrics with CIs
    metrics.csv         per-epoch training history
    model_card.md       intended use, data, metrics, limitations
    calibration.json    classifiers: calibration, conformal quantiles, referral threshold,
                        OOD threshold (:class:`medres.uncertainty.trust.Trust`)
    ood.safetensors     classifiers: the OOD model's class means and precision matrix
    frozen_test.json    the test patients (salted hashes) and scans no retraining may
                        train on (:mod:`medres.frozen`)
    training_cohort.parquet  retrained bundles: the cohort trained on

:func:`write_manifest` is the only writer of ``bundle.json``: it writes the sidecar, then
``bundle.json`` last, so a folder without ``bundle.json`` is not a bundle.
:func:`verify_bundle` refuses a bundle whose ``bundle.json`` fails its sidecar (it was
edited: a changed threshold, renamed classes, another task) or has none (a bundle from a
medres before the sidecar: retrain it), and one whose files fail their checksums, naming
the file. :func:`load_bundle` also checks the manifest's fields by type
(:class:`Manifest`) and against the weights: the task and classes must give the head's
number of outputs, a threshold is a probability of a binary task, and the input grid
stays within :func:`medres.limits.max_voxels`. Each refusal is a :class:`BundleError`
naming the field, what was found and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import monai
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medres import __version__
from medres.cohort import Cohort
from medres.errors import BundleError, ConfigError
from medres.files import atomic_write, jsonable, sha256_file, write_json, write_text
from medres.frozen import FROZEN_TEST
from medres.limits import MAX_VOXELS_ENV, max_voxels
from medres.models import create_model
from medres.tasks import TASKS, TaskInfo, label_key, task_named
from medres.train.config import TrainConfig
from medres.transforms import PreprocessSpec
from medres.uncertainty.trust import CALIBRATION, Trust

FORMAT = 1
MANIFEST = "bundle.json"
MANIFEST_SUM = "bundle.json.sha256"  # sha256sum format: `sha256sum -c bundle.json.sha256`
_SUM_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *]bundle\.json\n?")
_RESTORE = "restore the original bundle or retrain it"
HEAD = "head.weight"  # the classifier head's (outputs, features) weight in every model
WEIGHTS = "weights.safetensors"
REQUIRED = (WEIGHTS, "config.json", "metrics.json", "model_card.md")
TRAINING_COHORT = "training_cohort.parquet"  # retrained bundles: the cohort trained on
OPTIONAL = ("metrics.csv", TRAINING_COHORT)


@dataclass
class Bundle:
    """A loaded, verified bundle: its typed manifest (``bundle.json``), the ready model
    (eval mode), preprocessing, task and trust layer. The only way the rest of medres
    reads a bundle's files: no other module opens ``bundle.json`` or ``config.json``."""

    path: Path
    manifest: Manifest
    model: torch.nn.Module
    spec: PreprocessSpec
    info: TaskInfo
    trust: Trust | None = None

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def threshold(self) -> float | None:
        """The binary operating point on calibrated P(positive); None for other tasks."""
        return self.manifest.threshold

    @property
    def training(self) -> ManifestTraining:
        """Facts of the training run (selected epoch, stop reason, seed, referral grade,
        regression flag)."""
        return self.manifest.training

    @property
    def trained_on(self) -> TrainedOn:
        """The training cohort's record (path, fingerprint, modalities, photometry)."""
        return self.manifest.cohort

    @property
    def lineage(self) -> list[dict[str, Any]]:
        """Every cohort the weights have seen, oldest first (``{path, fingerprint,
        bundle_id}`` ...); a bundle from before lineage was kept lists its own cohort."""
        if self.manifest.lineage is not None:
            return [dict(entry) for entry in self.manifest.lineage]
        cohort = self.manifest.cohort
        return [{"path": cohort.path, "fingerprint": cohort.fingerprint, "bundle_id": self.id}]

    @cached_property
    def checksum(self) -> str:
        """sha256 of ``bundle.json`` (verified against its sidecar when loaded)."""
        return sha256_file(self.path / MANIFEST)

    @cached_property
    def config(self) -> TrainConfig:
        """The resolved training configuration (``config.json``, checksummed).

        Raises:
            BundleError: it no longer validates as a :class:`TrainConfig` (a bundle from
                an older medres).
        """
        path = self.path / "config.json"
        try:
            return TrainConfig.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError, ValidationError) as e:
            raise BundleError(
                f"{path} cannot be read as a training configuration ({e}); retrain the "
                "bundle with this medres"
            ) from e


def save_bundle(
    out: str | Path,
    *,
    model: torch.nn.Module,
    model_name: str,
    model_args: dict[str, Any],
    spec: PreprocessSpec,
    info: TaskInfo,
    config: dict[str, Any],
    training: dict[str, Any],
    cohort: dict[str, Any],
    metrics: dict[str, Any],
    model_card: str,
    threshold: float | None = None,
    trust: Trust | None = None,
    parent_id: str | None = None,
    parent_lineage: list[dict[str, Any]] = (),
    frozen_test: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle into ``out`` (created if needed); returns the ``bundle.json`` path.

    Args:
        training: facts of the run (best epoch, selection metric, seconds, seed ...).
        cohort: the training cohort's fingerprint, path and counts.
        metrics: what goes to ``metrics.json`` (evaluations with CIs).
        parent_id: the champion this bundle was retrained from.
        parent_lineage: the parent's ``lineage``; this bundle's is that plus its own
            training cohort: every cohort the weights have seen, oldest first, each as
            ``{path, fingerprint, bundle_id}`` (the bundle that trained on it).
        frozen_test: written to ``frozen_test.json`` (:func:`medres.frozen.freeze`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS, lambda tmp: save_file(weights, tmp))
    write_json(out / "config.json", config)
    write_json(out / "metrics.json", metrics)
    write_text(out / "model_card.md", model_card)
    files = list(REQUIRED) + (trust.save(out) if trust is not None else [])
    if frozen_test is not None:
        write_json(out / FROZEN_TEST, frozen_test)
        files.append(FROZEN_TEST)
    files += [name for name in OPTIONAL if (out / name).is_file()]
    bundle_id = uuid.uuid4().hex
    seen = {k: cohort.get(k) for k in ("path", "fingerprint", "sources", "reviews") if k in cohort}
    manifest = {
        "format": FORMAT,
        "id": bundle_id,
        "parent_id": parent_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": info.task,
        "classes": info.classes,
        "target": {"mean": info.target_mean, "std": info.target_std, "range": info.value_range},
        "threshold": threshold,
        "calibrated": trust is not None,
        "model": {"name": model_name, "args": model_args},
        "preprocess": spec.model_dump(mode="json"),
        "training": training,
        "cohort": cohort,
        "lineage": [*parent_lineage, {**seen, "bundle_id": bundle_id}],
        "versions": versions(),
        "files": {name: sha256_file(out / name) for name in files},
    }
    return write_manifest(out, manifest)


def update_bundle(
    path: str | Path, *, files: list[str], metrics: dict[str, Any], fields: dict[str, Any]
) -> Path:
    """Record new or rewritten ``files`` (already written into the bundle), a new
    ``metrics.json`` and manifest ``fields`` in a verified bundle; ``bundle.json`` and
    its sidecar are rewritten last (:func:`write_manifest`), so a crash leaves a bundle
    that refuses the changed files (or the old manifest) by checksum."""
    path = Path(path)
    manifest = json.loads((path / "bundle.json").read_text())  # verified by the caller
    write_json(path / "metrics.json", metrics)
    manifest.update(fields)
    for name in [*files, "metrics.json"]:
        manifest["files"][name] = sha256_file(path / name)
    manifest["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    return write_manifest(path, manifest)


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``bundle.json`` and its checksum ``bundle.json.sha256`` (``sha256sum``
    format); the only writer of either. Returns the ``bundle.json`` path.

    The sidecar is written first, then ``bundle.json`` (each atomically): a crash in
    between leaves a new folder without ``bundle.json`` (not a bundle) or, when
    rewriting, an old ``bundle.json`` the new sidecar refuses, never a manifest that
    passes unchecked.
    """
    folder = Path(folder)
    data = (json.dumps(jsonable(manifest), indent=2, allow_nan=False) + "\n").encode()
    digest = hashlib.sha256(data).hexdigest()
    write_text(folder / MANIFEST_SUM, f"{digest}  {MANIFEST}\n")
    return atomic_write(folder / MANIFEST, lambda tmp: Path(tmp).write_bytes(data))


def training_cohort(bundle: Bundle) -> Path | None:
    """The cohort manifest ``bundle`` trained on: a retrained bundle's own copy
    (checksummed with the bundle), else the path in its ``bundle.json`` while that file
    keeps the recorded fingerprint; None when it is gone or changed."""
    own = bundle.path / TRAINING_COHORT
    if own.is_file():
        return own
    recorded = bundle.trained_on
    path = Path(recorded.path or "")
    if path.is_file() and Cohort.load(path).fingerprint() == recorded.fingerprint:
        return path
    return None


def verify_bundle(path: str | Path) -> dict[str, Any]:
    """Check ``bundle.json`` against its sidecar, then every file's sha256; returns the
    manifest.

    Raises:
        BundleError: not a bundle, ``bundle.json`` edited or its sidecar missing, an
            unknown format, or a file missing / changed.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(
            f"{path} is not a medres bundle (no bundle.json); "
            "create one with `medres train --cohort COHORT.parquet -o BUNDLE`"
        )
    _check_seal(path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{manifest_path} is not valid JSON ({e}); the bundle is damaged") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path} holds no JSON object; the bundle is damaged")
    if manifest.get("format") != FORMAT:
        raise BundleError(
            f"{path} has bundle format {manifest.get('format')!r}; this medres reads format "
            f"{FORMAT}: use the medres version that wrote it ({manifest.get('versions')})"
        )
    files = manifest.get("files")
    files = files if isinstance(files, dict) else {}
    missing = sorted(set(REQUIRED) - set(files))
    if missing:
        raise BundleError(
            f"{manifest_path} lists no checksum for {missing}; the bundle is incomplete"
        )
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"bundle file {file} is missing; copy the whole bundle folder")
        try:
            actual = sha256_file(file)
        except OSError as e:  # e.g. a 0600 training cohort in a bundle shared across accounts
            raise BundleError(
                f"cannot read bundle file {file} ({e.strerror}); copy the bundle as the user "
                "who runs medres, or give that user read access to it"
            ) from e
        if actual != expected:
            raise BundleError(
                f"bundle file {file} fails its checksum: it was changed or damaged after "
                "the bundle was written; restore it from the original bundle"
            )
    return manifest


def _check_seal(path: Path) -> None:
    """Refuse ``bundle.json`` unless ``bundle.json.sha256`` holds its sha256."""
    manifest_path, sidecar = path / MANIFEST, path / MANIFEST_SUM
    if not sidecar.is_file():
        raise BundleError(
            f"{sidecar} is missing, so {manifest_path} cannot be checked for edits. A "
            "bundle written by an older medres (before bundle.json had a checksum) must be "
            "retrained with this medres (`medres train --cohort COHORT.parquet -o BUNDLE`); "
            "otherwise copy the whole bundle folder, that file included"
        )
    try:
        match = _SUM_LINE.fullmatch(sidecar.read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError):
        match = None
    if match is None:
        raise BundleError(
            f"{sidecar} is not in sha256sum format ('<64 hex digits>  bundle.json', one "
            f"line); the bundle is damaged: {_RESTORE}"
        )
    if sha256_file(manifest_path) != match.group(1).lower():
        raise BundleError(
            f"{manifest_path} was edited after the bundle was written: it fails the "
            f"checksum in {sidecar} (`sha256sum -c {MANIFEST_SUM}` in the bundle folder "
            f"shows it), so its task, classes, threshold and preprocessing cannot be "
            f"trusted; {_RESTORE}"
        )


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


def validate_manifest(path: str | Path, manifest: dict[str, Any]) -> Manifest:
    """The typed manifest of the bundle at ``path``, with its fields consistent with each
    other: classes with the task, the threshold with the task, the model's input
    channels and dimensions with the preprocessing, the input grid within
    :func:`medres.limits.max_voxels`.

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


def _check_head(path: Path, typed: Manifest, info: TaskInfo, state: dict[str, Any]) -> None:
    """The weights' head must give the outputs the task and classes call for."""
    head = state.get(HEAD)
    if head is None or head.ndim != 2:
        raise BundleError(
            f"{path / WEIGHTS} holds no classifier head ({HEAD}); it is not a medres model"
        )
    outputs, needed = int(head.shape[0]), info.num_outputs
    if outputs != needed:
        gives = "task 'regression' (1 output)" if outputs == 1 else f"{outputs} classes"
        expected = f"{gives}: the weights' head ({HEAD}) has shape {tuple(head.shape)}"
        if not info.kind.classifies or outputs == 1:
            found = f"{typed.task!r} ({needed} output{'s' * (needed != 1)})"
            raise _field_error(path, "task", found, expected)
        found = f"{typed.classes} ({needed} outputs for task {typed.task!r})"
        raise _field_error(path, "classes", found, expected)
    if typed.model.args.get("num_classes") != outputs:
        raise _field_error(
            path,
            "model.args.num_classes",
            typed.model.args.get("num_classes"),
            f"{outputs}, the outputs of the weights' head ({HEAD})",
        )


def read_manifest(path: str | Path) -> Manifest:
    """The verified (:func:`verify_bundle`) and typed (:func:`validate_manifest`)
    ``bundle.json`` of the bundle at ``path``, without loading its weights."""
    return validate_manifest(path, verify_bundle(path))


def load_bundle(path: str | Path) -> Bundle:
    """Verify and load a bundle: the model in eval mode with the selected weights.

    Raises:
        BundleError: :func:`verify_bundle`'s refusals; a field of ``bundle.json`` of the
            wrong type, inconsistent with another (:func:`validate_manifest`) or with the
            weights (the head's outputs against the task and classes), naming the field.
    """
    path = Path(path)
    manifest = verify_bundle(path)
    typed = validate_manifest(path, manifest)
    target = typed.target
    classes = list(typed.classes) if task_named(typed.task).classifies else None
    info = TaskInfo(typed.task, classes, target.mean, target.std, target.range)
    try:
        state = load_file(path / WEIGHTS)
    except (SafetensorError, OSError) as e:
        raise BundleError(f"{path / WEIGHTS} cannot be read as safetensors: {e}") from e
    _check_head(path, typed, info, state)
    args = {k: v for k, v in typed.model.args.items() if k != "pretrained"}
    try:
        model = create_model(typed.model.name, **args)
    except (TypeError, ConfigError) as e:
        raise _field_error(
            path, "model", manifest["model"], f"a model medres can build ({e})"
        ) from e
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise BundleError(f"{path / WEIGHTS} does not fit model {manifest['model']}: {e}") from e
    try:
        trust = Trust.load(path) if CALIBRATION in manifest["files"] else None
    except (KeyError, TypeError, ValueError, OSError) as e:  # JSONDecodeError is a ValueError
        raise BundleError(
            f"{path / CALIBRATION} cannot be read ({e!r}); refit it with "
            f"`medres calibrate {path} COHORT.parquet`"
        ) from e
    return Bundle(path, typed, model.eval(), typed.preprocess, info, trust)


def versions() -> dict[str, str]:
    """The versions that produced a bundle (reproducibility)."""
    return {
        "medres": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
    }
