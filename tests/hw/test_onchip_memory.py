"""OnChipMemory against a Python model of the striped memory (docs/architecture.md)."""

import random

from amaranth.sim import Simulator

from hwflow.hw.config import AccelConfig
from hwflow.hw.onchip_memory import OnChipMemory, split_image

# SB = 2 ports x 4 B = 8 B: two ports exercise the striping, small beats keep the RAM tiny
CFG = AccelConfig(chains=2, chain_len=4, mem_ports=2, port_bytes=4, act_depth=16,
                  weight_depth=8, addr_bits=12)
DEPTH = 64


def _image(seed=0, nbytes=DEPTH * 8 - 20):
    rng = random.Random(seed)
    return bytes(rng.randrange(256) for _ in range(nbytes))


def _beat(image: bytearray, s: int, j: int) -> int:
    sb, w = CFG.beat_bytes, CFG.port_bytes
    return int.from_bytes(image[s * sb + j * w: s * sb + (j + 1) * w], "little")


def _run(dut, testbenches, cycles=4000):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in testbenches:
        sim.add_testbench(tb, background=tb.__name__.startswith("bg_"))
    sim.run_until(cycles * 1e-8)


def _reader(port, got: list, rng: random.Random | None, p_stall: float):
    async def bg_reader(ctx):
        while True:
            ctx.set(port.rd_data.ready, not (rng and rng.random() < p_stall))
            *_, valid, ready, payload = await ctx.tick().sample(
                port.rd_data.valid, port.rd_data.ready, port.rd_data.payload)
            if valid and ready:
                got.append(payload)
    return bg_reader


async def _put(ctx, s, **fields):
    ctx.set(s.valid, 1)
    ctx.set(s.payload, fields)
    await ctx.tick().until(s.ready)
    ctx.set(s.valid, 0)


def test_split_image_stripes_ports():
    img = bytes(range(20))
    beats = split_image(CFG, img, 3)
    assert beats[0] == [0x03020100, 0x0B0A0908, 0x13121110]
    assert beats[1] == [0x07060504, 0x0F0E0D0C, 0]


def test_bursts_with_backpressure_match_model():
    image = bytearray(_image())
    dut = OnChipMemory(CFG, bytes(image), depth=DEPTH)
    rng = random.Random(1)
    bursts = [(rng.randrange(DEPTH - 20), rng.randrange(0, 20)) for _ in range(25)]
    got = [[] for _ in range(CFG.mem_ports)]
    done = []

    async def requester(ctx):
        for a, n in bursts:
            for j in range(CFG.mem_ports):      # the same request to every port, as SuperBeatPorts
                await _put(ctx, dut.mem[j].rd_req, addr=a, len=n)
        done.append(True)

    readers = [_reader(dut.mem[j], got[j], random.Random(10 + j), 0.4)
               for j in range(CFG.mem_ports)]
    _run(dut, [requester, *readers])
    assert done
    for j in range(CFG.mem_ports):
        want = [_beat(image, a + k, j) for a, n in bursts for k in range(n)]
        assert got[j] == want, f"port {j}"


def test_burst_streams_one_beat_per_cycle():
    image = _image(2)
    dut = OnChipMemory(CFG, image, depth=DEPTH)
    got, first, last = [], [], []
    n, reqs = 20, 3

    async def bench(ctx):
        ctx.set(dut.mem[0].rd_data.ready, 1)
        ctx.set(dut.mem[0].rd_req.valid, 1)
        cycle, k = 0, 0
        while len(got) < n * reqs:
            ctx.set(dut.mem[0].rd_req.payload, {"addr": k * n, "len": n})
            *_, rv, rr, dv, dp = await ctx.tick().sample(
                dut.mem[0].rd_req.valid, dut.mem[0].rd_req.ready,
                dut.mem[0].rd_data.valid, dut.mem[0].rd_data.payload)
            cycle += 1
            if rv and rr:
                k += 1
                if k == reqs:
                    ctx.set(dut.mem[0].rd_req.valid, 0)
            if dv:
                got.append(dp)
                (first if not first else last).append(cycle)
        last[:] = [cycle]

    _run(dut, [bench], cycles=400)
    assert got == [_beat(bytearray(image), s, 0) for s in range(n * reqs)]
    # three back-to-back bursts of 20 beats: 60 beats in 60 consecutive cycles, no bubbles
    assert last[0] - first[0] == n * reqs - 1


def test_writes_then_reads():
    image = bytearray(_image(3))
    dut = OnChipMemory(CFG, bytes(image), depth=DEPTH)
    rng = random.Random(4)
    writes = [(rng.randrange(DEPTH), [rng.getrandbits(32) for _ in range(CFG.mem_ports)])
              for _ in range(40)]
    for a, data in writes:                     # the model: later writes win
        for j, d in enumerate(data):
            off = a * CFG.beat_bytes + j * CFG.port_bytes
            image[off:off + CFG.port_bytes] = d.to_bytes(CFG.port_bytes, "little")
    got = [[] for _ in range(CFG.mem_ports)]
    done = []

    async def bench(ctx):
        for a, data in writes:
            for j in range(CFG.mem_ports):
                await _put(ctx, dut.mem[j].wr, addr=a, data=data[j])
        for a in range(0, DEPTH, 16):
            for j in range(CFG.mem_ports):
                await _put(ctx, dut.mem[j].rd_req, addr=a, len=16)
        done.append(True)

    readers = [_reader(dut.mem[j], got[j], random.Random(20 + j), 0.3)
               for j in range(CFG.mem_ports)]
    _run(dut, [bench, *readers])
    assert done
    for j in range(CFG.mem_ports):
        assert got[j] == [_beat(image, s, j) for s in range(DEPTH)], f"port {j}"


def test_image_too_large_is_refused():
    import pytest

    with pytest.raises(ValueError, match="does not fit"):
        split_image(CFG, bytes(DEPTH * 8 + 1), DEPTH)
