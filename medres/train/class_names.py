"""Display names of a classifier's classes: what a person reads instead of a label value.

A class is a label value (``0``, ``1``, ``"pneumonia"``); its display name is what a
clinician reads (``normal``, ``pneumonia``). The names are a training setting,
``class_names``, a mapping from each class to its name, written either way:

- on the command line, ``--set class_names=0=normal,1=pneumonia`` (``class=name`` pairs
  joined by commas), or as JSON, ``--set 'class_names={"0": "normal", "1": "pneumonia"}'``
  (for names holding a comma or ``=``);
- in a config file's ``[train]`` table, a TOML table: ``class_names = {0 = "normal",
  1 = "pneumonia"}`` (or a ``[train.class_names]`` table).

Classes are matched by :func:`medres.tasks.label_key` (``1``, ``1.0`` and ``"1"`` are one
class). Without the setting each class is named by its label as text, so text labels
(``"pneumonia"``) are already names. :func:`resolve_class_names` checks a mapping against
a cohort's classes: every class named once, no name for a class the cohort lacks, no two
classes with one name. The bundle keeps the names aligned with its classes
(``bundle.json`` ``class_names``); :func:`display_name` is how reports show a class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medres.errors import ConfigError
from medres.tasks import label_key

MAX_NAME = 64  # characters: a DICOM code meaning (VR LO) holds at most 64
EXAMPLE = "--set class_names=0=normal,1=pneumonia"


def parse_class_names(value: Any) -> dict[str, str] | None:
    """``class_names`` as given (None, a mapping, or ``"0=normal,1=pneumonia"`` text) →
    ``{label_key(class): name}``, names stripped, or None when not given.

    Raises:
        ValueError: not a mapping or ``class=name`` text, an empty class or name, a name
            over :data:`MAX_NAME` characters or holding a backslash or control character,
            or one class given twice (``1`` and ``1.0``). (pydantic turns it into the
            config's error.)
    """
    if value is None:
        return None
    if isinstance(value, str):
        pairs = [_pair(part) for part in value.split(",") if part.strip()]
    elif isinstance(value, Mapping):
        pairs = [(k, v) for k, v in value.items()]
    else:
        raise ValueError(
            f"class_names is a mapping from each class to its name, e.g. {EXAMPLE} or a TOML "
            f'table {{0 = "normal", 1 = "pneumonia"}}; got {type(value).__name__} {value!r}'
        )
    names: dict[str, str] = {}
    for cls, name in pairs:
        key = label_key(cls)
        if key in names:
            raise ValueError(f"class_names names class {key!r} twice; give each class one name")
        names[key] = _checked_name(key, name)
    if not names:
        raise ValueError(f"class_names is empty; name every class, e.g. {EXAMPLE}")
    return names


def _pair(text: str) -> tuple[str, str]:
    cls, sep, name = text.partition("=")
    if not sep or not cls.strip():
        raise ValueError(
            f"class_names expects class=name pairs joined by commas, e.g. {EXAMPLE}; "
            f"got {text.strip()!r}"
        )
    return cls.strip(), name


def _checked_name(cls: str, name: Any) -> str:
    if not isinstance(name, str):
        raise ValueError(f"class_names: the name of class {cls!r} must be text; got {name!r}")
    name = name.strip()
    if not name:
        raise ValueError(f"class_names: class {cls!r} has an empty name; give it one")
    if len(name) > MAX_NAME:
        raise ValueError(
            f"class_names: the name of class {cls!r} has {len(name)} characters; use at most "
            f"{MAX_NAME} (a DICOM code meaning holds no more)"
        )
    if "\\" in name or any(ord(ch) < 32 for ch in name):
        raise ValueError(
            f"class_names: the name of class {cls!r} ({name!r}) holds a backslash or a "
            "control character, which DICOM text cannot carry; remove it"
        )
    return name


def default_class_names(classes: Sequence[Any]) -> list[str]:
    """Each class's label as text (``label_key``): the names when none are given."""
    return [label_key(c) for c in classes]


def resolve_class_names(classes: Sequence[Any], given: Mapping[Any, str] | None) -> list[str]:
    """The display names of ``classes`` (in their order) from the ``class_names``
    setting, or the labels as text when it is None.

    Raises:
        ConfigError: ``given`` names a class that is not among ``classes``, leaves one
            out, or gives two classes the same name (case-insensitive); the message names
            the classes and the fix.
    """
    keys = default_class_names(classes)
    if given is None:
        return keys
    given = {label_key(k): v for k, v in given.items()}
    shown = ", ".join(keys)
    unknown = [k for k in given if k not in keys]
    if unknown:
        raise ConfigError(
            f"class_names names {_plural(unknown, 'class')} {', '.join(map(repr, unknown))} "
            f"that the labels do not have (the classes are {shown}); remove "
            f"{'it' if len(unknown) == 1 else 'them'} or fix the key"
        )
    missing = [k for k in keys if k not in given]
    if missing:
        example = ",".join(f"{k}={given.get(k, '...')}" for k in keys)
        raise ConfigError(
            f"class_names gives no name to {_plural(missing, 'class')} "
            f"{', '.join(map(repr, missing))} (the classes are {shown}); name every class, "
            f"e.g. --set class_names={example}"
        )
    names = [given[k] for k in keys]
    folded = [n.casefold() for n in names]
    for name in dict.fromkeys(n for n in folded if folded.count(n) > 1):
        which = [keys[i] for i, n in enumerate(folded) if n == name]
        raise ConfigError(
            f"class_names gives one name ({names[folded.index(name)]!r}) to classes "
            f"{' and '.join(which)}; each class needs its own name"
        )
    return names


def names_problem(classes: Sequence[Any] | None, names: Any) -> str | None:
    """Why ``names`` cannot be the display names of ``classes`` in a bundle (None when
    they can): a list of as many distinct, non-empty texts as there are classes."""
    if names is None:
        return None
    if not classes:
        return "absent (null) for a bundle without classes (regression)"
    if not isinstance(names, list) or len(names) != len(classes):
        return f"a list of {len(classes)} names, one per class of 'classes', in their order"
    if any(not isinstance(n, str) or not n.strip() for n in names):
        return "non-empty text names"
    folded = [n.casefold() for n in names]
    if len(set(folded)) != len(folded):
        return "a different name for each class"
    return None


def class_name_map(classes: Sequence[Any] | None, names: Sequence[str] | None) -> dict[str, str]:
    """``{label_key(class): name}`` in class order (names default to the labels as text;
    ``{}`` without classes)."""
    if not classes:
        return {}
    names = list(names) if names is not None else default_class_names(classes)
    return dict(zip(default_class_names(classes), names, strict=True))


def display_name(cls: Any, name: str | None) -> str:
    """How a report shows a class: ``normal (0)``; just the label when the name is it."""
    key = label_key(cls)
    return key if name is None or name == key else f"{name} ({key})"


def _plural(items: Sequence[Any], word: str) -> str:
    return word if len(items) == 1 else word + "es"
