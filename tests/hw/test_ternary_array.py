"""TernaryAddArray (the plain ternary MAC array) against numpy, TableLookupDatapath against
golden.ternary.lookup_matmul, and the TLMM-vs-array synthesis benchmark
(benchmarks/tlmm_synth.py) at its smallest point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwflow.golden.ternary import encode_groups, lookup_matmul
from hwflow.hw.ternary_array import TableLookupDatapath, TernaryAddArray

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "tlmm_synth.py"


def run_array(lanes, outputs, sums, seed, p_idle=0.3):
    """Feed ``sums`` (a list of ``(x[cycles, lanes], t[cycles, outputs, lanes])``) back to back,
    with random idle cycles in between, and return ``acc`` at every ``done``."""
    dut = TernaryAddArray(lanes, outputs)
    rng = np.random.default_rng(seed)
    got = []

    async def tb(ctx):
        for x, t in sums:
            for c in range(len(x)):
                while rng.random() < p_idle:
                    # idle cycle with garbage on the data ports: must leave acc alone
                    ctx.set(dut.valid, 0)
                    ctx.set(dut.first, 1)
                    ctx.set(dut.x, [int(v) for v in rng.integers(-128, 128, lanes)])
                    await ctx.tick()
                    if ctx.get(dut.done):
                        got.append([ctx.get(dut.acc[o]) for o in range(outputs)])
                ctx.set(dut.valid, 1)
                ctx.set(dut.first, c == 0)
                ctx.set(dut.last, c == len(x) - 1)
                ctx.set(dut.x, [int(v) for v in x[c]])
                ctx.set(dut.w, [[int(v) + 1 for v in row] for row in t[c]])
                await ctx.tick()
                if ctx.get(dut.done):
                    got.append([ctx.get(dut.acc[o]) for o in range(outputs)])
        ctx.set(dut.valid, 0)
        for _ in range(dut.LATENCY + 1):
            await ctx.tick()
            if ctx.get(dut.done):
                got.append([ctx.get(dut.acc[o]) for o in range(outputs)])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return got


@pytest.mark.parametrize("lanes,outputs", [(12, 4), (5, 3)])
def test_ternary_add_array_matches_numpy(lanes, outputs):
    rng = np.random.default_rng(lanes * 10 + outputs)
    sums = []
    for cycles in (3, 1, 5):
        x = rng.integers(-128, 128, (cycles, lanes))
        t = rng.integers(-1, 2, (cycles, outputs, lanes))
        sums.append((x, t))
    # one extreme sum: all -128 activations, all -1 weights (largest positive tree sum)
    sums.append((np.full((2, lanes), -128), np.full((2, outputs, lanes), -1)))
    got = run_array(lanes, outputs, sums, seed=lanes)
    want = [np.einsum("ci,coi->o", x, t).tolist() for x, t in sums]
    assert got == want


def test_ternary_add_array_throughput():
    dut = TernaryAddArray(lanes=24, outputs=8)
    assert dut.macs_per_cycle == 192
    with pytest.raises(ValueError):
        TernaryAddArray(0, 4)


@pytest.mark.parametrize("G,T,Q,lutram", [(3, 2, 3, True), (3, 2, 3, False), (2, 3, 2, True),
                                           (4, 1, 2, False)])
def test_table_lookup_datapath_matches_golden(G, T, Q, lutram):
    """Two chunks of T groups: load the chunk's tables, then look up Q channels' indices."""
    rng = np.random.default_rng(G * 100 + T * 10 + Q)
    K = 2 * T * G
    x = rng.integers(-128, 128, (1, K))
    x[0, :G] = -128                         # an extreme group: entries up to 128 * G
    t = rng.integers(-1, 2, (Q, K))
    idx = encode_groups(t, G)               # [Q, 2T]
    dut = TableLookupDatapath(G, T, Q, lutram=lutram)
    got = []

    async def tb(ctx):
        for c in range(2):
            xs = x[0, c * T * G:(c + 1) * T * G].reshape(T, G)
            ctx.set(dut.x, [[int(v) for v in row] for row in xs])
            ctx.set(dut.load, 1)
            await ctx.tick()
            ctx.set(dut.load, 0)
            while ctx.get(dut.busy):
                await ctx.tick()
            ctx.set(dut.idx, [[int(v) for v in idx[q, c * T:(c + 1) * T]] for q in range(Q)])
            ctx.set(dut.valid, 1)
            ctx.set(dut.first, c == 0)
            await ctx.tick()
            ctx.set(dut.valid, 0)
            for _ in range(dut.LATENCY):        # the next chunk's table waits for the sum
                await ctx.tick()
        got.extend(ctx.get(dut.acc[q]) for q in range(Q))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert dut.macs_per_cycle == T * Q * G
    assert got == lookup_matmul(x, idx, G)[0].tolist() == (x @ t.T)[0].tolist()


@pytest.mark.slow
def test_tlmm_synth_short_point():
    """The benchmark's --short point (G = 3, T = Q = 2) synthesizes the TLMM engine, both
    reference datapaths and the add array to positive LUT counts. Yosys takes ~85 s for the
    engine and ~20-35 s for the others (two at a time: ~95 s wall on 2 cores), hence slow;
    uncached (--no-cache) so that the synthesis really runs."""
    r = subprocess.run([sys.executable, str(BENCH), "--short", "--json", "--no-cache"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(r.stdout)
    assert [row["kind"] for row in rows] == ["tlmm", "dp-lutram", "dp-reg", "array"]
    for row in rows:
        assert row["lut"] > 0 and row["macs"] == 12 and not row["cached"], row
