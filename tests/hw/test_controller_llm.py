"""The transformer instructions through the whole accelerator in the Amaranth simulator:
LOAD/STORE with POS, GATHER (and its ERROR 3), and one RMSNORM, ROPE, SILUMUL and ATTN on the
real vector and attention units, checked against ``golden.llm``; the POS register; the
transformer opcodes on an engine built without them (ERROR 1)."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwflow.golden import llm
from hwflow.hw.axi_lite import REG
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import (
    ERROR_GATHER_RANGE,
    ERROR_ILLEGAL_OPCODE,
    FLAG_POS,
    Instr,
    Opcode,
)
from hwflow.hw.top import Accelerator
from hwflow.sim.isa_model import IsaModel

from ._memory import port_process
from .test_top import axi_read, axi_write

# P = 2, L = 8, SB = 16 B (two act words a super-beat, four token ids a super-beat)
CFG = AccelConfig(chains=2, chain_len=8, mem_ports=2, port_bytes=8, act_depth=64,
                  weight_depth=32, transformer=True, attn_heads=2)
CFG_NO_TF = replace(CFG, transformer=False)
# SB = 2 B: a token id spans two super-beats
CFG_TINY = AccelConfig(chains=1, chain_len=2, mem_ports=1, port_bytes=2, act_depth=64,
                       weight_depth=64, sparse=False, int4=False, transformer=True)
SB, L = CFG.beat_bytes, CFG.chain_len


def run(cfg, image: bytearray, prog_base: int = 0, pos: int = 0, latency: int = 7,
        p_busy: float = 0.2, max_cycles: int = 40000) -> dict:
    """Write POS and PROG_BASE, start, wait for irq; return the registers (and POS read back)."""
    dut = Accelerator(cfg)
    regs = {}

    async def host(ctx):
        c = dut.ctrl
        await axi_write(ctx, c, REG["POS"], pos)
        await axi_write(ctx, c, REG["PROG_BASE"], prog_base)
        await axi_write(ctx, c, REG["AP_CTRL"], 1)
        n = 0
        while not ctx.get(dut.irq):
            await ctx.tick()
            n += 1
            assert n < max_cycles, "accelerator did not finish"
        for name in ("AP_CTRL", "RETIRED", "ERROR", "POS", "CYCLES_LO"):
            regs[name] = await axi_read(ctx, c, REG[name])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(host)
    rng = random.Random(3)
    for j in range(cfg.mem_ports):
        sim.add_process(port_process(dut.mem[j], image, cfg.beat_bytes, cfg.port_bytes, j,
                                     latency, rng, p_busy))
    sim.run()
    return regs


def _image(prog: list, nbeats: int = 400, seed: int = 0, sb: int = SB) -> bytearray:
    rng = np.random.default_rng(seed)
    img = bytearray(rng.integers(0, 256, nbeats * sb, dtype=np.uint8).tobytes())
    code = b"".join(i.encode() for i in prog)
    img[:len(code)] = code
    return img


def sb(img, addr: int, n: int = 1) -> bytes:
    return bytes(img[addr * SB:(addr + n) * SB])


def test_load_store_with_pos():
    """ext + POS * pos_stride when flag POS is set, plain ext (stride ignored) when not."""
    prog = [Instr(Opcode.LOAD, flags=FLAG_POS, ext=40, a=0, b=4, pos_stride=3),
            Instr(Opcode.STORE, flags=FLAG_POS, ext=100, a=0, b=4, pos_stride=2),
            Instr(Opcode.LOAD, ext=60, a=4, b=2, pos_stride=7),
            Instr(Opcode.STORE, ext=130, a=4, b=2, pos_stride=9),
            Instr(Opcode.END)]
    img = _image(prog)
    orig = bytes(img)
    regs = run(CFG, img, pos=5)
    assert regs["ERROR"] == 0 and regs["RETIRED"] == 5 and regs["POS"] == 5
    assert sb(img, 100 + 10, 2) == orig[55 * SB:57 * SB]
    assert sb(img, 130) == orig[60 * SB:61 * SB]
    # nothing else was written
    changed = {i // SB for i in range(len(img)) if img[i] != orig[i]}
    assert changed <= {110, 111, 130}


def _gather_case(ids, table_rows=10, stride=3, cfg=CFG):
    rows, n = len(ids), cfg.beat_bytes // cfg.chain_len        # a table row: one super-beat
    prog = [Instr(Opcode.GATHER, ext=64, a=4, n=n, rows=rows, ids=200, stride=stride,
                  table_rows=table_rows),
            Instr(Opcode.STORE, ext=220, a=4, b=n * rows),
            Instr(Opcode.END)]
    img = _image(prog, seed=len(ids), sb=cfg.beat_bytes)
    raw = np.array(ids, dtype="<u4").tobytes()
    img[200 * cfg.beat_bytes:200 * cfg.beat_bytes + len(raw)] = raw
    return img, bytes(img)


@pytest.mark.parametrize("cfg", [CFG, CFG_TINY], ids=["SB16", "SB2"])
def test_gather_rows_from_ids(cfg):
    """Five rows (ids across two super-beats at SB = 16, two super-beats an id at SB = 2; one
    id repeated), each a table row of one super-beat."""
    ids = [3, 0, 9, 3, 7]
    img, orig = _gather_case(ids, cfg=cfg)
    regs = run(cfg, img)
    assert regs["ERROR"] == 0 and regs["RETIRED"] == 3
    b = cfg.beat_bytes
    want = b"".join(orig[(64 + 3 * t) * b:(64 + 3 * t + 1) * b] for t in ids)
    assert bytes(img[220 * b:(220 + len(ids)) * b]) == want


def test_gather_out_of_range_stops_with_error_3():
    img, orig = _gather_case([1, 4, 10, 2])          # row 2: id 10 >= table_rows = 10
    regs = run(CFG, img)
    assert regs["ERROR"] == ERROR_GATHER_RANGE
    assert regs["RETIRED"] == 0                        # stopped before retiring the GATHER
    assert regs["AP_CTRL"] & 0b110 == 0b110
    assert bytes(img) == orig                          # the STORE never ran


@pytest.mark.parametrize("slots,hdw,pos,rows,extra", [(2, 3, 5, 2, 0), (1, 1, 2, 3, 0),
                                                       (2, 1, 0, 1, 1)])
def test_kvstore_writes_head_major_position_blocks(slots, hdw, pos, rows, extra):
    """KVSTORE at POS: word d * slots + k of each row's position block is act word
    a + b * words + k * hd_words + d, the block's padding zero; equal to the ISA model."""
    words = slots * hdw + 1                            # a spare word between rows
    wpb = SB // L
    pst = -(-slots * hdw // wpb) + extra
    prog = [Instr(Opcode.LOAD, ext=60, a=0, b=rows * words + (-rows * words) % wpb),
            Instr(Opcode.KVSTORE, flags=FLAG_POS, ext=100, a=0, words=words, rows=rows,
                  pos_stride=pst, slots=slots, hd_words=hdw),
            Instr(Opcode.END)]
    img = _image(prog, seed=11)
    want = IsaModel(CFG, bytes(img), pos=pos)
    want.run(0)
    regs = run(CFG, img, pos=pos)
    assert regs["ERROR"] == 0 and regs["RETIRED"] == len(prog)
    assert bytes(img) == want.mem.tobytes()
    lo = (100 + pos * pst) * SB
    block = np.frombuffer(bytes(img[lo:lo + pst * SB]), np.int8)
    act = np.frombuffer(sb(img, 60, 8), np.int8).reshape(-1, L)
    for d in range(hdw):
        for k in range(slots):
            np.testing.assert_array_equal(block[(d * slots + k) * L:(d * slots + k + 1) * L],
                                          act[k * hdw + d])
    assert not block[slots * hdw * L:].any()


def test_transformer_opcodes_illegal_without_transformer():
    for ins in (Instr(Opcode.GATHER, ext=64, a=0, n=2, rows=1, ids=200, stride=1,
                      table_rows=10),
                Instr(Opcode.LOAD, flags=FLAG_POS, ext=40, a=0, b=2, pos_stride=1),
                Instr(Opcode.RMSNORM, a=0, out=2, rows=1, n=8, words=1, mult_b=1),
                Instr(Opcode.ATTN, ext=40, v_ext=50, a=0, out=2, q_words=1, rows=1, lanes=1,
                      grp=1, slots=1, hd_words=1, pos_sb=1),
                Instr(Opcode.KVSTORE, flags=FLAG_POS, ext=40, a=0, words=1, rows=1,
                      pos_stride=1, slots=1, hd_words=1)):
        img = _image([Instr(Opcode.LOAD, ext=40, a=0, b=2), ins, Instr(Opcode.END)])
        regs = run(CFG_NO_TF, img, pos=1)
        assert regs["ERROR"] == ERROR_ILLEGAL_OPCODE, ins.op
        assert regs["RETIRED"] == 1


def test_vector_and_attention_instructions_match_golden():
    """LOAD a 36-word activation block; RMSNORM, SILUMUL, ROPE, ATTN (POS = 3: 4 and 5 keys,
    2 query heads on 1 kv head); STORE it; every word checked against golden.llm."""
    rng = np.random.default_rng(5)
    pos, rows = 3, 2
    K_SB, V_SB, IN_SB, OUT_SB = 100, 120, 140, 180
    # act words (2 per row of 16 B): x 0, y 4, g 8, u 12, z 16, rope 20, cs 24, q 28, o 32
    eps, r_mult, r_shift = 100, 1000, 34
    s_mult, s_shift = 256, 17
    hd, heads = 6, 2
    smul, sshift, omul, oshift = 3, 6, 1, 15
    prog = [Instr(Opcode.LOAD, ext=IN_SB, a=0, b=36),
            Instr(Opcode.RMSNORM, shift=r_shift, a=0, out=4, rows=rows, eps=eps, n=13,
                  words=2, mult_b=r_mult),
            Instr(Opcode.SILUMUL, shift=s_shift, a=8, b=12, out=16, rows=rows, n=11, words=2,
                  mult_b=s_mult),
            Instr(Opcode.ROPE, a=20, cs=24, cs_words=2, rows=rows, heads=heads, hd=hd,
                  head_stride=L, words=2),
            Instr(Opcode.ATTN, shift=oshift, ext=K_SB, v_ext=V_SB, a=28, out=32, q_words=2,
                  rows=rows, lanes=2, grp=2, slots=1, hd_words=1, pos_sb=1, smul=smul,
                  omul=omul, sshift=sshift),
            Instr(Opcode.STORE, ext=OUT_SB, a=0, b=36),
            Instr(Opcode.END)]
    img = _image(prog, seed=9)
    act = rng.integers(-128, 128, size=(36, L)).astype(np.int8)
    table = llm.rope_table(8, llm.default_inv_freq(hd, 10000.0))
    for b in range(rows):                              # cs rows: hd/2 cos, hd/2 sin (int16)
        t = np.zeros(2 * L, dtype=np.uint8)
        t[:2 * hd] = np.frombuffer(table[pos + b].astype("<i2").tobytes(), np.uint8)
        act[24 + 2 * b:26 + 2 * b] = t.view(np.int8).reshape(2, L)
    img[IN_SB * SB:IN_SB * SB + act.nbytes] = act.tobytes()
    kc = rng.integers(-128, 128, size=(pos + rows, 2 * L)).astype(np.int8)   # 1 SB a row
    vc = rng.integers(-128, 128, size=(pos + rows, 2 * L)).astype(np.int8)
    img[K_SB * SB:K_SB * SB + kc.nbytes] = kc.tobytes()
    img[V_SB * SB:V_SB * SB + vc.nbytes] = vc.tobytes()

    want = act.astype(np.int8).copy()
    row = lambda a, b: want[a + 2 * b:a + 2 * b + 2].reshape(-1)        # noqa: E731
    for b in range(rows):
        y = np.zeros(2 * L, np.int8)
        y[:13] = llm.rmsnorm(row(0, b)[:13], eps, r_mult, r_shift)
        want[4 + 2 * b:6 + 2 * b] = y.reshape(2, L)
        z = np.zeros(2 * L, np.int8)
        z[:11] = llm.silu_mul(row(8, b)[:11], row(12, b)[:11], s_mult, s_shift)
        want[16 + 2 * b:18 + 2 * b] = z.reshape(2, L)
        r = row(20, b).copy()
        for h in range(heads):
            seg = r[h * L:h * L + hd]
            r[h * L:h * L + hd] = llm.rope(seg[None], table[pos + b][None], 1, hd)[0]
        want[20 + 2 * b:22 + 2 * b] = r.reshape(2, L)
        n = pos + b + 1
        for h in range(2):
            q = want[28 + 2 * b + h]
            want[32 + 2 * b + h] = llm.attention_row(q, kc[:n, :L], vc[:n, :L], smul, sshift,
                                                     omul, oshift)
    regs = run(CFG, img, pos=pos, max_cycles=60000)
    assert regs["ERROR"] == 0 and regs["RETIRED"] == len(prog)
    got = np.frombuffer(sb(img, OUT_SB, 18), np.int8).reshape(36, L)
    for name, w0, w1 in (("x", 0, 4), ("rmsnorm", 4, 8), ("g/u", 8, 16), ("silumul", 16, 20),
                         ("rope", 20, 24), ("cs/q", 24, 32), ("attn", 32, 36)):
        np.testing.assert_array_equal(got[w0:w1], want[w0:w1], err_msg=name)
