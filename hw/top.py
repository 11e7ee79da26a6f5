"""Top level of the accelerator (Verilog module ``hwflow_accel``)."""

from __future__ import annotations

from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from .axi_lite import ControlRegisters, axi_lite_signature
from .config import AccelConfig
from .controller import Controller
from .mem_port import SuperBeatPorts, mem_port_signature

__all__ = ["Accelerator", "generate_verilog", "MODULE_NAME"]

MODULE_NAME = "hwflow_accel"


class Accelerator(wiring.Component):
    """The int8 matrix accelerator (dense or N:M sparse, int8 or int4 weights; A8; with
    ``cfg.tlmm`` also the ternary table-lookup engine) for one :class:`AccelConfig`
    (docs/architecture.md).

    Parameters
    ----------
    cfg : AccelConfig

    Attributes
    ----------
    ctrl : AXI4-Lite slave (control registers)
    mem : array of ``NP`` external memory ports (``rd_req``, ``rd_data``, ``wr`` streams)
    irq : out, high while ap_done is set
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        super().__init__({
            "ctrl": Out(axi_lite_signature()),
            "mem": Out(mem_port_signature(cfg)).array(cfg.mem_ports),
            "irq": Out(1),
        })
        self.regs = ControlRegisters()
        self.controller = Controller(cfg)

    def elaborate(self, platform):
        from amaranth import Module

        m = Module()
        m.submodules.regs = regs = self.regs
        m.submodules.ctl = ctl = self.controller
        m.submodules.ports = ports = SuperBeatPorts(self.cfg)
        wiring.connect(m, wiring.flipped(self.ctrl), regs.ctrl)
        for j in range(self.cfg.mem_ports):
            wiring.connect(m, wiring.flipped(self.mem[j]), ports.mem[j])
        wiring.connect(m, ctl.rd_req, ports.rd_req)
        wiring.connect(m, ports.rd_data, ctl.rd_data)
        wiring.connect(m, ctl.wr, ports.wr)
        m.d.comb += [
            ctl.start.eq(regs.start),
            ctl.prog_base.eq(regs.prog_base),
            ctl.pos.eq(regs.pos),
            regs.running.eq(ctl.running),
            regs.done.eq(ctl.done),
            regs.error.eq(ctl.error),
            regs.cycles.eq(ctl.cycles),
            regs.mpe_busy.eq(ctl.mpe_busy),
            regs.tlmm_busy.eq(ctl.tlmm_busy),
            regs.retired.eq(ctl.retired),
            self.irq.eq(regs.irq),
        ]
        return m


def generate_verilog(cfg: AccelConfig) -> str:
    """Verilog source of module ``hwflow_accel`` for ``cfg`` (clock ``clk``, reset ``rst``)."""
    return verilog.convert(Accelerator(cfg), name=MODULE_NAME, emit_src=False)
