"""hwflow.steps: flows as step lists, and the step lists of the compiles."""

import pytest

from hwflow.flow import MLP_STEPS
from hwflow.llm_flow import DECODER_STEPS, SHAPE_STEPS
from hwflow.steps import run_steps, step_names


class _Job:
    def __init__(self):
        self.ran, self.closed = [], 0

    def close(self):
        self.closed += 1


def _steps(fail=None):
    def make(name):
        def step(job):
            if name == fail:
                raise RuntimeError(name)
            job.ran.append(name)
        return name, step
    return tuple(make(n) for n in ("a", "b", "c"))


def test_runs_all_steps_or_a_selection_in_list_order():
    job = run_steps(_Job(), _steps())
    assert job.ran == ["a", "b", "c"] and job.closed == 1
    logged = []
    job = run_steps(_Job(), _steps(), select=("c", "a"), log=logged.append)
    assert job.ran == ["a", "c"] == logged


def test_unknown_step_and_cleanup_after_a_failing_step():
    with pytest.raises(ValueError, match=r"unknown steps \['d'\] \(steps: a, b, c\)"):
        run_steps(_Job(), _steps(), select=("a", "d"))
    job = _Job()
    with pytest.raises(RuntimeError, match="b"):
        run_steps(job, _steps(fail="b"))
    assert job.ran == ["a"] and job.closed == 1          # temporary files go with the flow


def test_the_compiles_are_step_lists():
    assert step_names(MLP_STEPS) == ["load", "calibrate", "configure", "compile", "lower",
                                     "predict", "check", "rtl", "report"]
    assert step_names(DECODER_STEPS) == ["load", "configure", "quantize", "size", "check",
                                         "lower", "rtl", "report"]
    assert step_names(SHAPE_STEPS) == ["load", "configure", "lower", "predict", "report"]
    # a shape-only compile configures the engine exactly as a compile from weights does
    assert dict(SHAPE_STEPS)["configure"] is dict(DECODER_STEPS)["configure"]
