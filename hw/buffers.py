"""On-chip buffers: the activation buffer and the weight ring with its prefetcher."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .gearbox import Gearbox
from .mem_port import read_req_layout

__all__ = ["ActivationBuffer", "WeightRing", "RING_BURST_BEATS", "skew_line"]

# Read bursts of the weight prefetcher. 16 super-beats per request keep two requests in flight
# within a 32-cycle memory latency, so the fetcher streams one super-beat per cycle.
RING_BURST_BEATS = 16


def skew_line(m: Module, addr, lanes: int) -> list:
    """``[addr, addr delayed 1, ..., addr delayed lanes-1]`` (one shift register, no reset).

    Reading lane memory ``i`` at the ``i``-th entry skews a word for a systolic DSP column:
    ``(lanes - 1) * len(addr)`` flops for the whole engine instead of one byte register per lane
    per stage per chain (P * L * (L-1) / 2 bytes each for x and w: ~15 kbit at P = L = 16).
    """
    w = len(addr)
    if lanes == 1:
        return [addr]
    line = Signal(w * (lanes - 1), reset_less=True)
    m.d.sync += line.eq(Cat(addr, line[:w * (lanes - 2)]))
    return [addr] + [line[w * k:w * (k + 1)] for k in range(lanes - 1)]


class ActivationBuffer(wiring.Component):
    """``depth`` words of ``L`` bytes; two synchronous read ports, one byte-enable write port.

    Port ``a`` feeds the matrix engine (x), VADD ``a`` and STORE; port ``b`` reads residuals and
    VADD ``b``. Reads are synchronous (data one cycle after the address while ``en``; it holds
    while ``en`` is low, which the sequencers use to stall). The write port takes one byte enable
    per lane, so the epilogue writes single int8 results in place without read-modify-write.
    The buffer starts zeroed.

    It is built as ``L`` byte-lane memories written at the same address. With ``a_skew`` high,
    lane ``i`` of port ``a`` reads ``a_addr`` as it was ``i`` cycles ago (and ignores ``a_en``):
    the skewed activation word the matrix engine's systolic chains need (see
    :class:`~.matrix_engine.MatrixEngine`).

    Parameters
    ----------
    chain_len : int
        L, bytes per word.
    depth : int
        Words.
    """

    def __init__(self, chain_len: int, depth: int):
        self.L, self.depth = chain_len, depth
        aw = max(1, (depth - 1).bit_length())
        self.addr_width = aw
        super().__init__({
            "a_addr": In(aw), "a_en": In(1), "a_data": Out(8 * chain_len), "a_skew": In(1),
            "b_addr": In(aw), "b_en": In(1), "b_data": Out(8 * chain_len),
            "w_addr": In(aw), "w_data": In(8 * chain_len), "w_en": In(chain_len),
        })

    def elaborate(self, platform):
        m = Module()
        skewed = skew_line(m, self.a_addr, self.L)
        for i in range(self.L):
            mem = memory.Memory(shape=8, depth=self.depth, init=[])
            m.submodules[f"lane{i}"] = mem
            wp = mem.write_port()
            ra = mem.read_port()
            rb = mem.read_port()
            sl = slice(8 * i, 8 * (i + 1))
            m.d.comb += [
                wp.addr.eq(self.w_addr), wp.data.eq(self.w_data[sl]), wp.en.eq(self.w_en[i]),
                ra.addr.eq(Mux(self.a_skew, skewed[i], self.a_addr) if i else self.a_addr),
                ra.en.eq(self.a_en | self.a_skew), self.a_data[sl].eq(ra.data),
                rb.addr.eq(self.b_addr), rb.en.eq(self.b_en), self.b_data[sl].eq(rb.data),
            ]
        return m


class WeightRing(wiring.Component):
    """Weight ring buffer of ``D`` rows of ``P*L`` bytes, filled ahead of compute.

    After ``start`` the prefetcher reads ``total_rows`` consecutive rows from super-beat
    ``base`` and writes them to ring slots 0, 1, ... (mod D). It issues a read burst whenever the
    ring has room for it (rows requested but not yet released count as used), so fetching runs
    ahead of the consumer by up to ``D`` rows: while tile ``t`` is being computed, tiles ``t+1``,
    ``t+2``, ... are streamed in (double buffering, with the ~32-cycle read latency hidden by
    having several bursts in flight). ``arrived`` counts rows written so far; a consumer may read
    row ``r`` (absolute index since start) once ``arrived > r``. Each ``release`` pulse frees
    ``tile_rows`` rows (one whole tile, after its last use).

    Parameters
    ----------
    cfg : AccelConfig

    Attributes
    ----------
    start, base, total_rows, tile_rows : in
    release : in, pulse
    rd_req, rd_data : memory side (super-beat requests and data)
    arrived : out, rows written since ``start``
    idle : out, every requested row has arrived
    eng_addr, eng_data : skewed read port for the engine feed, always enabled: lane ``i``
        (``eng_data`` is lane-major: ``P`` bytes of lane ``i``, chain 0 lowest) is read with
        ``eng_addr`` as it was ``i`` cycles ago, one cycle after that address
    prm_addr, prm_en, prm_data : synchronous read port for the epilogue parameters (a whole
        row, lane-major like ``eng_data``: the reader picks the few bytes it needs instead of
        the ring un-permuting all ``P*L`` bytes every cycle)

    The ring is built as ``L`` lane memories of ``P`` bytes a row (lane ``i`` holds byte ``i``
    of every chain's group), all written at the same slot, so that each lane can be read at its
    own (delayed) address: that is how the engine gets its systolic skew without registers.
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        D = cfg.weight_depth
        aw = max(1, (D - 1).bit_length())
        self.addr_width = aw
        rowbits = 8 * cfg.row_bytes
        super().__init__({
            "start": In(1),
            "base": In(cfg.addr_bits),
            "total_rows": In(32),
            "tile_rows": In(17),
            "release": In(1),
            "rd_req": Out(stream.Signature(read_req_layout(cfg.addr_bits))),
            "rd_data": In(stream.Signature(8 * cfg.beat_bytes)),
            "arrived": Out(32),
            "idle": Out(1),
            "eng_addr": In(aw), "eng_data": Out(rowbits),
            "prm_addr": In(aw), "prm_en": In(1), "prm_data": Out(rowbits),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        D, bpr = cfg.weight_depth, cfg.beats_per_row
        # never more rows in one burst than the ring holds (a tiny ring would wait forever)
        burst_rows = min(D, max(1, RING_BURST_BEATS // bpr))

        P, L = cfg.chains, cfg.chain_len
        skewed = skew_line(m, self.eng_addr, L)
        wrow = Signal(8 * cfg.row_bytes)        # row being written (memory order)
        wptr = Signal(range(D))
        wen = Signal()
        for i in range(L):
            mem = memory.Memory(shape=8 * P, depth=D, init=[])
            m.submodules[f"lane{i}"] = mem
            wp = mem.write_port()
            re = mem.read_port()
            rp = mem.read_port()
            lane = slice(8 * P * i, 8 * P * (i + 1))
            m.d.comb += [
                wp.addr.eq(wptr), wp.en.eq(wen),
                wp.data.eq(Cat(wrow[8 * (p * L + i):8 * (p * L + i + 1)] for p in range(P))),
                re.addr.eq(skewed[i]), self.eng_data[lane].eq(re.data),
                rp.addr.eq(self.prm_addr), rp.en.eq(self.prm_en), self.prm_data[lane].eq(rp.data),
            ]

        # --- request side -------------------------------------------------------------------
        # Every decision below comes from registers: on ECP5 the combinational version
        # (remaining = total - issued, burst choice, occ + n <= D, rd_req.valid, handshake, occ
        # update: five 32-bit carry chains, ~18 ns) capped the design at 55 MHz. The flags are
        # recomputed each cycle from the state; after a request they are one cycle stale, so
        # requests are spaced by one idle cycle - free, since one request moves a whole burst
        # (RING_BURST_BEATS beats). A release only adds room, so stale flags are conservative.
        tile_rows = Signal(17)
        remaining = Signal(32)      # rows not yet requested
        free = Signal(range(D + 1))  # ring rows neither requested-and-unreleased
        addr = Signal(cfg.addr_bits)
        issued_all = Signal()       # every row requested (remaining == 0), registered
        full_burst = Signal()       # remaining >= burst_rows, registered
        room = Signal()             # free >= rows of the next request, registered
        cooldown = Signal()         # the cycle after a request: flags are stale
        n_rows = Mux(full_burst, burst_rows, 1)
        m.d.comb += [
            self.rd_req.valid.eq(~self.start & ~cooldown & ~issued_all & room),
            self.rd_req.payload.addr.eq(addr),
            self.rd_req.payload.len.eq(Mux(full_burst, burst_rows * bpr, bpr)),
        ]
        take = self.rd_req.valid & self.rd_req.ready
        free_after_take = Signal.like(free)
        m.d.comb += free_after_take.eq(Mux(take, free - n_rows, free))
        m.d.sync += [
            cooldown.eq(take),
            free.eq(free_after_take + Mux(self.release, tile_rows, 0)),
            issued_all.eq(remaining == 0),
            full_burst.eq(remaining >= burst_rows),
            room.eq(free >= Mux(remaining >= burst_rows, burst_rows, 1)),
        ]
        with m.If(take):
            m.d.sync += [remaining.eq(remaining - n_rows), addr.eq(addr + n_rows * bpr)]

        total = Signal(32)          # latched at start: the fields may change after the MATMUL
        # --- data side: assemble rows, write them round the ring --------------------------------
        m.submodules.rows = gb = Gearbox(cfg.beat_bytes, cfg.row_bytes)
        wiring.connect(m, wiring.flipped(self.rd_data), gb.i)
        m.d.comb += [
            gb.o.ready.eq(1),
            wrow.eq(gb.o.payload), wen.eq(gb.o.valid),
            self.idle.eq((self.arrived == total) & issued_all & ~self.start),
        ]
        with m.If(gb.o.valid):
            m.d.sync += [
                wptr.eq(Mux(wptr == D - 1, 0, wptr + 1)),
                self.arrived.eq(self.arrived + 1),
            ]

        with m.If(self.start):
            m.d.sync += [remaining.eq(self.total_rows), free.eq(D), addr.eq(self.base),
                         wptr.eq(0), self.arrived.eq(0), total.eq(self.total_rows),
                         tile_rows.eq(self.tile_rows), issued_all.eq(self.total_rows == 0),
                         full_burst.eq(self.total_rows >= burst_rows), room.eq(1),
                         cooldown.eq(0)]
        return m
