"""The README's two commands, exactly as written: ``demo`` (install, run the main job on
built-in defaults) and ``test`` (install, pass the tests).

``.ci/run`` runs ``python3 .ci/readme_commands.py test`` through bash, so CI tests the command a
newcomer copies, not a private variant of it; ``tests/ci/test_install.py`` checks the pair.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"```bash\n(.*?)\n```", re.DOTALL)


def readme_commands(text: str) -> dict[str, str]:
    """``{"demo": ..., "test": ...}``: the first two fenced bash blocks of the Quick start."""
    section = text.split("## Quick start", 1)[-1].split("\n## ", 1)[0]
    blocks = [block.strip() for block in _FENCE.findall(section)]
    if len(blocks) < 2:
        raise ValueError("README.md: the Quick start needs two ```bash blocks (demo, tests)")
    return {"demo": blocks[0], "test": blocks[1]}


if __name__ == "__main__":
    print(readme_commands(README.read_text(encoding="utf-8"))[sys.argv[1]])
