"""A bundle loaded: :func:`load_bundle` verifies, types and checks it against its weights
and returns a :class:`Bundle`, the only way the rest of medres reads a bundle's files."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from medres.bundle.layout import (
    HEAD,
    MANIFEST,
    RUNTIME_FILES,
    TRAINING_COHORT,
    WEIGHTS,
    export_command,
    verify_bundle,
)
from medres.bundle.manifest import (
    Manifest,
    ManifestRuntime,
    ManifestTraining,
    TrainedOn,
    _field_error,
    check_class_names,
    validate_manifest,
)
from medres.cohort import Cohort
from medres.errors import BundleError, ConfigError
from medres.files import sha256_file
from medres.models import create_model
from medres.tasks import TaskInfo, label_key, task_named
from medres.train.class_names import class_name_map, display_name
from medres.train.config import TrainConfig
from medres.transforms import PreprocessSpec
from medres.uncertainty.trust import CALIBRATION, Trust


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
    def class_names(self) -> dict[str, str]:
        """``{class: display name}`` in the classes' order, each class as text as in
        ``predicted_class`` (``{"0": "normal", "1": "pneumonia"}``); a bundle written
        before names were kept names each class by its label. ``{}`` for regression."""
        return class_name_map(self.info.classes, self.manifest.class_names)

    def shown_class(self, cls: Any) -> str:
        """How a report shows class ``cls``: ``normal (0)``, or the label when it is
        its own name."""
        return display_name(cls, self.class_names.get(label_key(cls)))

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

    def runtime(self, name: str) -> tuple[Path, ManifestRuntime]:
        """The model file exported for runtime ``name`` (``onnx``: ``model.onnx``;
        ``openvino``: ``model.openvino.xml``, its ``.bin`` beside it; checksummed when the
        bundle was loaded) and its ``runtimes`` record.

        Raises:
            BundleError: the bundle has no export for ``name`` (run ``medres export``
                first), or the export was made from other weights than the bundle's.
        """
        export = f"`medres export {self.path} {export_command(name)}`"
        entry = self.manifest.runtimes.get(name)
        if entry is None:
            raise BundleError(
                f"{self.path} has no {RUNTIME_FILES.get(name, name)} for runtime {name!r}; "
                f"run {export} first (it writes the model for that runtime into the bundle "
                "after checking it gives torch's probabilities)"
            )
        if entry.weights_sha256 != self.manifest.files.get(WEIGHTS):
            raise BundleError(
                f"{self.path / entry.file} was exported from other weights than the "
                f"bundle's {WEIGHTS}; export it again: {export}"
            )
        return self.path / entry.file, entry

    def on_runtime(self, name: str) -> Bundle:
        """The bundle as ``medres predict --runtime name`` uses it: itself, or for a
        runtime with its own trust layer (``onnx-int8``, ``openvino-int8``: refit on the
        quantised model's validation outputs by ``medres export --int8``) a copy holding
        that trust layer (the weights, Grad-CAM's model, and the binary operating point
        are the bundle's).

        Raises:
            BundleError: :meth:`runtime`'s refusals; the trust layer cannot be read.
        """
        if name == "torch":
            return self
        _, entry = self.runtime(name)
        if entry.trust is None:
            return self
        folder = self.path / entry.trust
        try:
            trust = Trust.load(folder)
        except (KeyError, TypeError, ValueError, OSError) as e:
            raise BundleError(
                f"{folder / CALIBRATION} cannot be read ({e!r}); export it again: "
                f"`medres export {self.path} {export_command(name)}`"
            ) from e
        return replace(self, trust=trust)


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


def calibration_cohort(bundle: Bundle) -> Path | None:
    """The cohort whose ``val`` split fitted the bundle's trust layer: the one
    ``medres calibrate`` recorded (``calibration_cohort``) while it keeps its
    fingerprint, else the training cohort (:func:`training_cohort`); None when it is
    gone or changed."""
    recorded = (bundle.manifest.model_extra or {}).get("calibration_cohort")
    if isinstance(recorded, dict):
        path = Path(recorded.get("path") or "")
        if path.is_file() and Cohort.load(path).fingerprint() == recorded.get("fingerprint"):
            return path
        return None
    return training_cohort(bundle)


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
    typed = validate_manifest(path, verify_bundle(path))
    check_class_names(path, typed)
    return typed


def load_bundle(path: str | Path) -> Bundle:
    """Verify and load a bundle: the model in eval mode with the selected weights.

    Raises:
        BundleError: :func:`verify_bundle`'s refusals; a field of ``bundle.json`` of the
            wrong type, inconsistent with another (:func:`validate_manifest`) or with the
            weights (the head's outputs against the task and classes), display names
            that are not one distinct name per class, naming the field.
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
    check_class_names(path, typed)
    args = {k: v for k, v in typed.model.args.items() if k != "pretrained"}
    try:
        # on the meta device: no random initialisation of weights about to be replaced
        # (a 3D ResNet-18: 0.27 s of a 0.5 s load); the state dict's tensors become them
        with torch.device("meta"):
            model = create_model(typed.model.name, **args)
    except (TypeError, ConfigError) as e:
        raise _field_error(
            path, "model", manifest["model"], f"a model medres can build ({e})"
        ) from e
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as e:
        raise BundleError(f"{path / WEIGHTS} does not fit model {manifest['model']}: {e}") from e
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise BundleError(f"{path / WEIGHTS} lacks tensors of model {manifest['model']}")
    try:
        trust = Trust.load(path) if CALIBRATION in manifest["files"] else None
    except (KeyError, TypeError, ValueError, OSError) as e:  # JSONDecodeError is a ValueError
        raise BundleError(
            f"{path / CALIBRATION} cannot be read ({e!r}); refit it with "
            f"`medres calibrate {path} COHORT.parquet`"
        ) from e
    return Bundle(path, typed, model.eval(), typed.preprocess, info, trust)
