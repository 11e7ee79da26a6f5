"""The Hadamard transform unit (``hw.hadamard``) against ``golden.ssm.hadamard``: rows of
several blocks, every block size from 1 to the largest (in-beat and cross-beat stages, each
enabled or passed through), back to back with random idle input and random back-pressure."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from hwflow.golden import ssm as gs
from hwflow.hw.hadamard import HadamardUnit, check_shape

from ._lint import assert_lints_clean
from ._streams import recv, send

W, MAX_BLOCK = 4, 32


def _run(rows, lgb, p_idle, p_stall, seed=0):
    dut = HadamardUnit(W, MAX_BLOCK)
    beats = [dict(x=[int(v) for v in row[j:j + W]], last=int(j + W == len(row)))
             for row in rows for j in range(0, len(row), W)]
    got = []

    async def producer(ctx):
        ctx.set(dut.lgb, lgb)
        await send(ctx, dut.i, beats, random.Random(seed), p_idle=p_idle)

    async def consumer(ctx):
        got.extend(await recv(ctx, dut.o, len(beats), random.Random(seed + 1), p_stall))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return beats, got


@pytest.mark.parametrize("lgb", range(6))
@pytest.mark.parametrize("p_idle,p_stall", [(0.0, 0.0), (0.3, 0.4)])
def test_unit_is_golden(lgb, p_idle, p_stall):
    block = 1 << lgb
    rng = np.random.default_rng(lgb)
    # rows of 1, 2 and 3 of the largest block (extremes included: |y| = block * 128 fits)
    rows = [rng.integers(-128, 128, k * MAX_BLOCK) for k in (1, 2, 3)]
    rows[0][:] = -128
    beats, got = _run(rows, lgb, p_idle, p_stall, seed=lgb)
    want = np.concatenate([gs.hadamard(r, block) for r in rows])
    out = np.array([[int(v) for v in b.x] for b in got]).ravel()
    np.testing.assert_array_equal(out, want)
    # the row boundaries survive the stages' drains
    assert [b.last for b in got] == [b["last"] for b in beats]


def test_full_rate_when_nothing_stalls():
    # one beat a cycle in and out, rows back to back: the stages' differences leave while the
    # next row's first beats fill their places; latency 1 + (1 + 2 + 4) = MAX_BLOCK / W
    dut = HadamardUnit(W, MAX_BLOCK)
    rows = [np.arange(MAX_BLOCK) - 16 for _ in range(4)]
    n_beats = 4 * MAX_BLOCK // W
    cycles = {}

    async def producer(ctx):
        ctx.set(dut.lgb, 5)
        await send(ctx, dut.i, [dict(x=list(r[j:j + W]), last=int(j + W == MAX_BLOCK))
                                for r in rows for j in range(0, MAX_BLOCK, W)])

    async def consumer(ctx):
        await recv(ctx, dut.o, n_beats, stats=cycles)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    assert cycles["cycles"] == n_beats + MAX_BLOCK // W


def test_bad_shapes_are_refused():
    for lanes, max_block in ((4, 2), (3, 16), (4, 24)):
        with pytest.raises(ValueError, match="powers of two"):
            check_shape(lanes, max_block)


def test_verilator_lint(tmp_path):
    # the size of Mamba-2.7B's transform: 16 channels a beat, blocks of up to 1024
    assert_lints_clean(tmp_path, verilog.convert(HadamardUnit(16, 1024), name="fwht"), "fwht")
