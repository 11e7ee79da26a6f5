r"""Vitis RTL kernel top (Verilog module ``hwflow_kernel``): the accelerator behind AXI4.

Ports use the names Vitis and the Vivado IP packager infer interfaces from:

- ``ap_clk``; ``ap_rst_n`` (active low, synchronous; registered once here);
- ``s_axi_control_*``: AXI4-Lite slave, 12-bit byte address, 32-bit data;
- ``m_axi_gmem{j}_*``: one AXI4 master per accelerator memory port ``j`` (data ``8 * W`` bits,
  64-bit byte addresses, INCR bursts, no IDs), see :mod:`hwflow.hw.axi4`;
- ``interrupt``: level, ``GIE & IER[0] & ISR[0]``.

Register map (32-bit words): the accelerator's registers (docs/architecture.md, "Control
registers") pass through; the kernel adds the Vitis interrupt registers, the AXI status and one
64-bit buffer pointer per port, which the host (XRT ``set_arg`` or a bare-metal driver) writes
before ap_start. One table defines them (:data:`.contract.KERNEL_REG`,
:data:`.contract.KERNEL_REGISTER_DOC`); the Vitis/Vivado projects' README renders it
(``hwflow.export.xilinx``).

Buffer ``j`` holds port ``j``'s stripe of the memory image: its bytes ``[s*W, (s+1)*W)`` are the
image bytes ``[s*SB + j*W, s*SB + (j+1)*W)`` (architecture.md, "External memory").
"""

from __future__ import annotations

from amaranth import Cat, ClockDomain, DomainRenamer, Module, Mux, Signal
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .axi4 import AXI4Master, axi4_signature
from .axi_lite import axi_lite_signature
from .config import AccelConfig
from .contract import CONTROL_RANGE, KERNEL_NAME, KERNEL_REG, MAX_PORTS, mem_arg_offset
from .top import Accelerator

__all__ = ["KERNEL_NAME", "KERNEL_REG", "CONTROL_PORT", "CONTROL_RANGE", "VitisKernel",
           "master_name", "mem_arg_offset", "generate_kernel_verilog"]

# KERNEL_NAME, CONTROL_RANGE, KERNEL_REG, MAX_PORTS and mem_arg_offset (the register map) are
# in the contract, hw/contract.py
CONTROL_PORT = "s_axi_control"


def master_name(j: int) -> str:
    """Interface name of the AXI4 master of memory port ``j``."""
    return f"m_axi_gmem{j}"


def _flat(prefix: str, sig: wiring.Signature) -> dict:
    return {f"{prefix}_{name}": member for name, member in sig.members.items()}


class VitisKernel(wiring.Component):
    """:class:`~hwflow.hw.top.Accelerator` plus one :class:`~hwflow.hw.axi4.AXI4Master` per
    memory port and the kernel registers, with flat Vitis port names (module docstring).

    Parameters
    ----------
    cfg : AccelConfig
    wr_burst : int
        Longest write burst of the masters (see :class:`~hwflow.hw.axi4.AXI4Master`).
    """

    def __init__(self, cfg: AccelConfig, wr_burst: int = 64):
        if cfg.mem_ports > MAX_PORTS:
            raise ValueError(f"{cfg.mem_ports} memory ports: the kernel's MEM pointers would "
                             f"overlap POS (at most {MAX_PORTS})")
        self.cfg = cfg
        self.wr_burst = wr_burst
        # ap_clk is the clock of domain "ap" (a port of its own, not a signal driving a clock, so
        # that simulators see one clock edge); ap_rst_n is a plain input
        self.cd = ClockDomain("ap")
        members = {"ap_rst_n": In(1)}
        members.update(_flat(CONTROL_PORT, axi_lite_signature()))
        for j in range(cfg.mem_ports):
            members.update(_flat(master_name(j), axi4_signature(cfg.port_bytes)))
        members["interrupt"] = Out(1)
        super().__init__(members)

    @property
    def ap_clk(self):
        return self.cd.clk

    def ports(self) -> list:
        """Every top-level port, ``ap_clk`` first (for :func:`amaranth.back.verilog.convert`)."""
        return [self.ap_clk] + [v for _, _, v in self.signature.flatten(self)]

    def _group(self, prefix, sig):
        return {name: getattr(self, f"{prefix}_{name}") for name in sig.members}

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        # Everything runs in domain "ap" (the submodules' "sync" renamed); ap_rst_n is registered
        # once (Vitis asks for a synchronous active-low reset; the register eases its fan-out).
        m.domains.ap = cd = self.cd
        rst_q = Signal(init=1, reset_less=True)
        m.d.ap += rst_q.eq(~self.ap_rst_n)
        m.d.comb += cd.rst.eq(rst_q)

        m.submodules.accel = accel = DomainRenamer("ap")(Accelerator(cfg))
        masters = []
        for j in range(cfg.mem_ports):
            mst = DomainRenamer("ap")(AXI4Master(cfg, wr_burst=self.wr_burst))
            m.submodules[f"gmem{j}"] = mst
            wiring.connect(m, accel.mem[j], mst.port)
            for name, sig in self._group(master_name(j), axi4_signature(cfg.port_bytes)).items():
                if mst.axi.signature.members[name].flow == Out:
                    m.d.comb += sig.eq(getattr(mst.axi, name))
                else:
                    m.d.comb += getattr(mst.axi, name).eq(sig)
            masters.append(mst)

        drained = Signal()
        m.d.comb += drained.eq(Cat(mst.wr_idle for mst in masters).all())
        done = Signal()                        # the run ended and its writes are acknowledged
        m.d.comb += done.eq(accel.irq & drained)

        # --- AXI4-Lite front: kernel registers here, everything else to the accelerator --------
        s = self._group(CONTROL_PORT, axi_lite_signature())
        a = accel.ctrl
        gie, ier, isr = Signal(), Signal(), Signal()
        mem_base = [Signal(64, name=f"mem{j}_base") for j in range(cfg.mem_ports)]
        for mst, base in zip(masters, mem_base, strict=True):
            m.d.comb += mst.base.eq(base)

        def is_local(addr):
            word = addr[2:]
            hits = [word == KERNEL_REG[k] >> 2 for k in ("GIE", "IER", "ISR", "AXI_ERROR")]
            hits.append((addr >= KERNEL_REG["MEM"]) & (addr < mem_arg_offset(cfg.mem_ports)))
            return Cat(*hits).any()

        # writes: one outstanding response at a time, from whichever side took the write
        l_bvalid = Signal()
        w_local = Signal()
        m.d.comb += [
            w_local.eq(is_local(s["awaddr"])),
            a.awaddr.eq(s["awaddr"]), a.wdata.eq(s["wdata"]), a.wstrb.eq(s["wstrb"]),
            a.awvalid.eq(s["awvalid"] & s["wvalid"] & ~w_local & ~l_bvalid),
            a.wvalid.eq(s["awvalid"] & s["wvalid"] & ~w_local & ~l_bvalid),
            a.bready.eq(s["bready"]),
            s["bvalid"].eq(a.bvalid | l_bvalid),
            s["bresp"].eq(0),
        ]
        take_lw = Signal()
        m.d.comb += take_lw.eq(s["awvalid"] & s["wvalid"] & w_local & ~l_bvalid & ~a.bvalid)
        m.d.comb += [
            s["awready"].eq(Mux(w_local, take_lw, a.awready)),
            s["wready"].eq(Mux(w_local, take_lw, a.wready)),
        ]
        with m.If(l_bvalid & s["bready"]):
            m.d.ap += l_bvalid.eq(0)

        done_q = Signal()
        m.d.ap += done_q.eq(done)
        with m.If(done & ~done_q):
            m.d.ap += isr.eq(1)
        with m.If(take_lw):
            m.d.ap += l_bvalid.eq(1)
            wd, st, word = s["wdata"], s["wstrb"], s["awaddr"][2:]
            with m.If(st[0]):
                with m.If(word == KERNEL_REG["GIE"] >> 2):
                    m.d.ap += gie.eq(wd[0])
                with m.If(word == KERNEL_REG["IER"] >> 2):
                    m.d.ap += ier.eq(wd[0])
                with m.If(word == KERNEL_REG["ISR"] >> 2):
                    m.d.ap += isr.eq(isr ^ wd[0])    # toggle on write
            for j, base in enumerate(mem_base):
                for half in range(2):
                    with m.If(word == (mem_arg_offset(j) >> 2) + half):
                        for b in range(4):
                            lo = 32 * half + 8 * b
                            with m.If(st[b]):
                                m.d.ap += base[lo:lo + 8].eq(wd[8 * b:8 * b + 8])
        m.d.comb += self.interrupt.eq(gie & ier & isr)

        # reads: the same split; AP_CTRL's done/idle/ready wait for the write responses
        l_rvalid = Signal()
        l_rdata = Signal(32)
        r_local = Signal()
        fwd_ctrl = Signal()                    # the pending accelerator read is AP_CTRL
        m.d.comb += [
            r_local.eq(is_local(s["araddr"])),
            a.araddr.eq(s["araddr"]),
            a.arvalid.eq(s["arvalid"] & ~r_local & ~l_rvalid),
            a.rready.eq(s["rready"]),
            s["rvalid"].eq(a.rvalid | l_rvalid),
            s["rresp"].eq(0),
        ]
        take_lr = Signal()
        m.d.comb += [
            take_lr.eq(s["arvalid"] & r_local & ~l_rvalid & ~a.rvalid),
            s["arready"].eq(Mux(r_local, take_lr, a.arready & ~l_rvalid)),
        ]
        with m.If(a.arvalid & a.arready):
            m.d.ap += fwd_ctrl.eq(s["araddr"][2:] == KERNEL_REG["AP_CTRL"] >> 2)
        ctrl_mask = Signal(32)
        m.d.comb += ctrl_mask.eq(Mux(fwd_ctrl & ~drained, ~0b1110, ~0b1000))
        shown_done = a.rdata[1] & drained
        m.d.comb += s["rdata"].eq(Mux(
            l_rvalid, l_rdata,
            Mux(fwd_ctrl, (a.rdata & ctrl_mask) | (shown_done << 3), a.rdata)))
        with m.If(l_rvalid & s["rready"]):
            m.d.ap += l_rvalid.eq(0)
        with m.If(take_lr):
            m.d.ap += [l_rvalid.eq(1), l_rdata.eq(0)]
            word = s["araddr"][2:]
            with m.If(word == KERNEL_REG["GIE"] >> 2):
                m.d.ap += l_rdata.eq(gie)
            with m.If(word == KERNEL_REG["IER"] >> 2):
                m.d.ap += l_rdata.eq(ier)
            with m.If(word == KERNEL_REG["ISR"] >> 2):
                m.d.ap += l_rdata.eq(isr)
            with m.If(word == KERNEL_REG["AXI_ERROR"] >> 2):
                m.d.ap += l_rdata.eq(Cat(mst.error for mst in masters))
            for j, base in enumerate(mem_base):
                for half in range(2):
                    with m.If(word == (mem_arg_offset(j) >> 2) + half):
                        m.d.ap += l_rdata.eq(base[32 * half:32 * half + 32])
        return m


def _vivado_attributes(text: str, cfg: AccelConfig, freq_hz: int | None) -> str:
    """Put the Xilinx interface attributes on the clock, reset and interrupt ports, so that a
    block-design module reference (and the IP packager) associate every AXI interface with
    ``ap_clk`` and see an active-low reset and a level interrupt."""
    busif = ":".join([CONTROL_PORT] + [master_name(j) for j in range(cfg.mem_ports)])
    clk = f"ASSOCIATED_BUSIF {busif}, ASSOCIATED_RESET ap_rst_n"
    if freq_hz:
        clk += f", FREQ_HZ {int(freq_hz)}"
    attrs = {
        "ap_clk": f'(* X_INTERFACE_INFO = "xilinx.com:signal:clock:1.0 ap_clk CLK", '
                  f'X_INTERFACE_PARAMETER = "{clk}" *)',
        "ap_rst_n": '(* X_INTERFACE_INFO = "xilinx.com:signal:reset:1.0 ap_rst_n RST", '
                    'X_INTERFACE_PARAMETER = "POLARITY ACTIVE_LOW" *)',
        "interrupt": '(* X_INTERFACE_INFO = "xilinx.com:signal:interrupt:1.0 interrupt '
                     'INTERRUPT", X_INTERFACE_PARAMETER = "SENSITIVITY LEVEL_HIGH" *)',
    }
    lines, in_top = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith(f"module {KERNEL_NAME}("):
            in_top = True
        elif line.startswith("endmodule"):
            in_top = False
        stripped = line.strip()
        for port, attr in attrs.items():
            if in_top and stripped in (f"input {port};", f"output {port};"):
                lines.append(f"  {attr}\n")
        lines.append(line)
    return "".join(lines)


def generate_kernel_verilog(cfg: AccelConfig, freq_hz: int | None = None) -> str:
    """Verilog of module ``hwflow_kernel`` for ``cfg`` (with the Xilinx interface attributes;
    ``freq_hz`` adds ``FREQ_HZ`` to the clock's)."""
    kernel = VitisKernel(cfg)
    text = verilog.convert(kernel, name=KERNEL_NAME, ports=kernel.ports(), emit_src=False)
    return _vivado_attributes(text, cfg, freq_hz)
