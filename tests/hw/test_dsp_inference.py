"""benchmarks/dsp_inference.py: Yosys synth_xilinx maps every slice of the matrix engine to
exactly one DSP48E2 (no multiplier in LUTs, none merged), for short chains (~10-20 s each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "dsp_inference.py"


@pytest.mark.parametrize("args", [["--chain-len", "4"], ["--chain-len", "8"]])
def test_every_slice_is_one_dsp48e2(args):
    r = subprocess.run([sys.executable, str(BENCH), *args, "--json"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    assert res["inferred_dsp"] == res["designed_dsp"] == int(args[1])
    assert res["lut"] > 0 and res["yosys_seconds"] > 0 and not res["cached"]


def test_invalid_configuration_is_refused():
    # L = 6 does not split into G = 4 DSP groups (nor fit a super-beat)
    r = subprocess.run([sys.executable, str(BENCH), "--chain-len", "6"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: ")
