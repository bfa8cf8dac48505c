"""Data: every `--data` source decoded once into uint8 arrays, cached, and augmented on batches.

`dataset` holds the shared types and cache entries; `load` dispatches on the `--data` string to
the loaders (`demo`, `imagefolder`, `torchvision_sets`); `augment` and `autoaugment` transform
batches on the trial's device.
"""
