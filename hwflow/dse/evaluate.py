"""One point of a sweep: its model, engine, prediction, resources and feasibility.

:func:`evaluate_points` is what the driver (:mod:`hwflow.dse.search`) hands to a local
worker process or a Dask worker: module level, so that it pickles by reference
(``hwflow.dse.evaluate.evaluate_points``). A worker loads the model once (:data:`_CACHE`)
and evaluates many points of it. Here too: the cheap fit check of a whole space before the
sweep (:func:`check_space_fits`), and the RTL verification of Pareto points after it
(:func:`verify_points`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from hwflow.boards import load_board
from hwflow.dse.space import (
    DECODER,
    ENGINE_PARAMETERS,
    MLP,
    RESOURCE_KINDS,
    Space,
)
from hwflow.errors import USER_ERRORS, HwflowError

#: Verification refuses points whose RTL run would be long: more predicted cycles than this
#: (the bundled MLPs take 700-1200; Verilator + cocotb runs ~0.3 M cycles/s, so 2 M is ~7 s)
#: or a matrix engine of more DSP slices (Verilator build time grows with the engine; the
#: u280 default 16 x 16 = 256 builds in about a minute).
VERIFY_MAX_CYCLES = 2_000_000
VERIFY_MAX_DSP_SLICES = 256
#: Decoders the sweep can verify in RTL: the bundled tiny examples.
VERIFY_DECODERS = ("tiny-llama", "tiny-bitnet")


# ------------------------------------------------------------------------------ model kinds

def resolve_model(model=None, example=None, trust_model=False) -> dict:
    """The sweep's model as a picklable spec: ``kind`` (mlp or decoder), ``name`` and where
    to load it from. Decoders are a ``transformers`` config.json, a folder holding one, or a
    bundled example name; MLPs a model file as ``hwflow compile`` takes, or ``--example``."""
    from hwflow.examples import example_kind

    if example is not None:
        if example_kind(example) == "mlp":
            return {"kind": MLP, "name": example, "example": example}
        return {"kind": DECODER, "name": example, "source": example}
    p = Path(model)
    if p.is_dir() or p.suffix == ".json":
        if p.is_dir() and not (p / "config.json").is_file():
            raise HwflowError(f"'{model}' is a folder without config.json; dse takes a decoder "
                              f"as a transformers config.json or a folder holding one")
        if not p.exists():
            raise HwflowError(f"model config '{model}' not found")
        name = p.name if p.is_dir() else (p.stem if p.stem != "config" else p.parent.name)
        return {"kind": DECODER, "name": name, "source": str(p.resolve())}
    if p.is_file():
        from hwflow.compiler.llm_frontend import is_decoder_source

        if is_decoder_source(p):
            raise HwflowError(f"'{model}' is a language-model archive; dse predicts decoders "
                              f"from their config: pass the model's config.json or folder")
        return {"kind": MLP, "name": p.name.split(".")[0] or "model", "path": str(p.resolve()),
                "trust_model": bool(trust_model)}
    # a decoder example name the predictor knows (e.g. a bundled full-size config)
    try:
        _load_decoder({"source": model})
    except USER_ERRORS:
        raise
    except Exception:  # noqa: BLE001 - anything else: the name is simply not a model
        raise HwflowError(f"model '{model}' not found (a model file, a decoder config.json or "
                          f"folder, or an example name)") from None
    return {"kind": DECODER, "name": Path(model).name, "source": model}


_CACHE: dict = {}


def _load_board(name, boards_dir):
    key = ("board", name, boards_dir)
    if key not in _CACHE:
        _CACHE[key] = load_board(name, boards_dir)
    return _CACHE[key]


def _load_decoder(spec: dict):
    key = ("decoder", spec["source"])
    if key not in _CACHE:
        from hwflow.predict import load_shape

        _CACHE[key] = load_shape(spec["source"])
    return _CACHE[key]


def _load_mlp(spec: dict):
    """``(float graph, input name, input shape, calibration sample)``, loaded once per process
    (a worker evaluates many points of the same model)."""
    key = ("mlp", spec.get("path") or spec["example"])
    if key not in _CACHE:
        from hwflow.flow import MLP_STEPS, MlpJob
        from hwflow.steps import run_steps

        job = MlpJob(model=spec.get("path"), example=None if spec.get("path") else
                     spec["example"], trust_model=spec.get("trust_model", False))
        run_steps(job, MLP_STEPS, select=("load", "calibrate"))
        _CACHE[key] = (job.graph, job.in_name, job.in_shape, job.calib)
    return _CACHE[key]


# ---------------------------------------------------------------------------- one point

def engine_overrides(board, params: dict, kind: str) -> dict:
    """The :func:`~hwflow.mapping.accel_config.choose_config` overrides of a point.

    Engine sizes come from the point; ``mem_ports``, if the point does not set it, follows
    the engine's width (one weight row per cycle, capped by the board's ports: the
    board's own ``mem_ports`` is sized for its default engine). The optional units follow
    the precision: MLPs build the sparse selectors unless ``sparsity`` is dense, the int4
    dequantizer for int4/mixed weights, the TLMM for ternary weights, and no transformer
    units (MLPs never use them: their DSPs and LUTs saved); decoders build the transformer units,
    the TLMM for ternary weights, the int4 path for int4/mixed weights, and no sparse
    selectors (the decoder flow runs dense weights).
    """
    from hwflow.mapping.accel_config import default_mem_ports, engine_value

    eng = {k: params[k] for k in ENGINE_PARAMETERS if k in params}
    if "mem_ports" not in eng and ({"chains", "chain_len"} & set(eng)):
        eng["mem_ports"] = default_mem_ports(
            board, eng.get("chains", engine_value(board.engine, "chains")),
            eng.get("chain_len", engine_value(board.engine, "chain_len")))
    weights = params.get("weights")
    if kind == MLP:
        weights = weights or "int8"
        eng.setdefault("sparse", params.get("sparsity", "auto") != "dense"
                       and board.engine.get("sparse", True))
        eng.setdefault("int4", weights in ("int4", "mixed") and board.engine.get("int4", True))
        eng["tlmm"] = weights == "ternary"
        eng["transformer"] = False
    else:
        eng.update(sparse=False, int4=weights in ("int4", "mixed"), transformer=True)
        if weights is not None:
            eng["tlmm"] = weights == "ternary"
    return eng


def point_resources(cfg, board) -> dict:
    """``{kind: used}`` of an engine configuration: the mapper's resource model
    (:func:`~hwflow.mapping.accel_config.estimate_resources`, every kind it returns for the board's
    family, the TLMM engine included when ``cfg.tlmm``)."""
    from hwflow.mapping.accel_config import estimate_resources

    used = estimate_resources(cfg, getattr(board, "bram_kbits", 36))
    return {k: v for k, v in used.items() if k in RESOURCE_KINDS}


def resource_metrics(used: dict, board) -> dict:
    """Used, fraction of the board, the dominant fraction and kind, and what does not fit."""
    out, fr = {}, {}
    for k, v in used.items():
        avail = board.resources.get(k, 0)
        out[k] = v
        fr[k] = v / avail if avail else (math.inf if v else 0.0)
        out[f"{k}_fraction"] = fr[k]
    dom = max(fr, key=lambda k: fr[k]) if fr else ""
    out["resource_fraction"] = fr[dom] if fr else 0.0
    out["dominant_resource"] = dom
    over = [f"{k.upper()} {used[k]:,.0f} > {board.resources.get(k, 0):,}" for k in used
            if fr[k] > 1]
    return {"metrics": out, "over": over}


def _engine(board, params, kind):
    from hwflow.mapping.accel_config import choose_config

    return choose_config(board, **engine_overrides(board, params, kind))


def evaluate_point(task: dict) -> dict:
    """Evaluate one point of a sweep (module level and picklable: runs in worker processes
    and on Dask workers).

    Parameters
    ----------
    task : dict
        ``model`` (:func:`resolve_model`'s spec), ``board``, ``boards_dir``, ``point_id``,
        ``params`` (``{name: value}``).

    Returns
    -------
    dict
        ``point_id``, ``params``, ``status`` (``ok``; ``invalid``: no such engine or the
        model does not map onto it; ``error``: an unexpected failure, with its reason),
        ``fits`` (the engine fits the board at its clock), ``reason``, ``metrics``
        (throughput, latency_ms, cycles, clock_mhz, resources and their board fractions;
        decoders also prefill time-to-first-token and bandwidth) and ``eval_s``.
    """
    t0 = time.perf_counter()
    spec, params = task["model"], task["params"]
    res = {"point_id": task["point_id"], "params": params, "status": "ok", "fits": False,
           "reason": "", "metrics": {}}
    try:
        board = _load_board(task["board"], task.get("boards_dir"))
        clock = float(params.get("clock_mhz", board.clock_mhz))
        if spec["kind"] == MLP:
            m = _evaluate_mlp(spec, board, params, clock)
        else:
            m = _evaluate_decoder(spec, board, params, clock)
        r = resource_metrics(m.pop("resources"), board)
        res["metrics"] = {**m, **r["metrics"]}
        over = list(r["over"])
        if clock > board.clock_mhz:
            over.append(f"clock {clock:g} MHz > the board's kernel clock {board.clock_mhz:g} MHz")
        if m.get("fits") is False and not over:
            over.append(m["fit_reason"])
        res["metrics"].pop("fits", None)
        res["metrics"].pop("fit_reason", None)
        res["fits"] = not over
        res["reason"] = "; ".join(over)
    except USER_ERRORS as e:
        res.update(status="invalid", reason=str(e).splitlines()[0] if str(e) else type(e).__name__)
    except Exception as e:  # noqa: BLE001 - a point's failure is recorded, never the sweep's
        res.update(status="error", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                   if str(e) else type(e).__name__)
    res["eval_s"] = time.perf_counter() - t0
    return res


def evaluate_points(tasks: list) -> list:
    """:func:`evaluate_point` of several points in one worker call: points that differ only
    in ``clock_mhz`` share one prediction (the cycles do not depend on the clock)."""
    return [evaluate_point(t) for t in tasks]


def _evaluate_mlp(spec, board, params, clock) -> dict:
    from hwflow.flow import MLP_STEPS, MlpJob
    from hwflow.steps import run_steps

    graph, in_name, shape, calib = _load_mlp(spec)
    cfg = _engine(board, params, MLP)
    used = point_resources(cfg, board)
    job = MlpJob(board=board, sparsity=params.get("sparsity", "auto"),
                 weights=params.get("weights", "int8"), graph=graph, in_name=in_name,
                 in_shape=shape, calib=calib, cfg=cfg)
    run_steps(job, MLP_STEPS, select=("compile", "lower", "predict"))
    total = job.prediction["total"]
    seconds = total / (clock * 1e6)
    return {"throughput": shape[0] / seconds, "throughput_unit": "inferences/s",
            "latency_ms": seconds * 1e3, "cycles": total, "clock_mhz": clock,
            "instructions": len(job.lowered.program), "resources": used}


def _evaluate_decoder(spec, board, params, clock) -> dict:
    from hwflow.hw.config import AccelConfig
    from hwflow.predict import predict_decoder

    shape, family, ternary = _load_decoder(spec)
    weights = params.get("weights") or ("ternary" if ternary else "int8")
    cfg = _engine(board, {**params, "weights": weights}, DECODER)
    kw = {"max_context": params["max_context"]} if "max_context" in params else {}
    # cycles do not depend on the clock: points that differ only in clock_mhz share one
    # prediction per worker (a LLaMA-2-7B prediction on a small engine takes 10-40 s)
    key = ("prediction", spec["source"], cfg.digest(), weights, json.dumps(kw))
    if key not in _CACHE:
        # the point's engine as swept: ports raised only where the image needs them
        _CACHE[key] = predict_decoder(shape, cfg, board, weights=weights, widen=False, **kw)
    p = _CACHE[key]
    hz = clock * 1e6
    d, bw = p["decode"], p.get("bandwidth", {})
    cpt = float(d["cycles_per_token"])
    # the predictor raises buffers too small for the model (its notes say which): the
    # resources are those of the engine it predicted
    used = point_resources(AccelConfig(**p["config"]), board)
    out = {"throughput": hz / cpt, "throughput_unit": "tokens/s", "latency_ms": 1e3 * cpt / hz,
           "cycles": cpt, "clock_mhz": clock, "resources": used,
           "fits": bool(p.get("fits", True)),
           "fit_reason": p.get("fit_error") or "the predictor says it does not fit"}
    for n, pf in sorted((p.get("prefill") or {}).items(), key=lambda kv: int(kv[0])):
        out[f"ttft_ms_{n}"] = None if pf.get("cycles") is None else 1e3 * pf["cycles"] / hz
    if "bytes_per_token" in bw:
        out["bandwidth_bytes_per_token"] = bw["bytes_per_token"]
        out["bandwidth_achieved_gbps"] = bw["bytes_per_token"] * hz / cpt / 1e9
    if "utilization" in bw:          # of the engine's ports: both sides scale with the clock
        out["bandwidth_utilization"] = bw["utilization"]
    out["adjusted"] = "; ".join(p.get("notes") or [])
    return out


# ------------------------------------------------------------------------- fit check

def check_space_fits(space: Space, board, kind: str) -> dict:
    """Engine resources of every grid point against the board (no compile: resources depend
    only on the configuration). Raises :class:`HwflowError` naming the resource and the
    shortfall of the smallest point when no point fits; returns ``{"fitting": n,
    "invalid": n, "points": n}``."""
    from hwflow.mapping.accel_config import choose_config

    cache, fitting, invalid, best, first_invalid = {}, 0, 0, None, None
    for _, params in space.points():
        eng = engine_overrides(board, params, kind)
        clock = float(params.get("clock_mhz", board.clock_mhz))
        key = (json.dumps(eng, sort_keys=True), clock > board.clock_mhz)
        if key not in cache:
            try:
                cfg = choose_config(board, **eng)
            except USER_ERRORS as e:
                cache[key] = ("invalid", str(e))
            else:
                used = point_resources(cfg, board)
                fr = max(used[k] / board.resources[k] if board.resources.get(k) else
                         (math.inf if used[k] else 0) for k in used)
                cache[key] = ("ok", (fr if not key[1] else math.inf, used, params, clock))
        status, info = cache[key]
        if status == "invalid":
            invalid += 1
            first_invalid = first_invalid or (params, info)
            continue
        if info[0] <= 1:
            fitting += 1
        elif best is None or info[0] < best[0]:
            best = info
    if fitting:
        return {"fitting": fitting, "invalid": invalid, "points": space.size}
    if best is None:
        params, why = first_invalid
        raise HwflowError(f"{space.source}: no valid engine configuration in the space "
                          f"({_fmt(params)}: {why})")
    fr, used, params, clock = best
    if math.isinf(fr) and clock > board.clock_mhz:
        raise HwflowError(f"{space.source}: infeasible for the board {board.name}: every clock "
                          f"is above its kernel clock {board.clock_mhz:g} MHz")
    over = [f"{k.upper()} {used[k]:,.0f} > {board.resources[k]:,} (by "
            f"{used[k] - board.resources[k]:,.0f}, {used[k] / board.resources[k] - 1:.0%} over)"
            for k in used if board.resources.get(k) and used[k] > board.resources[k]]
    raise HwflowError(f"{space.source}: infeasible for the board {board.name}: no point fits; "
                      f"the smallest ({_fmt(params)}) needs {', '.join(over)}")


def _fmt(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


# -------------------------------------------------------------------------- feasibility

def point_feasibility(result: dict, space: Space) -> tuple:
    """``(feasible, violations)`` of a result: it must be valid, fit the board and meet the
    space's constraints. ``violations`` are NSGA-II constraint values (<= 0 met)."""
    if result["status"] != "ok":
        return False, [1.0]
    viol = [0.0 if result["fits"] else 1.0]
    m = result["metrics"]
    for name, bound in space.constraints.items():
        v = m.get(name)
        if v is None:
            viol.append(1.0)
            continue
        if "max" in bound:
            viol.append(float(v) - float(bound["max"]))
        if "min" in bound:
            viol.append(float(bound["min"]) - float(v))
    return all(x <= 0 for x in viol), viol


# ----------------------------------------------------------------------------- verify

def verify_points(front: list, k: int, spec: dict, board_name: str, boards_dir,
                  out: Path) -> list:
    """Compile and simulate in RTL the ``k`` first Pareto points that are small enough;
    predicted vs simulated cycles and bit-exactness for each, a refusal line for the rest."""
    board = _load_board(board_name, boards_dir)
    report = []
    for r in front[:k]:
        p, pid = r["params"], r["point_id"]
        cfg = _engine(board, p, spec["kind"])
        why = None
        if spec["kind"] == DECODER and spec.get("source") not in VERIFY_DECODERS:
            why = (f"a {spec['name']}-sized decoder is too large to simulate in RTL (only the "
                   f"examples {', '.join(VERIFY_DECODERS)} are)")
        elif spec["kind"] == MLP and r["metrics"]["cycles"] > VERIFY_MAX_CYCLES:
            why = (f"{r['metrics']['cycles']:,} predicted cycles > {VERIFY_MAX_CYCLES:,}: too "
                   f"long to simulate")
        elif cfg.dsp_slices > VERIFY_MAX_DSP_SLICES:
            why = (f"{cfg.dsp_slices} DSP slices > {VERIFY_MAX_DSP_SLICES}: too large to "
                   f"build in Verilator here")
        if why:
            report.append({"point_id": pid, "params": p, "verified": False,
                           "summary": f"refused: {why}"})
            continue
        build = out / "verify" / f"point-{pid}"
        run = _verify_mlp if spec["kind"] == MLP else _verify_decoder
        report.append({"point_id": pid, "params": p, "verified": True, "build": str(build),
                       **run(spec, board, p, r, build, boards_dir)})
    return report


def _verify_mlp(spec, board, p, r, build, boards_dir) -> dict:
    from hwflow.flow import compile_model
    from hwflow.simulate import simulate_build

    _, comp = compile_model(model=spec.get("path"), example=spec.get("example"),
                            board=board.name, out=build, boards_dir=boards_dir,
                            trust_model=spec.get("trust_model", False),
                            sparsity=p.get("sparsity", "auto"), weights=p.get("weights", "int8"),
                            config_overrides=engine_overrides(board, p, MLP))
    sim = simulate_build(build)
    pred, got = comp["predicted_cycles"], sim["cycles"]
    if pred != r["metrics"]["cycles"]:
        raise HwflowError(f"point {r['point_id']}: the compile predicted {pred} cycles, the "
                          f"sweep {r['metrics']['cycles']} (internal inconsistency)")
    err = (pred - got) / got if got else 0.0
    return {"predicted_cycles": pred, "simulated_cycles": got, "cycle_error": err,
            "bit_exact": bool(sim["bit_exact"]),
            "summary": f"{'BIT-EXACT' if sim['bit_exact'] else 'MISMATCH'}; {got} cycles "
                       f"simulated, {pred} predicted ({err:+.1%})"}


#: A decoder point is verified at this context: an 8-token prompt (one prefill) and greedy
#: decode steps up to the last position, whose cycles the predictor gives (``cycles_last``).
VERIFY_CONTEXT, VERIFY_PROMPT = 16, 8


def _verify_decoder(spec, board, p, r, build, boards_dir) -> dict:
    from hwflow.hw.config import AccelConfig
    from hwflow.llm_flow import compile_decoder
    from hwflow.predict import predict_decoder
    from hwflow.simulate import simulate_decoder

    shape, _family, ternary = _load_decoder(spec)
    weights = p.get("weights") or ("ternary" if ternary else "int8")
    _, comp = compile_decoder(example=spec["source"], board=board.name, out=build,
                              max_context=VERIFY_CONTEXT, boards_dir=boards_dir, weights=weights,
                              config_overrides=engine_overrides(board, {**p, "weights": weights},
                                                                DECODER))
    sim = simulate_decoder(build, prompt_len=VERIFY_PROMPT,
                           new_tokens=VERIFY_CONTEXT - VERIFY_PROMPT)
    pr = predict_decoder(shape, AccelConfig(**comp["config"]), board, weights=weights,
                         max_context=VERIFY_CONTEXT, prompt_lens=(VERIFY_PROMPT,), widen=False)
    pre = [s for s in sim["steps"] if s["kind"] == "prefill"]
    dec = [s for s in sim["steps"] if s["kind"] == "decode"]
    pairs = {"prefill": (pr["prefill"][str(VERIFY_PROMPT)]["cycles"], sum(s["cycles"]
                                                                           for s in pre)),
             "decode_last": (pr["decode"]["cycles_last"], dec[-1]["cycles"])}
    errs = {k: (a - b) / b if b else 0.0 for k, (a, b) in pairs.items()}
    return {"predicted_cycles": {k: a for k, (a, _) in pairs.items()},
            "simulated_cycles": {k: b for k, (_, b) in pairs.items()},
            "cycle_error": errs, "bit_exact": bool(sim["bit_exact"]),
            "context": f"max context {VERIFY_CONTEXT}, {VERIFY_PROMPT}-token prompt, decode to "
                       f"position {dec[-1]['pos']}",
            "summary": f"{'BIT-EXACT' if sim['bit_exact'] else 'MISMATCH'} at max context "
                       f"{VERIFY_CONTEXT}; prefill of {VERIFY_PROMPT} tokens "
                       f"{pairs['prefill'][1]} cycles simulated, {pairs['prefill'][0]:.0f} "
                       f"predicted ({errs['prefill']:+.1%}); decode at position "
                       f"{dec[-1]['pos']} {pairs['decode_last'][1]} simulated, "
                       f"{pairs['decode_last'][0]:.0f} predicted ({errs['decode_last']:+.1%})"}
