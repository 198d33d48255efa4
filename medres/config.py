"""Configuration files (TOML) and ``--set key=value`` overrides, validated by pydantic.

A training config file::

    cohort = "cohort_split.parquet"   # relative to the file

    [train]                           # any field of medres.train.TrainConfig
    model = "resnet18"
    epochs = 30
    [train.preprocess]
    preset = "xray_2d"
    spatial_size = [28, 28]

Unknown keys are errors that name the closest valid key.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from medres.errors import ConfigError


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; ConfigError with the line of a syntax error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no config file at {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings (dotted keys; values parsed as JSON, else text).

    ``epochs=5``, ``preprocess.spatial_size=[64,64]``, ``optimizer=adam``.
    """
    data = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r} (e.g. --set epochs=5)")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        node = data
        *parents, last = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is not a table")
        node[last] = value
    return data


def validate(model: type[BaseModel], data: dict[str, Any], source: str) -> BaseModel:
    """``model.model_validate(data)``; errors become one ConfigError listing each problem."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = [_describe(model, err) for err in e.errors()]
        raise ConfigError(f"invalid {source}:\n  " + "\n  ".join(problems)) from None


def _describe(model: type[BaseModel], err: dict) -> str:
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        fields = _fields_at(model, err["loc"][:-1])
        close = difflib.get_close_matches(str(err["loc"][-1]), fields, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(fields)})"
        return f"unknown key '{where}'{hint}"
    return f"{where}: {err['msg']}"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return sorted(model.model_fields)
