"""``hwflow compile`` of an MLP: the ordered step list from a model file to a build folder.

:data:`MLP_STEPS`, each a small function of an :class:`MlpJob` (the compiler's own passes are
listed in hwflow.compiler.flow):

1. ``load``       model file -> float IR (frontend, by content, never unpickling untrusted code);
                 or an intermediate ``--save-ir`` kept, which ``compile`` resumes from
2. ``calibrate``  calibration sample (``--calib`` or a seeded normal sample)
3. ``configure``  board -> accelerator configuration, resource fit check
4. ``compile``    sparsify (``--sparsity``), precision (``--weights``), quantize, fuse, tile,
                 schedule, memory plan (spec check after each; ``--save-ir`` keeps each graph)
5. ``lower``      IR -> instruction program + memory image
6. ``predict``    cycles of the program (the calibrated cycle model)
7. ``check``      golden model against the float model
8. ``rtl``        Amaranth -> Verilog of the configuration
9. ``report``     reports/compile.json

then the build folder is written, atomically. A sweep point (``hwflow dse``) runs ``calibrate,
compile, lower, predict`` and the calibration's MLP programs ``calibrate, compile, lower``,
on engines of their own (:func:`run_steps` with ``select``).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwflow.boards import load_board
from hwflow.buildfolder import BuildOutput, compile_command, write_build
from hwflow.compiler import (
    CompileError,
    FlowOptions,
    TileTarget,
    load_model,
    run,
    run_flow,
    save_graph,
)
from hwflow.compiler.passes import SPARSITY_CHOICES, WEIGHT_CHOICES, parse_sparsity
from hwflow.errors import HwflowError
from hwflow.golden import int8 as g8
from hwflow.golden.metrics import cosine, max_abs_error
from hwflow.mapping import cycles
from hwflow.mapping.accel_config import check_fit, choose_config
from hwflow.mapping.lower import lower
from hwflow.mapping.memory_image import check_image
from hwflow.rtl_cache import cached_verilog, check_cache_writable
from hwflow.steps import run_steps

CALIB_ROWS = 64        # rows of the seeded calibration sample when --calib is not given
CALIB_SEED = 0


def accelerator_verilog(cfg) -> str:
    """Verilog of the accelerator for ``cfg`` (generated once, cached by content)."""
    from hwflow.hw.top import generate_verilog  # Amaranth: only a build that needs RTL

    return cached_verilog("", cfg.to_dict(), lambda: generate_verilog(cfg))


def load_calibration(path, shape) -> np.ndarray:
    """A calibration tensor from ``--calib`` (torch.save'd tensor or .npy), checked against the
    model's input shape (any number of rows, same trailing dims)."""
    p = Path(path)
    if not p.is_file():
        raise HwflowError(f"calibration file '{path}' not found")
    try:
        if p.read_bytes()[:6] == b"\x93NUMPY":
            x = np.load(p, allow_pickle=False)
        else:
            import torch

            t = torch.load(p, map_location="cpu", weights_only=True)
            if not isinstance(t, torch.Tensor):
                raise ValueError("not a single tensor")
            x = t.detach().to(torch.float64).numpy()
    except Exception as e:  # noqa: BLE001 - any load failure is the same user error
        raise HwflowError(f"calibration file '{path}' is not a saved tensor or .npy array "
                          f"({str(e).splitlines()[0][:80]})") from None
    if x.size == 0:
        raise HwflowError(f"calibration file '{path}' holds an empty tensor (shape "
                          f"{list(x.shape)}); give at least one row of {list(shape[1:])}")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise HwflowError(f"calibration file '{path}' holds {x.dtype} values; give real "
                          "numbers")
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise HwflowError(f"calibration file '{path}' holds {bad} NaN or Inf value"
                          f"{'s' if bad > 1 else ''}; activation scales need finite samples")
    feat = int(np.prod(shape[1:], dtype=np.int64))
    if x.ndim == len(shape) - 1 and tuple(x.shape) == tuple(shape[1:]):
        x = x[None]                                  # a single sample
    if x.ndim == 0 or x.shape[0] == 0 or int(np.prod(x.shape[1:], dtype=np.int64)) != feat:
        raise HwflowError(f"calibration tensor has shape {list(x.shape)}, the model's input is "
                          f"{list(shape)} (rows may differ, the features per row may not)")
    return np.asarray(x, dtype=np.float64).reshape(-1, *shape[1:])


def default_calibration(shape) -> np.ndarray:
    rng = np.random.default_rng(CALIB_SEED)
    return rng.standard_normal((CALIB_ROWS, *shape[1:]))


def program_inputs(calib: np.ndarray, shape) -> np.ndarray:
    """The input the build folder runs by default: the first rows of the calibration sample."""
    rows = shape[0]
    x = calib[:rows]
    if x.shape[0] < rows:
        extra = np.random.default_rng(CALIB_SEED + 1).standard_normal((rows - x.shape[0],
                                                                       *shape[1:]))
        x = np.concatenate([x, extra])
    return x


def _write_testbench(tb: Path, cfg, lowered) -> None:
    """The build folder's standalone testbench (``sim.runner.write_standalone_testbench``): the
    program's one run, its output regions as the ISA functional model leaves them."""
    from hwflow.sim.isa_model import run_program
    from hwflow.sim.runner import write_standalone_testbench

    model_image, _ = run_program(cfg, lowered.image, lowered.prog_base)
    sb, regions = cfg.beat_bytes, lowered.memory_map.of_kind("output")
    write_standalone_testbench(
        tb, [{"prog_base": lowered.prog_base, "readback": [(r.addr, r.nbytes) for r in regions]}],
        [[model_image[r.addr * sb: r.addr * sb + r.nbytes] for r in regions]],
        outputs=[r.name for r in regions])


def check_weight_options(sparsity: str, weights: str) -> None:
    """Refuse a bad ``--sparsity`` or ``--weights`` value with one line, before any work."""
    try:
        parse_sparsity(sparsity)
    except CompileError as e:
        raise HwflowError(f"--sparsity {sparsity}: {e}; use {SPARSITY_CHOICES}") from None
    if weights not in WEIGHT_CHOICES:
        raise HwflowError(f"--weights {weights}: use {', '.join(WEIGHT_CHOICES)}")


def compile_model(model=None, example=None, board="u280", out=None, calib=None,
                  trust_model=False, boards_dir=None, save_ir=False, rows=None,
                  sparsity="auto", weights="int8", config_overrides=None):
    """Run the compile flow and write the build folder; returns ``(out_path, report)``.

    ``sparsity`` (``auto``, ``dense`` or ``N:M``) and ``weights`` (``int8``, ``int4`` or
    ``mixed``) choose the weight formats (see ``hwflow.compiler.passes.sparsify`` and
    ``precision``); the report's ``weight_formats`` says what every layer got and why.
    ``config_overrides`` (engine sizes and flags, as :func:`choose_config` takes them) replace
    the board's default engine (``hwflow dse --verify`` builds its points with them).

    The output folder is claimed (name, permissions, lock: ``buildfolder.BuildOutput``) before
    the flow runs, and a memory image larger than the board's memory is refused here with the
    rule ``hwflow bitstream`` applies (``mapping.memory_image.check_image``).
    """
    check_weight_options(sparsity, weights)
    brd = load_board(board, boards_dir)
    if example is not None:
        from hwflow.examples import example_kind

        if example_kind(example) != "mlp":
            raise HwflowError(f"example '{example}' is a language model; `hwflow compile "
                              f"--example {example}` compiles it")
        name = example
    else:
        if not Path(model).is_file():
            raise HwflowError(f"model file '{model}' not found")
        name = Path(model).name.split(".")[0] or "model"
    out = Path(out) if out else Path("build") / f"{name}-{brd.name}"
    rebuild = None if config_overrides else compile_command(
        *([model] if example is None else ["--example", example]), board=brd.name,
        calib=calib, trust_model=trust_model, rows=rows, save_ir=save_ir,
        sparsity=None if sparsity == "auto" else sparsity,
        weights=None if weights == "int8" else weights, boards_dir=boards_dir)
    with BuildOutput(out, rebuild) as claim:
        check_cache_writable()          # before the work: the Verilog goes through the cache
        job = MlpJob(board=brd, model=model, example=example, name=name, calib_file=calib,
                     trust_model=trust_model, rows=rows, sparsity=sparsity, weights=weights,
                     config_overrides=config_overrides,
                     ir_dir=claim.tmp / "ir" if save_ir else None)
        made = run_steps(job, MLP_STEPS)
        check_image(made.lowered.image, brd, made.cfg)
        digest = hashlib.sha256(made.lowered.image + made.verilog.encode()).hexdigest()[:16]
        with claim.writing({"kind": "mlp", "digest": digest}) as tmp:
            write_build(tmp, build_files(made))
    return out, made.report


@dataclass
class MlpJob:
    """One MLP compile: what the steps read (the request) and what they make, in step order.

    A step is a function ``step(job)`` that fills in its products (:data:`MLP_STEPS`); a flow is
    a selection of the steps, run by :func:`run_steps`: ``hwflow compile`` runs them all, a
    sweep point (``hwflow dse``) and the calibration's MLP programs (``hwflow calibrate``) run
    ``calibrate, compile, lower`` (and ``predict``) on an engine they choose, from a graph they
    loaded.
    """

    board: object = None            # boards.Board (the ``configure`` step)
    model: object = None            # model file, or None with ``example``
    example: str | None = None
    name: str = "model"
    calib_file: object = None       # --calib
    trust_model: bool = False
    rows: int | None = None
    sparsity: str = "auto"
    weights: str = "int8"
    config_overrides: dict | None = None
    ir_dir: Path | None = None      # --save-ir: every compiler step's graph
    # products
    graph: object = None            # load: float IR
    resume: object = None           # load: a saved intermediate the compile continues from
    model_bytes: bytes | None = None
    in_name: str = ""
    in_shape: tuple = ()
    calib: np.ndarray | None = None  # calibrate
    cfg: object = None              # configure (or given): AccelConfig
    resources: dict | None = None
    qgraph: object = None           # compile: final IR
    inputs: np.ndarray | None = None  # lower: the program's default input (float)
    lowered: object = None          # lower: program, image, memory map
    prediction: dict | None = None  # predict: mapping.cycles.predict
    accuracy: dict | None = None    # check: golden vs float
    verilog: str = ""               # rtl
    report: dict | None = None      # report


def load(job: MlpJob) -> None:
    """Step ``load``: the model file (or the bundled example) -> float IR, by content; or a
    graph ``--save-ir`` kept (``ir/NN_<step>.json``), which the ``compile`` step continues from
    (after ``<step>``; the float IR is the folder's ``00_float.json``)."""
    if job.model is not None and Path(job.model).suffix == ".json":
        _load_intermediate(job, Path(job.model))
    else:
        with tempfile.TemporaryDirectory() as td:
            model = job.model
            if job.example is not None:
                from hwflow.mlp_examples import export_example

                model = Path(td) / f"{job.example}.pt2"
                export_example(job.example, model)
            job.graph = load_model(model, trust_model=job.trust_model, rows=job.rows)
            job.model_bytes = Path(model).read_bytes() if job.example is not None else None
    job.graph.graph["name"] = job.name
    if len(job.graph.graph["inputs"]) != 1:
        raise HwflowError("models with more than one input are not supported yet")
    job.in_name = job.graph.graph["inputs"][0]
    job.in_shape = tuple(job.graph.nodes[job.in_name]["op"].out.shape)


def _load_intermediate(job: MlpJob, path: Path) -> None:
    """A graph saved by ``--save-ir`` and the float IR beside it (both spec-checked by
    ``run_flow``); the compile resumes after the saved graph's step."""
    from hwflow.compiler import load_graph
    from hwflow.compiler.flow import intermediate_path

    try:
        saved = load_graph(path)
        step = saved.graph.get("step", "float")
        job.graph = saved if step == "float" else load_graph(
            intermediate_path(path.parent, "float"))
    except (CompileError, OSError, ValueError, KeyError) as e:
        raise HwflowError(f"'{path}' is not a compiler intermediate kept by --save-ir with its "
                          f"folder's 00_float.json ({str(e).splitlines()[0][:120]}); give a "
                          "model file or an ir/NN_<step>.json of a --save-ir build") from None
    job.resume = None if step == "float" else saved


def calibrate(job: MlpJob) -> None:
    """Step ``calibrate``: the calibration sample (``--calib``, or a seeded normal sample)."""
    job.calib = (load_calibration(job.calib_file, job.in_shape) if job.calib_file
                 else default_calibration(job.in_shape))


def configure(job: MlpJob) -> None:
    """Step ``configure``: the board's engine (with the overrides), checked to fit."""
    job.cfg = choose_config(job.board, **(job.config_overrides or {}))
    job.resources = check_fit(job.cfg, job.board)


def compile_ir(job: MlpJob) -> None:
    """Step ``compile``: the compiler's passes (``hwflow.compiler.flow.STEPS``: sparsify,
    precision, quantize, fuse, tile, schedule, memory plan; spec check after each)."""
    start = job.graph if job.resume is None else job.resume
    job.qgraph = run_flow(start, _options(job), save_dir=job.ir_dir)


def _options(job: MlpJob) -> FlowOptions:
    """The compiler's options for the job's engine (its sizes are the tile target)."""
    c = job.cfg
    target = TileTarget(c.chains, c.chain_len, c.beat_bytes, c.act_depth, c.weight_depth)
    return FlowOptions(target, calib=job.calib, sparsity=job.sparsity, weights=job.weights)


def lower_program(job: MlpJob) -> None:
    """Step ``lower``: the final IR -> instruction program and memory image, with the default
    input (:func:`program_inputs`) in it."""
    job.inputs = program_inputs(job.calib, job.in_shape)
    scale = job.qgraph.nodes[job.in_name]["op"].out.scale
    job.lowered = lower(job.qgraph, job.cfg, {job.in_name: g8.quantize(job.inputs, scale)})


def predict(job: MlpJob) -> None:
    """Step ``predict``: cycles of the program (``mapping.cycles.predict``) on the memory the
    board delivers (``mapping.cycles.board_fit``)."""
    job.prediction = cycles.predict(job.lowered.program, job.cfg,
                                    fit=cycles.board_fit(job.cfg, job.board))


def check(job: MlpJob) -> None:
    """Step ``check``: the golden model against the float model on the default input (and
    against the pruned float model when ``--sparsity`` pruned)."""
    x, o = {job.in_name: job.inputs}, job.qgraph.graph["outputs"][0]
    golden, ref = run(job.qgraph, x)[o], run(job.graph, x)[o]
    job.accuracy = {"float_cosine": cosine(golden, ref),
                    "float_max_abs_error": max_abs_error(golden, ref)}
    formats = job.qgraph.graph.get("weight_formats", {})
    if any(f.get("sparsity_from") == "imposed" for f in formats.values()):
        # the error of quantization alone, against the model as pruned by --sparsity
        pruned = run(run_flow(job.graph, _options(job), stop_after="sparsify"), x)[o]
        job.accuracy |= {"pruned_float_cosine": cosine(golden, pruned),
                         "pruned_float_max_abs_error": max_abs_error(golden, pruned)}


def rtl(job: MlpJob) -> None:
    """Step ``rtl``: the accelerator's Verilog (cached by content)."""
    job.verilog = accelerator_verilog(job.cfg)


def report(job: MlpJob) -> None:
    """Step ``report``: ``reports/compile.json``."""
    brd, cfg, lw, g, q = job.board, job.cfg, job.lowered, job.graph, job.qgraph
    ops = Counter(q.nodes[n]["op"].kind for n in q.nodes)
    instr_kinds = Counter(i.op.name for i in lw.program)
    job.report = {
        "model": job.name, "board": brd.name, "part": brd.part, "clock_mhz": brd.clock_mhz,
        "config": cfg.to_dict(), "ops": dict(sorted(ops.items())), "ops_total": sum(ops.values()),
        "float_ops": dict(sorted(Counter(g.nodes[n]["op"].kind for n in g.nodes).items())),
        "instructions": len(lw.program),
        "instruction_kinds": dict(sorted(instr_kinds.items())),
        "program_bytes": len(lw.program) * 32, "memory_image_bytes": len(lw.image),
        "predicted_cycles": job.prediction["total"],
        "predicted_cycles_per_instruction": job.prediction["per_instruction"],
        "macs": sum(layer.get("macs", 0) for layer in lw.layers), "layers": lw.layers,
        "resources": job.resources,
        "input_shape": list(job.in_shape), "calibration_rows": int(job.calib.shape[0]),
        **job.accuracy,
        "sparsity": job.sparsity, "weights": job.weights,
        "weight_formats": q.graph.get("weight_formats", {}),
    }


#: The MLP compile, in order: ``(step name, step function)``. ``hwflow compile`` runs all of it
#: and writes the build folder; sweeps and calibration run a selection (:class:`MlpJob`).
MLP_STEPS = (("load", load), ("calibrate", calibrate), ("configure", configure),
             ("compile", compile_ir), ("lower", lower_program), ("predict", predict),
             ("check", check), ("rtl", rtl), ("report", report))


def build_files(c: MlpJob) -> dict:
    """The files of an MLP build folder (README.md, "The build folder"), for
    ``buildfolder.write_build``."""
    files = {
        "rtl/hwflow_accel.v": c.verilog,
        "program.bin": b"".join(i.encode() for i in c.lowered.program),
        "memory_image.bin": c.lowered.image,
        "memory_map.json": c.lowered.memory_map.to_json() + "\n",
        "calib.npy": lambda p: np.save(p, c.calib),
        # --save-ir: the steps are already in ir/
        "ir/float": lambda p: save_graph(c.graph, p),
        "ir/final": lambda p: save_graph(c.qgraph, p),
        "config.json": {"board": c.report["board"], "clock_mhz": c.report["clock_mhz"],
                        "accel": c.cfg.to_dict(), "prog_base": c.lowered.prog_base,
                        "memory_rate_bytes": cycles.memory_rate_bytes(c.board, c.cfg),
                        "input": c.in_name, "outputs": c.qgraph.graph["outputs"]},
        "reports/compile.json": c.report,
        "tb": lambda p: _write_testbench(p, c.cfg, c.lowered),
    }
    if c.model_bytes is not None:
        files["model.pt2"] = c.model_bytes
    return files
