"""Benchmark: the analytic cycle model (mapping/cycles.py) against the RTL.

Compiles single ``nn.Linear`` layers of several shapes for a board, runs each in Verilator and
prints predicted vs simulated cycles. Not a test: it measures.

    python benchmarks/cycle_model.py --board u280
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from hwflow.flow import compile_model
from hwflow.simulate import simulate_build

# (in_features, out_features, rows): epilogue-bound, compute-bound, fetch-bound, odd sizes
SHAPES = [(96, 200, 4), (200, 96, 4), (96, 40, 4), (37, 53, 5), (300, 130, 7), (1024, 64, 1),
          (64, 1024, 1), (256, 256, 16)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--board", default="u280")
    args = ap.parse_args()
    print(f"{'layer':<22}{'predicted':>10}{'RTL':>8}{'error':>8}  bit-exact")
    worst = 0.0
    with tempfile.TemporaryDirectory() as td:
        for k, n, rows in SHAPES:
            torch.manual_seed(0)
            path = Path(td) / f"l{k}x{n}x{rows}.pt2"
            layer = torch.nn.Linear(k, n).eval()
            torch.export.save(torch.export.export(layer, (torch.randn(rows, k),)), str(path))
            out = Path(td) / f"b{k}x{n}x{rows}"
            _, rep = compile_model(model=path, board=args.board, out=out)
            r = simulate_build(out)
            err = (rep["predicted_cycles"] - r["cycles"]) / r["cycles"]
            worst = max(worst, abs(err))
            print(f"{f'{k}->{n} x{rows}':<22}{rep['predicted_cycles']:>10}{r['cycles']:>8}"
                  f"{err:>+8.1%}  {r['bit_exact']}")
    print(f"largest error: {worst:.1%}")


if __name__ == "__main__":
    main()
