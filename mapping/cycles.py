"""Analytic cycle model of the accelerator, one prediction per instruction.

Constants are those of the RTL (hw/) and of the simulated memory (sim/rtl/ext_memory.v),
with the fixed per-run overhead measured on the RTL:
one k-group per cycle in the matrix engine, one output per cycle in the epilogue, one
super-beat per cycle per port set, ``READ_LATENCY`` cycles from a read request to its
first beat. Issue 7 fits these constants on RTL runs; here they are set from the design.
"""

from __future__ import annotations

from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import Opcode

READ_LATENCY = 32      # cycles, request to first beat (HBM ~100 ns at 300 MHz)
ISSUE = 4              # cycles to decode and dispatch one instruction
PIPELINE_EXTRA = 8     # epilogue stages + output write after the chain's L cascade stages
RUN_OVERHEAD = 50      # start, first fetch decode and the drain of the last STORE's writes
                       # (measured: RTL minus model on 8 single-layer programs, 50-56 cycles)


def instr_cycles(i, cfg: AccelConfig) -> int:
    """Predicted cycles of one instruction (:class:`hwflow.hw.isa.Instr`)."""
    L, sb = cfg.chain_len, cfg.beat_bytes
    if i.op in (Opcode.LOAD, Opcode.STORE):
        beats = i.b * L // sb
        # the gearbox moves one act word per cycle; a super-beat carries SB/L of them
        move = max(beats, i.b)
        return ISSUE + move + (READ_LATENCY if i.op == Opcode.LOAD else 0)
    if i.op == Opcode.MATMUL:
        compute = i.n_tiles * i.rows * i.k_words
        fetch = i.n_tiles * (cfg.param_rows + i.k_words) * cfg.beats_per_row
        # one output channel per cycle plus one cycle per (tile, row) to capture the next
        # result; a tile also reads its parameter rows (+1 to turn around), and row bytes past
        # the last tile are zero-filled one per cycle
        fill = max(0, i.words * L - i.n_tiles * cfg.chains)
        epilogue = i.n_tiles * (i.rows * (cfg.chains + 1) + cfg.param_rows + 1) + i.rows * fill
        return ISSUE + max(compute, fetch, epilogue) + READ_LATENCY + L + PIPELINE_EXTRA
    if i.op == Opcode.VADD:
        return ISSUE + i.rows * i.words * L + PIPELINE_EXTRA
    return ISSUE


def predict(program, cfg: AccelConfig) -> dict:
    """Per-instruction and total predicted cycles, plus instruction-fetch latency."""
    per = [instr_cycles(i, cfg) for i in program]
    per_sb = max(1, cfg.beat_bytes // 32)
    fetch = -(-len(program) // per_sb) * READ_LATENCY
    return {"total": sum(per) + fetch + RUN_OVERHEAD, "per_instruction": per,
            "instruction_fetch": fetch}
