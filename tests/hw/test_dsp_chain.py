"""DSPChain (one chain: DSP groups and reduction nodes) against hw.matrix_engine_model, at the
widest DSP group the packed multiply allows (S0 = 7) and at S0 = 4; plus the model's own rules."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from hwflow.hw.config import MAX_GROUP_LEN, AccelConfig
from hwflow.hw.dsp_chain import DSPChain
from hwflow.hw.matrix_engine_model import (
    LO_BITS,
    engine_reference,
    legal_modes,
    pack,
    selector_base,
    slice_position,
    split_packed,
)

# L = 28: 4 DSP groups of 7 slices, the longest group whose low field stays exact
# (7 * 128 * 128 = 114688 < 2**17); one super-beat of 7 x 32 B holds a 8 x 28 weight row.
CFG_28 = AccelConfig(chains=8, chain_len=28, mem_ports=7, port_bytes=32)
CFG_16 = AccelConfig(chains=1, chain_len=16, mem_ports=1, port_bytes=16)


def run_chain(cfg, dots, seed, p_idle=0.2):
    """Drive one DSPChain the way MatrixEngine does and return ``o`` after every dot product.

    ``dots``: list of ``(lgm, lgr, groups)``, groups of dicts x0, x1 (L each), w, idx (L
    each: one chain). Lane ``i``'s packed operand (the position the selector rule picks) and
    weight are ``i mod S0`` cycles late, ``en``/``first`` come ``chain.latency`` cycles after
    lane 0 and ``o`` is read the cycle after the last ``en``.
    """
    L, S0 = cfg.chain_len, cfg.group_len
    dut = DSPChain(cfg)
    lat = dut.latency
    prng = random.Random(seed)
    sched = []              # per cycle: (mode, group, first, last) or None (bubble)
    for lgm, lgr, groups in dots:
        for j, g in enumerate(groups):
            while prng.random() < p_idle:
                sched.append(None)
            sched.append(((lgm, lgr), g, j == 0, j == len(groups) - 1))
    got = []

    def at(c):
        return sched[c] if 0 <= c < len(sched) else None

    async def tb(ctx):
        for c in range(len(sched) + lat + 2):
            a, w = [], []
            for i in range(L):
                e = at(c - i % S0)
                if e:
                    (lgm, lgr), g = e[0], e[1]
                    pos = slice_position(L, lgm, lgr, i, g["idx"][i])
                    # the packed operand the selector delivers (27-bit two's complement)
                    a.append(pack(g["x0"][pos], g["x1"][pos]))
                    w.append(g["w"][i])
                else:
                    a.append(prng.randint(-2**26, 2**26 - 1))
                    w.append(prng.randint(-128, 127))
            ctx.set(dut.a, a)
            ctx.set(dut.w, w)
            e = at(c - lat)
            ctx.set(dut.en, e is not None)
            ctx.set(dut.first, bool(e and e[2]) if e else prng.randint(0, 1))
            done = at(c - lat - 1)
            if done and done[3]:
                ctx.set(dut.lgr, done[0][1])
                got.append([[ctx.get(dut.o[row][s]) for s in range(cfg.groups)]
                            for row in range(2)])
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return got


def _expect(cfg, lgm, lgr, groups):
    # a chain is one column of the engine: the reference of a one-chain engine
    ref = engine_reference(_OneChain(cfg), lgm, lgr, [g["x0"] for g in groups],
                           [g["x1"] for g in groups], [[[v] for v in g["w"]] for g in groups],
                           [[[v] for v in g["idx"]] for g in groups])
    return [[ref[row][s][0] for s in range(1 << lgr)] for row in range(2)]


class _OneChain:
    """The parameters engine_reference reads, for a single chain of ``cfg``."""

    def __init__(self, cfg):
        self.chains, self.chain_len, self.sparse = 1, cfg.chain_len, cfg.sparse


def _check(cfg, dots, seed, **kw):
    got = run_chain(cfg, dots, seed, **kw)
    assert len(got) == len(dots)
    for (lgm, lgr, groups), g in zip(dots, got, strict=True):
        assert [row[:1 << lgr] for row in g] == _expect(cfg, lgm, lgr, groups), (lgm, lgr)


def _group(L, rng, x0=None, x1=None, w=None):
    def v(c):
        return c if c is not None else rng.choice((-128, 127, rng.randint(-128, 127)))
    return dict(x0=[v(x0) for _ in range(L)], x1=[v(x1) for _ in range(L)],
                w=[v(w) for _ in range(L)], idx=[rng.randrange(16) for _ in range(L)])


def test_widest_group_extremes():
    """S0 = 7: the low field's largest magnitudes (7 * 2**14 and -7 * 128 * 127), its sign
    flipping between groups, under both signs of the high field, in every legal mode."""
    cfg = CFG_28
    assert cfg.group_len == MAX_GROUP_LEN == 7
    rng = random.Random(1)
    L = cfg.chain_len
    corners = [(-128, -128, -128), (-128, 127, 127), (127, -128, -128), (127, 127, -128),
               (-128, 0, 127), (1, -128, -1), (-1, 127, 1)]
    dots = []
    for lgm, lgr in legal_modes(L):
        groups = [_group(L, rng, *c) for c in corners] + [_group(L, rng) for _ in range(3)]
        rng.shuffle(groups)
        dots.append((lgm, lgr, groups))
    _check(cfg, dots, seed=1)


def test_chain_random_modes():
    """S0 = 4 (the U280 chain): random data and indices, all modes, random bubbles."""
    cfg = CFG_16
    rng = random.Random(2)
    dots = [(lgm, lgr, [_group(16, rng) for _ in range(rng.randint(1, 4))])
            for lgm, lgr in legal_modes(16)]
    _check(cfg, dots, seed=2)


# --- the model's own rules ------------------------------------------------------------------------

def test_legal_modes():
    named = {"dense": (0, 0), "1:2": (1, 1), "2:4": (2, 1), "1:4": (2, 2), "4:8": (3, 1),
             "2:8": (3, 2), "4:16": (4, 2)}
    assert set(named.values()) <= set(legal_modes(16))
    assert len(legal_modes(16)) == 12          # M in 1..16, r in 1..4, N >= 1
    assert len(legal_modes(8)) == 9 and len(legal_modes(4)) == 6
    assert legal_modes(2) == [(0, 0), (1, 0), (1, 1)]          # G = 2: r <= 2
    assert (3, 0) not in legal_modes(28)        # 8 does not divide 28
    assert legal_modes(16, sparse=False) == [(0, 0)]


def test_split_packed_recovers_both_sums():
    """``P = lo + hi * 2**18`` with ``|lo| < 2**17`` splits back exactly, at both borders
    (``|hi| < 2**29``: the 48-bit P; a DSP group's hi is below 7 * 2**14)."""
    rng = random.Random(3)
    los = [0, 1, -1, 2**17 - 1, -(2**17)] + [rng.randint(-(2**17), 2**17 - 1) for _ in range(200)]
    his = [0, 1, -1, 7 * 2**14, -7 * 128 * 127, 2**29 - 1, -(2**29) + 1]
    for lo in los:
        for hi in his + [rng.randint(-(2**29) + 1, 2**29 - 1)]:
            assert split_packed(lo + (hi << LO_BITS)) == (lo, hi)


@pytest.mark.parametrize("L", [4, 8, 16, 28])
def test_selector_positions_cover_each_group_once(L):
    """In every mode, the (base, idx < M) pairs of a segment's slices address each group of
    the word N times, and a segment's N slices of a group share the group's base."""
    for lgm, lgr in legal_modes(L):
        M, r = 1 << lgm, 1 << lgr
        S = L // r
        for s in range(r):
            bases = [selector_base(L, lgm, lgr, i) for i in range(s * S, (s + 1) * S)]
            assert sorted(bases) == sorted(b * M for b in range(L // M) for _ in range(M // r))
