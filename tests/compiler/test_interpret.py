from __future__ import annotations

import numpy as np
import pytest
import torch

from hwflow.compiler import CompileError, FlowOptions, run, run_flow
from hwflow.compiler.ir import op_of
from hwflow.golden import int8 as g8
from hwflow.golden.metrics import cosine


def test_float_graph_matches_torch(float_graph, mlp):
    x = torch.randn(3, 37)
    out = run(float_graph, {"x": x.numpy()})["output"]
    with torch.no_grad():
        assert np.abs(out - mlp(x).numpy()).max() < 1e-4


def test_quantized_intermediates(float_graph, target, x3):
    g = run_flow(float_graph, FlowOptions(target, x3.numpy()))
    outs, tensors = run(g, {"x": x3.numpy()}, intermediates=True)
    i8_nodes = {n for n in g.nodes if op_of(g, n).kind != "output"}
    assert set(tensors) == i8_nodes
    assert all(v.dtype == np.int8 for v in tensors.values())
    assert np.array_equal(tensors["x"], g8.quantize(x3.numpy(), op_of(g, "x").out.scale))
    # outputs are the dequantized int8 result of the producing node
    src = op_of(g, "output").inputs[0]
    assert np.array_equal(outs["output"], g8.dequantize(tensors[src], op_of(g, src).out.scale))
    assert outs["output"].dtype == np.float64


def test_quantized_close_to_float(float_graph, mlp, target, x3):
    g = run_flow(float_graph, FlowOptions(target, x3.numpy()))
    with torch.no_grad():
        ref = mlp(x3).numpy()
    assert cosine(run(g, {"x": x3.numpy()})["output"], ref) > 0.999


def test_missing_and_misshaped_input(float_graph):
    with pytest.raises(CompileError, match="no value"):
        run(float_graph, {})
    with pytest.raises(CompileError, match="shape"):
        run(float_graph, {"x": np.zeros((4, 37))})
