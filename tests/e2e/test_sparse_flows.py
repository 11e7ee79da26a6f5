"""Whole flows with sparse and mixed-precision weights: compile -> sim (Verilator), bit-exact.

What the sparse DSP chain must show end to end: an MLP pruned 2:4 and compiled with
``--sparsity 2:4``, and one program mixing a dense int8, a 2:4 int4, a dense int4 and a dense
int8 layer (``--example mlp-mixed --weights mixed``), both bit-exact against golden in RTL, with
``macs_per_dsp_cycle`` in ``reports/sim.json``. Each test first checks golden == ISA functional
model (no RTL), so a failure says which layer of the stack disagrees.
"""

import json

import pytest
import torch
from torch import nn

from hwflow.cli import main
from hwflow.mlp_examples import prune_2_4
from hwflow.simulate import check_isa_model, simulate_build


class PrunedMLP(nn.Module):
    """Residual MLP whose layers are pruned 2:4 in torch; K = 64, 160, 64 (multiples of 4)."""

    def __init__(self, d=64, h=160, o=24):
        super().__init__()
        self.up = nn.Linear(d, h)
        self.down = nn.Linear(h, d)
        self.out = nn.Linear(d, o)
        for layer in (self.up, self.down, self.out):
            prune_2_4(layer)

    def forward(self, x):
        y = torch.relu(self.up(x))
        y = torch.relu(self.down(y) + x)
        return self.out(y)


def _export(tmp_path, module, x):
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(module.eval(), (x,)), str(path))
    return path


def _compile(out, *argv):
    assert main(["compile", *argv, "-o", str(out)]) == 0
    assert check_isa_model(out), "golden != ISA functional model"
    return json.loads((out / "reports" / "compile.json").read_text())


def _sim(out):
    sim = simulate_build(out)
    assert sim["isa_model_bit_exact"], sim
    assert sim["bit_exact"] and sim["mismatches"] == 0, sim
    assert 0 < sim["macs_per_dsp_cycle"] <= sim["ideal_macs_per_dsp_cycle"], sim
    return sim


def test_mlp_pruned_2_4_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    path = _export(tmp_path, PrunedMLP(), torch.randn(6, 64))
    out = tmp_path / "sparse-u280"
    comp = _compile(out, str(path), "--board", "u280", "--sparsity", "2:4")
    assert [f["sparsity"] for f in comp["weight_formats"].values()] == ["2:4"] * 3
    # pruned in torch already, so imposing 2:4 changes nothing: only quantization error is left
    assert comp["pruned_float_cosine"] == comp["float_cosine"] >= 0.99
    sim = _sim(out)
    assert sim["float_cosine"] >= 0.99
    # every MATMUL layer runs 2:4: two output channels per chain per pass, 4 MACs per slice
    assert set(sim["ideal_macs_per_dsp_cycle_by_layer"].values()) == {4.0}
    assert main(["sim", str(out)]) == 0


def test_mixed_precision_program_is_bit_exact(tmp_path):
    out = tmp_path / "mixed-u280"
    comp = _compile(out, "--example", "mlp-mixed", "--board", "u280", "--weights", "mixed")
    assert [(f["sparsity"], f["weights"]) for f in comp["weight_formats"].values()] == [
        ("dense", "int8"), ("2:4", "int4"), ("dense", "int4"), ("dense", "int8")]
    sim = _sim(out)
    assert sim["float_cosine"] >= 0.99
    assert sorted(sim["ideal_macs_per_dsp_cycle_by_layer"].values()) == [2.0, 2.0, 2.0, 4.0]


def test_auto_detected_sparse_example_is_bit_exact(tmp_path):
    out = tmp_path / "mlp-sparse-u280"
    comp = _compile(out, "--example", "mlp-sparse", "--board", "u280")
    assert [f["sparsity"] for f in comp["weight_formats"].values()] == ["2:4", "2:4", "dense"]
    _sim(out)


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_sparsity_raises_the_rate(tmp_path, weights):
    """Same 256x256 layer, batch 8: the 2:4 program does more dense-equivalent MACs per DSP
    slice per cycle than the dense one (the point of the sparse DSP chain)."""
    torch.manual_seed(0)
    path = _export(tmp_path, nn.Linear(256, 256), torch.randn(8, 256))
    rate = {}
    for sparsity in ("dense", "2:4"):
        out = tmp_path / f"{sparsity.replace(':', 'of')}-{weights}"
        _compile(out, str(path), "--board", "u280", "--sparsity", sparsity, "--weights", weights)
        rate[sparsity] = _sim(out)["macs_per_dsp_cycle"]
    assert rate["2:4"] > rate["dense"], rate
