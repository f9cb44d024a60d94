"""Shared test helpers: dataset generators (``datasets``), a local HTTP file server
(``servers``) and entry-point runners (``runners``). ``tests/`` is on pytest's ``pythonpath``."""
