"""The ternary instructions through the whole accelerator in the Amaranth simulator:
ABSQUANT on the vector unit and TMATMUL on the TLMM engine, checked against
``golden.ternary`` (absmax_quant, encode_groups, lookup_matmul) and ``golden.int8.requantize``;
the TLMM_BUSY register; which units an engine has (ERROR 1 for TMATMUL without ``tlmm``,
ABSQUANT without a vector unit, ROPE on a TLMM-only engine)."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwflow.golden import int8 as gint8
from hwflow.golden import ternary
from hwflow.hw.axi_lite import REG
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import (
    ERROR_ILLEGAL_OPCODE,
    FLAG_GAMMA,
    FLAG_RELU,
    FLAG_RESIDUAL,
    Instr,
    Opcode,
)
from hwflow.hw.top import Accelerator
from hwflow.mapping.ternary_format import pack_ternary_block

from ._memory import port_process
from .test_top import axi_read, axi_write

# P = 2, L = 8, SB = 16 B; a TLMM-only engine (the vector unit comes with tlmm)
CFG = AccelConfig(chains=2, chain_len=8, mem_ports=2, port_bytes=8, act_depth=64,
                  weight_depth=32, tlmm=True, tlmm_g=3, tlmm_t=2, tlmm_q=2, tlmm_acc_depth=16)
CFG_PLAIN = replace(CFG, tlmm=False)                     # no vector unit, no TLMM
CFG_TF = replace(CFG, tlmm=False, transformer=True)      # vector unit, no TLMM
SB, L = CFG.beat_bytes, CFG.chain_len

def run(cfg, image: bytearray, latency: int = 7, p_busy: float = 0.2,
        max_cycles: int = 60000) -> dict:
    """PROG_BASE 0, start, wait for irq; return the registers."""
    dut = Accelerator(cfg)
    regs = {}

    async def host(ctx):
        c = dut.ctrl
        await axi_write(ctx, c, REG["PROG_BASE"], 0)
        await axi_write(ctx, c, REG["AP_CTRL"], 1)
        n = 0
        while not ctx.get(dut.irq):
            await ctx.tick()
            n += 1
            assert n < max_cycles, "accelerator did not finish"
        for name in ("AP_CTRL", "RETIRED", "ERROR", "CYCLES_LO", "TLMM_BUSY_LO",
                     "TLMM_BUSY_HI", "MPE_BUSY_LO"):
            regs[name] = await axi_read(ctx, c, REG[name])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(host)
    rng = random.Random(4)
    for j in range(cfg.mem_ports):
        sim.add_process(port_process(dut.mem[j], image, cfg.beat_bytes, cfg.port_bytes, j,
                                     latency, rng, p_busy))
    sim.run()
    return regs


def _image(prog: list, nbeats: int = 200, seed: int = 0) -> bytearray:
    rng = np.random.default_rng(seed)
    img = bytearray(rng.integers(0, 256, nbeats * SB, dtype=np.uint8).tobytes())
    code = b"".join(i.encode() for i in prog)
    img[:len(code)] = code
    return img


def pack_block(t: np.ndarray, bias, mult, G: int, T: int, Q: int, sb: int) -> bytes:
    """TMATMUL weight block, read off docs/architecture.md ("TMATMUL weight block"), as an
    independent check of ``mapping.ternary_format.pack_ternary_block``: 8-byte
    parameter records padded to whole super-beats, then the index stream (per chunk of T
    groups, per block of Q channels, entry ``qq * T + tt``; ZERO_INDEX padding), each record
    packed ``GROUP_BITS[G]`` bits an index: ``k = 8*sb // RB`` records per super-beat at bit
    offsets ``i * RB`` (zero after), or ``ceil(RB / (8*sb))`` whole beats per record."""
    n_out = t.shape[0]
    rec = np.zeros((n_out, 8), dtype=np.uint8)
    rec[:, :4] = np.asarray(bias, dtype="<i4").view(np.uint8).reshape(n_out, 4)
    rec[:, 4:6] = np.asarray(mult, dtype="<u2").view(np.uint8).reshape(n_out, 2)
    params = rec.tobytes()
    params += bytes(-len(params) % sb)
    idx = ternary.encode_groups(t, G)                   # [n_out, k_groups]
    kg = idx.shape[1]
    chunks, blocks = -(-kg // T), -(-n_out // Q)
    zero = (3 ** G - 1) // 2
    full = np.full((blocks * Q, chunks * T), zero, dtype=np.int64)
    full[:n_out, :kg] = idx
    records = [full[j * Q:(j + 1) * Q, c * T:(c + 1) * T].reshape(-1)      # qq * T + tt
               for c in range(chunks) for j in range(blocks)]
    rb = T * Q * ternary.GROUP_BITS[G]
    k, nbeats = max(1, 8 * sb // rb), -(-rb // (8 * sb))
    stream = b""
    for r0 in range(0, len(records), k):
        beat = 0
        for i, rec in enumerate(records[r0:r0 + k]):
            beat |= int.from_bytes(ternary.pack_indices(rec, G), "little") << (i * rb)
        stream += beat.to_bytes(nbeats * sb, "little")
    return params + stream


@pytest.mark.parametrize("G, T, Q, n_out, K", [(3, 2, 2, 5, 20), (2, 3, 1, 4, 7),
                                               (4, 1, 3, 7, 33)])
def test_doc_packer_matches_mapping(G, T, Q, n_out, K):
    rng = np.random.default_rng(G * 100 + K)
    t = rng.integers(-1, 2, size=(n_out, K)).astype(np.int8)
    bias, mult = rng.integers(-10**6, 10**6, n_out), rng.integers(1, 65536, n_out)
    got = pack_ternary_block(t, bias, mult, G, T, Q, SB)
    assert bytes(got) == pack_block(t, bias, mult, G, T, Q, SB)


def _ternary_case(seed: int = 7):
    """LOAD x, gamma and res; ABSQUANT (GAMMA, in place); TMATMUL with RELU and RESIDUAL and a
    plain one; STORE the outputs. Returns the program, the image and the expected outputs."""
    rng = np.random.default_rng(seed)
    G, T, Q = CFG.tlmm_g, CFG.tlmm_t, CFG.tlmm_q
    rows, K, N = 3, 20, 5
    kg = -(-K // G)                         # 7 groups: 4 chunks of T = 2, the last half padding
    xw, ow = -(-K // L), 1                  # 3 words a row of x, 1 a row of out / res
    X, GAM, M, RES, OUT1, OUT2 = 0, 9, 12, 13, 16, 19
    IN_SB, W_SB, OUT_SB = 100, 40, 150
    W2_SB = 70
    shift, res_mult = 22, 40000
    t = rng.integers(-1, 2, size=(N, K)).astype(np.int8)
    t[0] = 1                                # all +1, all -1 and all 0 channels
    t[1] = -1
    t[2] = 0
    bias = rng.integers(-2_000_000, 2_000_000, size=N)
    mult = rng.integers(50, 400, size=N)
    t2 = rng.integers(-1, 2, size=(N, K)).astype(np.int8)
    bias2 = rng.integers(-500_000, 500_000, size=N)
    mult2 = rng.integers(1, 300, size=N)
    block = pack_ternary_block(t, bias, mult, G, T, Q, SB)
    block2 = pack_ternary_block(t2, bias2, mult2, G, T, Q, SB)

    x = rng.integers(-128, 128, size=(rows, K))
    x[1, :4] = [-128, -128, 127, 0]
    gamma = rng.integers(-128, 128, size=K)
    gamma[0] = -128                         # row 1: -128 * -128 = 16384, the largest m
    res = rng.integers(-128, 128, size=(rows, N))
    act = np.zeros((16, L), dtype=np.int8)
    for b in range(rows):
        act[X + b * xw:X + (b + 1) * xw].reshape(-1)[:K] = x[b]
        act[RES + b].reshape(-1)[:N] = res[b]
    act[GAM:GAM + xw].reshape(-1)[:K] = gamma
    act[M] = 99                             # overwritten by ABSQUANT
    prog = [Instr(Opcode.LOAD, ext=IN_SB, a=0, b=16),
            Instr(Opcode.ABSQUANT, flags=FLAG_GAMMA, a=X, out=X, g=GAM, rows=rows, m_addr=M,
                  n=K, words=xw),
            Instr(Opcode.TMATMUL, flags=FLAG_RELU | FLAG_RESIDUAL, shift=shift, ext=W_SB,
                  a=X, out=OUT1, b=RES, rows=rows, k_groups=kg, n_out=N, x_words=xw,
                  words=ow, mult_b=res_mult, m_addr=M),
            Instr(Opcode.TMATMUL, shift=shift, ext=W2_SB, a=X, out=OUT2, rows=rows,
                  k_groups=kg, n_out=N, x_words=xw, words=ow, m_addr=M),
            Instr(Opcode.STORE, ext=OUT_SB, a=OUT1, b=6),
            Instr(Opcode.STORE, ext=OUT_SB + 3, a=M, b=2),
            Instr(Opcode.END)]
    img = _image(prog, seed=seed)
    img[IN_SB * SB:IN_SB * SB + act.nbytes] = act.tobytes()
    img[W_SB * SB:W_SB * SB + len(block)] = block
    img[W2_SB * SB:W2_SB * SB + len(block2)] = block2
    assert W_SB + len(block) // SB <= W2_SB and W2_SB + len(block2) // SB <= IN_SB

    xq, m = ternary.absmax_quant(x, gamma[None])
    assert m[1] == 16384
    idx = ternary.encode_groups(t, G)
    acc = ternary.lookup_matmul(xq, idx, G)
    np.testing.assert_array_equal(acc, xq.astype(np.int64) @ t.T.astype(np.int64))
    y1 = gint8.requantize(acc * m[:, None], bias, mult, shift, True, res=res, res_mult=res_mult)
    acc2 = ternary.lookup_matmul(xq, ternary.encode_groups(t2, G), G)
    y2 = gint8.requantize(acc2 * m[:, None], bias2, mult2, shift, False)
    want = np.zeros((6, L), dtype=np.int8)
    want[0:3, :N] = y1
    want[3:6, :N] = y2
    want_m = np.zeros(2 * L, dtype=np.uint8)
    want_m[:2 * rows] = m.astype("<u2").view(np.uint8)
    busy = 2 * rows * (-(-kg // T)) * (-(-N // Q))
    return prog, img, want, want_m, (OUT_SB, busy)


def test_absquant_then_tmatmul_match_golden():
    prog, img, want, want_m, (out_sb, busy) = _ternary_case()
    assert len(np.unique(want)) > 8, "outputs should not all saturate"
    regs = run(CFG, img)
    assert regs["ERROR"] == 0 and regs["RETIRED"] == len(prog), regs
    got = np.frombuffer(bytes(img[out_sb * SB:(out_sb + 3) * SB]), np.int8).reshape(6, L)
    np.testing.assert_array_equal(got[:3], want[:3], err_msg="TMATMUL RELU | RESIDUAL")
    np.testing.assert_array_equal(got[3:], want[3:], err_msg="TMATMUL plain")
    got_m = np.frombuffer(bytes(img[(out_sb + 3) * SB:(out_sb + 4) * SB]), np.uint8)
    np.testing.assert_array_equal(got_m[:6], want_m[:6], err_msg="ABSQUANT m")
    # T * Q lookups per (row, chunk of T groups, block of Q channels), both TMATMULs
    assert regs["TLMM_BUSY_LO"] == busy and regs["TLMM_BUSY_HI"] == 0, regs
    assert regs["MPE_BUSY_LO"] == 0


def test_absquant_on_a_transformer_engine():
    """ABSQUANT needs only the vector unit: it runs on a transformer engine without TLMM."""
    rng = np.random.default_rng(2)
    rows, K, xw = 2, 13, 2
    x = rng.integers(-128, 128, size=(rows, K))
    act = np.zeros((8, L), dtype=np.int8)
    for b in range(rows):
        act[b * xw:(b + 1) * xw].reshape(-1)[:K] = x[b]
    prog = [Instr(Opcode.LOAD, ext=100, a=0, b=8),
            Instr(Opcode.ABSQUANT, a=0, out=4, rows=rows, m_addr=8, n=K, words=xw),
            Instr(Opcode.STORE, ext=120, a=4, b=6),
            Instr(Opcode.END)]
    img = _image(prog, seed=3)
    img[100 * SB:100 * SB + act.nbytes] = act.tobytes()
    regs = run(CFG_TF, img)
    assert regs["ERROR"] == 0 and regs["RETIRED"] == 4 and regs["TLMM_BUSY_LO"] == 0
    xq, m = ternary.absmax_quant(x)
    got = np.frombuffer(bytes(img[120 * SB:122 * SB]), np.int8).reshape(rows, xw * L)
    np.testing.assert_array_equal(got[:, :K], xq)
    assert not got[:, K:].any()
    got_m = np.frombuffer(bytes(img[122 * SB:122 * SB + 2 * rows]), "<u2")
    np.testing.assert_array_equal(got_m, m)


def _tmatmul() -> Instr:
    return Instr(Opcode.TMATMUL, ext=40, a=0, out=4, rows=1, k_groups=2, n_out=2, x_words=1,
                 words=1, m_addr=6)


@pytest.mark.parametrize("cfg, ins", [
    (CFG_PLAIN, _tmatmul()),
    (CFG_TF, _tmatmul()),
    (CFG_PLAIN, Instr(Opcode.ABSQUANT, a=0, out=2, rows=1, m_addr=6, n=8, words=1)),
    (CFG_PLAIN, Instr(Opcode.SILUMUL, a=0, b=0, out=2, rows=1, n=8, words=1, mult_b=1)),
], ids=["tmatmul-plain", "tmatmul-transformer", "absquant-plain", "silumul-plain"])
def test_illegal_without_the_unit(cfg, ins):
    img = _image([Instr(Opcode.LOAD, ext=40, a=0, b=2), ins, Instr(Opcode.END)])
    regs = run(cfg, img)
    assert regs["ERROR"] == ERROR_ILLEGAL_OPCODE, ins.op
    assert regs["RETIRED"] == 1
    assert regs["AP_CTRL"] & 0b110 == 0b110


def test_rope_needs_the_transformer_on_a_tlmm_engine():
    ins = Instr(Opcode.ROPE, a=0, cs=2, cs_words=1, rows=1, heads=1, hd=2, head_stride=8,
                words=1)
    img = _image([Instr(Opcode.LOAD, ext=40, a=0, b=2), ins, Instr(Opcode.END)])
    regs = run(CFG, img)
    assert regs["ERROR"] == ERROR_ILLEGAL_OPCODE and regs["RETIRED"] == 1


def test_vitis_kernel_passes_pos_and_tlmm_busy_through():
    """POS at 0x200 of the kernel's register map reaches the accelerator's register; TLMM_BUSY
    at 0x208/0x20C reads the accelerator's (0 after reset)."""
    from hwflow.hw.axi_lite import axi_lite_signature
    from hwflow.hw.vitis_kernel import KERNEL_REG, VitisKernel

    from .test_vitis_kernel import _bundle
    from .test_vitis_kernel import axi_read as k_read
    from .test_vitis_kernel import axi_write as k_write

    dut = VitisKernel(CFG_PLAIN)
    ctrl = _bundle(dut, "s_axi_control", axi_lite_signature())
    got = {}

    async def host(ctx):
        ctx.set(dut.ap_rst_n, 0)
        for _ in range(3):
            await ctx.tick("ap")
        ctx.set(dut.ap_rst_n, 1)
        for _ in range(2):
            await ctx.tick("ap")
        await k_write(ctx, ctrl, KERNEL_REG["POS"], 0x1234_5678)
        for name in ("TLMM_BUSY_LO", "TLMM_BUSY_HI", "POS"):
            got[name] = await k_read(ctx, ctrl, KERNEL_REG[name])

    sim = Simulator(dut)
    sim.add_clock(1e-8, domain="ap")
    sim.add_testbench(host)
    sim.run()
    assert got == {"TLMM_BUSY_LO": 0, "TLMM_BUSY_HI": 0, "POS": 0x1234_5678}
    assert KERNEL_REG["TLMM_BUSY_LO"] == REG["TLMM_BUSY_LO"] == 0x208
    assert KERNEL_REG["TLMM_BUSY_HI"] == REG["TLMM_BUSY_HI"] == 0x20C
