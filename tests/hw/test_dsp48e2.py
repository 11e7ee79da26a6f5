"""DSP48E2Slice against its Python pipeline model (DSP48E2Model), and the packed multiply."""

from __future__ import annotations

import random

from amaranth import Module
from amaranth.sim import Simulator

from hwflow.hw.dsp48e2 import DSP48E2Model, DSP48E2Slice
from hwflow.hw.dsp_chain import DSP_LATENCY
from hwflow.hw.matrix_engine_model import pack, split_packed


def test_slice_matches_model():
    rng = random.Random(3)
    m = Module()
    s0 = DSP48E2Slice(cascade=False)
    s1 = DSP48E2Slice(cascade=True)
    m.submodules.s0, m.submodules.s1 = s0, s1
    m.d.comb += s1.pcin.eq(s0.pcout)
    models = [DSP48E2Model(False), DSP48E2Model(True)]

    async def tb(ctx):
        for _ in range(600):
            ce = int(rng.random() < 0.8)
            ins = []
            for s in (s0, s1):
                a = rng.choice([-(2**26), 2**26 - 1, rng.randint(-128, 127)])
                b = rng.choice([-(2**17), 2**17 - 1, rng.randint(-128, 127)])
                acc = rng.randint(0, 1)
                ctx.set(s.a, a)
                ctx.set(s.b, b)
                ctx.set(s.accumulate, acc)
                ctx.set(s.ce, ce)
                ins.append((a, b, acc))
            await ctx.tick()
            p0_old = models[0].p
            e0 = models[0].step(*ins[0], pcin=0, ce=ce)
            e1 = models[1].step(*ins[1], pcin=p0_old, ce=ce)
            assert ctx.get(s0.p) == e0
            assert ctx.get(s1.p) == e1

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


def test_accumulate_wraps_48_bits():
    model = DSP48E2Model(cascade=False)
    big = -(2**26) * -(2**17)       # 2**43
    for _ in range(3):
        model.step(-(2**26), -(2**17), 1, 0)
    for _ in range(40):
        model.step(-(2**26), -(2**17), 1, 0)
    assert -(2**47) <= model.p < 2**47
    assert big == 2**43


def test_slice_without_clock_enable_matches_model():
    """``clock_enable=False`` (the matrix engine's slices): CE tied high; with
    ``accumulator=False`` the W-mux is tied to 0 (the model with accumulate = 0)."""
    for acc_port in (True, False):
        _run_no_ce(acc_port)


def _run_no_ce(acc_port):
    rng = random.Random(4)
    s = DSP48E2Slice(cascade=True, clock_enable=False, accumulator=acc_port)
    assert not hasattr(s, "ce")
    assert hasattr(s, "accumulate") == acc_port
    model = DSP48E2Model(True)

    async def tb(ctx):
        for _ in range(300):
            a, b = rng.randint(-128, 127), rng.randint(-128, 127)
            acc, pcin = rng.randint(0, int(acc_port)), rng.randint(-(2**40), 2**40)
            ctx.set(s.a, a)
            ctx.set(s.b, b)
            if acc_port:
                ctx.set(s.accumulate, acc)
            ctx.set(s.pcin, pcin)
            await ctx.tick()
            assert ctx.get(s.p) == model.step(a, b, acc, pcin)

    sim = Simulator(s)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


def test_packed_multiply_through_a_slice():
    """The matrix engine's use: ``A = x0 + x1 * 2**18``, ``B = w`` (int8); P splits into ``x0 * w``
    and ``x1 * w`` (lo = sext(P[17:0]), hi = P[47:18] + P[17])."""
    rng = random.Random(5)
    s = DSP48E2Slice(cascade=False, clock_enable=False, accumulator=False)
    corners = [(-128, -128, -128), (-128, 127, 127), (127, -128, -128), (0, -128, 127),
               (-1, 0, 1), (1, -1, -1), (0, 0, -128)]
    cases = corners + [tuple(rng.randint(-128, 127) for _ in range(3)) for _ in range(200)]

    async def tb(ctx):
        for n in range(len(cases) + DSP_LATENCY):
            if n < len(cases):
                x0, x1, w = cases[n]
                ctx.set(s.a, pack(x0, x1))
                ctx.set(s.b, w)
            await ctx.tick()
            if n >= DSP_LATENCY - 1 and n - (DSP_LATENCY - 1) < len(cases):
                x0, x1, w = cases[n - (DSP_LATENCY - 1)]
                assert split_packed(ctx.get(s.p)) == (x0 * w, x1 * w)

    sim = Simulator(s)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
