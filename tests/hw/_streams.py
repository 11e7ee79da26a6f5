"""Stream helpers for Amaranth simulator testbenches (valid/ready/payload)."""

from __future__ import annotations

import random


async def send(ctx, port, payloads, rng: random.Random | None = None, p_idle: float = 0.0):
    """Drive ``port`` (a stream sink of the DUT) with ``payloads``; random idle cycles."""
    for item in payloads:
        while rng is not None and rng.random() < p_idle:
            ctx.set(port.valid, 0)
            await ctx.tick()
        ctx.set(port.payload, item)
        ctx.set(port.valid, 1)
        await ctx.tick().until(port.ready)
    ctx.set(port.valid, 0)


async def recv(ctx, port, count: int, rng: random.Random | None = None, p_stall: float = 0.0,
               stats: dict | None = None):
    """Collect ``count`` payloads from ``port`` (a DUT source); random backpressure.

    ``stats["cycles"]`` (if given) receives the number of clock edges waited.
    """
    out = []
    ticks = 0
    while len(out) < count:
        ticks += 1
        ready = not (rng is not None and rng.random() < p_stall)
        ctx.set(port.ready, ready)
        if ready:
            _, _, valid, payload = await ctx.tick().sample(port.valid, port.payload)
            if valid:
                out.append(payload)
        else:
            await ctx.tick()
    ctx.set(port.ready, 0)
    if stats is not None:
        stats["cycles"] = ticks
    return out


def clocked(dut):
    """Wrap a possibly purely combinational DUT so that the ``sync`` domain exists."""
    from amaranth import Module, Signal

    m = Module()
    m.submodules.dut = dut
    tick = Signal()
    m.d.sync += tick.eq(~tick)
    return m
