"""``python -m scratchvae`` is the ``scratchvae`` command."""

import sys

from .cli import main

sys.exit(main())
