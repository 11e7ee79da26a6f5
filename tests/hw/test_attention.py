"""AttentionUnit (ATTN) against golden.llm.attention, bit for bit, with a real ActivationBuffer
and a memory model with latency, request backpressure and gaps in the read data."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from hwflow.golden import llm
from hwflow.hw.attention import ATTN_BLOCK, EXP2_ROM, AttentionUnit
from hwflow.hw.config import AccelConfig

from ._lint import assert_lints_clean
from ._memory import UnitHarness, stream_memory

# L = 4: super-beat 16 B = 4 words (a head can straddle beats); L = 16: super-beat 32 B = 2 words.
CFG4 = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, act_depth=256)
CFG16 = AccelConfig(chains=2, chain_len=16, mem_ports=1, port_bytes=32, act_depth=128)
# L = 8 with a 96 B super-beat: 12 words per beat, not a power of two
CFG8 = AccelConfig(chains=12, chain_len=8, mem_ports=3, port_bytes=32, act_depth=128)


def test_exp2_rom_matches_golden():
    assert ATTN_BLOCK == llm.ATTN_BLOCK
    assert list(EXP2_ROM) == [int(v) for v in llm.EXP2_LUT]


@dataclass
class _Case:
    heads: int
    kv_heads: int
    hd: int
    pos: int
    rows: int
    kv_pad: int = 0                 # extra super-beats per cache row (kv_stride > minimal)
    fill: str = "random"            # random | min (all -128) | zero_q | onehot
    seed: int = 0
    smul: int = 0
    sshift: int = 0
    omul: int = 0
    oshift: int = 0
    extra: dict = field(default_factory=dict)


def _build(cfg: AccelConfig, c: _Case):
    """Tensors, memory image, activation words and instruction of one case, and the golden."""
    L, SB = cfg.chain_len, cfg.beat_bytes
    rng = np.random.default_rng(c.seed)
    hdw = -(-c.hd // L)
    n_max = c.pos + c.rows
    kv_stride = -(-(c.kv_heads * hdw * L) // SB) + c.kv_pad
    q_words = c.heads * hdw + 1          # one spare word per row: must stay untouched

    def rand(shape):
        return rng.integers(-128, 128, size=shape, dtype=np.int64)

    q = rand((c.rows, c.heads * c.hd))
    k = rand((n_max, c.kv_heads * c.hd))
    v = rand((n_max, c.kv_heads * c.hd))
    smul = c.smul or int(rng.integers(8000, 40000))
    sshift = c.sshift or int(rng.integers(14, 19))
    # omul / 2**oshift ~ 2**-15 (o is a Q15 mean of v): 0.7 .. 1.4 times v
    omul = c.omul or int(rng.integers(24000, 45000))
    oshift = c.oshift or 30
    if c.fill == "min":
        q[:], k[:], v[:] = -128, -128, -128
    elif c.fill == "zero_q":
        q[:] = 0
    elif c.fill == "onehot":
        smul, sshift = 65535, 0
    want = llm.attention(q, k, v, c.pos, c.heads, c.kv_heads, c.hd, smul, sshift, omul, oshift)

    def pad_heads(x, heads):            # [r, heads*hd] -> [r, heads*hdw*L], zero lanes
        out = np.zeros((x.shape[0], heads, hdw * L), dtype=np.int64)
        out[:, :, :c.hd] = x.reshape(x.shape[0], heads, c.hd)
        return out.reshape(x.shape[0], -1)

    # memory: K at beat 3, V after it; bytes of other kv heads and row padding are garbage
    k_base = 3
    v_base = k_base + n_max * kv_stride + 5
    image = bytearray(rng.integers(0, 256, size=(v_base + n_max * kv_stride + 4) * SB,
                                   dtype=np.uint8).tobytes())
    for base, x in ((k_base, k), (v_base, v)):
        xp = pad_heads(x, c.kv_heads).astype(np.int8)
        for j in range(n_max):
            a = (base + j * kv_stride) * SB
            image[a:a + xp.shape[1]] = xp[j].tobytes()

    # activation buffer: q rows at word 5, output rows after them (pre-filled with garbage)
    q_addr = 5
    out_addr = q_addr + c.rows * q_words + 2
    words = {}
    qp = pad_heads(q, c.heads).astype(np.int8)
    for b in range(c.rows):
        for wi in range(q_words):
            raw = (qp[b, wi * L:(wi + 1) * L].tobytes() if wi < c.heads * hdw
                   else rng.integers(0, 256, size=L, dtype=np.uint8).tobytes())
            words[q_addr + b * q_words + wi] = int.from_bytes(raw, "little")
            words[out_addr + b * q_words + wi] = int(rng.integers(0, 1 << 62))
    assert out_addr + c.rows * q_words <= cfg.act_depth

    w = [0x09 | (oshift << 16), k_base, q_addr | (out_addr << 16), q_words | (c.rows << 16),
         v_base, c.heads | (c.kv_heads << 8) | (hdw << 16) | (kv_stride << 24),
         smul | (omul << 16), sshift]
    ins = int.from_bytes(struct.pack("<8I", *w), "little")
    expect = {}                          # act word -> expected value (garbage words unchanged)
    wp = pad_heads(want.astype(np.int64), c.heads).astype(np.int8)
    for b in range(c.rows):
        for wi in range(q_words):
            a = out_addr + b * q_words + wi
            expect[a] = (int.from_bytes(wp[b, wi * L:(wi + 1) * L].tobytes(), "little")
                         if wi < c.heads * hdw else words[a])
    return dict(image=image, words=words, ins=ins, expect=expect, kv_stride=kv_stride,
                hdw=hdw, k_base=k_base, v_base=v_base)


def _run(cfg: AccelConfig, cases, latency=6, p_busy=0.3, p_gap=0.2, seed=0):
    """Run the cases back to back in one simulation; returns the cycles of each (start to
    busy low) and the memory requests."""
    h = UnitHarness(cfg, AttentionUnit(cfg, max_head_dim=64))
    u = h.unit
    L = cfg.chain_len
    state = {"image": bytearray(), "sb": cfg.beat_bytes}
    log = []
    cycles = []
    mask = (1 << (8 * L)) - 1

    async def tb(ctx):
        for c in cases:
            d = _build(cfg, c)
            state["image"] = d["image"]
            for a, val in d["words"].items():
                ctx.set(h.ld_addr, a)
                ctx.set(h.ld_data, val & mask)
                ctx.set(h.ld_en, 1)
                await ctx.tick()
            ctx.set(h.ld_en, 0)
            log.clear()
            ctx.set(u.ins, d["ins"])
            ctx.set(u.pos, c.pos)
            ctx.set(u.start, 1)
            await ctx.tick()
            ctx.set(u.start, 0)
            n = 0
            while ctx.get(u.busy):
                await ctx.tick()
                n += 1
                assert n < 200_000, "ATTN did not finish"
            cycles.append(n)
            # one K and one V burst per block, nk * kv_stride beats each
            want_req = []
            for b in range(c.rows):
                for _ in range(c.heads):
                    nkeys = c.pos + b + 1
                    for j0 in range(0, nkeys, ATTN_BLOCK):
                        ln = min(ATTN_BLOCK, nkeys - j0) * d["kv_stride"]
                        want_req += [(d["k_base"] + j0 * d["kv_stride"], ln),
                                     (d["v_base"] + j0 * d["kv_stride"], ln)]
            assert log == want_req, c
            for a, exp in d["expect"].items():
                ctx.set(h.buf.b_addr, a)
                ctx.set(h.buf.b_en, 1)
                await ctx.tick()
                got = ctx.get(h.buf.b_data)
                assert got == exp & mask, (c, a, hex(got), hex(exp & mask))

    sim = Simulator(h)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.add_process(stream_memory(u.rd_req, u.rd_data, state, latency, random.Random(seed), p_busy,
                            p_gap, log))
    sim.run()
    return cycles


CASES = [
    # prefill from position 0, GQA 3:1, head padded (6 of 8 lanes at L=4)
    _Case(heads=3, kv_heads=1, hd=6, pos=0, rows=3, seed=1),
    # decode at 16 keys (one full block), GQA 2:1, 5 of 8 lanes
    _Case(heads=4, kv_heads=2, hd=5, pos=15, rows=1, seed=2),
    # 17 keys: a 1-key second block; kv_stride 2 (a padding beat per row)
    _Case(heads=4, kv_heads=2, hd=8, pos=16, rows=1, kv_pad=1, seed=3),
    # prefill chunk at position 5 (n = 6..8), one-word heads
    _Case(heads=3, kv_heads=1, hd=3, pos=5, rows=3, seed=4),
    # 40 keys (16 + 16 + 8), 3-word heads straddling super-beats at L=4, kv_stride 2
    _Case(heads=4, kv_heads=2, hd=10, pos=39, rows=1, kv_pad=1, seed=5),
    # one key (decode at position 0)
    _Case(heads=4, kv_heads=2, hd=7, pos=0, rows=1, seed=6),
    # extremes: everything -128; q = 0 (uniform softmax); huge smul (one-hot softmax)
    _Case(heads=3, kv_heads=1, hd=8, pos=14, rows=3, fill="min", seed=7),
    _Case(heads=4, kv_heads=2, hd=6, pos=30, rows=1, fill="zero_q", seed=8),
    _Case(heads=4, kv_heads=2, hd=6, pos=18, rows=2, fill="onehot", seed=9),
    # oshift 0: ((acc * recip) >> 16) * omul saturates
    _Case(heads=3, kv_heads=1, hd=4, pos=2, rows=1, omul=1, oshift=0, seed=10),
]


@pytest.mark.parametrize("cfg", [CFG4, CFG16, CFG8], ids=["L4", "L16", "L8_sb96"])
def test_attention_matches_golden(cfg):
    cases = CASES
    if cfg.chain_len == 8:
        cases = [CASES[i] for i in (0, 2, 4, 8)]
    if cfg.chain_len == 16:
        # at L = 16 the same shapes are one-word heads; add two- and three-word heads
        # (a 3-word head at word 3 straddles 2-word super-beats) and kv_stride 2
        cases = CASES + [
            _Case(heads=4, kv_heads=2, hd=20, pos=16, rows=1, kv_pad=1, seed=11),
            _Case(heads=4, kv_heads=2, hd=40, pos=3, rows=3, seed=12),
        ]
    _run(cfg, cases)


def test_attention_throughput():
    """No memory stalls: cycles per (row, head) within the docstring's formula."""
    cfg = CFG4
    c = _Case(heads=2, kv_heads=1, hd=8, pos=39, rows=1, seed=13)     # 2 words, 1 beat/row
    (cyc,) = _run(cfg, [c], latency=6, p_busy=0.0, p_gap=0.0)
    n, hdw, c_row, blocks = 40, 2, 2, 3
    per_head = cyc / c.heads
    bound = 2 * n * c_row + 10 * blocks + 45 + 2 * hdw + 10    # docstring formula + 10
    assert per_head <= bound, (per_head, bound)


def test_verilator_lint(tmp_path):
    v = verilog.convert(AttentionUnit(CFG16), name="attn")
    assert_lints_clean(tmp_path, v, "attn")
