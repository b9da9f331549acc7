"""Driver for our sync package ``snakemq``: the tutorial API, exactly as for snakeMQ 1.6."""

from __future__ import annotations

import _classic
import _common

if __name__ == "__main__":
    config = _common.load_config()
    if config["role"] == "recv":
        _classic.run_receiver(config)
    else:
        _classic.run_sender(config)
