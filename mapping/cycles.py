"""Analytic cycle model of the accelerator, one prediction per instruction.

A MATMUL overlaps three streams, and the slowest sets its length (docs/architecture.md):

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

The ternary path (docs/architecture.md, "Ternary path (v4)") adds two terms, both the cycle
formulas the RTL documents and its tests pin:

* **TMATMUL** (``hw.tlmm.TernaryLookupMatmul``): rows one after another, the index stream
  re-read for every row; per row ``3 + chunks · (T·G + 1 + H + 1 + stream + 1) + 4 + words·L``
  with ``chunks = ceil(k_groups/T)``, ``H = (3**G + 1)/2`` table entries built,
  ``stream = ceil(n_out/Q)`` records (one per cycle, or fewer when a record is wider than a
  super-beat), then the byte-serial epilogue; per instruction ~80 setup cycles, the parameter
  super-beats and one read latency;
* **ABSQUANT** (``hw.sfu.VectorUnit``): two passes over the row (max, then quantize), per row
  ``2·nw·(L + gamma) + (words − nw) + 42`` with ``nw = ceil(n/L)``, plus 9 per instruction.

Constants are those of the RTL (hw/) and of the simulated memory (sim/rtl/ext_memory.v), set
from the design; the fixed per-run overhead was measured on the v1 RTL. They are to be
recalibrated on the v2 RTL (``benchmarks/cycle_model.py`` prints predicted vs simulated cycles).
"""

from __future__ import annotations

from hwflow.golden.ternary import GROUP_BITS
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import FLAG_GAMMA, FLAG_INT4, Opcode
from hwflow.hw.sequencer import epilogue_lanes

from .weight_format import LayerFormat, channels_per_tile, tile_mem_rows

READ_LATENCY = 32      # cycles, request to first beat (HBM ~100 ns at 300 MHz)
ISSUE = 4              # cycles to decode and dispatch one instruction
REDUCE_STAGES = 2      # reduction node (split the packed fields, accumulate) + segment combine
PIPELINE_EXTRA = 8     # epilogue stages + output write after the DSP group's cascade
TLMM_SETUP = 80        # TMATMUL: sequential dividers and multiplier, once per instruction
TLMM_ROW_FIXED = 3 + 4  # TMATMUL: per row, m read and row dispatch (3) and epilogue drain (4)
VECTOR_FIXED = 9       # vector unit: decode and the final pipeline drain, once per instruction
ABSQ_ROW_FIXED = 42    # ABSQUANT per row: 7-cycle drain, 33-step divider, row dispatch
RUN_OVERHEAD = 50      # start, first fetch decode and the drain of the last STORE's writes
                       # (measured on v1: RTL minus model on 8 single-layer programs, 50-56)


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


def matmul_fetch(i, cfg: AccelConfig) -> int:
    """Weight-fetch cycles: per tile, memory beats or ring entries written, whichever is more."""
    rows = i.tile_mem_rows or tile_mem_rows(cfg, _format(i), i.k_words)
    beats = rows * cfg.beats_per_row
    entries = cfg.param_rows + i.k_words          # every format fills R + k_words entries
    return i.n_tiles * max(beats, entries)


def matmul_epilogue(i, cfg: AccelConfig) -> int:
    """Epilogue cycles: E outputs per cycle over the C channels of every tile and row."""
    L, E = cfg.chain_len, epilogue_lanes(cfg)
    C = channels_per_tile(cfg, _format(i))
    zero_fill = max(0, i.words * L - i.n_tiles * C)
    per_tile = -(-i.rows * C // E) + -(-i.rows // 2) + cfg.param_rows
    return i.n_tiles * per_tile + i.rows * -(-zero_fill // E)


def tmatmul_records(i, cfg: AccelConfig) -> int:
    """Lookup records of one TMATMUL row: ``ceil(k_groups/T) · ceil(n_out/Q)`` (each ``T·Q``
    lookups in one cycle; the RTL's TLMM_BUSY counts them)."""
    return -(-i.k_groups // cfg.tlmm_t) * -(-i.n_out // cfg.tlmm_q)


def tmatmul_cycles(i, cfg: AccelConfig) -> int:
    """Busy cycles of a TMATMUL (``hw.tlmm.TernaryLookupMatmul``'s formula, module docstring)."""
    G, T, Q, L, SB = cfg.tlmm_g, cfg.tlmm_t, cfg.tlmm_q, cfg.chain_len, cfg.beat_bytes
    chunks, blocks = -(-i.k_groups // T), -(-i.n_out // Q)
    H = (3 ** G + 1) // 2
    # one record per cycle, unless a record is wider than the super-beat the stream delivers
    stream = max(blocks, -(-blocks * T * Q * GROUP_BITS[G] // (8 * SB)))
    per_row = TLMM_ROW_FIXED + chunks * (T * G + 1 + H + 1 + stream + 1) + i.words * L
    param_beats = -(-8 * i.n_out // SB)
    return TLMM_SETUP + param_beats + READ_LATENCY + i.rows * per_row


def absquant_cycles(i, cfg: AccelConfig) -> int:
    """Busy cycles of an ABSQUANT: two passes over every row (``hw.sfu.VectorUnit``)."""
    L = cfg.chain_len
    nw = -(-i.n // L)
    gam = 1 if i.flags & FLAG_GAMMA else 0
    return VECTOR_FIXED + i.rows * (2 * nw * (L + gam) + (i.words - nw) + ABSQ_ROW_FIXED)


def instr_cycles(i, cfg: AccelConfig) -> int:
    """Predicted cycles of one instruction (:class:`hwflow.hw.isa.Instr`)."""
    L, sb = cfg.chain_len, cfg.beat_bytes
    if i.op in (Opcode.LOAD, Opcode.STORE):
        beats = i.b * L // sb
        # the gearbox moves one act word per cycle; a super-beat carries SB/L of them
        move = max(beats, i.b)
        return ISSUE + move + (READ_LATENCY if i.op == Opcode.LOAD else 0)
    if i.op == Opcode.MATMUL:
        busy = max(matmul_compute(i), matmul_fetch(i, cfg), matmul_epilogue(i, cfg))
        latency = READ_LATENCY + cfg.group_len + REDUCE_STAGES + PIPELINE_EXTRA
        return ISSUE + busy + latency
    if i.op == Opcode.VADD:
        return ISSUE + i.rows * -(-i.words * L // epilogue_lanes(cfg)) + PIPELINE_EXTRA
    if i.op == Opcode.TMATMUL:
        return ISSUE + tmatmul_cycles(i, cfg)
    if i.op == Opcode.ABSQUANT:
        return ISSUE + absquant_cycles(i, cfg)
    return ISSUE


def predict(program, cfg: AccelConfig) -> dict:
    """Per-instruction and total predicted cycles, plus instruction-fetch latency."""
    per = [instr_cycles(i, cfg) for i in program]
    per_sb = max(1, cfg.beat_bytes // 32)
    fetch = -(-len(program) // per_sb) * READ_LATENCY
    return {"total": sum(per) + fetch + RUN_OVERHEAD, "per_instruction": per,
            "instruction_fetch": fetch}
