"""Same inputs, same bytes (docs/design.md, "Build folder"; issue 13, item 12): every kind of build
compiled twice gives byte-identical folders.

One compile of each kind runs in this process, the other in a fresh process with another
``PYTHONHASHSEED`` (so that set and dict orders, temporary paths and timestamps all differ),
started first so that the two run side by side. Decoders are compiled for a short context to
keep the test cheap (seconds per build).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hwflow.cli import main

LLAMA_7B = Path(__file__).resolve().parents[2] / "examples" / "configs" / "llama-2-7b.json"

SECOND_RUN = """
import json, sys
from hwflow.cli import main
root, kinds = sys.argv[1], json.loads(sys.argv[2])
for name, argv in kinds.items():
    assert main(["compile", *argv, "-o", f"{root}/{name}"]) == 0, name
"""


def _kinds(hf_folder: Path) -> dict[str, list[str]]:
    return {
        "mlp": ["--example", "mlp", "--board", "u280"],
        "mlp-mixed-save-ir": ["--example", "mlp-mixed", "--weights", "mixed", "--board",
                              "kv260", "--save-ir"],
        "mlp-ternary": ["--example", "mlp", "--weights", "ternary", "--board", "u280"],
        "tiny-llama": ["--example", "tiny-llama", "--board", "u280", "--max-context", "16"],
        "hf-folder": [str(hf_folder), "--board", "u280", "--max-context", "16"],
        "tiny-bitnet": ["--example", "tiny-bitnet", "--board", "kv260", "--max-context", "16"],
        "shape-only": [str(LLAMA_7B), "--shape-only", "--board", "u280"],
    }


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """``(first, second, kinds)``: the roots of the two compiles of every kind."""
    from hwflow.llm_examples import write_tiny_llama

    root = tmp_path_factory.mktemp("repro")
    kinds = _kinds(write_tiny_llama(root / "hf" / "my-llama", seed=1))
    first, second = root / "first", root / "second"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    other = subprocess.Popen([sys.executable, "-c", SECOND_RUN, str(second), json.dumps(kinds)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        for name, argv in kinds.items():
            assert main(["compile", *argv, "-o", str(first / name)]) == 0, name
        _, err = other.communicate(timeout=600)
    finally:
        other.kill()
        other.wait()
    assert other.returncode == 0, err[-2000:]
    return first, second, kinds


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("kind", list(_kinds(Path("hf"))))
def test_two_compiles_give_the_same_bytes(two_runs, kind):
    first, second, _ = two_runs
    a, b = _files(first / kind), _files(second / kind)
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
    assert [f for f in a if a[f] != b[f]] == []
    assert "hwflow-build.json" in a and len(a) > 5
