"""``tox -e bench`` entry point: see ``python bench/run.py --help`` and harness.py."""

import sys

from harness import main

if __name__ == "__main__":
    sys.exit(main())
