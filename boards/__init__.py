"""Board data: one YAML file per board in this folder (or in ``$HWFLOW_BOARDS`` / ``--boards-dir``).

Boards are data, not code: this module only reads and validates them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

BOARD_DIR = Path(__file__).resolve().parent
RESOURCE_KINDS = ("lut", "ff", "dsp", "bram", "uram")
FLOWS = ("vitis", "vivado", "ecp5", "ice40")


class BoardError(Exception):
    """A board is unknown or its YAML is invalid (one-line message)."""


@dataclass(frozen=True)
class Board:
    """One FPGA board: part, resources, external memory, clock and build flow."""

    name: str
    description: str
    vendor: str
    part: str
    family: str
    resources: dict
    memory: dict
    clocks: dict
    flow: str
    engine: dict = field(default_factory=dict)
    package: str = ""
    speed_grade: str = ""
    platform: str = ""        # amaranth-boards platform ("module:Class") for open-toolchain boards
    bram_kbits: int = 36      # size of one block RAM (the unit of resources.bram): Xilinx 36,
    #                           ECP5 EBR 18, iCE40 EBR 4
    path: str = ""

    @property
    def clock_mhz(self) -> float:
        return float(self.clocks["kernel_mhz"])


_SCHEMA = {
    "name": str, "description": str, "vendor": str, "part": str, "family": str,
    "resources": dict, "memory": dict, "clocks": dict, "flow": str,
}
_MEMORY = {"channels": int, "port_bytes": int, "bandwidth_gbps": (int, float)}
_ENGINE = ("chains", "chain_len", "mem_ports", "act_depth", "weight_depth",
           "tlmm_g", "tlmm_t", "tlmm_q", "tlmm_acc_depth")
# build the sparse selectors / the int4 dequantizer / the transformer units / the ternary
# table-lookup engine
_ENGINE_FLAGS = ("sparse", "int4", "transformer", "tlmm")


def _search_dirs(extra: str | os.PathLike | None) -> list[Path]:
    dirs = []
    if extra:
        dirs.append(Path(extra))
    if os.environ.get("HWFLOW_BOARDS"):
        dirs.append(Path(os.environ["HWFLOW_BOARDS"]))
    dirs.append(BOARD_DIR)
    return dirs


def _validate(data, path: Path) -> Board:
    where = path.name
    if not isinstance(data, dict):
        raise BoardError(f"{where}: expected a YAML mapping at the top level")
    for key, typ in _SCHEMA.items():
        if key not in data:
            raise BoardError(f"{where}: missing field '{key}'")
        if not isinstance(data[key], typ):
            raise BoardError(f"{where}: field '{key}' must be a {typ.__name__}")
    for kind in RESOURCE_KINDS:
        v = data["resources"].get(kind)
        if not isinstance(v, int) or v < 0:
            raise BoardError(f"{where}: field 'resources.{kind}' must be a non-negative integer")
    if not isinstance(data["memory"].get("type"), str):
        raise BoardError(f"{where}: field 'memory.type' must be a string (hbm2, ddr4, ...)")
    for key, typ in _MEMORY.items():
        v = data["memory"].get(key)
        if not isinstance(v, typ) or v <= 0:
            raise BoardError(f"{where}: field 'memory.{key}' must be a positive number")
    mhz = data["clocks"].get("kernel_mhz")
    if not isinstance(mhz, (int, float)) or mhz <= 0:
        raise BoardError(f"{where}: field 'clocks.kernel_mhz' must be a positive number")
    engine = data.get("engine", {}) or {}
    if not isinstance(engine, dict):
        raise BoardError(f"{where}: field 'engine' must be a mapping")
    for key, v in engine.items():
        if key in _ENGINE_FLAGS:
            if not isinstance(v, bool):
                raise BoardError(f"{where}: field 'engine.{key}' must be true or false")
            continue
        if key not in _ENGINE:
            raise BoardError(f"{where}: unknown field 'engine.{key}' (known: "
                             f"{', '.join(_ENGINE + _ENGINE_FLAGS)})")
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BoardError(f"{where}: field 'engine.{key}' must be a positive integer")
    if data["flow"] not in FLOWS:
        raise BoardError(f"{where}: field 'flow' is '{data['flow']}' (known: {', '.join(FLOWS)})")
    for key in ("package", "speed_grade", "platform"):
        if not isinstance(data.get(key, ""), str):
            raise BoardError(f"{where}: field '{key}' must be a string")
    kbits = data.get("bram_kbits", 36)
    if not isinstance(kbits, int) or isinstance(kbits, bool) or kbits < 1:
        raise BoardError(f"{where}: field 'bram_kbits' (Kb per block RAM) must be a positive "
                         f"integer")
    if data["flow"] in ("ecp5", "ice40") and not data.get("platform"):
        raise BoardError(f"{where}: field 'platform' (amaranth-boards 'module:Class') is required "
                         f"for the {data['flow']} flow")
    fields = {k: data[k] for k in _SCHEMA}
    return Board(**fields, engine=engine, package=data.get("package", ""),
                 speed_grade=data.get("speed_grade", ""), platform=data.get("platform", ""),
                 bram_kbits=kbits, path=str(path))


def _read(path: Path) -> Board:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise BoardError(f"{path.name}: not valid YAML ({str(e).splitlines()[0]})") from None
    board = _validate(data, path)
    if board.name != path.stem:
        raise BoardError(f"{path.name}: field 'name' is '{board.name}', expected '{path.stem}'")
    return board


def list_boards(extra_dir=None) -> list[Board]:
    """All boards, user folders first (a user board shadows a bundled one of the same name)."""
    seen: dict[str, Board] = {}
    for d in _search_dirs(extra_dir):
        for p in sorted(Path(d).glob("*.yaml")):
            if p.stem not in seen:
                seen[p.stem] = _read(p)
    return sorted(seen.values(), key=lambda b: b.name)


def load_board(name: str, extra_dir=None) -> Board:
    """Load a board by name; raises :class:`BoardError` naming the known boards if unknown."""
    for d in _search_dirs(extra_dir):
        p = Path(d) / f"{name}.yaml"
        if p.is_file():
            return _read(p)
    known = ", ".join(b.name for b in list_boards(extra_dir))
    raise BoardError(f"unknown board '{name}' (known boards: {known}; "
                     f"add one as a YAML file in $HWFLOW_BOARDS)")
