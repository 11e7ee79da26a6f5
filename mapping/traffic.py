"""External-memory traffic of a program run: the rule the predictions count bytes by.

:func:`program_traffic` counts, per instruction, the bytes the hardware moves (whole
super-beats, by category); the ISA functional model (``sim.isa_model``) measures the same
categories from the accesses it makes, region by region, and the tests hold the two equal
(``tests/hwflow/test_predict.py``, ``tests/e2e``: the RTL's counters too).
"""

from __future__ import annotations

from hwflow.golden.llm import attended_total
from hwflow.hw.isa import FLAG_POS, INSTR_BYTES, Opcode

from .ternary_format import block_layout

__all__ = ["program_traffic"]


def program_traffic(program, cfg, pos: int) -> dict:
    """External-memory bytes of one run of ``program`` at position ``pos``, by category.

    Counted as ``sim.isa_model.IsaModel`` counts its traffic (whole super-beats): MATMUL its
    weight block, TMATMUL its parameters once and its index stream per row, GATHER the
    embedding rows and the token ids, LOAD the RoPE rows (POS) or the gamma codes, STORE the
    logits, KVSTORE the new K/V position blocks (POS), ATTN one pass over position blocks
    ``0 .. pos + b`` of its K and V regions per query row ``b`` (for all the pass's query
    heads), and the instruction fetch (a super-beat at a time, fetched again after a STORE or
    KVSTORE).

    Returns
    -------
    dict
        ``weights_read``, ``kv_read``, ``kv_written``, ``io_read``, ``io_written``,
        ``program_read`` and ``total``.
    """
    L, SB = cfg.chain_len, cfg.beat_bytes

    def whole(n):
        return -(-n // SB) * SB

    t = dict.fromkeys(("weights_read", "kv_read", "kv_written", "io_read", "io_written",
                       "program_read"), 0)
    fetched = None     # the super-beat of instructions the controller holds
    for idx, i in enumerate(program):
        pc = idx * INSTR_BYTES      # programs start on a super-beat
        for sb in range(pc // SB, (pc + INSTR_BYTES - 1) // SB + 1):
            if sb != fetched:
                t["program_read"] += SB
                fetched = sb
        if i.op == Opcode.MATMUL:
            t["weights_read"] += i.n_tiles * i.tile_mem_rows * cfg.row_bytes
        elif i.op == Opcode.TMATMUL:
            lay = block_layout(i.n_out, i.k_groups * cfg.tlmm_g, cfg.tlmm_g, cfg.tlmm_t,
                               cfg.tlmm_q, SB)
            t["weights_read"] += (lay["param_beats"] + i.rows * lay["stream_beats"]) * SB
        elif i.op == Opcode.GATHER:
            t["io_read"] += whole(4 * i.rows)
            t["weights_read"] += i.rows * whole(i.n * L)
        elif i.op == Opcode.LOAD:
            t["weights_read"] += whole(i.b * L)
        elif i.op == Opcode.STORE:
            t["kv_written" if i.flags & FLAG_POS else "io_written"] += whole(i.b * L)
            fetched = None      # a STORE may overwrite the program: the super-beat is refetched
        elif i.op == Opcode.KVSTORE:
            t["kv_written"] += i.rows * i.pos_stride * SB
            fetched = None
        elif i.op == Opcode.ATTN:
            rows = i.rows
            # the pass reads the position blocks of row b's keys (0 .. pos + b, or the sliding
            # window's) of its K and V regions once per row
            per_cache = attended_total(pos, rows, i.window) * i.pos_sb * SB
            t["kv_read"] += 2 * per_cache
    t["total"] = sum(t.values())
    return t
