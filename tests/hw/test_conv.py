"""The causal conv unit (``hw.conv.CausalConvUnit``) against ``golden.ssm.causal_conv``: tokens
of several beats back to back, the history carried on chip from token to token (a first token
reading it as zeros), saturating outputs, random idle input and back-pressure."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from hwflow.golden import ssm as gs
from hwflow.hw.conv import CausalConvUnit
from hwflow.hw.epilogue import Epilogue

from ._lint import assert_lints_clean
from ._streams import recv, send

W, K = 4, 4


def _layer(rng, C):
    w = rng.integers(-128, 128, (C, K))
    w[0], w[1] = -128, 127          # against inputs of -128: both saturations
    return dict(w=w, bias=rng.integers(-(1 << 14), 1 << 14, C),
                mult=rng.integers(0, 1 << 16, C), shift=int(rng.integers(14, 22)))


@pytest.mark.parametrize("words,p_idle,p_stall", [(3, 0.0, 0.0), (3, 0.3, 0.4), (1, 0.0, 0.0)])
def test_unit_is_golden(words, p_idle, p_stall):
    # words = 1: a token of one beat reads its history in the cycle the last one writes it
    WORDS, C = words, W * words
    rng = np.random.default_rng(int(10 * p_idle))
    ly, T = _layer(rng, C), 6
    x = rng.integers(-128, 128, (T, C))
    x[:2] = -128
    beats = [dict(addr=b, x=[int(v) for v in x[t, b * W:(b + 1) * W]],
                  w=[[int(v) for v in ly["w"][c]] for c in range(b * W, (b + 1) * W)],
                  bias=[int(v) for v in ly["bias"][b * W:(b + 1) * W]],
                  mult=[int(v) for v in ly["mult"][b * W:(b + 1) * W]], zero=int(t == 0))
             for t in range(T) for b in range(WORDS)]
    dut = CausalConvUnit(W, K, WORDS)
    got, stats = [], {}

    async def producer(ctx):
        ctx.set(dut.shift, ly["shift"])
        await send(ctx, dut.i, beats, random.Random(1), p_idle)

    async def consumer(ctx):
        got.extend(await recv(ctx, dut.o, len(beats), random.Random(2), p_stall, stats))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    # golden token by token (decode) is golden on the whole sequence (prefill)
    hist, rows = np.zeros((K - 1, C), np.int64), []
    for t in range(T):
        y, hist = gs.causal_conv(x[t:t + 1], hist, ly["w"], ly["bias"], ly["mult"], ly["shift"])
        rows.append(y[0])
    want = np.stack(rows)
    whole, _ = gs.causal_conv(x, np.zeros((K - 1, C)), ly["w"], ly["bias"], ly["mult"],
                              ly["shift"])
    np.testing.assert_array_equal(whole, want)
    np.testing.assert_array_equal(np.array([[int(v) for v in b] for b in got]).reshape(T, C),
                                  want)
    assert {-128, 127} <= set(want.ravel().tolist())
    assert (np.abs(want) < 100).mean() > 0.3
    if p_idle == p_stall == 0:
        assert stats["cycles"] == len(beats) + 1 + Epilogue.LATENCY      # one beat a cycle


def test_verilator_lint(tmp_path):
    # Mamba-2.8B: 5120 channels, 16 a beat, 4 taps
    assert_lints_clean(tmp_path, verilog.convert(CausalConvUnit(16, 4, 320), name="conv"),
                       "conv")
