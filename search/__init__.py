"""The driver: CLI, experiment spec, pretraining stages and Tuner wiring."""
