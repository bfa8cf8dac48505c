"""Where a run's wall time goes: data, Ray's start, the pretraining stages, the trials, the
final evaluation and the finish, each timed from the moment the run enters it.

search/run.py prints them when the run ends and keeps them in the experiment's timings.json
(bench/gpu.py reads that file to split a search's wall time). What the interpreter and the
imports take before `main` runs is not here: a caller that times the whole process sees it as
the difference.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from store.atomic import atomic_file
from store.layout import TIMINGS_FILE


class Phases:
    """Consecutive phases of one run; entering a phase ends the one before."""

    def __init__(self) -> None:
        self._entered: list[tuple[str, float]] = []
        self._first: dict[str, float] = {}  # the wall-clock time each phase was first entered

    def start(self, name: str) -> None:
        """A new run's first phase: what an earlier run in this process timed is dropped."""
        self._entered.clear()
        self._first.clear()
        self.enter(name)

    def enter(self, name: str) -> None:
        self._entered.append((name, time.perf_counter()))
        self._first.setdefault(name, time.time())

    def seconds(self) -> dict[str, float]:
        """Seconds per phase, in the order first entered; a phase entered twice adds up."""
        ends = [t for _, t in self._entered[1:]] + [time.perf_counter()]
        out: dict[str, float] = {}
        for (name, start), end in zip(self._entered, ends, strict=True):
            out[name] = out.get(name, 0.0) + end - start
        return out

    def summary(self) -> str:
        return "time: " + ", ".join(f"{name} {s:.1f} s" for name, s in self.seconds().items())

    def write(self, exp_dir: Path) -> None:
        """timings.json: seconds per phase, and when each was first entered (Unix time)."""
        with atomic_file(Path(exp_dir) / TIMINGS_FILE) as tmp:
            tmp.write_text(json.dumps({"seconds": self.seconds(), "entered_at": self._first},
                                      indent=2))


RUN = Phases()  # the phases of this process's run
