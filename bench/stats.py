"""Figures measured once per run, summarised as the median over runs with the min-max,
and the percentiles of one run's samples."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (`fraction` 0.5 for the median, 0.99 for p99)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def percentiles_ms(
    values: Sequence[float], *, fractions: Sequence[float] = (0.5, 0.99)
) -> dict[str, float]:
    """p50/p99 (and others) of latencies in seconds, in milliseconds, plus the count."""
    found: dict[str, float] = {
        f"p{round(f * 100):d}": 1000 * percentile(values, f) for f in fractions
    }
    found["max"] = 1000 * max(values) if values else math.nan
    found["samples"] = len(values)
    return found


@dataclass
class Figure:
    """One figure, one value per run."""

    runs: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.runs.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else math.nan

    @property
    def low(self) -> float:
        return min(self.runs) if self.runs else math.nan

    @property
    def high(self) -> float:
        return max(self.runs) if self.runs else math.nan

    def cell(self, digits: int = 0) -> str:
        """`median (min-max)`, or just the value after one run."""
        if len(self.runs) <= 1:
            return f"{self.median:,.{digits}f}"
        return f"{self.median:,.{digits}f} ({self.low:,.{digits}f}-{self.high:,.{digits}f})"

    def to_json(self, digits: int = 2) -> dict[str, Any]:
        return {
            "median": round(self.median, digits),
            "min": round(self.low, digits),
            "max": round(self.high, digits),
            "runs": [round(v, digits) for v in self.runs],
        }


class Figures(dict[str, Figure]):
    """Figures by key; a key never measured reads as a figure with no runs (nan)."""

    def __missing__(self, key: str) -> Figure:
        return Figure()

    def add(self, key: str, value: float) -> None:
        self.setdefault(key, Figure()).add(value)

    def add_all(self, values: dict[str, float], prefix: str = "") -> None:
        for key, value in values.items():
            self.add(prefix + key, value)

    def to_json(self, digits: int = 2) -> dict[str, Any]:
        return {key: figure.to_json(digits) for key, figure in self.items()}
