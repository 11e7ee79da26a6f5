"""Run an hwflow build folder on a board (or on the ISA model) and compare with golden.

Usage::

    hwflow compile --example mlp --board u280 -o build/mlp-u280
    python examples/host_run.py build/mlp-u280 --backend model          # no board needed
    python examples/host_run.py build/mlp-u280 --backend xrt --bitstream hwflow.xclbin
    python examples/host_run.py build/mlp-kv260 --backend pynq --bitstream hwflow.bit

    hwflow compile --example tiny-llama --board u280 -o build/llama-u280
    python examples/host_run.py build/llama-u280 --prompt 1,2,3 --new-tokens 8

The input is a seeded normal sample of the compiled shape (``--seed``) or a ``.npy`` file
(``--input``). The script prints the output shapes, the counter registers and the largest
difference from the golden interpreter (``hwflow.compiler.run`` on the final IR), which is 0
for a correct board: the accelerator is bit-exact by construction.

A decoder build (``config.json``'s ``"kind": "decoder"``) runs ``hwflow.host.generate``: the
prompt (``--prompt``, token ids; default a seeded random prompt of 8) and ``--new-tokens`` greedy
decode steps. The script prints the tokens and each run's cycles and compares the tokens with
the golden integer model (``golden_generate``); it exits 1 if they differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from hwflow.errors import HwflowError
from hwflow.host import ModelDevice, PynqDevice, XrtDevice, generate, load_build, run


def _device(backend: str, bitstream, cfg):
    if backend == "model":
        return ModelDevice(cfg)
    if not bitstream:
        raise HwflowError(f"--backend {backend} needs --bitstream")
    if backend == "xrt":
        return XrtDevice(bitstream, cfg)
    return PynqDevice(bitstream, cfg)


def _run_decoder(args, conf: dict) -> int:
    from hwflow.compiler.decoder_io import load_saved_decoder
    from hwflow.compiler.llm_interpret import golden_generate
    from hwflow.hw.config import AccelConfig
    from hwflow.llm_flow import default_prompt, parse_prompt

    try:
        qd = load_saved_decoder(Path(args.build) / "decoder" / "quantized")
        vocab = int(qd.embed.shape[0])
        prompt = (parse_prompt(args.prompt, vocab) if args.prompt
                  else default_prompt(vocab, seed=args.seed))
        dev = _device(args.backend, args.bitstream, AccelConfig(**conf["accel"]))
        res = generate(dev, args.build, prompt, args.new_tokens, timeout_s=args.timeout)
    except HwflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    want = golden_generate(qd, prompt, args.new_tokens + 1).tokens
    print(f"prompt {prompt}")
    print(f"tokens {res['tokens']}")
    print(f"golden {want}")
    print(f"cycles per run {res['cycles']}")
    if res["tokens"] != want:
        print("error: the tokens differ from the golden model", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", help="build folder written by `hwflow compile`")
    ap.add_argument("--backend", choices=("xrt", "pynq", "model"), default="model",
                    help="xrt: Alveo via pyxrt; pynq: Kria/Zynq via pynq; model: ISA model")
    ap.add_argument("--bitstream", help="xclbin (xrt) or .bit overlay (pynq)")
    ap.add_argument("--input", help=".npy file with the float input (default: seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for ap_done")
    ap.add_argument("--prompt", help="decoder builds: token ids, e.g. 1,2,3 (default: seeded "
                    "random prompt of 8)")
    ap.add_argument("--new-tokens", type=int, default=8, help="decoder builds: decode steps")
    args = ap.parse_args(argv)
    conf_path = Path(args.build) / "config.json"
    if conf_path.is_file():
        conf = json.loads(conf_path.read_text())
        if conf.get("kind") == "decoder":
            return _run_decoder(args, conf)
    try:
        b = load_build(args.build)
        dev = _device(args.backend, args.bitstream, b.cfg)
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
