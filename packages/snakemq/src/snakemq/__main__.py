"""``python -m snakemq``: the same as the ``snakemq`` command."""

import sys

from snakemq.cli import main

if __name__ == "__main__":
    sys.exit(main())
