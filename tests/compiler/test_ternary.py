"""Ternary (BitNet b1.58) weights on the MLP path: precision, quantize, interpreter, passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwflow.compiler import FlowOptions, check, fuse, quantize, run, run_flow
from hwflow.compiler.ir import load_graph, op_of, save_graph
from hwflow.compiler.passes import _linears, precision, sparsify
from hwflow.golden import int8 as g8
from hwflow.golden import ternary as gt
from hwflow.golden.metrics import cosine

from .conftest import TARGET
from .models import make


def _inputs(x):
    return {"x": np.asarray(x, dtype=np.float64)}


def _rows(g, x):
    """Output of a 3-row graph on every 3 rows of ``x``, concatenated."""
    return np.concatenate([run(g, _inputs(x[i:i + 3]))["output"] for i in range(0, len(x), 3)])


def _calib(seed=2, rows=63):
    torch.manual_seed(seed)
    return torch.randn(rows, 37).numpy()


@pytest.fixture(scope="module")
def mlp_graph():
    from hwflow.compiler import from_module

    torch.manual_seed(1)
    return from_module(make(0), "mlp", example=torch.randn(3, 37))


@pytest.fixture(scope="module")
def ternary_mlp():
    """The MLP with every weight already ternary (absmean of its float weight, ``s * t``)."""
    from hwflow.compiler import from_module

    m = make(0)
    scales = {}
    with torch.no_grad():
        for name, lin in (("up", m.up), ("down", m.down), ("head", m.head)):
            t, s = gt.ternarize_absmean(lin.weight.numpy())
            lin.weight.copy_(torch.from_numpy((t * s).astype(np.float32)))
            scales[name] = (t, float(np.float32(s)))
    torch.manual_seed(1)
    return from_module(m, "mlp_t", example=torch.randn(3, 37)), scales


def test_precision_ternary_records_and_marks(mlp_graph):
    p = check(precision(sparsify(mlp_graph), "ternary"))
    wf = p.graph["weight_formats"]
    for n in _linears(p):
        a = op_of(p, n).attrs
        assert a["wbits"] == 2 and a["sparsity"] == (1, 1)
        assert wf[n]["weights"] == "ternary" and wf[n]["ternary_from"] == "absmean"
        assert wf[n]["sparsity"] == "dense" and 0 < wf[n]["ternary_error"] < 1
        t, s = gt.ternarize_absmean(op_of(mlp_graph, n).attrs["weight"])
        assert wf[n]["ternary_scale"] == pytest.approx(s)
        # the float weight is now the ternarized one (what calibration sees)
        np.testing.assert_array_equal(a["weight"], (t * s).astype(np.float32))
    # the input graph is untouched
    assert op_of(mlp_graph, "linear").attrs.get("wbits") is None


def test_ternary_ignores_nm_sparsity_with_a_note():
    from hwflow.compiler import from_module

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(16, 32), torch.nn.Linear(32, 8)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    g = from_module(Two().eval(), "two", example=torch.randn(2, 16))
    p = check(precision(sparsify(g, "2:4"), "ternary"))
    for n in _linears(p):
        assert op_of(p, n).attrs["sparsity"] == (1, 1)
        assert "TLMM" in p.graph["weight_formats"][n]["note"]
        assert p.graph["weight_formats"][n]["sparsity"] == "dense"


def test_quantize_ternary_attrs_and_interpreter(mlp_graph):
    x = _calib()
    p = precision(sparsify(mlp_graph), "ternary")
    q = check(quantize(p, x))
    for n in _linears(p):
        a = op_of(q, n).attrs
        t, s = gt.ternarize_absmean(op_of(mlp_graph, n).attrs["weight"])
        assert a["ternary"] is True and a["wbits"] == 2 and a["sparsity"] == (1, 1)
        assert a["weight"].dtype == np.int8 and np.array_equal(a["weight"], t)
        assert a["w_scale"].shape == (t.shape[0],)
        np.testing.assert_allclose(a["w_scale"], np.float32(s), rtol=1e-7)
        # units of acc * m: mult / 2**shift = s_x * s / (127 * s_out)
        s_x, s_out = op_of(q, op_of(q, n).inputs[0]).out.scale, op_of(q, n).out.scale
        real = s_x * a["w_scale"] / (127 * s_out)
        np.testing.assert_allclose(a["mult"] / 2.0 ** a["shift"], real, rtol=2e-4)
        b = op_of(mlp_graph, n).attrs.get("bias")
        if b is not None:
            np.testing.assert_array_equal(a["bias"], np.rint(b * 127 / (s_x * a["w_scale"])))
    # the interpreter runs a ternary qlinear as absmax_quant + matmul + requantize(acc * m)
    xq = g8.quantize(x[:3], op_of(q, "x").out.scale)
    a = op_of(q, "linear").attrs
    hq, m = gt.absmax_quant(xq)
    want = g8.requantize(g8.matmul(hq, a["weight"]) * m[:, None], a["bias"], a["mult"],
                         a["shift"], a["relu"], None, 0)
    # the same through the TLMM table lookup of the group indices (G = 3)
    acc = gt.lookup_matmul(hq, gt.encode_groups(a["weight"], 3), 3)
    np.testing.assert_array_equal(acc, g8.matmul(hq, a["weight"]))
    got = run(q, _inputs(x[:3]), intermediates=True)[1]["linear"]
    np.testing.assert_array_equal(got, want)


def test_ternary_golden_vs_float_figures(mlp_graph):
    """Reported: golden vs the float model, and vs the ternarized float model (what the
    absmean rule leaves of it; the integer error alone)."""
    x = _calib()
    p = precision(sparsify(mlp_graph), "ternary")
    g = run_flow(mlp_graph, FlowOptions(TARGET, x, weights="ternary"))
    f, ft, o = _rows(mlp_graph, x), _rows(p, x), _rows(g, x)
    print(f"ternary MLP: golden vs float cosine {cosine(f, o):.4f}, golden vs ternarized float "
          f"{cosine(ft, o):.4f}, ternarized float vs float {cosine(f, ft):.4f}")
    assert cosine(ft, o) > 0.99
    assert cosine(f, o) > 0.8


def test_detects_already_ternary_weights(ternary_mlp):
    g, scales = ternary_mlp
    q = check(quantize(precision(sparsify(g), "ternary"), _calib()))
    wf = q.graph["weight_formats"]
    for n, (t, s) in zip(_linears(g), scales.values(), strict=True):
        assert wf[n]["ternary_from"] == "detected" and wf[n]["ternary_error"] == 0.0
        a = op_of(q, n).attrs
        np.testing.assert_array_equal(a["weight"], t)
        assert np.all(a["w_scale"] == s)            # exact: the float32 scale of the model
    x = _calib()
    f, o = _rows(g, x), _rows(q, x)
    print(f"already-ternary MLP: golden vs float cosine {cosine(f, o):.4f}")
    assert cosine(f, o) > 0.99


def test_later_passes_exact_on_ternary(mlp_graph, tmp_path):
    """fuse keeps the residual qadd of a ternary layer; tile/schedule/memory_plan are layout
    only (bit-exact); the graph saves and loads with its ternary attributes."""
    x = _calib()
    q = check(quantize(precision(sparsify(mlp_graph), "ternary"), x))
    fz = check(fuse(q))
    assert any(op_of(fz, n).kind == "qadd" for n in fz.nodes)      # residual not fused
    assert all(op_of(fz, n).kind != "relu" for n in fz.nodes)      # relu fused (exact)
    full = run_flow(q, FlowOptions(TARGET, x, weights="ternary"), start_after="quantize")
    assert full.graph["step"] == "memory_plan"
    for name in _linears(mlp_graph):
        assert op_of(full, name).tile is not None
    ref = run(fz, _inputs(x[:3]))["output"]
    np.testing.assert_array_equal(run(full, _inputs(x[:3]))["output"], ref)
    np.testing.assert_array_equal(run(q, _inputs(x[:3]))["output"], ref)
    save_graph(full, tmp_path / "g.json")
    back = check(load_graph(tmp_path / "g.json"))
    assert op_of(back, "linear").attrs["ternary"] is True
    np.testing.assert_array_equal(run(back, _inputs(x[:3]))["output"], ref)
