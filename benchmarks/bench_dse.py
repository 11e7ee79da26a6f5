"""Benchmark: a design-space sweep of at least 200 points on this machine.

Sweeps ``examples/dse/space.yaml`` (LLaMA-2-7B on the Alveo U280: engine shape, weight ring,
int8 or ternary weights, KV-cache length, clock; 240 points, each a shape-only lowering and
prediction by ``hwflow.predict``) with the default executor (two local worker processes) and
prints the points, the wall time, points per second and the Pareto set's size. With
``--mlp`` it sweeps the bundled MLP over ``examples/dse/mlp.yaml`` (270 points, each an
in-process compile and cycle prediction) instead. Not a test: it asserts nothing, it
measures. The target of issue 7 is 200 points in under 10 minutes on a 2-core machine.

    python benchmarks/bench_dse.py            # the 240-point LLaMA-2-7B space, u280
    python benchmarks/bench_dse.py --short    # its 16- and 32-chain engines at 300 MHz (CI)
    python benchmarks/bench_dse.py --mlp      # the 270-point MLP space
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from hwflow.dse import run_dse

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help="16 and 32 chains at 300 MHz only "
                    "(CI)")
    ap.add_argument("--mlp", action="store_true", help="the bundled MLP's 270-point space")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("-o", "--out", help="keep the outputs here (default: a temporary folder)")
    args = ap.parse_args()
    if args.mlp:
        kw = dict(example="mlp", space=ROOT / "examples" / "dse" / "mlp.yaml")
    else:
        kw = dict(model=str(ROOT / "examples" / "configs" / "llama-2-7b.json"),
                  space=ROOT / "examples" / "dse" / "space.yaml")
    with tempfile.TemporaryDirectory() as td:
        if args.short:              # the same space, its wide engines at one clock only
            space = yaml.safe_load(Path(kw["space"]).read_text())
            space["parameters"].update(chains=[16, 32], clock_mhz=[300])
            kw["space"] = Path(td) / "short.yaml"
            kw["space"].write_text(yaml.safe_dump(space, sort_keys=False))
        out = Path(args.out) if args.out else Path(td) / "dse"
        t0 = time.perf_counter()
        r = run_dse(**kw, board="u280", out=out, jobs=args.jobs)
        total = time.perf_counter() - t0
        evals = sorted(p["eval_s"] for p in json.loads((out / "points.json").read_text())[
            "points"])
    c, info = r["counts"], r["info"]
    print(f"{info['model']} ({info['kind']}) on {info['board']}: {c['points']} points of a "
          f"{r['space_size']}-point space, {args.jobs} local workers")
    print(f"wall time {total:.1f} s in all ({r['wall_s']:.1f} s sweeping: "
          f"{c['points'] / r['wall_s']:.2f} points/s); {c['feasible']} feasible, "
          f"{c['infeasible']} infeasible, {c['invalid']} invalid, {c['error']} errors")
    print(f"evaluation per point (worker wall time): median {evals[len(evals) // 2]:.2f} s, "
          f"max {evals[-1]:.2f} s, total {sum(evals):.0f} s (points that differ only in the "
          f"clock share one prediction)")
    print(f"Pareto set: {c['pareto']} points")
    for p in r["pareto"][:8]:
        m = p["metrics"]
        print(f"  {', '.join(f'{k}={v}' for k, v in p['params'].items())}: "
              f"{m['throughput']:,.1f} {m['throughput_unit']}, {m['resource_fraction']:.1%} of "
              f"the {m['dominant_resource'].upper()}")


if __name__ == "__main__":
    main()
