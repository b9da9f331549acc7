"""Conformance driver for the sync package ``snakemq`` (the tutorial API)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _tutorial_driver import main

if __name__ == "__main__":
    main("sync", legacy=False)
