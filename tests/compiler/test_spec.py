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


# ------------------------------------------------------------------------------ weight formats

@pytest.fixture
def int4_sparse(float_graph, target, x3):
    """Fused graph with every qlinear 2:4 and int4 (the richest attribute set)."""
    return run_flow(float_graph, FlowOptions(target, x3.numpy(), sparsity="2:4",
                                             weights="int4"), stop_after="fuse")


def test_weight_format_graphs_pass(int4_sparse, float_graph, target, x3):
    assert check(int4_sparse) is int4_sparse
    g = run_flow(float_graph, FlowOptions(target, x3.numpy(), sparsity="2:4"),
                 stop_after="precision")
    assert check(g) is g


def test_weight_must_satisfy_recorded_sparsity(fused, int4_sparse):
    q = _qlinear(fused)
    _raises(_broken(fused, q, sparsity=(1, 4)), q, "does not satisfy its recorded 1:4")
    q = _qlinear(int4_sparse)
    w = op_of(int4_sparse, q).attrs["weight"].copy()
    w[0, :4] = 1                                          # 4 nonzeros in a group of 4
    _raises(_broken(int4_sparse, q, weight=w), q, "does not satisfy its recorded 2:4")


def test_sparsity_and_wbits_values(fused, float_graph):
    q = _qlinear(fused)
    _raises(_broken(fused, q, sparsity=(2, 6)), q, "M must be a power of two up to 16")
    _raises(_broken(fused, q, sparsity=(5, 4)), q, "1 <= N <= M")
    _raises(_broken(fused, q, sparsity=2), q, "pair of ints")
    _raises(_broken(fused, q, wbits=3), q, "'wbits' must be 8, 4 or 2")
    # wbits 2 is ternary: the flag must say so (and vice versa)
    _raises(_broken(fused, q, wbits=2), q, "must be True exactly when wbits is 2")
    _raises(_broken(fused, q, ternary=True), q, "must be True exactly when wbits is 2")
    _raises(_broken(fused, q, wbits=4), q, "attribute 'w4' must be an array")
    _raises(_broken(fused, q, w4=np.zeros((1, 1), np.int8)), q, "int4 layers only")
    # the float level checks the recorded pattern too
    _raises(_broken(float_graph, "linear", sparsity=(2, 4)), "linear", "recorded 2:4")


def test_int4_consistency(int4_sparse):
    q = _qlinear(int4_sparse)
    a = op_of(int4_sparse, q).attrs
    w = a["weight"].copy()
    nz = np.argwhere(w)[0]
    w[tuple(nz)] += 1
    _raises(_broken(int4_sparse, q, weight=w), q, "differs from dequantize_int4")
    w4 = a["w4"].copy()
    w4[0, 0] = 8
    _raises(_broken(int4_sparse, q, w4=w4), q, "w4 codes outside [-8, 7]")
    s = a["w4_scale"].copy()
    s[0, 0] = 0
    _raises(_broken(int4_sparse, q, w4_scale=s), q, "w4_scale outside [1, 15]")
    _raises(_broken(int4_sparse, q, w4_scale=s[:, :1].astype(np.int8)), q, "must be uint8")
    _raises(_broken(int4_sparse, q, w4_scale=a["w4_scale"][:, :1]), q, "has shape")


def test_missing_sparsity_and_wbits_mean_dense_int8(fused):
    """Graphs saved before weight formats existed carry neither attribute: still valid."""
    g = copy_graph(fused)
    for n in g.nodes:
        op = op_of(g, n)
        if op.kind == "qlinear":
            attrs = {k: v for k, v in op.attrs.items() if k not in ("sparsity", "wbits")}
            g.nodes[n]["op"] = replace(op, attrs=types.MappingProxyType(attrs))
    assert check(g) is g
