"""Benchmark: simulated cycles per second and matrix-engine utilization on large layers.

Compiles one ``nn.Linear`` for the Alveo U280 (16 chains x 16 DSP48E2, 8 HBM pseudo-channels)
as a batch-1 GEMV and a batch-16 GEMM, runs each in Verilator through ``hwflow sim`` and
prints the figures the README quotes. Not a test: it asserts nothing, it measures.

    python benchmarks/bench_matmul.py            # 1024 x 1024
    python benchmarks/bench_matmul.py --short    # 256 x 256 (CI)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from hwflow.flow import compile_model
from hwflow.simulate import simulate_build


def run(features: int, rows: int, board: str, work: Path, **options) -> dict:
    """Compile one seeded ``nn.Linear(features, features)`` (exported once per size and batch)
    with ``compile_model`` ``options`` (e.g. ``sparsity``, ``weights``) and simulate it."""
    path = work / f"linear{features}x{rows}.pt2"
    if not path.exists():
        torch.manual_seed(0)
        layer = torch.nn.Linear(features, features).eval()
        torch.export.save(torch.export.export(layer, (torch.randn(rows, features),)), str(path))
    tag = "-".join(str(v).replace(":", "of") for v in options.values())
    out = work / f"build-{features}-{rows}{'-' + tag if tag else ''}"
    t0 = time.perf_counter()
    compile_model(model=path, board=board, out=out, rows=rows, **options)
    t_compile = time.perf_counter() - t0
    r = simulate_build(out)
    r["compile_seconds"] = t_compile
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help="256x256 layers (quick, for CI)")
    ap.add_argument("--board", default="u280")
    args = ap.parse_args()
    n = 256 if args.short else 1024
    print(f"{'layer':<24}{'cycles':>10}{'predicted':>11}{'sim s':>8}{'Mcycles/s':>11}"
          f"{'MPE busy':>10}{'MACs/DSP/cyc':>14}  bit-exact")
    with tempfile.TemporaryDirectory() as td:
        for rows in (1, 16):
            r = run(n, rows, args.board, Path(td))
            name = f"{n}x{n} {'GEMV' if rows == 1 else 'GEMM'} batch {rows}"
            print(f"{name:<24}{r['cycles']:>10}{r['predicted_cycles']:>11}"
                  f"{r['sim_seconds']:>8.2f}{r['cycles_per_second'] / 1e6:>11.2f}"
                  f"{r['mpe_utilization']:>10.3f}{r['macs_per_dsp_cycle']:>14.3f}"
                  f"  {r['bit_exact']}")


if __name__ == "__main__":
    main()
