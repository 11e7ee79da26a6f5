from __future__ import annotations

import types
from dataclasses import replace

import numpy as np
import pytest

from hwflow.compiler import FlowOptions, SpecError, check, run_flow
from hwflow.compiler.ir import copy_graph, op_of, set_op


@pytest.fixture
def planned(float_graph, target, x3):
    return run_flow(float_graph, FlowOptions(target, x3.numpy()))


@pytest.fixture
def fused(float_graph, target, x3):
    return run_flow(float_graph, FlowOptions(target, x3.numpy()), stop_after="fuse")


def _qlinear(g):
    """The residual qlinear (two inputs): the richest node to break."""
    return next(n for n in g.nodes
                if op_of(g, n).kind == "qlinear" and len(op_of(g, n).inputs) == 2)


def _broken(g, name, **attrs):
    g = copy_graph(g)
    g.nodes[name]["op"] = op_of(g, name).with_attrs(**attrs)
    return g


def _raises(g, node, rule):
    with pytest.raises(SpecError) as e:
        check(g)
    msg = str(e.value)
    assert f"'{node}'" in msg and rule in msg, msg
    assert "\n" not in msg


def test_valid_graphs_pass(float_graph, fused, planned):
    for g in (float_graph, fused, planned):
        assert check(g) is g


def test_unknown_kind(float_graph):
    g = copy_graph(float_graph)
    g.nodes["relu"]["op"] = replace(op_of(g, "relu"), kind="gelu")
    _raises(g, "relu", "unknown op kind 'gelu'")


def test_missing_input(float_graph):
    g = copy_graph(float_graph)
    g.nodes["relu"]["op"] = replace(op_of(g, "relu"), inputs=("ghost",))
    _raises(g, "relu", "input 'ghost' does not exist")


def test_edges_must_match_inputs(float_graph):
    g = copy_graph(float_graph)
    g.add_edge("x", "relu")
    _raises(g, "relu", "do not match op inputs")


def test_cycle(float_graph):
    g = copy_graph(float_graph)
    op = op_of(g, "linear")
    set_op(g, "linear", replace(op, inputs=("relu_1",)))
    with pytest.raises(SpecError, match="graph has a cycle"):
        check(g)


def test_dtype_and_scale(fused):
    q = _qlinear(fused)
    g = copy_graph(fused)
    g.nodes[q]["op"] = replace(op_of(g, q), out=replace(op_of(g, q).out, dtype="f32"))
    _raises(g, q, "expected i8")
    g = copy_graph(fused)
    g.nodes[q]["op"] = replace(op_of(g, q), out=replace(op_of(g, q).out, scale=None))
    _raises(g, q, "positive finite scale")


def test_float_op_in_quantized_graph(fused):
    g = copy_graph(fused)
    n = next(n for n in g.nodes
             if op_of(g, n).kind == "qlinear" and len(op_of(g, n).inputs) == 1)
    g.nodes[n]["op"] = replace(op_of(g, n), kind="linear")
    _raises(g, n, "does not belong in a quant-level graph")


def test_weight_shape(fused):
    q = _qlinear(fused)
    w = op_of(fused, q).attrs["weight"]
    _raises(_broken(fused, q, weight=w[:, :-1]), q, "input features")


def test_weight_dtype(fused):
    q = _qlinear(fused)
    w = op_of(fused, q).attrs["weight"].astype(np.int16)
    _raises(_broken(fused, q, weight=w), q, "must be int8")


def test_accumulator_bound(fused):
    q = _qlinear(fused)
    bias = op_of(fused, q).attrs["bias"].copy()
    bias[0] = 2**31 - 100
    _raises(_broken(fused, q, bias=bias), q, "int32 accumulator bound")


def test_mult_shift_res_mult(fused):
    q = _qlinear(fused)
    mult = op_of(fused, q).attrs["mult"].copy()
    mult[-1] = 70000
    _raises(_broken(fused, q, mult=mult), q, "u16")
    _raises(_broken(fused, q, shift=48), q, "shift 48 outside [0, 47]")
    _raises(_broken(fused, q, relu=1), q, "'relu' must be a bool")
    single = next(n for n in fused.nodes
                  if op_of(fused, n).kind == "qlinear" and len(op_of(fused, n).inputs) == 1)
    _raises(_broken(fused, single, res_mult=5), single, "res_mult must be 0")


def test_writeable_array(fused):
    q = _qlinear(fused)
    g = copy_graph(fused)
    op = op_of(g, q)
    w = np.array(op.attrs["weight"])  # a writeable copy, smuggled past freeze_attrs
    g.nodes[q]["op"] = replace(op, attrs=types.MappingProxyType(dict(op.attrs, weight=w)))
    _raises(g, q, "writeable")


def test_tile_rules(planned):
    q = _qlinear(planned)
    g = copy_graph(planned)
    g.nodes[q]["op"] = replace(op_of(g, q), tile=None)
    _raises(g, q, "no tile info")
    g = copy_graph(planned)
    t = op_of(g, q).tile
    g.nodes[q]["op"] = replace(op_of(g, q), tile=replace(t, k_words=t.k_words + 1))
    _raises(g, q, "expected")


def test_schedule_rules(planned):
    g = copy_graph(planned)
    s = g.graph["schedule"]
    s[0], s[1] = s[1], s[0]
    _raises(g, s[0], "scheduled before its input")
    g = copy_graph(planned)
    g.graph["schedule"] = g.graph["schedule"][:-1]
    with pytest.raises(SpecError, match="every node exactly once"):
        check(g)


def test_memory_rules(planned):
    q = _qlinear(planned)
    g = copy_graph(planned)
    g.nodes[q]["op"] = replace(op_of(g, q), mem=None)
    _raises(g, q, "no activation-buffer allocation")
    # move a qlinear's output onto its own input: both are live while it runs
    g = copy_graph(planned)
    x = op_of(g, q).inputs[0]
    g.nodes[q]["op"] = replace(op_of(g, q), mem=replace(op_of(g, q).mem,
                                                        addr=op_of(g, x).mem.addr))
    with pytest.raises(SpecError, match="overlaps .* while both are live"):
        check(g)
    g = copy_graph(planned)
    g.nodes[q]["op"] = replace(op_of(g, q), mem=replace(op_of(g, q).mem, addr=10**6))
    _raises(g, q, "outside the activation buffer")
    g = copy_graph(planned)
    g.nodes[q]["op"] = replace(op_of(g, q), mem=replace(op_of(g, q).mem, words=1))
    _raises(g, q, "do not match shape")
