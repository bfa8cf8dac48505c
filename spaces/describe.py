"""`--show-space`: a strategy's effective search space, printed as a `--space` file.

A define-by-run space is code, so its structure is found by running it: `explore` traces it
once per combination of categorical values, and a dimension that exists only under some values
of a categorical gets that condition as a trailing comment (`# when head=mlp`). The text loads
back with `spaces.overrides.load_space_file` into overrides that print the same text again.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from spaces.dims import Choices, Dim, Dims, Fixed, dimensions, explore
from spaces.registry import OPTIMIZER_PARAMS, SpaceContext, get_preset, get_space

HEADER = ("# Search spaces: strategy -> dimension -> a range {low, high, log, type}, a list of\n"
          "# choices, or one fixed value. Edit and pass back with --space FILE.\n")


def describe_spaces(strategies: Sequence[str], context: SpaceContext | None = None,
                    overrides: Mapping[str, Mapping[str, Dim]] | None = None) -> str:
    """Several strategies' effective spaces as one YAML document, a key per strategy;
    `overrides` as `load_space_file` returns them."""
    overrides = overrides or {}
    return HEADER + "\n".join(describe_space(s, context, overrides.get(s)) for s in strategies)


def describe_space(strategy: str, context: SpaceContext | None = None,
                   overrides: Mapping[str, Dim] | None = None) -> str:
    """One strategy's effective space: `strategy:` and a line per dimension, by TrialConfig
    field name, lr and weight_decay as one entry per optimizer."""
    runs = explore(get_space(strategy, context, overrides).trace)
    specs = dimensions(runs)
    lines = [f"{strategy}:"]
    for name, spec in specs.items():
        if name not in OPTIMIZER_PARAMS:
            lines.append(entry(2, name, spec, condition(runs, specs, name)))
            continue
        field = OPTIMIZER_PARAMS[name][0]
        same = [n for n in specs if OPTIMIZER_PARAMS.get(n, ("",))[0] == field]
        if name == same[0]:  # all of the field at its first name
            lines.append(f"  {field}:")
            lines += [entry(4, OPTIMIZER_PARAMS[n][1], specs[n],
                            condition(runs, specs, n, "optimizer")) for n in same]
    return "\n".join(lines + preset_lines(strategy, context)) + "\n"


def preset_lines(strategy: str, context: SpaceContext | None) -> list[str]:
    """The strategy's preset as comments (the file stays a valid --space file): the config its
    search tries first, unless --no-preset."""
    values = get_preset(strategy, context)
    pairs = [f"{k}={f'{v:.3g}' if isinstance(v, float) else v}" for k, v in values.items()]
    return textwrap.wrap(" ".join(pairs), width=99, break_long_words=False,
                         initial_indent="  # preset, tried first (unless --no-preset): ",
                         subsequent_indent="  #   ")


def entry(indent: int, key: str, spec: Dim, when: str) -> str:
    comment = f"  # when {when}" if when else ""
    return f"{' ' * indent}{key}: {flow(as_yaml(spec))}{comment}"


def as_yaml(spec: Dim) -> Any:
    """The file form of one dimension (what parse_dim in spaces.overrides reads)."""
    if isinstance(spec, Fixed):
        return spec.value
    if isinstance(spec, Choices):
        return list(spec.choices)
    if spec.low == spec.high:  # a range of one value (a shallow backbone's freeze_depth)
        return spec.low
    form: dict[str, Any] = {"low": spec.low, "high": spec.high}
    if spec.log:
        form["log"] = True
    if spec.integer:
        form["type"] = "int"
    return form


def flow(value: Any) -> str:
    """One value as inline YAML; dumped inside a list, since a bare scalar gets an end marker."""
    return yaml.safe_dump([value], default_flow_style=True, sort_keys=False,
                          width=1 << 30).strip()[1:-1]


def condition(runs: list[Dims], specs: Mapping[str, Dim], name: str, skip: str = "") -> str:
    """The values of categoricals that `name` needs: those categoricals that every run with
    `name` asks for, but never with some of their choices. `skip`: one not to mention."""
    having = [run for run in runs if name in run.specs]
    parts = []
    for other, spec in specs.items():
        if (other in (name, skip) or not isinstance(spec, Choices)
                or not all(other in run.values for run in having)):
            continue
        seen = [c for c in spec.choices if any(run.values[other] == c for run in having)]
        if len(seen) < len(spec.choices):
            parts.append(f"{other}={flow(seen[0])}" if len(seen) == 1
                         else f"{other} in {flow(seen)}")
    return " and ".join(parts)
