"""Argument checks shared by the package: clear errors that name the argument and its range."""

from __future__ import annotations

import math
from typing import Any


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return `value` as a float or raise `ValueError` naming `name` and its allowed range."""
    lo = "-inf" if low is None else repr(low)
    hi = "inf" if high is None else repr(high)
    interval = f"{'[' if low_inclusive and low is not None else '('}{lo}, {hi}" + (
        "]" if high_inclusive and high is not None else ")"
    )
    if not _is_number(value) or not math.isfinite(float(value)):
        raise ValueError(
            f"`{name}` must be a finite number in {interval}. Received: {name}={value!r}"
        )
    value = float(value)
    too_low = low is not None and (value < low or (not low_inclusive and value == low))
    too_high = high is not None and (value > high or (not high_inclusive and value == high))
    if too_low or too_high:
        raise ValueError(f"`{name}` must be in {interval}. Received: {name}={value!r}")
    return value


def check_int(name: str, value: Any, *, low: int | None = None, allow_none: bool = False) -> int | None:
    """Return `value` as an int (or None when allowed) or raise a `ValueError` naming `name`."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                value = int(value)
        except ImportError:  # pragma: no cover
            pass
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        allowed = f"an integer >= {low}" if low is not None else "an integer"
        if allow_none:
            allowed += " or None"
        raise ValueError(f"`{name}` must be {allowed}. Received: {name}={value!r}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {', '.join(repr(c) for c in choices)}. Received: {name}={value!r}"
        )
    return value
