"""WeightFill (the weight-ring fill decoder) against a row-by-row Python model of the tile
formats, for int8/int4 x dense/sparse, with random gaps in the row stream."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwflow.golden.sparse import parse_nm
from hwflow.hw.config import AccelConfig
from hwflow.hw.weight_fill import WeightFill
from hwflow.mapping.weight_format import LayerFormat, tile_mem_rows

from ._program import fill_entries, random_layer
from ._streams import send

SMALL = AccelConfig(chains=2, chain_len=4, mem_ports=1, port_bytes=8, act_depth=64,
                    weight_depth=16)
WIDE = AccelConfig(chains=2, chain_len=16, mem_ports=1, port_bytes=32, act_depth=64,
                   weight_depth=16)

CASES = [
    (SMALL, "dense", 8, 7), (SMALL, "2:4", 8, 7), (SMALL, "1:4", 8, 6), (SMALL, "1:2", 8, 5),
    # int4: k_words spans two scale blocks (64/r words each) and ends on a half row
    (SMALL, "dense", 4, 67), (SMALL, "2:4", 4, 35), (SMALL, "1:4", 4, 17),
    (WIDE, "2:8", 8, 5), (WIDE, "4:16", 8, 4), (WIDE, "dense", 4, 5), (WIDE, "1:4", 4, 19),
    (WIDE, "2:4", 4, 33),
    # an engine without the sparse and int4 paths still passes dense int8 through
    (replace(SMALL, sparse=False, int4=False), "dense", 8, 5),
]


def _run(cfg, fmt, k_words, n_tiles, seed, p_idle=0.3):
    rng = np.random.default_rng(seed)
    C = cfg.chains * fmt.r
    lay = random_layer(cfg, rng, k_words * cfg.chain_len - 1, n_tiles * C - 1, fmt)
    assert lay.k_words == k_words and lay.n_tiles == n_tiles
    P, L, rb = cfg.chains, cfg.chain_len, cfg.row_bytes
    tmr = tile_mem_rows(cfg, fmt, k_words)
    raw = [int.from_bytes(lay.block[k * rb:(k + 1) * rb], "little")
           for k in range(n_tiles * tmr)]
    dut = WeightFill(cfg)
    got = []
    stats = {}

    async def producer(ctx):
        ctx.set(dut.k_words, k_words)
        ctx.set(dut.sparse, fmt.sparse)
        ctx.set(dut.int4, fmt.int4)
        ctx.set(dut.lgr, fmt.lgr)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await send(ctx, dut.i, raw, random.Random(seed), p_idle)

    async def monitor(ctx):
        cycles = 0
        async for _, _, valid, values, idx in ctx.tick().sample(dut.o_valid, dut.o_values,
                                                                dut.o_idx):
            cycles += 1
            if valid:
                got.append((values, idx))
                stats["last_entry_cycle"] = cycles
            if cycles > 20 * len(raw) + 100:
                break

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_process(monitor)
    sim.run_until(1e-8 * (20 * len(raw) + 120))
    expect = fill_entries(cfg, fmt, lay.block, k_words, n_tiles)
    assert len(got) == len(expect)
    for e, ((values, idx), (ev, ei)) in enumerate(zip(got, expect, strict=True)):
        vb = np.frombuffer(values.to_bytes(rb, "little"), np.uint8).reshape(P, L)
        assert np.array_equal(vb, ev), (e, vb, ev)
        if e % (cfg.param_rows + k_words) >= cfg.param_rows and cfg.sparse:
            ib = np.array([(idx >> (4 * k)) & 15 for k in range(rb)],
                          dtype=np.uint8).reshape(P, L)
            assert np.array_equal(ib, ei), (e, ib, ei)
        elif not cfg.sparse:
            assert idx == 0
    return stats


@pytest.mark.parametrize("cfg,sparsity,wbits,k_words", CASES,
                         ids=[f"L{c.chain_len}-{s}-int{b}-kw{k}" + ("" if c.sparse else "-min")
                              for c, s, b, k in CASES])
def test_fill_matches_model(cfg, sparsity, wbits, k_words):
    n, m = parse_nm(sparsity)
    _run(cfg, LayerFormat(n, m, wbits), k_words, n_tiles=2, seed=k_words + wbits)


@pytest.mark.parametrize("sparsity", ["dense", "2:4"])
def test_fill_rate_is_one_entry_per_cycle_for_int4(sparsity):
    """No gaps in the input: an int4 tile of u value rows gives 2u entries in about 2u cycles
    (the decoder holds each value row for its second entry, and never more); in int4 sparse
    the next unit's index row is taken meanwhile, except after a block's scale row."""
    n, m = parse_nm(sparsity)
    cfg, fmt, k_words = WIDE, LayerFormat(n, m, 4), 40
    blocks = -(-(k_words // 2) * fmt.r // 32)
    stats = _run(cfg, fmt, k_words, n_tiles=1, seed=1, p_idle=0.0)
    # R parameter rows, a scale row (+ an index row) per block and one cycle per entry, plus
    # the start cycle, the input and output registers
    bound = cfg.param_rows + blocks * (1 + fmt.sparse) + k_words + 3
    assert stats["last_entry_cycle"] <= bound, stats
