"""Refit the attention unit's LUT / FF model on Yosys: the unit alone at eight (L, H) points.

Synthesizes ``hw.attention.AttentionUnit`` alone with Yosys ``synth_xilinx -family xcup`` at
(L, H) = (4, 1), (4, 2), (4, 4), (8, 1), (8, 2), (8, 3), (16, 1), (16, 2) (cached: a re-run
with unchanged RTL takes seconds), fits ``kind = a + b L + H (c + d L)`` by least squares for
LUT and FF, and prints the coefficients (``mapping.accel_config.ATTN_SHARED_*`` = (a, b),
``ATTN_LANE_*`` = (c, d)), the worst error of every point and the DSP48E2 count against
``H (3 L + 5) + 2 L + 3``.

    python benchmarks/fit_attention_lanes.py            # ~10 min of Yosys uncached, 2 jobs
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np

POINTS = ((4, 1), (4, 2), (4, 4), (8, 1), (8, 2), (8, 3), (16, 1), (16, 2))


def synthesize(point: tuple) -> dict:
    """Yosys utilization of the attention unit alone at ``(L, H)``."""
    from amaranth.back import verilog

    from hwflow.boards import load_board
    from hwflow.export.fit import xilinx_utilization
    from hwflow.hw.attention import AttentionUnit
    from hwflow.hw.config import AccelConfig

    L, H = point
    cfg = AccelConfig(chains=4, chain_len=L, mem_ports=1, port_bytes=4 * L, act_depth=256,
                      transformer=True, attn_heads=H)
    v = verilog.convert(AttentionUnit(cfg, max_head_dim=64), name="attn")
    util = xilinx_utilization(v, "attn", load_board("u280"))
    return {k: util[k]["used"] for k in ("lut", "ff", "dsp")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="Yosys runs at a time (2)")
    args = ap.parse_args(argv)
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        got = dict(zip(POINTS, pool.map(synthesize, POINTS), strict=True))
    A = np.array([[1, L, H, H * L] for L, H in POINTS], dtype=np.float64)
    print(f"{'L':>3} {'H':>3} {'LUT':>7} {'FF':>7} {'DSP':>4} {'DSP model':>9}")
    for (L, H), u in got.items():
        print(f"{L:>3} {H:>3} {u['lut']:>7} {u['ff']:>7} {u['dsp']:>4} "
              f"{H * (3 * L + 5) + 2 * L + 3:>9}")
    for kind in ("lut", "ff"):
        y = np.array([got[p][kind] for p in POINTS], dtype=np.float64)
        coef, *_ = np.linalg.lstsq(A, y, rcond=None)
        err = 100 * np.abs(A @ coef - y) / y
        print(f"{kind}: shared ({coef[0]:.1f}, {coef[1]:.1f}), lane ({coef[2]:.1f}, "
              f"{coef[3]:.1f}); worst point {err.max():.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
