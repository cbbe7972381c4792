"""``python -m src.drill``: the command line is :func:`src.drill.cli.main`."""

import sys

from src.drill.cli import main

if __name__ == "__main__":
    sys.exit(main())
