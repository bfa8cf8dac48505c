"""A trial's epoch reports, each saved and sent to Tune on a second thread while the next epoch
trains.

`tune.report` with a checkpoint blocks its caller: Tune copies the checkpoint's files into the
trial's storage, then waits until the driver has taken the result and asked for the next one.
With the `torch.save` before it, that is a ResNet-18's ~90 MB written twice and a round trip to
the driver, 0.1-0.5 s per epoch on a CPU, during which nothing trains. Here the training thread
only copies the state (model, optimizer, RNG) into host memory, which the next epoch cannot then
change, and a reporting thread writes and reports it; one report is in flight at a time, in
epoch order.

What Tune says back reaches the training thread between two steps (`poll`): when the report
stopped the trial (ASHA, PBT, the end of the search: Tune's report raises SystemExit) or failed
(a full disk), the training thread raises it too, within one step, so an actor Tune reuses for
the next trial is free at once (Tune waits `TUNE_FUNCTION_THREAD_TIMEOUT_S` for it, 2 s unless
set, before it drops the actor and starts another process; the trainable sets 120 s).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

# a report returns once the driver has taken its result; the driver takes results in
# milliseconds, but a checkpoint copied to cloud storage takes as long as its upload
REPORT_TIMEOUT_S = 3600.0


def host_copy(state):
    """The state with every tensor copied to host memory, nested dicts and lists included."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: host_copy(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(host_copy(v) for v in state)
    return state


class BackgroundReports:
    """Runs `write(metrics, state)` for one epoch at a time on a reporting thread."""

    def __init__(self, write: Callable[[dict, dict], None],
                 timeout_s: float = REPORT_TIMEOUT_S) -> None:
        self._write = write
        self._timeout_s = timeout_s
        self._thread: threading.Thread | None = None
        self._outcome: BaseException | None = None
        self._epoch = 0

    def submit(self, metrics: dict, state: dict) -> None:
        """Report this epoch once the one before has been taken; returns after the copy."""
        self.wait()
        snapshot = host_copy(state)
        self._epoch = metrics.get("epoch", 0)
        self._thread = threading.Thread(target=self._run, args=(metrics, snapshot),
                                        name="trial-report", daemon=True)
        self._thread.start()

    def _run(self, metrics: dict, state: dict) -> None:
        try:
            self._write(metrics, state)
        except BaseException as outcome:  # noqa: BLE001 (SystemExit too): raised on the trainer
            self._outcome = outcome

    def poll(self) -> None:
        """Between steps: raise on the training thread what the last report raised."""
        if self._outcome is not None:
            outcome, self._outcome = self._outcome, None
            raise outcome

    def wait(self) -> None:
        """Until the report in flight has returned; then raise what it raised."""
        if self._thread is not None:
            self._thread.join(self._timeout_s)
            if self._thread.is_alive():
                raise TimeoutError(
                    f"the report of epoch {self._epoch} did not return within "
                    f"{self._timeout_s:g} s: the checkpoint's copy to storage, or the driver, "
                    "hangs")
            self._thread = None
        self.poll()

    def close(self) -> None:
        """Join the thread, raising nothing: an exception is already on its way."""
        try:
            self.wait()
        except BaseException:  # noqa: BLE001, S110
            pass
