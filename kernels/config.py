"""Lighthouse parameters and the constraints of SPEC §2 that tie them to a sequence length."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# How scatter-back combines the outputs of the entries that reach one base position (SPEC §7).
COMBINE_RULES = ("sum", "mean", "finest")


# No coarsest pyramid entry pools more than 2**24 tokens (16M: longer than any model's context),
# so a typo such as levels=100000 is refused before any arithmetic on p**(L-1).
MAX_WINDOW_BITS = 24

@dataclass(frozen=True)
class LighthouseConfig:
    """Parameters of one Lighthouse attention call (SPEC §2).

    levels: pyramid levels ``L >= 2`` (level 0 is the sequence itself).
    pooling: pooling factor ``p``, a power of two ``>= 2``.
    topk: selection budget ``k``, a multiple of ``tile``.
    tile: tile size ``m``, a power of two with ``m/2 >= p``.
    force_first_window: the project rule "no uncovered prefix" (SPEC §2); switch it off only
        to reproduce the published implementation.
    combine: how scatter-back combines the up to ``L`` entries that reach one base position
        (SPEC §7): ``"sum"`` (SPEC §1.6, the paper's rule), ``"mean"`` (the sum divided by the
        number of contributing entries) or ``"finest"`` (the output of the contributing entry
        of the lowest level only).
    """

    levels: int = 3
    pooling: int = 4
    topk: int = 2048
    tile: int = 128
    force_first_window: bool = True
    combine: str = "sum"

    def __post_init__(self) -> None:
        problem = self.parameter_problem()
        if problem is not None:
            raise ValueError(problem)

    def parameter_problem(self) -> str | None:
        """The first violated length-independent constraint, or None."""
        if self.levels < 2:
            return f"levels={self.levels}: needs levels >= 2 (try levels=3)"
        if self.pooling < 2 or self.pooling & (self.pooling - 1):
            return f"pooling={self.pooling}: needs a power of two >= 2 (try pooling=4)"
        most = 1 + MAX_WINDOW_BITS // (self.pooling.bit_length() - 1)
        if self.levels > most:
            return (f"levels={self.levels}: with pooling={self.pooling} a coarsest entry would "
                    f"pool more than 2**{MAX_WINDOW_BITS} tokens, longer than any context; use "
                    f"levels between 2 and {most}")
        if self.tile < 2 or self.tile & (self.tile - 1):
            return f"tile={self.tile}: needs a power of two (try tile=128)"
        if self.tile // 2 < self.pooling:
            return f"tile={self.tile}: needs tile/2 >= pooling={self.pooling} (try tile={2 * self.pooling})"
        if self.topk < self.tile or self.topk % self.tile:
            nearest = max(self.tile, round(self.topk / self.tile) * self.tile)
            return f"topk={self.topk}: needs a multiple of tile={self.tile} (try topk={nearest})"
        if self.combine not in COMBINE_RULES:
            allowed = ", ".join(repr(rule) for rule in COMBINE_RULES)
            return f"combine={self.combine!r}: needs one of {allowed} (try combine='sum')"
        return None

    @property
    def coarsest_window(self) -> int:
        """Tokens summarised by one coarsest-level entry, ``p^(L-1)``."""
        return self.pooling ** (self.levels - 1)

    @property
    def num_tiles(self) -> int:
        return self.topk // self.tile

    def min_length(self) -> int:
        """The shortest sequence every tile of which holds ``m`` coarsest entries."""
        return self.coarsest_window * self.topk

    def length_problem(self, n: int) -> str | None:
        """Why a sequence of ``n`` tokens cannot run Lighthouse with these parameters, or None."""
        window = self.coarsest_window
        if n % window:
            return f"sequence length {n} is not a multiple of pooling**(levels-1) = {window}"
        coarse = n // window
        if coarse % self.num_tiles:
            return (f"the {coarse} coarsest entries do not split into topk/tile = {self.num_tiles} "
                    f"equal tiles (use a length that is a multiple of {window * self.num_tiles})")
        if coarse // self.num_tiles < self.tile:
            return (f"sequence length {n} is too short: each of the {self.num_tiles} tiles needs "
                    f"at least tile={self.tile} coarsest entries, so length >= {self.min_length()}")
        return None

    def selected_length(self, n: int) -> int:
        """Length ``S = N/p^(L-1) + (L-1)*p*k`` of the gathered sub-sequence."""
        return n // self.coarsest_window + (self.levels - 1) * self.pooling * self.topk

    def to_dict(self) -> dict:
        return asdict(self)
