"""The accelerator on an open-toolchain board (ECP5, iCE40): the top level that the open flow
(``hwflow.export.open_flow``) builds a bitstream of.

:class:`BoardTop` is ``Accelerator`` + :class:`~hwflow.hw.onchip_memory.OnChipMemory` (the memory
image in block RAM) + :class:`StartFSM` (one run after reset, over AXI4-Lite) + LEDs + the clock
(an EHXPLLL on ECP5, the board oscillator on iCE40). :func:`load_platform` and
:func:`plan_board_build` are the Amaranth side of the build: the amaranth-boards platform and its
build plan (the tool runs themselves are the flow's).
"""

from __future__ import annotations

import importlib

from amaranth import ClockDomain, Elaboratable, Instance, Module, Signal
from amaranth.build import ResourceError
from amaranth.lib import wiring
from amaranth.lib.cdc import ResetSynchronizer

from .axi_lite import REG, axi_lite_signature
from .onchip_memory import OnChipMemory
from .top import Accelerator

__all__ = ["BoardTop", "StartFSM", "ecp5_pll_params", "load_platform", "plan_board_build",
           "START_DELAY"]

START_DELAY = 255                               # cycles after reset before the FSM starts


# --- clocking ------------------------------------------------------------------------------------

def ecp5_pll_params(f_in_mhz: float, f_out_mhz: float) -> dict:
    """EHXPLLL dividers for ``f_out`` from ``f_in`` (CLKOP feedback), closest achievable.

    Limits from the ECP5 datasheet (as used by Trellis' ecppll): PFD 3.125..400 MHz,
    VCO 400..800 MHz, output 3.125..400 MHz. Returns ``{"refdiv", "fbdiv", "outdiv",
    "f_out"}``; 25 -> 100 MHz gives refdiv 1, fbdiv 4, outdiv 6 (VCO 600 MHz). Raises
    ``ValueError`` when no setting exists (an input below 3.125 MHz).
    """
    best = None
    for refdiv in range(1, 129):
        pfd = f_in_mhz / refdiv
        if pfd < 3.125:
            break
        if pfd > 400:
            continue
        for fbdiv in range(1, 81):
            f = pfd * fbdiv
            for outdiv in range(1, 129):
                vco = f * outdiv
                if vco < 400:
                    continue
                if vco > 800:
                    break
                err = abs(f - f_out_mhz)
                if best is None or err < best[0] - 1e-9:
                    best = (err, {"refdiv": refdiv, "fbdiv": fbdiv, "outdiv": outdiv,
                                  "f_out": f})
                break
    if best is None:
        raise ValueError(f"no ECP5 PLL setting makes {f_out_mhz} MHz from {f_in_mhz} MHz")
    return best[1]


class _ECP5Clock(Elaboratable):
    """``sync`` domain at ``f_out`` from the board oscillator through an EHXPLLL; reset held
    until the PLL locks (ECP5 block RAM is initialised by configuration, no wait needed)."""

    def __init__(self, f_out_mhz: float):
        self.f_out_mhz = f_out_mhz
        self.f_achieved = None

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd = ClockDomain("sync")
        osc = platform.request(platform.default_clk)
        f_in = platform.default_clk_frequency / 1e6
        p = ecp5_pll_params(f_in, self.f_out_mhz)
        self.f_achieved = p["f_out"]
        locked = Signal()
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=str(f_in), a_FREQUENCY_PIN_CLKOP=str(p["f_out"]),
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p["outdiv"], p_CLKOP_CPHASE=p["outdiv"] - 1,
            p_CLKOP_FPHASE=0, p_CLKI_DIV=p["refdiv"], p_CLKFB_DIV=p["fbdiv"],
            p_FEEDBK_PATH="CLKOP",
            i_CLKI=osc.i, i_CLKFB=cd.clk, i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0,
            i_PHASEDIR=0, i_PHASESTEP=0, i_PHASELOADREG=0, i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=cd.clk, o_LOCK=locked,
        )
        m.submodules.rst = ResetSynchronizer(~locked, domain="sync")
        platform.add_clock_constraint(cd.clk, p["f_out"] * 1e6)
        return m


# --- the board top -------------------------------------------------------------------------------

class StartFSM(wiring.Component):
    """Starts one run over AXI4-Lite after reset and reports it.

    Writes PROG_BASE, then AP_CTRL = 1 (ap_start), waits for ``irq`` (ap_done) and reads ERROR.
    A master for :func:`~hwflow.hw.axi_lite.axi_lite_signature` (AW and W presented together, as
    the register file takes a write only when both are valid).

    Parameters
    ----------
    prog_base : int
        Super-beat address of the first instruction (``config.json``).
    """

    def __init__(self, prog_base: int):
        self.prog_base = prog_base
        super().__init__({
            "ctrl": wiring.In(axi_lite_signature()),
            "irq": wiring.In(1),
            "done": wiring.Out(1),
            "error": wiring.Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c = self.ctrl
        delay = Signal(range(START_DELAY + 1), init=START_DELAY)
        # araddr is a constant: the register file's read mux then selects ERROR only, and
        # synthesis drops the CYCLES/MPE_BUSY/RETIRED counters (160 flops, ~10% of an UP5K)
        m.d.comb += [c.wstrb.eq(0xF), c.bready.eq(1), c.rready.eq(1),
                     c.araddr.eq(REG["ERROR"])]

        def write(addr, value, nxt):
            m.d.comb += [c.awvalid.eq(1), c.wvalid.eq(1), c.awaddr.eq(addr), c.wdata.eq(value)]
            with m.If(c.awready & c.wready):
                m.next = nxt

        with m.FSM():
            with m.State("DELAY"):
                m.d.sync += delay.eq(delay - 1)
                with m.If(delay == 0):
                    m.next = "PROG_BASE"
            with m.State("PROG_BASE"):
                write(REG["PROG_BASE"], self.prog_base, "PROG_BASE_B")
            with m.State("PROG_BASE_B"):
                with m.If(c.bvalid):
                    m.next = "START"
            with m.State("START"):
                write(REG["AP_CTRL"], 1, "START_B")
            with m.State("START_B"):
                with m.If(c.bvalid):
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(self.irq):
                    m.next = "READ_ERROR"
            with m.State("READ_ERROR"):
                m.d.comb += c.arvalid.eq(1)
                with m.If(c.arready):
                    m.next = "READ_ERROR_R"
            with m.State("READ_ERROR_R"):
                with m.If(c.rvalid):
                    m.d.sync += [self.error.eq(c.rdata != 0), self.done.eq(1)]
                    m.next = "DONE"
            with m.State("DONE"):
                pass
        return m


class BoardTop(Elaboratable):
    """The accelerator on an open board, running the build folder's program once after reset.

    ``Accelerator(cfg)`` + :class:`OnChipMemory` holding the memory image + :class:`StartFSM`.
    The LEDs show ``done``, ``error`` and an 8-bit XOR of every byte the accelerator wrote (folded
    onto the LEDs left): every result bit reaches a pin, so synthesis keeps the whole datapath.

    Parameters
    ----------
    cfg : AccelConfig
    image : bytes
    prog_base : int
    family : str
        ``ecp5`` (PLL to ``clock_mhz``) or ``ice40`` (the board oscillator as is).
    clock_mhz : float
    """

    def __init__(self, cfg, image: bytes, prog_base: int, family: str, clock_mhz: float):
        self.cfg, self.image, self.prog_base = cfg, image, prog_base
        self.family, self.clock_mhz = family, clock_mhz

    def elaborate(self, platform):
        m = Module()
        if self.family == "ecp5":
            m.submodules.clock = _ECP5Clock(self.clock_mhz)
        # iCE40: amaranth-boards derives `sync` from the 12 MHz oscillator, with the power-on
        # delay the iCE40 block RAMs need after configuration.
        m.submodules.accel = accel = Accelerator(self.cfg)
        m.submodules.memory = mem = OnChipMemory(self.cfg, self.image)
        m.submodules.start = start = StartFSM(self.prog_base)
        for j in range(self.cfg.mem_ports):
            wiring.connect(m, accel.mem[j], mem.mem[j])
        wiring.connect(m, start.ctrl, accel.ctrl)
        m.d.comb += start.irq.eq(accel.irq)

        checksum = Signal(8)
        written = Signal(8)                   # XOR of the bytes taken this cycle, all ports
        parts = [(p.wr.valid & p.wr.ready).replicate(8) & _xor_bytes(p.wr.payload.data)
                 for p in accel.mem]
        total = parts[0]
        for part in parts[1:]:
            total = total ^ part
        m.d.comb += written.eq(total)
        m.d.sync += checksum.eq(checksum ^ written)

        leds = _request_leds(platform)
        show = [start.done, start.error] + _fold(checksum, max(0, len(leds) - 2))
        for led, bit in zip(leds, show, strict=False):
            m.d.comb += led.o.eq(bit)
        return m


def _xor_bytes(data):
    acc = data[0:8]
    for i in range(8, len(data), 8):
        acc = acc ^ data[i:i + 8]
    return acc


def _fold(value, n: int) -> list:
    """``n`` bits that together depend on every bit of ``value`` (XOR-folded)."""
    if n == 0:
        return []
    bits = [value[i] for i in range(min(n, len(value)))]
    for i in range(n, len(value)):
        bits[i % n] = bits[i % n] ^ value[i]
    return bits


def _request_leds(platform) -> list:
    leds = []
    for i in range(16):
        try:
            leds.append(platform.request("led", i))
        except ResourceError:
            break
    return leds


# --- the Amaranth side of the build --------------------------------------------------------------

def load_platform(spec: str):
    """An instance of the amaranth-boards platform ``spec`` (``module:Class``, the board YAML's
    ``platform``); ``ImportError`` / ``AttributeError`` when there is none."""
    mod, _, cls = spec.partition(":")
    return getattr(importlib.import_module(mod), cls)()


def plan_board_build(platform, cfg, image: bytes, prog_base: int, family: str,
                     clock_mhz: float, *, name: str, build_dir: str, **overrides):
    """The build plan (``platform.build(..., do_build=False)``: the RTLIL, constraints and tool
    script) of :class:`BoardTop` on ``platform``; ``overrides`` are the platform's tool options.
    The platform's tool check reads the tool names from the environment (the caller sets them).
    """
    if family == "ice40" and hasattr(platform, "break_off_pmod"):
        platform.add_resources(platform.break_off_pmod)    # 5 more LEDs on the iCEBreaker
    top = BoardTop(cfg, image, prog_base, family, clock_mhz)
    return platform.build(top, name=name, build_dir=build_dir, do_build=False,
                          do_program=False, **overrides)
