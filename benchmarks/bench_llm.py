"""Benchmark: the bundled tiny LLaMA (``--example tiny-llama``) prefill and decode on the RTL.

Compiles the example for a board, runs an 8-token prompt and K greedy decode steps in
Verilator through ``hwflow sim`` (every step checked bit-exact against golden) and prints the
cycles of the prefill and of each decode step, decode tokens/s at the board's kernel clock, the
simulator's speed, the program bytes against one program per length, and the bytes that cross
the memory interface per decode step. Not a test: it asserts nothing, it measures.

    python benchmarks/bench_llm.py            # max context 2048, 8 decode steps, u280
    python benchmarks/bench_llm.py --short    # max context 64, 4 decode steps (CI)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hwflow.llm_flow import compile_decoder
from hwflow.simulate import simulate_decoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help="max context 64, 4 steps (CI)")
    ap.add_argument("--board", default="u280")
    ap.add_argument("--new-tokens", type=int)
    args = ap.parse_args()
    ctx = 64 if args.short else 2048
    steps = args.new_tokens or (4 if args.short else 8)
    with tempfile.TemporaryDirectory() as td:
        t0 = time.perf_counter()
        out, rep = compile_decoder(example="tiny-llama", board=args.board,
                                   out=Path(td) / "b", max_context=ctx)
        t_compile = time.perf_counter() - t0
        t0 = time.perf_counter()
        sim = simulate_decoder(out, prompt_len=8, new_tokens=steps)
        t_sim = time.perf_counter() - t0
    s, p = rep["shape"], rep["programs"]
    mhz = rep["clock_mhz"]
    dec = [st["cycles"] for st in sim["steps"] if st["kind"] == "decode"]
    pre = [st["cycles"] for st in sim["steps"] if st["kind"] == "prefill"]
    per_step = sum(dec) / len(dec)
    d = sim["traffic"]["decode"]
    print(f"tiny-llama ({s['layers']} layers, hidden {s['hidden']}, {s['heads']}/{s['kv_heads']} "
          f"heads of {s['head_dim']}, vocab {s['vocab']}) on {rep['board']}, max context {ctx}")
    print(f"compile {t_compile:.1f} s; simulation {t_sim:.1f} s "
          f"(Verilator build {sim['verilator_build_seconds'] or 0:.1f} s); "
          f"bit-exact {sim['bit_exact']}, tokens equal golden "
          f"{sim['tokens'] == sim['golden_tokens']}")
    print(f"prefill of 8 tokens: {sum(pre)} cycles")
    print(f"decode: {per_step:.0f} cycles per step (positions 8..{7 + len(dec)}: "
          f"{min(dec)}..{max(dec)}), {mhz * 1e6 / per_step:,.0f} tokens/s at {mhz:g} MHz")
    print(f"simulator: {sim['cycles_per_second'] / 1e6:.2f} M cycles/s")
    prog = p["decode"]["bytes"] + p["prefill"]["bytes"]
    print(f"programs: {prog} B (decode {p['decode']['bytes']} B + {p['prefill']['count']} "
          f"prefill buckets); one per length up to {ctx}: {rep['naive_program_bytes']:,} B "
          f"= {rep['program_reduction']:,.0f}x")
    n = len(dec)
    print("bytes per decode step: " + ", ".join(
        f"{k} {v / n:,.0f}" for k, v in d.items() if k != "program_read")
        + f" (instruction fetch {d['program_read'] / n:,.0f})")


if __name__ == "__main__":
    main()
