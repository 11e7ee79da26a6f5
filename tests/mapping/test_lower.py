"""mapping.lower: format choice per layer, MATMUL fields, ring check, reports; golden == ISA model.

Every program is compiled from a small torch MLP, lowered, run on the ISA functional model and
compared with the compiler's interpreter (golden) exactly.
"""

from __future__ import annotations

import types
from dataclasses import replace

import numpy as np
import pytest
import torch

from hwflow.compiler import FlowOptions, TileTarget, from_module, run, run_flow
from hwflow.golden import int8 as g8
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import FLAG_INT4, Opcode
from hwflow.mapping.errors import MappingError
from hwflow.mapping.lower import lower
from hwflow.mapping.memory_image import read_tensor
from hwflow.mapping.weight_format import LayerFormat, tile_mem_rows
from hwflow.sim.isa_model import run_program

#: P = 4, L = 8 (G = 4, R = 4): every mode up to M = 8, and int4 (2L = 16 divides 32).
CFG = AccelConfig(chains=4, chain_len=8, mem_ports=1, port_bytes=32, act_depth=1024,
                  weight_depth=128)


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(37, 64), torch.nn.ReLU(), torch.nn.Linear(64, 48),
                               torch.nn.ReLU(), torch.nn.Linear(48, 10))


def _compile(cfg, sparsity="dense", weights="int8", edit=None, rows=5):
    torch.manual_seed(1)
    x = torch.randn(rows, 37)
    g = from_module(_mlp(), "mlp", example=x)
    q = run_flow(g, FlowOptions(TileTarget.from_config(cfg), calib=x.numpy(), sparsity=sparsity,
                                weights=weights))
    if edit:
        edit(q)
    in_name = q.graph["inputs"][0]
    xq = g8.quantize(x.numpy(), q.nodes[in_name]["op"].out.scale)
    return q, x.numpy(), in_name, lower(q, cfg, {in_name: xq})


def _check_exact(cfg, q, x, in_name, low):
    """golden (the interpreter) == ISA functional model on the lowered program."""
    image, stats = run_program(cfg, low.image, low.prog_base)
    _, values = run(q, {in_name: x}, intermediates=True)
    for o in q.graph["outputs"]:
        np.testing.assert_array_equal(read_tensor(image, low.memory_map, o),
                                      values[q.nodes[o]["op"].inputs[0]])
    return stats


def _matmuls(low):
    return [i for i in low.program if i.op == Opcode.MATMUL]


def _linears(low):
    return [la for la in low.layers if la["kind"] == "qlinear"]


@pytest.mark.parametrize("sparsity,weights,label", [
    ("dense", "int8", "int8 dense"), ("2:4", "int8", "int8 2:4"), ("1:4", "int8", "int8 1:4"),
    ("2:8", "int8", "int8 2:8"), ("dense", "int4", "int4 dense"), ("2:4", "int4", "int4 2:4"),
])
def test_formats_lower_exactly(sparsity, weights, label):
    q, x, in_name, low = _compile(CFG, sparsity, weights)
    stats = _check_exact(CFG, q, x, in_name, low)
    layers, mms = _linears(low), _matmuls(low)
    assert [la["format"] for la in layers] == [label] * 3
    fmt = layers[0]
    n, m = (1, 1) if sparsity == "dense" else map(int, sparsity.split(":"))
    r = m // n
    for la, ins in zip(layers, mms, strict=True):
        assert la["engine"] == "mpe" and la["requested_format"] == label
        assert la["sparsity"] == sparsity and la["weights"] == weights
        assert la["macs"] == la["rows"] * la["in_features"] * la["out_features"]
        assert ins.n_tiles == la["n_tiles"] == -(-la["out_features"] // (CFG.chains * r))
        assert ins.lgm == m.bit_length() - 1 and ins.lgr == r.bit_length() - 1
        assert bool(ins.flags & FLAG_INT4) == (weights == "int4")
        assert ins.tile_mem_rows == la["tile_mem_rows"]
        assert la["weight_bytes"] == ins.n_tiles * ins.tile_mem_rows * CFG.row_bytes
    assert stats.weight_read_bytes == sum(la["weight_bytes"] for la in layers)
    assert stats.mpe_kgroups == sum(i.n_tiles * -(-i.rows // 2) * i.k_words for i in mms)
    assert low.memory_map.region(f"weights:{fmt['name']}").layout.startswith(label)


def test_mixed_precision_program():
    q, x, in_name, low = _compile(CFG, "2:4", "mixed")
    _check_exact(CFG, q, x, in_name, low)
    assert {la["weights"] for la in _linears(low)} == {"int8", "int4"}


def test_fallback_when_the_engine_lacks_the_mode():
    """2:8 on L = 4 (M > L): the pruned weights also satisfy 2:4, which the engine runs."""
    cfg = AccelConfig(chains=4, chain_len=4, mem_ports=1, port_bytes=16, act_depth=1024,
                      weight_depth=128)
    q, x, in_name, low = _compile(cfg, "2:8", "int8")
    _check_exact(cfg, q, x, in_name, low)
    for la in _linears(low):
        assert la["requested_format"] == "int8 2:8" and la["format"] == "int8 2:4"


@pytest.mark.parametrize("build,weights,label", [
    (dict(sparse=False), "int8", "int8 dense"),
    (dict(int4=False), "int4", "int8 2:4"),
    (dict(sparse=False, int4=False), "int4", "int8 dense"),
])
def test_fallback_without_sparse_selectors_or_dequantizer(build, weights, label):
    cfg = replace(CFG, **build)
    q, x, in_name, low = _compile(cfg, "2:4", weights)
    _check_exact(cfg, q, x, in_name, low)
    assert {la["format"] for la in _linears(low)} == {label}


def _strip_format_attrs(q):
    """Make the graph look like one from before weight formats (no sparsity/wbits/w4)."""
    for name in q.nodes:
        op = q.nodes[name]["op"]
        if op.kind == "qlinear":
            attrs = {k: v for k, v in op.attrs.items()
                     if k not in ("sparsity", "wbits", "w4", "w4_scale")}
            q.nodes[name]["op"] = replace(op, attrs=types.MappingProxyType(attrs))


def test_old_graphs_run_dense_int8():
    q, x, in_name, low = _compile(CFG, "2:4", "int8", edit=_strip_format_attrs)
    _check_exact(CFG, q, x, in_name, low)
    assert {la["format"] for la in _linears(low)} == {"int8 dense"}
    assert all(i.lgm == i.lgr == 0 for i in _matmuls(low))


def test_weight_ring_too_small_names_layer_need_and_depth():
    # int4 2:4 tiles: K = 37 has R + 2·3 + 1 = 11 rows (2 x 22 entries fit 48), K = 64 has
    # R + 2·4 + 1 = 13 rows (2 x 26 do not)
    cfg = replace(CFG, weight_depth=48)
    assert tile_mem_rows(cfg, LayerFormat(2, 4, 4), 8) == 4 + 8 + 1
    with pytest.raises(MappingError, match=r"layer 'linear_1' \(int4 2:4, K=64\) needs 2 x 26 "
                                           r"weight-ring entries.*weight_depth=48"):
        _compile(cfg, "2:4", "int4")


def test_same_inputs_give_identical_images():
    a = _compile(CFG, "1:4", "mixed")[3]
    b = _compile(CFG, "1:4", "mixed")[3]
    assert a.image == b.image and a.layers == b.layers
