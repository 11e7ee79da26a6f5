"""MatrixEngine against hw.matrix_engine_model: every legal dense / N:M mode, packed-multiply
extremes, odd row counts, bubbles, mode changes between back-to-back dot products, credits
and back-pressure, latency, and a Verilator lint of the generated Verilog."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from hwflow.golden import int8 as golden
from hwflow.hw.config import AccelConfig
from hwflow.hw.matrix_engine import RESULT_FIFO_DEPTH, MatrixEngine
from hwflow.hw.matrix_engine_model import (
    dense_reference,
    engine_reference,
    legal_modes,
    mode_shape,
    pack_sparse_weights,
)

from ._lint import assert_lints_clean


def _cfg(P, L, sparse=True):
    # one memory port of L bytes: the smallest valid AccelConfig around a P x L engine
    return AccelConfig(chains=P, chain_len=L, mem_ports=1, port_bytes=L, sparse=sparse)


def _i8(rng, p_ext=0.25):
    """Random int8, with the extremes -128 / 127 (the packed multiply's corners) often."""
    return rng.choice((-128, 127)) if rng.random() < p_ext else rng.randint(-128, 127)


class Dot:
    """One dot product: its mode, k-groups (unskewed lane data) and expected result."""

    def __init__(self, cfg, lgm, lgr, groups, pair=True, expect=None):
        self.lgm, self.lgr, self.pair, self.groups = lgm, lgr, pair, groups
        self.r = 1 << lgr
        ref = engine_reference(cfg, lgm, lgr, [g["x0"] for g in groups],
                               [g["x1"] for g in groups], [g["w"] for g in groups],
                               [g["idx"] for g in groups], pair)
        if expect is not None:
            assert ref == expect        # the model agrees with the dense matmul too
        self.expect = ref

    def check(self, got):
        """Rows that exist, segments < r (the rest is don't-care)."""
        rows = 2 if self.pair else 1
        return [[got[row][s] for s in range(self.r)] for row in range(rows)] == \
            self.expect[:rows]


def _random_dot(cfg, rng, lgm, lgr, k, pair=True, p_ext=0.25):
    P, L = cfg.chains, cfg.chain_len
    groups = [dict(x0=[_i8(rng, p_ext) for _ in range(L)],
                   x1=[_i8(rng, p_ext) for _ in range(L)],
                   w=[[_i8(rng, p_ext) for _ in range(P)] for _ in range(L)],
                   # any 4-bit index: the bits >= lgm must be ignored
                   idx=[[rng.randrange(16) for _ in range(P)] for _ in range(L)])
              for _ in range(k)]
    return Dot(cfg, lgm, lgr, groups, pair)


def _sparse_matrix_dot(cfg, rng, lgm, lgr, k):
    """A dense N:M-sparse weight matrix packed by the tile format; expect x @ w.T."""
    P, L = cfg.chains, cfg.chain_len
    M, r, N, _ = mode_shape(L, lgm, lgr)
    K = k * L
    w = []
    for _ in range(P * r):
        row = []
        for _ in range(K // M):
            keep = set(rng.sample(range(M), rng.randint(0, N)))
            row += [_i8(rng) if q in keep else 0 for q in range(M)]
        w.append(row)
    x = [[_i8(rng) for _ in range(K)] for _ in range(2)]
    wg, ig = pack_sparse_weights(cfg, lgm, lgr, w)
    groups = [dict(x0=x[0][kw * L:(kw + 1) * L], x1=x[1][kw * L:(kw + 1) * L], w=wg[kw],
                   idx=ig[kw]) for kw in range(k)]
    expect = dense_reference(cfg, lgr, x, w)
    if (lgm, lgr) == (0, 0):
        # dense: the same as golden's int8 matmul
        gold = golden.matmul(np.array(x, dtype=np.int8), np.array(w, dtype=np.int8))
        assert [[list(map(int, gold[row]))] for row in range(2)] == expect
    return Dot(cfg, lgm, lgr, groups, True, expect)


def run_engine(cfg, dots, seed, p_idle=0.0, p_stall=0.0, stall_first=0):
    """Drive the engine as the k-group sequencer does and collect its results.

    Flags are registered (a group is decided a cycle before it enters), a ``last`` group is
    only decided while ``credit`` is high, x0/x1 are unskewed and w/idx are skewed (lane ``i``
    ``i mod S0`` cycles late). Bubbles carry junk data, flags and mode. ``stall_first`` holds
    the consumer's ready low for that many cycles before it starts.

    Returns ``(results, {"cycles": consumer cycles until the last result,
    "issued_last_in_stall": last groups sent while the consumer was held, "extra": 0,
    "latency": the engine's documented latency})``.
    """
    P, L, S0 = cfg.chains, cfg.chain_len, cfg.group_len
    dut = MatrixEngine(cfg)
    prng = random.Random(seed)
    beats = []
    for d in dots:
        for j, g in enumerate(d.groups):
            beats.append(dict(g, first=j == 0, last=j == len(d.groups) - 1, pair=d.pair,
                              lgm=d.lgm, lgr=d.lgr))
    got, stats = [], {"latency": dut.latency}

    def junk_lanes():
        return [[prng.randint(-128, 127) for _ in range(P)] for _ in range(L)]

    async def producer(ctx):
        hist = []           # group (or None) whose lane 0 entered at each cycle
        queue = list(beats)
        issued = None       # registered: what the "sequencer" decided last cycle
        lasts_in_stall = 0
        while queue or issued is not None or any(h is not None for h in hist[-S0:]):
            hist.append(issued)
            c = len(hist) - 1
            g = issued
            jl = junk_lanes()
            w = [[0] * P for _ in range(L)]
            idx = [[0] * P for _ in range(L)]
            for i in range(L):
                src = hist[c - i % S0] if c - i % S0 >= 0 else None
                w[i] = src["w"][i] if src else jl[i]
                idx[i] = src["idx"][i] if src else [prng.randrange(16) for _ in range(P)]
            x1 = g["x1"] if g and g["pair"] else [prng.randint(-128, 127) for _ in range(L)]
            ctx.set(dut.x0, g["x0"] if g else [prng.randint(-128, 127) for _ in range(L)])
            ctx.set(dut.x1, x1)
            ctx.set(dut.w, w)
            ctx.set(dut.idx, idx)
            ctx.set(dut.valid, g is not None)
            for f in ("first", "last", "pair"):
                ctx.set(getattr(dut, f), g[f] if g else prng.randint(0, 1))
            ctx.set(dut.lgm, g["lgm"] if g else prng.randrange(8))
            ctx.set(dut.lgr, g["lgr"] if g else prng.randrange(4))
            if g and g["last"] and c < stall_first:
                lasts_in_stall += 1
            credit = ctx.get(dut.credit)
            nxt = None
            if queue and prng.random() >= p_idle and (not queue[0]["last"] or credit):
                nxt = queue.pop(0)
            await ctx.tick()
            issued = nxt
        ctx.set(dut.valid, 0)
        stats["issued_last_in_stall"] = lasts_in_stall

    async def consumer(ctx):
        crng = random.Random(seed + 1)
        ticks = 0
        while len(got) < len(dots):
            ticks += 1
            ready = ticks > stall_first and crng.random() >= p_stall
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if ready and valid:
                got.append(payload)
        stats["cycles"] = ticks
        # nothing more may come out (a result written twice would)
        extra = 0
        for _ in range(2 * S0 + 8):
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            extra += valid
        stats["extra"] = extra

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer, background=True)
    sim.add_testbench(consumer)
    # a watchdog instead of a hang when results are lost: every group and bubble takes a
    # cycle, each result at most a few more
    budget = stall_first + 8 * (len(beats) + 10 * len(dots) + 50)
    sim.run_until(budget * 1e-8)
    assert len(got) == len(dots), f"{len(dots) - len(got)} results lost (or engine hung)"
    assert stats["extra"] == 0, "more results than dot products"
    return got, stats


def _as_lists(payload, cfg):
    return [[[int(payload[row][s][p]) for p in range(cfg.chains)] for s in range(cfg.groups)]
            for row in range(2)]


def _check(cfg, dots, seed, **kw):
    res, stats = run_engine(cfg, dots, seed, **kw)
    got = [_as_lists(r, cfg) for r in res]
    bad = [n for n, (d, g) in enumerate(zip(dots, got, strict=True)) if not d.check(g)]
    assert not bad, (f"dot products {bad} differ, e.g. mode {dots[bad[0]].lgm, dots[bad[0]].lgr}:"
                     f" got {got[bad[0]]}, expected {dots[bad[0]].expect}")
    return stats


@pytest.mark.parametrize("L", [4, 8, 16])
def test_model_matches_dense_matmul(L):
    """hw.matrix_engine_model alone: the engine reference of packed N:M tiles equals the dense
    matmul (and golden's int8 matmul for dense), for every legal mode."""
    cfg = _cfg(3, L)
    rng = random.Random(L)
    for lgm, lgr in legal_modes(L):
        for _ in range(3):
            _sparse_matrix_dot(cfg, rng, lgm, lgr, rng.randint(1, 4))      # asserts inside


@pytest.mark.parametrize("P,L", [(2, 16), (3, 8), (2, 4)])
def test_every_mode_random_lanes(P, L):
    """All legal modes, back to back and in random order, random weights and 4-bit indices,
    random bubbles and output stalls; the mode changes with the first group of each dot."""
    cfg = _cfg(P, L)
    rng = random.Random(L)
    modes = legal_modes(L) * 2
    rng.shuffle(modes)
    dots = [_random_dot(cfg, rng, lgm, lgr, rng.randint(1, 4), pair=rng.random() < 0.8)
            for lgm, lgr in modes]
    _check(cfg, dots, seed=L, p_idle=0.2, p_stall=0.3)


@pytest.mark.parametrize("P,L", [(2, 16), (2, 8), (2, 4)])
def test_sparse_matrices_match_dense_matmul(P, L):
    """N:M-sparse weight matrices packed by the documented tile format: the engine computes the
    plain matmul (checks the selector rule against the format, not against itself)."""
    cfg = _cfg(P, L)
    rng = random.Random(100 + L)
    dots = [_sparse_matrix_dot(cfg, rng, lgm, lgr, rng.randint(1, 3))
            for lgm, lgr in legal_modes(L)]
    _check(cfg, dots, seed=7, p_idle=0.1)


def _const_dot(cfg, lgm, lgr, k, x0, x1, w, idx=0, pair=True):
    P, L = cfg.chains, cfg.chain_len
    groups = [dict(x0=[x0] * L, x1=[x1] * L, w=[[w] * P for _ in range(L)],
                   idx=[[idx] * P for _ in range(L)]) for _ in range(k)]
    return Dot(cfg, lgm, lgr, groups, pair)


def test_packed_multiply_extremes():
    """Corners of the packed multiply's low field and its sign correction: maximal positive and
    negative low sums (+-S0 * 2**14), a negative low sum under a positive high sum and the
    reverse, low sums of -1 / +1, zero rows, and mixed-sign groups with extremes."""
    cfg = _cfg(2, 16)
    rng = random.Random(3)
    dots = []
    for lgm, lgr in [(0, 0), (2, 1), (4, 2)]:
        for x0, x1, w in [(-128, -128, -128), (-128, 127, 127), (127, -128, -128),
                          (-128, 127, -128), (127, 127, 127), (1, -1, -1), (-1, 1, -1),
                          (0, -128, 127), (-128, 0, 127), (1, 0, -1)]:
            dots.append(_const_dot(cfg, lgm, lgr, 3, x0, x1, w))
        # alternating signs across lanes: low sums near 0 from both sides
        for _ in range(4):
            groups = []
            for _ in range(3):
                s = rng.choice((-1, 1))
                groups.append(dict(
                    x0=[s * (-1) ** i * rng.choice((127, 1)) for i in range(16)],
                    x1=[rng.choice((127, -128, 0, 1)) for _ in range(16)],
                    w=[[rng.choice((127, -128, 1, -1)) for _ in range(2)] for _ in range(16)],
                    idx=[[rng.randrange(16) for _ in range(2)] for _ in range(16)]))
            dots.append(Dot(cfg, lgm, lgr, groups))
    _check(cfg, dots, seed=3)


def test_long_dot_products_grow_the_accumulators():
    """-128 x -128 in every slice for 600 k-groups: 2**14 * 16 * 600 ~ 2**27 per row, far past
    the 18-bit low field (an accumulator cut to fewer bits would fail); then the negative
    extreme, and a 1:4 dot product (one DG per segment)."""
    cfg = _cfg(1, 16)
    dots = [_const_dot(cfg, 0, 0, 600, -128, -128, -128),
            _const_dot(cfg, 0, 0, 600, 127, -128, 127),
            _const_dot(cfg, 2, 2, 400, -128, 127, -128, idx=3)]
    assert dots[0].expect[1][0][0] == 600 * 16 * 2**14
    _check(cfg, dots, seed=4)


def test_odd_rows_bubbles_and_junk():
    """pair = 0 (x1 junk; only row b is defined), bubbles with junk flags and mode between the
    groups of a dot product."""
    cfg = _cfg(2, 8)
    rng = random.Random(5)
    dots = [_random_dot(cfg, rng, *rng.choice(legal_modes(8)), rng.randint(1, 6),
                        pair=bool(n % 2)) for n in range(16)]
    _check(cfg, dots, seed=5, p_idle=0.5)


def test_dense_only_engine():
    """``sparse=False``: no selectors; idx and the mode inputs are ignored."""
    cfg = _cfg(2, 16, sparse=False)
    rng = random.Random(6)
    dots = [_random_dot(cfg, rng, 0, 0, rng.randint(1, 4)) for _ in range(6)]
    _check(cfg, dots, seed=6, p_idle=0.2, p_stall=0.2)


@pytest.mark.parametrize("P,L", [(2, 16), (2, 4)])
def test_full_rate_and_latency(P, L):
    """Back-to-back groups at one per cycle, mode changes included: the credits never throttle
    dot products of >= 4 groups, and the last result is on ``o`` with the documented latency
    (last group's lane 0 at c -> o.valid at c + S0 + 6)."""
    cfg = _cfg(P, L)
    rng = random.Random(8)
    ks = [4, 5, 4, 6, 4, 4]
    modes = legal_modes(L)
    dots = [_random_dot(cfg, rng, *modes[n % len(modes)], k) for n, k in enumerate(ks)]
    stats = _check(cfg, dots, seed=8)
    # the first group enters at cycle 1 (the producer registers its flags), the last at
    # sum(ks); the consumer counts the cycle it samples in, hence + 1
    assert stats["cycles"] == sum(ks) + stats["latency"] + 1


@pytest.mark.parametrize("L,latency", [(16, 10), (8, 8), (4, 7)])
def test_latency_of_a_single_group(L, latency):
    """Lane 0 of the only group at cycle 1 -> o.valid at 1 + S0 + 6 (documented)."""
    cfg = _cfg(2, L)
    stats = _check(cfg, [_random_dot(cfg, random.Random(1), 0, 0, 1)], seed=1)
    assert stats["latency"] == cfg.group_len + 6 == latency
    assert stats["cycles"] == 1 + latency + 1


def test_credit_holds_results_while_consumer_stalls():
    """Short dot products (one group each) against a consumer that is stalled for 60 cycles,
    then slow: no more than RESULT_FIFO_DEPTH results are started while nothing is taken,
    and none is lost."""
    cfg = _cfg(2, 8)
    rng = random.Random(9)
    dots = [_random_dot(cfg, rng, *rng.choice(legal_modes(8)), 1) for _ in range(14)]
    stats = _check(cfg, dots, seed=9, p_stall=0.6, stall_first=60)
    assert stats["issued_last_in_stall"] == RESULT_FIFO_DEPTH


@pytest.mark.parametrize("P,L,sparse", [(2, 16, True), (3, 4, False)])
def test_verilator_lint(tmp_path, P, L, sparse):
    v = verilog.convert(MatrixEngine(_cfg(P, L, sparse)), name="mpe")
    assert_lints_clean(tmp_path, v, "mpe")
