"""The run manifest: a small JSON sidecar that says what a run folder holds and how it was made."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from .. import __version__
from ..util.atomic import write_json_atomic
from ..util.errors import LhConvertError

MANIFEST_NAME = "manifest.json"
# Where a run's weights come from: the source's own (a conversion), or a fresh random init of
# the source's architecture (pre-training from scratch, the paper's setting).
Init = Literal["pretrained", "random"]
INITS: tuple[str, ...] = get_args(Init)
FORMAT = "lh-convert-run/1"


@dataclass(frozen=True)
class RunManifest:
    """What ``lh-convert convert`` records in ``RUN_DIR/manifest.json``."""

    source: dict[str, Any]
    model_type: str
    num_layers: int
    num_parameters: int
    original_context: int
    target_context: int
    rope: dict[str, Any]
    lighthouse: dict[str, Any]
    lighthouse_layers: list[int]
    selected_length: int
    dtype: str
    created: str
    # {"kind": "pretrained"} (the source's weights) or {"kind": "random", "seed": N}.
    init: dict[str, Any] = field(default_factory=lambda: {"kind": "pretrained"})
    tool_version: str = __version__
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, run_dir: Path) -> None:
        write_json_atomic(Path(run_dir) / MANIFEST_NAME, self.to_dict())


def read_manifest(run_dir: Path) -> RunManifest:
    """Load ``RUN_DIR/manifest.json``; a clear error when the folder is not a run."""
    path = Path(run_dir) / MANIFEST_NAME
    if not Path(run_dir).is_dir():
        raise LhConvertError(f"run folder {run_dir} does not exist; pass the --out of "
                             f"`lh-convert convert` or `lh-convert extend`")
    if not path.is_file():
        raise LhConvertError(f"{run_dir} is not an lh-convert run folder (no {MANIFEST_NAME}); "
                             f"create one with `lh-convert convert --out {run_dir} ...`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise LhConvertError(f"{path} has format {data.get('format')!r}, this lh-convert reads "
                                 f"{FORMAT!r}; convert the model again")
        return RunManifest(**data)
    except (json.JSONDecodeError, TypeError) as error:
        raise LhConvertError(f"{path} is corrupt ({error}); convert the model again") from error
