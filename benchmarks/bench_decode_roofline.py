"""Benchmark: a decode step in RTL against its memory roofline (issue "decode at the roofline").

A random LLaMA whose weights dominate its bytes (hidden 1024, one layer, 8 heads over 4 kv
heads of 128, intermediate 2816, vocabulary 512) is compiled with int4 (W4A8) or int8 linears
for a small HBM-like board: one 8-byte port (SB = 8 B), an engine twice the beat wide (P x L =
4 x 4 = 16 B: an int4 memory row fills two ring entries in the two cycles it takes to arrive),
6 attention lanes, a 4-lane vector unit (a whole act word per cycle). A short prompt and a
few decode steps run in Verilator through ``hwflow sim`` (every step bit-exact against
golden); the benchmark prints, per decode step, the RTL's cycles, the bytes the step moved
(the RTL memory model's counters) and their ratio to the cycles those bytes need at the
port's rate (one super-beat per cycle). Not a test: it measures.

    python benchmarks/bench_decode_roofline.py                # int4 and int8, 2 decode steps
    python benchmarks/bench_decode_roofline.py --weights int4 --new-tokens 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

BOARD = """\
name: hbm-narrow
description: one 8-byte HBM-like port, for RTL roofline runs
vendor: xilinx
part: xcu280-fsvh2892-2L-e
family: virtex-ultrascale-plus-hbm
resources: {lut: 1303680, ff: 2607360, dsp: 9024, bram: 2016, uram: 960}
memory: {type: hbm2, channels: 1, port_bytes: 8, capacity_gb: 1, bandwidth_gbps: 2.4}
clocks: {kernel_mhz: 300}
flow: vitis
engine: {chains: 4, chain_len: 4, mem_ports: 1, act_depth: 8192, weight_depth: 2048,
         transformer: true, attn_heads: 6, vec_lanes: 4}
"""
MODEL = dict(vocab_size=512, hidden_size=1024, intermediate_size=2816, num_hidden_layers=1,
             num_attention_heads=8, num_key_value_heads=4, head_dim=128,
             max_position_embeddings=64)


def run(weights: str, new_tokens: int, td: Path) -> dict:
    from hwflow.llm_examples import write_tiny_llama
    from hwflow.llm_flow import compile_decoder
    from hwflow.simulate import simulate_decoder

    boards = td / "boards"
    boards.mkdir(exist_ok=True)
    (boards / "hbm-narrow.yaml").write_text(BOARD)
    folder = td / "model"
    if not folder.exists():
        write_tiny_llama(folder, **MODEL)
    t0 = time.perf_counter()
    out, rep = compile_decoder(model=str(folder), board="hbm-narrow", out=td / f"b-{weights}",
                               max_context=32, boards_dir=str(boards), weights=weights)
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    sim = simulate_decoder(out, prompt_len=2, new_tokens=new_tokens)
    return {"rep": rep, "sim": sim, "compile_s": t_compile, "sim_s": time.perf_counter() - t0}


def report(weights: str, r: dict) -> None:
    sim, rep = r["sim"], r["rep"]
    sb = rep["config"]["mem_ports"] * rep["config"]["port_bytes"]
    steps = [s for s in sim["steps"] if s["kind"] == "decode"]
    n = len(steps)
    d = sim["traffic"]["decode"]
    moved = sum(v for k, v in d.items() if k.endswith(("_read", "_written")))
    per_step_bytes = moved / n
    cycles = sum(s["cycles"] for s in steps) / n
    floor = per_step_bytes / sb
    print(f"{weights}: decode {cycles:,.0f} cycles per step, {per_step_bytes:,.0f} B moved "
          f"(weights {d['weights_read'] / n:,.0f}, kv {(d['kv_read'] + d['kv_written']) / n:,.0f},"
          f" program {d['program_read'] / n:,.0f}, io {(d['io_read'] + d['io_written']) / n:,.0f})"
          f"; floor at {sb} B/cycle {floor:,.0f} cycles -> {cycles / floor:.3f}x the roofline; "
          f"bit-exact {sim['bit_exact']}, tokens equal golden "
          f"{sim['tokens'] == sim['golden_tokens']}; compile {r['compile_s']:.0f} s, "
          f"simulation {r['sim_s']:.0f} s ({sim['cycles_per_second'] / 1e6:.2f} M cycles/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", choices=("int4", "int8"), nargs="+",
                    default=["int4", "int8"])
    ap.add_argument("--new-tokens", type=int, default=2)
    args = ap.parse_args()
    print("LLaMA hidden 1024, 1 layer, 8/4 heads of 128, intermediate 2816, vocab 512 on "
          "hbm-narrow (SB 8 B, P x L = 16)")
    with tempfile.TemporaryDirectory() as td:
        for w in args.weights:
            report(w, run(w, args.new_tokens, Path(td)))


if __name__ == "__main__":
    main()
