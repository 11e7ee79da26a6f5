"""A simulated external memory port for Amaranth simulator tests.

Beat ``s`` of port ``j`` is bytes ``[s*SB + j*W, s*SB + (j+1)*W)`` of a shared bytearray
(architecture.md striping). Read data comes back ``latency`` cycles after the request is taken,
in request order, one beat per cycle at most; writes are applied when taken.
"""

from __future__ import annotations

import random
from collections import deque


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
