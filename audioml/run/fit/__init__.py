"""Fitting a run: its sequence (``training``), what it is built from (``compose``), the Trainer, checkpoints and resuming, the evaluation protocols and the test."""
