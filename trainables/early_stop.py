"""Early stopping for pretraining stages: watch a held-out metric each epoch, keep the best
epoch's weights, and stop once `patience` epochs in a row have not beaten it. Patience 0 is no
early stopping: every epoch runs and the last one's weights are kept."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

EPOCHS_DONE, PATIENCE_RAN_OUT, NOT_WATCHED = "epochs", "patience", "no held-out data"


@dataclass
class BestEpoch:
    """The best epoch so far of a metric (`higher` is better, or lower), with a CPU copy of the
    module's weights then; `patience` 0 tracks nothing and keeps the last epoch."""

    patience: int
    higher: bool
    epoch: int = 0  # 1-based; 0 before any epoch was measured
    value: float | None = None
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    since: int = 0  # epochs since the best

    def better(self, value: float) -> bool:
        if self.value is None:
            return True
        return value > self.value if self.higher else value < self.value

    def update(self, epoch: int, value: float, module: nn.Module) -> bool:
        """Record `epoch`'s metric; True when the stage should stop now."""
        if self.patience == 0:
            self.epoch, self.value = epoch, value  # the last is the one kept
            return False
        if self.better(value):
            self.epoch, self.value, self.since = epoch, value, 0
            self.state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        else:
            self.since += 1
        return 0 < self.patience <= self.since

    def restore(self, module: nn.Module) -> None:
        """Load the best epoch's weights back into `module` (where one was kept)."""
        if self.state is not None:
            module.load_state_dict(self.state)

    def summary(self, epochs_run: int, epochs: int) -> dict:
        """What the stage record says: the best epoch and its metric, and why it stopped. Only
        patience ends a stage before its last of `epochs`; one that runs out at the last epoch
        stopped nothing: all of them ran."""
        if self.value is None:
            return {"best_epoch": epochs_run, "stopped": NOT_WATCHED, "epochs_run": epochs_run}
        return {"best_epoch": self.epoch, "best_value": self.value,
                "stopped": PATIENCE_RAN_OUT if epochs_run < epochs else EPOCHS_DONE,
                "epochs_run": epochs_run}
