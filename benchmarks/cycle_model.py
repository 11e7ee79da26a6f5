"""Benchmark: the analytic cycle model (mapping/cycles.py) against the RTL.

Compiles single ``nn.Linear`` layers of several shapes, in several weight formats (dense and N:M,
int8 and int4), for a board, runs each in Verilator and prints predicted vs simulated cycles and
which of the model's three MATMUL terms (compute, weight fetch, epilogue) bounds the layer. Not a
test: it measures (and is what the model's constants are calibrated with).

    python benchmarks/cycle_model.py --board u280
    python benchmarks/cycle_model.py --formats dense/int8 2:4/int4
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from hwflow.flow import compile_model
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import Opcode, decode
from hwflow.mapping import cycles
from hwflow.simulate import simulate_build

# (in_features, out_features, rows): epilogue-bound, compute-bound, fetch-bound, odd sizes
SHAPES = [(96, 200, 4), (200, 96, 4), (96, 40, 4), (37, 53, 5), (300, 130, 7), (1024, 64, 1),
          (64, 1024, 1), (256, 256, 16)]
FORMATS = ["dense/int8", "2:4/int8", "1:4/int8", "dense/int4", "2:4/int4"]


def bound_by(build: Path) -> str:
    """The largest MATMUL term of the build's program ("compute", "fetch" or "epilogue")."""
    conf = json.loads((build / "config.json").read_text())
    cfg = AccelConfig(**conf["accel"])
    raw = (build / "program.bin").read_bytes()
    terms = {"compute": 0, "fetch": 0, "epilogue": 0}
    for k in range(0, len(raw), 32):
        i = decode(raw[k:k + 32])
        if i.op == Opcode.MATMUL:
            terms["compute"] += cycles.matmul_compute(i)
            terms["fetch"] += cycles.matmul_fetch(i, cfg)
            terms["epilogue"] += cycles.matmul_epilogue(i, cfg)
    return max(terms, key=terms.get)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--board", default="u280")
    ap.add_argument("--formats", nargs="+", default=FORMATS,
                    help="SPARSITY/WEIGHTS pairs, e.g. dense/int8 2:4/int4")
    args = ap.parse_args()
    print(f"{'layer':<16}{'format':<12}{'predicted':>10}{'RTL':>8}{'error':>8}  {'bound':<9}"
          "bit-exact")
    worst = 0.0
    with tempfile.TemporaryDirectory() as td:
        for k, n, rows in SHAPES:
            torch.manual_seed(0)
            path = Path(td) / f"l{k}x{n}x{rows}.pt2"
            layer = torch.nn.Linear(k, n).eval()
            torch.export.save(torch.export.export(layer, (torch.randn(rows, k),)), str(path))
            for fmt in args.formats:
                sparsity, weights = fmt.split("/")
                out = Path(td) / f"b{k}x{n}x{rows}-{sparsity.replace(':', 'of')}-{weights}"
                _, rep = compile_model(model=path, board=args.board, out=out,
                                       sparsity=sparsity, weights=weights)
                r = simulate_build(out)
                err = (rep["predicted_cycles"] - r["cycles"]) / r["cycles"]
                worst = max(worst, abs(err))
                print(f"{f'{k}->{n} x{rows}':<16}{fmt:<12}{rep['predicted_cycles']:>10}"
                      f"{r['cycles']:>8}{err:>+8.1%}  {bound_by(out):<9}{r['bit_exact']}")
    print(f"largest error: {worst:.1%}")


if __name__ == "__main__":
    main()
