"""The dimensions a space asks for, and the wrapper through which it asks.

Space functions call `Dims.float/int/categorical` with their built-in range instead of the
Optuna trial: the wrapper swaps in a `--space` override by name (another range, choices, or a
fixed value that is not searched at all) and records what it resolved. So one plain piece of
space code serves the search, `--show-space` (traced with a `ProbeTrial` down every categorical
branch, `explore`) and warm starts (traced along one config's branch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# `--show-space` runs the space once per combination of categorical values; past this many
# combinations a space is too large to print and something is wrong with it
MAX_PATHS = 20_000


@dataclass(frozen=True)
class Range:
    """Numbers from low to high, both included; on a log scale if `log`; whole if `integer`."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        whole = not self.integer or float(value).is_integer()
        return whole and self.low <= value <= self.high


@dataclass(frozen=True)
class Choices:
    """One of a list of values (Optuna's categorical)."""

    choices: tuple

    def contains(self, value: Any) -> bool:
        return value in self.choices


@dataclass(frozen=True)
class Fixed:
    """One value, never searched: the space returns it as a constant."""

    value: Any

    def contains(self, value: Any) -> bool:
        return value == self.value


Dim = Range | Choices | Fixed


def suggest(trial: Any, name: str, spec: Dim) -> Any:
    """Ask `trial` for `name` as `spec` says; a Fixed value is returned without asking."""
    if isinstance(spec, Fixed):
        return spec.value
    if isinstance(spec, Choices):
        return trial.suggest_categorical(name, list(spec.choices))
    if spec.integer:
        return trial.suggest_int(name, int(spec.low), int(spec.high),
                                 log=spec.log)
    return trial.suggest_float(name, spec.low, spec.high, log=spec.log)


class Dims:
    """What a space function asks through: an Optuna trial (or Ray's wrapper of one) with the
    overrides of one strategy, keyed by Optuna parameter name, applied.

    `specs` and `values` record every dimension resolved in this run, in order, constants
    included; `constants` is what the define-by-run function returns to Ray.
    """

    def __init__(self, trial: Any, overrides: Mapping[str, Dim] | None = None):
        self.trial = trial
        self.overrides = overrides or {}
        self.specs: dict[str, Dim] = {}
        self.values: dict[str, Any] = {}

    def float(self, name: str, low: float, high: float, *, log: bool = False) -> Any:
        return self._ask(name, Range(float(low), float(high), log))

    def int(self, name: str, low: int, high: int, *, log: bool = False) -> Any:
        return self._ask(name, Range(int(low), int(high), log, integer=True))

    def categorical(self, name: str, choices: Any) -> Any:
        return self._ask(name, Choices(tuple(choices)))

    @property
    def constants(self) -> dict[str, Any]:
        return {n: v for n, v in self.values.items() if isinstance(self.specs[n], Fixed)}

    def _ask(self, name: str, default: Dim) -> Any:
        if name in self.specs:
            # one name, one distribution: a second range would make the sampler model one
            # parameter from two distributions (name each branch's parameter on its own)
            raise ValueError(f"the space asks for {name!r} twice")
        spec = self.overrides.get(name, default)
        value = suggest(self.trial, name, spec)
        self.specs[name], self.values[name] = spec, value
        return value


class ProbeTrial:
    """Stands in for an Optuna trial when a space is traced: `pick(name, spec)` gives each value,
    with no study and no sampler."""

    def __init__(self, pick: Callable[[str, Dim], Any]):
        self.pick = pick

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> Any:
        return self.pick(name, Range(low, high, log))

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> Any:
        return self.pick(name, Range(low, high, log, integer=True))

    def suggest_categorical(self, name: str, choices: list) -> Any:
        return self.pick(name, Choices(tuple(choices)))


def explore(trace: Callable[[Any], Dims]) -> list[Dims]:
    """Every path through a space: one traced run per combination of categorical values, in
    depth-first order (numbers take their low end; a space must branch on categoricals only)."""
    runs: list[Dims] = []
    prefix: list[int] = []  # the categorical choices of the next run, by position
    while True:
        sizes: list[int] = []

        def pick(name: str, spec: Dim, sizes=sizes, prefix=prefix) -> Any:
            if not isinstance(spec, Choices):
                return spec.low
            i = len(sizes)
            sizes.append(len(spec.choices))
            return spec.choices[prefix[i] if i < len(prefix) else 0]

        runs.append(trace(ProbeTrial(pick)))
        prefix = (prefix + [0] * len(sizes))[:len(sizes)]
        while prefix and prefix[-1] + 1 >= sizes[len(prefix) - 1]:  # odometer, last digit first
            prefix.pop()
        if not prefix:
            return runs
        prefix[-1] += 1
        if len(runs) >= MAX_PATHS:
            raise ValueError(f"the space has more than {MAX_PATHS} combinations of categorical "
                             "values; shorten its lists of choices")


def dimensions(runs: list[Dims]) -> dict[str, Dim]:
    """Every dimension of the runs of one space, in the order a reader expects: each one after
    the dimension it follows in the first run that has it (magnitude right after augment)."""
    order: list[str] = []
    specs: dict[str, Dim] = {}
    for run in runs:
        names = list(run.specs)
        for i, name in enumerate(names):
            if name in specs:
                if specs[name] != run.specs[name]:
                    raise ValueError(f"the space asks for {name!r} as {specs[name]} on one branch "
                                     f"and as {run.specs[name]} on another; give each its own "
                                     "name")
                continue
            specs[name] = run.specs[name]
            at = order.index(names[i - 1]) + 1 if i else 0
            while at < len(order) and order[at] not in run.specs:  # past other branches' names
                at += 1
            order.insert(at, name)
    return {name: specs[name] for name in order}
