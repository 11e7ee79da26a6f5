"""``hwflow compile``: the ordered flow from a model file to a build folder.

Steps (each a small function; the compiler's own passes are listed in hwflow.compiler.flow):

1. ``load``       model file -> float IR (frontend, by content, never unpickling untrusted code)
2. ``calibrate``  calibration sample (``--calib`` or a seeded normal sample)
3. ``configure``  board -> accelerator configuration, resource fit check
4. ``compile``    sparsify (``--sparsity``), precision (``--weights``), quantize, fuse, tile,
                 schedule, memory plan (spec check after each)
5. ``lower``      IR -> instruction program + memory image
6. ``rtl``        Amaranth -> Verilog of the configuration
7. ``write``      build folder, atomically, with reports/compile.json
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwflow.boards import load_board
from hwflow.buildfolder import BuildOutput, compile_command, write_json
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
from hwflow.export.open_flow import check_image
from hwflow.golden import int8 as g8
from hwflow.golden.metrics import cosine, max_abs_error
from hwflow.hw.top import generate_verilog
from hwflow.mapping import cycles
from hwflow.mapping.engine import check_fit, choose_config
from hwflow.mapping.lower import lower
from hwflow.rtl_cache import cached_verilog, check_cache_writable

CALIB_ROWS = 64        # rows of the seeded calibration sample when --calib is not given
CALIB_SEED = 0


def accelerator_verilog(cfg) -> str:
    """Verilog of the accelerator for ``cfg`` (generated once, cached by content)."""
    return cached_verilog("", cfg.to_dict(), lambda: generate_verilog(cfg))


STANDALONE_TB = '''"""Standalone cocotb testbench of this build: `pytest tb/` from the build folder.

Builds ``hwflow_sim_top`` (this folder's rtl/hwflow_accel.v plus the memory models) with
Verilator through cocotb's runner, preloads memory_image.bin, runs the program and checks
every output region byte for byte against the ISA functional model's result for the
default input (expected_*.bin, written by `hwflow compile`). The cocotb test module that
drives the AXI4-Lite registers and reads the results is hwflow.sim.testbench.
"""

import json
from pathlib import Path

from hwflow.hw.config import AccelConfig
from hwflow.sim.runner import simulate

HERE = Path(__file__).resolve().parent
BUILD = HERE.parent


def test_program_matches_isa_model(tmp_path):
    conf = json.loads((BUILD / "config.json").read_text())
    regions = json.loads((HERE / "expected.json").read_text())
    res = simulate(AccelConfig(**conf["accel"]), (BUILD / "rtl" / "hwflow_accel.v").read_text(),
                   (BUILD / "memory_image.bin").read_bytes(), conf["prog_base"],
                   [(r["addr"], r["nbytes"]) for r in regions], work_dir=tmp_path)
    assert res.done and res.error == 0
    for r, got in zip(regions, res.regions, strict=True):
        assert got == (HERE / r["file"]).read_bytes(), r["name"]
'''


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
    """The build folder's standalone cocotb testbench (see STANDALONE_TB)."""
    from hwflow.sim.isa_model import run_program

    tb.mkdir()
    model_image, _ = run_program(cfg, lowered.image, lowered.prog_base)
    sb, regions = cfg.beat_bytes, []
    for k, r in enumerate(lowered.memory_map.of_kind("output")):
        f = f"expected_{k}.bin"
        (tb / f).write_bytes(model_image[r.addr * sb: r.addr * sb + r.nbytes])
        regions.append({"name": r.name, "addr": r.addr, "nbytes": r.nbytes, "file": f})
    write_json(tb / "expected.json", regions)
    (tb / "test_accel.py").write_text(STANDALONE_TB)


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
    rule ``hwflow bitstream`` applies (``export.open_flow.check_image``).
    """
    check_weight_options(sparsity, weights)
    brd = load_board(board, boards_dir)
    if example is not None:
        from hwflow.examples import EXAMPLES

        if example not in EXAMPLES:
            raise HwflowError(f"unknown example '{example}' (known: {', '.join(EXAMPLES)})")
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
        made = _run_steps(model, example, name, brd, calib, trust_model, rows, sparsity,
                          weights, config_overrides, claim.tmp / "ir" if save_ir else None)
        check_image(made.lowered.image, brd, made.cfg)
        digest = hashlib.sha256(made.lowered.image + made.verilog.encode()).hexdigest()[:16]
        with claim.writing({"kind": "mlp", "digest": digest}) as tmp:
            _write_build(tmp, made)
    return out, made.report


@dataclass
class _Compiled:
    """What the compile steps made, for :func:`_write_build`."""

    graph: object           # float IR
    qgraph: object          # final IR
    cfg: object             # AccelConfig
    lowered: object         # mapping.lower result: program, image, memory map
    calib: np.ndarray
    in_name: str
    model_bytes: bytes | None
    verilog: str
    report: dict


def _run_steps(model, example, name, brd, calib, trust_model, rows, sparsity, weights,
               config_overrides, ir_steps) -> _Compiled:
    """Steps 1-6 of the module docstring (``ir_steps``: folder for ``--save-ir``)."""
    with tempfile.TemporaryDirectory() as td:
        if example is not None:
            from hwflow.examples import export_example

            model = Path(td) / f"{example}.pt2"
            export_example(example, model)
        graph = load_model(model, trust_model=trust_model, rows=rows)
        model_bytes = Path(model).read_bytes() if example is not None else None
    graph.graph["name"] = name
    in_name = graph.graph["inputs"][0]
    if len(graph.graph["inputs"]) != 1:
        raise HwflowError("models with more than one input are not supported yet")
    in_shape = tuple(graph.nodes[in_name]["op"].out.shape)

    calib_x = load_calibration(calib, in_shape) if calib else default_calibration(in_shape)
    cfg = choose_config(brd, **(config_overrides or {}))
    resources = check_fit(cfg, brd)
    target = TileTarget(cfg.chains, cfg.chain_len, cfg.beat_bytes, cfg.act_depth,
                        cfg.weight_depth)
    options = FlowOptions(target, calib=calib_x, sparsity=sparsity, weights=weights)
    qgraph = run_flow(graph, options, save_dir=ir_steps)

    x = program_inputs(calib_x, in_shape)
    q_in = {in_name: g8.quantize(x, qgraph.nodes[in_name]["op"].out.scale)}
    lowered = lower(qgraph, cfg, q_in)
    pred = cycles.predict(lowered.program, cfg)

    golden_out = run(qgraph, {in_name: x})
    float_out = run(graph, {in_name: x})
    o = qgraph.graph["outputs"][0]
    cos, mae = cosine(golden_out[o], float_out[o]), max_abs_error(golden_out[o], float_out[o])
    formats = qgraph.graph.get("weight_formats", {})
    pruned = {}
    if any(f.get("sparsity_from") == "imposed" for f in formats.values()):
        # the error of quantization alone, against the model as pruned by --sparsity
        p_out = run(run_flow(graph, options, stop_after="sparsify"), {in_name: x})[o]
        pruned = {"pruned_float_cosine": cosine(golden_out[o], p_out),
                  "pruned_float_max_abs_error": max_abs_error(golden_out[o], p_out)}

    ops = Counter(qgraph.nodes[n]["op"].kind for n in qgraph.nodes)
    instr_kinds = Counter(i.op.name for i in lowered.program)
    macs = sum(layer.get("macs", 0) for layer in lowered.layers)
    report = {
        "model": name, "board": brd.name, "part": brd.part, "clock_mhz": brd.clock_mhz,
        "config": cfg.to_dict(), "ops": dict(sorted(ops.items())), "ops_total": sum(ops.values()),
        "float_ops": dict(sorted(Counter(graph.nodes[n]["op"].kind for n in graph.nodes).items())),
        "instructions": len(lowered.program),
        "instruction_kinds": dict(sorted(instr_kinds.items())),
        "program_bytes": len(lowered.program) * 32, "memory_image_bytes": len(lowered.image),
        "predicted_cycles": pred["total"],
        "predicted_cycles_per_instruction": pred["per_instruction"],
        "macs": macs, "layers": lowered.layers, "resources": resources,
        "input_shape": list(in_shape), "calibration_rows": int(calib_x.shape[0]),
        "float_cosine": cos, "float_max_abs_error": mae, **pruned,
        "sparsity": sparsity, "weights": weights, "weight_formats": formats,
    }
    return _Compiled(graph, qgraph, cfg, lowered, calib_x, in_name, model_bytes,
                     accelerator_verilog(cfg), report)


def _write_build(tmp: Path, c: _Compiled) -> None:
    """Step 7: the files of the build folder (README.md, "The build folder")."""
    (tmp / "rtl").mkdir()
    (tmp / "rtl" / "hwflow_accel.v").write_text(c.verilog)
    (tmp / "program.bin").write_bytes(b"".join(i.encode() for i in c.lowered.program))
    (tmp / "memory_image.bin").write_bytes(c.lowered.image)
    (tmp / "memory_map.json").write_text(c.lowered.memory_map.to_json() + "\n")
    np.save(tmp / "calib.npy", c.calib)
    ir_dir = tmp / "ir"
    ir_dir.mkdir(exist_ok=True)             # --save-ir: the steps are already in it
    save_graph(c.graph, ir_dir / "float")
    save_graph(c.qgraph, ir_dir / "final")
    if c.model_bytes is not None:
        (tmp / "model.pt2").write_bytes(c.model_bytes)
    write_json(tmp / "config.json", {"board": c.report["board"],
                                     "clock_mhz": c.report["clock_mhz"],
                                     "accel": c.cfg.to_dict(), "prog_base": c.lowered.prog_base,
                                     "input": c.in_name, "outputs": c.qgraph.graph["outputs"]})
    write_json(tmp / "reports" / "compile.json", c.report)
    _write_testbench(tmp / "tb", c.cfg, c.lowered)
