"""Gearbox: byte order and throughput for widening, narrowing and pass-through."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from hwflow.hw.gearbox import Gearbox

from ._streams import clocked, recv, send


@pytest.mark.parametrize("ib,ob", [(16, 4), (4, 16), (8, 8), (32, 128), (64, 32)])
def test_gearbox_bytes(ib, ob):
    rng = random.Random(ib * 100 + ob)
    nbytes = 8 * max(ib, ob) * 4
    stream_bytes = bytes(rng.randrange(256) for _ in range(nbytes))
    words_in = [int.from_bytes(stream_bytes[i:i + ib], "little") for i in range(0, nbytes, ib)]
    n_out = nbytes // ob
    dut = Gearbox(ib, ob)
    got = []

    async def producer(ctx):
        await send(ctx, dut.i, words_in, rng, 0.3)

    async def consumer(ctx):
        got.extend(await recv(ctx, dut.o, n_out, random.Random(5), 0.3))

    sim = Simulator(clocked(dut))
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    assert b"".join(g.to_bytes(ob, "little") for g in got) == stream_bytes


@pytest.mark.parametrize("ib,ob", [(16, 4), (4, 16)])
def test_gearbox_full_rate(ib, ob):
    nwords_in = 8 * max(ib, ob) // ib
    n_out = nwords_in * ib // ob
    dut = Gearbox(ib, ob)
    st = {}

    async def producer(ctx):
        await send(ctx, dut.i, list(range(nwords_in)))

    async def consumer(ctx):
        await recv(ctx, dut.o, n_out, stats=st)

    sim = Simulator(clocked(dut))
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    # the narrow side runs every cycle; one cycle of fill latency
    assert st["cycles"] <= max(nwords_in, n_out) + 1
