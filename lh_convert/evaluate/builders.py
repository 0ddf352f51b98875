"""Offline data for the long-context evaluations, built deterministically from a seed.

Three builders write JSONL rows that the lm-eval tasks in `evals/` read:

- passkey retrieval: the classic repeated filler ("The grass is green. ...") with
  "The pass key is NNNNN. Remember it." at a depth, and the question at the end;
- needle in a haystack: lines of held-out text with "The special magic number for KEY is V."
  at a depth, one needle or several (the others are distractors);
- loss by position: held-out documents cut at token boundaries into position buckets, each
  row asking for the log-likelihood of one bucket given everything before it.

Lengths are tokens of the evaluated model's tokenizer, counted as the model sees the scored
sequence (special tokens the tokenizer adds and the scored answer included). A prompt is
grown unit by unit (a filler sentence, a line of text) to the largest size that fits its
target, so it lands at most one unit short. Targets beyond the model's context are never
built: they are counted as skipped, so nothing is truncated later.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..train.data import DataSpec, tokenize_corpus
from ..util import hf_load
from ..util.atomic import write_json_atomic, write_text_atomic
from ..util.errors import LhConvertError
from ..util.paths import cache_dir

TASKS: tuple[str, ...] = ("passkey", "niah_single", "niah_multikey", "position_loss")
DEFAULT_LENGTHS: tuple[int, ...] = (4096, 8192, 16384, 32768)
DEFAULT_DEPTHS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
MULTIKEY_NEEDLES = 4
_FORMAT = 1  # bump when rows change for the same options

PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. "
                 "Find it and memorize it. I will quiz you about the important information there.")
PASSKEY_FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
                  "There and back again.")
PASSKEY_NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "What is the pass key? The pass key is"
NIAH_INTRO = ("Some special magic numbers are hidden within the following text. Make sure to "
              "memorize them. I will quiz you about the numbers afterwards.")
NIAH_NEEDLE = "The special magic number for {key} is {value}."
NIAH_QUESTION = "What is the special magic number for {key}? The special magic number for {key} is"
NIAH_KEYS = (
    "apple", "river", "candle", "forest", "engine", "harbor", "lantern", "marble", "needle",
    "orchard", "pepper", "quartz", "saddle", "thunder", "violin", "walnut", "anchor", "blanket",
    "cactus", "dolphin", "falcon", "glacier", "hammer", "island", "jacket", "kettle", "ladder",
    "meadow", "notebook", "oyster", "pillow", "rocket", "shovel", "tunnel", "umbrella", "village",
    "window", "yogurt", "zebra", "bridge", "castle", "desert", "feather", "garden", "helmet",
    "mirror", "planet", "silver",
)


@dataclass(frozen=True)
class EvalDataOptions:
    """What the data depends on; equal options give byte-identical files.

    Attributes:
        tokenizer: folder holding the evaluated model's tokenizer.
        max_length: the model's context in tokens (`config.max_position_embeddings`).
        lengths: target lengths in tokens; those above `max_length` are skipped and counted.
        seed: seeds every random choice (keys, values, haystack offsets, distractor depths).
        samples: rows per (length, depth) cell of the retrieval tasks.
        depths: needle depths, fractions of the haystack in [0, 1].
        documents: held-out documents used for loss by position (the longest ones).
        data: the data the held-out documents come from (`DataSpec.paths`; empty: the built-in
            corpus, whose held-out files no training run on it has seen).
    """

    tokenizer: str
    max_length: int
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    seed: int = 0
    samples: int = 4
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    documents: int = 8
    data: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", tuple(sorted({int(n) for n in self.lengths})))
        object.__setattr__(self, "depths", tuple(float(d) for d in self.depths))
        object.__setattr__(self, "data", tuple(str(p) for p in self.data))
        problems = []
        if not self.lengths or min(self.lengths) <= 0:
            problems.append(f"lengths={list(self.lengths)!r} (pass positive token counts)")
        if not self.depths or not all(0.0 <= depth <= 1.0 for depth in self.depths):
            problems.append(f"depths={list(self.depths)!r} (pass fractions in [0, 1])")
        for name in ("max_length", "samples", "documents"):
            if int(getattr(self, name)) <= 0:
                problems.append(f"{name}={getattr(self, name)!r} (pass a positive integer)")
        if problems:
            raise LhConvertError(f"bad long-context eval option {problems[0]}")

    def fingerprint(self) -> str:
        """A hash of the options and the tokenizer's files: the identity of the built data."""
        digest = hashlib.sha256(json.dumps({**asdict(self), "format": _FORMAT},
                                           sort_keys=True).encode())
        folder = Path(self.tokenizer)
        for path in sorted(folder.glob("*token*")) if folder.is_dir() else []:
            digest.update(path.name.encode() + path.read_bytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class BuiltRows:
    """Rows of one task, and how many were skipped because they exceed the model's context.

    `skipped` maps a target length (for loss by position: a bucket's end) to a row count.
    """

    rows: list[dict[str, Any]]
    skipped: dict[int, int] = field(default_factory=dict)


def options_from_metadata(metadata: Mapping[str, Any]) -> tuple[EvalDataOptions, Path]:
    """Options and data folder from lm-eval task metadata (`--metadata` JSON and `--model_args`).

    Keys: `tokenizer` or `pretrained` (the model folder), `max_length` (default: the model's
    `max_position_embeddings`), `lengths` (list of ints), `seed`, `samples`, `depths`,
    `documents`, `data` (list of paths) and `data_dir` (default: a folder in the lh-convert
    cache named by the options' fingerprint).
    """
    tokenizer = metadata.get("tokenizer") or metadata.get("pretrained")
    if not isinstance(tokenizer, str) or not tokenizer:
        raise LhConvertError("the long-context tasks need the model's tokenizer: pass "
                             "--model_args pretrained=DIR or --metadata '{\"tokenizer\": \"DIR\"}'")
    max_length = metadata.get("max_length")
    if max_length is None:
        max_length = getattr(hf_load.load_config(tokenizer), "max_position_embeddings", None)
        if max_length is None:
            raise LhConvertError(f"{tokenizer} has no max_position_embeddings; pass "
                                 "--metadata '{\"max_length\": N}' with the model's context")
    lengths = metadata.get("lengths", DEFAULT_LENGTHS)
    if isinstance(lengths, (int, str)):
        lengths = [lengths]
    try:
        options = EvalDataOptions(
            tokenizer=tokenizer, max_length=int(max_length), lengths=tuple(int(n) for n in lengths),
            seed=int(metadata.get("seed", 0)), samples=int(metadata.get("samples", 4)),
            depths=tuple(metadata.get("depths", DEFAULT_DEPTHS)),
            documents=int(metadata.get("documents", 8)), data=tuple(metadata.get("data", ())))
    except (TypeError, ValueError) as error:
        raise LhConvertError(f"malformed long-context eval metadata ({error}); pass lengths as a "
                             "list of token counts, e.g. --metadata '{\"lengths\": [4096, 8192]}'"
                             ) from None
    data_dir = metadata.get("data_dir") or cache_dir() / "evals" / options.fingerprint()[:16]
    return options, Path(data_dir)


def build_task_data(*, task: str, options: EvalDataOptions, data_dir: Path) -> Path:
    """Write `data_dir/<task>.jsonl` and `<task>.meta.json` (options, row and skip counts) and
    return the JSONL path; files already built from the same options are reused."""
    if task not in TASKS:
        raise LhConvertError(f"unknown long-context task {task!r}; known: {', '.join(TASKS)}")
    data_dir = Path(data_dir)
    path, meta_path = data_dir / f"{task}.jsonl", data_dir / f"{task}.meta.json"
    fingerprint = options.fingerprint()
    if path.is_file() and read_meta(meta_path).get("fingerprint") == fingerprint:
        return path
    tokenizer = _load_tokenizer(options.tokenizer)
    if task == "passkey":
        built = build_passkey(tokenizer=tokenizer, options=options)
    elif task == "position_loss":
        documents = _held_out(options.tokenizer, options.data)
        built = build_position_loss(tokenizer=tokenizer, documents=documents, options=options)
    else:
        documents = _held_out(options.tokenizer, options.data)
        built = build_niah(tokenizer=tokenizer, haystack=documents, options=options,
                           needles=1 if task == "niah_single" else MULTIKEY_NEEDLES)
    data_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(built.rows, path)
    write_json_atomic(meta_path, {
        "task": task, "fingerprint": fingerprint, "options": asdict(options),
        "rows": len(built.rows), "skipped": {str(k): v for k, v in sorted(built.skipped.items())},
    })
    return path


def read_meta(path: Path) -> dict[str, Any]:
    """A task's `.meta.json`, or {} when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def write_jsonl(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """One JSON object a line, keys sorted: the same rows give the same bytes. Atomic."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n"
                                    for row in rows))


def held_out_documents(*, tokenizer: Any, data: DataSpec) -> list[str]:
    """The validation documents of `data`, split exactly as training splits it (by file), as
    text. Tokenized once through the shared token cache, so a trained-on corpus is reused."""
    corpus = tokenize_corpus(spec=data, tokenizer=tokenizer, cache_dir=cache_dir() / "tokens")
    tokens = corpus.validation
    ends = np.flatnonzero(tokens == tokenizer.eos_token_id).tolist()
    starts = [0] + [end + 1 for end in ends[:-1]]
    texts = [tokenizer.decode(tokens[a:b].tolist(), skip_special_tokens=True)
             for a, b in zip(starts, ends)]
    return [text for text in texts if text.strip()]


@functools.lru_cache(maxsize=4)
def _held_out(tokenizer_dir: str, data: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(held_out_documents(tokenizer=_load_tokenizer(tokenizer_dir),
                                    data=DataSpec(paths=data)))


# ---- retrieval ---------------------------------------------------------------------------------


def build_passkey(*, tokenizer: Any, options: EvalDataOptions) -> BuiltRows:
    """Passkey rows: `context` (intro, filler with the needle at `depth`, question) and
    `answer` (" NNNNN"), with the needle's and the haystack's token positions."""
    rng = random.Random(f"passkey:{options.seed}")
    unit_tokens = _mean_tokens(tokenizer, PASSKEY_FILLER)

    def make(length: int, depth: float, guess: int) -> dict[str, Any]:
        key = str(rng.randrange(10_000, 100_000))
        return _retrieval_row(
            tokenizer=tokenizer, target=length, guess=guess, unit_tokens=unit_tokens,
            units=lambda n: [PASSKEY_FILLER[i % len(PASSKEY_FILLER)] for i in range(n)],
            separator=" ", intro=PASSKEY_INTRO, question=PASSKEY_QUESTION, answer=f" {key}",
            needles=[(PASSKEY_NEEDLE.format(key=key), depth)])

    return _grid(options, make)


def build_niah(*, tokenizer: Any, haystack: Sequence[str], options: EvalDataOptions,
               needles: int) -> BuiltRows:
    """Needle-in-a-haystack rows over lines of `haystack` text (taken cyclically from a seeded
    offset): `needles` needles "The special magic number for KEY is V."; the one asked about
    lies at `depth`, the others (distractors, placed first) at seeded depths."""
    lines = [line for text in haystack for line in text.splitlines() if line.strip()]
    if not lines:
        raise LhConvertError("the held-out documents hold no text for the haystack; pass data "
                             "with text")
    rng = random.Random(f"niah:{needles}:{options.seed}")
    unit_tokens = _mean_tokens(tokenizer, lines[:200])

    def make(length: int, depth: float, guess: int) -> dict[str, Any]:
        keys = rng.sample(NIAH_KEYS, needles)
        values = [str(rng.randrange(1_000_000, 10_000_000)) for _ in keys]
        depths = [rng.random() for _ in keys[1:]] + [depth]
        start = rng.randrange(len(lines))
        texts = [NIAH_NEEDLE.format(key=k, value=v) for k, v in zip(keys[1:] + keys[:1],
                                                                     values[1:] + values[:1])]
        row = _retrieval_row(
            tokenizer=tokenizer, target=length, guess=guess, unit_tokens=unit_tokens,
            units=lambda n: [lines[(start + i) % len(lines)] for i in range(n)], separator="\n",
            intro=NIAH_INTRO, question=NIAH_QUESTION.format(key=keys[0]), answer=f" {values[0]}",
            needles=list(zip(texts, depths)))
        row["distractors"] = [{"key": k, "value": v} for k, v in zip(keys[1:], values[1:])]
        return row

    return _grid(options, make)


def _grid(options: EvalDataOptions,
          make: Callable[[int, float, int], dict[str, Any]]) -> BuiltRows:
    """Rows sample-major, then length, then depth (so lm-eval's --limit takes whole grids)."""
    fitting = [n for n in options.lengths if n <= options.max_length]
    skipped = {n: options.samples * len(options.depths)
               for n in options.lengths if n > options.max_length}
    rows, guesses = [], {}
    for sample in range(options.samples):
        for length in fitting:
            for depth in options.depths:
                row = make(length, depth, guesses.get(length, 0))
                guesses[length] = row.pop("units")
                rows.append({"sample": sample, "length": length, "depth": depth, **row})
    return BuiltRows(rows=rows, skipped=skipped)


def _retrieval_row(*, tokenizer: Any, target: int, guess: int, unit_tokens: float,
                   units: Callable[[int], list[str]], separator: str, intro: str, question: str,
                   answer: str, needles: list[tuple[str, float]]) -> dict[str, Any]:
    """Fit the haystack `units(n)` to `target` tokens, place the needles (the asked one last)
    at their depths, and describe where everything landed."""
    def context_of(haystack: list[str]) -> str:
        return f"{intro}\n{separator.join(haystack)}\n{question}"

    def count(haystack: list[str]) -> int:
        return len(tokenizer(context_of(haystack) + answer).input_ids)

    texts = [text for text, _ in needles]
    if count(texts) > target:
        raise LhConvertError(f"length {target} cannot hold the {count(texts)}-token prompt "
                             f"without filler; pass lengths of at least {2 * count(texts)} tokens")
    # Where the needles go barely changes the count: fit with them at the end, then place them.
    n = _largest_fitting(count=lambda n: count(units(n) + texts), target=target,
                         guess=guess or max(1, int(target / max(unit_tokens, 1.0))),
                         unit_tokens=unit_tokens)
    while True:
        haystack = units(n)
        for text, depth in needles:
            haystack = _insert_at_depth(tokenizer, haystack, separator, text, depth)
        if n == 0 or count(haystack) <= target:
            break
        n -= 1
    context = context_of(haystack)
    encoded = tokenizer(context + answer, return_offsets_mapping=True)
    token_at = _token_index(encoded["offset_mapping"])
    start, end = len(intro) + 1, len(context) - len(question) - 1
    return {
        "context": context, "answer": answer, "num_tokens": len(encoded["input_ids"]),
        "needle": texts[-1], "needle_token": token_at(context.index(texts[-1])),
        "haystack_tokens": [token_at(start), token_at(end)], "units": n,
    }


def _insert_at_depth(tokenizer: Any, units: list[str], separator: str, text: str,
                     depth: float) -> list[str]:
    """`units` with `text` inserted at the unit boundary nearest to `depth` of their tokens."""
    joined = separator.join(units)
    offsets = tokenizer(joined, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"]
    token = round(depth * len(offsets))
    char = offsets[token][0] if token < len(offsets) else len(joined)
    starts = list(itertools.accumulate((len(u) + len(separator) for u in units), initial=0))
    starts[-1] = len(joined)
    index = min(range(len(starts)), key=lambda i: (abs(starts[i] - char), i))
    return units[:index] + [text] + units[index:]


def _largest_fitting(*, count: Callable[[int], int], target: int, guess: int,
                     unit_tokens: float) -> int:
    """The largest n with count(n) <= target (count non-decreasing, count(0) <= target), by
    interpolation from a guess: a handful of tokenizations instead of one per unit."""
    low, low_count = 0, count(0)
    high, high_count = None, None
    probe = max(1, guess)
    for _ in range(200):
        probe_count = count(probe)
        if probe_count <= target:
            low, low_count = probe, probe_count
        else:
            high, high_count = probe, probe_count
        if high is not None and high - low <= 1:
            return low
        if high is None:
            probe = low + max(1, math.ceil((target - low_count) / max(unit_tokens, 1.0)))
        else:
            slope = max((high_count - low_count) / (high - low), 1e-9)
            probe = min(high - 1, low + max(1, int((target - low_count) / slope)))
    raise LhConvertError(f"could not fit a prompt to {target} tokens; report this with the "
                         "model's tokenizer")


def _token_index(offsets: Sequence[tuple[int, int]]) -> Callable[[int], int]:
    """char position -> index of the first token that ends after it (specials have (0, 0))."""
    ends = [end if end > start else -1 for start, end in offsets]

    def token_at(char: int) -> int:
        return next((i for i, end in enumerate(ends) if end > char), len(ends))
    return token_at


def _mean_tokens(tokenizer: Any, units: Sequence[str]) -> float:
    counts = [len(tokenizer(unit, add_special_tokens=False).input_ids) for unit in units]
    return sum(counts) / max(len(counts), 1)


# ---- loss by position --------------------------------------------------------------------------


def bucket_edges(length: int) -> list[int]:
    """Position buckets for sequences of `length` tokens: 0, then doublings up to `length`,
    the first bucket at least 32 tokens wide, at most 8 buckets (32768: 0, 256, ..., 32768)."""
    doublings = max(0, min(7, int(math.log2(max(length, 1) / 32))))
    return [0] + [length >> k for k in range(doublings, -1, -1)]


def build_position_loss(*, tokenizer: Any, documents: Sequence[str],
                        options: EvalDataOptions) -> BuiltRows:
    """Rows for the loss of each position bucket given the whole document before it.

    The `options.documents` longest documents (in tokens) are cut into the buckets of
    `bucket_edges(max(lengths))` at token boundaries the tokenizer reproduces exactly:
    `context` encodes to the first `start` tokens and `context + continuation` to the first
    `end`. A bucket lies in a document only if the document reaches its end; buckets ending
    beyond the model's context are skipped (counted by their end).
    """
    longest = max(options.lengths)
    edges = bucket_edges(longest)
    encoded = [tokenizer(text[: 16 * longest + 1024], return_offsets_mapping=True)
               for text in documents]
    order = sorted(range(len(documents)), key=lambda i: (-len(encoded[i]["input_ids"]), i))
    rows: list[dict[str, Any]] = []
    skipped: dict[int, int] = {}
    for document in order[: options.documents]:
        text = documents[document][: 16 * longest + 1024]
        ids, offsets = encoded[document]["input_ids"], encoded[document]["offset_mapping"]
        cuts = {edge: _clean_cut(tokenizer, text, ids, offsets, edge, first=edge == 0)
                for edge in edges if edge < len(ids) and edge <= options.max_length}
        for low, high in zip(edges, edges[1:]):
            if high >= len(ids):
                break
            if high > options.max_length:
                skipped[high] = skipped.get(high, 0) + 1
                continue
            start, end = cuts[low], cuts[high]
            if start is None or end is None or end <= start:
                continue
            rows.append({
                "document": document, "bucket": [low, high], "start": start, "end": end,
                "num_tokens": end - start, "context": text[: offsets[start][0]],
                "continuation": text[offsets[start][0]: offsets[end][0]],
            })
    return BuiltRows(rows=rows, skipped=skipped)


def _clean_cut(tokenizer: Any, text: str, ids: Sequence[int], offsets: Sequence[tuple[int, int]],
               edge: int, *, first: bool) -> int | None:
    """A token index near `edge` (at or below it; above it for the first edge, whose context
    must not be empty) where the text before the token encodes to exactly the tokens before it
    and does not end in whitespace (lm-eval moves such whitespace into the continuation)."""
    candidates = range(max(edge, 1), min(edge + 64, len(ids))) if first else \
        range(edge, max(edge - 64, 0), -1)
    for index in candidates:
        char = offsets[index][0]
        if char == 0 or text[char - 1].isspace() or offsets[index][1] <= char:
            continue
        if tokenizer(text[:char]).input_ids == list(ids[:index]):
            return index
    return None


@functools.lru_cache(maxsize=4)
def _load_tokenizer(folder: str) -> Any:
    tokenizer = hf_load.load_tokenizer(folder)
    if not tokenizer.is_fast:
        raise LhConvertError(f"the tokenizer in {folder} is not a fast tokenizer, which the "
                             "long-context builders need for token offsets; save it with "
                             "tokenizer.json")
    return tokenizer
