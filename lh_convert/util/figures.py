"""PNG figures: matplotlib on its file-only backend, and an atomic save."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .atomic import temporary_sibling


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, *, dpi: int = 110) -> bool:
    """Write ``fig`` to ``path`` as PNG atomically (a hidden sibling, then a rename), close it."""
    path = Path(path)
    temporary = temporary_sibling(path)
    try:
        fig.savefig(temporary, dpi=dpi, bbox_inches="tight", format="png")
        os.replace(temporary, path)
    finally:
        pyplot().close(fig)
        temporary.unlink(missing_ok=True)
    return True
