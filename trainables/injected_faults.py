"""Injected trial faults, so tests can prove that failures are retried, counted and shown.

Set `TRANSFER_SEARCH_INJECT_FAULT=STRATEGY:EPOCH[:KIND[:OPTION,...]]` in the environment that
starts Ray, for example `scratch:1` or `scratch:2:nan:trial=0`; several faults are separated by
`;`:

- KIND `raise` (the default): the trial raises `InjectedFault` when it reports EPOCH;
- `nan`: the model's weights turn to NaN before EPOCH trains, so its loss diverges for real;
- `oom`: the epoch's first step raises torch's out-of-memory error, as a full GPU does;
- option `trial=K`: only the K-th trial of the strategy to start (from 0; Tune's trial ids are
  random); `once`: only the trial's first attempt (a transient fault: the retry, from the last
  checkpoint, goes through).

Unset, this costs one dictionary lookup per epoch.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

FAULT_ENV = "TRANSFER_SEARCH_INJECT_FAULT"
KINDS = ("raise", "nan", "oom")


class InjectedFault(RuntimeError):
    """The failure a test asked for."""


def wanted_fault(strategy: str, epoch: int, kinds: tuple[str, ...]) -> str | None:
    """The kind of fault, one of `kinds`, to inject into this trial at this epoch, or None."""
    for wanted in filter(None, os.environ.get(FAULT_ENV, "").split(";")):
        parts = wanted.split(":")
        if len(parts) < 2 or len(parts) > 4:
            raise ValueError(f"{FAULT_ENV}={wanted}: expected STRATEGY:EPOCH[:KIND[:OPTIONS]]")
        name, at, kind, options = parts + ["raise", ""][len(parts) - 2:]
        if kind not in KINDS:
            raise ValueError(f"{FAULT_ENV}={wanted}: unknown kind {kind!r}; expected {KINDS}")
        if name != strategy:
            continue
        if "trial=" in options:
            trial_index()  # every trial takes its place in the start order at its first epoch
        if at != str(epoch) or kind not in kinds:
            continue
        # `once` last: it spends the trial's one attempt only when the rest applies
        if all(applies(option) for option in sorted(filter(None, options.split(",")),
                                                     key=lambda o: o == "once")):
            return kind
    return None


def applies(option: str) -> bool:
    if option.startswith("trial="):
        return trial_index() == int(option.removeprefix("trial="))
    if option == "once":
        return first_attempt()
    raise ValueError(f"{FAULT_ENV}: unknown option {option!r}; expected trial=K or once")


def inject_fault(strategy: str, epoch: int) -> None:
    """Raise InjectedFault if asked to at this report."""
    if wanted_fault(strategy, epoch, ("raise",)):
        raise InjectedFault(f"injected failure at epoch {epoch} ({FAULT_ENV})")


def inject_epoch_fault(strategy: str, epoch: int, model: nn.Module) -> None:
    """Before an epoch trains: poison the weights (nan) or fail its first step (oom)."""
    kind = wanted_fault(strategy, epoch, ("nan", "oom"))
    if kind == "nan":
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(float("nan"))
    elif kind == "oom":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB "
                                     f"(injected by {FAULT_ENV})")


def _tune(method: str) -> str:
    """A Tune context value (trial id or folder); "" outside a trial, where Ray warns."""
    from ray import tune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(tune.get_context(), method)() or ""


def trial_id() -> str:
    return _tune("get_trial_id")


def fault_dir() -> Path | None:
    """Where injected faults keep their state across a trial's attempts: beside Tune's
    per-trial folders in Ray's session directory (an attempt may run in `driver_artifacts/` or
    in `working_dirs/`), never in the experiment."""
    trial_dir = _tune("get_trial_dir")
    return Path(trial_dir).parent.parent / ".injected_faults" if trial_dir else None


def trial_index() -> int:
    """This trial's place in its strategy's start order, kept in a ledger."""
    folder = fault_dir()
    if folder is None:
        return 0
    folder.mkdir(exist_ok=True)
    ledger, me = folder / "start_order", trial_id()
    ids = ledger.read_text().split() if ledger.exists() else []
    if me not in ids:
        ids.append(me)
        ledger.write_text("\n".join(ids))
    return ids.index(me)


def first_attempt() -> bool:
    """True once per trial: a marker remembers the attempt."""
    folder = fault_dir()
    if folder is None:
        return True
    folder.mkdir(exist_ok=True)
    marker = folder / f"{trial_id()}.once"
    if marker.exists():
        return False
    marker.touch()
    return True
