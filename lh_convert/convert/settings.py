"""The Lighthouse settings a converted model's config stores under ``config.lighthouse``.

Plain Python (``lighthouse_kernels.config`` loads no torch), so a recipe or a plan can check
them without the model code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

from lighthouse_kernels.config import COMBINE_RULES, LighthouseConfig

from ..util.errors import LhConvertError

CONFIG_KEY = "lighthouse"
DEFAULT_DENSE_LAYERS: tuple[int, ...] = (0, 1, -2, -1)
# SPEC §7's scatter-back rules: "sum" is the paper's (and the only one for reproducing it);
# "mean" and "finest" are project options for checkpoints pre-trained dense.
Combine = Literal["sum", "mean", "finest"]
assert get_args(Combine) == COMBINE_RULES, "kernels/config.py and this list must agree"


@dataclass(frozen=True)
class LighthouseSettings:
    """What a converted model's config stores under ``config.lighthouse``.

    ``dense_layers`` may use negative indices (``-1`` is the last layer). ``combine`` is
    scatter-back's rule (SPEC §7).
    """

    levels: int = 3
    pooling: int = 4
    topk: int = 2048
    tile: int = 128
    force_first_window: bool = True
    dense_layers: tuple[int, ...] = field(default=DEFAULT_DENSE_LAYERS)
    combine: Combine = "sum"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dense_layers", tuple(int(i) for i in self.dense_layers))

    @property
    def kernel(self) -> LighthouseConfig:
        return LighthouseConfig(levels=self.levels, pooling=self.pooling, topk=self.topk,
                                tile=self.tile, force_first_window=self.force_first_window,
                                combine=self.combine)

    def dense_layer_set(self, num_layers: int) -> frozenset[int]:
        """Absolute indices of the layers that stay dense."""
        resolved = set()
        for index in self.dense_layers:
            if not -num_layers <= index < num_layers:
                raise LhConvertError(f"dense layer {index} does not exist in a model of {num_layers} "
                                     f"layers; use indices in [-{num_layers}, {num_layers - 1}]")
            resolved.add(index % num_layers)
        return frozenset(resolved)

    def to_dict(self) -> dict:
        return {**asdict(self), "dense_layers": list(self.dense_layers)}

    @classmethod
    def from_dict(cls, data: dict) -> LighthouseSettings:
        return cls(**{**data, "dense_layers": tuple(data.get("dense_layers", DEFAULT_DENSE_LAYERS))})


def settings_of(config) -> LighthouseSettings:
    """The Lighthouse settings stored in a model config; an error if there are none."""
    stored = getattr(config, CONFIG_KEY, None)
    if not isinstance(stored, dict):
        raise LhConvertError("this model config has no 'lighthouse' settings; convert it first "
                             "with `lh-convert convert`")
    return LighthouseSettings.from_dict(stored)
