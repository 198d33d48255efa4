"""The train / val / test fractions of a split: parsing and checking.

Fractions are three floats (train, val, test) in [0, 1] that sum to 1; train is above
0, val may be 0, test may be 0 only when a held-out site or a kept test set is the test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from medres.errors import ConfigError

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)


def parse_fractions(text: str) -> tuple[float, float, float]:
    """Parse ``"0.7,0.15,0.15"`` into validated fractions; ConfigError if it is not that."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(_fractions_hint(text)) from None
    return check_fractions(values)


def check_fractions(
    fractions: Sequence[float], need_test: bool = True
) -> tuple[float, float, float]:
    """Return ``fractions`` as three floats in [0, 1] summing to 1, train > 0.

    ``need_test=False`` (site hold-out, where the site is the test set) lets the test
    fraction be zero. A zero val fraction is always allowed.
    """
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ConfigError(_fractions_hint(fractions)) from None
    if (
        len(values) != 3
        or not all(math.isfinite(f) and 0.0 <= f <= 1.0 for f in values)
        or abs(sum(values) - 1.0) > 1e-6
    ):
        raise ConfigError(_fractions_hint(fractions))
    if values[0] == 0.0:
        raise ConfigError(f"the train fraction must be above 0; {_fractions_hint(fractions)}")
    if need_test and values[2] == 0.0:
        raise ConfigError(
            f"the test fraction must be above 0 (or hold out a site); {_fractions_hint(fractions)}"
        )
    return values[0], values[1], values[2]


def _fractions_hint(got: object) -> str:
    return (
        "fractions must be three numbers train,val,test in [0, 1] that sum to 1, "
        f"e.g. 0.7,0.15,0.15 (val may be 0: 0.8,0,0.2); got {got!r}"
    )
