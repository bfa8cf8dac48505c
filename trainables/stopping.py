"""How a trial that Tune stops ends: at its next step, its thread joined before its actor exits.

Ray Tune runs a function trainable on a daemon thread of the trial's actor. When the scheduler
stops a trial (ASHA, PBT, the end of a time budget) and the actor is not reused, Tune calls the
trainable's `cleanup`, which in Ray 2.60 does not wait for that thread (`session.finish(
timeout=0)`), and the actor's process exits. A training thread still inside native torch code
while the interpreter shuts down aborts the process: a crash dump of ~70 lines (`Fatal Python
error: Aborted`) in the user's console. A reused actor's `reset_config` does wait for the thread,
but the thread hears of the stop only when a report returns, up to an epoch later.

`JoinedOnStop` is the mixin Ray's `wrap_function` puts before its function-trainable class (a
function's `__mixins__`): on `cleanup` and on `reset_config` it asks the trial's thread to stop,
which the thread does at its next step or evaluation batch by raising SystemExit(0) (`check`),
Ray's own graceful end of a trainable's thread. `cleanup` then joins it, for at most
STOP_WAIT_S, before it returns and the actor may exit.
"""

from __future__ import annotations

import threading

# a step of a large model on a CPU can take seconds; Tune itself kills an actor whose stop
# takes longer than TUNE_FORCE_TRIAL_CLEANUP_S (600 s)
STOP_WAIT_S = 120.0


class _TrialThread:
    """The thread of the trial this actor runs (one at a time), and Tune's request to stop it."""

    stop = threading.Event()
    thread: threading.Thread | None = None


def begin() -> None:
    """Called on the trial's thread as the trial starts: it is the one to join."""
    _TrialThread.thread = threading.current_thread()
    _TrialThread.stop.clear()


def check() -> None:
    """Between steps: end the trial's thread, as Tune asked."""
    if _TrialThread.stop.is_set():
        raise SystemExit(0)


def request_stop() -> None:
    _TrialThread.stop.set()


def join(timeout_s: float = STOP_WAIT_S) -> bool:
    """Wait for the trial's thread to end; False if it still runs after `timeout_s`."""
    thread = _TrialThread.thread
    if thread is None or thread is threading.current_thread():
        return True
    thread.join(timeout_s)
    return not thread.is_alive()


class JoinedOnStop:
    """Mixin for Ray's FunctionTrainable: the trial's thread ends before the actor moves on."""

    def cleanup(self) -> None:
        request_stop()
        try:
            super().cleanup()  # releases a report that waits on the driver; raises its errors
        finally:
            join()

    def reset_config(self, new_config: dict) -> bool:
        request_stop()  # Ray's reset waits TUNE_FUNCTION_THREAD_TIMEOUT_S for the thread
        return super().reset_config(new_config)
