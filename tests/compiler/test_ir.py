from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from hwflow.compiler import (
    OP_KINDS,
    CompileError,
    FlowOptions,
    Op,
    TensorType,
    load_graph,
    run,
    run_flow,
    save_graph,
)
from hwflow.compiler.ir import format_graph, op_of
from hwflow.compiler.ops import DECODER_KINDS, FLOAT_KINDS, FUSED_KINDS, QUANT_KINDS
from hwflow.compiler.spec import ARITY


def test_every_kind_documented_once():
    assert set(OP_KINDS) == FLOAT_KINDS | QUANT_KINDS | DECODER_KINDS
    assert set(ARITY) == set(OP_KINDS)          # every kind's inputs, defined once
    assert FUSED_KINDS <= QUANT_KINDS
    assert all(isinstance(v, str) and "\n" not in v for v in OP_KINDS.values())


def test_op_is_immutable():
    w = np.ones((2, 3), dtype=np.float32)
    op = Op("linear", ("x",), TensorType((4, 2), "f32"), {"weight": w, "bias": None})
    w[0, 0] = 5  # the op holds its own copy
    assert op.attrs["weight"][0, 0] == 1
    with pytest.raises(ValueError):
        op.attrs["weight"][0, 0] = 2
    with pytest.raises(TypeError):
        op.attrs["bias"] = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.kind = "relu"
    assert op.with_attrs(bias=None).attrs["weight"] is not None


def _same(g1, g2):
    assert list(g1.nodes) == list(g2.nodes)
    assert set(g1.edges) == set(g2.edges)
    assert g1.graph == g2.graph
    for n in g1.nodes:
        a, b = op_of(g1, n), op_of(g2, n)
        assert (a.kind, a.inputs, a.out, a.tile, a.mem, a.source) == \
               (b.kind, b.inputs, b.out, b.tile, b.mem, b.source)
        assert set(a.attrs) == set(b.attrs)
        for k, v in a.attrs.items():
            if isinstance(v, np.ndarray):
                assert v.dtype == b.attrs[k].dtype and np.array_equal(v, b.attrs[k])
                assert not b.attrs[k].flags.writeable
            else:
                assert v == b.attrs[k] and type(v) is type(b.attrs[k])


@pytest.mark.parametrize("stop", ["float", "quantize", "fuse", "memory_plan"])
def test_save_load_round_trip(tmp_path, float_graph, target, x3, stop):
    g = float_graph if stop == "float" else run_flow(
        float_graph, FlowOptions(target, x3.numpy()), stop_after=stop)
    path = save_graph(g, tmp_path / "g")
    assert path.name == "g.json" and (tmp_path / "g.npz").exists()
    g2 = load_graph(path)
    _same(g, g2)
    x = {"x": x3.numpy()}
    for k, v in run(g, x).items():
        assert np.array_equal(v, run(g2, x)[k])
    assert format_graph(g) == format_graph(g2)


def test_save_is_byte_identical(tmp_path, float_graph):
    save_graph(float_graph, tmp_path / "a.json")
    save_graph(float_graph, tmp_path / "b.json")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    ja = (tmp_path / "a.json").read_text().replace('"a.npz"', '"X"')
    jb = (tmp_path / "b.json").read_text().replace('"b.npz"', '"X"')
    assert ja == jb


def test_load_rejects_non_ir(tmp_path):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(CompileError, match="not a saved hwflow IR"):
        load_graph(tmp_path / "x.json")
    with pytest.raises(CompileError, match="cannot read IR file"):
        load_graph(tmp_path / "missing.json")


@pytest.mark.parametrize("stop", ["precision", "quantize", "memory_plan"])
def test_weight_formats_round_trip(tmp_path, float_graph, target, x3, stop):
    """sparsity (a tuple), wbits, the int4 arrays (int8 codes, uint8 scales) and the
    per-layer weight_formats record survive saving: npz for arrays, JSON for the rest."""
    g = run_flow(float_graph, FlowOptions(target, x3.numpy(), sparsity="2:4", weights="mixed"),
                 stop_after=stop)
    g2 = load_graph(save_graph(g, tmp_path / "g"))
    _same(g, g2)
    assert g2.graph["weight_formats"]["linear_1"]["weights"] == "int4"
    a = op_of(g2, "linear_1").attrs
    assert a["sparsity"] == (2, 4) and a["wbits"] == 4
    if stop != "precision":
        assert a["w4"].dtype == np.int8 and a["w4_scale"].dtype == np.uint8
    x = {"x": x3.numpy()}
    assert np.array_equal(run(g, x)["output"], run(g2, x)["output"])


def test_graph_saved_without_weight_formats_loads(tmp_path, float_graph, target, x3):
    """An IR saved before sparsity/wbits existed (no such attributes) loads, passes the spec
    check and continues the flow as dense int8."""
    g = run_flow(float_graph, FlowOptions(target, x3.numpy()), stop_after="fuse")
    path = save_graph(g, tmp_path / "old")
    doc = json.loads(path.read_text())
    for node in doc["nodes"]:
        node["attrs"].pop("sparsity", None)
        node["attrs"].pop("wbits", None)
    doc["graph"].pop("weight_formats", None)
    path.write_text(json.dumps(doc))
    old = load_graph(path)
    assert "sparsity" not in op_of(old, "linear").attrs
    done = run_flow(old, FlowOptions(target))
    x = {"x": x3.numpy()}
    assert np.array_equal(run(done, x)["output"], run(g, x)["output"])
