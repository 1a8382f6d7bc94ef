"""One duration syntax for every command line, so `--retention 7d` and `--lease-timeout 30s`
read the same in the server, the worker and jobctl."""

from __future__ import annotations

import argparse
import math
import re
from datetime import timedelta

SYNTAX = "a duration is a number with a unit: 500ms, 30s, 5m, 2h or 7d (a bare number is seconds)"
# A year: past timedelta's range a value would crash instead of being refused.
MAX_SECONDS = 366 * 86_400

_DURATION = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_FORMAT_UNITS = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001))


def parse_duration(text: str, *, allow_zero: bool = False) -> timedelta:
    """`250ms`, `1.5s`, `5m`, `2h`, `7d`; a bare number is seconds. Raises ValueError
    with a message fit to show a person."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} ({SYNTAX})")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds > MAX_SECONDS:
        raise ValueError(f"{text!r} is too long: at most a year (366d)")
    if seconds == 0 and not allow_zero:
        raise ValueError(f"must be more than zero, got {text!r}")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta | float) -> str:
    """The shortest exact spelling in the same syntax: `7d`, `1m`, `50ms`, `1500ms`."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds == 0:
        return "0s"
    for unit, size in _FORMAT_UNITS:
        count = seconds / size
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    if seconds >= 1:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"


def duration_arg(text: str) -> timedelta:
    """argparse type: a positive duration."""
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def optional_duration_arg(text: str) -> timedelta:
    """argparse type: a duration where 0 is allowed (for example, `--delay 0`)."""
    try:
        return parse_duration(text, allow_zero=True)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
