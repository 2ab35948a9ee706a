"""``python -m tfstronglens``: the command line interface (see :mod:`tfstronglens.cli`)."""

import sys

from tfstronglens.cli import main

if __name__ == "__main__":
    sys.exit(main())
