"""Benchmark: effective MACs per DSP slice per cycle for dense, N:M sparse and int4 layers.

Compiles one ``nn.Linear`` (batch 16, so the packed multiply has row pairs to work on) for the
Alveo U280 (16 chains x 16 DSP48E2) with ``--sparsity`` dense, 2:4 and 1:4 (and int4 weights),
runs each in Verilator through ``hwflow sim`` (bit-exact check included) and prints
``macs_per_dsp_cycle`` (dense-equivalent MACs / DSP slices / cycles of the whole run) next to
the ideal ``2 * M/N`` (two packed int8 MACs per slice, M/N output channels per chain per pass).
Not a test: it asserts nothing, it measures.

    python benchmarks/bench_sparse.py            # 2048 x 2048, batch 16
    python benchmarks/bench_sparse.py --short    # 512 x 512 (CI)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_matmul import run  # benchmarks/ is the script's folder, first on sys.path

from hwflow.golden.sparse import parse_nm

CASES = (("dense", "int8"), ("2:4", "int8"), ("1:4", "int8"), ("dense", "int4"),
         ("2:4", "int4"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help="512x512 layers (quick, for CI)")
    ap.add_argument("--features", type=int, help="layer size (default 2048, 512 with --short)")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--board", default="u280")
    args = ap.parse_args()
    n = args.features or (512 if args.short else 2048)
    print(f"{n}x{n} linear, batch {args.rows}, board {args.board}")
    print(f"{'weights':<14}{'cycles':>10}{'predicted':>11}{'MACs/DSP/cyc':>14}{'ideal':>7}"
          f"{'of ideal':>10}{'Mcycles/s':>11}  bit-exact")
    with tempfile.TemporaryDirectory() as td:
        for sparsity, weights in CASES:
            r = run(n, args.rows, args.board, Path(td), sparsity=sparsity,
                    weights=weights)
            nn_, mm_ = parse_nm(sparsity)
            ideal = 2 * mm_ / nn_
            eff = r["macs_per_dsp_cycle"]
            print(f"{weights + ' ' + sparsity:<14}{r['cycles']:>10}{r['predicted_cycles']:>11}"
                  f"{eff:>14.3f}{ideal:>7.0f}{eff / ideal:>10.3f}"
                  f"{r['cycles_per_second'] / 1e6:>11.2f}  {r['bit_exact']}")


if __name__ == "__main__":
    main()
