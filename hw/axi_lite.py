"""AXI4-Lite slave with the accelerator's control registers (Vitis RTL-kernel style)."""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .contract import REG

__all__ = ["axi_lite_signature", "ControlRegisters", "REG"]

ADDR_BITS = 12
DATA_BITS = 32
# REG (docs/architecture.md, "Control registers") is in the contract, hw/contract.py


def axi_lite_signature() -> wiring.Signature:
    """AXI4-Lite, slave side (12-bit byte address, 32-bit data)."""
    return wiring.Signature({
        "awvalid": In(1), "awready": Out(1), "awaddr": In(ADDR_BITS),
        "wvalid": In(1), "wready": Out(1), "wdata": In(DATA_BITS), "wstrb": In(DATA_BITS // 8),
        "bvalid": Out(1), "bready": In(1), "bresp": Out(2),
        "arvalid": In(1), "arready": Out(1), "araddr": In(ADDR_BITS),
        "rvalid": Out(1), "rready": In(1), "rdata": Out(DATA_BITS), "rresp": Out(2),
    })


class ControlRegisters(wiring.Component):
    """Register file behind an AXI4-Lite slave.

    A write is taken when both its address and data are valid (and no response is pending);
    reads take one cycle. AP_CTRL: writing bit 0 = 1 while idle pulses ``start`` and clears
    ap_done; bit 0 reads 1 while ``running``; bit 1 (ap_done) is set by a ``done`` pulse; bit 2
    is ap_idle. ``irq`` is ap_done (level).

    Attributes
    ----------
    ctrl : :func:`axi_lite_signature`
    start : out, pulse
    prog_base : out
    pos : out, POS: sequence position of the run's first activation row
    running, done, error : in
    cycles, mpe_busy, retired : in, counters shown read-only
    tlmm_busy : in, TLMM_BUSY: cycles in which the TLMM engine did its lookups

    The offsets are :data:`.contract.REG`'s (docs/architecture.md, "Control registers",
    generated from it).
    irq : out
    """

    def __init__(self):
        super().__init__({
            "ctrl": Out(axi_lite_signature()),
            "start": Out(1),
            "prog_base": Out(32),
            "pos": Out(32),
            "running": In(1),
            "done": In(1),
            "error": In(2),
            "cycles": In(64),
            "mpe_busy": In(64),
            "tlmm_busy": In(64),
            "retired": In(32),
            "irq": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.ctrl
        ap_done = Signal()

        # --- write channel ----------------------------------------------------------------
        take_w = Signal()
        m.d.comb += [
            take_w.eq(c.awvalid & c.wvalid & ~c.bvalid),
            c.awready.eq(take_w), c.wready.eq(take_w),
            c.bresp.eq(0), c.rresp.eq(0),
        ]
        with m.If(c.bvalid & c.bready):
            m.d.sync += c.bvalid.eq(0)
        with m.If(take_w):
            m.d.sync += c.bvalid.eq(1)
            with m.Switch(c.awaddr[2:]):
                with m.Case(REG["AP_CTRL"] >> 2):
                    with m.If(c.wstrb[0] & c.wdata[0] & ~self.running):
                        m.d.comb += self.start.eq(1)
                with m.Case(REG["PROG_BASE"] >> 2):
                    for i in range(4):
                        with m.If(c.wstrb[i]):
                            m.d.sync += self.prog_base[8 * i:8 * i + 8].eq(
                                c.wdata[8 * i:8 * i + 8])
                with m.Case(REG["POS"] >> 2):
                    for i in range(4):
                        with m.If(c.wstrb[i]):
                            m.d.sync += self.pos[8 * i:8 * i + 8].eq(c.wdata[8 * i:8 * i + 8])

        with m.If(self.start):
            m.d.sync += ap_done.eq(0)
        with m.If(self.done):
            m.d.sync += ap_done.eq(1)
        m.d.comb += self.irq.eq(ap_done)

        # --- read channel -----------------------------------------------------------------
        m.d.comb += c.arready.eq(~c.rvalid)
        with m.If(c.rvalid & c.rready):
            m.d.sync += c.rvalid.eq(0)
        with m.If(c.arvalid & c.arready):
            m.d.sync += c.rvalid.eq(1)
            with m.Switch(c.araddr[2:]):
                with m.Case(REG["AP_CTRL"] >> 2):
                    m.d.sync += c.rdata.eq(
                        self.running | (ap_done << 1) | (~self.running << 2))
                with m.Case(REG["PROG_BASE"] >> 2):
                    m.d.sync += c.rdata.eq(self.prog_base)
                with m.Case(REG["POS"] >> 2):
                    m.d.sync += c.rdata.eq(self.pos)
                with m.Case(REG["CYCLES_LO"] >> 2):
                    m.d.sync += c.rdata.eq(self.cycles[:32])
                with m.Case(REG["CYCLES_HI"] >> 2):
                    m.d.sync += c.rdata.eq(self.cycles[32:])
                with m.Case(REG["MPE_BUSY_LO"] >> 2):
                    m.d.sync += c.rdata.eq(self.mpe_busy[:32])
                with m.Case(REG["MPE_BUSY_HI"] >> 2):
                    m.d.sync += c.rdata.eq(self.mpe_busy[32:])
                with m.Case(REG["TLMM_BUSY_LO"] >> 2):
                    m.d.sync += c.rdata.eq(self.tlmm_busy[:32])
                with m.Case(REG["TLMM_BUSY_HI"] >> 2):
                    m.d.sync += c.rdata.eq(self.tlmm_busy[32:])
                with m.Case(REG["RETIRED"] >> 2):
                    m.d.sync += c.rdata.eq(self.retired)
                with m.Case(REG["ERROR"] >> 2):
                    m.d.sync += c.rdata.eq(self.error)
                with m.Default():
                    m.d.sync += c.rdata.eq(0)
        return m
