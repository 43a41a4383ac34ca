"""``python -m aot_eval ...``: see :mod:`aot_eval.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
