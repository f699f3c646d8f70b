"""``python -m properties.cli``: the ``dtd-properties`` console script."""

import sys

from . import main

sys.exit(main())
