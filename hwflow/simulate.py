"""``hwflow sim``: run a build folder in Verilator and check it against golden, bit for bit.

One simulation for every model family (:func:`simulate`): the build is opened and checked
(``buildfolder.open_build``), the family gives the runs the host makes and what each must
read back (an MLP: its one program, :func:`simulate_build`; a decoder: the prompt and decode
runs of ``mapping.host_schedule``, :func:`simulate_decoder`), ``sim.runner.simulate_steps``
runs them on the RTL in one simulator process (:func:`_run_rtl`), and the report goes to
``reports/sim.json`` (:func:`_finish`).

Three equalities are checked on the same inputs (docs/design.md, "Verification"):
float torch ~ golden (reported: cosine, max abs error; a decoder: its tokens and top-1
agreement), golden == ISA functional model (exact), ISA functional model == RTL (exact, every
byte of every output region; a decoder: every run's logits row and its traffic counters).

Throughput: ``macs_per_dsp_cycle`` is the dense-equivalent MACs of the MATMUL layers
(rows x N x K each, pruned weights counted, from ``reports/compile.json``) per DSP slice per
RTL cycle of the whole run (loads, stores and vector ops included). A slice does two packed
int8 MACs per cycle, and an N:M layer runs r = M/N output channels per chain per pass, so a
layer's ideal is ``2 r`` (``ideal_macs_per_dsp_cycle_by_layer``); ``ideal_macs_per_dsp_cycle``
is the rate of the whole program if every layer ran at its ideal and nothing else took time.
``mpe_utilization`` is the engine's own view: the fraction of cycles in which it accepted a
k-group (the MPE_BUSY counter over all cycles), whatever the weight format. Ternary layers run
on the TLMM engine, not the DSP chains, and are left out of the MPE rates.

TLMM (programs with TMATMULs, docs/architecture.md "Ternary path"): ``tlmm_busy_cycles``
is the TLMM_BUSY register (cycles in which the engine did its ``T·Q`` lookups), checked against
the ISA model's count (``tlmm_busy_isa_model``); ``tlmm_utilization`` = busy / cycles and
``tlmm_lookups_per_cycle`` = (every row's records) · T · Q / cycles (its ideal is ``R·T·Q``,
R rows a pass).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwflow.buildfolder import build_kind, open_build, write_json
from hwflow.compiler import load_graph, run
from hwflow.compiler.decoder_io import load_saved_decoder
from hwflow.errors import HwflowError
from hwflow.flow import program_inputs
from hwflow.golden import int8 as g8
from hwflow.golden.metrics import cosine, max_abs_error
from hwflow.hw.config import AccelConfig
from hwflow.llm_flow import (
    DEFAULT_NEW_TOKENS,
    DEFAULT_PROMPT_LEN,
    default_prompt,
    golden_rows,
    parse_prompt,
)
from hwflow.mapping.memory_image import MemoryMap, read_tensor, unpack_rows, write_tensor
from hwflow.rtl_cache import check_cache_writable
from hwflow.sim.isa_model import run_program
from hwflow.sim.runner import SimError, simulate_steps

__all__ = ["simulate", "simulate_build", "simulate_decoder", "check_isa_model", "throughput",
           "tlmm_rates"]


def simulate(out, seed: int | None = None, waves: bool = False, prompt: str | None = None,
             prompt_len: int | None = None, new_tokens: int | None = None) -> dict:
    """``hwflow sim``: simulate build folder ``out`` whatever its model family; writes and
    returns ``reports/sim.json``'s content.

    Parameters
    ----------
    out : path-like
        A build folder (``hwflow compile``).
    seed : int, optional
        An MLP: seeded random inputs instead of the calibration rows; a decoder: the seed of
        the random prompt.
    waves : bool
        Write a waveform (``sim/dump.fst``).
    prompt, prompt_len, new_tokens : optional
        Decoder builds only: the prompt (token ids), or its length (random ids), and the
        greedy decode steps after it (default :data:`hwflow.llm_flow.DEFAULT_NEW_TOKENS`).
    """
    kind = build_kind(out)
    if kind == "decoder":
        return simulate_decoder(out, prompt=prompt, prompt_len=prompt_len, seed=seed,
                                new_tokens=DEFAULT_NEW_TOKENS if new_tokens is None
                                else new_tokens, waves=waves)
    for flag, v in (("prompt", prompt), ("prompt-len", prompt_len), ("new-tokens", new_tokens)):
        if v is not None:
            raise HwflowError(f"--{flag} is for decoder builds; {out} holds a {kind} build")
    return simulate_build(out, seed=seed, waves=waves)


def _run_rtl(out: Path, conf: dict, cfg: AccelConfig, image: bytes, steps: list, waves: bool,
             traffic=None):
    """The host's runs (``sim.runner.simulate_steps`` jobs) on the build's RTL, in one
    simulator process, on the memory the board delivers (``memory_rate_bytes`` of the build's
    config; a beat per cycle in builds from before it was recorded); a simulator failure is
    one line."""
    check_cache_writable()          # the Verilator build is cached
    try:
        res = simulate_steps(cfg, (out / "rtl" / "hwflow_accel.v").read_text(), image, steps,
                             work_dir=out / "sim", waves=waves, traffic=traffic,
                             rate_bytes=conf.get("memory_rate_bytes"))
    except SimError as e:
        raise HwflowError(f"simulation failed: {str(e).splitlines()[0]}") from None
    if not res.steps:
        raise HwflowError(f"simulation failed: no run finished (see {out / 'sim' / 'sim.log'})")
    return res


def _finish(out: Path, report: dict, res, board: str, waves: bool) -> dict:
    """The fields every family's report has (simulator times, board, waveform), written to
    ``reports/sim.json``."""
    cycles = sum(r.cycles for r in res.steps)
    wall = sum(r.run_wall_s for r in res.steps)
    report.update({"sim_seconds": wall, "cycles_per_second": cycles / wall if wall else 0.0,
                   "verilator_build_seconds": res.build_s, "board": board})
    if waves and res.waves:
        report["waves"] = str(res.waves)
    write_json(out / "reports" / "sim.json", report)
    return report


def _inputs(out: Path, shape, seed):
    if seed is not None:
        return np.random.default_rng(seed).standard_normal(shape)
    return program_inputs(np.load(out / "calib.npy", allow_pickle=False), shape)


def _engine_ratio(layer: dict, formats: dict, cfg: AccelConfig) -> int:
    """r = M/N of the engine mode a MATMUL layer runs in: the mapper's ``sparsity`` for the
    layer if it gives one (``"2:4"``, ``"dense"``), else the compiler's pattern, limited to
    what the engine runs (r <= G = ``cfg.groups``, M <= L; sparse selectors built)."""
    text = layer.get("sparsity")
    if not isinstance(text, str):
        text = formats.get(layer.get("name"), {}).get("sparsity", "dense")
    if text == "dense" or ":" not in text or not cfg.sparse:
        return 1
    n, m = (int(v) for v in text.split(":"))
    if m > cfg.chain_len or n < 1:
        return 1
    return max(1, min(m // n, cfg.groups))


def tlmm_rates(cfg: AccelConfig, busy: int, cycles: int, records: int) -> dict:
    """TLMM counters of a run: ``tlmm_busy_cycles``, ``tlmm_utilization`` (busy / cycles) and
    ``tlmm_lookups_per_cycle`` (``records`` · T · Q / cycles: every row's records, each
    T·Q lookups; a busy cycle looks a record up for each row of its pass), against
    ``tlmm_ideal_lookups_per_cycle`` = R·T·Q."""
    lookups = cfg.tlmm_t * cfg.tlmm_q
    return {"tlmm_busy_cycles": busy,
            "tlmm_utilization": busy / cycles if cycles else 0.0,
            "tlmm_lookups_per_cycle": records * lookups / cycles if cycles else 0.0,
            "tlmm_ideal_lookups_per_cycle": cfg.tlmm_rows * lookups}


def throughput(compile_report: dict, cfg: AccelConfig, cycles: int) -> dict:
    """``macs_per_dsp_cycle`` of a run of ``cycles`` and its ideal, overall and per layer
    (see the module docstring)."""
    formats = compile_report.get("weight_formats", {})
    layers = [la for la in compile_report["layers"]
              if la.get("kind") == "qlinear" and la.get("engine", "mpe") == "mpe"]
    macs = sum(int(la["macs"]) for la in layers)
    ideal = {la["name"]: 2.0 * _engine_ratio(la, formats, cfg) for la in layers}
    busy = sum(la["macs"] / ideal[la["name"]] for la in layers)
    return {
        "macs_per_dsp_cycle": macs / (cfg.dsp_slices * cycles) if cycles else 0.0,
        "ideal_macs_per_dsp_cycle": macs / busy if busy else 0.0,
        "ideal_macs_per_dsp_cycle_by_layer": ideal,
    }


@dataclass
class _Reference:
    """A build's inputs, with golden's and the ISA functional model's results for them."""

    conf: dict
    cfg: AccelConfig
    mm: MemoryMap
    image: bytes            # the memory image with the inputs written in
    model_image: bytes      # the image after the ISA functional model ran the program
    golden_q: dict          # output name -> golden int8 tensor
    golden_out: dict        # output name -> golden float result
    float_out: dict         # output name -> float (torch) IR result
    isa_exact: bool
    isa_stats: object       # IsaStats of the ISA functional model's run


def _reference(out: Path, seed) -> _Reference:
    conf = open_build(out)          # every file as compile wrote it, or one line naming it
    if conf.get("kind", "mlp") != "mlp":
        raise HwflowError(f"{out} holds a {conf['kind']} build; simulate it with "
                          "simulate_decoder (`hwflow sim` picks it)")
    cfg = AccelConfig(**conf["accel"])
    mm = MemoryMap.from_json((out / "memory_map.json").read_text())
    final = load_graph(out / "ir" / "final")
    ref = load_graph(out / "ir" / "float")
    in_name, outputs = conf["input"], conf["outputs"]
    in_op = final.nodes[in_name]["op"]

    x = _inputs(out, in_op.out.shape, seed)
    golden_out, values = run(final, {in_name: x}, intermediates=True)
    float_out = run(ref, {in_name: x})
    image = bytearray((out / "memory_image.bin").read_bytes())
    write_tensor(image, mm, in_name, g8.quantize(x, in_op.out.scale))
    image = bytes(image)

    # golden == ISA functional model
    model_image, stats = run_program(cfg, image, conf["prog_base"])
    golden_q = {o: values[final.nodes[o]["op"].inputs[0]] for o in outputs}
    isa_exact = all(np.array_equal(read_tensor(model_image, mm, o), golden_q[o])
                    for o in outputs)
    return _Reference(conf, cfg, mm, image, model_image, golden_q, golden_out, float_out,
                      isa_exact, stats)


def check_isa_model(out, seed: int | None = None) -> bool:
    """golden == ISA functional model on build folder ``out``, every output exact (no RTL)."""
    return _reference(Path(out), seed).isa_exact


def simulate_build(out, seed: int | None = None, waves: bool = False) -> dict:
    """Simulate MLP build folder ``out``: its program, one run; writes and returns
    ``reports/sim.json``'s content."""
    out = Path(out)
    p = _reference(out, seed)
    conf, cfg, mm, outputs = p.conf, p.cfg, p.mm, p.conf["outputs"]
    compile_report = json.loads((out / "reports" / "compile.json").read_text())

    # ISA functional model == RTL, every byte of the output regions (padding included)
    regions = [mm.region(o) for o in outputs]
    sb = mm.beat_bytes
    res = _run_rtl(out, conf, cfg, p.image, [{"prog_base": conf["prog_base"],
                                        "readback": [(r.addr, r.nbytes) for r in regions]}],
                   waves)
    run = res.steps[0]
    mismatches = rtl_vs_model = 0
    for r, got in zip(regions, run.regions, strict=True):
        want = p.model_image[r.addr * sb: r.addr * sb + r.nbytes]
        rtl_vs_model += int(np.count_nonzero(np.frombuffer(got, np.uint8)
                                             != np.frombuffer(want, np.uint8)))
        mismatches += int(np.count_nonzero(unpack_rows(got, r, mm.chain_len)
                                           != p.golden_q[r.name]))

    o = outputs[0]
    macs = compile_report["macs"]
    report = {
        "bit_exact": bool(mismatches == 0 and rtl_vs_model == 0 and p.isa_exact
                          and run.done and run.error == 0),
        "mismatches": mismatches,
        "rtl_vs_isa_model_bytes": rtl_vs_model,
        "completed": bool(run.done),
        "isa_model_bit_exact": bool(p.isa_exact),
        "error_register": run.error,
        "cycles": run.cycles,
        "predicted_cycles": compile_report["predicted_cycles"],
        "mpe_busy_cycles": run.mpe_busy,
        "retired": run.retired,
        "macs": macs,
        "mpe_utilization": run.mpe_busy / run.cycles if run.cycles else 0.0,
        **throughput(compile_report, cfg, run.cycles),
        "float_cosine": cosine(p.golden_out[o], p.float_out[o]),
        "float_max_abs_error": max_abs_error(p.golden_out[o], p.float_out[o]),
        "inputs": "calibration" if seed is None else f"seed {seed}",
    }
    if compile_report.get("instruction_kinds", {}).get("TMATMUL"):
        report.update(tlmm_rates(cfg, run.tlmm_busy, run.cycles, p.isa_stats.tlmm_lookups))
        report["tlmm_busy_isa_model"] = p.isa_stats.tlmm_busy_cycles
    return _finish(out, report, res, conf["board"], waves)


def _sum_traffic(per_step: list, mask: list) -> dict:
    keys = ("weights_read", "kv_read", "kv_written", "activations_read", "activations_written",
            "io_read", "io_written", "program_read")
    return {k: int(sum(t.get(k, 0) for t, m in zip(per_step, mask, strict=True) if m))
            for k in keys}


def _tlmm_sim_report(cfg, steps: list) -> dict:
    """TLMM use in the simulation: ``tlmm_lookups_per_cycle`` (lookups the engine did over the
    cycles of the decode steps: ``T*Q`` per TLMM_BUSY cycle) when the simulator reports
    TLMM_BUSY, else None with the reason."""
    tq = cfg.tlmm_t * cfg.tlmm_q
    rep = {"G": cfg.tlmm_g, "T": cfg.tlmm_t, "Q": cfg.tlmm_q, "peak_lookups_per_cycle": tq}
    dec = [st for st in steps if st["kind"] == "decode"]
    if not dec or any("tlmm_busy" not in st for st in dec):
        return {**rep, "tlmm_lookups_per_cycle": None,
                "note": "the simulation result has no TLMM_BUSY count"}
    busy = sum(st["tlmm_busy"] for st in dec)
    cycles = sum(st["cycles"] for st in dec)
    return {**rep, "decode_tlmm_busy_cycles": busy, "decode_cycles": cycles,
            "tlmm_lookups_per_cycle": busy * tq / cycles if cycles else 0.0,
            "tlmm_busy_fraction": busy / cycles if cycles else 0.0}


def simulate_decoder(out, prompt: str | None = None, prompt_len: int | None = None,
                     seed: int | None = None, new_tokens: int = DEFAULT_NEW_TOKENS,
                     waves: bool = False) -> dict:
    """Prefill + ``new_tokens`` greedy decode steps of build folder ``out`` on the RTL; writes
    and returns ``reports/sim.json``'s content."""
    from hwflow.compiler.lm import float_generate, golden_generate, max_context, top1_agreement
    from hwflow.mapping.llm_lower import lower_decoder
    from hwflow.sim.isa_model import run_host_steps
    from hwflow.sim.runner import rtl_jobs

    out = Path(out)
    conf = open_build(out)          # every file as compile wrote it, or one line naming it
    if conf.get("shape_only"):
        raise HwflowError(f"{out} is a shape-only build (compiled from a config: no weights, "
                          "no memory image, no RTL); it cannot be simulated. Use `hwflow "
                          "predict` on it, or compile the model's weights to simulate")
    cfg = AccelConfig(**conf["accel"])
    qd = load_saved_decoder(out / "decoder" / "quantized")
    fd = load_saved_decoder(out / "decoder" / "float")
    vocab, ctx = qd.shape.vocab, max_context(qd)
    if new_tokens < 1:
        raise HwflowError(f"--new-tokens {new_tokens}: give at least 1 decode step")
    if prompt is not None:
        ids = parse_prompt(prompt, vocab)
    else:
        n = DEFAULT_PROMPT_LEN if prompt_len is None else prompt_len
        if n < 1:
            raise HwflowError(f"--prompt-len {n}: give at least 1 token")
        if n + new_tokens > ctx:     # before drawing n random ids (n may be 10^9)
            raise HwflowError(f"--prompt-len {n} + {new_tokens} decode steps exceed the "
                              f"build's max context of {ctx}; recompile with a "
                              "larger --max-context or shorten the run")
        ids = default_prompt(vocab, n, seed)
    if len(ids) + new_tokens > ctx:
        raise HwflowError(f"{len(ids)} prompt tokens + {new_tokens} decode steps exceed the "
                          f"build's max context of {ctx}; recompile with a larger "
                          "--max-context or shorten the run")
    image = (out / "memory_image.bin").read_bytes()
    lw = lower_decoder(qd, cfg)
    if lw.image != image:
        raise HwflowError(f"{out}/memory_image.bin does not match its decoder; recompile")

    # golden: the prompt's logits, then one [1, vocab] row per decode step
    golden = golden_generate(qd, ids, new_tokens + 1)
    g_tokens = [int(t) for t in golden.tokens]
    host, steps = rtl_jobs(lw, ids, new_tokens)
    res = _run_rtl(out, conf, cfg, image, steps, waves,
                   traffic=[tuple(r) for r in conf["traffic_ranges"]])

    want = [w[:vocab] for w in golden_rows(golden, host, lw.io.logits_row_bytes)]
    isa_logits, isa_traffic = run_host_steps(cfg, image, lw.memory_map, host, g_tokens)

    report_steps = []
    for i, ((st, is_decode), r) in enumerate(zip(host, res.steps, strict=False)):
        got = np.frombuffer(r.regions[0], np.int8)[:st.vocab]
        exact = bool(r.done and r.error == 0 and np.array_equal(got, want[i]))
        report_steps.append({
            "kind": "decode" if is_decode else "prefill", "pos": st.pos, "rows": st.rows,
            "tokens": st.tokens, "cycles": r.cycles, "bit_exact": exact,
            "isa_model_bit_exact": bool(np.array_equal(isa_logits[i], want[i])),
            "traffic_matches_isa_model": all(r.traffic.get(k, 0) == v
                                              for k, v in isa_traffic[i].items()),
            "error_register": r.error, "sim_seconds": r.run_wall_s,
            **({"tlmm_busy": int(r.tlmm_busy)} if getattr(r, "tlmm_busy", None) is not None
               else {})})
    completed = len(res.steps) == len(host) and res.passed
    decode_mask = [d for _, d in host][:len(res.steps)]
    rtl_traffic = [r.traffic for r in res.steps]
    tokens = res.tokens
    float_tokens = float_generate(fd, ids, new_tokens + 1)
    cycles = [s["cycles"] for s in report_steps]
    dec = [s["cycles"] for s in report_steps if s["kind"] == "decode"]
    report = {
        "bit_exact": bool(completed and all(s["bit_exact"] for s in report_steps)
                          and tokens == g_tokens),
        "completed": completed,
        "prompt": ids, "new_tokens": new_tokens,
        "steps": report_steps,
        "tokens": tokens, "golden_tokens": g_tokens, "float_tokens": float_tokens,
        "float_top1_agreement": top1_agreement(fd, qd, ids, g_tokens),
        "isa_model_bit_exact": all(s["isa_model_bit_exact"] for s in report_steps),
        "traffic": {"prefill": _sum_traffic(rtl_traffic, [not d for d in decode_mask]),
                    "decode": _sum_traffic(rtl_traffic, decode_mask)},
        "isa_model_traffic": {"prefill": _sum_traffic(isa_traffic, [not d for _, d in host]),
                              "decode": _sum_traffic(isa_traffic, [d for _, d in host])},
        "cycles": int(sum(cycles)),
        "decode_cycles_per_step": (sum(dec) / len(dec)) if dec else None,
    }
    if cfg.tlmm:
        report["tlmm"] = _tlmm_sim_report(cfg, report_steps)
    return _finish(out, report, res, conf["board"], waves)
