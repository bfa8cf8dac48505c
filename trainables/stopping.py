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
which the thread does at its start or its next step or evaluation batch by raising
SystemExit(0) (`check`), Ray's own graceful end of a trainable's thread. `cleanup` then joins
that thread, Ray's own `training_thread` of the trial's session (it exists from the trial's
setup, before the trial's function runs), for at most STOP_WAIT_S, before the actor may exit.
"""

from __future__ import annotations

import threading

from ray.train._internal.session import get_session  # the trial's session: its thread

# a step of a large model on a CPU can take seconds; Tune itself kills an actor whose stop
# takes longer than TUNE_FORCE_TRIAL_CLEANUP_S (600 s)
STOP_WAIT_S = 120.0

# Tune asked this actor's trial to stop; an actor runs one trial at a time
_stop = threading.Event()


def check() -> None:
    """At the trial's start and between its steps: end the trial's thread, as Tune asked."""
    if _stop.is_set():
        raise SystemExit(0)


def join(thread: threading.Thread | None, timeout_s: float = STOP_WAIT_S) -> bool:
    """Wait for a started trial thread to end; False if it still runs after `timeout_s`."""
    if thread is None or thread is threading.current_thread() or not thread.is_alive():
        return True
    thread.join(timeout_s)
    return not thread.is_alive()


class JoinedOnStop:
    """Mixin for Ray's FunctionTrainable: the trial's thread ends before the actor moves on."""

    def cleanup(self) -> None:
        _stop.set()
        session = get_session()  # before Ray's cleanup, which shuts the session down
        thread = getattr(session, "training_thread", None)
        try:
            super().cleanup()  # releases a report that waits on the driver; raises its errors
        finally:
            join(thread)

    def reset_config(self, new_config: dict) -> bool:
        _stop.set()  # Ray's reset waits TUNE_FUNCTION_THREAD_TIMEOUT_S for the thread
        reset = super().reset_config(new_config)
        if reset:  # the stopped trial's thread has ended: the next trial runs
            _stop.clear()
        return reset
