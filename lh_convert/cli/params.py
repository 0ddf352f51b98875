"""Click parameter types: token counts and lists of them, parsed once where they are typed."""

from __future__ import annotations

import click

from ..util.units import parse_context, parse_dense_layers, parse_lengths


class _Parsed(click.ParamType):
    """A parameter parsed by one of ``util.units``' functions. Its ``LhConvertError`` (which
    names the option and the fix) reaches the command group, which prints it as one line."""

    def parse(self, value: str):  # pragma: no cover - overridden
        raise NotImplementedError

    def convert(self, value, param, ctx):
        return self.parse(value) if isinstance(value, str) else value


class TokenCount(_Parsed):
    """``65536``, ``64k``, ``64K``, ``1m`` -> int."""

    name = "tokens"

    def parse(self, value: str) -> int:
        return parse_context(value)


class TokenCounts(_Parsed):
    """``4k,8k,16k`` -> a tuple of ints."""

    name = "tokens,..."

    def parse(self, value: str) -> tuple[int, ...]:
        return parse_lengths(value)


class LayerList(_Parsed):
    """``0,1,-2,-1`` -> a tuple of layer indices (negative from the end); ``""`` -> none."""

    name = "layers"

    def parse(self, value: str) -> tuple[int, ...]:
        return parse_dense_layers(value)


TOKENS, TOKEN_LIST, LAYERS = TokenCount(), TokenCounts(), LayerList()
