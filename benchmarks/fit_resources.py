"""Refresh the resource model: synthesize the fit points with Yosys, fit, print, write the JSON.

Synthesizes the accelerator at every point of :data:`hwflow.resource_fit.POINTS` with Yosys
``synth_xilinx -family xcup`` (cached: a re-run with unchanged RTL takes seconds), fits the
LUT / FF / URAM coefficients by least squares on the ``fit`` points, checks the analytic DSP /
BRAM counts, and prints per kind the formula, the number of fit points and the error on the
held-out points; writes ``mapping/fits/resources.json``
(:func:`hwflow.mapping.accel_config.estimate_resources` reads it).

    python benchmarks/fit_resources.py                 # all points (~1 h of Yosys uncached)
    python benchmarks/fit_resources.py --points        # also the per-point table
    python benchmarks/fit_resources.py --out /tmp/r.json --jobs 2
"""

from __future__ import annotations

import argparse
import sys

from hwflow.mapping.errors import MappingError
from hwflow.resource_fit import DEFAULT_OUT, fit_table, run_resource_fit


def point_table(result: dict) -> str:
    """Measured vs predicted LUT and FF of every point."""
    m = result["model"]
    head = (f"{'point':<18} {'role':<8} {'LUT':>7} {'pred':>7} {'err%':>6} {'FF':>7} "
            f"{'pred':>7} {'err%':>6} {'DSP':>4} {'BRAM':>5} {'yosys s':>7}")
    lines = [head, "-" * len(head)]
    for r in result["points"]:
        err = "fit_error" if r["role"] == "fit" else "holdout_error"
        lu, ff = m["lut"][err]["points"][r["name"]], m["ff"][err]["points"][r["name"]]
        lines.append(f"{r['name']:<18} {r['role']:<8} {lu['measured']:>7} "
                     f"{lu['predicted']:>7.0f} {lu['error_pct']:>6.1f} {ff['measured']:>7} "
                     f"{ff['predicted']:>7.0f} {ff['error_pct']:>6.1f} "
                     f"{r['measured']['dsp']:>4} {r['measured']['bram']:>5} "
                     f"{r['yosys_seconds']:>6.0f}{'c' if r['cached'] else ' '}")
    lines.append("(c = cached Yosys result; its seconds are those of the run that produced it)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT),
                    help="JSON to write (default: mapping/fits/resources.json)")
    ap.add_argument("--jobs", type=int, default=1, help="Yosys runs at a time (1)")
    ap.add_argument("--points", action="store_true", help="also print every point")
    ap.add_argument("--quiet", action="store_true", help="no per-point progress lines")
    args = ap.parse_args(argv)
    try:
        result = run_resource_fit(args.out, jobs=args.jobs, progress=not args.quiet)
    except MappingError as e:           # Yosys missing or failed
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.points:
        print(point_table(result))
        print()
    print(fit_table(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
