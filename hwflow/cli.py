"""The ``hwflow`` command line: compile, sim, boards."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys


# Ctrl-C before main() has set up its handlers (while torch imports, about 2 s) must not print
# a traceback either: the default handler is replaced first thing, and main() restores it.
# It exits at once (os._exit): a SystemExit raised inside an import can be swallowed by a
# library's bare except (about one Ctrl-C in 20 at 0.3 s went on to run the whole compile),
# and nothing has been written yet that would need cleaning up.
def _interrupted_at_start(*_):
    print("hwflow: interrupted", file=sys.stderr, flush=True)
    os._exit(130)


signal.signal(signal.SIGINT, _interrupted_at_start)

from hwflow.errors import USER_ERRORS, HwflowError  # noqa: E402
from hwflow.examples import example_help  # noqa: E402


def _is_decoder(args) -> bool:
    if args.example is not None:
        from hwflow.examples import example_kind

        return example_kind(args.example) == "decoder"
    from pathlib import Path

    from hwflow.compiler.llm_frontend import is_decoder_source

    # A folder can only be a Hugging Face model: its loader says what the folder lacks.
    return Path(args.model).is_dir() or is_decoder_source(args.model)


def _blocks(s: dict) -> str:
    """A block's size in words: a Mamba's channels and states, a decoder's heads."""
    return (f"{s['d_inner']} inner channels, {s['d_state']} states" if "d_state" in s else
            f"{s['heads']}/{s['kv_heads']} heads of {s['head_dim']}")


def _compile_decoder(args) -> int:
    from hwflow.llm_flow import compile_decoder

    out, r = compile_decoder(model=args.model, example=args.example, board=args.board,
                             out=args.out, max_context=args.max_context,
                             trust_model=args.trust_model, boards_dir=args.boards_dir,
                             weights=args.weights, lm_head=args.lm_head)
    s, p, q = r["shape"], r["programs"], r["golden_vs_float"]
    print(f"compiled {r['model']} ({r['family']}, {r['weights']} weights, {r['lm_head']} LM "
          f"head: {s['layers']} layers, hidden {s['hidden']}, {_blocks(s)}, vocab {s['vocab']}) "
          f"for {r['board']}, max context {r['max_context']:,}")
    versus = ("the same decode program at every position (a recurrent state, no KV cache)"
              if r["naive_program_bytes"] is None else
              f"one program per length would take {r['naive_program_bytes']:,} B "
              f"({r['program_reduction']:.0f}x more)")
    print(f"programs: 1 decode ({p['decode']['bytes']} B) + {p['prefill']['count']} prefill "
          f"buckets {r['prefill_buckets']} ({p['prefill']['bytes']} B); {versus}")
    print(f"golden vs float logits: cosine {q['cosine']:.5f}, top-1 agreement {q['top1']:.3f}")
    for note in r.get("config_notes", []):
        print(f"note: {note}")
    if r.get("tlmm"):
        t, z = r["tlmm"], r["tlmm"]["sizing"]
        how = ("from the board YAML" if z["source"] == "board" else
               f"sized for {z['lut_share']:.0%} of the LUTs: {z['resources']['lut']:,} LUT of a "
               f"{z['lut_budget']:,} budget, records of T*Q*bits <= 8*SB = {8 * z['SB']} bits")
        print(f"ternary linears on the TLMM engine: G={t['G']} T={t['T']} Q={t['Q']} "
              f"({t['lookups_per_cycle']} lookups/cycle; {how})")
    print(f"wrote {out}")
    return 0


def _compile_shape_only(args) -> int:
    from hwflow.llm_flow import compile_shape_only
    from hwflow.predict import format_prediction

    out, r = compile_shape_only(model=args.model, example=args.example, board=args.board,
                                out=args.out, max_context=args.max_context,
                                boards_dir=args.boards_dir, weights=args.weights,
                                lm_head=args.lm_head)
    s, p, n = r["shape"], r["programs"], r["parameters"]
    params = f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n:,}"
    print(f"shape-only compile of {r['model']} ({r['family']}, {r['weights']} weights, "
          f"{r['lm_head']} LM head: "
          f"{params} parameters, {s['layers']} layers, hidden "
          f"{s['hidden']}, {_blocks(s)}, vocab "
          f"{s['vocab']}) for {r['board']}, max context {r['max_context']:,}; no weights read")
    print(f"programs: 1 decode ({p['decode']['bytes']} B) + {p['prefill']['count']} prefill "
          f"buckets {r['prefill_buckets']} ({p['prefill']['bytes']} B)")
    for line in format_prediction(r["prediction"]):
        print(line)
    print(f"wrote {out}")
    return 0


# compile options that only MLP builds read (a language model's compile would ignore them)
_MLP_FLAGS = ("rows", "sparsity", "save_ir", "calib")


def _refuse_flags(args, flags, why: str) -> None:
    """Refuse an option the chosen compile would silently ignore, saying ``why``."""
    for f in flags:
        if getattr(args, f, None) not in (None, False):
            raise HwflowError(f"--{f.replace('_', '-')} {why}; drop the option")


def _source_name(args) -> str:
    return f"--example {args.example}" if args.example else f"'{args.model}'"


def _cmd_compile(args) -> int:
    if getattr(args, "shape_only", False):
        _refuse_flags(args, _MLP_FLAGS + ("trust_model",),
                      "is not read by a --shape-only compile (a config, no weights)")
        return _compile_shape_only(args)
    if _is_decoder(args):
        _refuse_flags(args, _MLP_FLAGS, f"is for MLP models; {_source_name(args)} is a "
                      "language model")
        return _compile_decoder(args)
    _refuse_flags(args, ("max_context", "lm_head"), f"is for language models; "
                  f"{_source_name(args)} is an MLP model")
    args.sparsity = args.sparsity or "auto"
    from hwflow.flow import compile_model  # the MLP flow: it loads the RTL generator

    out, report = compile_model(
        model=args.model, example=args.example, board=args.board, out=args.out,
        calib=args.calib, trust_model=args.trust_model, boards_dir=args.boards_dir,
        save_ir=args.save_ir, rows=args.rows, sparsity=args.sparsity,
        weights=args.weights or "int8")
    print(f"compiled {report['model']} for {report['board']}: {report['ops_total']} ops, "
          f"{report['instructions']} instructions, {report['program_bytes']} B program, "
          f"{report['memory_image_bytes']} B memory image, "
          f"{report['predicted_cycles']} predicted cycles")
    print(f"golden vs float on the calibration sample: cosine {report['float_cosine']:.5f}, "
          f"max abs error {report['float_max_abs_error']:.4g}")
    if "pruned_float_cosine" in report:
        print(f"golden vs the pruned float model: cosine {report['pruned_float_cosine']:.5f}, "
              f"max abs error {report['pruned_float_max_abs_error']:.4g}")
    formats = report.get("weight_formats", {})
    if args.sparsity != "auto" or (args.weights or "int8") != "int8" or any(
            f["sparsity"] != "dense" for f in formats.values()):
        print("weights: " + ", ".join(f"{name} {f['sparsity']} {f['weights']}"
                                      for name, f in formats.items()))
    print(f"wrote {out}")
    return 0


def _print_decoder_sim(r: dict) -> None:
    for i, st in enumerate(r["steps"]):
        print(f"step {i}: {st['kind']} pos {st['pos']} ({st['tokens']} token"
              f"{'s' if st['tokens'] > 1 else ''}): {st['cycles']} cycles, "
              f"{'bit-exact' if st['bit_exact'] else 'MISMATCH'}")
    status = "BIT-EXACT" if r["bit_exact"] else "MISMATCH"
    print(f"RTL vs golden: {status}; tokens {r['tokens']} (golden {r['golden_tokens']}, "
          f"float {r['float_tokens']}); float top-1 agreement {r['float_top1_agreement']:.3f}")
    d = r["traffic"]["decode"]
    print(f"decode traffic (bytes): weights {d['weights_read']:,}, kv read {d['kv_read']:,} "
          f"written {d['kv_written']:,}, activations read {d['activations_read']} written "
          f"{d['activations_written']}, io read {d['io_read']} written {d['io_written']}")
    print(f"{r['decode_cycles_per_step']:.0f} cycles per decode step; "
          f"{r['cycles_per_second'] / 1e6:.2f} M cycles/s")


def _print_mlp_sim(r: dict) -> None:
    status = "BIT-EXACT" if r["bit_exact"] else f"MISMATCH ({r['mismatches']} bytes differ)"
    print(f"RTL vs golden: {status}; {r['cycles']} cycles (predicted {r['predicted_cycles']}), "
          f"{r['cycles_per_second'] / 1e6:.2f} M cycles/s, "
          f"engine busy {r['mpe_utilization']:.3f} of the cycles")
    print(f"throughput: {r['macs_per_dsp_cycle']:.3f} dense-equivalent MACs per DSP slice per "
          f"cycle (ideal {r['ideal_macs_per_dsp_cycle']:.3g} for this program's layers)")
    print(f"golden vs float torch: cosine {r['float_cosine']:.5f}, "
          f"max abs error {r['float_max_abs_error']:.4g}")


def _cmd_sim(args) -> int:
    from hwflow.simulate import simulate

    r = simulate(args.out, seed=args.seed, waves=args.waves, prompt=args.prompt,
                 prompt_len=args.prompt_len, new_tokens=args.new_tokens)
    (_print_decoder_sim if "steps" in r else _print_mlp_sim)(r)
    if r.get("waves"):
        print(f"waveform: {r['waves']}")
    return 0 if r["bit_exact"] else 1


def _cmd_bitstream(args) -> int:
    from hwflow.export import build_bitstream

    r = build_bitstream(args.out, require_bitstream=args.require_bitstream,
                        boards_dir=args.boards_dir)
    for line in r.get("summary", []):
        print(line)
    return r.get("exit_code", 0)


def _cmd_boards(args) -> int:
    from hwflow.boards import list_boards

    rows = [("board", "part", "LUT", "DSP", "BRAM", "URAM", "memory", "clock")]
    for b in list_boards(args.boards_dir):
        r, m = b.resources, b.memory
        rows.append((b.name, b.part, f"{r['lut']:,}", f"{r['dsp']:,}", f"{r['bram']:,}",
                     f"{r['uram']:,}",
                     f"{m['type']} {b.max_mem_ports}x{m['port_bytes'] * 8}b "
                     f"{m['bandwidth_gbps']} GB/s",
                     f"{b.clock_mhz:g} MHz"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _cmd_dse(args) -> int:
    from hwflow.dse import run_dse

    r = run_dse(model=args.model, example=args.example, board=args.board, space=args.space,
                trials=args.trials, jobs=args.jobs, study=args.study, scheduler=args.scheduler,
                out=args.out, sampler=args.sampler, seed=args.seed, verify=args.verify,
                trust_model=args.trust_model, boards_dir=args.boards_dir)
    c, s, info = r["counts"], r["search"], r["info"]
    retried = f", {s['retried']} retried" if s["retried"] else ""
    print(f"dse {info['model']} ({info['kind']}) on {info['board']}: {c['points']} points of "
          f"{r['space_size']} ({s['evaluated']} evaluated now, {s['resumed']} from the study"
          f"{retried}) in {r['wall_s']:.1f} s; "
          f"{c['feasible']} feasible, {c['infeasible']} infeasible, {c['invalid']} invalid, "
          f"{c['error']} errors")
    print(f"Pareto set: {c['pareto']} points" + (":" if r["pareto"] else ""))
    for p in r["pareto"][:10]:
        m = p["metrics"]
        print(f"  point {p['point_id']}: " + ", ".join(f"{k}={v}" for k, v in p["params"].items())
              + f" -> {m['throughput']:.4g} {m.get('throughput_unit', '')}, "
              f"{m['resource_fraction']:.1%} of the {m['dominant_resource'].upper()}")
    if len(r["pareto"]) > 10:
        print(f"  ... {len(r['pareto']) - 10} more in pareto.json")
    for v in r["verify"] or []:
        print(f"verify point {v['point_id']}: {v['summary']}")
    print(f"wrote {r['out']} (points.csv, points.json, pareto.json, summary.html, "
          f"{len(r['plots'])} plots)")
    bad = [v for v in r["verify"] or [] if v.get("verified") and not v["bit_exact"]]
    return 1 if bad else 0


def _cmd_predict(args) -> int:
    import json

    from hwflow.llm_flow import predict_build
    from hwflow.predict import format_prediction

    r = predict_build(args.out, boards_dir=args.boards_dir)
    if args.json:
        print(json.dumps(r, indent=1, default=float))
        return 0
    for line in format_prediction(r):
        print(line)
    return 0


def _cmd_eval(args) -> int:
    from hwflow.evaluate import evaluate_build

    r = evaluate_build(args.out, text=args.text, tokens=args.tokens, max_tokens=args.max_tokens)
    ratio = r["perplexity_ratio"] - 1
    print(f"{r['tokens']} positions of {r['input'].partition(':')[2]} predicted teacher-forced "
          f"by {r['model']} ({r['weights']} weights) in {r['windows']} window"
          f"{'s' if r['windows'] > 1 else ''} of up to {r['context']} tokens (the max context)")
    print(f"perplexity: float {r['float_perplexity']:.3f}, golden {r['golden_perplexity']:.3f} "
          f"({ratio:+.2%}); top-1 agreement float vs golden {r['top1_agreement']:.3f}")
    print(f"wrote {args.out}/reports/eval.json")
    return 0


def _cmd_calibrate(args) -> int:
    from hwflow.cycle_fit import fit_cycle_model, format_table, write_fit
    from hwflow.mapping.cycles import FITS_DIR

    if args.jobs < 1:
        raise HwflowError(f"--jobs {args.jobs}: give at least 1")
    data = fit_cycle_model(args.board, jobs=args.jobs, boards_dir=args.boards_dir)
    out = write_fit(data, args.out or FITS_DIR / f"{data['board']}.json")
    print(format_table(data))
    print(f"wrote {out}")
    return 0


def _seed(text: str) -> int:
    """A seed for numpy's generators: a non-negative integer."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v}: a seed must be a non-negative integer")
    return v


class _Parser(argparse.ArgumentParser):
    """argparse with hwflow's error convention: one line on stderr (no usage block), exit 2."""

    def error(self, message):
        print(f"hwflow: error: {' '.join(message.split())} (see `{self.prog} --help`)",
              file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="hwflow", description="PyTorch model -> verified FPGA accelerator.")
    boards_help = "extra folder of board YAML files (or $HWFLOW_BOARDS)"
    p.add_argument("--boards-dir", help=boards_help)
    # also after the subcommand: `hwflow compile ... --boards-dir D` (SUPPRESS: a subcommand
    # that is not given it keeps the value given before it)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--boards-dir", default=argparse.SUPPRESS, help=boards_help)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, **kw):
        return sub.add_parser(name, parents=[common], **kw)

    c = command("compile", help="compile a model into a build folder")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("model", nargs="?", help="model: a Hugging Face model folder "
                     "(LLaMA family, safetensors), a torch.export archive, a TorchScript "
                     "archive, or (with --trust-model) a pickled nn.Module")
    src.add_argument("--example", help="a bundled example model instead of a file: "
                     + example_help())
    c.add_argument("--board", required=True, help="target board (see `hwflow boards`)")
    c.add_argument("-o", "--out", help="build folder (default build/<model>-<board>)")
    c.add_argument("--calib", help="calibration input: a tensor saved with torch.save or .npy")
    c.add_argument("--trust-model", action="store_true",
                   help="allow loading a pickled nn.Module (executes code from the file)")
    c.add_argument("--rows", type=int, help="input rows when the file does not fix them "
                   "(TorchScript, pickled module); default 4")
    c.add_argument("--save-ir", action="store_true", help="keep the IR after every pass")
    c.add_argument("--max-context", type=int, help="language models: longest context the "
                   "programs serve (default: the model's, at most 2048)")
    c.add_argument("--shape-only", action="store_true",
                   help="language models: MODEL is a transformers config (config.json or a "
                   "folder holding one); build the programs, memory map and predictions "
                   "(reports/predict.json) from its shapes alone, without weights")
    c.add_argument("--sparsity", metavar="auto|dense|N:M",
                   help="N:M weight sparsity: auto (default) detects the pattern already in "
                   "each layer's weights, dense ignores it, N:M (M a power of two up to 16, "
                   "e.g. 2:4) prunes every linear layer to it by magnitude")
    c.add_argument("--weights", metavar="int8|int4|mixed|ternary",
                   help="weight precision: int8 (default), int4 (group-wise scales), or mixed: "
                   "first and last linear layer int8, the others int4 unless their int4 "
                   "relative error exceeds 0.15; language models: int8, int4 (every linear "
                   "and the LM head, groups of 32 along K), mixed (the rule above, LM head "
                   "int8) or ternary (BitNet b1.58 on the table-lookup engine; the default for "
                   "BitNet models)")
    c.add_argument("--lm-head", choices=("int8", "int4"), metavar="int8|int4",
                   help="language models: the LM head's weights whatever --weights says (int4: "
                   "groups of 32 along K, e.g. beside ternary block linears); default int4 "
                   "under --weights int4, else int8")
    c.set_defaults(func=_cmd_compile)

    s = command("sim", help="simulate a build folder in Verilator, check against golden")
    s.add_argument("out", help="build folder written by `hwflow compile`")
    s.add_argument("--seed", type=_seed, help="seeded random inputs instead of the calibration "
                   "sample (a non-negative integer)")
    s.add_argument("--waves", action="store_true", help="write an FST waveform")
    pr = s.add_mutually_exclusive_group()
    pr.add_argument("--prompt", help="language models: prompt token ids, e.g. '1,5,9'")
    pr.add_argument("--prompt-len", type=int, help="language models: a seeded random prompt of "
                   "this many tokens (default 8)")
    s.add_argument("--new-tokens", type=int, help="language models: greedy decode steps after "
                   "the prompt (default 8)")
    s.set_defaults(func=_cmd_sim)

    pd = command("predict", help="language models: predicted decode tokens/s, "
                        "time to first token, memory bandwidth and resources of a build folder")
    pd.add_argument("out", help="build folder written by `hwflow compile` (also --shape-only)")
    pd.add_argument("--json", action="store_true", help="print the predictions as JSON")
    pd.set_defaults(func=_cmd_predict)

    bs = command("bitstream", help="build a bitstream (open boards) or a vendor project "
                        "(Xilinx), after a resource fit check")
    bs.add_argument("out", help="build folder written by `hwflow compile`")
    bs.add_argument("--require-bitstream", action="store_true",
                    help="fail (exit 3) when the vendor tool needed for a bitstream is missing")
    bs.set_defaults(func=_cmd_bitstream)

    d = command("dse", help="sweep a design space (engine sizes, precisions, sparsity, "
                       "buffers, clock): Pareto set, plots; resumable, local or on Dask")
    dsrc = d.add_mutually_exclusive_group(required=True)
    dsrc.add_argument("model", nargs="?", help="an MLP model file (as `hwflow compile` takes) "
                      "or a decoder: a transformers config.json, a folder holding one, or an "
                      "example name")
    dsrc.add_argument("--example", help="a bundled example model: " + example_help())
    d.add_argument("--board", required=True, help="target board (see `hwflow boards`)")
    d.add_argument("--space", required=True, help="space file (YAML; see README, "
                   "'Design-space sweeps')")
    d.add_argument("--trials", type=int, help="grid: only the first N points; nsga2: distinct "
                   "points to evaluate (default 100)")
    d.add_argument("--jobs", type=int, default=2, help="local worker processes (default 2; 1: "
                   "in this process), or points in flight on a Dask cluster")
    d.add_argument("--study", help="SQLite study file (default OUT/study.db); the same study "
                   "resumes an interrupted sweep")
    d.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address (e.g. "
                   "tcp://host:8786) to evaluate the points on a cluster")
    d.add_argument("-o", "--out", help="output folder (default build/dse-<model>-<board>)")
    d.add_argument("--sampler", default="grid", metavar="grid|nsga2",
                   help="grid (every point, in order; default) or nsga2 (Optuna NSGA-II)")
    d.add_argument("--seed", type=_seed, default=0, help="NSGA-II seed (default 0)")
    d.add_argument("--verify", type=int, default=0, metavar="K", help="compile and simulate "
                   "in RTL the K best Pareto points small enough to simulate")
    d.add_argument("--trust-model", action="store_true",
                   help="allow loading a pickled nn.Module (executes code from the file)")
    d.set_defaults(func=_cmd_dse)

    ev = command("eval", help="language models: perplexity and top-1 agreement of the "
                        "float and golden (integer) models on a text, teacher-forced")
    ev.add_argument("out", help="build folder written by `hwflow compile` from a language "
                    "model's weights")
    evin = ev.add_mutually_exclusive_group(required=True)
    evin.add_argument("--text", metavar="FILE", help="UTF-8 text, tokenized offline with the "
                      "tokenizer of the Hugging Face folder the build was compiled from")
    evin.add_argument("--tokens", metavar="FILE.npy", help="token ids: a 1-D integer .npy array")
    ev.add_argument("--max-tokens", type=int, metavar="N", help="predict at most N positions "
                    "(default: every token after the first)")
    ev.set_defaults(func=_cmd_eval)

    b = command("boards", help="list the supported boards")
    b.set_defaults(func=_cmd_boards)

    cal = command("calibrate", help="fit the cycle model on RTL micro-runs of a board's "
                         "engine; print its held-out error, write the fit JSON")
    cal.add_argument("--board", required=True, help="board whose engine is fitted")
    cal.add_argument("--out", help="cycle-model fit JSON to write (default: the stored one, "
                     "mapping/fits/<board>.json)")
    cal.add_argument("--jobs", type=int, default=1, help="simulator processes side by side")
    cal.set_defaults(func=_cmd_calibrate)
    return p


@contextlib.contextmanager
def quiet_libraries():
    """Keep the libraries hwflow drives from writing to stderr: their warnings (numpy casts,
    torch.export deprecations), log records (transformers load reports, torch's deserializer)
    and progress bars would surround hwflow's own one-line error or summary. ``HWFLOW_DEBUG=1``
    lets them through."""
    if os.environ.get("HWFLOW_DEBUG"):
        yield
        return
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


# errno name -> (what went wrong, what to do) for the OSErrors the environment causes: a full
# disk, a read-only or foreign folder, a long name, a file where a folder should be.
OS_ERRORS = {
    "ENOSPC": ("no space left on the device", "free some space or write to another disk"),
    "EDQUOT": ("disk quota exceeded", "free some space or write to another disk"),
    "EROFS": ("the file system is read-only", "write to a folder on a writable file system"),
    "EACCES": ("permission denied", "choose a path you may use, or fix its permissions"),
    "EPERM": ("operation not permitted", "choose a path you may use, or fix its permissions"),
    "ENAMETOOLONG": ("the name is too long for the file system", "choose a shorter name"),
    "ENOTDIR": ("a part of the path is a file, not a folder", "check the path"),
    "EISDIR": ("it is a folder, not a file", "give the path of a file"),
    "EEXIST": ("it already exists", "remove it or choose another path"),
    "ENOENT": ("no such file or folder (or a dangling symbolic link)", "check the path"),
    "ELOOP": ("too many levels of symbolic links", "fix the links in the path"),
    "EMFILE": ("too many open files", "raise the limit (ulimit -n) and run again"),
    "ENFILE": ("too many open files on the system", "close other programs and run again"),
    "ENOMEM": ("out of memory", "close other programs or use a machine with more memory"),
    "EIO": ("input/output error", "check the disk and run again"),
    "ETXTBSY": ("the file is in use by a running program", "wait for it to end, run again"),
    "EBUSY": ("the device or resource is busy", "run again later"),
    "EPIPE": ("the reading end of a pipe was closed", "keep the reader open until hwflow ends"),
}
# The cache has its own remedy: HWFLOW_CACHE moves all of it (hwflow.rtl_cache).
CACHE_FIX = {"ENOSPC": "free some space or set HWFLOW_CACHE to a folder on another disk",
             "EDQUOT": "free some space or set HWFLOW_CACHE to a folder on another disk"}
CACHE_FIX_DEFAULT = "set HWFLOW_CACHE to a writable folder"
MEMORY_ERROR = ("out of memory; close other programs, use a machine with more memory, or "
                "compile a smaller model (or a smaller --max-context)")


def os_error_message(e: OSError) -> str:
    """One line for an OSError that reached the command line: what failed, the path, the cause
    and what to do.

    Parameters
    ----------
    e : OSError
        The error, with ``errno`` and ``filename`` where the OS gave them.

    Returns
    -------
    str
        The text after ``hwflow: error: `` (one line).
    """
    import errno

    name = errno.errorcode.get(e.errno or 0, "")
    cause, fix = OS_ERRORS.get(name, (e.strerror or str(e) or type(e).__name__,
                                      "check the path and run again"))
    if e.filename is None:
        return " ".join(f"{cause} ({name or type(e).__name__}); {fix}".split())
    what = f"'{e.filename}'" + (f" (to '{e.filename2}')" if e.filename2 else "")
    if _ran_a_program(e):
        verb = "cannot run"
        if name == "ENOENT":
            cause, fix = "no such program", "install it or put it on PATH"
    elif _in_cache(e.filename):
        verb, what = "cannot use", f"the hwflow cache path {what}"
        fix = CACHE_FIX.get(name, CACHE_FIX_DEFAULT)
    else:
        verb = {"ENOSPC": "cannot write", "EDQUOT": "cannot write", "EROFS": "cannot write",
                "ENAMETOOLONG": "cannot create", "ENOENT": "cannot find"}.get(name, "cannot use")
    return " ".join(f"{verb} {what}: {cause}; {fix}".split())


def _ran_a_program(e: OSError) -> bool:
    """The error came from starting a program (subprocess), whose name is ``e.filename``."""
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith("subprocess.py"):
            return True
        tb = tb.tb_next
    return False


def _in_cache(filename) -> bool:
    try:
        from hwflow.rtl_cache import cache_base

        base = os.path.abspath(cache_base())
        return os.path.commonpath([base, os.path.abspath(os.fsdecode(filename))]) == base
    except Exception:           # an error while explaining an error: keep the plain message
        return False


def _check_boards_dir(args) -> None:
    """``--boards-dir`` (or $HWFLOW_BOARDS) must name a folder for every command, also those
    that read no board (sim, predict): a typo must not pass silently."""
    if getattr(args, "boards_dir", None) is not None or os.environ.get("HWFLOW_BOARDS"):
        from hwflow.boards import board_dirs

        board_dirs(args.boards_dir)


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        args = build_parser().parse_args(argv)
        with quiet_libraries():
            _check_boards_dir(args)
            return args.func(args)
    except USER_ERRORS as e:
        print(f"hwflow: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hwflow: interrupted; nothing was left half-written", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"hwflow: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"hwflow: error: {MEMORY_ERROR}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
