from __future__ import annotations

import numpy as np
import pytest

from hwflow.compiler import STEPS, CompileError, FlowOptions, load_graph, run, run_flow
from hwflow.compiler.flow import STEP_NAMES, intermediate_path
from hwflow.compiler.ir import format_graph


def test_steps_are_the_documented_list():
    assert [n for n, _ in STEPS] == ["sparsify", "precision", "quantize", "fuse", "tile",
                                     "schedule", "memory_plan"]
    assert STEP_NAMES[0] == "float"


def test_full_flow_saves_every_step(tmp_path, float_graph, target, x3):
    g = run_flow(float_graph, FlowOptions(target, x3.numpy()), save_dir=tmp_path)
    assert g.graph["step"] == "memory_plan"
    for step in STEP_NAMES:
        assert intermediate_path(tmp_path, step).exists()
        assert intermediate_path(tmp_path, step).with_suffix(".npz").exists()
    assert float_graph.graph["step"] == "float"  # passes never modify their input


@pytest.mark.parametrize("resume", ["sparsify", "precision", "quantize", "fuse", "tile",
                                    "schedule"])
def test_restart_from_saved_intermediate(tmp_path, float_graph, target, x3, resume):
    full = run_flow(float_graph, FlowOptions(target, x3.numpy()), save_dir=tmp_path)
    saved = load_graph(intermediate_path(tmp_path, resume))
    assert saved.graph["step"] == resume
    # no calibration needed after quantize
    again = run_flow(saved, FlowOptions(target, x3.numpy() if resume in ("sparsify", "precision")
                                        else None))
    assert format_graph(again) == format_graph(full)
    x = {"x": x3.numpy()}
    assert np.array_equal(run(again, x)["output"], run(full, x)["output"])


def test_flow_errors(float_graph, target):
    with pytest.raises(CompileError, match="calibration"):
        run_flow(float_graph, FlowOptions(target))
    with pytest.raises(CompileError, match="unknown step 'bogus'"):
        run_flow(float_graph, FlowOptions(target), stop_after="bogus")


def test_flow_options_are_checked_before_any_step(target):
    for bad, rule in (("3:4", "M/N must be a power of two"), ("2:32", "M must be a power of two"),
                      ("0:4", "N must be between 1 and M"), ("half", "not auto, dense")):
        with pytest.raises(CompileError, match=rf"sparsity '{bad}': {rule}"):
            FlowOptions(target, sparsity=bad)
    with pytest.raises(CompileError, match="weights 'int2': use int8, int4, mixed"):
        FlowOptions(target, weights="int2")
    for ok in ("auto", "dense", "2:4", "1:4", "2:8", "4:16", "1:16", "8:8"):
        FlowOptions(target, sparsity=ok)


@pytest.mark.parametrize("sparsity,weights", [("2:4", "int8"), ("1:4", "int4"),
                                              ("auto", "mixed")])
def test_flow_with_weight_formats(tmp_path, float_graph, target, x3, sparsity, weights):
    opts = FlowOptions(target, x3.numpy(), sparsity=sparsity, weights=weights)
    g = run_flow(float_graph, opts, save_dir=tmp_path)
    formats = g.graph["weight_formats"]
    assert sorted(formats) == ["linear", "linear_1", "linear_2"]
    for name, f in formats.items():
        a = g.nodes[name]["op"].attrs
        assert f["sparsity"] == ("dense" if sparsity == "auto" else sparsity)
        assert a["sparsity"] == ((1, 1) if sparsity == "auto" else
                                 tuple(int(v) for v in sparsity.split(":")))
        assert f["weights"] == f"int{a['wbits']}"
    again = run_flow(load_graph(intermediate_path(tmp_path, "precision")), opts)
    assert format_graph(again) == format_graph(g)
