"""The run lifecycle: building a run from its config (``compose``), training and the evaluation
protocols over it (``training``)."""
