"""``python -m synaptoroute``: the same command line as the ``synaptoroute`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
