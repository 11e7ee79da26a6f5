"""Benchmark: shape-only compiles and predictions of full-size language models from their
configs.

Runs ``hwflow compile CONFIG --shape-only --board B`` (meta-device model, shape-only lowering,
predictions) in a fresh process for LLaMA-2-7B on the U280 with int8 and with int4 (W4A8)
linears, BitNet b1.58 0.7B on the KV260 with its int8 and with an int4 LM head, and Mamba-2.8B
(W4A8) on the U280 and the VCK190 (``examples/configs/``), then ``hwflow predict``
on each build folder, and prints each command's wall time and peak resident memory and the
predicted figures (decode tokens/s, TTFT at 64/128/512 prompt tokens, bandwidth utilization,
resources). Not a test: it measures.

    python benchmarks/bench_shape_only.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = [("llama-2-7b.json", "u280", ["--weights", "int8"]),
         ("llama-2-7b.json", "u280", ["--weights", "int4"]),
         ("bitnet-b1.58-0.7b.json", "kv260", []),
         ("bitnet-b1.58-0.7b.json", "kv260", ["--lm-head", "int4"]),
         ("mamba-2.8b.json", "u280", ["--weights", "int4"]),
         ("mamba-2.8b.json", "vck190", ["--weights", "int4"])]


def _run(argv: list[str]) -> tuple[float, float, str]:
    """``(wall s, peak RSS MiB, stdout)`` of ``python -m hwflow.cli argv`` in a new process."""
    code = ("import resource, runpy, sys; sys.argv = ['hwflow'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('hwflow.cli', run_name='__main__')\n"
            "finally:\n    print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
            " file=sys.stderr)\n")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t
    if r.returncode:
        sys.exit(f"{' '.join(argv)} failed:\n{r.stderr}")
    rss = next(int(ln.split()[1]) for ln in r.stderr.splitlines() if ln.startswith("MAXRSS_KB"))
    return wall, rss / 1024, r.stdout


def main() -> None:
    with tempfile.TemporaryDirectory() as td:
        for n, (config, board, extra) in enumerate(CASES):
            out = Path(td) / f"{n}-{config}-{board}"
            wall, rss, text = _run(["compile", str(ROOT / "examples" / "configs" / config),
                                    "--shape-only", "--board", board, "-o", str(out), *extra])
            print(f"== {config} on {board}{' (' + ' '.join(extra) + ')' if extra else ''}: "
                  f"shape-only compile + prediction {wall:.1f} s wall, peak RSS {rss:.0f} MiB")
            print(text.rstrip())
            wall2, rss2, _ = _run(["predict", str(out)])
            print(f"hwflow predict: {wall2:.1f} s wall, peak RSS {rss2:.0f} MiB")
            p = json.loads((out / "reports" / "predict.json").read_text())
            print(json.dumps({"config": {k: p["config"][k] for k in (
                "chains", "chain_len", "mem_ports", "port_bytes", "act_depth", "weight_depth",
                "attn_heads", "tlmm", "tlmm_t", "tlmm_q", "ssm_lanes", "ssm_uram")},
                "clock_mhz": p["clock_mhz"],
                "resources": p["resources"], "fit": p["resource_fit"].get("fit"),
                "fits": p["fits"]}, default=float))
            print()


if __name__ == "__main__":
    main()
