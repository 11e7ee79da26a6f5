"""A simulated external memory port for Amaranth simulator tests.

Beat ``s`` of port ``j`` is bytes ``[s*SB + j*W, s*SB + (j+1)*W)`` of a shared bytearray
(architecture.md striping). Read data comes back ``latency`` cycles after the request is taken,
in request order, one beat per cycle at most; writes are applied when taken.
"""

from __future__ import annotations

import random
from collections import deque

from amaranth import Elaboratable, Module, Mux, Signal

from hwflow.hw.buffers import ActivationBuffer


def port_process(port, image: bytearray, sb: int, w: int, j: int, latency: int = 32,
                 rng: random.Random | None = None, p_busy: float = 0.0, log: dict | None = None):
    """Return an ``add_process`` coroutine that serves one port (``rd_req``/``rd_data``/``wr``)."""

    async def proc(ctx):
        pending = deque()       # (ready_cycle, beat address)
        now = 0
        ctx.set(port.rd_req.ready, 1)
        if hasattr(port, "wr"):
            ctx.set(port.wr.ready, 1)
        signals = [port.rd_req.valid, port.rd_req.ready, port.rd_req.payload,
                   port.rd_data.valid, port.rd_data.ready]
        if hasattr(port, "wr"):
            signals += [port.wr.valid, port.wr.ready, port.wr.payload]
        while True:
            sampled = await ctx.tick().sample(*signals)
            now += 1
            rq_v, rq_r, rq_p, d_v, d_r = sampled[2:7]
            if rq_v and rq_r:
                for k in range(rq_p.len):
                    pending.append((now + latency, rq_p.addr + k))
                if log is not None:
                    log.setdefault("requests", []).append((now, rq_p.addr, rq_p.len))
            if d_v and d_r:
                pending.popleft()
                if log is not None:
                    log["beats"] = log.get("beats", 0) + 1
            if hasattr(port, "wr"):
                w_v, w_r, w_p = sampled[7:10]
                if w_v and w_r:
                    off = w_p.addr * sb + j * w
                    image[off:off + w] = int(w_p.data).to_bytes(w, "little")
                    if log is not None:
                        log["last_write"] = now
            busy = rng is not None and rng.random() < p_busy
            ctx.set(port.rd_req.ready, not busy)
            if hasattr(port, "wr"):
                ctx.set(port.wr.ready, not (rng is not None and rng.random() < p_busy))
            if pending and pending[0][0] <= now:
                off = pending[0][1] * sb + j * w
                ctx.set(port.rd_data.payload, int.from_bytes(image[off:off + w], "little"))
                ctx.set(port.rd_data.valid, 1)
            else:
                ctx.set(port.rd_data.valid, 0)

    return proc


class UnitHarness(Elaboratable):
    """A unit with act-buffer ports (``rd_addr``/``rd_en``/``act_rd_data``, ``wr_*``) on a real
    ActivationBuffer; the testbench loads words and reads results through the buffer's other
    ports (``ld_*`` wins the write port while ``ld_en`` is set)."""

    def __init__(self, cfg, unit):
        self.cfg = cfg
        self.unit = unit
        self.buf = ActivationBuffer(cfg.chain_len, cfg.act_depth)
        self.ld_addr = Signal(16)
        self.ld_data = Signal(8 * cfg.chain_len)
        self.ld_en = Signal()

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = u = self.unit
        m.submodules.buf = b = self.buf
        full = (1 << self.cfg.chain_len) - 1
        m.d.comb += [
            b.a_addr.eq(u.rd_addr), b.a_en.eq(u.rd_en), u.act_rd_data.eq(b.a_data),
            b.w_addr.eq(Mux(self.ld_en, self.ld_addr, u.wr_addr)),
            b.w_data.eq(Mux(self.ld_en, self.ld_data, u.wr_data)),
            b.w_en.eq(Mux(self.ld_en, full, u.wr_en)),
        ]
        return m


def stream_memory(req, dat, state, latency, rng, p_busy, p_gap, log):
    """Serve a unit's super-beat reads from ``state["image"]`` (``state["sb"]`` bytes a beat):
    data ``latency`` cycles after the request is taken, in order; ``rd_req`` not ready with
    probability ``p_busy``; a started beat is held until taken, otherwise a beat is withheld
    with probability ``p_gap``; requests are appended to ``log`` as ``(addr, len)``."""

    async def proc(ctx):
        pending = deque()
        now = 0
        while True:
            _, _, rq_v, rq_r, rq_p, d_v, d_r = await ctx.tick().sample(
                req.valid, req.ready, req.payload, dat.valid, dat.ready)
            now += 1
            sb = state["sb"]
            if rq_v and rq_r:
                pending.extend((now + latency, rq_p.addr + k) for k in range(rq_p.len))
                log.append((rq_p.addr, rq_p.len))
            hold = d_v and not d_r
            if d_v and d_r:
                pending.popleft()
            ctx.set(req.ready, rng.random() >= p_busy)
            if pending and pending[0][0] <= now and (hold or rng.random() >= p_gap):
                a = pending[0][1] * sb
                ctx.set(dat.payload, int.from_bytes(state["image"][a:a + sb], "little"))
                ctx.set(dat.valid, 1)
            else:
                ctx.set(dat.valid, 0)

    return proc
