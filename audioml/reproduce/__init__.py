"""``audioml-reproduce``: the studies' systems run under their own protocol and audioml's grouped
one, side by side (registry: ``audioml/conf/reproduce.yaml``; command: ``audioml.reproduce.cli``)."""
