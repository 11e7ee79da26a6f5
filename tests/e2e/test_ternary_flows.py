"""Whole ternary flows: float torch MLP -> ``hwflow compile --weights ternary`` -> ``hwflow sim``
(Verilator), bit-exact, with the TLMM engine's counters (docs/architecture.md, "Ternary
path")."""

import json

import pytest
import torch
from torch import nn

from hwflow.cli import main


class OddMLP(nn.Module):
    """Widths that are multiples of nothing in the engine (K % G != 0, n_out % Q != 0), ReLUs and
    a residual add (a VADD after a ternary layer)."""

    def __init__(self, d=37, h=53, o=29):
        super().__init__()
        self.up = nn.Linear(d, h)
        self.down = nn.Linear(h, d)
        self.out = nn.Linear(d, o)

    def forward(self, x):
        y = torch.relu(self.up(x))
        y = self.down(y) + x
        return self.out(torch.relu(y))


def _export(tmp_path, module, x):
    path = tmp_path / "model.pt"
    torch.export.save(torch.export.export(module.eval(), (x,)), str(path))
    return path


def test_ternary_mlp_is_bit_exact_on_kv260(tmp_path):
    torch.manual_seed(1)
    path = _export(tmp_path, OddMLP(), torch.randn(3, 37))
    out = tmp_path / "odd-kv260"
    assert main(["compile", str(path), "--board", "kv260", "--weights", "ternary",
                 "-o", str(out)]) == 0
    comp = json.loads((out / "reports" / "compile.json").read_text())
    linears = [la for la in comp["layers"] if la["kind"] == "qlinear"]
    assert [la["engine"] for la in linears] == ["tlmm"] * 3
    assert comp["instruction_kinds"]["TMATMUL"] == comp["instruction_kinds"]["ABSQUANT"] == 3
    assert "MATMUL" not in comp["instruction_kinds"]

    assert main(["sim", str(out)]) == 0
    sim = json.loads((out / "reports" / "sim.json").read_text())
    assert sim["bit_exact"] and sim["mismatches"] == 0 and sim["rtl_vs_isa_model_bytes"] == 0
    assert sim["isa_model_bit_exact"] and sim["error_register"] == 0
    # TLMM_BUSY counts one cycle per lookup record of a pass: the mapper's count, the ISA
    # model's (the KV260 engine takes the 3 rows in one pass: a third of the rows' records)
    busy = sum(la["tlmm"]["busy_cycles"] for la in linears)
    lookups = sum(la["tlmm"]["lookups"] for la in linears)
    assert sim["tlmm_busy_cycles"] == sim["tlmm_busy_isa_model"] == busy == lookups // 3
    T, Q = comp["config"]["tlmm_t"], comp["config"]["tlmm_q"]
    assert 0 < sim["tlmm_utilization"] <= 1
    assert sim["tlmm_lookups_per_cycle"] == pytest.approx(lookups * T * Q / sim["cycles"])
    assert sim["mpe_busy_cycles"] == 0
    # the analytic cycle model follows the RTL's documented formulas (measured: 2.6% off)
    assert abs(sim["predicted_cycles"] - sim["cycles"]) <= 0.1 * sim["cycles"], sim


def test_ternary_on_a_board_without_tlmm_is_one_clear_error(tmp_path, capsys):
    torch.manual_seed(2)
    path = _export(tmp_path, OddMLP(), torch.randn(2, 37))
    assert main(["compile", str(path), "--board", "vck190", "--weights", "ternary",
                 "-o", str(tmp_path / "b")]) != 0
    err = capsys.readouterr().err
    assert "has ternary weights" in err and "no TLMM engine" in err
    assert "engine: tlmm: true" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()
