"""A bundle written: :func:`save_bundle` after training, :func:`update_bundle` after a
recalibration; both end with :func:`~medres.bundle.layout.write_manifest`."""

from __future__ import annotations

import json
import platform
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import monai
import torch
from safetensors.torch import save_file

from medres import __version__
from medres.bundle.layout import (
    FORMAT,
    MANIFEST,
    OPTIONAL,
    REQUIRED,
    RUNTIME_FILES,
    WEIGHTS,
    model_files,
    write_manifest,
)
from medres.files import atomic_write, sha256_file, write_json, write_text
from medres.frozen import FROZEN_TEST
from medres.tasks import TaskInfo
from medres.train.class_names import default_class_names
from medres.transforms import PreprocessSpec
from medres.uncertainty.trust import Trust


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
    class_names: list[str] | None = None,
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
        class_names: classifiers: the display name of each class, aligned with
            ``info.classes`` (default: the labels as text).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {
        k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
    }  # device-neutral
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
        **(
            {"class_names": class_names or default_class_names(info.classes)}
            if info.classes
            else {}
        ),
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


def add_runtime(
    path: str | Path,
    runtime: str,
    model_file: str | Path,
    record: dict[str, Any],
    card: str,
    extra: dict[str, Path] | None = None,
) -> Path:
    """Copy a verified export ``model_file`` into the bundle at ``path`` as the runtime's
    file (``onnx``: ``model.onnx``; ``openvino``: ``model.openvino.xml`` and, from beside
    ``model_file``, its ``.bin`` weights: :func:`~medres.bundle.layout.model_files`), and
    ``extra`` files (bundle-relative name: source; e.g. an int8 model's own trust layer,
    ``onnx-int8/calibration.json``), rewrite
    ``model_card.md`` as ``card``, and record them all (checksums in ``files``,
    ``record`` under ``runtimes.<runtime>`` with the file name and the sha256 of the
    weights it was exported from). ``bundle.json`` is rewritten last
    (:func:`write_manifest`): a crash before leaves a bundle that refuses the new files
    by checksum, naming how to export them again. Returns ``bundle.json``."""
    path = Path(path)
    name = RUNTIME_FILES[runtime]
    manifest = json.loads((path / MANIFEST).read_text())  # verified by the caller
    names, sources = model_files(name), model_files(str(model_file))
    copies = {
        **{n: Path(source) for n, source in zip(names, sources, strict=True)},
        **(extra or {}),
    }
    for file, source in copies.items():
        atomic_write(path / file, lambda tmp, source=source: shutil.copyfile(source, tmp))
    write_text(path / "model_card.md", card)
    entry = {"file": name, **record, "weights_sha256": manifest["files"][WEIGHTS]}
    manifest["runtimes"] = {**manifest.get("runtimes", {}), runtime: entry}
    for file in (*copies, "model_card.md"):
        manifest["files"][file] = sha256_file(path / file)
    manifest["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    return write_manifest(path, manifest)


def versions() -> dict[str, str]:
    """The versions that produced a bundle (reproducibility)."""
    return {
        "medres": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
    }
