"""The state-space unit (``hw.ssm.ScanUnit``) against ``golden.ssm.scan_step``: tokens of random
channels with the state carried on chip from token to token, saturating states and outputs,
decays that underflow to 0, a first token reading its state as 0, random idle input and
back-pressure, and tokens back to back on the fewest channels the write-back allows."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from hwflow.golden import llm as gl
from hwflow.golden import ssm as gs
from hwflow.hw import ssm as hs

from ._lint import assert_lints_clean
from ._streams import recv, send

S = 6


def test_formats_are_golden():
    assert (hs.DT_FRAC, hs.A_FRAC, hs.DECAY_FRAC, hs.EXP2_FRAC) == (
        gs.DT_FRAC, gs.A_FRAC, gs.DECAY_FRAC, gl.EXP2_FRAC)
    assert hs.SOFTPLUS_ROM == gs.SOFTPLUS_LUT.tolist()


def _tokens(rng: np.random.Generator, T: int, C: int, same_token: bool = False):
    """T tokens of C channels: (token operands, channel operands) as golden takes them."""
    toks = []
    for t in range(T):
        # shifts as the quantizer picks them (states near 2**20, outputs and the D skip in
        # int8), but every third token's states and outputs saturate
        big = t % 3 == 2
        tok = dict(b=rng.integers(-128, 128, S), c=rng.integers(-128, 128, S),
                   bu_mult=int(rng.integers(1, 1 << 16)),
                   bu_shift=int(rng.integers(0, 8) if big else rng.integers(20, 27)),
                   y_mult=int(rng.integers(1, 1 << 16)),
                   y_shift=int(rng.integers(0, 30) if big else rng.integers(32, 39)),
                   d_shift=int(rng.integers(0, 48) if big else rng.integers(20, 26)))
        # dt up to 0.5 and decay rates up to 16 (decays 1 .. 2**-8), a fifth of the rates
        # anywhere in 16 bits (decays that underflow to 0)
        ch = dict(dt=rng.integers(0, 1 << 11, C), u=rng.integers(-128, 128, C),
                  d_mult=rng.integers(-65535, 65536, C),
                  a=np.where(rng.random((C, S)) < 0.2, rng.integers(0, 1 << 16, (C, S)),
                             rng.integers(0, 1 << 12, (C, S))))
        ch["dt"][0], ch["u"][0], ch["a"][0, 0] = (1 << 16) - 1, -128, (1 << 16) - 1
        toks.append((toks[0][0] if same_token and toks else tok, ch))
    return toks


def _golden(toks, C: int, carry: bool = True):
    """The outputs of the tokens in turn (``carry`` False: every token from a zero state)."""
    h, ys = np.zeros((C, S), np.int64), []
    for tok, ch in toks:
        h = h if carry else np.zeros_like(h)
        h, y = gs.scan_step(h, ch["dt"], ch["a"], tok["b"], tok["c"], ch["u"], tok["bu_mult"],
                            tok["bu_shift"], tok["y_mult"], tok["y_shift"], ch["d_mult"],
                            tok["d_shift"])
        ys.append(y)
    return np.concatenate(ys)


def _beats(t: int, ch: dict, C: int):
    return [dict(chan=c, dt=int(ch["dt"][c]), u=int(ch["u"][c]), d_mult=int(ch["d_mult"][c]),
                 a=[int(v) for v in ch["a"][c]], zero=int(t == 0)) for c in range(C)]


def _token_value(tok: dict) -> dict:
    return {**tok, "b": [int(v) for v in tok["b"]], "c": [int(v) for v in tok["c"]]}


@pytest.mark.parametrize("p_idle,p_stall", [(0.0, 0.0), (0.3, 0.4)])
def test_unit_is_golden(p_idle, p_stall):
    C, T = 9, 6
    toks = _tokens(np.random.default_rng(int(p_idle * 10)), T, C)
    dut = hs.ScanUnit(S, 16)
    got = []

    async def producer(ctx):
        # the token's operands stay while its channels are inside: the next token waits for
        # the last one's outputs
        for t, (tok, ch) in enumerate(toks):
            ctx.set(dut.token, _token_value(tok))
            await send(ctx, dut.i, _beats(t, ch, C), random.Random(t), p_idle)
            while len(got) < (t + 1) * C:
                await ctx.tick()

    async def consumer(ctx):
        for t in range(T):
            got.extend(await recv(ctx, dut.o, C, random.Random(100 + t), p_stall))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    want = _golden(toks, C)
    np.testing.assert_array_equal(np.array(got), want)
    assert {-128, 127} <= set(want.tolist())          # the outputs saturate in the big tokens
    assert np.sum(want != _golden(toks, C, carry=False)) >= C * (T - 1) // 3  # states count


def test_tokens_back_to_back_on_hazard_channels():
    # HAZARD channels a token, tokens streamed without a gap: every state is read in the cycle
    # its last token's write-back happens (the read port is transparent), one channel a cycle
    C, T = hs.HAZARD, 5
    toks = _tokens(np.random.default_rng(7), T, C, same_token=True)
    dut = hs.ScanUnit(S, C)
    got, stats = [], {}

    async def producer(ctx):
        ctx.set(dut.token, _token_value(toks[0][0]))
        await send(ctx, dut.i, [b for t, (_, ch) in enumerate(toks) for b in _beats(t, ch, C)])

    async def consumer(ctx):
        got.extend(await recv(ctx, dut.o, C * T, stats=stats))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    want = _golden(toks, C)
    np.testing.assert_array_equal(np.array(got), want)
    # the carried states show in the outputs (of every token but the first)
    assert np.sum(want != _golden(toks, C, carry=False)) >= C * (T - 1) // 2
    assert stats["cycles"] == C * T + hs.ScanUnit.LATENCY        # one channel a cycle


def test_verilator_lint(tmp_path):
    # Mamba-2.8B's 16 states, 5120 inner channels
    assert_lints_clean(tmp_path, verilog.convert(hs.ScanUnit(16, 5120), name="scan"), "scan")
