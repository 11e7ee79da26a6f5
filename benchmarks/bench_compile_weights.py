"""Benchmark: ``hwflow compile`` of a published decoder architecture from its weights.

Writes a Hugging Face folder with random weights of a published architecture (default
Llama-3.2-1B, ``examples/configs/llama-3.2-1b.json``: 1.24 B parameters, tied embeddings) as
bfloat16 safetensors, like the published checkpoint (``save_pretrained`` of a model built by
``from_config`` in bfloat16; the RMSNorm gammas drawn from U(0.5, 1.5) so that folding them is
real work), then runs ``hwflow compile FOLDER --board u280 -o OUT`` (the stock board file,
default max context, int8 weights) in a new process and prints the checkpoint's bytes on disk,
the compile's wall time and peak resident memory, the ratio of the two and the compile's exit
status. The target (issue 17): peak RSS below twice the checkpoint's bytes, so that a 7B
checkpoint (13.5 GB in bfloat16) compiles on a 24 GB machine. Not a test: it measures. The
folder and the build live in a temporary directory, deleted afterwards (the 1B checkpoint is
2.5 GB on disk, the build folder 9 GB).

Measured (2 CPUs, 23 GiB): a 2,471,645,608 B checkpoint compiles in 232 s with a peak RSS of
4,122,353,664 B (3.84 GiB) = 1.67x the checkpoint, in the lowering (the quantized decoder and
the memory image, 1.5 GB each; the imports alone are 0.35 GiB). The folder is read a block at
a time (``compiler.llm_frontend.open_decoder``): each block is recognised, written to the
build's float decoder and quantized before the next is read, so the float32 model (4.9 GB) is
never in memory whole; it was, before, and the compile peaked at 10.34 GiB = 4.49x in about
6 min.

    python benchmarks/bench_compile_weights.py            # Llama-3.2-1B, about 4 min
    python benchmarks/bench_compile_weights.py --short    # 2 layers of hidden 256 (CI)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "examples" / "configs" / "llama-3.2-1b.json"
#: ``--short``: the architecture's own kinds (GQA, head_dim, RoPE scaling, tied embeddings) at
#: sizes that compile in seconds: 2 layers, hidden 256 (4 heads over 2 kv heads of 64),
#: vocab 4096 (a 3 M parameter, 6 MB checkpoint; the published bos/eos ids 128000/128001 lie
#: outside that vocabulary).
SHORT_SIZES = dict(num_hidden_layers=2, hidden_size=256, intermediate_size=1024,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=4096,
                   bos_token_id=None, eos_token_id=None)


def write_checkpoint(config_path: str, folder: str, overrides: dict, seed: int = 0) -> None:
    """Write a random-weight Hugging Face folder of the architecture in ``config_path``.

    Built in bfloat16 (the published checkpoints' dtype): a float32 build of 1.24 B parameters
    would take 5 GB here for nothing. Runs in its own process (see :func:`main`) so that the
    memory it takes is returned before the compile starts.
    """
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {k: v for k, v in json.loads(Path(config_path).read_text()).items()
           if not k.startswith("_")}
    config = AutoConfig.for_model(cfg.pop("model_type"), **{**cfg, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):     # all ones after init: fold nothing
                p.uniform_(0.5, 1.5)
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(folder)


def _measure(argv: list[str]) -> tuple[int, float, int, str]:
    """``(exit status, wall s, peak RSS bytes, stderr)`` of ``python argv`` in a new process.

    The peak RSS is that process's own (``os.wait4``'s rusage of that child): the benchmark's
    and the checkpoint writer's memory are not in it.
    """
    t = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as err:
        p = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read()
    return p.returncode, wall, usage.ru_maxrss * 1024, text


def _dir_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true",
                    help="2 layers of hidden 256, vocab 4096: seconds (CI)")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG),
                    help="a published config.json (default Llama-3.2-1B)")
    ap.add_argument("--board", default="u280")
    args = ap.parse_args()
    # what the compile holds before it reads a weight: Python, torch, transformers, hwflow
    _, _, base, _ = _measure(["-c", "import hwflow.cli, hwflow.llm_flow, hwflow.compiler."
                              "llm_frontend, transformers.models.llama.modeling_llama"])
    overrides = SHORT_SIZES if args.short else {}
    with tempfile.TemporaryDirectory(prefix="bench_compile_weights_") as td:
        folder, out = Path(td) / "model", Path(td) / "build"
        t = time.perf_counter()
        # spawn: the writer's torch heap goes back to the OS when it exits
        w = multiprocessing.get_context("spawn").Process(
            target=write_checkpoint, args=(args.config, str(folder), overrides))
        w.start()
        w.join()
        if w.exitcode:
            sys.exit(f"writing the checkpoint failed (exit status {w.exitcode})")
        t_write = time.perf_counter() - t
        ckpt = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        rc, wall, rss, err = _measure(["-m", "hwflow.cli", "compile", str(folder), "--board",
                                       args.board, "-o", str(out)])
        build = _dir_bytes(out) if out.is_dir() else 0
    name = Path(args.config).stem + (" (--short sizes)" if args.short else "")
    print(f"{name} on {args.board}: random bfloat16 checkpoint written in {t_write:.1f} s")
    print(f"checkpoint: {ckpt:,} B ({ckpt / 2**30:.2f} GiB) of safetensors")
    print(f"hwflow compile: exit status {rc}, {wall:.1f} s wall, peak RSS {rss:,} B "
          f"({rss / 2**30:.2f} GiB) = {rss / ckpt:.2f}x the checkpoint (target < 2x); "
          f"build folder {build / 2**30:.2f} GiB")
    print(f"(the imports alone peak at {base / 2**30:.2f} GiB: the compile's own "
          f"{(rss - base) / 2**30:.2f} GiB = {(rss - base) / ckpt:.2f}x the checkpoint)")
    if rc:
        print(err.rstrip()[-2000:])
        sys.exit(rc)


if __name__ == "__main__":
    main()
