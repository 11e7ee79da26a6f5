from __future__ import annotations

import numpy as np
import pytest
import torch

from hwflow.compiler import (
    FrontendError,
    UnsupportedOpError,
    from_exported_program,
    load_model,
    run,
)
from hwflow.compiler.frontend import detect_format
from hwflow.compiler.ir import op_of

from .conftest import as_np
from .models import ConvNet, make

TOL = 1e-4  # float IR (float64 interpreter) vs the float32 torch model


def _max_err(graph, model, x):
    out = run(graph, {graph.graph["inputs"][0]: as_np(x)})
    (name,) = graph.graph["outputs"]
    with torch.no_grad():
        return float(np.abs(out[name] - as_np(model(x))).max())


def _kinds(graph):
    return sorted(op_of(graph, n).kind for n in graph.nodes)


def test_export_archive(tmp_path, mlp, x3):
    path = tmp_path / "mlp.bin"  # extension means nothing: detection is by content
    torch.export.save(torch.export.export(mlp, (x3,)), path)
    assert detect_format(path) == "export"
    g = load_model(path)
    assert g.graph["name"] == "mlp"
    assert _kinds(g) == ["add", "input", "linear", "linear", "linear", "output", "relu", "relu"]
    assert op_of(g, g.graph["inputs"][0]).out.shape == (3, 37)
    assert _max_err(g, mlp, x3) < TOL


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_archive(tmp_path, mlp, how):
    x = torch.randn(5, 37)
    ts = torch.jit.script(mlp) if how == "script" else torch.jit.trace(mlp, x)
    path = tmp_path / "mlp.pt"
    ts.save(str(path))
    assert detect_format(path) == "torchscript"
    g = load_model(path, rows=5)
    assert op_of(g, g.graph["inputs"][0]).out.shape == (5, 37)
    assert _kinds(g) == ["add", "input", "linear", "linear", "linear", "output", "relu", "relu"]
    assert _max_err(g, mlp, x) < TOL


def test_pickled_module_refused_without_trust(tmp_path, mlp):
    path = tmp_path / "mlp.pt"
    torch.save(mlp, path)
    with pytest.raises(FrontendError) as e:
        load_model(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert "execute" in msg and "--trust-model" in msg and "torch.export.save" in msg


def test_pickled_module_with_trust(tmp_path, mlp):
    path = tmp_path / "mlp.pt"
    torch.save(mlp, path)
    g = load_model(path, trust_model=True, rows=2)
    assert op_of(g, g.graph["inputs"][0]).out.shape == (2, 37)
    assert _max_err(g, mlp, torch.randn(2, 37)) < TOL


def test_refusal_does_not_run_pickled_code(tmp_path):
    # A pickle whose loading would create a file: refused, and the file never appears.
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path, pickle_module=pickle)
    assert not marker.exists()
    with pytest.raises(FrontendError):
        load_model(path)
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(FrontendError, match="no such file"):
        load_model(tmp_path / "nope.pt2")


def test_garbage_file(tmp_path):
    path = tmp_path / "model.pt2"
    path.write_bytes(b"definitely not a model\n" * 10)
    with pytest.raises(FrontendError, match="not a PyTorch model file"):
        load_model(path)


def test_empty_zip_is_not_a_model(tmp_path):
    import zipfile

    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(FrontendError, match="not a PyTorch model file"):
        load_model(path)


def test_state_dict_file(tmp_path, mlp):
    path = tmp_path / "weights.pt"
    torch.save(mlp.state_dict(), path)
    with pytest.raises(FrontendError, match="state_dict"):
        load_model(path)


def test_tensor_file(tmp_path):
    path = tmp_path / "t.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(FrontendError, match="not a model"):
        load_model(path)


def test_conv2d_unsupported(tmp_path):
    path = tmp_path / "conv.pt2"
    torch.export.save(torch.export.export(ConvNet().eval(), (torch.randn(2, 1, 4, 4),)), path)
    with pytest.raises(UnsupportedOpError) as e:
        load_model(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert "aten.conv2d" in msg and "node 'conv2d'" in msg
    assert "models.py:" in msg
    import inspect

    from . import models
    lines, first = inspect.getsourcelines(models.ConvNet.forward)
    line = first + next(i for i, s in enumerate(lines) if "conv2d: unsupported" in s)
    assert msg.rstrip().endswith(f"models.py:{line}") or f"models.py:{line};" in msg


def test_decomposed_linear_forms(mlp):
    # addmm / mm with permuted weights and view glue, as run_decompositions() produces them.
    x = torch.randn(2, 3, 37)
    ep = torch.export.export(mlp, (x,)).run_decompositions()
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "aten.addmm.default" in targets and "aten.mm.default" in targets
    g = from_exported_program(ep, "dec")
    assert _max_err(g, mlp, x) < TOL
    # canonicalize removes the view -> addmm -> view glue around every matmul
    assert "reshape" not in _kinds(g)


def test_reshape_kept(tmp_path):
    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 8)

        def forward(self, x):
            return self.fc(x).reshape(2, -1).contiguous().clone()

    m = Flat().eval()
    x = torch.randn(2, 3, 16)
    torch.export.save(torch.export.export(m, (x,)), tmp_path / "f.pt2")
    g = load_model(tmp_path / "f.pt2")
    assert "reshape" in _kinds(g)
    assert _max_err(g, m, x) < TOL


def test_input_reshape_is_done_by_the_host(tmp_path):
    class FlattenFirst(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(15, 4)

        def forward(self, x):
            return self.fc(torch.flatten(x, 1))

    m = FlattenFirst().eval()
    x = torch.randn(2, 3, 5)
    torch.export.save(torch.export.export(m, (x,)), tmp_path / "f.pt2")
    g = load_model(tmp_path / "f.pt2")
    (name,) = g.graph["inputs"]
    assert "reshape" not in _kinds(g)
    assert op_of(g, name).out.shape == (2, 15)
    assert list(op_of(g, name).attrs["host_shape"]) == [2, 3, 5]
    assert _max_err(g, m, x.reshape(2, 15)) < TOL


def test_unsupported_add_alpha():
    class Sub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            return torch.sub(self.fc(x), x)

    ep = torch.export.export(Sub().eval(), (torch.randn(2, 4),))
    with pytest.raises(UnsupportedOpError, match="aten.sub"):
        from_exported_program(ep)


def test_make_is_deterministic():
    a, b = make(3), make(3)
    assert torch.equal(a.up.weight, b.up.weight)


# ------------------------------------------------------------------- hostile and broken models

class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x)


@pytest.mark.parametrize("value,kind", [(float("nan"), "NaN"), (float("inf"), "Inf")])
def test_non_finite_weights_are_refused_by_name(capfd, tmp_path, value, kind):
    from tests._cli import assert_no_build_left, assert_one_line_error, run_cli

    m = _Linear()
    with torch.no_grad():
        m.fc.weight[1, 2] = value
    path = tmp_path / "nan.pt2"
    torch.export.save(torch.export.export(m, (torch.randn(2, 8),)), str(path))
    code, out, err = run_cli(capfd, "compile", path, "--board", "u280", "-o", tmp_path / "out")
    assert_one_line_error(code, err, "tensor 'fc.weight'", "1 non-finite value", kind)
    assert "nan" not in out.lower()
    assert_no_build_left(tmp_path)


def test_non_finite_torchscript_weights_are_refused(tmp_path):
    m = _Linear()
    with torch.no_grad():
        m.fc.bias[:] = float("-inf")
    path = tmp_path / "inf.pt"
    torch.jit.save(torch.jit.trace(m, torch.randn(2, 8)), str(path))
    with pytest.raises(FrontendError, match="tensor 'fc.bias' holds 4 non-finite values"):
        load_model(path)


class _Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        if bool(x.sum() > 0):
            return self.fc(x)
        return self.fc(-x)


def test_torchscript_control_flow_is_named_not_blamed_on_linears(tmp_path):
    path = tmp_path / "branchy.pt"
    torch.jit.save(torch.jit.script(_Branchy()), str(path))
    with pytest.raises(UnsupportedOpError) as e:
        load_model(path)
    msg = str(e.value)
    assert "prim::If" in msg and "control flow" in msg and "torch.export" in msg
    assert "test_frontend.py:" in msg and "no linear layer" not in msg
