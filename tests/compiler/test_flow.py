from __future__ import annotations

import numpy as np
import pytest

from hwflow.compiler import STEPS, CompileError, FlowOptions, load_graph, run, run_flow
from hwflow.compiler.flow import STEP_NAMES, intermediate_path
from hwflow.compiler.ir import format_graph


def test_steps_are_the_documented_list():
    assert [n for n, _ in STEPS] == ["quantize", "fuse", "tile", "schedule", "memory_plan"]
    assert STEP_NAMES[0] == "float"


def test_full_flow_saves_every_step(tmp_path, float_graph, target, x3):
    g = run_flow(float_graph, FlowOptions(target, x3.numpy()), save_dir=tmp_path)
    assert g.graph["step"] == "memory_plan"
    for step in STEP_NAMES:
        assert intermediate_path(tmp_path, step).exists()
        assert intermediate_path(tmp_path, step).with_suffix(".npz").exists()
    assert float_graph.graph["step"] == "float"  # passes never modify their input


@pytest.mark.parametrize("resume", ["quantize", "fuse", "tile", "schedule"])
def test_restart_from_saved_intermediate(tmp_path, float_graph, target, x3, resume):
    full = run_flow(float_graph, FlowOptions(target, x3.numpy()), save_dir=tmp_path)
    saved = load_graph(intermediate_path(tmp_path, resume))
    assert saved.graph["step"] == resume
    again = run_flow(saved, FlowOptions(target))  # no calibration needed after quantize
    assert format_graph(again) == format_graph(full)
    x = {"x": x3.numpy()}
    assert np.array_equal(run(again, x)["output"], run(full, x)["output"])


def test_flow_errors(float_graph, target):
    with pytest.raises(CompileError, match="calibration"):
        run_flow(float_graph, FlowOptions(target))
    with pytest.raises(CompileError, match="unknown step 'bogus'"):
        run_flow(float_graph, FlowOptions(target), stop_after="bogus")
