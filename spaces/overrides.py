"""`--space FILE.yaml`: a user's changes to the built-in search spaces, read and checked.

The file maps strategies to the dimensions to change, by TrialConfig field name. `all` (or
`"*"`) applies to every strategy of the run that searches the dimension; a strategy's own key
wins over it. Each dimension takes one of three forms:

    all:                                       # every strategy in the run
      batch_size: [32, 64]                     # a list: categorical choices
      augment: crop_flip                       # one value: fixed, not searched
    unfrozen:
      lr: {low: 1.0e-4, high: 0.1, log: true}  # a range of floats, log scale or not
      magnitude: {low: 3, high: 15, type: int} # a range of whole numbers
      optimizer: {choices: [sgd]}              # choices, long form
    frozen:
      lr:                                      # lr: one range for both optimizers, or one each
        sgd: {low: 0.01, high: 0.5, log: true}
        adamw: {low: 1.0e-4, high: 0.01, log: true}
      weight_decay: {adamw: 0.05}              # weight_decay too: per optimizer, or one form

A range's `type` defaults to the field's own (int for magnitude, freeze_depth, probe_epochs,
head_hidden, batch_size; float otherwise); `log` defaults to false. Any form fits any numeric
field; text and true/false fields take choices or one value. A dimension that only exists on a
branch (magnitude with randaugment, head_hidden with head=mlp) keeps its condition, and fixing
the categorical above it (`augment: randaugment`) settles the branch. `--show-space` prints
the effective spaces in this format, with each condition as a comment: a valid file to edit.

PyYAML reads `1e-4` (no dot) as text; numeric text is accepted wherever a float is expected.
Every value is checked by constructing TrialConfig with it, so the file is refused, with one
line naming the file, the key and the fix, before anything runs.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import yaml

from spaces.describe import describe_space, describe_spaces
from spaces.dims import Choices, Dim, Fixed, Range
from spaces.registry import OPTIMIZER_PARAMS, PER_OPTIMIZER, SPACES, run_context, space_dimensions
from trainables.config import OPTIMIZERS, TrialConfig

ALL_KEYS = ("all", "*")
RANGE_KEYS = ("low", "high", "log", "type")
FIELD_TYPES: dict[str, type] = typing.get_type_hints(TrialConfig)  # field -> float, int, ...
FIELDS = tuple(f.name for f in fields(TrialConfig))
# a valid TrialConfig, for checking one value at a time with TrialConfig's own checks
_BASE = TrialConfig(lr=0.1, batch_size=32, augment="none", weight_decay=0.0)

__all__ = ["SpaceFileError", "describe_space", "describe_spaces", "load_space_file",
           "show_spaces"]


class SpaceFileError(ValueError):
    """A --space file that cannot be used; the message is one line naming the file and fix."""


def load_space_file(path: str, strategies: Sequence[str]) -> dict[str, dict[str, Dim]]:
    """The overrides of each strategy of the run: strategy -> Optuna parameter name -> Dim,
    for `spaces.get_space`. Every strategy block in the file is checked, even those of
    strategies not in this run."""
    raw = read_yaml(path)
    shared_keys = [k for k in raw if k in ALL_KEYS]
    if len(shared_keys) > 1:
        raise SpaceFileError(f"--space {path}: both {shared_keys[0]!r} and {shared_keys[1]!r}; "
                             "they mean the same, keep one")
    # backbone is searched only where a run lists several (its --backbone): any space may take
    # it, and search.spec checks it against the run's list
    names = {s: [*space_dimensions(s), "backbone"] for s in SPACES}
    shared: dict[str, Dim] = {}
    own: dict[str, dict[str, Dim]] = {}
    for key, block in raw.items():
        if key in ALL_KEYS:
            shared = parse_block(path, str(key), block, {n for d in names.values() for n in d})
        elif key in SPACES:
            own[key] = parse_block(path, key, block, set(names[key]))
        else:
            raise SpaceFileError(f"--space {path}: {key!r} is not a strategy"
                                 f"{close_hint(str(key), [*SPACES, 'all'])}; use one of "
                                 f"{', '.join(SPACES)} or all")
    return {s: {**{n: d for n, d in shared.items() if n in names[s]}, **own.get(s, {})}
            for s in strategies}


def show_spaces(spec: Any, train_images: int | None = None) -> str:
    """--show-space: the run's effective spaces (an ExperimentSpec's strategies, --space file,
    backbone depth, epoch budget, device, image size and training split) as a --space file."""
    overrides = load_space_file(spec.space_file, spec.strategies) if spec.space_file else None
    return describe_spaces(spec.strategies, run_context(spec, train_images), overrides)


def read_yaml(path: str) -> dict:
    """The file's top-level mapping (empty for an empty file)."""
    try:
        raw = yaml.safe_load(Path(path).expanduser().read_text())
    except FileNotFoundError:
        raise SpaceFileError(f"--space {path}: no such file; check the path, or write one "
                             "with --show-space") from None
    except OSError as error:
        raise SpaceFileError(f"--space {path}: cannot read it ({error.strerror})") from None
    except UnicodeDecodeError:
        raise SpaceFileError(f"--space {path}: not a text file; pass a YAML file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SpaceFileError(f"--space {path}: not valid YAML{where}: {problem}; fix the "
                             "syntax there") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpaceFileError(f"--space {path}: the top level is {yaml_type(raw)}; it must map "
                             "strategies (or all) to dimensions, e.g. 'unfrozen: {batch_size: "
                             "[32, 64]}'")
    return raw


def parse_block(path: str, strategy: str, block: Any, searched: set[str]) -> dict[str, Dim]:
    """One strategy's (or all's) dimensions, by Optuna parameter name."""
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise SpaceFileError(f"--space {path}: {strategy} is {yaml_type(block)}; it must map "
                             "dimension names to ranges, choices or values")
    searched_fields = {OPTIMIZER_PARAMS[n][0] if n in OPTIMIZER_PARAMS else n for n in searched}
    dims: dict[str, Dim] = {}
    for name, raw in block.items():
        where = f"--space {path}: {strategy}.{name}"
        if name not in FIELDS:
            raise SpaceFileError(f"{where}: not a hyperparameter{close_hint(str(name), FIELDS)}; "
                                 f"the hyperparameters are {', '.join(FIELDS)}")
        if name not in searched_fields:
            raise SpaceFileError(f"{where}: {strategy} does not search {name}; its dimensions "
                                 f"are {', '.join(sorted(searched_fields))}")
        dims.update(parse_per_optimizer(where, name, raw) if name in PER_OPTIMIZER
                    else {name: parse_dim(where, name, raw)})
    return dims


def parse_per_optimizer(where: str, field: str, raw: Any) -> dict[str, Dim]:
    """lr or weight_decay: one form for every optimizer, or a mapping of optimizers to forms."""
    if isinstance(raw, dict) and raw and set(raw) <= set(OPTIMIZERS):
        return {f"{field}_{o}": parse_dim(f"{where}.{o}", field, spec) for o, spec in raw.items()}
    return {f"{field}_{o}": parse_dim(where, field, raw) for o in OPTIMIZERS}


def parse_dim(where: str, name: str, raw: Any) -> Dim:
    if isinstance(raw, list):
        return parse_choices(where, name, raw)
    if isinstance(raw, dict):
        if "choices" in raw:
            if set(raw) != {"choices"} or not isinstance(raw["choices"], list):
                raise SpaceFileError(f"{where}: write choices as {{choices: [a, b]}} with "
                                     "nothing beside them")
            return parse_choices(where, name, raw["choices"])
        if raw and set(raw) <= set(RANGE_KEYS):
            return parse_range(where, name, raw)
        extra = (f" or one mapping per optimizer ({', '.join(OPTIMIZERS)})"
                 if name in PER_OPTIMIZER else "")
        raise SpaceFileError(f"{where}: {{{', '.join(map(str, raw))}}} is no form I know; write "
                             f"a range {{low, high, log, type}}, a list of choices or one "
                             f"value{extra}")
    return Fixed(check_value(where, name, raw))


def parse_choices(where: str, name: str, raw: list) -> Choices:
    if not raw:
        raise SpaceFileError(f"{where}: the list of choices is empty; give at least one value")
    choices = tuple(check_value(where, name, value) for value in raw)
    if len(set(choices)) < len(choices):
        raise SpaceFileError(f"{where}: the choices {list(choices)} repeat a value; list each "
                             "once")
    return Choices(choices)


def parse_range(where: str, name: str, raw: dict) -> Range:
    kind = FIELD_TYPES[name]
    if kind not in (int, float):
        raise SpaceFileError(f"{where}: {name} is not a number; give a list of choices or one "
                             "value instead of a range")
    declared = raw.get("type", kind.__name__)
    if declared != kind.__name__:
        raise SpaceFileError(f"{where}: type {declared!r}, but {name} takes "
                             f"{'whole numbers' if kind is int else 'floats'}; write type: "
                             f"{kind.__name__} or leave type out")
    missing = [k for k in ("low", "high") if k not in raw]
    if missing:
        raise SpaceFileError(f"{where}: the range has no {' and no '.join(missing)}; write "
                             "{low: ..., high: ...}")
    low, high = (check_value(f"{where}.{k}", name, raw[k]) for k in ("low", "high"))
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise SpaceFileError(f"{where}: log is {log!r}; write log: true or log: false")
    if low >= high:
        raise SpaceFileError(f"{where}: low {low} is not below high {high}; swap them, or "
                             f"write one value ({name}: {low}) to fix it")
    if log and low <= 0:
        raise SpaceFileError(f"{where}: a log range needs low > 0, got {low}; raise low or "
                             "write log: false")
    return Range(low, high, log, integer=kind is int)


def check_value(where: str, name: str, value: Any) -> Any:
    """`value` as field `name` takes it, checked by TrialConfig itself."""
    kind = FIELD_TYPES[name]
    if kind is float and isinstance(value, str):
        try:  # PyYAML reads 1e-4 (no dot) as text
            value = float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        what = {float: "a number", int: "a whole number", str: "text",
                bool: "true or false"}[kind]
        raise SpaceFileError(f"{where}: {value!r} is {yaml_type(value)}; {name} takes "
                             f"{what}")
    try:
        replace(_BASE, **{name: value})
    except (TypeError, ValueError) as error:
        detail = str(error) if not str(error).startswith("out-of-range") else "out of range"
        raise SpaceFileError(f"{where}: {name}={value!r} is refused by TrialConfig "
                             f"({detail})") from None
    return value


def close_hint(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def yaml_type(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false",
            int: "a whole number", float: "a number", type(None): "empty"
            }.get(type(value), type(value).__name__)
