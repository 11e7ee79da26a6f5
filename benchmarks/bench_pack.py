"""Benchmark: how fast the mapper packs weight blocks and the ISA model runs a ternary layer.

A compile from weights packs every linear of the model (a 7B decoder: 224 linears of up to
11008 x 4096), and ``hwflow sim`` runs the ISA functional model beside the RTL, so both are
vectorized numpy; this prints their wall time on decode-sized layers:

* ``mapping.weight_format.pack_weight_block`` of a 4096 x 1024 linear (P = L = 16) as int8
  dense, int8 2:4 and int4 1:4, checked by unpacking;
* ``mapping.ternary_format.pack_ternary_block`` of a 1024 x 1024 ternary linear (G = 3, T = 12,
  Q = 8, 64-byte super-beats: the KV260's engine);
* the ISA model's TMATMUL of one row through that 1024 x 1024 layer (G = 3, T = Q = 8),
  checked against ``x @ t.T``.

Not a test: it asserts nothing but the results' correctness, it measures (tests check the same
packing bit for bit at small sizes). Each figure is the best of ``--repeat`` runs.

    python benchmarks/bench_pack.py              # 5 repeats
    python benchmarks/bench_pack.py --short      # 1 repeat (CI)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import Instr, Opcode
from hwflow.mapping.linear import plan_tmatmul, tmatmul
from hwflow.mapping.ternary_format import pack_ternary_block, unpack_ternary_block
from hwflow.mapping.weight_format import (
    LayerFormat,
    channels_per_tile,
    pack_weight_block,
    unpack_weight_block,
)
from hwflow.sim.isa_model import IsaModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.sim._asm import random_weight  # noqa: E402 - the tests' N:M / int4 weight drawer


def _best(repeat: int, fn, *args, **kwargs) -> tuple[float, object]:
    """``(best wall seconds, result)`` of ``repeat`` calls ``fn(*args, **kwargs)``."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_matmul_blocks(repeat: int) -> None:
    cfg = AccelConfig(chains=16, chain_len=16)
    N, K = 4096, 1024
    rng = np.random.default_rng(9)
    for fmt in (LayerFormat(1, 1, 8), LayerFormat(2, 4, 8), LayerFormat(1, 4, 4)):
        w, kw = random_weight(rng, N, K, (fmt.n, fmt.m), fmt.int4)
        bias, mult = rng.integers(-2**31, 2**31, N), rng.integers(0, 2**16, N)
        k_words, n_tiles = K // cfg.chain_len, -(-N // channels_per_tile(cfg, fmt))
        dt, data = _best(repeat, pack_weight_block, cfg, fmt, w, bias, mult, k_words, n_tiles,
                         w4=kw.get("w4"), w4_scale=kw.get("s4"))
        W, _, _ = unpack_weight_block(cfg, fmt, data, k_words, n_tiles)
        assert np.array_equal(W[:N], w)
        print(f"pack_weight_block {N}x{K} {fmt.label:<10} {dt * 1e3:8.1f} ms  "
              f"{N * K / dt / 1e6:8.1f} M weights/s")


def bench_ternary(repeat: int) -> None:
    rng = np.random.default_rng(9)
    t = rng.integers(-1, 2, (1024, 1024)).astype(np.int8)
    zeros, ones = np.zeros(1024), np.ones(1024)
    dt, blk = _best(repeat, pack_ternary_block, t, zeros, ones, 3, 12, 8, 64)
    assert np.array_equal(unpack_ternary_block(blk, 1024, 1024, 3, 12, 8, 64)[0], t)
    print(f"pack_ternary_block 1024x1024 G3 T12 Q8 {dt * 1e3:8.1f} ms  "
          f"{t.size / dt / 1e6:8.1f} M weights/s")

    cfg = AccelConfig(chains=16, chain_len=16, mem_ports=2, port_bytes=32, act_depth=4096,
                      tlmm=True, tlmm_acc_depth=1024)
    xq = rng.integers(-127, 128, (1, 1024)).astype(np.int8)
    blk = pack_ternary_block(t, zeros, ones, cfg.tlmm_g, cfg.tlmm_t, cfg.tlmm_q, cfg.beat_bytes)
    image = bytes(cfg.beat_bytes) + blk
    tp = plan_tmatmul("bench", cfg, 1024, 1024)
    image += (tmatmul(tp, 0, wgt=1, x=0, x_words=64, out=100, rows=1, words=64,
                      m_addr=200).encode() + Instr(Opcode.END).encode())

    def run():
        model = IsaModel(cfg, image)
        model.act[:64] = xq.reshape(64, 16)
        model.act.reshape(-1).view(np.uint8)[200 * 16] = 1        # m = 1
        model.run(len(image) // cfg.beat_bytes - 1)
        return model

    dt, model = _best(repeat, run)
    want = np.clip(xq.astype(np.int64) @ t.T.astype(np.int64), -128, 127)
    assert np.array_equal(model.act[100:164].reshape(-1), want[0])
    print(f"ISA model TMATMUL 1x1024x1024 G3     {dt * 1e3:8.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help="one repeat (CI)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    repeat = 1 if args.short else args.repeat
    bench_matmul_blocks(repeat)
    bench_ternary(repeat)


if __name__ == "__main__":
    main()
