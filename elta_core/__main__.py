"""``python -m elta_core``: the ``elta`` command."""

import sys

from elta_core.app.cli import main

sys.exit(main())
