"""DSPChain and MatrixEngine against golden.int8.matmul (bubbles, back-pressure, extremes)."""

from __future__ import annotations

import random

import numpy as np
from amaranth.sim import Simulator

from hwflow.golden import int8 as golden
from hwflow.hw.dsp_chain import DSPChain
from hwflow.hw.matrix_engine import MatrixEngine

from ._streams import recv, send


def _rand_int8(rng, shape, p_ext=0.2):
    v = rng.integers(-128, 128, size=shape)
    ext = rng.random(shape) < p_ext
    return np.where(ext, rng.choice([-128, 127], size=shape), v).astype(np.int8)


def test_chain_dot_products():
    L = 5
    rng = np.random.default_rng(0)
    dots = [rng.integers(1, 5) for _ in range(20)]      # k-groups per dot product
    xs = [_rand_int8(rng, (k, L), 0.5) for k in dots]
    ws = [_rand_int8(rng, (k, L), 0.5) for k in dots]
    expect = [int(golden.matmul(x.reshape(1, -1), w.reshape(1, -1))[0, 0])
              for x, w in zip(xs, ws, strict=True)]
    dut = DSPChain(L)
    got = []
    prng = random.Random(1)

    async def tb(ctx):
        groups = [(x[j], w[j], j == 0, j == len(x) - 1) for x, w in zip(xs, ws, strict=True)
                  for j in range(len(x))]
        groups += [None] * (L + 8)      # drain
        for g in groups:
            while True:     # retry a group until it is taken (valid and ce in the same cycle)
                ce = prng.random() < 0.85
                valid = g is not None and prng.random() < 0.8
                ctx.set(dut.ce, ce)
                ctx.set(dut.valid, valid)
                if g is not None:
                    ctx.set(dut.x, [int(v) for v in g[0]])
                    ctx.set(dut.w, [int(v) for v in g[1]])
                    ctx.set(dut.first, g[2])
                    ctx.set(dut.last, g[3])
                _, _, done, acc = await ctx.tick().sample(dut.acc_valid, dut.acc)
                if done and ce:
                    got.append(acc)
                if g is None or (valid and ce):
                    break
        ctx.set(dut.valid, 0)
        ctx.set(dut.ce, 1)
        for _ in range(L + 4):
            _, _, done, acc = await ctx.tick().sample(dut.acc_valid, dut.acc)
            if done:
                got.append(acc)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert got == expect


def _engine_run(P, L, dots, p_idle, p_stall, seed):
    rng = np.random.default_rng(seed)
    beats, expect = [], []
    for k in dots:
        x = _rand_int8(rng, (k, L))
        w = _rand_int8(rng, (P, k, L))
        expect.append(golden.matmul(x.reshape(1, -1), w.reshape(P, -1))[0].tolist())
        for j in range(k):
            beats.append(dict(x=x[j].tolist(), w=w[:, j].tolist(), first=j == 0,
                              last=j == k - 1))
    dut = MatrixEngine(P, L)
    got = []
    cycles = []

    async def producer(ctx):
        await send(ctx, dut.i, beats, random.Random(seed), p_idle)

    async def consumer(ctx):
        st = {}
        res = await recv(ctx, dut.o, len(dots), random.Random(seed + 1), p_stall, st)
        got.extend([list(r) for r in res])
        cycles.append(st["cycles"])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
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
    # one k-group per cycle: total = groups + pipeline latency (L + 2) + a little slack
    assert cycles <= nbeats + L + 4
