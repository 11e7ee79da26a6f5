"""The layering of docs/design.md ("Layers and data flow") is a rule: check every import."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer folder -> (internal layers it may import, third-party top-level modules it must not)
RULES = {
    "golden": (set(), {"amaranth", "networkx"}),
    "boards": (set(), {"amaranth", "torch", "networkx"}),
    "compiler": ({"golden"}, {"amaranth"}),
    "hw": (set(), {"torch", "networkx", "numpy"}),
    "mapping": ({"compiler", "hw", "boards", "golden"}, set()),
    "sim": ({"hw", "mapping", "golden"}, {"torch"}),
    # the thin top layer (CLI, flows, export drivers): every layer below it, and no HDL (that
    # lives in hw/); its own modules are hwflow.X for X not a layer (hwflow.errors, ...)
    "hwflow": ({"golden", "boards", "compiler", "hw", "mapping", "sim"}, {"amaranth"}),
}
LAYERS = set(RULES)
# The hardware contract (docs/design.md, "Layers and data flow"): the ISA, the parameters, the
# registers and constants that the RTL, the mapper, the models and the host read. Plain Python:
# the standard library and each other, so that no reader of it loads Amaranth.
CONTRACT = ("hw/contract.py", "hw/isa.py", "hw/config.py")


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def violations(layer: str, root: Path) -> list:
    allowed, banned = RULES[layer]
    bad = []
    for f in sorted((root / layer).rglob("*.py")):
        for line, mod in _imports(f):
            parts = mod.split(".")
            where = f"{f.relative_to(root)}:{line} imports {mod}"
            if parts[0] == "hwflow":
                # hwflow.X is layer X's folder; any other hwflow.X (and hwflow) is the top layer's
                target = parts[1] if len(parts) > 1 and parts[1] in LAYERS else "hwflow"
                if target != layer and target not in allowed:
                    bad.append(where)
            elif parts[0] in LAYERS or parts[0] in banned:
                bad.append(where)
    return bad


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layer_imports_only_downward(layer):
    assert list((ROOT / layer).rglob("*.py")), f"layer {layer} has no Python files"
    bad = violations(layer, ROOT)
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_checker_catches_violations(tmp_path):
    (tmp_path / "compiler").mkdir()
    (tmp_path / "compiler" / "x.py").write_text(
        "import amaranth\nfrom hwflow.hw import top\nfrom hwflow.golden import int8\n")
    (tmp_path / "hw").mkdir()
    (tmp_path / "hw" / "y.py").write_text("import torch\nfrom hwflow.compiler import ir\n")
    (tmp_path / "mapping").mkdir()
    (tmp_path / "mapping" / "z.py").write_text(
        "from hwflow.errors import HwflowError\nimport hwflow\nfrom hwflow.hw import top\n")
    (tmp_path / "hwflow" / "export").mkdir(parents=True)
    (tmp_path / "hwflow" / "export" / "w.py").write_text(
        "from amaranth import Module\nfrom hwflow.hw.top import Accelerator\n"
        "from hwflow.errors import HwflowError\nimport hwflow\nimport mapping\n"
        "def f():\n    from amaranth.lib import wiring\n")
    assert len(violations("compiler", tmp_path)) == 2
    assert len(violations("hw", tmp_path)) == 2
    assert len(violations("mapping", tmp_path)) == 2
    assert [v.split(" imports ")[1] for v in violations("hwflow", tmp_path)] == [
        "amaranth", "mapping", "amaranth.lib"]


def contract_violations(root: Path) -> list:
    own = {Path(c).stem for c in CONTRACT}
    bad = []
    for c in CONTRACT:
        tree = ast.parse((root / c).read_text(), filename=c)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                mods = [node.module] if node.module else [a.name for a in node.names]
                bad += [f"{c}:{node.lineno} imports .{m}" for m in mods
                        if m.split(".")[0] not in own]
            elif isinstance(node, ast.Import | ast.ImportFrom):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module])
                bad += [f"{c}:{node.lineno} imports {m}" for m in mods
                        if m.split(".")[0] not in sys.stdlib_module_names]
    return bad


def test_contract_imports_only_the_standard_library():
    bad = contract_violations(ROOT)
    assert not bad, "the hardware contract must stay plain Python:\n" + "\n".join(bad)


def test_contract_checker_catches_violations(tmp_path):
    (tmp_path / "hw").mkdir()
    for c in CONTRACT:
        (tmp_path / c).write_text("import struct\nfrom .config import AccelConfig\n")
    (tmp_path / "hw" / "isa.py").write_text("from amaranth import Signal\nfrom .top import x\n"
                                            "import numpy\n")
    assert len(contract_violations(tmp_path)) == 3
