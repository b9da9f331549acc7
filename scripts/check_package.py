"""``tox -e package``: the distributions as a user gets them.

Builds every wheel and sdist into ``OUT/dist``, runs ``twine check`` on them,
checks that each carries the one version of the repository's VERSION file and
its LICENSE, installs the wheels (not editable) into a fresh virtualenv
``OUT/venv``, and runs the tutorial and the async examples with it from outside
the repository (``examples/test_examples.py`` with ``SNAKEMQ_EXAMPLES_PYTHON``).

    python scripts/check_package.py OUT
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["snakemq-proto", "snakemq", "snakemq-anyio"]


def run(*cmd: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, check=True)


def main(out: Path) -> int:
    version = (ROOT / "VERSION").read_text().strip()
    dist = out / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    for name in PACKAGES:
        run(sys.executable, "-m", "build", "--quiet", "--outdir", dist, ROOT / "packages" / name)
    files = sorted(dist.iterdir())
    run(sys.executable, "-m", "twine", "check", "--strict", *files)
    for name in PACKAGES:
        stem = f"{name.replace('-', '_')}-{version}"
        wheel = dist / f"{stem}-py3-none-any.whl"
        with zipfile.ZipFile(wheel) as z:
            names = z.namelist()
            metadata = z.read(f"{stem}.dist-info/METADATA").decode()
        assert f"{stem}.dist-info/licenses/LICENSE" in names, names
        assert "License-Expression: MIT" in metadata, metadata[:500]
        assert f"\nVersion: {version}\n" in metadata
        with tarfile.open(dist / f"{stem}.tar.gz") as t:
            members = t.getnames()
        assert f"{stem}/LICENSE" in members and f"{stem}/VERSION" in members, members
        assert not any("/tests/" in m for m in members), "tests are left out of the sdists"
        print(f"ok: {wheel.name} and its sdist: version {version}, MIT, LICENSE", flush=True)

    venv = out / "venv"
    shutil.rmtree(venv, ignore_errors=True)
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    wheels = [f for f in files if f.suffix == ".whl"]
    trio_extra = next(w for w in wheels if w.name.startswith("snakemq_anyio"))
    run(python, "-m", "pip", "install", "--quiet", *wheels, f"{trio_extra}[trio]", "trustme")
    # from outside the repository, so that nothing imports the source tree
    probe = (
        "import snakemq, snakemq_anyio, snakemq_proto;"
        "print(snakemq.__version__, snakemq.__file__, snakemq_anyio.__file__)"
    )
    found = subprocess.run(
        [python, "-c", probe], cwd=out, check=True, capture_output=True, text=True
    ).stdout
    print(found, end="")
    assert found.split()[0] == version and str(ROOT / "packages") not in found, found
    run(python, "-m", "snakemq", "--version", cwd=out)
    env = {**os.environ, "SNAKEMQ_EXAMPLES_PYTHON": str(python)}
    env.pop("PYTHONPATH", None)
    run(
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
        ROOT / "examples" / "test_examples.py", "-k", "tutorial or async",
        cwd=out, env=env,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve()))
