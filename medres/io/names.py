"""File names as text for tables, logs and messages, and back.

A Linux file name may hold any bytes; Python keeps the ones that are not UTF-8 as
lone surrogates, which Parquet, CSV writers and terminals refuse (``UnicodeEncodeError
... surrogates not allowed``). :func:`path_text` writes those bytes as ``\\xNN``
escapes; :func:`real_path` turns such text back into the name on disk, so a manifest
row still reads its scan.
"""

from __future__ import annotations

import os
import re

_ESCAPE = re.compile(rb"\\x([0-9a-f]{2})")


def path_text(path: str | os.PathLike) -> str:
    """``path`` as valid UTF-8 text: bytes that are not UTF-8 become ``\\xNN``."""
    return safe_text(os.fspath(path))


def safe_text(value):
    """A table or message value as valid UTF-8 text; values other than text unchanged."""
    if not isinstance(value, str):
        return value
    try:  # a name's undecodable bytes come back as those bytes, then as \\xNN
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # any other lone surrogate: its code point as \\udNNN
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def real_path(text: str) -> str:
    """The file name :func:`path_text` wrote ``text`` for: unchanged when ``text`` names a
    file as it stands or holds no escape, else with each ``\\xNN`` turned back into its byte."""
    if "\\x" not in text or os.path.lexists(text):
        return text
    raw = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8"))
    return os.fsdecode(raw)
