"""Benchmark: does Yosys map every packed-MAC slice of the matrix engine to one DSP48E2?

Generates the matrix engine (:class:`hwflow.hw.matrix_engine.MatrixEngine`) for ``--chains``
chains of ``--chain-len`` slices, synthesizes it with Yosys ``synth_xilinx -family xcup`` (the
same script and options as :mod:`hwflow.export.fit`, i.e. the YoWASP build) and prints the
number of DSP48E2 cells next to the designed number of slices (``P * L``), plus LUTs, flip-flops
and the Yosys wall time. The two DSP counts must be equal: a multiplier spilled into LUTs, a
slice merged into another or a fabric adder pulled into a DSP all show up as a difference, and
the script then exits with status 1.

LUT and FF counts are upper bounds: YoWASP Yosys 0.70's ``xilinx_dsp`` packs neither the
slices' A/B/M/P registers nor the PCIN cascade adder into the DSP48E2 (not even for a bare
``p <= a * b``), so they are counted as fabric flip-flops and 48-bit adders; Vivado packs them.

    python benchmarks/dsp_inference.py                       # one chain of 16 (U280 chain)
    python benchmarks/dsp_inference.py --chain-len 8 --chains 2 --dense
"""

from __future__ import annotations

import argparse
import json
import sys

from amaranth import Module, Signal, Value
from amaranth.back import verilog
from amaranth.lib.wiring import Flow

from hwflow.boards import load_board
from hwflow.export.fit import xilinx_utilization
from hwflow.hw.config import AccelConfig
from hwflow.hw.matrix_engine import MatrixEngine

TOP = "hwflow_mpe"


def engine_config(chains: int, chain_len: int, sparse: bool = True) -> AccelConfig:
    """A valid configuration around an engine of ``chains`` x ``chain_len`` (the engine does not
    depend on the memory side): one port whose beat is the smallest super-beat the rules allow
    (a multiple of L that divides the weight row and divides or is a multiple of 32 B)."""
    row = chains * chain_len
    sb = next((sb for sb in range(chain_len, row + 1, chain_len)
               if row % sb == 0 and (32 % sb == 0 or sb % 32 == 0)), chain_len)
    # if none fits, AccelConfig raises with its own message
    return AccelConfig(chains=chains, chain_len=chain_len, mem_ports=1, port_bytes=sb,
                       sparse=sparse)


def flat_verilog(cfg: AccelConfig) -> str:
    """Verilog of the engine under a top level with plain (unstructured) ports.

    Amaranth names the fields of a port with a data layout as extra wires (``o__payload[1]``);
    at the top level these collide with the bit names ABC9 gives the port and Yosys 0.70
    asserts in ``ABC_OPS_REINTEGRATE`` (``count_id(wire->name) == 0``). Inside a larger design
    (the accelerator) the engine's ports are internal wires and the problem does not arise.
    """
    m = Module()
    m.submodules.engine = eng = MatrixEngine(cfg)
    ports = []
    for path, member, value in eng.signature.flatten(eng):
        value = Value.cast(value)
        pin = Signal(len(value), name="__".join(str(p) for p in path))
        m.d.comb += (value.eq(pin) if member.flow == Flow.In else pin.eq(value))
        ports.append(pin)
    return verilog.convert(m, name=TOP, ports=ports)


def measure(chains: int = 1, chain_len: int = 16, sparse: bool = True,
            cache: bool = False) -> dict:
    """Synthesize the engine; return designed vs inferred DSPs and the other figures."""
    cfg = engine_config(chains, chain_len, sparse)
    v = flat_verilog(cfg)
    # U280 (xcup): the family is what matters; the board only supplies "available" counts
    util = xilinx_utilization(v, TOP, load_board("u280"), cache=cache)
    return {
        "chains": chains, "chain_len": chain_len, "sparse": sparse,
        "designed_dsp": cfg.dsp_slices, "inferred_dsp": util["dsp"]["used"],
        "lut": util["lut"]["used"], "ff": util["ff"]["used"],
        "lutram": util["lutram"]["used"], "srl": util["srl"]["used"],
        "yosys_seconds": util["meta"]["seconds"], "cached": util["meta"]["cached"],
        "tool": util["meta"]["tool"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chain-len", type=int, default=16, help="L, slices per chain (16)")
    ap.add_argument("--chains", type=int, default=1, help="P, chains (1)")
    ap.add_argument("--dense", action="store_true", help="build without the sparse selectors")
    ap.add_argument("--cache", action="store_true",
                    help="reuse a cached synthesis result of the same Verilog")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    try:
        r = measure(args.chains, args.chain_len, not args.dense, args.cache)
    except ValueError as e:             # an invalid configuration (AccelConfig's message)
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(r, sort_keys=True))
    else:
        print(f"engine {r['chains']} x {r['chain_len']} ({'sparse' if r['sparse'] else 'dense'}):"
              f" designed {r['designed_dsp']} DSP48E2, inferred {r['inferred_dsp']}"
              f" | {r['lut']} LUT, {r['ff']} FF, {r['lutram']} LUTRAM, {r['srl']} SRL"
              f" | yosys {r['yosys_seconds']:.1f} s{' (cached)' if r['cached'] else ''}"
              f" [{r['tool']}]")
    if r["inferred_dsp"] != r["designed_dsp"]:
        print(f"MISMATCH: {r['inferred_dsp']} DSP48E2 inferred for {r['designed_dsp']} slices",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
