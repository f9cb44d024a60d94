"""audioml's Hydra config root (``pkg://audioml.conf``): ``train.yaml``, ``eval.yaml``, ``predict.yaml`` and
one folder per config group. Users add groups through ``AUDIOML_CONFIG_PATH`` (``audioml.config``)."""
