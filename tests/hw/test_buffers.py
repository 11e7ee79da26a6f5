"""ActivationBuffer (byte enables, three read ports) and WeightRing (prefetch, fill decoder,
wrap, release, per-group skew)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwflow.golden.sparse import parse_nm
from hwflow.hw.buffers import ActivationBuffer, WeightRing
from hwflow.hw.config import AccelConfig
from hwflow.mapping.weight_format import DENSE_INT8, LayerFormat

from ._memory import port_process
from ._program import fill_entries, random_layer


@pytest.mark.parametrize("uram", [False, True], ids=["lanes", "uram"])
def test_activation_buffer_byte_writes(uram):
    """Byte lanes (block RAM) and the URAM build (one wide memory with byte enables per read
    port) behave the same."""
    L, depth = 4, 32
    dut = ActivationBuffer(L, depth, uram=uram)
    ref = np.zeros((depth, L), dtype=np.uint8)
    rng = random.Random(0)

    async def tb(ctx):
        for _ in range(300):
            addr = rng.randrange(depth)
            en = rng.randrange(1 << L)
            val = rng.randrange(1 << (8 * L))
            ctx.set(dut.w_addr, addr)
            ctx.set(dut.w_data, val)
            ctx.set(dut.w_en, en)
            reads = {}
            for port in "abc":
                reads[port] = rng.randrange(depth)
                ctx.set(getattr(dut, f"{port}_addr"), reads[port])
                ctx.set(getattr(dut, f"{port}_en"), 1)
            await ctx.tick()
            # read data are the words before this cycle's write (no write-through)
            for port, ra in reads.items():
                exp = int.from_bytes(ref[ra].tobytes(), "little")
                assert ctx.get(getattr(dut, f"{port}_data")) == exp, port
            vb = val.to_bytes(L, "little")
            for i in range(L):
                if en >> i & 1:
                    ref[addr, i] = vb[i]
        ctx.set(dut.w_en, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


@pytest.mark.parametrize("uram", [False, True], ids=["lanes", "uram"])
def test_activation_buffer_read_enable_holds(uram):
    """A read port's data hold while its enable is low (the output sequencer's stall)."""
    L, depth = 2, 8
    dut = ActivationBuffer(L, depth, uram=uram)

    async def tb(ctx):
        for a in range(depth):
            ctx.set(dut.w_addr, a)
            ctx.set(dut.w_data, 0x100 * a + a + 1)
            ctx.set(dut.w_en, 3)
            await ctx.tick()
        ctx.set(dut.w_en, 0)
        ctx.set(dut.c_addr, 3)
        ctx.set(dut.c_en, 1)
        await ctx.tick()
        assert ctx.get(dut.c_data) == 0x304
        ctx.set(dut.c_addr, 5)
        ctx.set(dut.c_en, 0)
        await ctx.tick()
        assert ctx.get(dut.c_data) == 0x304

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


def _ring_run(cfg, base, n_tiles, k_words, reads_per_tile, fmt=DENSE_INT8, latency=32):
    """Stream a weight block through the ring; a consumer reads every entry of each tile
    ``reads_per_tile`` times (as soon as it has arrived) on both read ports, then releases the
    tile. Returns (cycles, memory-port log)."""
    SB, D, R = cfg.beat_bytes, cfg.weight_depth, cfg.param_rows
    rng = np.random.default_rng(1)
    lay = random_layer(cfg, rng, k_words * cfg.chain_len, n_tiles * cfg.chains * fmt.r, fmt)
    tmr = lay.tile_mem_rows
    total = n_tiles * tmr
    tile_entries = R + k_words
    image = bytearray(rng.integers(0, 256, size=(base + total * cfg.beats_per_row + 4) * SB,
                                   dtype=np.uint8).tobytes())
    image[base * SB:base * SB + len(lay.block)] = lay.block
    entries = fill_entries(cfg, fmt, lay.block, k_words, n_tiles)
    dut = WeightRing(cfg)
    got = []
    st = {}
    log = {}

    eng = []            # (tick, eng_data, eng_idx) after each tick
    addr_at = {}        # tick -> absolute entry whose slot was on eng_addr during it
    releases = []       # ticks with a release pulse

    async def consumer(ctx):
        ctx.set(dut.base, base)
        ctx.set(dut.total_rows, total)
        ctx.set(dut.tile_mem_rows, tmr)
        ctx.set(dut.k_words, k_words)
        ctx.set(dut.lgm, fmt.lgm)
        ctx.set(dut.lgr, fmt.lgr)
        ctx.set(dut.int4, fmt.int4)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        cycles = 0
        tick = 0
        cur = None

        async def step():
            nonlocal tick
            addr_at[tick] = cur
            await ctx.tick()
            eng.append((tick, ctx.get(dut.eng_data), ctx.get(dut.eng_idx)))
            tick += 1

        for t in range(n_tiles):
            for _ in range(reads_per_tile):
                for r in range(tile_entries):
                    absr = t * tile_entries + r
                    while ctx.get(dut.arrived) <= absr:
                        await step()
                        cycles += 1
                    ctx.set(dut.prm_addr, absr % D)
                    ctx.set(dut.prm_en, 1)
                    ctx.set(dut.eng_addr, absr % D)
                    cur = absr
                    await step()
                    cycles += 1
                    got.append((absr, ctx.get(dut.prm_data)))
            ctx.set(dut.release, 1)
            releases.append(tick)
            await step()
            cycles += 1
            ctx.set(dut.release, 0)
        for _ in range(3):
            await step()
        st["cycles"] = cycles
        assert ctx.get(dut.idle)
        assert ctx.get(dut.arrived) == n_tiles * tile_entries

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(consumer)
    sim.add_process(port_process(dut, image, SB, SB, 0, latency, log=log))
    sim.run()
    P, L, S0 = cfg.chains, cfg.chain_len, cfg.group_len

    def lane_major(a):
        return a.T.reshape(-1)          # [P, L] memory order -> lane i's P values

    # parameter port: the whole entry, lane-major (byte i of chain p at i*P + p)
    for absr, val in got:
        exp = lane_major(entries[absr][0]).tobytes()
        assert val == int.from_bytes(exp, "little"), absr
    # engine port: lane i (P bytes, one per chain) is the entry on eng_addr i mod S0 ticks
    # earlier; checked where no release in the window could have let a slot be refilled
    checked = 0
    for tick, val, idx in eng:
        if any(tick - S0 < r <= tick for r in releases):
            continue
        raw = val.to_bytes(cfg.row_bytes, "little")
        for i in range(L):
            absr = addr_at.get(tick - i % S0)
            if absr is None:
                continue
            values, idxs = entries[absr]
            assert raw[i * P:(i + 1) * P] == values[:, i].tobytes(), (tick, i, absr)
            if cfg.sparse and absr % tile_entries >= R:
                lane_idx = [(idx >> (4 * (i * P + p))) & 15 for p in range(P)]
                assert lane_idx == list(idxs[:, i]), (tick, i, absr)
            checked += 1
    assert checked > 0
    return st["cycles"], log


def test_weight_ring_wraps_and_streams():
    cfg = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, act_depth=64,
                      weight_depth=24)
    cycles, log = _ring_run(cfg, base=3, n_tiles=4, k_words=3, reads_per_tile=2)
    assert log["beats"] == 4 * (cfg.param_rows + 3)
    # no request may overrun the ring: at most D/2 rows a burst
    assert all(n <= 12 for _, _, n in log["requests"])


@pytest.mark.parametrize("sparsity,wbits", [("2:4", 8), ("dense", 4), ("1:4", 4)])
def test_weight_ring_decodes_formats(sparsity, wbits):
    """Sparse and int4 tiles through the ring: indices on the engine port, two entries per int4
    row reserved and released, an 8-slice chain in DSP groups of 2 (skew by lane mod 2)."""
    cfg = AccelConfig(chains=2, chain_len=8, mem_ports=1, port_bytes=16, act_depth=64,
                      weight_depth=48)
    n, m = parse_nm(sparsity)
    _ring_run(cfg, base=1, n_tiles=3, k_words=9, reads_per_tile=2,
              fmt=LayerFormat(n, m, wbits))


def test_weight_ring_multi_beat_rows_overlap():
    """Rows of 2 super-beats; fetch overlaps consumption: close to the memory-bound time."""
    cfg = AccelConfig(chains=4, chain_len=8, mem_ports=2, port_bytes=8, act_depth=64,
                      weight_depth=64)
    n_tiles, k_words = 6, 6
    cycles, log = _ring_run(cfg, base=0, n_tiles=n_tiles, k_words=k_words, reads_per_tile=1)
    beats = n_tiles * (cfg.param_rows + k_words) * cfg.beats_per_row
    assert log["beats"] == beats
    # memory bound: one super-beat per cycle after the 32-cycle latency (+ the tb's own overhead
    # of one release cycle per tile)
    assert cycles <= beats + 32 + 2 * n_tiles + 8, cycles
