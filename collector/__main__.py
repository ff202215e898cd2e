"""``python -m collector``: the ``collector`` command without the console script."""

import sys

from collector.cli import main

sys.exit(main())
