"""The trial side of transfer-search: data, models, strategies, pretraining stages, trainable."""

from trainables.strategies import STRATEGIES, get_strategy, register_strategy

__all__ = ["STRATEGIES", "get_strategy", "register_strategy"]
