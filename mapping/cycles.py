"""Analytic cycle model of the accelerator, one prediction per instruction.

A MATMUL overlaps three streams (docs/architecture.md):

* **compute**: one k-group per cycle, an activation word of a row pair ``(b, b+1)`` for every
  chain (the packed multiply), so ``n_tiles · ceil(rows/2) · k_words`` cycles. An N:M layer of
  ratio r has ``1/r`` of a dense layer's tiles, which is where its speed-up comes from;
* **weight fetch**: one super-beat per cycle on the memory side (``tile_mem_rows`` memory rows of
  ``beats_per_row`` super-beats per tile), and on the ring side the fill decoder writes one entry
  per cycle, ``R + k_words`` entries per tile in every format (an int4 value row expands to two);
  per tile the slower side counts;
* **epilogue**: ``E`` output channels per cycle (``hw.sequencer.epilogue_lanes``: E epilogues
  side by side) over the tile's ``C = P·r`` channels for every row, plus one cycle per row pair
  to capture the next result, the tile's parameter rows, and the bytes of a
  row past the last tile, zero-filled E per cycle.

The slowest stream bounds the length (:func:`matmul_bound`), but it does not set it: the first
tile's fetch and the last row pair's epilogue overlap nothing, and a short tile's epilogue
follows its k-groups. :func:`matmul_pipeline` runs the three streams as a pipeline, tile by
tile and row pair by row pair (the ring's run-ahead, the engine's result FIFO), which the RTL
follows to within a few percent (a few cycles per instruction).

The ternary path (docs/architecture.md, "Ternary path") adds two terms, both the cycle
formulas the RTL documents and its tests pin:

* **TMATMUL** (``hw.tlmm.TernaryLookupMatmul``): rows one after another, the index stream
  re-read for every row; per row ``7 + build + stream + (chunks − 1) · max(build,
  blocks·BPR) + words·L/E`` (the next chunk's tables are built in the other bank while the
  current chunk's records are looked up) with ``build = T·G + NE + 2``, ``chunks =
  ceil(k_groups/T)``, ``NE = table_entries(G)`` table entries built (27 at G = 3), ``stream =
  blocks·BPR − (BPR − 1)`` cycles for ``blocks = ceil(n_out/Q)`` records of ``BPR =
  ceil(T·Q·bits / (8·SB))`` super-beats each (one record per cycle when it fits a beat),
  then the epilogue at ``E = tlmm_epilogue_lanes(L, Q, SB)`` outputs per cycle (4 on the
  KV260); ``4 + words·L/E`` without lookups; per instruction the setup
  (its dividers and multiplier: 11 to ~60 cycles), 8 cycles, the parameter super-beats and one
  read latency;
* **ABSQUANT** (``hw.sfu.VectorUnit``): two passes over the row (max, then quantize), per row
  ``2·nw·(G + gamma) + (words − nw) + 42`` with ``nw = ceil(n/L)`` and ``G = L/V`` lane groups
  per word (``V = vec_lanes``), plus 9 per instruction.

Every other instruction has its own term, from the structure of the unit that runs it
(instructions run one at a time, in order, so a program's cycles are the sum of its
instructions' cycles, their fetches and a fixed per-run overhead; the one exception is the
weight ring after a PREFETCH, which streams its MATMUL's weights beside the instructions
before it, :class:`_Prefetch`):

* **LOAD / STORE** (``hw.controller``): one activation word per cycle through the gearbox (a
  super-beat per cycle on the memory side, so ``max(words, beats)``), one read latency for a
  LOAD; flag POS adds the ``POS · pos_stride`` address cycle;
* **GATHER**: per row a LOAD of ``n`` words (one read latency each) and its id check, plus one
  read round trip per super-beat of ids (``ceil(4·rows/SB)``);
* **RMSNORM / SILUMUL (RELU2, GELU alike) / ABSQUANT / ROPE** (``hw.sfu.VectorUnit``, ``V =
  vec_lanes`` elements per cycle, ``G = L/V`` lane groups per word): per row ``2·nw·G + nw·gam``
  (RMSNORM: sum of squares and normalize; flag GAMMA reads a gamma word per word index),
  ``nw·(G+1)`` (SILUMUL: the gate word latch; ``nw·G`` with flag TANH, which reads no gate),
  ``2·nw·(G+gam)`` (ABSQUANT), the zero words ``words − nw`` and the fixed row work (isqrt and
  divider); ROPE four buffer reads per step of up to ``min(V, L/2)`` pairs
  (``hw.sfu.rope_head_steps``; one pair per step at ``V = 1``);
* **ATTN** (``hw.attention.AttentionUnit``, one pass of up to ``attn_heads`` query heads):
  per query row b (``n = POS + b + 1`` causal keys) ``2·n·hd_words`` (a K and a V slot per
  word of the head, memory delivering one super-beat per cycle) plus the position blocks'
  beats holding no slot, a per-block cost for every block of 16 keys, a per-row cost (33-cycle
  dividers, pipeline drains) and ``2·lanes·hd_words`` (the q copy and the output words, one
  per cycle), plus the lane map (``attn_heads`` cycles) per instruction; requests run ahead,
  so one read latency per instruction;
* **KVSTORE**: one activation word per cycle into the gearbox, ``rows·pos_stride`` super-beats
  (position blocks with their zero padding), like a STORE; flag POS adds the address cycle;
* **instruction fetch**: a read round trip whenever the next instruction is in another
  super-beat than the last one fetched (``SB/32`` instructions per super-beat; every instruction
  when ``SB < 32``) or after a STORE (which drops the fetched super-beat), one cycle otherwise.

Each term is linear in a few parameters (a fixed cost and per-element / per-row / per-beat
slopes, :data:`TERMS`), whose built-in values come from the RTL's documented cycle formulas.
``hwflow calibrate --board B`` fits them by least squares on RTL micro-runs
(:mod:`hwflow.cycle_fit`) and stores them in ``mapping/fits/<board>.json``;
:func:`predict` and :func:`instr_cycles` use, by default, the stored fit whose
configuration digest equals the engine's (else one fitted on an engine with the same
``chains``, ``chain_len``, ``mem_ports`` and ``port_bytes``; else the built-in values), see
:func:`fit_for`. Read latency is a separate input (``CycleFit.read_latency``, the
simulated memory's 32 cycles by default): it multiplies each term's read round trips. So is
the memory's rate (``CycleFit.rate_bytes``, :func:`board_fit`): where a port is wider than what
its channel delivers (``Board.port_rate_bytes``, the simulated memory's ``RATE_BYTES``), every
read stream's super-beats take ``port_bytes / rate_bytes`` cycles instead of one: the weight
fetch, LOAD and GATHER beats, the attention unit's position blocks and the TLMM records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from hwflow.golden.llm import attended
from hwflow.hw.config import TLMM_GROUP_BITS, AccelConfig
from hwflow.hw.contract import (
    ATTN_BLOCK,
    BG_AHEAD_BEATS,
    RESULT_FIFO_DEPTH,
    RING_BURST_BEATS,
    conv_record_bytes,
    epilogue_lanes,
    record_slots,
    rope_head_steps,
    scan_record_bytes,
    table_entries,
    tlmm_epilogue_lanes,
)
from hwflow.hw.isa import FLAG_GAMMA, FLAG_INT4, FLAG_POS, FLAG_TANH, INSTR_BYTES, Opcode

from .traffic import instr_accesses
from .weight_format import LayerFormat, channels_per_tile, ring_reserve, tile_mem_rows

READ_LATENCY = 32      # cycles, request to first beat (HBM ~100 ns at 300 MHz)
ISSUE = 4              # cycles to decode and dispatch one instruction
REDUCE_STAGES = 2      # reduction node (split the packed fields, accumulate) + segment combine
PIPELINE_EXTRA = 8     # epilogue stages + output write after the DSP group's cascade
TLMM_SETUP = 8         # TMATMUL: once per instruction, besides its dividers and multiplier
TLMM_ROW_FIXED = 6     # TMATMUL: per row, m read and row dispatch, stream drain, next row
VECTOR_FIXED = 9       # vector unit: decode and the final pipeline drain, once per instruction
ABSQ_ROW_FIXED = 42    # ABSQUANT per row: 7-cycle drain, 33-step divider, row dispatch
#: MATMUL: cycles from a tile's last epilogue issue to the ring request its release allows (the
#: last group's 6-cycle write, the release pulse, the registered room flag, the cooldown, the
#: fill decoder): 12 reproduces the RTL on rings that hold only two tiles (small engines)
RELEASE_DELAY = 12
RUN_OVERHEAD = 50      # start, first fetch decode and the drain of the last STORE's writes
                       # (measured before the packed multiply: RTL minus model on 8
                       # single-layer programs, 50-56)


def _format(i) -> LayerFormat:
    """The weight format a MATMUL names (dense int8 if the mode is not a format at all)."""
    m, r = 1 << i.lgm, 1 << i.lgr
    try:
        return LayerFormat(max(1, m // r), m, 4 if i.flags & FLAG_INT4 else 8)
    except ValueError:
        return LayerFormat()


def matmul_compute(i) -> int:
    """k-groups of a MATMUL: one activation word of a row pair per cycle."""
    return i.n_tiles * -(-i.rows // 2) * i.k_words


def matmul_fetch(i, cfg: AccelConfig, rate: float = 1.0) -> float:
    """Weight-fetch cycles: per tile, memory beats (``rate`` super-beats per cycle, see
    :meth:`CycleFit.beat_rate`) or ring entries written, whichever is more."""
    rows = i.tile_mem_rows or tile_mem_rows(cfg, _format(i), i.k_words)
    beats = rows * cfg.beats_per_row
    entries = cfg.param_rows + i.k_words          # every format fills R + k_words entries
    return i.n_tiles * max(beats / rate if rate < 1 else beats, entries)


def matmul_epilogue(i, cfg: AccelConfig) -> int:
    """Epilogue cycles: E outputs per cycle over the C channels of every tile and row."""
    L, E = cfg.chain_len, epilogue_lanes(cfg)
    C = channels_per_tile(cfg, _format(i))
    zero_fill = max(0, i.words * L - i.n_tiles * C)
    per_tile = -(-i.rows * C // E) + -(-i.rows // 2) + cfg.param_rows
    return i.n_tiles * per_tile + i.rows * -(-zero_fill // E)


#: Extrapolate the steady state of a MATMUL's tiles (off only to test that it is exact).
_EXTRAPOLATE = True
_NEVER = -1.0e18     # "no result in flight" in the pipeline's history of epilogue ends


def _pairs(cfg, c_free, e_free, hist, fetched, pairs, lone, kw, ep_full, ep_lone):
    """Row pairs of one MATMUL tile (see :func:`matmul_pipeline`): the new ``(c_free, e_free,
    hist)``. Pairs after the first are alike, so once two of them advanced the state by the
    same amount the rest (but a lone last row) are added at once."""
    R, depth = cfg.param_rows, len(hist)
    prev = None
    j = 0
    while j < pairs:
        start = max(c_free, hist[0] - kw)    # a free result slot: the oldest epilogue ended
        c_end = max(start + kw, fetched if j == 0 else _NEVER)
        ep = (ep_lone if lone and j == pairs - 1 else ep_full) + (R + 1 if j == 0 else 0)
        e_end = max(c_end, e_free) + ep
        inc = (c_end - c_free, e_end - e_free)
        c_free, e_free, hist = c_end, e_end, hist[1:] + (e_end,)
        j += 1
        last = pairs - 1 if lone else pairs          # pairs alike from here to ``last``
        linear = hist[-1] - hist[0] == inc[1] * (depth - 1)
        if j > depth + 1 and inc == prev and j < last and linear:
            k = last - j
            c_free += inc[0] * k
            e_free += inc[1] * k
            hist = tuple(e_free - inc[1] * (depth - 1 - d) for d in range(depth))
            j = last
        prev = inc
    return c_free, e_free, hist


def _burst_rows(cfg: AccelConfig) -> int:
    """Memory rows of one weight-ring read burst (``hw.buffers.WeightRing``): never more than
    half the ring."""
    return max(1, min(cfg.weight_depth // 2, RING_BURST_BEATS // cfg.beats_per_row))


class _RingFetch:
    """The weight ring's request side (``hw.buffers.WeightRing``), burst by burst: bursts of
    ``B = min(D/2, RING_BURST_BEATS / beats_per_row)`` memory rows (single rows for the last
    ``< B``), one request every other cycle at most, each reserving its rows' entries (2 per
    int4 row) and waiting until the ring has room for them: room comes back when a tile is
    released (its last epilogue). Data of a request start ``read_latency`` cycles after it,
    behind the rows already streaming; rows stream at ``row_cycles`` each."""

    def __init__(self, cfg, total_rows, tile_rows, per_row, row_cycles, read_latency,
                 head=0.0):
        self.D, self.total, self.tile_rows, self.k = cfg.weight_depth, total_rows, tile_rows, \
            per_row
        self.B = _burst_rows(cfg)
        self.row_c, self.lat = row_cycles, read_latency
        # a PREFETCHed MATMUL's ring started ``head`` cycles before it (its first request then)
        self.req_row, self.last_req, self.stream_end = 0, -2.0 - head, -head
        self.bursts: list = []       # (first row, rows, stream start)

    def arrival(self, row: int, ends: list) -> float:
        """Cycle at which memory row ``row`` is in the ring; ``ends``: release times of the
        tiles so far (ascending)."""
        while not self.bursts or self.bursts[-1][0] + self.bursts[-1][1] <= row:
            n = self.B if self.total - self.req_row >= self.B else 1
            need = (self.req_row + n) * self.k - self.D       # entries to be released first
            at = self.last_req + 2
            if need > 0:
                tiles = -(-need // (self.tile_rows * self.k))
                if ends:
                    at = max(at, ends[min(tiles, len(ends)) - 1] + RELEASE_DELAY)
            start = max(at + self.lat, self.stream_end)
            self.bursts.append((self.req_row, n, start))
            self.last_req, self.req_row = at, self.req_row + n
            self.stream_end = start + n * self.row_c
        for r0, _n, start in reversed(self.bursts):
            if r0 <= row:
                return start + (row - r0 + 1) * self.row_c
        raise AssertionError(row)

    def shift(self, rows: int, dt: float) -> None:
        """Jump ``rows`` ahead in ``dt`` cycles (the steady state of whole tiles)."""
        self.req_row += rows
        self.last_req += dt
        self.stream_end += dt
        self.bursts = [(r0 + rows, n, st + dt) for r0, n, st in self.bursts[-4:]]


@lru_cache(maxsize=4096)
def matmul_pipeline(i, cfg: AccelConfig, read_latency: int = READ_LATENCY,
                    rate: float = 1.0, head: float = 0.0) -> int:
    """Busy cycles of a MATMUL from its three streams as a pipeline, tile by tile and row pair
    by row pair (weight fetch -> k-groups -> epilogue), rather than the slowest stream alone.

    The fetch is the ring's request side burst by burst (:class:`_RingFetch`: bursts wait for
    room in the ring, which a tile's release gives back, then for the read latency), streaming
    a tile's ``tile_mem_rows`` rows in ``f = matmul_fetch / n_tiles`` cycles; a row pair's
    k-groups take ``k_words`` cycles and a tile's first pair cannot end before the tile's last
    row arrived; the engine holds :data:`~hwflow.hw.matrix_engine.RESULT_FIFO_DEPTH` results,
    so the k-groups stall while the epilogue is that far behind; a pair's epilogue takes
    ``ceil(2·C/E)`` cycles (``ceil(C/E)`` for a lone last row) plus ``R + 1`` parameter cycles
    at a tile's first pair, after its k-groups and the previous epilogue. The result is the end
    of the last epilogue plus the zero fill of the row bytes past the last tile, less the first
    read latency (the instruction's read round trip, counted by :func:`features`). Tiles (and
    row pairs) are alike, so once the pipeline is in a steady state the rest is extrapolated:
    a few steps per instruction, not one per tile and pair.

    ``head``: the ring of a PREFETCHed MATMUL started that many cycles of free memory before
    the MATMUL (:class:`_Prefetch`); its rows fill the ring's room meanwhile.
    """
    L, E = cfg.chain_len, epilogue_lanes(cfg)
    fmt = _format(i)
    n = max(1, i.n_tiles)
    C = channels_per_tile(cfg, fmt)
    f = matmul_fetch(i, cfg, rate) / n
    pairs, lone, kw = -(-i.rows // 2), i.rows % 2, i.k_words
    if pairs == 0:
        return 0
    tmr = i.tile_mem_rows or tile_mem_rows(cfg, fmt, kw)
    ring = _RingFetch(cfg, n * tmr, tmr, 2 if fmt.int4 else 1, f / tmr, read_latency, head)
    ahead = max(1, cfg.weight_depth // max(1, ring_reserve(cfg, fmt, kw)))
    ep_full, ep_lone = -(-2 * C // E), -(-C // E)
    fetched, c_free, e_free = 0.0, 0.0, 0.0
    hist = (_NEVER,) * RESULT_FIFO_DEPTH
    ends: list = []                 # epilogue end of every tile (its ring space is released)
    incs: list = []
    t = 0
    while t < n:
        state0 = (fetched, c_free, e_free)
        fetched = ring.arrival((t + 1) * tmr - 1, ends)
        c_free, e_free, hist = _pairs(cfg, c_free, e_free, hist, fetched, pairs, lone, kw,
                                      ep_full, ep_lone)
        ends.append(e_free)
        incs.append((fetched - state0[0], c_free - state0[1], e_free - state0[2]))
        t += 1
        # steady: the last ahead + 2 tiles advanced everything alike; jump to the last tiles
        w = ahead + 2
        if _EXTRAPOLATE and t < n - 2 and len(incs) > w and all(x == incs[-1] for x in incs[-w:]):
            k = n - 2 - t
            df, dc, de = incs[-1]
            fetched += df * k
            c_free += dc * k
            e_free += de * k
            hist = tuple(h + de * k for h in hist)
            ends += [ends[-1] + de * (m + 1) for m in range(k)]
            ring.shift(k * tmr, df * k)
            t = n - 2
    zero_fill = i.rows * -(-max(0, i.words * L - i.n_tiles * C) // E)
    return round(e_free - read_latency) + zero_fill


def tmatmul_records(i, cfg: AccelConfig) -> int:
    """Lookup records of one TMATMUL row: ``ceil(k_groups/T) · ceil(n_out/Q)`` (each ``T·Q``
    lookups in one cycle; the RTL's TLMM_BUSY counts them)."""
    return -(-i.k_groups // cfg.tlmm_t) * -(-i.n_out // cfg.tlmm_q)


def tmatmul_cycles(i, cfg: AccelConfig, rate: float = 1.0) -> int:
    """Busy cycles of a TMATMUL (``hw.tlmm.TernaryLookupMatmul``'s formula, module docstring),
    exact when memory delivers a super-beat per cycle after ``READ_LATENCY``; with ``rate`` < 1
    super-beats per cycle the record and parameter beats take ``1/rate`` cycles each (the
    records of a beat are still looked up one a cycle)."""
    G, T, Q, L, SB = cfg.tlmm_g, cfg.tlmm_t, cfg.tlmm_q, cfg.chain_len, cfg.beat_bytes
    chunks, blocks = -(-i.k_groups // T), -(-i.n_out // Q)
    # records never straddle a super-beat: KR per beat, or BPR beats each
    rb, sbb = T * Q * TLMM_GROUP_BITS[G], 8 * SB
    kr, bpr = max(1, sbb // rb), -(-rb // sbb)
    # a record a cycle (KR to a beat, or BPR beats each); a slower memory counts where its
    # beats, ceil(blocks / KR) · BPR of them a chunk, take longer than the lookups
    lookups = blocks * bpr
    fetched = -(-blocks // kr) * bpr / rate if rate < 1 else 0
    stream = max(lookups, fetched) - (bpr - 1)
    # the builder (T·G bytes, entry 0, NE entries: T·G + NE + 2 cycles) fills one table bank
    # while the lookups read the other: the first chunk is built alone, every later one takes
    # the longer of its build and its lookups (blocks·BPR beats), the last adds its lookups
    build = T * G + table_entries(G) + 2
    # the epilogue writes E outputs (one lane group of a word, E | L) per cycle
    epi = i.words * L // tlmm_epilogue_lanes(L, Q, SB)
    # groups of up to S·R rows: their m bytes (2 a row), then the units (chunk, pass), passes
    # inner: a pass's T·G bytes of each of its (up to R) rows before its tables are built (all
    # rows' at once), its records looked up once for all its rows (the group's first pass from
    # memory, the others from the record buffer, one a cycle), then each row's epilogue
    R, S = cfg.tlmm_rows, cfg.tlmm_passes

    def per_group(n):
        fixed = TLMM_ROW_FIXED + 2 * (n - 1)
        if not (chunks and blocks):
            return fixed - 2 + n * epi                  # no lookups: no stream drain
        pass_rows = [min(R, n - p) for p in range(0, n, R)]
        units = [(p, r) for _ in range(chunks) for p, r in enumerate(pass_rows)]

        def build_of(r):                                # the builder's cycles for r rows
            return build + (r - 1) * T * G

        def look(p):                                    # pass 0 from memory, the others buffered
            return max(lookups, fetched) if p == 0 else blocks

        cyc = build_of(units[0][1]) + 1
        for (p0, _), (_, r1) in zip(units[:-1], units[1:], strict=True):
            cyc += max(build_of(r1), look(p0))
        cyc += stream if units[-1][0] == 0 else blocks
        return fixed + cyc + n * epi

    full, rest = divmod(i.rows, S * R)
    groups = full * per_group(S * R) + (per_group(rest) if rest else 0)
    # setup: ceil-divisions by T, Q, SB/8 and S·R (a shift for powers of two, else 17 steps), the
    # records multiplier (bits(acc entries) steps), ceil(records / KR) (steps: its bits)
    def pow2(d):
        return d & (d - 1) == 0

    acc_bits = (-(-cfg.tlmm_acc_depth // Q)).bit_length()
    rec_bits = (-(-0xFFFF // T)).bit_length() + acc_bits
    setup = (1 if pow2(T) and pow2(Q) and pow2(SB // 8) and pow2(R * S) else 18) + acc_bits + 1 \
        + (1 if pow2(kr) else max(rec_bits, (kr - 1).bit_length()) + 2)
    param_beats = -(-8 * i.n_out // SB) / min(1.0, rate)
    return round(TLMM_SETUP + setup + param_beats + READ_LATENCY + groups)


def absquant_cycles(i, cfg: AccelConfig) -> int:
    """Busy cycles of an ABSQUANT: two passes over every row (``hw.sfu.VectorUnit``), each
    ``G = L / vec_lanes`` lane groups per word."""
    L = cfg.chain_len
    G = L // cfg.vec_lanes
    nw = -(-i.n // L)
    gam = 1 if i.flags & FLAG_GAMMA else 0
    return VECTOR_FIXED + i.rows * (2 * nw * (G + gam) + (i.words - nw) + ABSQ_ROW_FIXED)


@lru_cache(maxsize=4096)
def _head_steps(L: int, V: int, hd: int, offset: int) -> int:
    return rope_head_steps(L, V, hd, offset)


def rope_steps(i, cfg: AccelConfig) -> int:
    """ROPE steps of an instruction (four buffer reads each, ``hw.sfu.VectorUnit``): per row and
    head :func:`hwflow.hw.sfu.rope_head_steps` at the head's byte offset in its word (rows
    start at words, so every row alike); ``rows·heads·hd/2`` (one pair per step) at
    ``vec_lanes = 1``."""
    L, V = cfg.chain_len, cfg.vec_lanes
    if min(V, L // 2) == 1:
        return i.rows * i.heads * (i.hd // 2)
    per_row = sum(_head_steps(L, V, i.hd, h * i.head_stride % L) for h in range(i.heads))
    return i.rows * per_row


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


#: Parameters of every term, ``kind: ((term, built-in value), ...)``: the cycles of an
#: instruction of that kind are ``sum(value · feature)`` over its terms (:func:`features`) plus
#: its read round trips times the read latency. Built-in values are the RTL's documented cycle
#: formulas (``hw/sfu.py``, ``hw/attention.py``, ``hw/controller.py``); a calibration replaces
#: them with values fitted on RTL micro-runs. ``FETCH`` and ``RUN`` are the program-level terms:
#: instruction fetch (``hit``: from the fetched super-beat; ``miss``: a memory read, plus one
#: read latency) and the fixed cost of a run (start, END, the drain of the last writes).
TERMS: dict[str, tuple] = {
    "LOAD": (("fixed", ISSUE), ("move", 1.0), ("pos", 2.0)),
    "STORE": (("fixed", ISSUE), ("move", 1.0), ("pos", 2.0)),
    "KVSTORE": (("fixed", ISSUE), ("move", 1.0), ("pos", 2.0)),
    "MATMUL": (("fixed", ISSUE + REDUCE_STAGES + PIPELINE_EXTRA), ("cascade", 1.0),
               ("pipeline", 1.0), ("tiles", 0.0), ("int4_tiles", 0.0)),
    "VADD": (("fixed", ISSUE + PIPELINE_EXTRA), ("elems", 1.0), ("rows", 0.0)),
    "GATHER": (("fixed", ISSUE), ("rows", 4.0), ("move", 1.0), ("id_beats", 2.0)),
    "RMSNORM": (("fixed", ISSUE + VECTOR_FIXED), ("rows", 67.0), ("elems", 1.0),
                ("zero_words", 1.0)),
    "SILUMUL": (("fixed", ISSUE + VECTOR_FIXED), ("rows", 2.0), ("elems", 1.0),
                ("zero_words", 1.0)),
    "ROPE": (("fixed", ISSUE + VECTOR_FIXED + 4), ("pairs", 4.0), ("row_heads", 0.0)),
    # fixed: issue and the lane map (attn_heads cycles, a constant of the configuration);
    # blocks: 11 with the score soft-cap stage (S6), which every block's K drain waits for
    "ATTN": (("fixed", ISSUE + 2 + 4), ("slots", 1.0), ("blocks", 11.0), ("rows", 45.0),
             ("head_words", 2.0), ("skip_beats", 1.0)),
    "ABSQUANT": (("fixed", ISSUE + VECTOR_FIXED), ("rows", ABSQ_ROW_FIXED), ("elems", 1.0),
                 ("zero_words", 1.0)),
    "TMATMUL": (("fixed", ISSUE), ("engine", 1.0)),
    # the state-space executors (hw/ssm_exec.py, _ssm_features); the constants are the RTL's
    # (fitted on an L = 8 engine: exact on every held-out size): HADAMARD's fixed part is the
    # issue and the epilogue's pipeline, CONV's the issue, the record's first beat and the
    # unit's pipeline, SCAN's per row its first beat's u/dt reads, the swap and the drain
    "HADAMARD": (("fixed", ISSUE + 3), ("words", 1.0), ("latency", 1.0)),
    "CONV": (("fixed", ISSUE + 8), ("feed", 1.0), ("pads", 1.0)),
    "SCAN": (("fixed", ISSUE), ("rows", 12.0), ("token", 1.0), ("feed", 1.0), ("pads", 1.0)),
    # decode and the ring's start: the weights then stream beside the next instructions
    "PREFETCH": (("fixed", 2.0),),
    "FETCH": (("hit", 1.0), ("miss", 3.0)),
    "RUN": (("fixed", RUN_OVERHEAD),),
}

#: Where ``hwflow calibrate`` stores its results (one JSON file per board).
FITS_DIR = Path(__file__).resolve().parent / "fits"
#: AccelConfig fields that must be equal for a calibration fitted on another digest to be used.
_SHAPE_FIELDS = ("chains", "chain_len", "mem_ports", "port_bytes")


@dataclass(frozen=True)
class CycleFit:
    """Values of the :data:`TERMS` parameters, built in or fitted on the RTL.

    Attributes
    ----------
    params : dict
        ``{kind: {term: value}}``; a kind or term not named keeps its built-in value.
    read_latency : int
        Cycles from a read request to its first beat (the simulated memory's 32 by default).
    rate_bytes : int or None
        Bytes per cycle the memory delivers to each port (``Board.port_rate_bytes``; the
        simulated memory's ``rate_bytes``); None: a beat per cycle. Not fitted: the board's.
    source : str
        ``"built-in"`` or where the values came from (a calibration file).
    config_digest : str or None
        :meth:`AccelConfig.digest` of the engine the values were fitted on.
    """

    params: dict = field(default_factory=dict)
    read_latency: int = READ_LATENCY
    source: str = "built-in"
    config_digest: str | None = None
    rate_bytes: int | None = None

    def beat_rate(self, cfg: AccelConfig) -> float:
        """Super-beats per cycle the memory delivers to ``cfg``'s ports (at most 1)."""
        if self.rate_bytes is None:
            return 1.0
        return min(1.0, self.rate_bytes / cfg.port_bytes)

    def values(self, kind: str) -> dict:
        """``{term: value}`` of one kind, fitted values over the built-in ones."""
        return {**dict(TERMS[kind]), **self.params.get(kind, {})}

    @classmethod
    def from_dict(cls, data: dict, source: str = "calibration data") -> CycleFit:
        """From the JSON that ``hwflow calibrate`` writes (``kinds.<KIND>.params``)."""
        params = {k: dict(v["params"]) for k, v in data.get("kinds", {}).items()
                  if k in TERMS and "params" in v}
        return cls(params, int(data.get("read_latency", READ_LATENCY)), source,
                   data.get("config_digest"))


BUILTIN = CycleFit()


@lru_cache(maxsize=1)
def _stored() -> tuple:
    """``((path, data), ...)`` of the cycle-model fit files in :data:`FITS_DIR`."""
    out = []
    for path in sorted(FITS_DIR.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue        # a damaged file is not a fit; the built-in values apply
        # the folder holds other fitted models too (resources.json): cycle-model fits only
        if isinstance(data, dict) and "kinds" in data and "config_digest" in data:
            out.append((path, data))
    return tuple(out)


def stored_fit(cfg: AccelConfig) -> CycleFit | None:
    """The stored fit for ``cfg``: the file whose ``config_digest`` equals
    ``cfg.digest()``, else the first one fitted on an engine with the same ``chains``,
    ``chain_len``, ``mem_ports`` and ``port_bytes`` (it differs in buffer depths, unit options or
    TLMM sizes, which the terms take as inputs), else None."""
    digest = cfg.digest()
    near = None
    for path, data in _stored():
        if data.get("config_digest") == digest:
            return CycleFit.from_dict(data, str(path))
        conf = data.get("config", {})
        if near is None and all(conf.get(f) == getattr(cfg, f) for f in _SHAPE_FIELDS):
            near = CycleFit.from_dict(data, str(path))
    return near


def fit_for(cfg: AccelConfig, fit=None) -> CycleFit:
    """Resolve the ``fit`` argument of :func:`predict` / :func:`instr_cycles`.

    Parameters
    ----------
    cfg : AccelConfig
    fit : None, False, str, Path, dict or CycleFit
        None: the stored fit for ``cfg`` (:func:`stored_fit`), else the built-in
        values; False: the built-in values; a str or Path: a fit JSON file, or a board
        name (``mapping/fits/<name>.json``); a dict: fit JSON data.

    Raises
    ------
    FileNotFoundError
        ``fit`` names neither a file nor a stored board fit.
    """
    if fit is None:
        return stored_fit(cfg) or BUILTIN
    if fit is False:
        return BUILTIN
    if isinstance(fit, CycleFit):
        return fit
    if isinstance(fit, dict):
        return CycleFit.from_dict(fit)
    path = Path(fit)
    if not path.is_file():
        path = FITS_DIR / f"{fit}.json"
    if not path.is_file():
        known = ", ".join(p.stem for p, _ in _stored()) or "none"
        raise FileNotFoundError(f"no calibration file {fit!r} and no stored calibration of "
                                f"a board of that name (stored: {known})")
    return CycleFit.from_dict(json.loads(path.read_text()), str(path))


def memory_rate_bytes(board, cfg: AccelConfig, clock_mhz: float | None = None) -> int:
    """Bytes per cycle ``board``'s memory delivers to each of ``cfg``'s ports
    (``Board.port_rate_bytes``): the simulated memory's ``rate_bytes`` and the model's."""
    return board.port_rate_bytes(cfg.mem_ports, cfg.port_bytes, clock_mhz)


def board_fit(cfg: AccelConfig, board, fit=None, clock_mhz: float | None = None) -> CycleFit:
    """:func:`fit_for` ``(cfg, fit)`` with the memory ``board`` delivers to ``cfg``'s ports
    (``rate_bytes``: ``Board.port_rate_bytes`` at ``clock_mhz``, default the board's clock).
    Where ports are wider than what their channels deliver (the U280's 512-bit kernel ports),
    every read stream's beats take longer; elsewhere the fit is unchanged."""
    return with_rate(fit_for(cfg, fit), cfg, memory_rate_bytes(board, cfg, clock_mhz))


def with_rate(cal: CycleFit, cfg: AccelConfig, rate_bytes: int | None) -> CycleFit:
    """``cal`` on a memory delivering ``rate_bytes`` per cycle to each port (None, or at
    least ``cfg.port_bytes``: a beat per cycle)."""
    full = rate_bytes is None or rate_bytes >= cfg.port_bytes
    return replace(cal, rate_bytes=None if full else int(rate_bytes))


def matmul_bound(i, cfg: AccelConfig, rate: float = 1.0) -> tuple[str, int]:
    """The MATMUL term that sets its length (``"compute"``, ``"fetch"`` or ``"epilogue"``) and
    its cycles: the three streams overlap, the slowest counts."""
    terms = {"compute": matmul_compute(i), "fetch": matmul_fetch(i, cfg, rate),
             "epilogue": matmul_epilogue(i, cfg)}
    name = max(terms, key=terms.get)
    return name, terms[name]


def attn_block_cycles(i, cfg: AccelConfig, rate: float = 1.0) -> tuple[int, float]:
    """``(slots, skipped beats)`` of one position block of an ATTN pass: the unit takes one
    slot per cycle (``hd_words`` of them) and one cycle per super-beat of the block holding
    no slot (``pos_sb`` beyond the slots' beats); where the memory delivers ``rate`` < 1
    super-beats per cycle, the block's ``pos_sb`` beats take at least ``pos_sb / rate``
    cycles, and the cycles past the slots count as skipped beats."""
    wpb = max(1, cfg.beat_bytes // cfg.chain_len)
    used = _cdiv(i.slots * i.hd_words, wpb)
    skip = max(0, i.pos_sb - used)
    if rate < 1:
        return i.hd_words, max(i.hd_words + skip, i.pos_sb / rate) - i.hd_words
    return i.hd_words, skip


def features(i, cfg: AccelConfig, pos: int = 0, read_latency: int = READ_LATENCY,
             rate: float = 1.0, head: float = 0.0) -> tuple[str | None, dict, int]:
    """``(kind, {term: feature}, read round trips)`` of one instruction; kind None for END
    (its cost is in the ``RUN`` term) and for an opcode the model does not know.

    ``pos`` is the POS register of the run (ATTN's causal key counts; LOAD/STORE with flag
    POS only add their address cycle, whatever POS is); ``read_latency`` enters the MATMUL
    pipeline (a weight read after a ring release waits for it); ``rate`` is the super-beats
    per cycle the memory delivers (:meth:`CycleFit.beat_rate`): every read stream's beats take
    ``1/rate`` cycles (writes are not throttled); ``head`` the cycles a MATMUL's weights
    streamed before it (:class:`_Prefetch`).
    """
    L, SB = cfg.chain_len, cfg.beat_bytes
    beat = 1 / rate if rate < 1 else 1
    op = i.op
    if op == Opcode.KVSTORE:
        words = i.rows * i.pos_stride * (SB // L)
        return "KVSTORE", {"fixed": 1, "move": max(words, i.rows * i.pos_stride),
                           "pos": 1 if i.flags & FLAG_POS else 0}, 0
    if op in (Opcode.LOAD, Opcode.STORE):
        move = max(i.b, _cdiv(i.b * L, SB) * (beat if op == Opcode.LOAD else 1))
        # a LOAD of n = 0 words issues no read
        trips = 1 if op == Opcode.LOAD and i.b else 0
        return op.name, {"fixed": 1, "move": move, "pos": 1 if i.flags & FLAG_POS else 0}, trips
    if op == Opcode.MATMUL:
        # the three streams as a pipeline (matmul_pipeline); one read latency before the
        # weight stream's first beat, the DSP group's cascade (S0 slices) before a result
        # per tile (and per int4 tile: scale rows latched by the fill decoder) hand-offs the
        # pipeline leaves out; zero unless a calibration finds them
        return "MATMUL", {"fixed": 1, "cascade": cfg.group_len,
                          "pipeline": matmul_pipeline(i, cfg, read_latency, rate, head),
                          "tiles": i.n_tiles,
                          "int4_tiles": i.n_tiles if i.flags & FLAG_INT4 else 0}, \
            1 if i.rows else 0
    if op == Opcode.VADD:
        return "VADD", {"fixed": 1, "elems": i.rows * _cdiv(i.words * L, epilogue_lanes(cfg)),
                        "rows": i.rows}, 0
    if op == Opcode.GATHER:
        id_beats = _cdiv(4 * i.rows, SB)
        return "GATHER", {"fixed": 1, "rows": i.rows,
                          "move": i.rows * max(i.n, _cdiv(i.n * L, SB) * beat),
                          "id_beats": id_beats}, i.rows + id_beats
    if op in (Opcode.RMSNORM, Opcode.SILUMUL, Opcode.ABSQUANT):
        # element steps: G = L / vec_lanes lane groups per word (L at vec_lanes = 1)
        nw, G = _cdiv(i.n, L), L // cfg.vec_lanes
        gam = 1 if i.flags & FLAG_GAMMA else 0      # a gamma word read per word index
        gate = 0 if i.flags & FLAG_TANH else 1      # SILUMUL's gate word latch (TANH: unary)
        per_word = {Opcode.RMSNORM: 2 * G + gam, Opcode.SILUMUL: G + gate,
                    Opcode.ABSQUANT: 2 * (G + gam)}[op]
        return op.name, {"fixed": 1, "rows": i.rows, "elems": i.rows * nw * per_word,
                         "zero_words": i.rows * max(0, i.words - nw)}, 0
    if op == Opcode.ROPE:
        # "pairs": steps of four reads (one pair each at vec_lanes = 1, up to min(V, L/2))
        return "ROPE", {"fixed": 1, "pairs": rope_steps(i, cfg),
                        "row_heads": i.rows * i.heads}, 0
    if op == Opcode.ATTN:
        counts = [attended(pos + b, i.window)[1] for b in range(i.rows)]    # keys per row
        keys = sum(counts)
        slots, skip = attn_block_cycles(i, cfg, rate)
        blocks = sum(_cdiv(n, ATTN_BLOCK) for n in counts)
        return "ATTN", {"fixed": 1, "slots": 2 * keys * slots,
                        "skip_beats": 2 * keys * skip, "blocks": blocks, "rows": i.rows,
                        "head_words": i.rows * i.lanes * i.hd_words}, 1 if i.rows else 0
    if op == Opcode.TMATMUL:
        return "TMATMUL", {"fixed": 1, "engine": tmatmul_cycles(i, cfg, rate)}, 0
    if op == Opcode.PREFETCH:
        return "PREFETCH", {"fixed": 1}, 0
    if op in (Opcode.HADAMARD, Opcode.CONV, Opcode.SCAN):
        return _ssm_features(i, cfg, beat)
    return None, {}, 0


def _ssm_features(i, cfg: AccelConfig, beat: float) -> tuple[str, dict, int]:
    """The state-space instructions' features (``hw/ssm_exec.py``; ``beat`` cycles a read
    super-beat takes; ``arrive`` the cycles a beat's parameter record takes to arrive,
    ``record_slots``: ``span`` super-beats, or ``1/per`` of one).

    HADAMARD: the write side, a word a cycle (the rows' beats and padding words), behind the
    unit's delay-feedback stages of the instruction's block (``2**lgb / L`` beats).
    CONV: per beat of ``L`` channels its rows enter the unit one a cycle, or the next record
    arrives first (it is requested when the beat takes its record): ``max(rows, arrive + 1)``;
    the last beat's rows then drain behind at most ``arrive`` cycles of it; the padding words
    after. SCAN, per row: the ``B`` and ``C`` words (``token``), per beat its channels, W a
    cycle, and the swap (``c / W + 1`` cycles) or the next beat's record if it arrives later
    (the row's last beat overlaps the next row's first record with its drain), the padding
    words, and the row's fixed part (the u/dt reads of its first beat, the units' drain)."""
    L, op = cfg.chain_len, i.op
    n_beats = _cdiv(i.n, L)
    pads = i.rows * max(0, i.words - n_beats)
    if op == Opcode.HADAMARD:
        return "HADAMARD", {"fixed": 1, "words": i.rows * i.words,
                            "latency": (1 << i.lgb) // L if i.rows and i.n else 0}, 0
    rec = (conv_record_bytes(L, cfg.conv_taps) if op == Opcode.CONV
           else scan_record_bytes(L, cfg.ssm_states))
    per, span = record_slots(rec, cfg.beat_bytes)
    arrive = span / per * beat
    if op == Opcode.CONV:
        feed = n_beats * max(i.rows, arrive + 1) + min(i.rows - 1, arrive) if i.rows else 0
        return "CONV", {"fixed": 1, "feed": feed, "pads": pads}, 1 if i.rows and n_beats else 0
    W = cfg.ssm_lanes
    steps = [_cdiv(min(L, i.n - b * L), W) + 1 for b in range(n_beats)]   # W channels a cycle
    per_row = sum(max(c, arrive) for c in steps[:-1]) + (steps[-1] if steps else 0)
    return "SCAN", {"fixed": 1, "rows": i.rows if n_beats else 0,
                    "token": i.rows * 2 * _cdiv(cfg.ssm_states, L) if n_beats else 0,
                    "feed": i.rows * per_row, "pads": pads}, 1 if i.rows and n_beats else 0


def _dot(values: dict, feats: dict) -> float:
    return sum(values[t] * v for t, v in feats.items())


def instr_cycles(i, cfg: AccelConfig, pos: int = 0, fit=None, head: float = 0.0) -> int:
    """Predicted cycles of one instruction (:class:`hwflow.hw.isa.Instr`), its fetch excluded.

    Parameters
    ----------
    i : Instr
    cfg : AccelConfig
    pos : int
        The POS register of the run (ATTN reads ``POS + b + 1`` keys for row b).
    fit : optional
        The term values (see :func:`fit_for`; default: the stored fit of
        ``cfg``, else the built-in values).
    head : float
        A MATMUL's weights streamed that many cycles before it (:class:`_Prefetch`).
    """
    cal = fit_for(cfg, fit)
    kind, feats, trips = features(i, cfg, pos, cal.read_latency, cal.beat_rate(cfg), head)
    if kind is None:
        return 0 if i.op == Opcode.END else ISSUE
    return max(0, round(_dot(cal.values(kind), feats) + trips * cal.read_latency))


def fetch_misses(program, cfg: AccelConfig) -> list[bool]:
    """Per instruction: is it fetched from memory (True) or from the controller's last fetched
    super-beat? A miss at every new super-beat (``SB/32`` instructions each; every instruction
    when ``SB < 32``) and after any STORE."""
    slots = max(1, cfg.beat_bytes // INSTR_BYTES)
    out, prev_store = [], False
    for k, i in enumerate(program):
        out.append(k % slots == 0 or prev_store)
        prev_store = i.op in (Opcode.STORE, Opcode.KVSTORE)
    return out


def _read_beats(i, cfg: AccelConfig, pos: int) -> float:
    """Super-beats instruction ``i`` reads (``mapping.traffic.instr_accesses``)."""
    return sum(n for _sb, n, write in instr_accesses(i, cfg, pos) if not write) / cfg.beat_bytes


class _Prefetch:
    """A PREFETCHed MATMUL's ring streaming beside the instructions before it
    (docs/architecture.md, "Weight prefetch"), for :func:`predict`.

    From the PREFETCH on, the ring streams the MATMUL's rows until its room is used up
    (``window``: a read latency and the rows that fit the ring, at the MATMUL's fetch rate).
    The memory answers in order, so while it streams every read round trip of the other
    instructions (an instruction fetch that misses, a LOAD, GATHER, ATTN or TMATMUL's first
    request) waits behind the ring's beats in flight beyond what the read latency covers:
    between none and one burst (the ring keeps ``BG_AHEAD_BEATS``, a latency and a burst, in
    flight), half a burst on average, ``burst / rate / 2`` cycles (measured on the tiny
    LLaMA's decode segments: within 21 cycles of the RTL each, 0.3% a program). The MATMUL
    then starts ``head`` cycles into its fetch: the cycles the instructions in between took
    (their fetches and waits included), less the beats their own reads took.
    """

    def __init__(self, cfg: AccelConfig, cal):
        self.cfg, self.rate, self.lat = cfg, cal.beat_rate(cfg), cal.read_latency
        self.active = False

    def begin(self, mm) -> None:
        """The PREFETCH of MATMUL ``mm`` (None: no MATMUL follows; nothing is modelled)."""
        self.active, self.t, self.head = mm is not None, 0.0, 0.0
        if mm is None:
            return
        cfg, fmt = self.cfg, _format(mm)
        tmr = mm.tile_mem_rows or tile_mem_rows(cfg, fmt, mm.k_words)
        rows = max(1, mm.n_tiles) * tmr
        row_c = matmul_fetch(mm, cfg, self.rate) / max(1, mm.n_tiles) / tmr
        room = cfg.weight_depth // (2 if fmt.int4 else 1)
        self.window = self.lat + min(rows, room) * row_c
        burst = _burst_rows(cfg) * cfg.beats_per_row
        self.burst = min(burst, BG_AHEAD_BEATS) / self.rate / 2

    def wait(self, trips: int) -> float:
        """Cycles ``trips`` read round trips wait behind the ring's beats at this point."""
        return trips * self.burst if self.active and self.t < self.window else 0.0

    def advance(self, cycles: float, reads: float) -> None:
        """An instruction in between took ``cycles`` (fetch and waits included), ``reads``
        super-beats of them its own."""
        self.t += cycles
        self.head += max(0.0, cycles - reads / self.rate)

    def finish(self, fetch: float) -> float:
        """The MATMUL's head start (its own fetch included); the ring is its from now."""
        self.active = False
        return self.head + fetch


def predict(program, cfg: AccelConfig, pos: int = 0, fit=None) -> dict:
    """Predicted cycles of a program run (straight-line, END last) with POS = ``pos``.

    Returns
    -------
    dict
        ``total`` (cycles from start to done), ``per_instruction`` (list, fetch excluded but
        for its wait behind a prefetching ring; END is 0), ``waits`` (those waits: the cycles
        each instruction's reads wait behind the ring of a PREFETCH before it), ``heads`` (a
        PREFETCHed MATMUL's head start, else 0), ``instruction_fetch`` (cycles of all
        fetches), ``run_overhead``, ``by_kind`` (``{kind: cycles}`` of the instructions) and
        ``calibration`` (where the values came from).
    """
    cal = fit_for(cfg, fit)
    fv = cal.values("FETCH")
    miss = fetch_misses(program, cfg)
    fetches = [fv["miss"] + cal.read_latency if m else fv["hit"] for m in miss]
    per, waits, heads = [], [], []
    pf = _Prefetch(cfg, cal)
    for k, i in enumerate(program):
        head = wait = 0
        if i.op == Opcode.MATMUL and pf.active:
            head = pf.finish(fetches[k])
        elif pf.active:
            trips = features(i, cfg, pos, cal.read_latency, pf.rate)[2] + int(miss[k])
            wait = round(pf.wait(trips + (i.op == Opcode.TMATMUL)))
        c = instr_cycles(i, cfg, pos, cal, head) + wait
        if pf.active:
            pf.advance(c + fetches[k], _read_beats(i, cfg, pos))
        per.append(c)
        waits.append(wait)
        heads.append(head)
        if i.op == Opcode.PREFETCH:
            pf.begin(next((m for m in program[k + 1:] if m.op == Opcode.MATMUL), None))
    fetch = round(sum(fetches))
    run = round(cal.values("RUN")["fixed"])
    by_kind: dict = {}
    for i, c in zip(program, per, strict=True):
        by_kind[i.op.name] = by_kind.get(i.op.name, 0) + c
    return {"total": sum(per) + fetch + run, "per_instruction": per, "waits": waits,
            "heads": heads,
            "instruction_fetch": fetch, "run_overhead": run, "by_kind": by_kind,
            "calibration": cal.source}
