"""The model bundle on disk (DESIGN §3): save, load, verify.

A bundle is a folder::

    bundle.json         id, parent_id, task, classes, model name + arguments, preprocessing
                        spec, operating point, training cohort fingerprint, versions, and
                        the sha256 of every other file below
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

``bundle.json`` is written last, so a folder without it is not a bundle. :func:`load_bundle`
refuses a bundle whose files fail their checksums, naming the file.
"""

from __future__ import annotations

import json
import platform
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import monai
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from medres import __version__
from medres.cohort import Cohort
from medres.errors import BundleError, ConfigError
from medres.files import atomic_write, sha256_file, write_json, write_text
from medres.frozen import FROZEN_TEST
from medres.models import create_model
from medres.tasks import TaskInfo
from medres.transforms import PreprocessSpec
from medres.uncertainty.trust import CALIBRATION, Trust

FORMAT = 1
WEIGHTS = "weights.safetensors"
REQUIRED = (WEIGHTS, "config.json", "metrics.json", "model_card.md")
TRAINING_COHORT = "training_cohort.parquet"  # retrained bundles: the cohort trained on
OPTIONAL = ("metrics.csv", TRAINING_COHORT)


@dataclass
class Bundle:
    """A loaded bundle: the manifest (``bundle.json``) and the ready model (eval mode)."""

    path: Path
    manifest: dict[str, Any]
    model: torch.nn.Module
    spec: PreprocessSpec
    info: TaskInfo

    @property
    def id(self) -> str:
        return self.manifest["id"]

    trust: Trust | None = None

    @property
    def threshold(self) -> float | None:
        return self.manifest.get("threshold")


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
    return write_json(out / "bundle.json", manifest)


def update_bundle(
    path: str | Path, *, files: list[str], metrics: dict[str, Any], fields: dict[str, Any]
) -> Path:
    """Record new or rewritten ``files`` (already written into the bundle), a new
    ``metrics.json`` and manifest ``fields`` in a verified bundle; ``bundle.json`` is
    rewritten last and atomically, so a crash leaves the old manifest, which then
    refuses the changed files by checksum."""
    path = Path(path)
    manifest = json.loads((path / "bundle.json").read_text())  # verified by the caller
    write_json(path / "metrics.json", metrics)
    manifest.update(fields)
    for name in [*files, "metrics.json"]:
        manifest["files"][name] = sha256_file(path / name)
    manifest["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    return write_json(path / "bundle.json", manifest)


def training_cohort(bundle: Bundle) -> Path | None:
    """The cohort manifest ``bundle`` trained on: a retrained bundle's own copy
    (checksummed with the bundle), else the path in its ``bundle.json`` while that file
    keeps the recorded fingerprint; None when it is gone or changed."""
    own = bundle.path / TRAINING_COHORT
    if own.is_file():
        return own
    recorded = bundle.manifest.get("cohort") or {}
    path = Path(recorded.get("path") or "")
    if path.is_file() and Cohort.load(path).fingerprint() == recorded.get("fingerprint"):
        return path
    return None


def verify_bundle(path: str | Path) -> dict[str, Any]:
    """Check ``bundle.json`` and every file's sha256; returns the manifest.

    Raises:
        BundleError: not a bundle, an unknown format, or a file missing / changed.
    """
    path = Path(path)
    manifest_path = path / "bundle.json"
    if not manifest_path.is_file():
        raise BundleError(
            f"{path} is not a medres bundle (no bundle.json); "
            "create one with `medres train --cohort COHORT.parquet -o BUNDLE`"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{manifest_path} is not valid JSON ({e}); the bundle is damaged") from e
    if manifest.get("format") != FORMAT:
        raise BundleError(
            f"{path} has bundle format {manifest.get('format')!r}; this medres reads format "
            f"{FORMAT}: use the medres version that wrote it ({manifest.get('versions')})"
        )
    files = manifest.get("files") or {}
    missing = sorted(set(REQUIRED) - set(files))
    if missing:
        raise BundleError(
            f"{manifest_path} lists no checksum for {missing}; the bundle is incomplete"
        )
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"bundle file {file} is missing; copy the whole bundle folder")
        if sha256_file(file) != expected:
            raise BundleError(
                f"bundle file {file} fails its checksum: it was changed or damaged after "
                "the bundle was written; restore it from the original bundle"
            )
    return manifest


def load_bundle(path: str | Path) -> Bundle:
    """Verify and load a bundle: the model in eval mode with the selected weights."""
    path = Path(path)
    manifest = verify_bundle(path)
    try:
        target = manifest.get("target") or {}
        span = tuple(target["range"]) if target.get("range") else None
        info = TaskInfo(manifest["task"], manifest["classes"], target["mean"], target["std"], span)
        spec = PreprocessSpec.model_validate(manifest["preprocess"])
        args = {k: v for k, v in manifest["model"]["args"].items() if k != "pretrained"}
        model = create_model(manifest["model"]["name"], **args)
    except (KeyError, TypeError, ValidationError, ConfigError) as e:
        raise BundleError(
            f"{path / 'bundle.json'} is incomplete or from another medres ({e!r}); "
            "retrain, or restore the bundle"
        ) from e
    try:
        model.load_state_dict(load_file(path / WEIGHTS))
    except (RuntimeError, OSError) as e:
        raise BundleError(f"{path / WEIGHTS} does not fit model {manifest['model']}: {e}") from e
    try:
        trust = Trust.load(path) if CALIBRATION in manifest["files"] else None
    except (KeyError, TypeError, ValueError, OSError) as e:  # JSONDecodeError is a ValueError
        raise BundleError(
            f"{path / CALIBRATION} cannot be read ({e!r}); refit it with "
            f"`medres calibrate {path} COHORT.parquet`"
        ) from e
    return Bundle(path, manifest, model.eval(), spec, info, trust)


def versions() -> dict[str, str]:
    """The versions that produced a bundle (reproducibility)."""
    return {
        "medres": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
    }
