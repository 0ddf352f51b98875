"""Facts the model card takes from outside the manifest: the source's license and the run's
training data, in the forms the hub's card conventions use (``license``, ``datasets``).

The license is copied only where the source states one: the front matter of its ``README.md``
(a hub download or a local folder) or a GGUF file's ``general.license``. The data is what the
run's ``recipe.json`` pinned; hub dataset ids go into ``datasets``, local paths are named by
their last component only, so a card never reveals the user's file system.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..util.hub import HUB_ID

BUILT_IN_CORPUS = ("lh-convert's built-in corpus: the Python standard library's source files, "
                   "held out for validation by file")
_LICENSE_LINE = re.compile(r"^license:\s*['\"]?([^'\"\s#]+)", re.MULTILINE)


def source_license(source: dict[str, Any]) -> str | None:
    """The license the source states (``apache-2.0``, ``llama3.2``, ...), or None."""
    path = Path(str(source.get("path") or ""))
    if not str(source.get("path") or "") or not path.exists():
        return None
    if source.get("gguf_file"):
        return _gguf_license(path / source["gguf_file"])
    readme = path / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    front = text.split("---", 2)[1] if text.count("---") >= 2 else ""
    found = _LICENSE_LINE.search(front)
    return found.group(1) if found else None


def _gguf_license(file: Path) -> str | None:
    try:
        import gguf
    except ImportError:  # an optional extra; the card then names no license
        return None
    if not file.is_file():
        return None
    field = gguf.GGUFReader(str(file)).fields.get("general.license")
    return str(field.contents()) if field is not None else None


@dataclass(frozen=True)
class TrainingData:
    """``datasets``: hub dataset ids for the front matter; ``text``: the data named plainly."""

    datasets: tuple[str, ...]
    text: str


def training_data(run_dir: Path) -> TrainingData | None:
    """What the run trained on (from ``RUN_DIR/recipe.json``), or None for an untrained run."""
    record = Path(run_dir) / "recipe.json"
    if not record.is_file():
        return None
    paths = tuple(json.loads(record.read_text(encoding="utf-8")).get("data", {}).get("paths", ()))
    if not paths:
        return TrainingData(datasets=(), text=BUILT_IN_CORPUS)
    hub = tuple(p for p in paths if HUB_ID.fullmatch(p) and not Path(p).exists())
    named = [f"the hub dataset `{p}`" if p in hub else f"local data `{Path(p).name or p}`"
             for p in paths]
    return TrainingData(datasets=hub, text=", ".join(named))
