"""``python -m audioml.classical`` = ``audioml-classical``."""

from audioml.classical.cli import main

main()
