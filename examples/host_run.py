"""Run an hwflow build folder on a board (or on the ISA model) and compare with golden.

Usage::

    hwflow compile --example mlp --board u280 -o build/mlp-u280
    python examples/host_run.py build/mlp-u280 --backend model          # no board needed
    python examples/host_run.py build/mlp-u280 --backend xrt --bitstream hwflow.xclbin
    python examples/host_run.py build/mlp-kv260 --backend pynq --bitstream hwflow.bit

The input is a seeded normal sample of the compiled shape (``--seed``) or a ``.npy`` file
(``--input``). The script prints the output shapes, the counter registers and the largest
difference from the golden interpreter (``hwflow.compiler.run`` on the final IR), which is 0
for a correct board: the accelerator is bit-exact by construction.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from hwflow.errors import HwflowError
from hwflow.host import ModelDevice, PynqDevice, XrtDevice, load_build, run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", help="build folder written by `hwflow compile`")
    ap.add_argument("--backend", choices=("xrt", "pynq", "model"), default="model",
                    help="xrt: Alveo via pyxrt; pynq: Kria/Zynq via pynq; model: ISA model")
    ap.add_argument("--bitstream", help="xclbin (xrt) or .bit overlay (pynq)")
    ap.add_argument("--input", help=".npy file with the float input (default: seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for ap_done")
    args = ap.parse_args(argv)
    try:
        b = load_build(args.build)
        if args.backend == "model":
            dev = ModelDevice(b.cfg)
        elif not args.bitstream:
            raise HwflowError(f"--backend {args.backend} needs --bitstream")
        elif args.backend == "xrt":
            dev = XrtDevice(args.bitstream, b.cfg)
        else:
            dev = PynqDevice(args.bitstream, b.cfg)
        shape = b.input_shape(b.input)
        x = (np.load(args.input, allow_pickle=False) if args.input
             else np.random.default_rng(args.seed).standard_normal(shape))
        stats: dict = {}
        out = run(b, {b.input: x}, dev, timeout_s=args.timeout, stats=stats)
    except HwflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    from hwflow.compiler import run as golden_run

    want = golden_run(b.graph, {b.input: x})
    for name, y in out.items():
        diff = float(np.max(np.abs(y - want[name]))) if y.size else 0.0
        print(f"{name}: shape {list(y.shape)}, max |board - golden| = {diff:g}")
    print(f"cycles {stats['cycles']}, mpe_busy {stats['mpe_busy']}, retired {stats['retired']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
