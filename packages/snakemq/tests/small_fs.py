"""A real, small file system for storage tests: a tmpfs mounted by the test.

Mounting needs root (CI runs as root).  Without it the test fails loudly: a
full disk or a read-only mount cannot be faked honestly.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def small_fs(size: str = "2m") -> Iterator[pathlib.Path]:
    """A fresh tmpfs of ``size`` (``mount -o size=``), unmounted at exit."""
    where = pathlib.Path(tempfile.mkdtemp(prefix="snakemq-smallfs-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        os.rmdir(where)
        raise AssertionError(
            f"this test needs a real small file system and could not mount a tmpfs "
            f"(run it as root): {done.stderr.strip()}"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        os.rmdir(where)


def remount_read_only(where: pathlib.Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
