"""``python -m dlprimer``: the same as the ``dlprimer`` command."""
import sys

from .cli import main

sys.exit(main())
