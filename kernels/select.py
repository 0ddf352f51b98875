"""The tiled top-k cascade of SPEC §2 and the gathered order of SPEC §3.

Two Triton kernels replace the reference's hundred small PyTorch ops:

1. ``_select_parents_kernel``: one program per ``(b, KV head, tile)`` (several tiles per program
   under the interpreter) walks the cascade and writes each level's ``m`` parents, sorted by
   index. Candidates carry one int64 sort key, score bits above and the complemented index
   below, so "score descending, index ascending" is a plain integer order and ties go to the
   lower index (project rule). The coarsest level streams through chunks: each chunk's top
   ``m/2`` (a bitonic top-k) is merged into a running buffer, once for sQK and once more for
   sKQ with the sQK winners masked out, which selects the same sets as a sort of the whole tile.
   Finer levels have exactly ``m*p`` candidates, the children of the parents in ascending order.
2. ``_select_emit_kernel``: the output is a function of the parent lists alone. Every emitted
   entry of a tile has its SPEC §3 key inside the tile's own key range (leaves at their window
   start, parents before the next window), so a tile's entries fill the slots
   ``[tile*S/T, (tile+1)*S/T)`` and no global sort is needed. Within the tile an entry's slot is
   its rank in its own level's list plus, for every other level, the number of that level's
   entries with a smaller key, a binary search in the parent lists.

Sorting networks are written with builtins only (see _triton_utils): a block of ``2^n`` keys is
viewed as a ``[rows, 2, ..., 2]`` hypercube and a compare-exchange along one axis is a min and a
max reduction over that axis of size two, as in ``tl.sort``.
"""

from __future__ import annotations

import torch

from . import _triton_utils
from ._triton_utils import tl, triton, use_triton
from .config import LighthouseConfig
from .pyramid import _maximum, level_offsets

_minimum = tl.standard._elementwise_min if tl is not None else None  # see pyramid._maximum
_KEY_FLOOR = -(2**63)  # below every real key: padding and masked-out candidates
# Launch shape per device type (tests change it): coarsest candidates per streamed chunk
# (raised to the tile size m when below it), and tiles per program (0: as many as fit in
# about 64K keys, which suits the interpreter: it pays per operation, not per element).
COARSE_CHUNK = {"cuda": 1024, "cpu": 4096}
TILES_PER_PROGRAM = {"cuda": 1, "cpu": 0}


@triton.jit
def _bitonic_merge(h, STAGE: tl.constexpr, ORDER: tl.constexpr, DIMS: tl.constexpr):
    """Sort the bitonic runs of ``2^STAGE`` keys of the hypercube ``h [rows] + [2] * DIMS``
    (axis ``DIMS - i`` holds bit ``i`` of the position): ascending (ORDER 0), descending (1), or
    alternating with bit ``STAGE`` (2)."""
    if ORDER == 2:
        flip = tl.reshape(tl.arange(0, 2), [1] * (DIMS - STAGE) + [2] + [1] * STAGE)
    else:
        flip = ORDER
    for i in tl.static_range(STAGE):
        # Compare-exchange along bit STAGE-1-i: the min goes where the bit (xor flip) is 0.
        b_low = tl.reduce(h, DIMS - STAGE + 1 + i, _minimum, keep_dims=True)
        b_high = tl.reduce(h, DIMS - STAGE + 1 + i, _maximum, keep_dims=True)
        b_bit = tl.reshape(tl.arange(0, 2),
                           [1] * (DIMS - STAGE + 1 + i) + [2] + [1] * (STAGE - 1 - i))
        h = tl.where((b_bit ^ flip) != 0, b_high, b_low)
    return h


@triton.jit
def _sort_rows(x, ROWS: tl.constexpr, LOG_N: tl.constexpr, DESCENDING: tl.constexpr):
    """Sort each row of ``x [ROWS, 2^LOG_N]``."""
    h = tl.reshape(x, [ROWS] + [2] * LOG_N)
    for stage in tl.static_range(1, LOG_N + 1):
        h = _bitonic_merge(h, stage, 2 if stage < LOG_N else DESCENDING, LOG_N)
    return tl.reshape(h, [ROWS, 2**LOG_N])


@triton.jit
def _top_rows(x, ROWS: tl.constexpr, LOG_N: tl.constexpr, LOG_K: tl.constexpr,
              DESCENDING: tl.constexpr):
    """The ``2^LOG_K`` largest keys of each row of ``x [ROWS, 2^LOG_N]``, sorted (bitonic top-k:
    sort runs of ``2^LOG_K`` in alternating order, then repeatedly keep the elementwise max of
    neighbouring runs, a bitonic run holding their top half, and merge it)."""
    h = tl.reshape(x, [ROWS] + [2] * LOG_N)
    for stage in tl.static_range(1, LOG_K + 1):
        h = _bitonic_merge(h, stage, 2 if stage < LOG_N else DESCENDING, LOG_N)
    for j in tl.static_range(LOG_N - LOG_K):
        h = tl.reduce(h, LOG_N - j - LOG_K, _maximum)  # the axis of bit LOG_K
        h = _bitonic_merge(h, LOG_K, 2 if LOG_N - j - 1 > LOG_K else DESCENDING, LOG_N - j - 1)
    return tl.reshape(h, [ROWS, 2**LOG_K])


@triton.jit
def _merge_top(b_best, b_new, ROWS: tl.constexpr, LOG_K: tl.constexpr):
    """Top ``2^LOG_K`` of two sorted row blocks, descending ``b_best`` and ascending ``b_new``;
    returned descending."""
    h = tl.reshape(tl.maximum(b_best, b_new), [ROWS] + [2] * LOG_K)
    return tl.reshape(_bitonic_merge(h, LOG_K, 1, LOG_K), [ROWS, 2**LOG_K])


@triton.jit
def _sort_keys(b_score, b_index):
    """int64 keys ordered by score descending, then index ascending (index < 2^32)."""
    b_bits = b_score.to(tl.int32, bitcast=True)
    b_bits = tl.where(b_bits < 0, b_bits ^ 0x7FFFFFFF, b_bits)  # float order as integer order
    b_bits = tl.where(b_score == 0, 0, b_bits)  # -0.0 ties with +0.0, as in torch.sort
    b_bits = tl.where(b_score != b_score, 0x7FC00000, b_bits)  # every NaN above +inf
    # (bits << 32) + (2^32 - 1 - index), written without constants beyond int32.
    return ((b_bits.to(tl.int64) + 1) << 32) - 1 - b_index


@triton.jit
def _key_index(b_key):
    """The index packed into a key by ``_sort_keys``."""
    return (((b_key >> 32) + 1) << 32) - 1 - b_key


@triton.jit
def _candidate_scores(p_qk_row, p_kq_row, b_index, m_valid, FORCE_FIRST: tl.constexpr):
    """sQK and sKQ of the candidates ``b_index`` of one level (rows of level-start pointers);
    the first window's sQK is +inf when it is forced to be a parent."""
    b_qk = tl.load(p_qk_row + b_index, mask=m_valid, other=0)
    b_kq = tl.load(p_kq_row + b_index, mask=m_valid, other=0)
    if FORCE_FIRST:
        b_qk = tl.where(b_index == 0, float("inf"), b_qk)
    return b_qk, b_kq


@triton.jit
def _select_parents_kernel(p_score_qk, p_score_kq, p_parents, N, TOTAL, NUM_TILES, ROWS_TOTAL,
                           LEVELS: tl.constexpr, LOG2_POOL: tl.constexpr,
                           COARSE_PER_TILE: tl.constexpr, LOG2_HALF: tl.constexpr,
                           FORCE_FIRST: tl.constexpr, KEY_FLOOR: tl.constexpr,
                           ROWS: tl.constexpr, LOG2_CHUNK: tl.constexpr):
    """parents[row, l - 1, :] = the ``m`` parents of level ``l`` of tile row, ascending.

    A row is one ``(b, KV head, tile)``: ``row = (b*G + g)*T + tile``. Scores are on the flat
    pyramid axis (``level_offsets`` layout).
    """
    HALF: tl.constexpr = 1 << LOG2_HALF
    POOL: tl.constexpr = 1 << LOG2_POOL
    CHUNK: tl.constexpr = 1 << LOG2_CHUNK
    i_r = tl.program_id(0)
    o_r = (i_r * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    m_r = (o_r < ROWS_TOTAL)[:, None]
    o_bg, o_tile = o_r // NUM_TILES, o_r % NUM_TILES
    p_qk_rows = p_score_qk + (o_bg * TOTAL)[:, None]  # [ROWS, 1]
    p_kq_rows = p_score_kq + (o_bg * TOTAL)[:, None]
    p_parent_rows = p_parents + (o_r * ((LEVELS - 1) * 2 * HALF))[:, None]
    o_m = tl.arange(0, 2 * HALF)[None, :]

    level_start = 0
    for finer in tl.static_range(LEVELS - 1):
        level_start += N >> (LOG2_POOL * finer)
    # Coarsest level: all COARSE_PER_TILE entries of the tile, in chunks. Pass 1 keeps the
    # top m/2 by sQK; pass 2 the top m/2 by sKQ of the rest.
    b_first = (o_tile * COARSE_PER_TILE)[:, None]
    b_best_qk = tl.full([ROWS, HALF], KEY_FLOOR, tl.int64)
    for c in range((COARSE_PER_TILE + CHUNK - 1) // CHUNK):
        o_c = c * CHUNK + tl.arange(0, CHUNK)[None, :]
        m_c = m_r & (o_c < COARSE_PER_TILE)
        b_index = b_first + o_c
        b_qk, b_kq = _candidate_scores(p_qk_rows + level_start, p_kq_rows + level_start, b_index,
                                       m_c, FORCE_FIRST)
        b_key = tl.where(m_c, _sort_keys(b_qk, b_index), KEY_FLOOR)
        b_best_qk = _merge_top(b_best_qk, _top_rows(b_key, ROWS, LOG2_CHUNK, LOG2_HALF, 0),
                               ROWS, LOG2_HALF)
    b_cut = tl.reduce(b_best_qk, 1, _minimum, keep_dims=True)
    b_best_kq = tl.full([ROWS, HALF], KEY_FLOOR, tl.int64)
    for c in range((COARSE_PER_TILE + CHUNK - 1) // CHUNK):
        o_c = c * CHUNK + tl.arange(0, CHUNK)[None, :]
        m_c = m_r & (o_c < COARSE_PER_TILE)
        b_index = b_first + o_c
        b_qk, b_kq = _candidate_scores(p_qk_rows + level_start, p_kq_rows + level_start, b_index,
                                       m_c, FORCE_FIRST)
        m_rest = m_c & (_sort_keys(b_qk, b_index) < b_cut)
        b_key = tl.where(m_rest, _sort_keys(b_kq, b_index), KEY_FLOOR)
        b_best_kq = _merge_top(b_best_kq, _top_rows(b_key, ROWS, LOG2_CHUNK, LOG2_HALF, 0),
                               ROWS, LOG2_HALF)
    b_parents = tl.reshape(tl.join(_key_index(b_best_qk), _key_index(b_best_kq)), [ROWS, 2 * HALF])
    b_parents = _sort_rows(b_parents, ROWS, LOG2_HALF + 1, 0)
    tl.store(p_parent_rows + (LEVELS - 2) * 2 * HALF + o_m, b_parents, mask=m_r)

    # Finer levels: the m*p children of the parents, already in ascending order. A runtime
    # loop (one copy of the sorting networks in the binary) whose only carried values are
    # b_parents and level_start, hence the names of its own.
    o_p = tl.arange(0, POOL)[None, None, :]
    for j in range(LEVELS - 2):
        level = LEVELS - 2 - j
        level_start -= N >> (LOG2_POOL * level)
        b_child = tl.reshape((b_parents << LOG2_POOL)[:, :, None] + o_p, [ROWS, 2 * HALF * POOL])
        b_child_qk, b_child_kq = _candidate_scores(p_qk_rows + level_start,
                                                   p_kq_rows + level_start, b_child, m_r,
                                                   FORCE_FIRST)
        b_key_qk = _sort_keys(b_child_qk, b_child)
        b_top_qk = _top_rows(b_key_qk, ROWS, LOG2_HALF + 1 + LOG2_POOL, LOG2_HALF, 0)
        b_child_cut = tl.reduce(b_top_qk, 1, _minimum, keep_dims=True)
        b_key_kq = tl.where(b_key_qk < b_child_cut, _sort_keys(b_child_kq, b_child), KEY_FLOOR)
        b_top_kq = _top_rows(b_key_kq, ROWS, LOG2_HALF + 1 + LOG2_POOL, LOG2_HALF, 0)
        b_parents = tl.reshape(tl.join(_key_index(b_top_qk), _key_index(b_top_kq)),
                               [ROWS, 2 * HALF])
        b_parents = _sort_rows(b_parents, ROWS, LOG2_HALF + 1, 0)
        tl.store(p_parent_rows + (level - 1) * 2 * HALF + o_m, b_parents, mask=m_r)


@triton.jit
def _lower_bound(p_row, b_query, m_valid, LOG2_M: tl.constexpr):
    """For each query: how many of the ``2^LOG2_M`` ascending values at ``p_row`` are smaller,
    and whether it is one of them."""
    b_low = tl.full(b_query.shape, 0, tl.int64)
    for i in tl.static_range(LOG2_M):
        step = 1 << (LOG2_M - 1 - i)
        b_probe = tl.load(p_row + b_low + (step - 1), mask=m_valid, other=0)
        b_low = tl.where(b_probe < b_query, b_low + step, b_low)
    # b_low = min(count, 2^LOG2_M - 1): one more probe settles the count and membership.
    b_last = tl.load(p_row + b_low, mask=m_valid, other=0)
    return b_low + (b_last < b_query).to(tl.int64), m_valid & (b_last == b_query)


@triton.jit
def _select_emit_kernel(p_parents, p_index, N, NUM_TILES, SLOTS_PER_TILE, SLOTS_TOTAL,
                        LEVELS: tl.constexpr, LOG2_POOL: tl.constexpr,
                        COARSE_PER_TILE: tl.constexpr, LOG2_M: tl.constexpr,
                        BLOCK: tl.constexpr):
    """index[b, g, tile*S/T + rank] = the flat pyramid index of each entry the cascade emits.

    Slots are enumerated per ``(b, g, tile)`` as the coarsest entries, then the ``m*p``
    candidates of each finer level, coarsest first; ``rank`` is the entry's place in SPEC §3's
    order within its tile: its rank in its own level's ascending list plus, for every other
    level, the count of that level's entries with a smaller key.
    """
    M: tl.constexpr = 1 << LOG2_M
    POOL: tl.constexpr = 1 << LOG2_POOL
    CHILDREN: tl.constexpr = M * POOL
    i_s = tl.program_id(0)
    o_s = (i_s * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)  # over all (b, g, tile) rows
    m_s = o_s < SLOTS_TOTAL
    o_row = o_s // SLOTS_PER_TILE  # (b*G + g)*T + tile
    o_tile = o_row % NUM_TILES
    o_slot = o_s % SLOTS_PER_TILE
    m_coarse = o_slot < COARSE_PER_TILE
    o_child = tl.where(m_coarse, 0, o_slot - COARSE_PER_TILE)
    b_level = tl.where(m_coarse, LEVELS - 1, LEVELS - 2 - o_child // CHILDREN)
    b_rank = tl.where(m_coarse, o_slot, o_child % CHILDREN)  # within its own level's list
    # parents of level l at p_tile + (l - 1)*M, ascending
    p_tile = p_parents + o_row * ((LEVELS - 1) * M)
    b_parent = tl.load(p_tile + b_level * M + (b_rank >> LOG2_POOL), mask=m_s & ~m_coarse, other=0)
    b_index = tl.where(m_coarse, o_tile * COARSE_PER_TILE + o_slot,
                       (b_parent << LOG2_POOL) + (b_rank & (POOL - 1)))
    _, m_parent = _lower_bound(p_tile + (b_level - 1) * M, b_index, m_s & (b_level > 0), LOG2_M)

    b_slot = o_row * SLOTS_PER_TILE + b_rank
    for l in tl.static_range(LEVELS):
        if l == LEVELS - 1:
            # The coarsest list is the tile's contiguous range: count those before the ancestor.
            b_ancestor = b_index >> (LOG2_POOL * (LEVELS - 1 - b_level))
            b_count = b_ancestor - o_tile * COARSE_PER_TILE
        else:
            # Level l lists the children of the parents of level l + 1.
            m_finer = b_level < l
            b_shift = LOG2_POOL * tl.where(m_finer, l - b_level, tl.maximum(b_level - l - 1, 0))
            # A finer entry precedes the level-l entries strictly left of its level-l ancestor;
            # a coarser one follows those left of its window end (its start if a leaf).
            b_ancestor = b_index >> b_shift
            b_query = tl.where(m_finer, b_ancestor >> LOG2_POOL,
                               (b_index + m_parent.to(tl.int64)) << b_shift)
            b_below, m_hit = _lower_bound(p_tile + l * M, b_query, m_s & (b_level != l), LOG2_M)
            b_count = (b_below << LOG2_POOL) + tl.where(m_finer & m_hit,
                                                        b_ancestor & (POOL - 1), 0)
        b_slot += tl.where(b_level == l, 0, b_count)
    b_level_start = tl.full([BLOCK], 0, tl.int64)
    for l in tl.static_range(1, LEVELS):
        b_level_start += tl.where(b_level >= l, N >> (LOG2_POOL * (l - 1)), 0)
    tl.store(p_index + b_slot, b_level_start + b_index, mask=m_s)


def _select_fwd(score_qk: torch.Tensor, score_kq: torch.Tensor, n: int, levels: int, pooling: int,
                topk: int, tile: int, force_first_window: bool) -> torch.Tensor:
    config = LighthouseConfig(levels=levels, pooling=pooling, topk=topk, tile=tile,
                              force_first_window=force_first_window)
    batch, kv_heads, total = score_qk.shape
    score_qk, score_kq = score_qk.contiguous(), score_kq.contiguous()
    num_tiles, device = config.num_tiles, score_qk.device
    coarse_per_tile = n // config.coarsest_window // num_tiles
    rows_total = batch * kv_heads * num_tiles
    parents = torch.empty(rows_total, levels - 1, tile, dtype=torch.int64, device=device)
    index = torch.empty(batch, kv_heads, config.selected_length(n), dtype=torch.int64,
                        device=device)
    if _triton_utils.POISON_OUTPUTS:
        parents.fill_(-1)
        index.fill_(-1)
    kind = "cuda" if score_qk.is_cuda else "cpu"
    chunk = min(triton.next_power_of_2(coarse_per_tile), max(COARSE_CHUNK[kind], tile))
    rows = TILES_PER_PROGRAM[kind] or min(triton.next_power_of_2(rows_total),
                                          max(1, 65536 // max(chunk, tile * pooling)))
    _select_parents_kernel[(triton.cdiv(rows_total, rows),)](
        score_qk, score_kq, parents, n, total, num_tiles, rows_total,
        LEVELS=levels, LOG2_POOL=pooling.bit_length() - 1, COARSE_PER_TILE=coarse_per_tile,
        LOG2_HALF=tile.bit_length() - 2, FORCE_FIRST=force_first_window, KEY_FLOOR=_KEY_FLOOR,
        ROWS=rows, LOG2_CHUNK=chunk.bit_length() - 1)
    slots = index.numel()
    block = min(triton.next_power_of_2(slots), 512 if score_qk.is_cuda else 65536)
    _select_emit_kernel[(triton.cdiv(slots, block),)](
        parents, index, n, num_tiles, index.shape[2] // num_tiles, slots,
        LEVELS=levels, LOG2_POOL=pooling.bit_length() - 1, COARSE_PER_TILE=coarse_per_tile,
        LOG2_M=tile.bit_length() - 1, BLOCK=block)
    return index


# A torch.library custom op, so torch.compile treats the selection as one opaque call.
@torch.library.custom_op("lighthouse::select", mutates_args=())
def _select_op(score_qk: torch.Tensor, score_kq: torch.Tensor, n: int, levels: int, pooling: int,
               topk: int, tile: int, force_first_window: bool) -> torch.Tensor:
    return _select_fwd(score_qk, score_kq, n, levels, pooling, topk, tile, force_first_window)


@_select_op.register_fake
def _(score_qk: torch.Tensor, score_kq: torch.Tensor, n: int, levels: int, pooling: int,
      topk: int, tile: int, force_first_window: bool) -> torch.Tensor:
    slots = n // pooling ** (levels - 1) + (levels - 1) * pooling * topk
    return score_qk.new_empty(score_qk.shape[0], score_qk.shape[1], slots, dtype=torch.int64)


def select(score_qk: torch.Tensor | list[torch.Tensor], score_kq: torch.Tensor | list[torch.Tensor],
           *, config: LighthouseConfig) -> torch.Tensor:
    """Select pyramid entries and return them in gathered order.

    score_qk, score_kq: ``[B, G, sum_l N/p^l]`` float32 on the flat pyramid axis, as ``scores``
    returns them, or per-level lists of ``[B, G, N/p^l]`` as ``scores_ref`` returns them (level
    0 is never read: base positions are always leaves). ``N`` must satisfy
    ``config.length_problem(N) is None``.
    Returns ``[B, G, S]`` int64, exactly ``select_ref``'s output: flat pyramid indices (levels
    finest first) ordered by SPEC §3's keys. Triton kernels where ``use_triton`` holds for the
    scores, otherwise ``select_ref``.
    """
    levels, pooling = config.levels, config.pooling
    if isinstance(score_qk, (list, tuple)):
        n = score_qk[0].shape[-1]
        score_qk, score_kq = torch.cat(list(score_qk), dim=2), torch.cat(list(score_kq), dim=2)
    else:
        total = score_qk.shape[-1]  # n * (1 + 1/p + ... + 1/p^(L-1))
        n = total * (pooling - 1) * pooling ** (levels - 1) // (pooling**levels - 1)
    offsets = level_offsets(n, levels, pooling)
    if score_qk.dim() != 3 or score_qk.shape != score_kq.shape or score_qk.shape[2] != offsets[-1]:
        raise ValueError(f"select needs scores [B, G, {offsets[-1]}] (the flat pyramid of N={n}) "
                         f"or per-level lists; got {tuple(score_qk.shape)} and "
                         f"{tuple(score_kq.shape)}")
    if score_qk.dtype != torch.float32 or score_kq.dtype != torch.float32:
        raise TypeError(f"select needs float32 scores, not {score_qk.dtype} and {score_kq.dtype}")
    problem = config.length_problem(n)
    if problem is not None:
        raise ValueError(f"select: {problem}")
    if use_triton(score_qk):
        return _select_op(score_qk, score_kq, n, levels, pooling, config.topk, config.tile,
                          config.force_first_window)
    return select_ref([score_qk[..., a:b] for a, b in zip(offsets, offsets[1:])],
                      [score_kq[..., a:b] for a, b in zip(offsets, offsets[1:])], config=config)


def _top_half(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the ``count`` largest scores along the last axis; ties to the lower position."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :count]


def select_ref(score_qk: list[torch.Tensor], score_kq: list[torch.Tensor], *,
               config: LighthouseConfig) -> torch.Tensor:
    """Select pyramid entries and return them in gathered order.

    score_qk, score_kq: per level, ``[B, G, N/p^l]`` float32 (see ``scores_ref``).
    Returns ``[B, G, S]`` int64 indices on the flat pyramid axis (levels finest first), sorted
    by the exact integer keys of SPEC §3. Candidates are always kept in ascending index order,
    so a stable descending sort breaks ties toward the lower index (project rule).
    """
    levels, pooling, half = config.levels, config.pooling, config.tile // 2
    batch, kv_heads, n = score_qk[0].shape
    device = score_qk[0].device
    offsets = level_offsets(n, levels, pooling)
    coarse = n // config.coarsest_window

    # [B, G, T, C]: each tile's contiguous run of coarsest entries.
    candidates = torch.arange(coarse, device=device).view(config.num_tiles, -1)
    candidates = candidates.expand(batch, kv_heads, -1, -1)
    flat_index, sort_key = [], []
    for level in range(levels - 1, -1, -1):
        span = pooling**level
        start = candidates * span
        if level == 0:
            is_parent = torch.zeros_like(candidates, dtype=torch.bool)
        else:
            tiled_qk = score_qk[level].unsqueeze(2).expand(-1, -1, config.num_tiles, -1)
            tiled_kq = score_kq[level].unsqueeze(2).expand(-1, -1, config.num_tiles, -1)
            qk = torch.gather(tiled_qk, 3, candidates)
            kq = torch.gather(tiled_kq, 3, candidates)
            if config.force_first_window:
                qk = torch.where(candidates == 0, torch.inf, qk)
            chosen_qk = _top_half(qk, half)
            is_parent = torch.zeros_like(candidates, dtype=torch.bool).scatter_(3, chosen_qk, True)
            chosen_kq = _top_half(kq.masked_fill(is_parent, -torch.inf), half)
            is_parent.scatter_(3, chosen_kq, True)
        end = start + span - 1
        # Leaves sort at their window start, parents just after their window end, coarser
        # parents after finer ones ending at the same place (SPEC §3, exact integer keys).
        sort_key.append(torch.where(is_parent, 2 * levels * end + level, 2 * levels * start))
        flat_index.append(candidates + offsets[level])
        if level > 0:
            parents = candidates[is_parent].view(batch, kv_heads, config.num_tiles, -1)
            children = parents.unsqueeze(-1) * pooling + torch.arange(pooling, device=device)
            candidates = children.flatten(3)
    sort_key = torch.cat([key.flatten(2) for key in sort_key], dim=2)
    flat_index = torch.cat([index.flatten(2) for index in flat_index], dim=2)
    order = torch.argsort(sort_key, dim=2)
    return torch.gather(flat_index, 2, order)
