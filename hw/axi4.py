"""AXI4 master for one accelerator memory port (docs/architecture.md, "External memory").

The accelerator speaks in beats of one port (``rd_req {addr, len}``, ``rd_data``, ``wr {addr,
data}``, beat addresses); a Vitis or Vivado system wants a full AXI4 master with byte
addresses. :class:`AXI4Master` turns beat address ``a`` into byte address ``base + a * W``
(``base`` is the device address of the buffer that holds this port's stripe), splits reads into
INCR bursts that respect the AXI4 limits (at most 256 beats, never crossing a 4 KiB page), and
coalesces consecutive write beats into bursts.

Ordering. The accelerator assumes a write is applied when it is accepted (architecture.md), and
AXI4 does not order reads against writes. So a read request is accepted only when every earlier
write has its B response (the open write burst is flushed at once when a read is waiting), and
``wr_idle`` tells the kernel when all accepted writes are acknowledged, so that it raises done
only then.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, fifo, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .mem_port import mem_port_signature

__all__ = ["ADDR_BITS", "MAX_BURST", "PAGE_BYTES", "axi4_signature", "AXI4Master"]

ADDR_BITS = 64          # byte address width of every master (Vitis m_axi on U280 and Zynq HP)
MAX_BURST = 256         # AXI4 INCR burst limit, beats
PAGE_BYTES = 4096       # an AXI4 burst must not cross a 4 KiB boundary
BURST_INCR = 0b01


def axi4_signature(data_bytes: int, addr_bits: int = ADDR_BITS) -> wiring.Signature:
    """AXI4 master (no IDs, no user signals; cache/prot/lock/qos left to their defaults)."""
    return wiring.Signature({
        "arvalid": Out(1), "arready": In(1), "araddr": Out(addr_bits), "arlen": Out(8),
        "arsize": Out(3), "arburst": Out(2),
        "rvalid": In(1), "rready": Out(1), "rdata": In(8 * data_bytes), "rlast": In(1),
        "rresp": In(2),
        "awvalid": Out(1), "awready": In(1), "awaddr": Out(addr_bits), "awlen": Out(8),
        "awsize": Out(3), "awburst": Out(2),
        "wvalid": Out(1), "wready": In(1), "wdata": Out(8 * data_bytes),
        "wstrb": Out(data_bytes), "wlast": Out(1),
        "bvalid": In(1), "bready": Out(1), "bresp": In(2),
    })


class AXI4Master(wiring.Component):
    """Adapter from one accelerator memory port to an AXI4 master.

    Parameters
    ----------
    cfg : AccelConfig
        Gives the port width ``W = cfg.port_bytes`` (a power of two) and the beat address width.
    wr_burst : int
        Longest write burst, in beats (1..256). Write beats are buffered until their burst is
        closed (AW needs the length, W needs ``wlast``), so the data FIFO holds two of them
        (default 64: 2 KiB bursts at W = 32, 4 KiB of buffer per port).
    wr_flush : int
        A write burst that got no new beat for this many cycles is closed (a STORE streams its
        beats back to back, so a gap of 8 cycles means it ended or stalled).
    max_outstanding : int
        Write bursts issued on AW and not yet answered on B (bounds the counter).

    Attributes
    ----------
    port : :func:`~hwflow.hw.mem_port.mem_port_signature`, flipped (the accelerator drives it)
    axi : :func:`axi4_signature`
    base : in, 64-bit byte address of beat 0 (must be a multiple of ``W``)
    wr_idle : out, every accepted write beat has been acknowledged on B
    error : out, sticky: some R or B response was SLVERR/DECERR
    """

    def __init__(self, cfg: AccelConfig, wr_burst: int = 64, wr_flush: int = 8,
                 max_outstanding: int = 16):
        w = cfg.port_bytes
        if w & (w - 1) or w > PAGE_BYTES:
            raise ValueError(f"AXI4 needs a power-of-two data width up to 4 KiB, not {w} B")
        if not 1 <= wr_burst <= MAX_BURST:
            raise ValueError(f"wr_burst must be 1..{MAX_BURST}, not {wr_burst}")
        self.cfg = cfg
        self.wr_burst = wr_burst
        self.wr_flush = wr_flush
        self.max_outstanding = max_outstanding
        super().__init__({
            "port": In(mem_port_signature(cfg)),
            "axi": Out(axi4_signature(w)),
            "base": In(ADDR_BITS),
            "wr_idle": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, a, p = self.cfg, self.axi, self.port
        w = cfg.port_bytes
        lw = w.bit_length() - 1                       # log2(W) = AxSIZE
        page_beats = PAGE_BYTES // w

        def byte_addr(beat):
            return (self.base + (beat << lw))[:ADDR_BITS]

        def beats_to_page_end(addr):
            # beats from byte address addr to the next 4 KiB boundary (1..page_beats)
            return page_beats - addr[lw:12] if lw < 12 else Const(1)

        # --- write path: buffer beats, close bursts, issue AW then W, count B --------------------
        m.submodules.wfifo = wfifo = fifo.SyncFIFOBuffered(width=8 * w, depth=2 * self.wr_burst)
        burst = data.StructLayout({"addr": cfg.addr_bits, "len": range(self.wr_burst + 1)})
        m.submodules.awq = awq = fifo.SyncFIFO(width=burst.size, depth=4)
        m.submodules.wlenq = wlenq = fifo.SyncFIFO(width=9, depth=self.max_outstanding)

        open_addr = Signal(cfg.addr_bits)       # first beat of the open (still growing) burst
        open_len = Signal(range(self.wr_burst + 1))
        idle = Signal(range(self.wr_flush + 1))
        outstanding = Signal(range(self.max_outstanding + 1))   # AW issued, B not yet seen
        rd_waiting = Signal()

        take = Signal()
        m.d.comb += [
            # awq room is reserved for the burst a new beat may close
            p.wr.ready.eq(wfifo.w_rdy & awq.w_rdy),
            take.eq(p.wr.valid & p.wr.ready),
            wfifo.w_data.eq(p.wr.payload.data),
            wfifo.w_en.eq(take),
        ]
        in_addr = p.wr.payload.addr
        # a beat continues the open burst if it is the next address, the burst is not full and
        # the beat does not start a new 4 KiB page
        page_start = Signal()
        m.d.comb += page_start.eq((self.base[:12] + (in_addr << lw)[:12])[:12] == 0)
        contiguous = (in_addr == (open_addr + open_len)[:cfg.addr_bits]) & \
            (open_len != self.wr_burst) & ~page_start
        close = Signal()
        m.d.comb += [
            awq.w_data.eq(Cat(open_addr, open_len)),
            awq.w_en.eq(close),
        ]
        with m.If(take):
            m.d.sync += idle.eq(0)
            with m.If((open_len == 0) | contiguous):
                m.d.sync += open_len.eq(open_len + 1)
                with m.If(open_len == 0):
                    m.d.sync += open_addr.eq(in_addr)
            with m.Else():
                m.d.comb += close.eq(1)                  # awq.w_rdy is part of wr.ready
                m.d.sync += [open_addr.eq(in_addr), open_len.eq(1)]
        with m.Elif(open_len != 0):
            with m.If(idle != self.wr_flush):
                m.d.sync += idle.eq(idle + 1)
            with m.If(((idle == self.wr_flush) | rd_waiting | (open_len == self.wr_burst))
                      & awq.w_rdy):
                m.d.comb += close.eq(1)
                m.d.sync += [open_len.eq(0), idle.eq(0)]

        aw = data.View(burst, awq.r_data)
        aw_take = Signal()
        m.d.comb += [
            a.awvalid.eq(awq.r_rdy & (outstanding != self.max_outstanding) & wlenq.w_rdy),
            a.awaddr.eq(byte_addr(aw.addr)),
            a.awlen.eq(aw.len - 1),
            a.awsize.eq(lw),
            a.awburst.eq(BURST_INCR),
            aw_take.eq(a.awvalid & a.awready),
            awq.r_en.eq(aw_take),
            wlenq.w_data.eq(aw.len),
            wlenq.w_en.eq(aw_take),
        ]

        wcount = Signal(9)
        wlast = Signal()
        m.d.comb += [
            wlast.eq(wcount + 1 == wlenq.r_data),
            a.wvalid.eq(wlenq.r_rdy & wfifo.r_rdy),
            a.wdata.eq(wfifo.r_data),
            a.wstrb.eq((1 << w) - 1),
            a.wlast.eq(wlast),
            wfifo.r_en.eq(a.wvalid & a.wready),
            wlenq.r_en.eq(a.wvalid & a.wready & wlast),
        ]
        with m.If(a.wvalid & a.wready):
            m.d.sync += wcount.eq(Mux(wlast, 0, wcount + 1))

        m.d.comb += a.bready.eq(1)
        b_take = a.bvalid
        with m.If(aw_take & ~b_take):
            m.d.sync += outstanding.eq(outstanding + 1)
        with m.Elif(~aw_take & b_take):
            m.d.sync += outstanding.eq(outstanding - 1)
        # a burst is counted by open_len, then by awq, then by outstanding until its B
        m.d.comb += self.wr_idle.eq((open_len == 0) & (awq.level == 0) & (outstanding == 0))

        # --- read path: split each request into bursts; R data goes straight through -----------
        rd_busy = Signal()
        rd_addr = Signal(ADDR_BITS)
        rd_left = Signal(17)
        m.d.comb += [
            rd_waiting.eq(p.rd_req.valid),
            # read after write: wait for every B (and for a beat being written this cycle)
            p.rd_req.ready.eq(~rd_busy & self.wr_idle & ~p.wr.valid),
        ]
        with m.If(p.rd_req.valid & p.rd_req.ready):
            m.d.sync += [
                rd_addr.eq(byte_addr(p.rd_req.payload.addr)),
                rd_left.eq(p.rd_req.payload.len),
                rd_busy.eq(p.rd_req.payload.len != 0),
            ]
        to_page = Signal(range(page_beats + 1))
        n = Signal(9)
        m.d.comb += [
            to_page.eq(beats_to_page_end(rd_addr)),
            n.eq(Mux((rd_left < MAX_BURST) & (rd_left < to_page), rd_left,
                     Mux(to_page < MAX_BURST, to_page, MAX_BURST))),
            a.arvalid.eq(rd_busy),
            a.araddr.eq(rd_addr),
            a.arlen.eq(n - 1),
            a.arsize.eq(lw),
            a.arburst.eq(BURST_INCR),
        ]
        with m.If(a.arvalid & a.arready):
            m.d.sync += [
                rd_addr.eq(rd_addr + (n << lw)),
                rd_left.eq(rd_left - n),
                rd_busy.eq(rd_left != n),
            ]
        m.d.comb += [
            p.rd_data.valid.eq(a.rvalid),
            p.rd_data.payload.eq(a.rdata),
            a.rready.eq(p.rd_data.ready),
        ]

        with m.If((a.rvalid & a.rready & a.rresp[1]) | (a.bvalid & a.bresp[1])):
            m.d.sync += self.error.eq(1)
        return m
