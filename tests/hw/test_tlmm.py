"""TernaryLookupMatmul (TMATMUL) against golden.ternary + golden.int8.requantize, bit for bit,
with a real ActivationBuffer and a memory model with latency, request backpressure and gaps in
the read data."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from hwflow.golden import int8, ternary
from hwflow.hw.config import AccelConfig
from hwflow.hw.contract import tlmm_epilogue_lanes
from hwflow.hw.isa import FLAG_RELU, FLAG_RESIDUAL, Instr, Opcode
from hwflow.hw.tlmm import (
    ACC_BITS,
    GROUP_BITS,
    TLMM_BURST,
    TernaryLookupMatmul,
    table_entries,
)
from hwflow.mapping import cycles
from hwflow.mapping.ternary_format import block_layout, pack_ternary_block

from ._lint import assert_lints_clean
from ._memory import UnitHarness, stream_memory

# L = 4: super-beat 16 B (128 bits): records of 4..140 bits, several per beat (KR = 32 at
# G = 2, T = Q = 1), one per beat, or two beats per record (G = 4, T = 4, Q = 5: 140 bits).
CFG4 = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, act_depth=256)
# L = 8 with a 96 B super-beat: 12 parameter records per beat and KR = 768 // RB records per
# beat, neither a power of two (sequential dividers).
CFG8 = AccelConfig(chains=12, chain_len=8, mem_ports=3, port_bytes=32, act_depth=256)
# the KV260's super-beat: four 16 B HP ports (T = 12, Q = 8: a 480-bit record per 512-bit beat)
CFGKV = AccelConfig(chains=4, chain_len=16, mem_ports=4, port_bytes=16, act_depth=256)
ACC_DEPTH = 40


def test_group_bits_match_golden():
    assert GROUP_BITS == ternary.GROUP_BITS


def _counter(sig, state):
    """Count the cycles in which ``sig`` is high (sampled before each clock edge)."""

    async def proc(ctx):
        async for _, _, v in ctx.tick().sample(sig):
            state["lookups"] += int(v)

    return proc


@dataclass
class _Case:
    rows: int
    K: int
    n_out: int
    relu: bool = False
    residual: bool = False
    fill: str = "random"        # random | groups (zero/+1/-1 groups) | satx (x = -128/127)
    m_zero: tuple = ()          # rows whose m is 0
    x_pad: int = 0              # extra words per x row
    w_pad: int = 0              # extra words per out row
    shift_adj: int = 0          # < 0: outputs saturate more often
    k_zero: bool = False        # k_groups = 0 (K = 0)
    small: bool | None = None   # small m and mult (shift <= ~16); default: when RESIDUAL
    shift: int | None = None    # force the shift (0, 1: the rounding and window edge cases)
    seed: int = 0


def _build(cfg: AccelConfig, G, T, Q, c: _Case, R: int = 1, S: int = 1):
    L, SB = cfg.chain_len, cfg.beat_bytes
    rng = np.random.default_rng(c.seed)
    K, N, rows = (0 if c.k_zero else c.K), c.n_out, c.rows
    t = rng.integers(-1, 2, size=(N, K)).astype(np.int8)
    if c.fill == "groups":
        # whole groups all 0, all +1, all -1 (indices 13/26/0 at G = 3) in a random pattern
        kg = -(-K // G)
        pat = rng.integers(0, 4, size=(N, kg))
        for n in range(N):
            for g in range(kg):
                if pat[n, g] < 3:
                    t[n, g * G:(g + 1) * G] = pat[n, g] - 1
    x = rng.integers(-128, 128, size=(rows, K))
    if c.fill == "satx":
        x = rng.choice([-128, 127], size=(rows, K))
    # residual cases: small m and mult keep shift <= ~16 so res * res_mult (u16) matters
    small = c.residual if c.small is None else c.small
    mvals = rng.integers(1, 9 if small else 1 << 14, size=rows)
    for r in c.m_zero:
        mvals[r] = 0
    res = rng.integers(-128, 128, size=(rows, N))
    idx = ternary.encode_groups(t, G)
    acc = ternary.lookup_matmul(x, idx, G) if K else np.zeros((rows, N), np.int64)
    assert np.array_equal(acc, x.astype(np.int64) @ t.astype(np.int64).T)
    am = acc * mvals[:, None]
    top = max(1, int(np.abs(am).max()))
    bias = rng.integers(-top, top + 1, size=N)
    mtop = 256 if small else 1 << 16
    mult = rng.integers(1, mtop, size=N)
    shift = int(np.clip((2 * top * mtop).bit_length() - 8 + c.shift_adj, 0, 47))
    if c.shift is not None:
        shift = c.shift
    res_mult = int(min(0xFFFF, rng.uniform(0.3, 1.0) * 2 ** shift))
    want = int8.requantize(am, bias, mult, shift, c.relu, res if c.residual else None, res_mult)

    x_words = -(-K // L) + c.x_pad
    words = -(-N // L) + c.w_pad
    m_addr = 2
    x_addr = m_addr + -(-2 * rows // L) + 1
    res_addr = x_addr + rows * x_words + 1
    out_addr = res_addr + rows * words + 1
    end = out_addr + rows * words + 1
    assert end <= cfg.act_depth

    def rand_word():
        return int(rng.integers(0, 1 << 62)) & ((1 << (8 * L)) - 1)

    words_init = {a: rand_word() for a in range(end + 1)}      # garbage everywhere
    mb = bytearray(np.asarray(mvals, "<u2").tobytes())

    def put(addr, data):
        for i, byte in enumerate(data):
            wa, lane = addr + i // L, i % L
            v = words_init[wa] & ~(0xFF << (8 * lane))
            words_init[wa] = v | (byte << (8 * lane))

    put(m_addr, mb)
    for b in range(rows):
        put(x_addr + b * x_words, x[b].astype(np.int8).tobytes())
        put(res_addr + b * words, res[b].astype(np.int8).tobytes())

    wgt = 3
    block = pack_ternary_block(t, bias, mult, G, T, Q, SB)
    image = bytearray(rng.integers(0, 256, size=wgt * SB, dtype=np.uint8).tobytes())
    image += block + rng.integers(0, 256, size=4 * SB, dtype=np.uint8).tobytes()

    kg = -(-K // G)
    flags = (FLAG_RELU if c.relu else 0) | (FLAG_RESIDUAL if c.residual else 0)
    ins = int.from_bytes(Instr(Opcode.TMATMUL, flags, shift, ext=wgt, a=x_addr, out=out_addr,
                               b=res_addr, rows=rows, k_groups=kg, n_out=N, x_words=x_words,
                               words=words, mult_b=res_mult, m_addr=m_addr).encode(), "little")
    expect = dict(words_init)
    for b in range(rows):
        row = np.zeros(words * L, np.int8)
        row[:N] = want[b]
        for i in range(words):
            expect[out_addr + b * words + i] = int.from_bytes(row[i * L:(i + 1) * L].tobytes(),
                                                              "little")
    lay = block_layout(N, K, G, T, Q, SB)

    def bursts(a, n):
        return [(a + o, min(TLMM_BURST, n - o)) for o in range(0, n, TLMM_BURST)]

    # the index stream once per group of S passes of R rows; every pass looks the records up
    groups = [min(S * R, rows - b) for b in range(0, rows, S * R)]
    passes = sum(-(-n // R) for n in groups)
    want_req = bursts(wgt, lay["param_beats"])
    for _ in groups:
        want_req += bursts(wgt + lay["param_beats"], lay["stream_beats"])
    return dict(image=image, words=words_init, ins=ins, expect=expect, want_req=want_req,
                lookups=passes * lay["n_chunks"] * lay["n_blocks"], lay=lay, words_n=words)


def _run(cfg, G, T, Q, cases, latency=8, p_busy=0.3, p_gap=0.2, seed=0, acc_depth=ACC_DEPTH,
         E=None, R=1, S=1):
    """Run the cases back to back in one simulation; returns the cycles of each."""
    h = UnitHarness(cfg, TernaryLookupMatmul(cfg, G, T, Q, acc_depth, E, R=R, S=S))
    u = h.unit
    state = {"image": bytearray(), "sb": cfg.beat_bytes, "lookups": 0}
    log, cycles = [], []

    async def tb(ctx):
        for c in cases:
            d = _build(cfg, G, T, Q, c, R, S)
            state["image"] = d["image"]
            for a, val in d["words"].items():
                ctx.set(h.ld_addr, a)
                ctx.set(h.ld_data, val)
                ctx.set(h.ld_en, 1)
                await ctx.tick()
            ctx.set(h.ld_en, 0)
            log.clear()
            state["lookups"] = 0
            ctx.set(u.ins, d["ins"])
            ctx.set(u.start, 1)
            await ctx.tick()
            ctx.set(u.start, 0)
            n = 0
            while ctx.get(u.busy):
                await ctx.tick()
                n += 1
                assert n < 100_000, "TMATMUL did not finish"
            cycles.append(n)
            assert log == d["want_req"], c
            assert state["lookups"] == d["lookups"], (c, state["lookups"], d["lookups"])
            for a, exp in d["expect"].items():
                ctx.set(h.buf.b_addr, a)
                ctx.set(h.buf.b_en, 1)
                await ctx.tick()
                got = ctx.get(h.buf.b_data)
                assert got == exp, (c, a, hex(got), hex(exp))

    sim = Simulator(h)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.add_process(stream_memory(u.rd_req, u.rd_data, state, latency, random.Random(seed), p_busy,
                            p_gap, log))
    sim.add_process(_counter(u.lookup, state))
    sim.run()
    return cycles


CASES = [
    # odd K (not a multiple of G or T*G), n_out not a multiple of Q, 3 rows, RELU
    _Case(rows=3, K=23, n_out=13, relu=True, seed=1),
    # no RESIDUAL at a small shift: the res bytes (garbage here) must not leak in
    _Case(rows=2, K=14, n_out=9, small=True, seed=8),
    # one row, residual, padded row strides, a row with m = 0 is covered below
    _Case(rows=1, K=37, n_out=29, residual=True, x_pad=1, w_pad=1, seed=2),
    # zero / +1 / -1 groups, saturating activations, m = 0 rows, saturating outputs
    _Case(rows=3, K=17, n_out=7, fill="groups", m_zero=(1,), residual=True, relu=True, seed=3),
    _Case(rows=2, K=20, n_out=11, fill="satx", m_zero=(0,), shift_adj=-6, seed=4),
    # tiny: one channel, one group
    _Case(rows=1, K=1, n_out=1, seed=5),
    # k_groups = 0: acc = 0, out = requantize(bias...)
    _Case(rows=2, K=5, n_out=6, k_zero=True, residual=True, seed=6),
    # shift 0 (no rounding) and 1, 2: results near and past the int8 range
    _Case(rows=2, K=5, n_out=6, k_zero=True, residual=True, shift=0, seed=9),
    _Case(rows=2, K=4, n_out=9, k_zero=True, residual=True, shift=1, seed=10),
    _Case(rows=1, K=3, n_out=7, k_zero=True, residual=True, relu=True, shift=2, seed=11),
    # n_out = 5 (1 mod E = 2, 4) in padded rows: a lane group of outputs and padding, then
    # whole padding groups and words
    _Case(rows=2, K=10, n_out=5, residual=True, relu=True, w_pad=2, seed=14),
    # 7 rows: several passes and groups of passes, the last ones partial
    _Case(rows=7, K=23, n_out=13, relu=True, residual=True, seed=15),
]

CONFIGS = [
    # (cfg, G, T, Q, R, S): R rows a pass, S passes a fetch of the records (the cases have 1
    # to 7 rows: whole and partial passes and groups)
    (CFG4, 2, 1, 1, 1, 3), (CFG4, 3, 2, 4, 1, 1), (CFG4, 4, 4, 2, 1, 2), (CFG4, 3, 3, 5, 2, 2),
    (CFG4, 4, 4, 5, 2, 1),
    (CFG4, 3, 8, 8, 2, 3),    # 320-bit records of 3 beats
    (CFGKV, 3, 12, 8, 4, 4),  # the KV260's engine: a 480-bit record per 512-bit super-beat
    (CFG8, 2, 3, 5, 1, 1), (CFG8, 3, 4, 2, 3, 1), (CFG8, 4, 2, 4, 3, 2), (CFG8, 3, 1, 1, 1, 1),
]
CONFIG_IDS = [f"L{c.chain_len}_G{g}_T{t}_Q{q}_R{r}_S{s}" for c, g, t, q, r, s in CONFIGS]


@pytest.mark.parametrize("cfg,G,T,Q,R,S", CONFIGS, ids=CONFIG_IDS)
def test_tlmm_matches_golden(cfg, G, T, Q, R, S):
    _run(cfg, G, T, Q, CASES, seed=G * 10 + T + Q, R=R, S=S)


THROUGHPUT = [
    # (cfg, G, T, Q, R, S): records per beat KR / beats per record BPR, rows a pass, passes a
    # fetch
    (CFG4, 3, 2, 4, 1, 1),     # 40-bit records, KR = 3 per 128-bit beat
    (CFG4, 3, 3, 5, 1, 2),     # 75-bit records, KR = 1
    (CFG4, 4, 4, 5, 2, 2),     # 140-bit records: BPR = 2 beats each (G = 4: half tables)
    (CFG8, 3, 4, 2, 3, 1),     # 96 B beats: KR = 19, RPB = 12 (sequential dividers)
    (CFG4, 2, 1, 1, 1, 3),     # 4-bit records, KR = 32
    (CFGKV, 3, 12, 8, 4, 4),   # the KV260's engine: 480-bit records, KR = 1, 4 rows a pass
]


def _shape(cfg, G, T, Q):
    """(build cycles of a chunk, beats per record) of the engine (the model's terms)."""
    rb, sbb = T * Q * GROUP_BITS[G], 8 * cfg.beat_bytes
    return T * G + table_entries(G) + 2, -(-rb // sbb)


def _stream_bound(cfg, G, T, Q, **kw):
    """A case whose chunks stream longer than the next one builds (two beats more), in four
    chunks (the last one group), so the builder waits for the streamer to free a bank."""
    build, bpr = _shape(cfg, G, T, Q)
    blocks = build // bpr + 2
    return _Case(K=3 * T * G + 1, n_out=Q * blocks - (Q > 1), **kw)


@pytest.mark.parametrize("cfg,G,T,Q,R,S", THROUGHPUT,
                         ids=[f"L{c.chain_len}_G{g}_T{t}_Q{q}_R{r}_S{s}"
                              for c, g, t, q, r, s in THROUGHPUT])
def test_tlmm_cycles_match_the_model(cfg, G, T, Q, R, S):
    """No memory stalls (latency 32 = cycles.READ_LATENCY, no gaps): the busy cycles equal
    mapping.cycles.tmatmul_cycles, the docstring's formula, for one and two rows (and, with
    R > 1 rows a pass or S > 1 passes a fetch, a whole group and one more row), with the
    chunks' lookups fewer than their build cycles (the builder bounds the pass), more (the
    lookups bound it), and no chunks (k_groups = 0)."""
    cfg = replace(cfg, act_depth=2048)             # groups of up to 16 rows
    build, bpr = _shape(cfg, G, T, Q)
    big = _stream_bound(cfg, G, T, Q, rows=1, seed=7)
    acc_depth = max(ACC_DEPTH, big.n_out)
    cases = [_Case(rows=rows, K=60, n_out=37, seed=7) for rows in (1, 2)] + [
        _Case(rows=2, K=60, n_out=3, seed=7),
        big, replace(big, rows=2),
        _Case(rows=2, K=5, n_out=6, k_zero=True, seed=7)]
    if R * S > 1:
        cases += [_Case(rows=R * S + 1, K=60, n_out=37, seed=7), replace(big, rows=R * S + 1)]
    assert -(-3 // Q) * bpr < build < -(-big.n_out // Q) * bpr
    for c in cases:
        (cyc,) = _run(cfg, G, T, Q, [c], latency=cycles.READ_LATENCY, p_busy=0.0, p_gap=0.0,
                      acc_depth=acc_depth, R=R, S=S)
        d = _build(cfg, G, T, Q, c, R, S)
        ins = Instr(Opcode.TMATMUL, rows=c.rows, k_groups=d["lay"]["k_groups"], n_out=c.n_out,
                    words=d["words_n"])
        tcfg = replace(cfg, tlmm=True, tlmm_g=G, tlmm_t=T, tlmm_q=Q, tlmm_acc_depth=acc_depth,
                       tlmm_rows=R, tlmm_passes=S)
        assert cyc == cycles.tmatmul_cycles(ins, tcfg), (c, cyc)


@pytest.mark.parametrize("cfg,G,T,Q,R,S", CONFIGS, ids=CONFIG_IDS)
def test_tlmm_stream_bound_matches_golden(cfg, G, T, Q, R, S):
    """Chunks that stream longer than the next one builds, with memory stalls: the builder
    fills a bank only once the streamer has released it (two chunks back)."""
    cases = [_stream_bound(cfg, G, T, Q, rows=2, relu=True, residual=True, seed=12),
             _stream_bound(cfg, G, T, Q, rows=1, fill="groups", m_zero=(0,), seed=13)]
    _run(cfg, G, T, Q, cases, seed=G + T + Q, acc_depth=max(c.n_out for c in cases), R=R,
         S=S)


def test_tlmm_epilogue_lanes():
    """E outputs per cycle: the largest power of two up to 4 dividing L, Q and SB/8 (the
    engine's default, which the cycle model reads); a smaller E gives the same bytes."""
    assert [tlmm_epilogue_lanes(c.chain_len, q, c.beat_bytes) for c, q in
            ((CFG4, 1), (CFG4, 4), (CFG4, 5), (CFG8, 4), (CFG8, 2), (CFGKV, 8))] == [
                1, 2, 1, 4, 2, 4]
    for E in (1, 2):
        _run(CFG8, 3, 4, 4, [CASES[2], CASES[-1]], seed=E, E=E)


def test_tlmm_full_and_half_tables():
    """G = 2, 3 store the whole 3**G-entry table (one 32-deep LUT-RAM either way), G = 4 the
    41-entry half with the mirror."""
    assert [table_entries(g) for g in (2, 3, 4)] == [9, 27, 41]
    assert ACC_BITS == {2: 25, 3: 26, 4: 26}


def test_verilator_lint(tmp_path):
    v = verilog.convert(TernaryLookupMatmul(CFG8, 3, 4, 2, 64, R=3, S=2), name="tlmm")
    assert_lints_clean(tmp_path, v, "tlmm")
