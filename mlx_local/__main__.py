"""``python -m mlx_local ...`` is the ``mlx-local`` command (see ``mlx-local --help``)."""

import sys

from ._cli import main

sys.exit(main())
