"""One lowering of the graph IR (``mapping.emit``): every op kind either family's lowered graph
holds has one rule, no other source file emits a model's instructions, and a saved decoder
graph lowers to the build its decoder gives."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from hwflow.compiler.decoder_graph import decoder_graph
from hwflow.compiler.ir import load_graph, save_graph
from hwflow.compiler.ops import DECODER_KINDS, FUSED_KINDS
from hwflow.mapping.emit import RULES
from hwflow.mapping.llm_lower import lower_decoder

from .test_llm_lower import CFG, random_decoder

ROOT = Path(__file__).resolve().parents[2]


def test_every_lowered_kind_has_one_rule():
    assert FUSED_KINDS | DECODER_KINDS == set(RULES)


def _emitters(path: Path) -> list[str]:
    """``Instr(Opcode.X, ...)`` constructions of any opcode but END in a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Instr"
                and node.args and not (isinstance(node.args[0], ast.Attribute)
                                       and node.args[0].attr == "END")):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_one_program_emitter():
    """Both families' programs come from mapping/emit.py's rules (linears through
    mapping/linear.py); the only other instructions are the cycle fit's single-instruction
    micro-runs (hwflow/cycle_fit.py), which time one instruction each, not a model."""
    sources = [p for d in ("compiler", "mapping", "sim", "hwflow")
               for p in sorted((ROOT / d).rglob("*.py"))]
    found = [f for p in sources for f in _emitters(p)]
    where = {f.split(":")[0] for f in found}
    assert {"mapping/emit.py", "mapping/linear.py"} <= where
    assert where == {"mapping/emit.py", "mapping/linear.py", "hwflow/cycle_fit.py"}, where


def test_saved_decoder_graph_lowers_to_the_same_build(tmp_path):
    """The decoder graph saves as any IR graph (JSON and .npz, no pickle) and the build
    lowered from the file read back is the one lowered from the decoder: image, programs."""
    qd = random_decoder()
    path = save_graph(decoder_graph(qd), tmp_path / "decoder.json")
    g = load_graph(path)
    a, b = lower_decoder(qd, CFG), lower_decoder(g, CFG)
    assert a.image == b.image and len(a.image) > 0
    assert a.decode.program == b.decode.program
    assert [p.program for p in a.prefill.values()] == [p.program for p in b.prefill.values()]
    np.testing.assert_array_equal(dict(g.nodes(data="op"))["embed"].attrs["table"], qd.embed)


def test_prefetches_go_after_the_previous_matmul():
    """Each MATMUL with other instructions since the previous MATMUL (or the start) gets its
    PREFETCH, a copy of its word, right after that MATMUL; back-to-back MATMULs and a MATMUL
    first in the program get none."""
    from dataclasses import replace

    from hwflow.hw.isa import Instr, Opcode
    from hwflow.mapping.emit import prefetch_weights

    mm = [Instr(Opcode.MATMUL, ext=e, rows=1, k_words=1, n_tiles=1) for e in range(4)]
    vec = Instr(Opcode.RMSNORM, rows=1)
    load = Instr(Opcode.LOAD, b=1)
    prog = [mm[0], vec, mm[1], mm[2], load, vec, mm[3], Instr(Opcode.END)]
    pf = [replace(m, op=Opcode.PREFETCH) for m in mm]
    assert prefetch_weights(prog) == [mm[0], pf[1], vec, mm[1], mm[2], pf[3], load, vec, mm[3],
                                      Instr(Opcode.END)]
    assert prefetch_weights([load] + prog[:1]) == [pf[0], load, mm[0]]
