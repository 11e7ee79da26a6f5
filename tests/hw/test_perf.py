"""MAC utilization of MATMUL in the Amaranth simulator, at a reduced size with the same ratios
as the target (SB = P*L, so the weight stream needs one super-beat per k-group; 32-cycle read
latency). The 1024 x 1024 numbers are measured in Verilator by the sim layer."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import Instr, Opcode

from ._program import act_rows, matmul_expect, pack_weights
from .test_top import run_accel

CFG = AccelConfig(chains=8, chain_len=4, mem_ports=2, port_bytes=16, act_depth=1024,
                  weight_depth=288)


def _run(rows, K, N, with_matmul=True):
    cfg = CFG
    P, L, SB = cfg.chains, cfg.chain_len, cfg.beat_bytes
    rng = np.random.default_rng(rows)
    kw, nt, ow = K // L, N // P, N // L
    x = rng.integers(-128, 128, size=(rows, K)).astype(np.int8)
    w = rng.integers(-128, 128, size=(N, K)).astype(np.int8)
    bias = rng.integers(-1000, 1000, size=N)
    mult = rng.integers(0, 65536, size=N)
    shift = 24
    wblk = pack_weights(cfg, w, bias, mult, kw, nt)
    xb = act_rows(x, kw, L)
    PROG, X = 0, 8       # 4 instructions = 128 B = 8 super-beats
    WGT = X + len(xb) // SB + 1
    OUT = WGT + len(wblk) // SB + 1
    out_bytes = rows * ow * L
    img = bytearray((OUT + out_bytes // SB + 2) * SB)
    prog = [
        Instr(Opcode.LOAD, ext=X, a=0, b=len(xb) // L),
    ] + [
        Instr(Opcode.MATMUL, shift=shift, ext=WGT, a=0, out=rows * kw, rows=rows, k_words=kw,
              n_tiles=nt, n=N, words=ow),
    ][:int(with_matmul)] + [
        Instr(Opcode.STORE, ext=OUT, a=rows * kw, b=out_bytes // L),
        Instr(Opcode.END),
    ]
    code = b"".join(i.encode() for i in prog)
    img[:len(code)] = code
    img[X * SB:X * SB + len(xb)] = xb
    img[WGT * SB:WGT * SB + len(wblk)] = wblk
    regs = run_accel(cfg, img, PROG, latency=32, max_cycles=200000)
    if with_matmul:
        y = matmul_expect(x, w, bias, mult, shift, False)
        got = np.frombuffer(bytes(img[OUT * SB:OUT * SB + out_bytes]), dtype=np.int8)
        assert np.array_equal(got.reshape(rows, -1), y)
        assert regs["MPE_BUSY_LO"] == rows * kw * nt
    return regs


@pytest.mark.parametrize("rows,K,N", [(1, 512, 64), (16, 64, 64)])
def test_matmul_utilization(rows, K, N):
    """MATMUL keeps the engine busy >= 90 % of its own cycles (instruction fetch, weight latency
    and drain included): cycles are measured with and without the MATMUL in the program."""
    regs = _run(rows, K, N)
    base = _run(rows, K, N, with_matmul=False)
    phase = regs["CYCLES_LO"] - base["CYCLES_LO"]
    util = regs["MPE_BUSY_LO"] / phase
    assert util >= 0.9, (util, phase, regs)
