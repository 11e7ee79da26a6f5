"""DSPChain and MatrixEngine against golden.int8.matmul (skewed input, bubbles, credits and
back-pressure, extremes)."""

from __future__ import annotations

import random

import numpy as np
from amaranth.sim import Simulator

from hwflow.golden import int8 as golden
from hwflow.hw.dsp_chain import DSPChain
from hwflow.hw.matrix_engine import MatrixEngine

from ._streams import recv


def _rand_int8(rng, shape, p_ext=0.2):
    v = rng.integers(-128, 128, size=shape)
    ext = rng.random(shape) < p_ext
    return np.where(ext, rng.choice([-128, 127], size=shape), v).astype(np.int8)


def _skewed(groups, L, lane_width):
    """Per-cycle lane values for skewed input: lane i of cycle c is lane i of group c - i.

    ``groups`` is a list of per-cycle groups (each a list of L lane values) or None (bubble);
    ``lane_width`` is the zero value used for lanes of bubbles / before the first group.
    """
    out = []
    for c in range(len(groups) + L):
        lanes = []
        for i in range(L):
            g = groups[c - i] if 0 <= c - i < len(groups) else None
            lanes.append(lane_width if g is None else g[i])
        out.append(lanes)
    return out


def test_chain_dot_products():
    """Skewed k-groups with bubbles (x = 0) in between; each dot product is in acc 3 cycles after
    the lane L-1 of its last group entered."""
    L = 5
    rng = np.random.default_rng(0)
    dots = [rng.integers(1, 5) for _ in range(20)]      # k-groups per dot product
    xs = [_rand_int8(rng, (k, L), 0.5) for k in dots]
    ws = [_rand_int8(rng, (k, L), 0.5) for k in dots]
    expect = [int(golden.matmul(x.reshape(1, -1), w.reshape(1, -1))[0, 0])
              for x, w in zip(xs, ws, strict=True)]
    prng = random.Random(1)
    # cycle schedule: groups with random bubbles (x = 0, w = junk, flags ignored)
    sched = []          # (x lanes, w lanes, first, last) or None
    for x, w in zip(xs, ws, strict=True):
        for j in range(len(x)):
            while prng.random() < 0.2:
                sched.append(None)
            sched.append(([int(v) for v in x[j]], [int(v) for v in w[j]], j == 0,
                          j == len(x) - 1))
    xl = _skewed([g and g[0] for g in sched], L, 0)
    wl = _skewed([g[1] if g else [prng.randint(-128, 127)] * L for g in sched], L, 0)
    dut = DSPChain(L)
    got = []

    async def tb(ctx):
        for c in range(len(xl) + 4):
            if c < len(xl):
                ctx.set(dut.x, xl[c])
                ctx.set(dut.w, wl[c])
            g = sched[c - (L - 1)] if 0 <= c - (L - 1) < len(sched) else None
            ctx.set(dut.clear, bool(g and g[2]))
            await ctx.tick()
            # results: last group's lane L-1 entered at cycle c' = c - 2 -> acc valid now (c+1)
            cl = c - 2 - (L - 1)
            if 0 <= cl < len(sched) and sched[cl] and sched[cl][3]:
                got.append(ctx.get(dut.acc))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert got == expect


def _engine_run(P, L, dots, p_idle, p_stall, seed):
    """Drive the engine the way KGroupSequencer does: skewed lanes, registered flags, a group
    flagged last only after ``credit`` was seen; random bubbles and output back-pressure."""
    rng = np.random.default_rng(seed)
    beats, expect = [], []
    for k in dots:
        x = _rand_int8(rng, (k, L))
        w = _rand_int8(rng, (P, k, L))
        expect.append(golden.matmul(x.reshape(1, -1), w.reshape(P, -1))[0].tolist())
        for j in range(k):
            beats.append(dict(x=x[j].tolist(), w=w[:, j].T.tolist(), first=j == 0,
                              last=j == k - 1))
    dut = MatrixEngine(P, L)
    got = []
    cycles = []
    prng = random.Random(seed)

    async def producer(ctx):
        hist = []           # group (or None) whose lane 0 entered at each cycle
        queue = list(beats)
        issued = None       # registered: what the "sequencer" issued last cycle
        while queue or any(h is not None for h in hist[-L:]) or issued is not None:
            hist.append(issued)
            c = len(hist) - 1
            x, w = [], []
            for i in range(L):
                g = hist[c - i] if c - i >= 0 else None
                # bubbles carry junk: the engine must zero them
                x.append(g["x"][i] if g else prng.randint(-128, 127))
                w.append(g["w"][i] if g else [prng.randint(-128, 127)] * P)
            ctx.set(dut.x, x)
            ctx.set(dut.w, w)
            ctx.set(dut.valid, issued is not None)
            ctx.set(dut.first, bool(issued and issued["first"]))
            ctx.set(dut.last, bool(issued and issued["last"]))
            credit = ctx.get(dut.credit)
            nxt = None
            if queue and prng.random() >= p_idle and (not queue[0]["last"] or credit):
                nxt = queue.pop(0)
            await ctx.tick()
            issued = nxt
        ctx.set(dut.valid, 0)

    async def consumer(ctx):
        st = {}
        res = await recv(ctx, dut.o, len(dots), random.Random(seed + 1), p_stall, st)
        got.extend([list(r) for r in res])
        cycles.append(st["cycles"])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer, background=True)
    sim.add_testbench(consumer)
    sim.run()
    return got, expect, cycles[0], len(beats)


def test_engine_matches_golden_with_backpressure():
    got, expect, _, _ = _engine_run(3, 4, [1, 2, 5, 1, 3, 7, 2, 1, 1, 4], 0.25, 0.4, 5)
    assert got == expect


def test_engine_extremes_and_full_rate():
    """All -128 x -128 over 16 groups of 4 (max magnitude), one group per cycle."""
    P, L = 2, 4
    dots = [16, 16, 1, 16]
    got, expect, cycles, nbeats = _engine_run(P, L, dots, 0.0, 0.0, 9)
    assert got == expect
    # one k-group per cycle: total = groups + pipeline latency (L + 2) + the producer's flag
    # register (1, as in KGroupSequencer) + the result FIFO's write-to-read latency (1) + slack
    assert cycles <= nbeats + L + 6
