"""Crash-safe file writing shared by every stage: temporary file + rename."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medres import __version__

_UMASK = os.umask(0)
os.umask(_UMASK)


PRIVATE_MODE = 0o600  # owner read/write only: files that hold patient or scan ids


def atomic_write(path: str | Path, write: Callable[[str], None], *, private: bool = False) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``, so readers never see half a file.

    ``private=True`` leaves the file mode 0600 whatever the umask (for outputs that hold
    patient ids, scan ids or paths: README "Privacy of outputs"); otherwise the file gets
    the usual 0666 minus the umask. The temporary file is 0600 while it is written either
    way, so a private file is never readable by others, not even for a moment.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, PRIVATE_MODE if private else 0o666 & ~_UMASK)  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str, *, private: bool = False) -> Path:
    """Write ``text`` atomically (``private=True``: mode 0600, see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text), private=private)


def write_json(path: str | Path, data: Any, *, private: bool = False) -> Path:
    """Write ``data`` as indented JSON atomically (NaN/inf as null, numpy unwrapped;
    ``private=True``: mode 0600, see :func:`atomic_write`)."""
    text = json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n"
    return write_text(path, text, private=private)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def jsonable(obj):
    """Plain JSON types: numpy scalars/arrays unwrapped, NaN/inf -> None, others -> str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    return None if obj is pd.NA else str(obj)


FORMAT_KEY = "format"  # the key of every medres JSON file's format version (docs/formats.md)


def format_major(version: Any) -> int | None:
    """The major version of a format version: ``1`` or ``"1"`` / ``"1.2"`` give 1; a file
    written before versions existed (``None``: no key) reads as 1; anything else is None
    (unknown)."""
    if version is None:
        return 1
    if isinstance(version, bool):
        return None
    if isinstance(version, int):
        return version
    if isinstance(version, str):
        major = version.strip().split(".", 1)[0]
        return int(major) if major.isdigit() else None
    return None


def read_versioned_json(
    path: Path, what: str, reads: tuple[int, ...], error: type[Exception]
) -> dict[str, Any]:
    """The JSON object in ``path`` (a medres ``what``, e.g. "report"), its format version
    checked by :func:`check_format`; ``error`` names the file when it is not readable JSON,
    not an object, or of a format this medres does not read."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path} is not a readable medres {what} ({e})") from e
    if not isinstance(data, dict):
        raise error(f"{path} holds no JSON object; it is not a medres {what}")
    check_format(path, data.get(FORMAT_KEY), reads, error)
    return data


def check_format(
    file: str | Path, version: Any, reads: tuple[int, ...], error: type[Exception]
) -> int:
    """Refuse ``file`` unless its format ``version``'s major is one of ``reads``.

    Returns the major version. Raises ``error`` naming the file, the version found and
    the versions this medres reads (a minor version only adds keys or columns, so any
    minor of a known major is read).
    """
    major = format_major(version)
    if major not in reads:
        known = ", ".join(str(v) for v in reads)
        raise error(
            f"{file} has format version {version!r}, which this medres ({__version__}) does "
            f"not read (it reads format version {known}); read it with the medres version "
            "that wrote it, or upgrade medres (docs/formats.md lists the formats)"
        )
    return major
