"""Distributions, written one way in every scenario file.

A value is either a plain number (a constant) or a table naming its distribution:

    boot_s = 20                                        # constant
    boot_s = {dist = "lognormal", median = 20, sigma = 0.3}
    boot_s = {dist = "uniform", low = 10, high = 30}
    boot_s = {dist = "exponential", mean = 20}
    boot_s = {dist = "constant", value = 20}

Lognormal is given by its median (not its mean) because "half the devices boot faster than 20 s" is
what people know about their fleet.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator, PlainSerializer


class SimRandom(random.Random):
    """`random.Random` whose normal draws come from NumPy, a block at a time.

    Every storage write draws a lognormal latency, so normal draws are the twin's most frequent
    random numbers: `random.Random.normalvariate` (a rejection loop in Python) took 0.89 µs a draw
    here, a draw from a block of NumPy normals 0.22 µs. Uniform and exponential draws stay with
    `random.Random`. `seed` reseeds both streams (shards reseed the world's generator).
    """

    BLOCK = 4096
    _TAG = 0x6E6F726D  # "norm": the normal stream is not the uniform stream

    def seed(self, a: int | None = None, version: int = 2) -> None:  # type: ignore[override]
        super().seed(a, version)
        self._numpy = np.random.default_rng(None if a is None else [a, self._TAG])
        self._normals: list[float] = []

    def normalvariate(self, mu: float = 0.0, sigma: float = 1.0) -> float:
        normals = self._normals
        if not normals:
            self.refill()
        return mu + sigma * normals.pop()

    def refill(self) -> None:
        """The next block of normals (callers that pop `_normals` themselves call this when it is
        empty; the list stays the same object until the next `seed`)."""
        self._normals.extend(self._numpy.standard_normal(self.BLOCK).tolist())


@dataclass(frozen=True, slots=True)
class Dist:
    kind: str
    a: float  # constant: value; uniform: low; lognormal: median; exponential: mean
    b: float = 0.0  # uniform: high; lognormal: sigma

    def sample(self, rng: random.Random) -> float:
        kind = self.kind
        if kind == "constant":
            return self.a
        if kind == "lognormal":
            # rng.lognormvariate, one call less (this is the hottest draw: every storage write)
            return math.exp(rng.normalvariate(math.log(self.a), self.b))
        if kind == "uniform":
            return rng.uniform(self.a, self.b)
        return rng.expovariate(1.0 / self.a)

    def sample_array(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` independent draws at once, for per-device values fixed when the fleet is built."""
        if self.kind == "constant":
            return np.full(n, self.a, dtype=np.float64)
        if self.kind == "lognormal":
            return rng.lognormal(math.log(self.a), self.b, n)
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b, n)
        return rng.exponential(self.a, n)

    def lognormal_params(self, rng: random.Random) -> tuple[float, float, list[float]] | None:
        """(mu, sigma, the normals to pop) when `sample(rng)` is exp(mu + sigma * normals.pop()),
        for a hot caller that inlines it (refilling through `rng.refill()`); else None."""
        if self.kind != "lognormal" or not isinstance(rng, SimRandom):
            return None
        return math.log(self.a), self.b, rng._normals

    @property
    def typical(self) -> float:
        """The value a person would quote: the constant, the median, the middle of the range."""
        if self.kind == "uniform":
            return (self.a + self.b) / 2
        return self.a

    def as_toml_value(self) -> Any:
        if self.kind == "constant":
            return self.a
        if self.kind == "lognormal":
            return {"dist": "lognormal", "median": self.a, "sigma": self.b}
        if self.kind == "uniform":
            return {"dist": "uniform", "low": self.a, "high": self.b}
        return {"dist": "exponential", "mean": self.a}

    def scaled(self, factor: float) -> Dist:
        if self.kind == "lognormal":
            return Dist(self.kind, self.a * factor, self.b)
        return Dist(self.kind, self.a * factor, self.b * factor)


_KEYS = {
    "constant": ("value",),
    "lognormal": ("median", "sigma"),
    "uniform": ("low", "high"),
    "exponential": ("mean",),
}


def _number(table: dict, key: str) -> float:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: expected a number, got {value!r}")
    return float(value)


def parse_dist(value: Any) -> Dist:
    """Turn a scenario value into a Dist; errors say which sub-key is wrong and what was expected."""
    if isinstance(value, Dist):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a number or a {dist=...} table, got a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return Dist("constant", float(value))
    if not isinstance(value, dict):
        raise ValueError(f"expected a number or a {{dist=...}} table, got {value!r}")
    kind = value.get("dist")
    if kind not in _KEYS:
        raise ValueError(f"dist: expected one of {', '.join(sorted(_KEYS))}, got {kind!r}")
    expected = set(_KEYS[kind]) | {"dist"}
    unknown = sorted(set(value) - expected)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} for dist={kind!r} (expected {', '.join(_KEYS[kind])})")
    numbers = [_number(value, key) for key in _KEYS[kind]]
    if kind == "constant":
        if numbers[0] < 0:
            raise ValueError("value: must be >= 0")
        return Dist(kind, numbers[0])
    if kind == "lognormal":
        if numbers[0] <= 0:
            raise ValueError("median: must be > 0")
        if numbers[1] < 0:
            raise ValueError("sigma: must be >= 0")
        return Dist(kind, numbers[0], numbers[1])
    if kind == "uniform":
        if numbers[0] < 0 or numbers[1] < numbers[0]:
            raise ValueError("low, high: need 0 <= low <= high")
        return Dist(kind, numbers[0], numbers[1])
    if numbers[0] <= 0:
        raise ValueError("mean: must be > 0")
    return Dist(kind, numbers[0])


# The pydantic field type used by every distribution-valued key of a scenario.
DistField = Annotated[Dist, BeforeValidator(parse_dist), PlainSerializer(lambda d: d.as_toml_value())]
