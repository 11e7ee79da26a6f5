"""``hwflow dse``: design-space sweeps of a model on a board, resumable, local or on Dask.

The flow of one sweep (:func:`run_dse`):

1. ``resolve``   the model (an MLP file / example, or a decoder config / folder / example),
                 the board and the space file (:mod:`hwflow.dse_space`), checked up front;
2. ``fit check`` every grid point's engine resources against the board, cheaply, so that a
                 space with no point that fits is one error line naming the shortfall;
3. ``search``    plain grid (every point, in the space's order) or Optuna NSGA-II (seeded),
                 through Optuna's ask-and-tell interface: the driver asks trials, hands the
                 evaluations (:func:`evaluate_point`) to local worker processes or a Dask
                 ``Client``, and tells each result the moment it finishes, so every evaluated
                 point is in the SQLite study at once;
4. ``outputs``   points.csv / points.json (all points), pareto.json (the feasible Pareto set),
                 PNG plots and summary.html, each written atomically, rebuilt from the study;
5. ``verify``    (``--verify K``) compile + RTL simulation of the best Pareto points that are
                 small enough, predicted vs simulated cycles.

Resume: re-running the same command on the same study continues it. A trial a killed driver
left RUNNING is told FAIL and its point evaluated again; a point with a stored result is
never evaluated again (NSGA-II proposing it a second time gets the stored result).

Nothing of the user's is written over: the output folder must be new, empty or marked as a
dse folder (:data:`DSE_MARKER`), and the study a new file or an Optuna database that hwflow
created (its only study is :data:`STUDY_NAME`, with the sweep stored on it); both are checked
before the first write. Local workers die with the driver, even when it is killed.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import functools
import html
import io
import json
import math
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

from hwflow.boards import load_board
from hwflow.dse_space import (
    DECODER,
    ENGINE_PARAMETERS,
    MLP,
    RESOURCE_KINDS,
    Space,
    load_space,
)
from hwflow.errors import USER_ERRORS, HwflowError

STUDY_NAME = "hwflow-dse"
#: The file that marks an output folder as hwflow dse's own: only such a folder (or a new or
#: empty one) is written into.
DSE_MARKER = "hwflow-dse.json"
#: What a dse folder holds (beside the plots, ``throughput_vs_*.png``): a folder of only these
#: and an hwflow study, from before the marker existed, is taken as a dse folder too.
DSE_OUTPUTS = ("points.csv", "points.json", "pareto.json", "summary.html", "verify.json",
               "verify", "study.db", "study.db-wal", "study.db-shm", "study.db-journal")
#: The tables (and schema version table) of an Optuna RDB storage.
OPTUNA_TABLES = frozenset({
    "studies", "study_directions", "study_user_attributes", "study_system_attributes",
    "trials", "trial_params", "trial_values", "trial_intermediate_values",
    "trial_user_attributes", "trial_system_attributes", "trial_heartbeats", "version_info",
    "alembic_version"})
SQLITE_MAGIC = b"SQLite format 3\x00"
#: The longest database path SQLite opens, in bytes once made absolute (its 512-byte path
#: limit, less the room it keeps for a "-journal" suffix).
SQLITE_MAX_PATH = 504
#: Result of a point, stored as this trial user attribute (a JSON-able dict).
RESULT_ATTR = "dse_result"
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
    from hwflow.examples import EXAMPLES

    if example is not None:
        if example in EXAMPLES:
            return {"kind": MLP, "name": example, "example": example}
        from hwflow.llm_examples import LLM_EXAMPLES

        if example in LLM_EXAMPLES:
            return {"kind": DECODER, "name": example, "source": example}
        raise HwflowError(f"unknown example '{example}' (known: "
                          f"{', '.join([*EXAMPLES, *LLM_EXAMPLES])})")
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
        from hwflow.flow import MLP_STEPS, MlpJob, run_steps

        job = MlpJob(model=spec.get("path"), example=None if spec.get("path") else
                     spec["example"], trust_model=spec.get("trust_model", False))
        run_steps(job, MLP_STEPS, select=("load", "calibrate"))
        _CACHE[key] = (job.graph, job.in_name, job.in_shape, job.calib)
    return _CACHE[key]


# ---------------------------------------------------------------------------- one point

def engine_overrides(board, params: dict, kind: str) -> dict:
    """The :func:`~hwflow.mapping.engine.choose_config` overrides of a point.

    Engine sizes come from the point; ``mem_ports``, if the point does not set it, follows
    the engine's width (one weight row per cycle, capped by the board's ports: the
    board's own ``mem_ports`` is sized for its default engine). The optional units follow
    the precision: MLPs build the sparse selectors unless ``sparsity`` is dense, the int4
    dequantizer for int4/mixed weights, the TLMM for ternary weights, and no transformer
    units (MLPs never use them: their DSPs and LUTs saved); decoders build the transformer units,
    the TLMM for ternary weights, the int4 path for int4/mixed weights, and no sparse
    selectors (the decoder flow runs dense weights).
    """
    from hwflow.mapping.engine import default_mem_ports

    eng = {k: params[k] for k in ENGINE_PARAMETERS if k in params}
    if "mem_ports" not in eng and ({"chains", "chain_len"} & set(eng)):
        eng["mem_ports"] = default_mem_ports(
            board, eng.get("chains", board.engine.get("chains", 8)),
            eng.get("chain_len", board.engine.get("chain_len", 16)))
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
    (:func:`~hwflow.mapping.engine.estimate_resources`, every kind it returns for the board's
    family, the TLMM engine included when ``cfg.tlmm``)."""
    from hwflow.mapping.engine import estimate_resources

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
    from hwflow.mapping.engine import choose_config

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


def _evaluate_mlp(spec, board, params, clock) -> dict:
    from hwflow.flow import MLP_STEPS, MlpJob, run_steps

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
    from hwflow.mapping.engine import choose_config

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


# ---------------------------------------------------------------------------- executors

def _warm(spec):
    """Load the model once, before the first point."""
    try:
        (_load_mlp if spec["kind"] == MLP else _load_decoder)(spec)
    except Exception:  # noqa: BLE001 - the points report the failure themselves
        pass


#: ``prctl`` option: the signal a process gets when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
#: How often a worker's watchdog checks that its driver is alive (seconds).
_WATCHDOG_S = 1.0


def _die_with_parent(parent: int) -> None:
    """Make this worker exit when the driver ``parent`` dies, however it dies.

    A worker blocks on its task queue, whose pipe it holds both ends of, so a driver killed
    by ``kill -9`` never wakes it: it would stay, holding its model (hundreds of MB), for
    good. On Linux the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``); a
    watchdog thread polling the parent's pid covers the other systems. The driver may
    already be gone before either is set up: then the parent is no longer ``parent``.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="hwflow-dse-watchdog",
                     daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_WATCHDOG_S)
    os._exit(1)


def _worker_init(spec, parent: int) -> None:
    """Local worker initializer: die with the driver, leave Ctrl-C to the driver (which
    stops the workers; a KeyboardInterrupt here would print a traceback per worker), and
    load the model once."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _warm(spec)


class _InlineExecutor:
    """``--jobs 1``: evaluate in the driver process (no worker start-up)."""

    def submit(self, fn, arg):
        f = cf.Future()
        f.set_result(fn(arg))
        return f

    def wait_any(self, futures):
        return [next(iter(futures))]

    @property
    def slots(self):
        return 1

    def close(self, abort=False):
        pass


class _LocalExecutor:
    """Local worker processes (spawned: the driver holds an SQLite connection and maybe
    torch's threads, neither of which survives a fork well)."""

    def __init__(self, jobs: int, spec: dict):
        import multiprocessing as mp

        self._pool = cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"),
                                            initializer=_worker_init,
                                            initargs=(spec, os.getpid()))
        self.slots = jobs

    def submit(self, fn, arg):
        return self._pool.submit(fn, arg)

    def wait_any(self, futures):
        return list(cf.wait(list(futures), return_when=cf.FIRST_COMPLETED).done)

    def close(self, abort=False):
        """Stop the workers; ``abort`` (an error or Ctrl-C) kills them at once rather than
        letting them finish points nobody will tell (a decoder point may take a minute)."""
        procs = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        if abort:
            for proc in procs:
                with contextlib.suppress(OSError):
                    proc.kill()


class _DaskExecutor:
    """A Dask distributed ``Client`` at ``address`` (its workers need the model's path)."""

    def __init__(self, address, jobs: int, spec: dict):
        from distributed import Client

        try:
            self._client = address if hasattr(address, "submit") else Client(address,
                                                                             timeout="20s")
        except (OSError, ValueError, TypeError) as e:   # unreachable, or no address at all
            raise HwflowError(f"--scheduler {address}: cannot connect ({e})") from None
        self._own = not hasattr(address, "submit")
        threads = sum(self._client.nthreads().values()) or 1
        self.slots = max(jobs, threads)

    def submit(self, fn, arg):
        return self._client.submit(fn, arg, pure=False)

    def wait_any(self, futures):
        from distributed import wait

        return list(wait(list(futures), return_when="FIRST_COMPLETED").done)

    def close(self, abort=False):
        if self._own:
            self._client.close()


# ------------------------------------------------------------------------------ search

def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


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


def _objective_values(result: dict, space: Space) -> list:
    vals = []
    for name in space.objectives:
        v = float(result["metrics"].get(name, math.nan))
        vals.append(v if math.isfinite(v) else 1e300)
    return vals


def _sqlite_connect(path: str):
    """The study's SQLite connection: write-ahead log, and ``synchronous=NORMAL`` so that a
    commit is not an fsync. Optuna commits about 15 times per point (ask, each parameter,
    constraints, result, tell); at ~10 ms per fsync that was 0.15 s per point, several times
    an MLP point's evaluation. A committed point still survives the driver being killed
    (``kill -9``: the log is in the OS's cache and is replayed on the next open); only a
    power loss may drop the last few points, which the resume then evaluates again."""
    import sqlite3

    con = sqlite3.connect(path, timeout=60, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    return con


def _open_study(path: Path, sampler, sweep: dict):
    """Open the study at ``path`` (an hwflow study: :func:`_prepare_outputs` created or
    checked it) for the sweep ``sweep``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={
        "creator": functools.partial(_sqlite_connect, str(path))})
    study = optuna.load_study(storage=storage, study_name=STUDY_NAME, sampler=sampler)
    check_same_sweep(path, study.user_attrs.get("sweep"), sweep)
    return study


# ------------------------------------------------------- output folder and study: ours only

def check_out_folder(out: Path) -> None:
    """Refuse an output folder that hwflow dse did not create (nothing is written yet).

    ``out`` may be absent, an empty folder, or a dse folder: one holding :data:`DSE_MARKER`,
    or, from before the marker, only dse outputs (:data:`DSE_OUTPUTS`) beside an hwflow
    study. Anything else (a user's folder, a compile build, a file) is refused, so that no
    file of the user's is written over.
    """
    if out.is_symlink() and not out.exists():
        raise HwflowError(f"-o '{out}' is a dangling symbolic link; choose another output "
                          f"folder with -o")
    if not out.exists():
        return
    if not out.is_dir():
        raise HwflowError(f"-o '{out}' is a file, not a folder; choose another output folder "
                          f"with -o")
    if (out / DSE_MARKER).is_file() or not any(out.iterdir()) or _is_unmarked_dse_folder(out):
        return
    raise HwflowError(f"'{out}' exists and is not an hwflow dse folder (no {DSE_MARKER}); "
                      f"choose another output folder with -o")


def _is_unmarked_dse_folder(out: Path) -> bool:
    """A folder an earlier hwflow (without the marker) wrote: only dse outputs and hidden
    temporaries, and an hwflow study as ``study.db``."""
    for p in out.iterdir():
        n = p.name
        if not (n in DSE_OUTPUTS or (n.startswith("throughput_vs_") and n.endswith(".png"))
                or (n.startswith(".") and ".tmp-" in n)):
            return False
    try:
        return read_study_sweep(out / "study.db") is not None
    except HwflowError:
        return False


def read_study_sweep(path: Path) -> dict | None:
    """The sweep stored in the study file ``path``; None when there is no file yet (a new
    study is created there). Reads without writing anything (SQLite's ``immutable`` mode).

    Raises
    ------
    HwflowError
        ``path`` is not a file hwflow created: not an SQLite database, a database holding
        tables other than Optuna's, or an Optuna storage without hwflow's study (exactly one
        study, :data:`STUDY_NAME`, carrying its ``sweep``).
    """
    n = len(os.fsencode(os.path.abspath(path)))
    if n > SQLITE_MAX_PATH:
        raise HwflowError(f"study '{path}': its full path is {n} bytes, longer than SQLite "
                          f"opens ({SQLITE_MAX_PATH}); choose a shorter --study or -o")
    if path.is_symlink() and not path.exists():
        raise HwflowError(f"study '{path}' is a dangling symbolic link; choose another study "
                          f"file with --study")
    if not path.exists():
        return None
    if not path.is_file():
        raise HwflowError(f"study '{path}' is not a file; choose another study file with "
                          f"--study")
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        raise HwflowError(f"study '{path}' is not an SQLite database (hwflow leaves it "
                          f"unchanged); choose a new study file with --study")
    try:
        con = sqlite3.connect(path.resolve().as_uri() + "?immutable=1", uri=True)
        try:
            return _hwflow_sweep(con, path)
        finally:
            con.close()
    except sqlite3.Error as e:
        raise HwflowError(f"study '{path}' cannot be read as an SQLite database ({e}); choose "
                          f"a new study file with --study") from None


def _hwflow_sweep(con, path: Path) -> dict:
    """The sweep of an open study database; raises :class:`HwflowError` if it is not
    hwflow's."""
    names = {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type IN "
                                       "('table', 'view', 'trigger')")}
    foreign = sorted(n for n in names - OPTUNA_TABLES if not n.startswith("sqlite_"))
    if foreign:
        raise HwflowError(f"study '{path}' is an SQLite database that hwflow did not create "
                          f"(it holds '{foreign[0]}'), and hwflow adds no tables to it; "
                          f"choose a new study file with --study")
    studies, sweep = [], []
    if {"studies", "study_user_attributes"} <= names:
        studies = con.execute("SELECT study_id, study_name FROM studies").fetchall()
        if len(studies) == 1:
            sweep = con.execute("SELECT value_json FROM study_user_attributes WHERE study_id = "
                                "? AND key = 'sweep'", (studies[0][0],)).fetchall()
    if [n for _, n in studies] != [STUDY_NAME] or len(sweep) != 1:
        raise HwflowError(f"study '{path}' is a database that hwflow dse did not create (no "
                          f"'{STUDY_NAME}' study of its own); choose a new study file with "
                          f"--study")
    try:
        return json.loads(sweep[0][0])
    except ValueError:
        raise HwflowError(f"study '{path}': its stored sweep is damaged; choose a new study "
                          f"file with --study") from None


def check_same_sweep(path: Path, stored, sweep: dict) -> None:
    """Refuse to resume a study of another sweep (model, board, space, sampler or seed)."""
    want = json.loads(json.dumps(sweep))
    if stored == want:
        return
    stored = stored if isinstance(stored, dict) else {}
    diff = [k for k in want if stored.get(k) != want[k]] or ["settings"]
    raise HwflowError(f"study '{path}' holds another sweep (its {', '.join(diff)} differ); "
                      f"use another --study or -o")


def _prepare_outputs(out: Path, study_path: Path, directions: list, sweep: dict,
                     marker: dict) -> None:
    """The sweep's first writes, after every check: the output folder and its marker, and
    the study if it is new. Fails early, as one line, where a folder cannot be written."""
    with _write_faults("choose another output folder with -o (or study file with --study)"):
        out.mkdir(parents=True, exist_ok=True)
        if not (out / DSE_MARKER).is_file():
            _atomic_write(out / DSE_MARKER, json.dumps(marker, indent=1, sort_keys=True) + "\n")
        _remove_stale_temporaries(out)
        if not study_path.exists():
            _create_study_file(study_path, directions, sweep)
    # a file another process put there first is held to the same rule
    check_same_sweep(study_path, read_study_sweep(study_path), sweep)


def _create_study_file(path: Path, directions: list, sweep: dict) -> None:
    """A new study at ``path``, complete with hwflow's mark (the study and its sweep) before
    it appears there: built in a hidden sibling file and linked into place. So a file at
    ``path`` is a whole hwflow study or not hwflow's, never a half-made one that a resume
    could not tell from a user's database; and a file that appeared meanwhile is kept."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name[:100]}.tmp-{os.getpid()}"   # a long name stays legal
    tmp.unlink(missing_ok=True)
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}")
        try:
            study = optuna.create_study(storage=storage, study_name=STUDY_NAME,
                                        directions=directions)
            study.set_user_attr("sweep", sweep)
        finally:
            storage.engine.dispose()
        try:
            os.link(tmp, path)         # unlike a rename, never replaces an existing file
        except FileExistsError:
            pass
        except OSError:                # a file system without hard links
            if not path.exists():
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale_temporaries(folder: Path) -> None:
    """Remove the hidden ``.NAME.tmp-PID`` files that killed runs left in the dse folder
    ``folder`` (their PID is gone)."""
    for p in folder.glob(".*.tmp-*"):
        pid = p.name.rpartition(".tmp-")[2]
        if pid.isdigit() and not _pid_alive(int(pid)) and p.is_file():
            p.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                    # someone else's process: alive
        return True
    return True


@contextlib.contextmanager
def _write_faults(hint: str):
    """Turn a failed write (an unwritable folder, a full disk, a database error) into one
    error line ending with ``hint``."""
    import sqlalchemy.exc
    from optuna.exceptions import StorageInternalError

    try:
        yield
    except OSError as e:
        where = f" '{e.filename}'" if e.filename else ""
        raise HwflowError(f"cannot write{where}: {e.strerror or e}; {hint}") from None
    except (sqlite3.Error, sqlalchemy.exc.SQLAlchemyError, StorageInternalError) as e:
        why = (str(e.__cause__ or e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise HwflowError(f"the study cannot be written ({why}); {hint}") from None


def _recover(study, space: Space) -> tuple:
    """Resume: results stored so far by point key, and the points of trials a killed driver
    left RUNNING or WAITING (told FAIL, to be evaluated again unless a result is stored)."""
    from optuna.trial import TrialState

    done, redo = {}, []
    for t in study.get_trials(deepcopy=False):
        r = t.user_attrs.get(RESULT_ATTR)
        if t.state == TrialState.RUNNING:
            if r is not None:          # killed between storing the result and telling it
                _tell(study, t.number, r, space)
            else:
                study.tell(t.number, state=TrialState.FAIL)
                redo.append(dict(t.params))
        elif t.state == TrialState.WAITING:
            redo.append(dict(t.system_attrs.get("fixed_params", {})))
        if r is not None:
            done.setdefault(_key(r["params"]), r)
    while any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False)):
        t = study.ask()                # pop enqueued-never-asked trials; redone below
        study.tell(t, state=TrialState.FAIL)
    redo = [p for p in redo if p and _key(p) not in done]
    return done, list({_key(p): p for p in redo}.values())


def _tell(study, trial, result: dict, space: Space, store: bool = True):
    """Record ``result`` on ``trial`` (a Trial, or a trial number when resuming) and tell
    it: NSGA-II's constraint values (``<= 0`` met: the board fit, then the space's
    constraints), the result itself (unless ``store`` is off: a duplicate proposal), then
    the objective values (FAIL for a point with no metrics)."""
    import optuna
    from optuna.trial import TrialState

    if isinstance(trial, int):
        trial = optuna.trial.Trial(study, study._storage.get_trial_id_from_study_id_trial_number(
            study._study_id, trial))
    have = study._storage.get_trial_system_attrs(trial._trial_id)
    for i, v in enumerate(point_feasibility(result, space)[1]):
        if not any(k.endswith(f":c{i}") for k in have):
            trial.set_constraint(f"c{i}", v)
    if store:
        trial.set_user_attr(RESULT_ATTR, result)
    if result["status"] != "ok":
        return study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    return study.tell(trial, _objective_values(result, space), skip_if_finished=True)


def _ask(study, space: Space, params: dict | None):
    """Ask a trial; with ``params``, that exact point (enqueued first)."""
    if params is not None:
        study.enqueue_trial(params, skip_if_exists=False)
    trial = study.ask()
    return trial, {n: trial.suggest_categorical(n, v) for n, v in space.parameters.items()}


def evaluate_points(tasks: list) -> list:
    """:func:`evaluate_point` of several points in one worker call: points that differ only
    in ``clock_mhz`` share one prediction (the cycles do not depend on the clock)."""
    return [evaluate_point(t) for t in tasks]


def _clock_groups(points: list) -> list:
    """Consecutive points that differ only in ``clock_mhz``, as lists (the grid varies its
    last parameter fastest, so a space that lists clock_mhz last groups them all)."""
    groups: list = []
    for p in points:
        base = _key({k: v for k, v in p.items() if k != "clock_mhz"})
        if groups and groups[-1][0] == base:
            groups[-1][1].append(p)
        else:
            groups.append((base, [p]))
    return [g for _, g in groups]


def run_search(study, space: Space, task_base: dict, executor, *, sampler_name: str,
               trials: int | None, progress: bool = True) -> dict:
    """Ask, evaluate and tell until the sweep is complete; returns the counts.

    Grid: the points not in the study, in order, a group of clock variants per worker call;
    NSGA-II: the points a killed run left, then one asked point per worker call until
    ``trials`` distinct points are stored. Each result is told as its call finishes."""
    from optuna.trial import TrialState
    from tqdm import tqdm

    done, redo = _recover(study, space)
    counts = {"resumed": len(done), "evaluated": 0, "duplicates": 0, "retried": len(redo)}
    if sampler_name == "grid":
        limit = space.size if trials is None else min(trials, space.size)
        source = iter(_clock_groups([p for i, p in space.points()
                                     if i < limit and _key(p) not in done]))
    else:
        limit = min(trials or 100, space.size)
        source = iter([[p] for p in redo])

    inflight: dict = {}          # future -> [(trial, key)]
    bar = tqdm(total=limit, initial=min(len(done), limit), unit="pt", desc="dse",
               disable=None if progress else True, dynamic_ncols=True)
    asks_without_new = 0
    try:
        while True:
            while len(inflight) < executor.slots:
                group = next(source, None)
                if group is None and sampler_name == "grid":
                    break
                if group is None:
                    running = sum(len(v) for v in inflight.values())
                    if len(done) + running >= limit or asks_without_new > 50 * limit:
                        break
                    trial, params = _ask(study, space, None)
                    key = _key(params)
                    if key in done:         # proposed again: the stored result, no evaluation
                        trial.set_user_attr("dse_duplicate_of", done[key]["point_id"])
                        _tell(study, trial, done[key], space, store=False)
                        counts["duplicates"] += 1
                        asks_without_new += 1
                        continue
                    if any(k == key for v in inflight.values() for _, k in v):
                        study.tell(trial, state=TrialState.FAIL)
                        asks_without_new += 1
                        continue
                    asks_without_new = 0
                    asked = [(trial, params)]
                else:
                    asked = [_ask(study, space, params) for params in group]
                tasks = [{**task_base, "params": params, "point_id": space.point_id(params)}
                         for _, params in asked]
                fut = executor.submit(evaluate_points, tasks)
                inflight[fut] = [(trial, _key(params)) for trial, params in asked]
            if not inflight:
                break
            for fut in executor.wait_any(inflight):
                asked = inflight.pop(fut)
                try:
                    results = fut.result()
                except Exception as e:  # noqa: BLE001 - a worker died (OOM, cluster loss)
                    raise HwflowError(f"a worker failed ({type(e).__name__}: "
                                      f"{str(e).splitlines()[0][:120] if str(e) else ''}); "
                                      f"the points finished so far are in the study: run "
                                      f"the same command again to resume") from None
                for (trial, key), result in zip(asked, results, strict=True):
                    _tell(study, trial, result, space)
                    done[key] = result
                    counts["evaluated"] += 1
                    bar.update(1)
    finally:
        bar.close()
    counts["points"] = len(done)
    return counts


def study_results(study) -> list:
    """Every stored point result, one per point, in point order."""
    by_id = {}
    for t in study.get_trials(deepcopy=False):
        r = t.user_attrs.get(RESULT_ATTR)
        if r is not None:
            by_id.setdefault(r["point_id"], r)
    return [by_id[k] for k in sorted(by_id)]


# ------------------------------------------------------------------------------ outputs

def pareto_front(rows: list, objectives: dict) -> list:
    """The non-dominated rows (feasible only) over ``objectives`` (metric -> max/min)."""
    cand = [r for r in rows if r["feasible"]]
    sign = {m: (-1 if d == "max" else 1) for m, d in objectives.items()}

    def vec(r):
        return [sign[m] * float(r["metrics"].get(m, math.inf)) for m in objectives]

    vs = [vec(r) for r in cand]
    front = []
    for i, a in enumerate(vs):
        dominated = any(all(b[j] <= a[j] for j in range(len(a))) and b != a
                        for k, b in enumerate(vs) if k != i)
        if not dominated:
            front.append(cand[i])
    first = next(iter(objectives))
    front.sort(key=lambda r: (sign[first] * r["metrics"][first], r["point_id"]))
    return front


def _atomic_write(path: Path, data: bytes | str) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def table_rows(results: list, space: Space) -> list:
    """Results with their feasibility under the space's constraints."""
    rows = []
    for r in results:
        feasible, _ = point_feasibility(r, space)
        rows.append({**r, "feasible": feasible})
    return rows


def points_csv(rows: list, space: Space) -> str:
    metric_cols = []
    for r in rows:
        for k in r["metrics"]:
            if k not in metric_cols and k not in space.parameters:   # clock_mhz: one column
                metric_cols.append(k)
    cols = ["point_id", *space.names, "status", "fits", "feasible", "reason", *metric_cols,
            "eval_s"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        vals = {"point_id": r["point_id"], **r["params"], "status": r["status"],
                "fits": r["fits"], "feasible": r["feasible"], "reason": r["reason"],
                **r["metrics"], "eval_s": f"{r['eval_s']:.4f}"}
        w.writerow(["" if vals.get(c) is None else (f"{vals[c]:.6g}" if isinstance(vals[c],
                    float) and c != "eval_s" else vals[c]) for c in cols])
    return buf.getvalue()


def _plots(out: Path, rows: list, front: list, space: Space, title: str) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one plot per resource some point uses (URAM stays 0 in every design today)
    kinds = ["resource_fraction"] + [k for k in RESOURCE_KINDS
                                     if any(r["metrics"].get(k) for r in rows)]
    ok = [r for r in rows if r["status"] == "ok"]
    front_ids = {r["point_id"] for r in front}
    files = []
    for kind in kinds:
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
        for sel, style in (([r for r in ok if not r["feasible"]],
                            dict(c="0.7", marker="x", s=14, label="infeasible")),
                           ([r for r in ok if r["feasible"] and r["point_id"] not in front_ids],
                            dict(c="tab:blue", marker="o", s=14, alpha=.6, label="feasible"))):
            if sel:
                ax.scatter([r["metrics"].get(kind, 0) for r in sel],
                           [r["metrics"]["throughput"] for r in sel], **style)
        if front:
            pts = sorted((r["metrics"].get(kind, 0), r["metrics"]["throughput"]) for r in front)
            ax.scatter(*zip(*pts, strict=True), c="tab:red", marker="*", s=60, zorder=3,
                       label=f"Pareto ({len(front)})")
            if kind == "resource_fraction" and list(space.objectives) == ["throughput",
                                                                          "resource_fraction"]:
                ax.plot(*zip(*pts, strict=True), c="tab:red", lw=1, drawstyle="steps-post")
        unit = ok[0]["metrics"].get("throughput_unit", "") if ok else ""
        ax.set_xlabel(kind.replace("_", " ") + ("" if "fraction" in kind else " (used)"))
        ax.set_ylabel(f"throughput ({unit})")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        plt.close(fig)
        name = f"throughput_vs_{kind}.png"
        _atomic_write(out / name, buf.getvalue())
        files.append(name)
    return files


def _summary_html(rows, front, space, info: dict, plots: list, verify: list) -> str:
    e = html.escape
    objs = ", ".join(f"{d}imize {m}" for m, d in space.objectives.items())
    cons = ", ".join(f"{m} {' '.join(f'{k} {v}' for k, v in b.items())}"
                     for m, b in space.constraints.items()) or "the board's resources"
    head = ["point", *space.names, "throughput", "latency_ms", "resource_fraction",
            "dominant_resource"]
    tr = "".join("<tr>" + "".join(
        f"<td>{e(str(v))}</td>" for v in
        [r["point_id"], *r["params"].values(),
         *(f"{r['metrics'].get(k):.4g}" if isinstance(r["metrics"].get(k), float)
           else r["metrics"].get(k) for k in head[len(space.names) + 1:])]) + "</tr>"
        for r in front)
    params = "".join(f"<li><b>{e(k)}</b>: {e(', '.join(map(str, v)))}</li>"
                     for k, v in space.parameters.items())
    imgs = "".join(f'<p><img src="{e(p)}" alt="{e(p)}"></p>' for p in plots)
    ver = ""
    if verify:
        ver = "<h2>Verified in RTL</h2><table><tr><th>point</th><th>result</th></tr>" + "".join(
            f"<tr><td>{v['point_id']}</td><td>{e(v['summary'])}</td></tr>" for v in verify
        ) + "</table>"
    c = info["counts"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8">
<title>hwflow dse: {e(info['model'])} on {e(info['board'])}</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}
table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}</style></head><body>
<h1>hwflow dse: {e(info['model'])} ({e(info['kind'])}) on {e(info['board'])}</h1>
<p>Sampler {e(info['sampler'])}; objectives: {e(objs)}; constraints: {e(cons)}.</p>
<p>{c['points']} points evaluated of a space of {space.size}: {c['feasible']} feasible,
{c['infeasible']} infeasible (do not fit or break a constraint), {c['invalid']} invalid
configurations, {c['error']} errors; {len(front)} on the Pareto front.</p>
<h2>Space</h2><ul>{params}</ul>
<h2>Pareto set</h2><table><tr>{''.join(f'<th>{e(h)}</th>' for h in head)}</tr>{tr}</table>
{ver}<h2>Plots</h2>{imgs}
</body></html>
"""


def write_outputs(out: Path, results: list, space: Space, info: dict,
                  verify: list | None = None) -> dict:
    """points.csv, points.json, pareto.json, the plots and summary.html, each atomically."""
    rows = table_rows(results, space)
    front = pareto_front(rows, space.objectives)
    counts = {"points": len(rows), "feasible": sum(r["feasible"] for r in rows),
              "infeasible": sum(r["status"] == "ok" and not r["feasible"] for r in rows),
              "invalid": sum(r["status"] == "invalid" for r in rows),
              "error": sum(r["status"] == "error" for r in rows), "pareto": len(front)}
    info = {**info, "counts": counts}
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "points.csv", points_csv(rows, space))
    meta = {k: v for k, v in info.items() if k != "counts"}
    _atomic_write(out / "points.json", json.dumps(
        {**meta, "space": space.to_dict(), "counts": counts, "points": rows}, indent=1) + "\n")
    _atomic_write(out / "pareto.json", json.dumps(
        {**meta, "objectives": space.objectives, "points": front}, indent=1) + "\n")
    title = f"{info['model']} on {info['board']}: {counts['points']} points"
    plots = _plots(out, rows, front, space, title)
    if verify is not None:
        _atomic_write(out / "verify.json", json.dumps(verify, indent=1) + "\n")
    _atomic_write(out / "summary.html", _summary_html(rows, front, space, info, plots,
                                                      verify or []))
    return {"counts": counts, "pareto": front, "plots": plots}


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
    from hwflow.llm_flow import compile_decoder, simulate_decoder
    from hwflow.predict import predict_decoder

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


# ------------------------------------------------------------------------------- driver

SAMPLERS = ("grid", "nsga2")
#: NSGA-II seeds numpy's legacy generator, which takes 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


def _check_options(sampler, jobs, trials, verify, seed) -> None:
    """One error line for an option out of range, before anything is loaded."""
    if sampler not in SAMPLERS:
        raise HwflowError(f"--sampler {sampler}: use {' or '.join(SAMPLERS)}")
    for flag, v, least in (("--jobs", jobs, 1), ("--trials", trials, 1),
                           ("--verify", verify, 0)):
        if v is not None and v < least:
            raise HwflowError(f"{flag} {v}: must be >= {least}")
    if sampler == "nsga2" and not 0 <= seed <= MAX_SEED:
        raise HwflowError(f"--seed {seed}: must be between 0 and {MAX_SEED}")


def run_dse(model=None, example=None, board="u280", space=None, *, trials=None, jobs=2,
            study=None, scheduler=None, out=None, sampler="grid", seed=0, verify=0,
            trust_model=False, boards_dir=None, progress=True) -> dict:
    """Run (or resume) a sweep and write its outputs; returns a summary dict.

    Parameters
    ----------
    model, example : str
        The model (see :func:`resolve_model`).
    board : str
    space : path
        The space file (:mod:`hwflow.dse_space`).
    trials : int, optional
        Grid: evaluate only the first ``trials`` points; NSGA-II: distinct points to evaluate
        (default 100, at most the space's size).
    jobs : int
        Local worker processes (1: in the driver), or the least number of points in flight
        on a Dask cluster.
    study : path, optional
        SQLite study (default ``OUT/study.db``); the same study resumes the sweep. A new file,
        or a study hwflow created: any other file is refused and left unchanged.
    scheduler : str or distributed.Client, optional
        Dask scheduler address (or a Client) instead of local workers.
    out : path, optional
        Output folder (default ``build/dse-<model>-<board>``): new, empty or a dse folder
        (marked by :data:`DSE_MARKER`); any other is refused.
    sampler : str
        ``grid`` or ``nsga2``.
    seed : int
        NSGA-II seed.
    verify : int
        Compile + simulate in RTL this many Pareto points (the small enough ones).
    """
    _check_options(sampler, jobs, trials, verify, seed)
    if space is None:
        raise HwflowError("--space FILE is required (see README, 'Design-space sweeps')")
    spec = resolve_model(model, example, trust_model)
    brd = load_board(board, boards_dir)
    sp = load_space(space, spec["kind"])
    fit = check_space_fits(sp, brd, spec["kind"])
    out = Path(out) if out else Path("build") / f"dse-{spec['name']}-{brd.name}"
    study_path = Path(study) if study else out / "study.db"
    sweep = {"model": spec["name"], "kind": spec["kind"], "board": brd.name,
             "space": sp.to_dict(), "sampler": sampler,
             **({"seed": seed} if sampler == "nsga2" else {})}
    # refusals before any write or long work: someone else's folder or database, a study of
    # another sweep, then a model that does not load (one error line, not N failed points)
    with _write_faults("choose another output folder with -o (or study file with --study)"):
        check_out_folder(out)
        stored = read_study_sweep(study_path)
        if stored is not None:
            check_same_sweep(study_path, stored, sweep)
    if spec["kind"] == MLP:
        _load_mlp(spec)
    else:
        _load_decoder(spec)

    import optuna

    if sampler == "nsga2":
        pop = max(4, min(50, (trials or 100) // 4))
        smp = optuna.samplers.NSGAIISampler(population_size=pop, seed=seed)
    else:
        smp = optuna.samplers.RandomSampler(seed=seed)   # never used: every grid point is enqueued
    task_base = {"model": spec, "board": brd.name,
                 "boards_dir": str(boards_dir) if boards_dir else None}
    # a cluster is connected to before the first write: an unreachable one leaves nothing
    if scheduler is not None:
        ex = _DaskExecutor(scheduler, jobs, spec)
    elif jobs == 1:
        ex = _InlineExecutor()
    else:
        ex = _LocalExecutor(jobs, spec)
    directions = ["maximize" if d == "max" else "minimize" for d in sp.objectives.values()]
    resume = "the points finished so far are in the study: run the same command again to resume"
    t0 = time.perf_counter()
    aborted = True
    try:
        _prepare_outputs(out, study_path, directions, sweep,
                         {"hwflow": "dse", "model": spec["name"], "board": brd.name,
                          "study": str(study_path)})
        with _write_faults(resume):
            st = _open_study(study_path, smp, sweep)
            counts = run_search(st, sp, task_base, ex, sampler_name=sampler, trials=trials,
                                progress=progress)
        aborted = False
    finally:
        ex.close(abort=aborted)
    wall = time.perf_counter() - t0
    info = {"model": spec["name"], "kind": spec["kind"], "board": brd.name, "sampler": sampler,
            "study": str(study_path), "space_file": str(space)}
    with _write_faults(resume):
        results = study_results(st)
        w = write_outputs(out, results, sp, info)
        ver = None
        if verify:
            ver = verify_points(w["pareto"], verify, spec, brd.name, boards_dir, out)
            w = write_outputs(out, results, sp, info, ver)
    return {"out": out, "wall_s": wall, "search": counts, "fit_check": fit, **w,
            "verify": ver, "info": info, "space_size": sp.size}
