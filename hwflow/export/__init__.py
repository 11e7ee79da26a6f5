"""``hwflow bitstream``: from a build folder to a bitstream or a vendor project.

The board's ``flow`` picks the driver: ``ecp5`` / ``ice40`` build a real bitstream with Yosys
and nextpnr (``open_flow``); ``vitis`` / ``vivado`` write a complete vendor project and run the
vendor tool when it is installed (``xilinx``). Every driver first estimates resources for the
board (``fit``) and refuses a design that does not fit, with needed-vs-available numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

from hwflow.boards import load_board
from hwflow.buildfolder import is_build
from hwflow.errors import HwflowError
from hwflow.hw.config import AccelConfig


def build_bitstream(out, require_bitstream: bool = False, boards_dir=None) -> dict:
    """Run the board's export flow on build folder ``out``; returns a summary dict.

    Writes ``out/reports/utilization.json`` (and ``timing.json`` where a place-and-route ran).
    """
    out = Path(out)
    if not is_build(out):
        raise HwflowError(f"'{out}' is not an hwflow build folder; create one with "
                          "`hwflow compile MODEL --board BOARD -o OUT`")
    conf = json.loads((out / "config.json").read_text())
    board = load_board(conf["board"], boards_dir)
    cfg = AccelConfig(**conf["accel"])
    if board.flow in ("ecp5", "ice40"):
        from .open_flow import build_open

        return build_open(out, board, cfg)
    from .xilinx import export_xilinx

    return export_xilinx(out, board, cfg, require_bitstream=require_bitstream)
