"""snakeMQ 1.6 driver (run by the interpreter of the 1.6 virtualenv, bench/.venv16)."""

from __future__ import annotations

import _classic
import _common

if __name__ == "__main__":
    config = _common.load_config()
    if config["role"] == "recv":
        _classic.run_receiver(config)
    else:
        _classic.run_sender(config)
