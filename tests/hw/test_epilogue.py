"""Epilogue (requantization pipeline) against golden.int8.requantize / residual_add."""

from __future__ import annotations

import random

import numpy as np
from amaranth.sim import Simulator

from hwflow.golden import int8 as golden
from hwflow.hw.epilogue import Epilogue

from ._streams import recv, send


def _cases(rng: random.Random, n: int):
    extremes_acc = [-(2**31), 2**31 - 1, 0, -1, 1]
    out = []
    for i in range(n):
        kind = i % 4
        acc = rng.choice(extremes_acc) if rng.random() < 0.15 else rng.randint(-(2**31), 2**31 - 1)
        bias = rng.choice([-(2**31), 2**31 - 1, 0]) if rng.random() < 0.1 else rng.randint(
            -(2**20), 2**20)
        if kind == 0:       # small accumulator, moderate shift: values land near int8
            acc = rng.randint(-5000, 5000)
            bias = rng.randint(-500, 500)
        mult = rng.choice([0, 1, 65535]) if rng.random() < 0.2 else rng.randint(0, 65535)
        shift = rng.choice([0, 1, 47, 46, 16]) if rng.random() < 0.3 else rng.randint(0, 47)
        if kind == 0:
            shift = rng.randint(8, 20)
        res = rng.choice([-128, 127]) if rng.random() < 0.3 else rng.randint(-128, 127)
        res_mult = rng.choice([0, 65535]) if rng.random() < 0.2 else rng.randint(0, 65535)
        relu = rng.random() < 0.5
        zero = rng.random() < 0.05
        out.append(dict(acc=acc, bias=bias, mult=mult, res=res, res_mult=res_mult, shift=shift,
                        relu=int(relu), zero=int(zero), tag=i & 0xFF))
    return out


def _expect(c):
    if c["zero"]:
        return 0
    return int(golden.requantize(np.int64(c["acc"]), c["bias"], c["mult"], c["shift"],
                                 bool(c["relu"]), res=c["res"], res_mult=c["res_mult"]))


def test_epilogue_matches_golden():
    rng = random.Random(1)
    cases = _cases(rng, 400)
    # VADD form: acc = a, bias 0, res = b
    for _ in range(100):
        a, b = rng.randint(-128, 127), rng.randint(-128, 127)
        cases.append(dict(acc=a, bias=0, mult=rng.randint(0, 65535), res=b,
                          res_mult=rng.randint(0, 65535), shift=rng.randint(0, 47),
                          relu=rng.randint(0, 1), zero=0, tag=7))
    dut = Epilogue(tag_bits=8)
    got = []

    async def producer(ctx):
        await send(ctx, dut.i, cases, rng, p_idle=0.2)

    async def consumer(ctx):
        got.extend(await recv(ctx, dut.o, len(cases), random.Random(2), p_stall=0.3))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    assert len(got) == len(cases)
    for c, g in zip(cases, got, strict=True):
        assert g.value == _expect(c), c
        assert g.tag == c["tag"]
    # VADD rows equal residual_add too
    for c, g in zip(cases[-100:], got[-100:], strict=True):
        ref = golden.residual_add(np.int64(c["acc"]), c["res"], c["mult"], c["res_mult"],
                                  c["shift"], bool(c["relu"]))
        assert g.value == int(ref)


def test_epilogue_full_rate():
    """One element per cycle with an always-ready consumer: latency 4, no bubbles."""
    dut = Epilogue(tag_bits=4)
    seen = []

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        for i in range(12):
            ctx.set(dut.i.payload, dict(acc=i, bias=0, mult=1, res=0, res_mult=0, shift=0,
                                        relu=0, zero=0, tag=i))
            ctx.set(dut.i.valid, 1)
            assert ctx.get(dut.i.ready)
            await ctx.tick()
            if ctx.get(dut.o.valid):
                seen.append((i, ctx.get(dut.o.payload.value)))
        ctx.set(dut.i.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    # first result visible after Epilogue.LATENCY edges, then one per cycle
    assert seen[0] == (Epilogue.LATENCY - 1, 0)
    assert [v for _, v in seen] == list(range(len(seen)))
