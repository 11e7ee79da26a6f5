"""MATMUL throughput in the Amaranth simulator, at a reduced size with the target's ratios
(SB = P*L: the weight stream brings one memory row per cycle; 32-cycle read latency). The
1024 x 1024 numbers of the full engine are measured in Verilator by the sim layer.

Every cycle the engine takes one k-group of a row pair (``MPE_BUSY`` counts them); a group is
worth ``2 * P * L * r`` dense-equivalent MACs, ``2 * r`` per DSP slice (docs/architecture.md,
"Ideal rate"). Cycles of the MATMUL phase are measured as the difference of two runs of the
same program with and without the MATMUL (instruction fetch, weight latency and drain included).
"""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import Instr, Opcode
from hwflow.mapping.weight_format import DENSE_INT8, LayerFormat

from ._program import act_rows, matmul_expect, random_layer
from .test_top import run_accel

# R = 2 parameter rows per tile (L = 16), one memory row per cycle (SB = row_bytes = 32 B); the
# ring holds two tiles' reservation of every layer below (K = 1024 dense: 2 x 66 entries)
CFG = AccelConfig(chains=2, chain_len=16, mem_ports=1, port_bytes=32, act_depth=256,
                  weight_depth=160)


def _run(rows, K, N, fmt=DENSE_INT8, with_matmul=True):
    cfg = CFG
    L, SB = cfg.chain_len, cfg.beat_bytes
    rng = np.random.default_rng(rows)
    lay = random_layer(cfg, rng, K, N, fmt, bias_range=1000, mult_range=(0, 65536))
    kw, nt, ow = lay.k_words, lay.n_tiles, N // L
    x = rng.integers(-128, 128, size=(rows, K)).astype(np.int8)
    shift = 24
    xb = act_rows(x, kw, L)
    PROG, X = 0, 4       # 4 instructions = 128 B = 4 super-beats
    WGT = X + len(xb) // SB + 1
    OUT = WGT + len(lay.block) // SB + 1
    out_bytes = rows * ow * L
    img = bytearray((OUT + out_bytes // SB + 2) * SB)
    prog = [
        Instr(Opcode.LOAD, ext=X, a=0, b=len(xb) // L),
    ] + [
        Instr(Opcode.MATMUL, flags=lay.flags, shift=shift, ext=WGT, a=0, out=rows * kw,
              rows=rows, k_words=kw, n_tiles=nt, n=N, words=ow, **lay.mode),
    ][:int(with_matmul)] + [
        Instr(Opcode.STORE, ext=OUT, a=rows * kw, b=out_bytes // L),
        Instr(Opcode.END),
    ]
    code = b"".join(i.encode() for i in prog)
    img[:len(code)] = code
    img[X * SB:X * SB + len(xb)] = xb
    img[WGT * SB:WGT * SB + len(lay.block)] = lay.block
    regs = run_accel(cfg, img, PROG, latency=32, max_cycles=200000)
    if with_matmul:
        y = matmul_expect(x, lay.w, lay.bias, lay.mult, shift, False)
        got = np.frombuffer(bytes(img[OUT * SB:OUT * SB + out_bytes]), dtype=np.int8)
        assert np.array_equal(got.reshape(rows, -1), y)
        assert regs["MPE_BUSY_LO"] == -(-rows // 2) * kw * nt
    return regs


def _phase(rows, K, N, fmt=DENSE_INT8):
    regs = _run(rows, K, N, fmt)
    base = _run(rows, K, N, fmt, with_matmul=False)
    return regs, regs["CYCLES_LO"] - base["CYCLES_LO"]


@pytest.mark.parametrize("rows,K,N", [(1, 1024, 64), (16, 64, 64)])
def test_matmul_keeps_the_engine_busy(rows, K, N):
    """Dense MATMUL feeds the engine a k-group in >= 90 % of its cycles: GEMV (rows = 1) is
    bound by the weight stream (R parameter rows per tile: 64 of 66 entries are k-groups),
    batched rows by nothing (each tile's entries are reused by 8 row pairs)."""
    regs, phase = _phase(rows, K, N)
    util = regs["MPE_BUSY_LO"] / phase
    assert util >= 0.9, (util, phase, regs)


def test_sparse_2_4_reaches_the_ideal_rate():
    """A 2:4 layer (8 rows, K = 256, N = 64) computes >= 90 % of the ideal ``2 * r`` dense MACs
    per DSP slice per cycle (r = 2). Its tiles are 1.5 memory rows per k-group (index rows),
    which the reuse over 4 row pairs hides; the epilogues write 2 * r * P = 8 channels per
    result of 16 cycles."""
    rows, K, N, fmt = 8, 256, 64, LayerFormat(2, 4, 8)
    regs, phase = _phase(rows, K, N, fmt)
    ideal = 2 * fmt.r * CFG.dsp_slices * phase
    eff = rows * K * N / ideal
    assert eff >= 0.9, (eff, phase, regs)
