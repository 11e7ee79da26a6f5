"""Board data: one YAML file per board in this folder (or in ``$HWFLOW_BOARDS`` / ``--boards-dir``).

Boards are data, not code: this module only reads and validates them. Every field the flow
reads is described once, in :data:`SCHEMA` (path, type, unit, rule, one line of description)
and :data:`CROSS_RULES` (rules between fields); :func:`load_board` checks a file against both,
and :func:`schema_markdown` renders them as the board-file documentation. A bad file is refused
with one line naming the file, the field, the bad value, the rule and the unit, e.g.
``my/b.yaml: memory.capacity_gb must be a positive number (GB), got 'eight'``.

A board name is defined once: a user folder (``--boards-dir``, ``$HWFLOW_BOARDS``) may add
boards but not redefine a bundled one (see :func:`load_board`).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

BOARD_DIR = Path(__file__).resolve().parent
RESOURCE_KINDS = ("lut", "ff", "dsp", "bram", "uram")
#: Board files are a few dozen lines; a cap keeps a stray multi-GB file from being read whole.
MAX_FILE_BYTES = 1 << 20
#: Board names become file names, build-folder names and Vivado project names (Tcl), so they
#: hold no spaces, quotes, brackets or path separators.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: Part, package and speed grade are pasted into Vivado Tcl (``create_project -part ...``).
PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
SPEED_GRADE_RE = re.compile(r"[A-Za-z0-9_.+-]*")           # Xilinx grades start with '-': -2L
#: ``platform`` is imported and instantiated by the open flow; only amaranth-boards classes,
#: so that a board file cannot make hwflow import and call an arbitrary module.
PLATFORM_RE = re.compile(r"amaranth_boards(\.[A-Za-z_]\w*)+:[A-Za-z_]\w*")


@dataclass(frozen=True)
class FlowInfo:
    """What one build flow (``flow:``) needs from its board."""

    vendor: str
    families: tuple
    bram_kbits: int        # block RAM size the flow's resource counts and image packing assume
    onchip_image: bool     # the memory image lives in block RAM (memory.type: bram)
    doc: str


XILINX_FAMILIES = ("virtex-ultrascale-plus-hbm", "virtex-ultrascale-plus",
                   "kintex-ultrascale-plus", "zynq-ultrascale-plus", "versal-ai-core", "versal")
#: The flows (``hwflow bitstream``'s drivers, ``hwflow.export``). ``vivado`` builds a block
#: design around the processing system, so only families that have one.
FLOWS = {
    "vitis": FlowInfo("xilinx", XILINX_FAMILIES, 36, False,
                      "Vitis RTL kernel project (Alveo cards)"),
    "vivado": FlowInfo("xilinx", ("zynq-ultrascale-plus", "versal-ai-core", "versal"), 36, False,
                       "Vivado block design with the processing system (Zynq UltraScale+, "
                       "Versal)"),
    "ecp5": FlowInfo("lattice", ("ecp5",), 18, True, "Yosys + nextpnr-ecp5 bitstream"),
    "ice40": FlowInfo("lattice", ("ice40",), 4, True, "Yosys + nextpnr-ice40 bitstream"),
}
VENDORS = ("xilinx", "lattice")
FAMILIES = XILINX_FAMILIES + ("ecp5", "ice40")
#: The DSP block each family's ``resources.dsp`` counts. A Versal DSP58 is a superset of the
#: DSP48E2 (AM004, "Differences from Previous Generations"): each DSP48E2-mode slice the RTL
#: describes is one DSP58.
DSP_PRIMITIVES = {**{f: "DSP48E2" for f in XILINX_FAMILIES}, "versal-ai-core": "DSP58",
                  "versal": "DSP58", "ecp5": "MULT18X18D", "ice40": "SB_MAC16"}
#: Families whose LUT/FF figures come from another family's synthesis (Yosys has no Versal
#: target): the stand-in, stated wherever such a figure is reported.
FABRIC_PROXIES = {f: ("estimated with the UltraScale+ fit, a proxy for Versal (DSP58): Yosys "
                      "synth_xilinx has no Versal family") for f in ("versal-ai-core", "versal")}
MEMORY_TYPES = ("hbm2", "hbm2e", "ddr4", "ddr5", "lpddr4", "bram")
TLMM_GROUPS = (2, 3, 4)
#: Largest AXI4 data bus: 1024 bits.
MAX_PORT_BYTES = 128
#: No FPGA fabric clock reaches 1 GHz; a larger number is a unit slip (Hz or kHz for MHz).
MAX_KERNEL_MHZ = 1000


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
    def dsp_primitive(self) -> str:
        """The DSP block ``resources.dsp`` counts (:data:`DSP_PRIMITIVES`)."""
        return DSP_PRIMITIVES[self.family]

    @property
    def clock_mhz(self) -> float:
        """Kernel clock in MHz (``clocks.kernel_mhz``)."""
        return float(self.clocks["kernel_mhz"])

    @property
    def capacity_bytes(self) -> int:
        """Memory the image may use, in bytes (``memory.capacity_gb`` x 10^9)."""
        return int(round(float(self.memory["capacity_gb"]) * 1e9))   # 0.000131 -> 131000

    @property
    def max_mem_ports(self) -> int:
        """The most memory ports an engine may open (``memory.ports``, default
        ``memory.channels``): the HBM pseudo-channels' AXI ports, or the Zynq PS's S_AXI_HP
        ports, several of which reach one DDR controller."""
        return int(self.memory.get("ports") or self.memory["channels"])

    def port_capacity_bytes(self, ports: int) -> int:
        """Bytes of the image one of ``ports`` ports may hold: its stripe lives in the channel
        it is wired to, and ports beyond the channels share them evenly (architecture.md,
        "External memory")."""
        channels = int(self.memory["channels"])
        return int(self.capacity_bytes / channels / -(-max(1, ports) // channels))

    @property
    def max_port_bytes(self) -> int:
        """The widest port the flow opens on a channel (``memory.max_port_bytes``, default
        ``memory.port_bytes``)."""
        return int(self.memory.get("max_port_bytes") or self.memory["port_bytes"])

    def port_rate_bytes(self, ports: int, port_bytes: int,
                        clock_mhz: float | None = None) -> int:
        """Bytes per kernel cycle the memory delivers to each of ``ports`` ports of
        ``port_bytes``: the delivered bandwidth (``memory.bandwidth_gbps``) shared by the
        channels, or by the ports where more ports than channels share them, at the kernel
        clock (or ``clock_mhz``), at most ``port_bytes`` (floored: the simulated memory and
        the cycle model use this integer). The U280's 32-byte ports get 32 (44.3 B per
        channel-cycle delivered at 300 MHz), its 64-byte ports 44; the KV260's four 16-byte
        ports 16 (19.2 each)."""
        share = max(int(self.memory["channels"]), int(ports))
        clock = float(clock_mhz or self.clock_mhz)
        per = float(self.memory["bandwidth_gbps"]) * 1e9 / share / (clock * 1e6)
        per += 1e-9         # 0.56 GB/s at 70 MHz is 8 B, not 7.999...
        return max(1, min(int(port_bytes), int(per)))


# ------------------------------------------------------------------------------ the schema

@dataclass(frozen=True)
class BoardField:
    """One field of a board file.

    Attributes
    ----------
    path : str
        Dotted path in the YAML (``memory.capacity_gb``).
    kind : str
        ``mapping``, ``str``, ``int``, ``number`` (int or float, finite) or ``bool``.
    unit : str
        Unit of the value (``GB``, ``MHz``, ``B``), empty where there is none.
    rule : str
        What the value must be, completing "must be ...".
    doc : str
        One line: what the flow does with it.
    required : bool
        Whether the file must give it.
    default : str
        For an optional field, what its absence means (documentation only).
    check : callable, optional
        ``value -> bool`` beyond the type check (range, pattern, allowed values).
    """

    path: str
    kind: str
    unit: str
    rule: str
    doc: str
    required: bool = True
    default: str = ""
    check: Callable[[object], bool] | None = None


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


def _power_of_two(lo: int, hi: int | None = None):
    return lambda v: v >= lo and not v & (v - 1) and (hi is None or v <= hi)


def _one_of(choices):
    return lambda v: v in choices


def _matches(pattern: re.Pattern):
    return lambda v: pattern.fullmatch(v) is not None


def _listed(choices) -> str:
    return ", ".join(str(c) for c in choices)


def _field(path, kind, unit, rule, doc, check=None, required=True, default=""):
    return BoardField(path, kind, unit, rule, doc, required, default, check)


def _resource(kind, unit, doc, positive=False):
    rule = "a positive integer" if positive else "a non-negative integer"
    return _field(f"resources.{kind}", "int", unit, rule, doc,
                  _positive if positive else _non_negative)


def _engine_int(key, unit, doc, rule="a positive integer", check=_positive):
    return _field(f"engine.{key}", "int", unit, rule, doc, check, required=False,
                  default="default: mapping/accel_config.py `choose_config`")


def _engine_flag(key, doc, default):
    return _field(f"engine.{key}", "bool", "", "true or false", doc, required=False,
                  default=f"default: {default}")


#: Every field of a board file, in file order. ``kind`` is checked first, then ``check``.
SCHEMA: tuple[BoardField, ...] = (
    _field("name", "str", "", "letters, digits, '_', '.' or '-', starting with a letter or digit",
           "board name: equals the file name; names build folders and Vivado projects",
           _matches(NAME_RE)),
    _field("description", "str", "", "a non-empty string", "one line for `hwflow boards`",
           lambda v: bool(v.strip())),
    _field("vendor", "str", "", f"one of {_listed(VENDORS)}", "FPGA vendor; matches the flow",
           _one_of(VENDORS)),
    _field("part", "str", "", "a part number (letters, digits, '_', '.', '+', '-')",
           "device part: Vivado `create_project -part`, reports", _matches(PART_RE)),
    _field("package", "str", "", "letters, digits, '_', '.', '+', '-' or empty",
           "device package (information)", lambda v: not v or PART_RE.fullmatch(v),
           required=False, default="default: empty"),
    _field("speed_grade", "str", "", "letters, digits, '_', '.', '+', '-' or empty",
           "speed grade (information)", _matches(SPEED_GRADE_RE),
           required=False, default="default: empty"),
    _field("family", "str", "", f"one of {_listed(FAMILIES)}",
           "device family: Yosys synth_xilinx family, Vivado processing-system template",
           _one_of(FAMILIES)),
    _field("platform", "str", "", "'amaranth_boards.MODULE:Class'",
           "amaranth-boards platform the open flows build for (pins, oscillator)",
           _matches(PLATFORM_RE), required=False, default="required for ecp5, ice40"),
    _field("resources", "mapping", "", "a mapping", "device resources: the fit budget"),
    _resource("lut", "LUTs", "logic (LUT6 on Xilinx, LUT4 on Lattice)", positive=True),
    _resource("ff", "flip-flops", "registers", positive=True),
    _resource("dsp", "DSP slices", "DSP48E2 / DSP58 / MULT18X18D / SB_MAC16"),
    _resource("bram", "blocks of bram_kbits Kb", "block RAMs"),
    _resource("uram", "288 Kb blocks", "UltraRAM (0 where the family has none)"),
    _field("memory", "mapping", "", "a mapping", "the memory that holds the image"),
    _field("memory.type", "str", "", f"one of {_listed(MEMORY_TYPES)}",
           "memory technology; bram: the image lives in block RAM (open flows)",
           _one_of(MEMORY_TYPES)),
    _field("memory.channels", "int", "channels", "a positive integer",
           "independent channels (HBM pseudo-channels, DDR controllers), each holding its "
           "ports' stripes of the image", _positive),
    _field("memory.ports", "int", "ports", "a positive multiple of memory.channels",
           "memory ports the fabric can open (Zynq S_AXI_HP ports sharing one DDR "
           "controller): the most engine.mem_ports", _positive, required=False,
           default="default: memory.channels"),
    _field("memory.port_bytes", "int", "B",
           f"a power of two from 1 to {MAX_PORT_BYTES}",
           "data bytes per beat of one memory port (an AXI4 data bus: 8 to 1024 bits)",
           _power_of_two(1, MAX_PORT_BYTES)),
    _field("memory.max_port_bytes", "int", "B",
           f"a power of two from memory.port_bytes to {MAX_PORT_BYTES}",
           "the widest port the flow opens on a channel (Vitis: a 512-bit kernel port on a "
           "256-bit HBM pseudo-channel); the mapper widens the ports to it where the ports at "
           "memory.port_bytes carry less than the delivered bandwidth",
           _power_of_two(1, MAX_PORT_BYTES), required=False,
           default="default: memory.port_bytes"),
    _field("memory.capacity_gb", "number", "GB", "a positive number",
           "memory the image may use, in 10^9 bytes; larger images are refused", _positive),
    _field("memory.bandwidth_gbps", "number", "GB/s", "a positive number",
           "bandwidth the memory really delivers (10^9 B/s); no prediction exceeds it",
           _positive),
    _field("clocks", "mapping", "", "a mapping", "clock targets"),
    _field("clocks.kernel_mhz", "number", "MHz", f"a number above 0 and at most {MAX_KERNEL_MHZ}",
           "accelerator clock: cycle-to-time conversion, timing target, PLL setting",
           lambda v: 0 < v <= MAX_KERNEL_MHZ),
    _field("flow", "str", "", f"one of {_listed(FLOWS)}", "how `hwflow bitstream` builds it",
           _one_of(FLOWS)),
    _field("bram_kbits", "int", "Kb", "the flow's block RAM size: " + ", ".join(
               f"{kb} ({_listed(k for k, f in FLOWS.items() if f.bram_kbits == kb)})"
               for kb in dict.fromkeys(f.bram_kbits for f in FLOWS.values())),
           "size of one block RAM, the unit of resources.bram", _positive, required=False,
           default="default: the flow's"),
    _field("engine", "mapping", "", "a mapping", "the board's default accelerator",
           required=False, default="default: sized by mapping/accel_config.py"),
    _engine_int("chains", "DSP chains", "P, output channels computed in parallel"),
    _engine_int("chain_len", "DSP slices", "L, slices per chain; also the activation word bytes",
                rule="a power of two", check=_power_of_two(1)),
    _engine_int("mem_ports", "ports", "memory ports used (at most memory.channels)"),
    _engine_int("act_depth", "words of chain_len B", "activation / decode buffer depth"),
    _engine_int("weight_depth", "rows of chains x chain_len B", "weight ring depth"),
    _engine_int("tlmm_g", "ternary weights", "G, weights per table index",
                rule=f"one of {_listed(TLMM_GROUPS)}", check=_one_of(TLMM_GROUPS)),
    _engine_int("tlmm_t", "tables", "T, lookup tables"),
    _engine_int("tlmm_q", "replicas", "Q, replicas of each table"),
    _engine_int("tlmm_acc_depth", "channels", "int32 accumulator depth: the largest TMATMUL n_out"),
    _engine_int("tlmm_rows", "rows", "R, activation rows a TMATMUL pass looks up per index record"),
    _engine_int("tlmm_passes", "passes", "S, passes of tlmm_rows rows one fetch of the index "
                "records serves (a record buffer of one chunk)"),
    _engine_int("attn_heads", "query heads", "H, attention lanes: query heads computed from one "
                "read of their kv heads' cache"),
    _engine_int("vec_lanes", "elements", "V, vector unit lanes: RMSNORM/SILUMUL elements per "
                "cycle (ROPE pairs up to min(V, chain_len/2)); must divide chain_len"),
    _engine_flag("sparse", "build the N:M sparse selectors and the index ring",
                 "true (false under 20k LUTs)"),
    _engine_flag("int4", "build the int4 dequantizer", "true (false under 20k LUTs)"),
    _engine_flag("transformer", "build the vector and attention units (GATHER, POS)",
                 "true (false under 20k LUTs)"),
    _engine_flag("tlmm", "build the ternary table-lookup matmul engine",
                 "false; a ternary build sizes one unless the board says false"),
    _engine_flag("ring_uram", "place the weight ring in UltraRAM (resources.uram > 0)",
                 "false; predictions move it there when block RAM is short"),
)


@dataclass(frozen=True)
class CrossRule:
    """A rule between fields: ``check(data, file_stem) -> error text or None`` (the caller
    prefixes the file)."""

    text: str
    check: Callable[[dict, str], str | None]


def _name_is_file_name(d, stem):
    if d["name"] != stem:
        return f"name must equal the file name '{stem}', got {_show(d['name'])}"
    return None


def _vendor_matches_flow(d, _):
    want = FLOWS[d["flow"]].vendor
    if d["vendor"] != want:
        return f"vendor must be '{want}' for the {d['flow']} flow, got '{d['vendor']}'"
    return None


def _family_matches_flow(d, _):
    fams = FLOWS[d["flow"]].families
    if d["family"] not in fams:
        return f"family must be one of {_listed(fams)} for the {d['flow']} flow, " \
               f"got '{d['family']}'"
    return None


def _platform_for_open_flows(d, _):
    if FLOWS[d["flow"]].onchip_image and not d.get("platform"):
        return f"platform ('amaranth_boards.MODULE:Class') is required for the {d['flow']} flow"
    return None


def _memory_type_matches_flow(d, _):
    onchip, typ = FLOWS[d["flow"]].onchip_image, d["memory"]["type"]
    if onchip and typ != "bram":
        return f"memory.type must be 'bram' for the {d['flow']} flow (the image lives in block " \
               f"RAM), got '{typ}'"
    if not onchip and typ == "bram":
        return f"memory.type must be external memory ({_listed(MEMORY_TYPES[:-1])}) for the " \
               f"{d['flow']} flow, got 'bram'"
    return None


def _bram_kbits_matches_flow(d, _):
    want, got = FLOWS[d["flow"]].bram_kbits, d.get("bram_kbits")
    if got is not None and got != want:
        return f"bram_kbits must be {want} (Kb) for the {d['flow']} flow, got {got}"
    return None


def _mem_ports_within_ports(d, _):
    ch = d["memory"]["channels"]
    most = d["memory"].get("ports") or ch
    if most % ch:
        return f"memory.ports must be a multiple of memory.channels ({ch}), got {most}"
    ports = (d.get("engine") or {}).get("mem_ports")
    if ports is not None and ports > most:
        return f"engine.mem_ports must be at most memory.ports ({most}), got {ports}"
    widest = d["memory"].get("max_port_bytes")
    if widest is not None and widest < d["memory"]["port_bytes"]:
        return (f"memory.max_port_bytes must be at least memory.port_bytes "
                f"({d['memory']['port_bytes']}), got {widest}")
    return None


CROSS_RULES: tuple[CrossRule, ...] = (
    CrossRule("`name` equals the file name without `.yaml`.", _name_is_file_name),
    CrossRule("`vendor` is the flow's: xilinx for vitis and vivado, lattice for ecp5 and ice40.",
              _vendor_matches_flow),
    CrossRule("`family` is one the flow builds: "
              + "; ".join(f"{k}: {_listed(f.families)}" for k, f in FLOWS.items()) + ".",
              _family_matches_flow),
    CrossRule("`platform` is given for the open flows (ecp5, ice40).", _platform_for_open_flows),
    CrossRule("`memory.type` is `bram` exactly for the open flows (the image is in block RAM).",
              _memory_type_matches_flow),
    CrossRule("`bram_kbits`, when given, is the flow's block RAM size.", _bram_kbits_matches_flow),
    CrossRule("`memory.ports` is a multiple of `memory.channels`; `engine.mem_ports` is at most "
              "`memory.ports`; `memory.max_port_bytes` is at least `memory.port_bytes`.",
              _mem_ports_within_ports),
)
#: Engine rules between fields (super-beat a multiple of chain_len, chain groups, ...) are
#: hardware rules: ``hw.config.AccelConfig`` checks them when the flow sizes the engine.


def schema_markdown() -> str:
    """The board-file documentation: :data:`SCHEMA` as a markdown table, then the rules
    between fields (:data:`CROSS_RULES`).

    Returns
    -------
    str
        Markdown, one row per field (field, type, unit, required or default, rule,
        description).
    """
    rows = ["| field | type | unit | required | rule | description |",
            "|---|---|---|---|---|---|"]
    for f in SCHEMA:
        need = "yes" if f.required else f"no ({f.default})" if f.default else "no"
        rows.append(f"| `{f.path}` | {f.kind} | {f.unit} | {need} | {f.rule} | {f.doc} |")
    rows += ["", "Rules between fields:", ""]
    rows += [f"- {r.text}" for r in CROSS_RULES]
    rows += ["- Engine sizes must also form a valid accelerator (`hw/config.py` `AccelConfig`: "
             "the super-beat is a multiple of chain_len, ...); the flow checks that when it "
             "sizes the engine."]
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------------------ validation

def _kind_ok(kind: str, v) -> bool:
    if kind == "mapping":
        return isinstance(v, dict)
    if kind == "bool":
        return isinstance(v, bool)
    if isinstance(v, bool):          # YAML true/false are ints to Python; never a count
        return False
    if kind == "int":
        return isinstance(v, int)
    if kind == "number":
        return isinstance(v, (int, float)) and math.isfinite(v)
    return isinstance(v, str)


def _show(v) -> str:
    """A bad value, short and on one line, the way the user wrote it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "nothing (null)"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _number_hint(f: BoardField, v) -> str:
    # YAML 1.1 reads 1e-6 (no dot) as text: say so rather than "got '1e-6'" alone
    if f.kind == "number" and isinstance(v, str):
        try:
            x = float(v)
        except ValueError:
            return ""
        if math.isfinite(x):
            return f" (YAML reads {v} as text: write it with a dot, e.g. {x:.1e})"
    return ""


def _bad(where: str, f: BoardField, v) -> BoardError:
    unit = f" ({f.unit})" if f.unit else ""
    return BoardError(f"{where}: {f.path} must be {f.rule}{unit}, got {_show(v)}"
                      f"{_number_hint(f, v)}")


def _children(parent: str) -> list[str]:
    depth = parent.count(".") + 1 if parent else 0
    return [f.path.split(".")[-1] for f in SCHEMA
            if f.path.count(".") == depth and f.path.startswith(parent + "." if parent else "")]


def _check_keys(where: str, mapping: dict, parent: str) -> None:
    known = _children(parent)
    for key in mapping:
        if key not in known:
            path = f"{parent}.{key}" if parent else str(key)
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise BoardError(f"{where}: unknown field '{path}' ({hint}known"
                             f"{' under ' + parent if parent else ''}: {_listed(known)})")


def _check_field(where: str, f: BoardField, container: dict) -> None:
    key = f.path.split(".")[-1]
    v = container.get(key)
    if v is None:                    # absent, or `key:` with nothing after it
        if f.required:
            unit = f" ({f.unit})" if f.unit else ""
            raise BoardError(f"{where}: {f.path} is missing; it must be {f.rule}{unit}: {f.doc}")
        return
    if not _kind_ok(f.kind, v) or (f.check is not None and not f.check(v)):
        raise _bad(where, f, v)
    if f.kind == "mapping":
        _check_keys(where, v, f.path)


def _container(data: dict, path: str) -> dict:
    parent = path.rpartition(".")[0]
    return (data.get(parent) or {}) if parent else data


def _validate(data, path: Path) -> Board:
    where = _shown(path)
    _check_shape(data, where)
    _check_keys(where, data, "")
    for f in SCHEMA:
        _check_field(where, f, _container(data, f.path))
    for rule in CROSS_RULES:
        err = rule.check(data, path.stem)
        if err:
            raise BoardError(f"{where}: {err}")
    opt = {k: data[k] for k in ("package", "speed_grade", "platform") if data.get(k) is not None}
    return Board(**{k: data[k] for k in ("name", "description", "vendor", "part", "family",
                                         "resources", "memory", "clocks", "flow")},
                 engine=dict(data.get("engine") or {}), **opt,
                 bram_kbits=data.get("bram_kbits") or FLOWS[data["flow"]].bram_kbits,
                 path=str(path))


def _check_shape(data, where: str) -> None:
    if data is None:
        raise BoardError(f"{where}: the file is empty; a board file is a YAML mapping of "
                         f"fields (name:, part:, resources:, ...), see boards/u280.yaml")
    if not isinstance(data, dict):
        what = "a list" if isinstance(data, list) else f"a single value ({_show(data)})"
        raise BoardError(f"{where}: holds {what}, expected a YAML mapping of board fields "
                         f"(name:, part:, resources:, ...), see boards/u280.yaml")


# ------------------------------------------------------------------------------ reading

class _BoardLoader(yaml.SafeLoader):
    """``yaml.safe_load`` (no Python tags) that also refuses a key given twice in one mapping:
    YAML keeps the last one silently, so a second ``channels:`` would quietly win."""


def _construct_mapping(loader: _BoardLoader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"field '{key}' is given twice", key_node.start_mark)
            seen.add(key)
        except TypeError:            # unhashable key: construct_mapping says so itself
            break
    return loader.construct_mapping(node, deep=deep)


_BoardLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _shown(path: Path) -> str:
    """The file as the user would name it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _text(path: Path) -> str:
    where = _shown(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise BoardError(f"{where}: cannot read the board file ({e.strerror})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise BoardError(f"{where}: more than {MAX_FILE_BYTES} B, too large for a board file "
                         f"(a few dozen lines of YAML)")
    try:
        return raw.decode("utf-8-sig")   # a BOM from a Windows editor is harmless
    except UnicodeDecodeError as e:
        raise BoardError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                         f"{e.start}); save the board file as UTF-8") from None


def _parse(text: str, where: str):
    try:
        return yaml.load(text, Loader=_BoardLoader)     # a SafeLoader: no Python tags
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(", ".join(str(t) for t in (e.context, e.problem) if t).split())
        raise BoardError(f"{where}: not valid YAML{at}: {what}") from None
    except yaml.YAMLError as e:
        raise BoardError(f"{where}: not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise BoardError(f"{where}: not valid YAML: nested too deeply") from None


def _read(path: Path) -> Board:
    return _validate(_parse(_text(path), _shown(path)), path)


def _user_dir(value, what: str) -> Path:
    d = Path(value)
    if not d.exists():
        raise BoardError(f"{what} '{value}' does not exist; give a folder of board YAML files")
    if not d.is_dir():
        raise BoardError(f"{what} '{value}' is not a folder; give a folder of board YAML files")
    return d


def board_dirs(extra_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for boards, first to last.

    Parameters
    ----------
    extra_dir : path, optional
        ``--boards-dir``.

    Returns
    -------
    list of Path
        ``extra_dir``, then ``$HWFLOW_BOARDS``, then the bundled :data:`BOARD_DIR` (each once).

    Raises
    ------
    BoardError
        ``extra_dir`` or ``$HWFLOW_BOARDS`` does not exist or is not a folder (never silently
        ignored: a typo would otherwise fall back to the bundled boards).
    """
    dirs = []
    if extra_dir:
        dirs.append(_user_dir(extra_dir, "--boards-dir"))
    if os.environ.get("HWFLOW_BOARDS"):
        dirs.append(_user_dir(os.environ["HWFLOW_BOARDS"], "$HWFLOW_BOARDS"))
    dirs.append(BOARD_DIR)
    out, seen = [], set()
    for d in dirs:
        if d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out


def _files(dirs: list[Path], name: str | None = None) -> dict[str, list[Path]]:
    """Board name -> its files across ``dirs`` (one folder's symlink to another's file counts
    once); only ``name`` when given."""
    found: dict[str, list[Path]] = {}
    for d in dirs:
        paths = [d / f"{name}.yaml"] if name else sorted(d.glob("*.yaml"))
        for p in paths:
            if p.is_file() and all(p.resolve() != q.resolve() for q in found.get(p.stem, [])):
                found.setdefault(p.stem, []).append(p)
    return found


def _one_file(name: str, paths: list[Path]) -> Path:
    if len(paths) > 1:
        bundled = " (bundled)" if paths[-1].parent.resolve() == BOARD_DIR else ""
        raise BoardError(f"board '{name}' is defined twice: {_shown(paths[0])} and "
                         f"{_shown(paths[1])}{bundled}; give yours another name (file name and "
                         f"name:), e.g. '{name}-custom'")
    return paths[0]


def list_boards(extra_dir=None) -> list[Board]:
    """All boards, validated, sorted by name.

    Parameters
    ----------
    extra_dir : path, optional
        ``--boards-dir``; ``$HWFLOW_BOARDS`` and the bundled boards are always searched.

    Raises
    ------
    BoardError
        A folder is missing, a file is invalid, or a name is defined twice.
    """
    files = _files(board_dirs(extra_dir))
    return sorted((_read(_one_file(n, ps)) for n, ps in files.items()), key=lambda b: b.name)


def load_board(name: str, extra_dir=None) -> Board:
    """Load and validate one board by name.

    A user folder (``extra_dir`` = ``--boards-dir``, then ``$HWFLOW_BOARDS``) adds boards; a
    board name must be defined by one file only. A user file with a bundled board's name
    (or the same name in both user folders) is refused, not used as an override: a build
    records only the board's name, so a later ``hwflow predict`` or ``bitstream`` run without
    the same folder would silently use the other board's figures. Copy the bundled file under
    a new name (``u280-custom.yaml``, ``name: u280-custom``) instead.

    Parameters
    ----------
    name : str
        Board name (the file name without ``.yaml``).
    extra_dir : path, optional
        ``--boards-dir``.

    Returns
    -------
    Board

    Raises
    ------
    BoardError
        Unknown name (the message lists the known boards), a missing folder, an invalid file
        (one line naming the file, field, value, rule and unit), or a name defined twice.
    """
    dirs = board_dirs(extra_dir)
    if isinstance(name, str) and NAME_RE.fullmatch(name):   # never a path such as '../x'
        paths = _files(dirs, name).get(name)
        if paths:
            return _read(_one_file(name, paths))
    known = sorted(_files(dirs))      # names only: a broken other file must not hide this error
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise BoardError(f"unknown board {_show(name)} ({hint}known boards: {_listed(known)}; "
                     f"add one as a YAML file in a folder given by --boards-dir or "
                     f"$HWFLOW_BOARDS)")
