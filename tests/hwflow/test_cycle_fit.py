"""hwflow.cycle_fit: a real cycle-model fit of a small engine on the RTL, checked on held-out
runs."""

import json

import pytest

from hwflow.cli import main
from hwflow.cycle_fit import fit_cycle_model, format_table, micro_runs, write_fit
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import Instr, Opcode
from hwflow.mapping import cycles
from hwflow.sim.isa_model import IsaModel

# The configuration of tests/sim/test_runner_steps.py (its Verilator build is shared): SB = 16,
# so every instruction is fetched from memory, 4 act words per super-beat.
SMALL = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, act_depth=512,
                    weight_depth=64, addr_bits=16, transformer=True, attn_heads=4)


def test_micro_runs_are_legal_programs():
    from hwflow.cycle_fit import _image

    runs, lay = micro_runs(SMALL)
    kinds = {r.kind for r in runs}
    assert {"LOAD", "STORE", "KVSTORE", "GATHER", "MATMUL", "VADD", "RMSNORM", "SILUMUL",
            "ROPE", "ATTN", "ABSQUANT", None, "program"} <= kinds and "TMATMUL" not in kinds
    for kind in kinds - {None, "program"}:
        roles = {r.role for r in runs if r.kind == kind}
        assert roles == {"fit", "heldout"}, kind
    image = _image(SMALL, runs, lay)
    for r in runs:      # every micro-program runs to its END in the ISA model
        stats = IsaModel(SMALL, image, pos=r.pos).run(r.prog_base)
        assert stats.retired == len(r.instrs) + 1


@pytest.mark.slow
def test_fit_reproduces_held_out_rtl_cycles(tmp_path):
    data = fit_cycle_model("small", cfg=SMALL, jobs=1, work_dir=tmp_path / "sim",
                           progress=False, programs=False)
    assert data["config_digest"] == SMALL.digest()
    kinds = data["kinds"]
    for kind in ("LOAD", "STORE", "KVSTORE", "GATHER", "MATMUL", "VADD", "RMSNORM", "SILUMUL",
                 "ROPE", "ATTN", "ABSQUANT"):
        e = kinds[kind]
        assert len(e["fit"]) >= 3 and len(e["heldout"]) >= 2, kind
        assert e["heldout_max_abs_error_pct"] <= 10.0, (kind, e["heldout"])
    # the held-out program of all held-out instructions in a row
    (mixed,) = data["programs"]
    assert mixed["instructions"] > 20 and abs(mixed["error_pct"]) <= 10.0
    # written, loaded back and applied: the same prediction
    path = write_fit(data, tmp_path / "small.json")
    runs, _ = micro_runs(SMALL)
    prog = next(r for r in runs if r.kind == "program")
    pred = cycles.predict(prog.instrs + [Instr(Opcode.END)], SMALL, prog.pos, path)
    assert pred["total"] == mixed["predicted"]
    assert "ATTN" in format_table(json.loads(path.read_text()))


def test_cli_rejects_bad_arguments(capsys):
    assert main(["calibrate", "--board", "no-such-board"]) == 2
    assert "unknown board 'no-such-board'" in capsys.readouterr().err
    assert main(["calibrate", "--board", "u280", "--jobs", "0"]) == 2
    assert "--jobs 0" in capsys.readouterr().err
