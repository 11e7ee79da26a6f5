"""``hwflow bitstream``: from a build folder to a bitstream or a vendor project.

The board's ``flow`` picks the driver: ``ecp5`` / ``ice40`` build a real bitstream with Yosys
and nextpnr (``open_flow``); ``vitis`` / ``vivado`` write a complete vendor project and run the
vendor tool when it is installed (``xilinx``). Every driver first estimates resources for the
board (``fit``) and refuses a design that does not fit, with needed-vs-available numbers.
"""

from __future__ import annotations

from pathlib import Path

from hwflow.boards import load_board
from hwflow.buildfolder import open_build
from hwflow.errors import HwflowError
from hwflow.hw.config import AccelConfig
from hwflow.rtl_cache import check_cache_writable


def build_bitstream(out, require_bitstream: bool = False, boards_dir=None) -> dict:
    """Run the board's export flow on build folder ``out``; returns a summary dict.

    Writes ``out/reports/utilization.json`` (and ``timing.json`` where a place-and-route ran).
    The build is first checked against the digests recorded at compile
    (:func:`hwflow.buildfolder.open_build`).
    """
    out = Path(out)
    conf = open_build(out)          # every file as compile wrote it, or one line naming it
    if conf.get("shape_only"):
        raise HwflowError(f"{out} is a shape-only build (no RTL, no memory image); compile the "
                          "model's weights to build a bitstream")
    board = load_board(conf["board"], boards_dir)
    check_cache_writable()          # Verilog and Yosys results are cached
    cfg = AccelConfig(**conf["accel"])
    if board.flow in ("ecp5", "ice40"):
        from .open_flow import build_open

        return build_open(out, board, cfg)
    from .xilinx import export_xilinx

    return export_xilinx(out, board, cfg, require_bitstream=require_bitstream)
