"""Whole flows: torch model file -> hwflow compile -> hwflow sim (Verilator), bit-exact."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from hwflow.cli import main


class OddMLP(nn.Module):
    """Widths that are multiples of nothing in the engine, a residual add and ReLUs."""

    def __init__(self, d=37, h=53, o=29):
        super().__init__()
        self.up = nn.Linear(d, h)
        self.down = nn.Linear(h, d)
        self.out = nn.Linear(d, o)

    def forward(self, x):
        y = torch.relu(self.up(x))
        y = self.down(y) + x
        return self.out(torch.relu(y))


class Deep(nn.Module):
    """Four layers, no bias on two, a flatten of a 3-D input, residual around a pair."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(24, 70, bias=False)
        self.b = nn.Linear(70, 70)
        self.c = nn.Linear(70, 70, bias=False)
        self.d = nn.Linear(70, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        h = torch.relu(self.a(x))
        h = torch.relu(self.c(torch.relu(self.b(h))) + h)
        return self.d(h)


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(300, 130)
        self.fc2 = nn.Linear(130, 17)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _compile_and_sim(tmp_path, module, x, name, board="u280", extra=()):
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.export.save(torch.export.export(module.eval(), (x,)), str(path))
    out = tmp_path / f"{name}-{board}"
    assert main(["compile", str(path), "--board", board, "-o", str(out), *extra]) == 0
    assert main(["sim", str(out)]) == 0
    sim = json.loads((out / "reports" / "sim.json").read_text())
    comp = json.loads((out / "reports" / "compile.json").read_text())
    return comp, sim


@pytest.mark.parametrize("name,make,shape", [
    ("odd", OddMLP, (5, 37)),
    ("deep", Deep, (3, 4, 6)),
    ("wide", Wide, (7, 300)),
])
def test_mlps_are_bit_exact_on_u280(tmp_path, name, make, shape):
    torch.manual_seed(1)
    comp, sim = _compile_and_sim(tmp_path, make(), torch.randn(*shape), name)
    assert sim["bit_exact"] and sim["mismatches"] == 0
    assert sim["float_cosine"] >= 0.99, sim
    # the analytic cycle model (mapping/cycles.py) tracks the RTL within 10% (measured <= 5%)
    assert abs(sim["predicted_cycles"] - sim["cycles"]) <= 0.1 * sim["cycles"], sim
    for key in ("board", "ops", "instructions", "program_bytes", "memory_image_bytes",
                "predicted_cycles"):
        assert key in comp
    for key in ("sim_seconds", "cycles_per_second", "mpe_utilization", "float_max_abs_error"):
        assert key in sim


def test_calibration_file_and_seeded_inputs(tmp_path):
    torch.manual_seed(2)
    calib = tmp_path / "calib.pt"
    torch.save(torch.randn(32, 37) * 2, calib)
    comp, sim = _compile_and_sim(tmp_path, OddMLP(), torch.randn(4, 37), "cal",
                                 extra=("--calib", str(calib)))
    assert comp["calibration_rows"] == 32 and sim["bit_exact"]
    out = tmp_path / "cal-u280"
    assert main(["sim", str(out), "--seed", "7"]) == 0
    assert json.loads((out / "reports" / "sim.json").read_text())["inputs"] == "seed 7"


def test_kv260_build(tmp_path):
    torch.manual_seed(3)
    comp, sim = _compile_and_sim(tmp_path, OddMLP(), torch.randn(3, 37), "odd", board="kv260")
    assert comp["config"]["chains"] == 8 and sim["bit_exact"]


def test_build_folder_testbench_runs_with_plain_pytest(tmp_path):
    """The build folder's tb/ is a standalone cocotb testbench: `pytest tb/` checks the RTL."""
    out = tmp_path / "b"
    assert main(["compile", "--example", "mlp", "--board", "u280", "-o", str(out)]) == 0
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(out / "tb")], capture_output=True, text=True, cwd=out)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "1 passed" in r.stdout
    # the same testbench fails on one wrong byte of the expected output
    expected = out / "tb" / "expected_0.bin"
    data = bytearray(expected.read_bytes())
    data[0] ^= 1
    expected.write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(out / "tb")], capture_output=True, text=True, cwd=out)
    assert r.returncode != 0 and "1 failed" in r.stdout, r.stdout[-2000:]
