"""AXI4 master adapter in the Amaranth simulator against a Python AXI4 slave model (random
ready/valid delays, protocol checks): writes then reads round-trip exactly, bursts obey the
256-beat and 4 KiB rules, reads wait for earlier writes, ``wr_idle`` follows the B responses."""

from __future__ import annotations

import random
from collections import deque

import pytest
from amaranth.sim import Simulator

from hwflow.hw.axi4 import MAX_BURST, PAGE_BYTES, AXI4Master
from hwflow.hw.config import AccelConfig


class AXI4Memory:
    """A sparse byte memory behind an AXI4 slave; every burst is checked against the rules.

    ``p_stall`` is the chance that a ready or valid is held low in a cycle; B and R come back at
    least ``latency`` cycles after their burst.
    """

    def __init__(self, data_bytes: int, rng: random.Random, p_stall=0.3, latency=4):
        self.w = data_bytes
        self.mem: dict[int, int] = {}
        self.rng, self.p_stall, self.latency = rng, p_stall, latency
        self.ar_bursts: list[tuple[int, int]] = []
        self.aw_bursts: list[tuple[int, int]] = []
        self.first_ar_after_b: list[int] = []
        self.log: list[tuple[str, int]] = []     # ("B", cycle) / ("AR", cycle)

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.mem.get(addr + i, 0) for i in range(n))

    def _check_burst(self, addr, beats, size, burst):
        assert size == self.w.bit_length() - 1, f"AxSIZE {size} for a {self.w}-byte bus"
        assert burst == 0b01, "INCR bursts only"
        assert addr % self.w == 0, f"unaligned burst address {addr:#x}"
        assert 1 <= beats <= MAX_BURST
        assert addr // PAGE_BYTES == (addr + beats * self.w - 1) // PAGE_BYTES, \
            f"burst {addr:#x}+{beats} beats crosses a 4 KiB boundary"

    def process(self, axi, domain="sync"):
        async def proc(ctx):
            now = 0
            ar_q, aw_q, b_q = deque(), deque(), deque()
            r_cur = None            # [addr, beats left]
            w_cur = None            # [addr, beats left]
            sig = [axi.arvalid, axi.arready, axi.araddr, axi.arlen, axi.arsize, axi.arburst,
                   axi.rvalid, axi.rready,
                   axi.awvalid, axi.awready, axi.awaddr, axi.awlen, axi.awsize, axi.awburst,
                   axi.wvalid, axi.wready, axi.wdata, axi.wstrb, axi.wlast,
                   axi.bvalid, axi.bready]
            while True:
                s = await ctx.tick(domain).sample(*sig)
                now += 1
                (arv, arr, araddr, arlen, arsize, arburst, rv, rr,
                 awv, awr, awaddr, awlen, awsize, awburst, wv, wr, wdata, wstrb, wlast,
                 bv, br) = s[2:]
                if arv and arr:
                    self._check_burst(araddr, arlen + 1, arsize, arburst)
                    ar_q.append((now + self.latency, araddr, arlen + 1))
                    self.ar_bursts.append((araddr, arlen + 1))
                    self.log.append(("AR", now))
                if rv and rr:
                    r_cur[0] += self.w
                    r_cur[1] -= 1
                    if r_cur[1] == 0:
                        r_cur = None
                if awv and awr:
                    self._check_burst(awaddr, awlen + 1, awsize, awburst)
                    aw_q.append([awaddr, awlen + 1])
                    self.aw_bursts.append((awaddr, awlen + 1))
                if wv and wr:
                    assert aw_q, "W beat before its AW"
                    w_cur = aw_q[0]
                    assert wstrb == (1 << self.w) - 1
                    for i, b in enumerate(int(wdata).to_bytes(self.w, "little")):
                        self.mem[w_cur[0] + i] = b
                    w_cur[0] += self.w
                    w_cur[1] -= 1
                    assert bool(wlast) == (w_cur[1] == 0), "wlast misplaced"
                    if w_cur[1] == 0:
                        aw_q.popleft()
                        b_q.append(now + self.latency + self.rng.randrange(4))
                if bv and br:
                    b_q.popleft()
                    self.log.append(("B", now))

                ctx.set(axi.arready, self.rng.random() >= self.p_stall)
                ctx.set(axi.awready, self.rng.random() >= self.p_stall)
                ctx.set(axi.wready, self.rng.random() >= self.p_stall)
                # a raised valid stays up until taken (AXI4 rule)
                if r_cur is None and ar_q and ar_q[0][0] <= now:
                    _, addr, n = ar_q.popleft()
                    r_cur = [addr, n]
                if r_cur is not None and (rv and not rr or self.rng.random() >= self.p_stall):
                    ctx.set(axi.rdata, int.from_bytes(self.read(r_cur[0], self.w), "little"))
                    ctx.set(axi.rlast, r_cur[1] == 1)
                    ctx.set(axi.rresp, 0)
                    ctx.set(axi.rvalid, 1)
                else:
                    ctx.set(axi.rvalid, 0)
                b_up = b_q and b_q[0] <= now and (bv and not br
                                                  or self.rng.random() >= self.p_stall)
                ctx.set(axi.bvalid, bool(b_up))
                ctx.set(axi.bresp, 0)

        return proc


CFG8 = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, act_depth=256,
                   weight_depth=32)
CFG32 = AccelConfig(chains=4, chain_len=16, mem_ports=2, port_bytes=32, act_depth=128,
                    weight_depth=16)


def _beat(rng, w):
    return rng.getrandbits(8 * w)


@pytest.mark.parametrize("cfg,wr_burst,base,p_stall", [
    (CFG8, 64, 0x4_0000_0C00, 0.3),       # 512 beats/page: the 256-beat limit splits reads
    (CFG32, 256, 0x1_2345_6F80, 0.2),     # 128 beats/page: the 4 KiB rule splits everything
    (CFG8, 256, 0x0, 0.0),
])
def test_round_trip(cfg, wr_burst, base, p_stall):
    w = cfg.port_bytes
    rng = random.Random(hash((w, wr_burst, base)) & 0xFFFF)
    dut = AXI4Master(cfg, wr_burst=wr_burst)
    slave = AXI4Memory(w, random.Random(1), p_stall=p_stall)
    expect: dict[int, int] = {}
    # write runs: long ones crossing pages and the 256 limit, single beats, a backwards walk
    runs = [(3, 700), (1000, 1), (2000, 5), (1500, 40)]
    writes = [(a + i, _beat(rng, w)) for a, n in runs for i in range(n)]
    writes += [(2600 - i, _beat(rng, w)) for i in range(6)]
    reads = [(3, 700), (1000, 1), (1995, 20), (1500, 40), (2590, 12), (4000, 3)]
    got: list[int] = []
    n_reads = sum(n for _, n in reads)

    async def driver(ctx):
        ctx.set(dut.base, base)
        p = dut.port
        for a, d in writes:
            while rng.random() < p_stall:
                await ctx.tick()
            ctx.set(p.wr.payload.addr, a)
            ctx.set(p.wr.payload.data, d)
            ctx.set(p.wr.valid, 1)
            await ctx.tick().until(p.wr.ready)
            ctx.set(p.wr.valid, 0)
            expect[a] = d
        # a read right behind the writes must see them (no wait for wr_idle here)
        for a, n in reads:
            ctx.set(p.rd_req.payload.addr, a)
            ctx.set(p.rd_req.payload.len, n)
            ctx.set(p.rd_req.valid, 1)
            await ctx.tick().until(p.rd_req.ready)
            ctx.set(p.rd_req.valid, 0)
        for _ in range(20000):
            if len(got) == n_reads:
                break
            await ctx.tick()
        assert len(got) == n_reads, "read data missing"
        assert ctx.get(dut.wr_idle) and not ctx.get(dut.error)

    async def sink(ctx):
        p = dut.port
        r = random.Random(5)
        while True:
            ctx.set(p.rd_data.ready, r.random() >= p_stall)
            _, _, v, rd, d = await ctx.tick().sample(p.rd_data.valid, p.rd_data.ready,
                                                     p.rd_data.payload)
            if v and rd:
                got.append(int(d))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.add_process(sink)
    sim.add_process(slave.process(dut.axi))
    sim.run()

    want = [expect.get(a + i, 0) for a, n in reads for i in range(n)]
    assert got == want
    for a, d in expect.items():
        assert slave.read(base + a * w, w) == d.to_bytes(w, "little")
    # splitting: 256-beat limit or 4 KiB page, whichever is nearer
    assert max(n for _, n in slave.ar_bursts) <= min(MAX_BURST, PAGE_BYTES // w)
    assert sum(n for _, n in slave.aw_bursts) == len(writes)
    assert max(n for _, n in slave.aw_bursts) > 1            # writes were coalesced
    # reads wait for earlier writes: the first AR comes after the last B
    last_b = max(t for k, t in slave.log if k == "B")
    first_ar = min(t for k, t in slave.log if k == "AR")
    assert first_ar > last_b


def test_wr_idle_tracks_b_responses():
    """``wr_idle`` drops when a beat is taken and rises only after its B response."""
    cfg = CFG8
    dut = AXI4Master(cfg, wr_flush=2)
    slave = AXI4Memory(cfg.port_bytes, random.Random(2), p_stall=0.0, latency=10)
    trace = []

    async def driver(ctx):
        p = dut.port
        assert ctx.get(dut.wr_idle)
        ctx.set(p.wr.payload.addr, 7)
        ctx.set(p.wr.payload.data, 0x1122334455667788)
        ctx.set(p.wr.valid, 1)
        await ctx.tick().until(p.wr.ready)
        ctx.set(p.wr.valid, 0)
        for _ in range(60):
            trace.append(ctx.get(dut.wr_idle))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.add_process(slave.process(dut.axi))
    sim.run()
    first_idle = trace.index(1)
    assert first_idle > 10 and all(trace[first_idle:])       # flush + AW + W + B latency
    assert slave.read(7 * 8, 8) == (0x1122334455667788).to_bytes(8, "little")
