"""Token counts as people type them: ``65536``, ``64k``, ``64K``, ``1m``; parsed once, at the
edge (the CLI's parameter types, a recipe's fields), so everything below takes plain ints."""

from __future__ import annotations

import re

from .errors import LhConvertError

# Longer than any model claims today (Llama 4 Scout: 10M), short enough to catch a typo
# before a conversion writes a config no model can run.
MAX_CONTEXT = 16 * 1024**2
_COUNT = re.compile(r"^\s*(\d+)\s*([kKmM]?)\s*$")


def parse_context(text: str | int, *, what: str = "--ctx") -> int:
    """``65536``, ``64k`` or ``64K`` -> 65536; ``1m`` -> 1048576. At most ``MAX_CONTEXT``."""
    if isinstance(text, bool):
        raise LhConvertError(f"{what} must be a token count such as 65536 or 64k, got {text!r}")
    if isinstance(text, int):
        value = text
    else:
        match = _COUNT.match(str(text))
        if match is None:
            raise LhConvertError(f"malformed {what} {text!r}: use a token count such as 65536 or "
                                 f"64k")
        value = int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2}[match.group(2).lower()]
    if value <= 0:
        raise LhConvertError(f"{what} must be positive, got {text!r}; use for example 64k")
    if value > MAX_CONTEXT:
        raise LhConvertError(f"{what} {text!r} is {value:,} tokens, more than the "
                             f"{MAX_CONTEXT:,} lh-convert accepts; use for example 128k")
    return value


def parse_lengths(text: str, *, what: str = "--lengths") -> tuple[int, ...]:
    """``"4k,8k,16k,32k"`` -> ``(4096, 8192, 16384, 32768)``."""
    try:
        lengths = tuple(parse_context(part, what=what) for part in text.split(",") if part.strip())
    except LhConvertError:
        lengths = ()
    if not lengths:
        raise LhConvertError(f"malformed {what} {text!r}: use token counts such as "
                             "4k,8k,16k,32k")
    return lengths


def parse_dense_layers(text: str) -> tuple[int, ...]:
    """``"0,1,-2,-1"`` -> ``(0, 1, -2, -1)``; ``""`` -> no dense layers."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise LhConvertError(f"malformed --dense-layers {text!r}: use comma-separated layer "
                             f"indices such as 0,1,-2,-1") from None


def duration(seconds: float) -> str:
    """A duration as people say it: seconds, minutes, hours, or hours and days."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours:,.0f} h ({hours / 24:,.0f} days)"
