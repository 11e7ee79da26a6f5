"""``hwflow sim``: run a build folder in Verilator and check it against golden, bit for bit.

Three equalities are checked on the same inputs (shared/DESIGN.md, "Verification"):
float torch ~ golden (reported: cosine, max abs error), golden == ISA functional model
(exact), ISA functional model == RTL (exact, every byte of every output region).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hwflow.buildfolder import is_build, write_json
from hwflow.compiler import load_graph, run
from hwflow.errors import HwflowError
from hwflow.flow import program_inputs
from hwflow.golden import int8 as g8
from hwflow.golden.metrics import cosine, max_abs_error
from hwflow.hw.config import AccelConfig
from hwflow.mapping.memory_image import MemoryMap, read_tensor, unpack_rows, write_tensor
from hwflow.sim.isa_model import run_program
from hwflow.sim.runner import SimError, simulate


def _inputs(out: Path, shape, seed):
    if seed is not None:
        return np.random.default_rng(seed).standard_normal(shape)
    return program_inputs(np.load(out / "calib.npy", allow_pickle=False), shape)


def simulate_build(out, seed: int | None = None, waves: bool = False) -> dict:
    """Simulate build folder ``out``; writes and returns ``reports/sim.json``'s content."""
    out = Path(out)
    if not is_build(out):
        raise HwflowError(f"'{out}' is not an hwflow build folder; create one with "
                          "`hwflow compile MODEL --board BOARD -o OUT`")
    conf = json.loads((out / "config.json").read_text())
    cfg = AccelConfig(**conf["accel"])
    mm = MemoryMap.from_json((out / "memory_map.json").read_text())
    compile_report = json.loads((out / "reports" / "compile.json").read_text())
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
    model_image, _ = run_program(cfg, image, conf["prog_base"])
    golden_q = {o: values[final.nodes[o]["op"].inputs[0]] for o in outputs}
    isa_exact = all(np.array_equal(read_tensor(model_image, mm, o), golden_q[o])
                    for o in outputs)

    # ISA functional model == RTL, every byte of the output regions (padding included)
    regions = [mm.region(o) for o in outputs]
    sb = mm.beat_bytes
    try:
        res = simulate(cfg, (out / "rtl" / "hwflow_accel.v").read_text(), image,
                       conf["prog_base"], [(r.addr, r.nbytes) for r in regions],
                       work_dir=out / "sim", waves=waves)
    except SimError as e:
        raise HwflowError(f"simulation failed: {str(e).splitlines()[0]}") from None
    mismatches = rtl_vs_model = 0
    for r, got in zip(regions, res.regions, strict=True):
        want = model_image[r.addr * sb: r.addr * sb + r.nbytes]
        rtl_vs_model += int(np.count_nonzero(np.frombuffer(got, np.uint8)
                                             != np.frombuffer(want, np.uint8)))
        mismatches += int(np.count_nonzero(unpack_rows(got, r, mm.chain_len)
                                           != golden_q[r.name]))

    o = outputs[0]
    macs = compile_report["macs"]
    report = {
        "bit_exact": bool(mismatches == 0 and rtl_vs_model == 0 and isa_exact
                          and res.done and res.error == 0),
        "mismatches": mismatches,
        "rtl_vs_isa_model_bytes": rtl_vs_model,
        "completed": bool(res.done),
        "isa_model_bit_exact": bool(isa_exact),
        "error_register": res.error,
        "cycles": res.cycles,
        "predicted_cycles": compile_report["predicted_cycles"],
        "mpe_busy_cycles": res.mpe_busy,
        "retired": res.retired,
        "sim_seconds": res.run_wall_s,
        "cycles_per_second": res.cycles_per_s,
        "verilator_build_seconds": res.build_s,
        "macs": macs,
        "mpe_utilization": macs / (cfg.dsp_slices * res.cycles) if res.cycles else 0.0,
        "float_cosine": cosine(golden_out[o], float_out[o]),
        "float_max_abs_error": max_abs_error(golden_out[o], float_out[o]),
        "inputs": "calibration" if seed is None else f"seed {seed}",
        "board": conf["board"],
    }
    if waves and res.waves:
        report["waves"] = str(res.waves)
    write_json(out / "reports" / "sim.json", report)
    return report
