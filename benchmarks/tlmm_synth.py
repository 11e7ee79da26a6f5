"""Benchmark: LUTs per ternary MAC of the table-lookup engine (TLMM) vs a plain ternary add array.

TeLLMe's premise: looking up a precomputed table of the ``3**G`` signed sums of ``G``
activations does ``G`` ternary MACs per lookup, so a table-lookup engine needs fewer LUTs per
ternary MAC than adding/subtracting every activation. This script synthesizes, with Yosys
``synth_xilinx -family xcup`` (UltraScale+, the same script and options as
:mod:`hwflow.export.fit`), for each point ``(G, T, Q, SB)``:

``tlmm``
    The whole TLMM engine (:class:`hwflow.hw.tlmm.TernaryLookupMatmul`): table build, the
    ``T * Q`` lookups and adder trees, and also its index/activation streaming, the
    accumulator memory (``tlmm_acc_depth`` = :data:`ACC_DEPTH`), the parameter memory, the
    requantizing epilogue and the control, at the super-beat ``SB`` of the point (the width
    of its read data and parameter memory: the board's, for the board points).
``dp-lutram``, ``dp-reg``
    The lookup datapath alone (:class:`hwflow.hw.ternary_array.TableLookupDatapath`: ``T``
    tables of ``3**G`` entries, ``T * Q`` lookups, an adder tree over ``T`` and ``Q`` int32
    accumulators in registers), with the tables in LUTRAM (``Q`` asynchronous read ports, as
    the engine builds them) or in registers (each lookup a ``3**G``-to-1 mux). The engine does
    not expose its own lookup datapath as a sub-component, so this is a reference datapath of
    the same scheme, not a cut-out of the engine (which, like it, stores whole tables for
    G = 2, 3, but only half of each table for G = 4, negating the mirrored half on lookup).
``array``
    :class:`hwflow.hw.ternary_array.TernaryAddArray` of equal throughput: ``lanes = T * G``,
    ``outputs = Q``, i.e. ``T * Q * G`` ternary MACs per cycle (an add/subtract tree per
    output and ``Q`` int32 accumulators in registers: datapath only).

So ``array / dp-*`` compares datapath with datapath, ``array / tlmm`` a bare datapath with a
whole engine (which flatters the array: it has no memory interface, no epilogue, no
control). Every design is wrapped in flat ports (see :func:`flat_verilog`). The LUT column
counts logic LUTs; LUTRAM counts the LUTs used as distributed RAM (:data:`LUTRAM_LUTS`, not
cells); "LUT/MAC" is ``(LUT + LUTRAM + SRL) / (ternary MACs per cycle)``.

Points (:data:`POINTS`): G = 3 at (T, Q) = (4, 4), the KV260's engine (8, 8) at its 16-byte
super-beat (one 128-bit DDR port: 320-bit records take 3 beats) and the U280's (16, 8) at its
256-byte super-beat (8 HBM ports: 3 records of 640 bits per beat); G = 2 and 4 at (4, 4).
The (4, 4) points use 16 B (the smallest super-beat of the flow; a record fits one beat).

    python benchmarks/tlmm_synth.py              # all POINTS (Yosys, ~15 min on 2 cores)
    python benchmarks/tlmm_synth.py --short      # G = 3, (T, Q) = (2, 2), SB = 16 (CI)
    python benchmarks/tlmm_synth.py --point 3,8,8,16 --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from concurrent.futures import ThreadPoolExecutor

from amaranth import Module, Signal, Value
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import Flow

from hwflow.export import fit
from hwflow.hw.config import AccelConfig
from hwflow.hw.ternary_array import TableLookupDatapath, TernaryAddArray

#: (G, T, Q, SB, R, S) points of the full run and of ``--short`` (SB: super-beat bytes of the
#: engine, R rows a pass, S passes a fetch of the records; (3, 12, 8, 64, 4, 4) is
#: boards/kv260.yaml's engine, (3, 16, 8, 256, 1, 1) boards/u280.yaml's).
POINTS = [(3, 4, 4, 16, 1, 1), (3, 8, 8, 16, 1, 1), (3, 12, 8, 64, 1, 1), (3, 12, 8, 64, 4, 1),
          (3, 12, 8, 64, 4, 4), (3, 16, 8, 256, 1, 1), (2, 4, 4, 16, 1, 1), (4, 4, 4, 16, 1, 1)]
SHORT_POINTS = [(3, 2, 2, 16, 1, 1)]
#: Accumulator depth of the synthesized engines (the AccelConfig default: one BRAM-sized
#: memory per accumulator lane; it does not change the lookup datapath).
ACC_DEPTH = 1024
#: Designs per point, in table order (see the module docstring).
KINDS = ("tlmm", "dp-lutram", "dp-reg", "array")
#: LUTs of one LUTRAM cell (UltraScale+ SLICEM: a RAM32M/RAM64M uses 4 LUTs, RAM32M16/RAM64M8
#: all 8; a dual-port RAMnX1D two copies of the single-port one).
LUTRAM_LUTS = {"RAM16X1S": 1, "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4,
               "RAM16X1D": 2, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1D": 8,
               "RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8}

def flat_verilog(component: wiring.Component, top: str) -> str:
    """Verilog of ``component`` under a top level with plain (unstructured) ports.

    Amaranth names the fields of a port with a data layout as extra wires (``x__payload[1]``);
    at the top level these collide with the bit names ABC9 gives the port and Yosys 0.70
    asserts in ``ABC_OPS_REINTEGRATE`` (as in ``benchmarks/dsp_inference.py``).
    """
    m = Module()
    m.submodules.dut = component
    ports = []
    for path, member, value in component.signature.flatten(component):
        value = Value.cast(value)
        pin = Signal(len(value), name="__".join(str(p) for p in path))
        m.d.comb += (value.eq(pin) if member.flow == Flow.In else pin.eq(value))
        ports.append(pin)
    return verilog.convert(m, name=top, ports=ports)


def tlmm_config(G: int, T: int, Q: int, SB: int, R: int = 1, S: int = 1,
                acc_depth: int = ACC_DEPTH) -> AccelConfig:
    """A valid accelerator configuration of super-beat ``SB`` (16 B: one 16-byte port, as the
    KV260; larger: ``SB / 32`` ports of 32 B, as the U280's 8) carrying the TLMM parameters.
    The engine depends on the matrix engine's sizes only through ``SB`` (its read data and
    parameter memory width, and how many index records a beat holds) and ``L = 16``."""
    if SB % 16 or (SB > 16 and SB % 32):
        raise ValueError(f"super-beat SB = {SB}: must be 16 or a multiple of 32 bytes")
    return AccelConfig(chains=SB // 16, chain_len=16, mem_ports=max(1, SB // 32),
                       port_bytes=min(SB, 32), tlmm=True, tlmm_g=G, tlmm_t=T, tlmm_q=Q,
                       tlmm_acc_depth=acc_depth, tlmm_rows=R, tlmm_passes=S)


def tlmm_engine(G: int, T: int, Q: int, SB: int, R: int = 1, S: int = 1,
                acc_depth: int = ACC_DEPTH):
    from hwflow.hw.tlmm import TernaryLookupMatmul

    return TernaryLookupMatmul(tlmm_config(G, T, Q, SB, R, S, acc_depth), G, T, Q, acc_depth,
                               R=R, S=S)


def designs(G: int, T: int, Q: int, SB: int, R: int = 1, S: int = 1,
            acc_depth: int = ACC_DEPTH) -> list[tuple[str, str, object]]:
    """``(kind, label, component factory)`` for one point, in :data:`KINDS` order. With R rows
    a pass the array of equal throughput has ``R*Q`` outputs; the one-row datapaths are left
    out."""
    tlmm_config(G, T, Q, SB, R, S)                      # a bad SB fails before any synthesis
    rows = f" R={R} S={S}" if R * S > 1 else ""
    out = [("tlmm", f"TLMM engine G={G} T={T} Q={Q} SB={SB}{rows}",
            lambda: tlmm_engine(G, T, Q, SB, R, S, acc_depth))]
    if R == 1:
        out += [("dp-lutram", f"datapath LUTRAM G={G} T={T} Q={Q}",
                 lambda: TableLookupDatapath(G, T, Q, lutram=True)),
                ("dp-reg", f"datapath reg G={G} T={T} Q={Q}",
                 lambda: TableLookupDatapath(G, T, Q, lutram=False))]
    return out + [("array", f"add array {T * G}x{R * Q} (G={G})",
                   lambda: TernaryAddArray(T * G, R * Q))]


def synth_cells(verilog_text: str, top: str, cache: bool) -> tuple[dict, float, bool]:
    """``(cells by type, Yosys seconds, cached)`` of ``synth_xilinx -family xcup``.

    The raw cell counts are needed (not :func:`~hwflow.export.fit.xilinx_utilization`'s sums):
    a LUTRAM cell is 1 to 8 LUTs (:data:`LUTRAM_LUTS`). Same script and options as
    :mod:`hwflow.export.fit`; cached in ``<synth cache>/tlmm_synth``.
    """
    key = hashlib.sha256("\0".join([verilog_text, top, fit.SYNTH_OPTIONS,
                                     str(fit.SCRIPT_VERSION)]).encode()).hexdigest()[:24]
    path = fit.synth_cache_dir() / "tlmm_synth" / f"{key}.json"
    if cache and path.is_file():
        d = json.loads(path.read_text())
        return d["cells"], d["seconds"], True
    cells, seconds = fit._run_yosys(fit._yosys(), verilog_text, top, "xcup", None)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"cells": cells, "seconds": round(seconds, 2)}))
    return cells, seconds, False


def measure(kind: str, label: str, factory, macs: int, point, cache: bool) -> dict:
    """Synthesize one design and return its resource figures."""
    top = "hwflow_" + kind.replace("-", "_")
    cells, seconds, cached = synth_cells(flat_verilog(factory(), top), top, cache)
    used = fit.parse_cells(cells)
    lutram = sum(n * LUTRAM_LUTS.get(c, 0) for c, n in cells.items())
    return {
        "kind": kind, "design": label, "G": point[0], "T": point[1], "Q": point[2],
        "SB": point[3], "R": point[4], "S": point[5],
        "macs": macs, "lut": used["lut"], "ff": used["ff"], "dsp": used["dsp"],
        "bram": used["bram"], "uram": used["uram"], "lutram": lutram, "srl": used["srl"],
        "lut_per_mac": round((used["lut"] + lutram + used["srl"]) / macs, 2),
        "yosys_seconds": round(seconds, 1), "cached": cached,
    }


def run(points, jobs: int = 2, cache: bool = True, kinds=KINDS,
        acc_depth: int = ACC_DEPTH) -> list[dict]:
    """Synthesize the ``kinds`` designs of every point (``jobs`` Yosys runs at a time)."""
    tasks = [(kind, label, factory, G * T * Q * R, (G, T, Q, SB, R, S), cache)
             for G, T, Q, SB, R, S in points
             for kind, label, factory in designs(G, T, Q, SB, R, S, acc_depth)
             if kind in kinds]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        rows = list(pool.map(lambda t: measure(*t), tasks))
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a text table, then the LUT-per-MAC ratio of the array to each other design."""
    head = (f"{'design':<32} {'MAC/cyc':>7} {'LUT':>7} {'FF':>7} {'DSP':>4} {'BRAM':>5} "
            f"{'LUTRAM':>6} {'SRL':>4} {'LUT/MAC':>8} {'yosys s':>8}")
    lines = [head, "-" * len(head)]
    by_point = {}
    for r in rows:
        by_point.setdefault((r["G"], r["T"], r["Q"], r["SB"], r["R"], r["S"]), {})[r["kind"]] = r
        lines.append(f"{r['design']:<32} {r['macs']:>7} {r['lut']:>7} {r['ff']:>7} "
                     f"{r['dsp']:>4} {r['bram']:>5} {r['lutram']:>6} {r['srl']:>4} "
                     f"{r['lut_per_mac']:>8.2f} {r['yosys_seconds']:>7.1f}"
                     f"{'c' if r['cached'] else ' '}")
    lines.append("")
    for (G, T, Q, SB, R, S), d in by_point.items():
        arr = d.get("array")
        if arr is None:
            continue
        for kind, what in (("tlmm", "whole engine"), ("dp-lutram", "LUTRAM datapath"),
                           ("dp-reg", "register datapath")):
            if kind in d:
                ratio = arr["lut_per_mac"] / d[kind]["lut_per_mac"]
                lines.append(f"G={G} T={T} Q={Q} SB={SB} R={R} S={S}: array / {what}: LUT per MAC "
                             f"{arr['lut_per_mac']:.2f} / {d[kind]['lut_per_mac']:.2f} = "
                             f"{ratio:.2f}x")
    lines.append("(c = cached synthesis result; LUTRAM in LUTs; "
                 "LUT/MAC = (LUT + LUTRAM + SRL) / MACs per cycle)")
    return "\n".join(lines)


def parse_point(text: str) -> tuple[int, int, int, int, int, int]:
    """``G,T,Q[,SB[,R[,S]]]`` (SB defaults to 16 bytes, R and S to 1)."""
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if not 3 <= len(vals) <= 6:
        raise argparse.ArgumentTypeError(f"point {text!r}: expected G,T,Q[,SB[,R[,S]]]")
    return tuple(vals + [16, 1, 1][len(vals) - 3:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help=f"only {SHORT_POINTS} (CI)")
    ap.add_argument("--kind", choices=KINDS, action="append",
                    help="only these designs (repeatable); default: all")
    ap.add_argument("--point", type=parse_point, action="append",
                    help="G,T,Q[,SB[,R[,S]]] (repeatable); default: "
                    + " ".join(",".join(map(str, p)) for p in POINTS))
    ap.add_argument("--acc-depth", type=int, default=ACC_DEPTH,
                    help=f"the engines' tlmm_acc_depth ({ACC_DEPTH})")
    ap.add_argument("--jobs", type=int, default=2, help="Yosys runs at a time (2)")
    ap.add_argument("--no-cache", action="store_true", help="always run Yosys")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    points = args.point or (SHORT_POINTS if args.short else POINTS)
    try:
        rows = run(points, args.jobs, not args.no_cache, args.kind or KINDS, args.acc_depth)
    except ValueError as e:             # an invalid configuration
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rows, sort_keys=True) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
