"""``python -m swoolish`` is the ``swoolish`` command."""

import sys

from .cli import main

sys.exit(main())
