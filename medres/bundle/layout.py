"""The files of a bundle and their checksums: names, the ``bundle.json.sha256`` seal,
:func:`write_manifest` (the only writer of ``bundle.json``) and :func:`verify_bundle`."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from medres.errors import BundleError
from medres.files import atomic_write, jsonable, sha256_file, write_text

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
# the model compiled for another runtime by `medres export BUNDLE --runtime NAME`
# (`NAME-int8`: `--runtime NAME --int8`, with its own trust layer in `NAME-int8/`); an
# OpenVINO IR is the .xml named here and its weights beside it (`model_files`)
RUNTIME_FILES = {
    "onnx": "model.onnx",
    "onnx-int8": "model.int8.onnx",
    "openvino": "model.openvino.xml",
    "openvino-int8": "model.int8.openvino.xml",
}


def model_files(file: str) -> list[str]:
    """Every file of the runtime model ``file`` (a name or path): itself and, for an
    OpenVINO IR (``.xml``, the graph), its weights (the ``.bin`` of the same stem beside
    it, where OpenVINO's ``read_model`` looks for them)."""
    path = Path(file)
    return [file, str(path.with_suffix(".bin"))] if path.suffix == ".xml" else [file]


def export_command(runtime: str) -> str:
    """The ``medres export`` options that write ``runtime``'s model."""
    base, _, precision = runtime.partition("-")
    return f"--runtime {base}" + (f" --{precision}" if precision else "")


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


def is_bundle(folder: str | Path) -> bool:
    """Whether ``folder`` holds a bundle: ``bundle.json`` is written last
    (:func:`write_manifest`), so a folder with it is a finished bundle (its contents are
    checked when it is loaded)."""
    return (Path(folder) / MANIFEST).is_file()


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
                f"the bundle was written; restore it from the original bundle{_again(name)}"
            )
    return manifest


def _again(name: str) -> str:
    """For a runtime's model file: how to write it again."""
    for runtime, file in RUNTIME_FILES.items():
        if name in model_files(file):
            return f" or export it again (`medres export BUNDLE {export_command(runtime)}`)"
    return ""


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
