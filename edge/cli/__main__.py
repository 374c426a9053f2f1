"""``python -m edge.cli``: the ``astro-edge`` command without its console script."""

import sys

from edge.cli import main

sys.exit(main())
