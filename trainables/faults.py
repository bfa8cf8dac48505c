"""Injected trial faults, so tests can prove that failures are retried, counted and shown.

Set `TRANSFER_SEARCH_INJECT_FAULT=STRATEGY:EPOCH` (for example `scratch:1`) in the environment
that starts Ray: every trial of that strategy raises `InjectedFault` when it reports that epoch.
Unset, this costs one dictionary lookup per epoch.
"""

from __future__ import annotations

import os

FAULT_ENV = "TRANSFER_SEARCH_INJECT_FAULT"


class InjectedFault(RuntimeError):
    """The failure a test asked for."""


def inject_fault(strategy: str, epoch: int) -> None:
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    name, _, at = wanted.partition(":")
    if name == strategy and str(epoch) == at:
        raise InjectedFault(f"{FAULT_ENV}={wanted}: injected failure at epoch {epoch}")
