"""``python -m audioml``: the same as the ``audioml`` command (``audioml.commands``)."""

import sys

from audioml.commands import main

sys.exit(main())
