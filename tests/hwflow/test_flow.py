"""The compile flow: model formats, determinism, atomic build folders."""

import json

import numpy as np
import pytest
import torch

from hwflow.cli import main
from hwflow.compiler import load_graph
from hwflow.errors import HwflowError
from hwflow.flow import load_calibration
from tests.e2e.test_mlp_flows import OddMLP


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file()}


def test_example_compiles_deterministically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["compile", "--example", "mlp", "--board", "u280", "-o", str(a)]) == 0
    assert main(["compile", "--example", "mlp", "--board", "u280", "-o", str(b)]) == 0
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys() and fa == fb
    rep = json.loads(fa["reports/compile.json"])
    assert rep["board"] == "u280" and rep["ops"]["qlinear"] == 3
    assert rep["program_bytes"] == 32 * rep["instructions"]
    assert rep["float_cosine"] > 0.99


def test_rebuild_replaces_a_previous_build_atomically(tmp_path):
    out = tmp_path / "o"
    assert main(["compile", "--example", "mlp", "--board", "u280", "-o", str(out)]) == 0
    (out / "stale.txt").write_text("from an older build")
    assert main(["compile", "--example", "mlp", "--board", "kv260", "-o", str(out)]) == 0
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "config.json").read_text())["board"] == "kv260"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_torchscript_and_trusted_pickle(tmp_path):
    torch.manual_seed(0)
    m = OddMLP().eval()
    ts = tmp_path / "scripted.bin"          # any name: detected by content
    torch.jit.trace(m, torch.randn(4, 37)).save(str(ts))
    assert main(["compile", str(ts), "--board", "u280", "-o", str(tmp_path / "ts"),
                 "--rows", "3"]) == 0
    rep = json.loads((tmp_path / "ts" / "reports" / "compile.json").read_text())
    assert rep["input_shape"] == [3, 37] and rep["ops"]["qlinear"] == 3

    pk = tmp_path / "pickled.pt"
    torch.save(m, pk)
    assert main(["compile", str(pk), "--board", "u280", "-o", str(tmp_path / "pk"),
                 "--trust-model"]) == 0


def test_calibration_shapes(tmp_path):
    np.save(tmp_path / "one.npy", np.ones(24))
    np.save(tmp_path / "img.npy", np.ones((10, 4, 6)))
    np.save(tmp_path / "bad.npy", np.ones((10, 5)))
    assert load_calibration(tmp_path / "one.npy", (3, 24)).shape == (1, 24)
    assert load_calibration(tmp_path / "img.npy", (3, 24)).shape == (10, 24)
    with pytest.raises(HwflowError, match=r"shape \[10, 5\].*\[3, 24\]"):
        load_calibration(tmp_path / "bad.npy", (3, 24))
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04junk")
    with pytest.raises(HwflowError, match="not a saved tensor"):
        load_calibration(tmp_path / "junk.pt", (3, 24))


def _compile(tmp_path, *argv):
    out = tmp_path / "o"
    assert main(["compile", *argv, "--board", "u280", "-o", str(out)]) == 0
    return json.loads((out / "reports" / "compile.json").read_text())


def _formats(rep):
    return [(f["sparsity"], f["weights"]) for f in rep["weight_formats"].values()]


def test_sparse_example_is_detected(tmp_path, capsys):
    rep = _compile(tmp_path, "--example", "mlp-sparse")
    assert rep["sparsity"] == "auto" and rep["weights"] == "int8"
    assert _formats(rep) == [("2:4", "int8"), ("2:4", "int8"), ("dense", "int8")]
    assert {f["sparsity_from"] for f in rep["weight_formats"].values()} == {"detected"}
    assert "pruned_float_cosine" not in rep and rep["float_cosine"] > 0.99
    assert "weights: linear 2:4 int8, linear_1 2:4 int8, linear_2 dense int8" in \
        capsys.readouterr().out


def test_imposed_sparsity_reports_both_errors(tmp_path):
    rep = _compile(tmp_path, "--example", "mlp", "--sparsity", "2:4")
    assert rep["sparsity"] == "2:4"
    assert _formats(rep) == [("2:4", "int8")] * 3
    assert {f["sparsity_from"] for f in rep["weight_formats"].values()} == {"imposed"}
    # against the model as given the pruning shows; against the pruned model only quantization
    assert rep["pruned_float_cosine"] > 0.99 > rep["float_cosine"]
    assert len(rep["layers"]) == 3 and all(la["macs"] > 0 for la in rep["layers"])


def test_mixed_example(tmp_path):
    rep = _compile(tmp_path, "--example", "mlp-mixed", "--weights", "mixed")
    assert _formats(rep) == [("dense", "int8"), ("2:4", "int4"), ("dense", "int4"),
                             ("dense", "int8")]
    whys = [f["why"] for f in rep["weight_formats"].values()]
    assert whys[0] == "mixed: first layer" and whys[-1] == "mixed: last layer"
    assert all(w.startswith("mixed: int4 error 0.0") for w in whys[1:3])
    assert rep["float_cosine"] > 0.99
    final = load_graph(tmp_path / "o" / "ir" / "final")
    assert [final.nodes[n]["op"].attrs["wbits"] for n in rep["weight_formats"]] == [8, 4, 4, 8]


@pytest.mark.parametrize("values,needles", [
    (np.array([[0.5] * 37, [np.nan] * 37]), ["37 NaN or Inf values"]),
    (np.array([[np.inf] + [0.0] * 36]), ["1 NaN or Inf value;"]),
    (np.zeros((0, 37)), ["empty tensor", "[0, 37]"]),
    (np.array([["a"] * 37]), ["<U1 values", "real numbers"]),
])
def test_bad_calibration_values_are_refused(tmp_path, values, needles):
    f = tmp_path / "calib.npy"
    np.save(f, values)
    with pytest.raises(HwflowError) as e:
        load_calibration(f, (4, 37))
    for n in needles:
        assert n in str(e.value)


def test_inf_calibration_through_the_cli_never_prints_nan(capfd, tmp_path):
    from tests._cli import assert_no_build_left, assert_one_line_error, run_cli

    t = torch.randn(8, 96)          # the example MLP's input width
    t[3, 5] = float("inf")
    f = tmp_path / "calib.pt"
    torch.save(t, f)
    code, out, err = run_cli(capfd, "compile", "--example", "mlp", "--board", "u280",
                             "--calib", f, "-o", tmp_path / "out")
    assert_one_line_error(code, err, "calib.pt", "1 NaN or Inf value")
    assert "nan" not in out.lower()
    assert_no_build_left(tmp_path)


def test_sweeps_and_calibration_run_selections_of_the_compile_steps(tmp_path):
    """``hwflow compile`` runs every step of MLP_STEPS; a selection up to ``lower`` (what a
    sweep point and the calibration's programs run) makes the same program and image."""
    from hwflow.boards import load_board
    from hwflow.flow import MLP_STEPS, MlpJob
    from hwflow.steps import run_steps

    assert [n for n, _ in MLP_STEPS] == ["load", "calibrate", "configure", "compile", "lower",
                                         "predict", "check", "rtl", "report"]
    out = tmp_path / "b"
    assert main(["compile", "--example", "mlp", "--board", "u280", "-o", str(out)]) == 0
    seen = []
    job = run_steps(MlpJob(board=load_board("u280"), example="mlp"), MLP_STEPS,
                    select=("load", "calibrate", "configure", "compile", "lower", "predict"),
                    log=seen.append)
    assert seen == ["load", "calibrate", "configure", "compile", "lower", "predict"]
    assert job.lowered.image == (out / "memory_image.bin").read_bytes()
    rep = json.loads((out / "reports" / "compile.json").read_text())
    assert job.prediction["total"] == rep["predicted_cycles"]
    assert job.verilog == "" and job.report is None          # rtl and report did not run
    with pytest.raises(ValueError, match=r"unknown steps \['lowering'\]"):
        run_steps(job, MLP_STEPS, select=("lowering",))


def test_a_build_resumes_from_a_saved_intermediate(tmp_path, capfd):
    """``hwflow compile ir/03_quantize.json``: the compile continues after the saved step and
    makes the build the whole flow made (same program, image and accuracy figures)."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert main(["compile", "--example", "mlp", "--board", "u280", "--save-ir", "-o",
                 str(full)]) == 0
    saved = full / "ir" / "03_quantize.json"
    assert load_graph(saved).graph["step"] == "quantize"
    assert main(["compile", str(saved), "--board", "u280", "-o", str(resumed)]) == 0
    for f in ("memory_image.bin", "program.bin"):
        assert (resumed / f).read_bytes() == (full / f).read_bytes(), f
    a, b = (json.loads((d / "reports" / "compile.json").read_text()) for d in (full, resumed))
    assert a["float_cosine"] == b["float_cosine"] and a["layers"] == b["layers"]
    capfd.readouterr()
    bad = tmp_path / "notes.json"
    bad.write_text("{}")
    assert main(["compile", str(bad), "--board", "u280", "-o", str(tmp_path / "x")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a compiler intermediate kept by --save-ir" in err[0]
    assert not (tmp_path / "x").exists()
