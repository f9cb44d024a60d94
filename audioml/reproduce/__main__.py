"""``python -m audioml.reproduce`` = ``audioml-reproduce``."""

import sys

from audioml.reproduce.cli import main

sys.exit(main())
