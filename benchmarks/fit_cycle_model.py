"""Refresh the stored cycle-model fits (``mapping/fits/<board>.json``).

Runs ``hwflow calibrate`` for every board whose cycle-model fit the repository keeps (u280 and
kv260: :data:`hwflow.cycle_fit.DEFAULT_BOARDS`): one Verilator build per board's engine (about
3 minutes with the transformer and TLMM units, cached afterwards), the micro-runs and the
held-out whole programs, the least-squares fit; prints each board's held-out error table and
the wall time, and writes the JSON files. Run it again after any change to the RTL's timing
(e.g. the TLMM engine):

    python benchmarks/fit_cycle_model.py
    python benchmarks/fit_cycle_model.py --boards kv260 --jobs 2
"""

from __future__ import annotations

import argparse
import time

from hwflow.cycle_fit import DEFAULT_BOARDS, fit_cycle_model, format_table, write_fit
from hwflow.mapping.cycles import FITS_DIR


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", nargs="+", default=list(DEFAULT_BOARDS))
    ap.add_argument("--jobs", type=int, default=2, help="simulator processes side by side")
    args = ap.parse_args()
    for board in args.boards:
        t0 = time.perf_counter()
        data = fit_cycle_model(board, jobs=args.jobs)
        out = write_fit(data, FITS_DIR / f"{board}.json")
        print(format_table(data))
        print(f"wrote {out} in {time.perf_counter() - t0:.0f} s\n", flush=True)


if __name__ == "__main__":
    main()
