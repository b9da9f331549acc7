"""Conformance driver for the original snakeMQ 1.6 from PyPI (run in its own venv).

It uses 1.6 exactly as a 1.6 program would (the tutorial API, through
``_tutorial_driver``).  1.6 runs on Python 3.11 unchanged for everything the
suite asks; its known defects are *not* patched here, because the suite is
meant to see them (they are expected-failure rows with the reason written
down).  One defect is survived the way a careful 1.6 program would, outside
1.6's code and counted in the report: a socket error of one connection that
escapes ``loop()`` (``_tutorial_driver.TutorialDriver._survive_legacy_socket_error``).  Its deprecation warnings go to stderr, never to the protocol channel.
"""

from __future__ import annotations

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _tutorial_driver import main

if __name__ == "__main__":
    warnings.simplefilter("default")  # visible on stderr, never fatal
    main("legacy-1.6", legacy=True)
