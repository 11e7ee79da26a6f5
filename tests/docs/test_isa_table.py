"""docs/gen_isa_table.py: docs/architecture.md's instruction field table is what hw/isa.py
renders to, so the doc cannot drift from the encoder, the ISA model and the RTL's layouts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hwflow.hw.isa import HEADER, LAYOUT, Opcode

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_isa_table",
                                                  ROOT / "docs" / "gen_isa_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()


def test_doc_table_is_the_rendered_isa_table():
    doc = gen.DOC.read_text(encoding="utf-8")
    assert gen.splice(doc, gen.render()) == doc, (
        "docs/architecture.md's ISA field table differs from hw/isa.py: run "
        "`.venv/bin/python docs/gen_isa_table.py`")
    assert gen.main(["--check"]) == 0


def test_every_field_is_in_the_table():
    rows = {line.split(" | ")[1]: line for line in gen.render().splitlines()
            if line.startswith("| 0x")}
    assert list(rows) == [op.name for op in Opcode]
    for op in Opcode:
        names = gen.DOC_NAMES.get(op, {})
        for name, _word, lo, bits in LAYOUT.get(op, ()):
            assert gen._field(names.get(name, name), lo, bits) in rows[op.name], (op, name)
    header = gen.render().splitlines()[2]
    assert all(gen._field(name, lo, bits) in header for name, _w, lo, bits in HEADER)


def test_a_stale_table_is_caught():
    doc = gen.DOC.read_text(encoding="utf-8")
    stale = doc.replace("lgm[18:16]", "lgm[19:16]")
    assert stale != doc and gen.splice(stale, gen.render()) == doc


def test_doc_names_name_real_fields(monkeypatch):
    monkeypatch.setitem(gen.DOC_NAMES, Opcode.END, {"ext": "wgt"})
    with pytest.raises(ValueError, match="not fields of END"):
        gen.render()


def test_markers_must_be_there_once():
    with pytest.raises(ValueError, match="once"):
        gen.splice("no markers", "x")
    with pytest.raises(ValueError, match="once"):
        gen.splice(f"{gen.BEGIN}\n{gen.END}\n{gen.BEGIN}\n{gen.END}", "x")


def test_doc_register_table_is_the_contract():
    """The control-register table of docs/architecture.md is rendered from hw/contract.py:
    every register of REG at its offset, documented (POS and TLMM_BUSY included)."""
    from hwflow.hw.contract import REG, REGISTER_DOC

    doc = gen.DOC.read_text(encoding="utf-8")
    assert gen.splice(doc, gen.render_registers(), gen.REG_BEGIN, gen.REG_END) == doc
    block = doc.split(gen.REG_BEGIN)[1].split(gen.REG_END)[0]
    for name, off in REG.items():
        base = name.removesuffix("_LO").removesuffix("_HI")
        assert base in REGISTER_DOC, name
        assert any(f"| {base} |" in row and f"0x{off:02X}" in row for row in block.splitlines())
    stale = doc.replace("| 0x200 | POS |", "| 0x204 | POS |")
    assert stale != doc and gen.render_doc(stale) == doc
