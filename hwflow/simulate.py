"""``hwflow sim``: run a build folder in Verilator and check it against golden, bit for bit.

Three equalities are checked on the same inputs (docs/design.md, "Verification"):
float torch ~ golden (reported: cosine, max abs error), golden == ISA functional model
(exact), ISA functional model == RTL (exact, every byte of every output region).

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
``tlmm_lookups_per_cycle`` = busy · T · Q / cycles (its ideal is ``T·Q``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwflow.buildfolder import open_build, write_json
from hwflow.compiler import load_graph, run
from hwflow.errors import HwflowError
from hwflow.flow import program_inputs
from hwflow.golden import int8 as g8
from hwflow.golden.metrics import cosine, max_abs_error
from hwflow.hw.config import AccelConfig
from hwflow.mapping.memory_image import MemoryMap, read_tensor, unpack_rows, write_tensor
from hwflow.rtl_cache import check_cache_writable
from hwflow.sim.isa_model import run_program
from hwflow.sim.runner import SimError, simulate


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


def tlmm_rates(cfg: AccelConfig, busy: int, cycles: int) -> dict:
    """TLMM counters of a run: ``tlmm_busy_cycles``, ``tlmm_utilization`` (busy / cycles) and
    ``tlmm_lookups_per_cycle`` (busy · T · Q / cycles)."""
    lookups = cfg.tlmm_t * cfg.tlmm_q
    return {"tlmm_busy_cycles": busy,
            "tlmm_utilization": busy / cycles if cycles else 0.0,
            "tlmm_lookups_per_cycle": busy * lookups / cycles if cycles else 0.0,
            "tlmm_ideal_lookups_per_cycle": lookups}


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
                          "hwflow.llm_flow.simulate_decoder (`hwflow sim` picks it)")
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
    """Simulate build folder ``out``; writes and returns ``reports/sim.json``'s content."""
    out = Path(out)
    p = _reference(out, seed)
    check_cache_writable()          # the Verilator build is cached
    conf, cfg, mm, outputs = p.conf, p.cfg, p.mm, p.conf["outputs"]
    compile_report = json.loads((out / "reports" / "compile.json").read_text())

    # ISA functional model == RTL, every byte of the output regions (padding included)
    regions = [mm.region(o) for o in outputs]
    sb = mm.beat_bytes
    try:
        res = simulate(cfg, (out / "rtl" / "hwflow_accel.v").read_text(), p.image,
                       conf["prog_base"], [(r.addr, r.nbytes) for r in regions],
                       work_dir=out / "sim", waves=waves)
    except SimError as e:
        raise HwflowError(f"simulation failed: {str(e).splitlines()[0]}") from None
    mismatches = rtl_vs_model = 0
    for r, got in zip(regions, res.regions, strict=True):
        want = p.model_image[r.addr * sb: r.addr * sb + r.nbytes]
        rtl_vs_model += int(np.count_nonzero(np.frombuffer(got, np.uint8)
                                             != np.frombuffer(want, np.uint8)))
        mismatches += int(np.count_nonzero(unpack_rows(got, r, mm.chain_len)
                                           != p.golden_q[r.name]))

    o = outputs[0]
    macs = compile_report["macs"]
    report = {
        "bit_exact": bool(mismatches == 0 and rtl_vs_model == 0 and p.isa_exact
                          and res.done and res.error == 0),
        "mismatches": mismatches,
        "rtl_vs_isa_model_bytes": rtl_vs_model,
        "completed": bool(res.done),
        "isa_model_bit_exact": bool(p.isa_exact),
        "error_register": res.error,
        "cycles": res.cycles,
        "predicted_cycles": compile_report["predicted_cycles"],
        "mpe_busy_cycles": res.mpe_busy,
        "retired": res.retired,
        "sim_seconds": res.run_wall_s,
        "cycles_per_second": res.cycles_per_s,
        "verilator_build_seconds": res.build_s,
        "macs": macs,
        "mpe_utilization": res.mpe_busy / res.cycles if res.cycles else 0.0,
        **throughput(compile_report, cfg, res.cycles),
        "float_cosine": cosine(p.golden_out[o], p.float_out[o]),
        "float_max_abs_error": max_abs_error(p.golden_out[o], p.float_out[o]),
        "inputs": "calibration" if seed is None else f"seed {seed}",
        "board": conf["board"],
    }
    if compile_report.get("instruction_kinds", {}).get("TMATMUL"):
        report.update(tlmm_rates(cfg, res.tlmm_busy, res.cycles))
        report["tlmm_busy_isa_model"] = p.isa_stats.tlmm_busy_cycles
    if waves and res.waves:
        report["waves"] = str(res.waves)
    write_json(out / "reports" / "sim.json", report)
    return report
