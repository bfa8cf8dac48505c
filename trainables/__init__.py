"""The trial side of transfer-search: data, models, strategies, pretraining stages, trainable.

Nothing is imported here, so `import trainables.strategies` (cheap) does not load torch.
"""
