"""A shape-only compile and prediction and the host runtime never load Amaranth: they read the
hardware contract (hw/contract.py, hw/isa.py, hw/config.py), which is plain Python. Each runs
here in a fresh interpreter, which afterwards must hold no ``amaranth`` module."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hwflow.flow import compile_model

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "examples" / "configs"
_REPORT = """
import json, sys
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "amaranth")))
"""


def amaranth_loaded(script: str) -> list:
    """The ``amaranth`` modules a fresh interpreter holds after running ``script``."""
    r = subprocess.run([sys.executable, "-c", script + _REPORT], capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_check_sees_amaranth():
    assert "amaranth.hdl" in amaranth_loaded("import hwflow.hw.top")


# an int8 transformer on the U280 and a ternary one (its TLMM engine) on the KV260
@pytest.mark.parametrize("config,board", [("llama-3.2-1b.json", "u280"),
                                          ("bitnet-b1.58-0.7b.json", "kv260")])
def test_shape_only_compile_and_predict_load_no_amaranth(tmp_path, config, board):
    out = str(tmp_path / "build")
    script = f"""
from hwflow.cli import main
assert main(["compile", {str(CONFIGS / config)!r}, "--shape-only", "--board", {board!r},
             "-o", {out!r}]) == 0
assert main(["predict", {out!r}]) == 0
"""
    assert amaranth_loaded(script) == []


@pytest.fixture(scope="module")
def mlp_build(tmp_path_factory):
    out, _ = compile_model(example="mlp", board="u280", out=tmp_path_factory.mktemp("b") / "mlp")
    return out


def test_host_runtime_loads_no_amaranth(mlp_build):
    script = f"""
import numpy as np
from hwflow.host import ModelDevice, load_build, run
b = load_build({str(mlp_build)!r})
x = np.ones(b.input_shape(b.input))
stats = {{}}
out = run(b, {{b.input: x}}, ModelDevice(b.cfg), stats=stats)
assert out and stats["retired"] > 0
"""
    assert amaranth_loaded(script) == []
