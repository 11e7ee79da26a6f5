"""hw/isa_layout.py: the Amaranth layouts the units decode with are hw/isa.py's one table."""

from __future__ import annotations

import pytest
from amaranth import Module, Shape, Signal
from amaranth.lib import data
from amaranth.sim import Simulator

from hwflow.hw import isa
from hwflow.hw.isa import HEADER, INSTR_BYTES, LAYOUT, MAX_LGM, MAX_LGR, Instr, Opcode
from hwflow.hw.isa_layout import FLAGS_LAYOUT, HEADER_LAYOUT, LAYOUTS

FLAGS = {name[len("FLAG_"):].lower(): value for name, value in vars(isa).items()
         if name.startswith("FLAG_")}


def _fields(layout) -> dict:
    return {name: (f.offset, Shape.cast(f.shape).width) for name, f in layout}


@pytest.mark.parametrize("op", [None, *Opcode], ids=lambda op: op.name if op else "header")
def test_layout_is_the_isa_table(op):
    """Every field of the table at bit ``32 * word + low bit`` with its width, and no other."""
    layout = HEADER_LAYOUT if op is None else LAYOUTS[op]
    table = HEADER + (() if op is None else LAYOUT.get(op, ()))
    assert layout.size == 8 * INSTR_BYTES
    assert _fields(layout) == {name: (32 * word + lo, bits) for name, word, lo, bits in table}
    assert layout["flags"].shape is FLAGS_LAYOUT


def test_flags_layout_is_the_flag_constants():
    assert all(v & (v - 1) == 0 for v in FLAGS.values())       # one bit each
    assert _fields(FLAGS_LAYOUT) == {name: (v.bit_length() - 1, 1) for name, v in FLAGS.items()}


def _distinct_instr(op: Opcode) -> Instr:
    """``op`` with every field set, to a value near the top of its range (its high bits set),
    the values of neighbouring fields different."""
    fields = {}
    for k, (name, _word, _lo, bits) in enumerate(LAYOUT.get(op, ())):
        hi = {"lgm": MAX_LGM, "lgr": MAX_LGR}.get(name, (1 << bits) - 1)
        fields[name] = hi - k % hi
    return Instr(op, flags=0b1010_0101, shift=47, **fields)


@pytest.mark.parametrize("op", list(Opcode), ids=lambda op: op.name)
def test_encoded_instr_reads_back_through_the_layout(op):
    """The encoder's word, viewed through the op's layout as the units view their ``ins`` port
    (a ``data.View`` over a 256-bit signal, in simulation), gives back every field and flag."""
    ins = _distinct_instr(op)
    word = Signal(8 * INSTR_BYTES)
    view = data.View(LAYOUTS[op], word)
    header = data.View(HEADER_LAYOUT, word)

    async def tb(ctx):
        ctx.set(word, int.from_bytes(ins.encode(), "little"))
        assert ctx.get(view.op) == ctx.get(header.op) == op
        assert ctx.get(view.shift) == ctx.get(header.shift) == 47
        for name, value in FLAGS.items():
            assert ctx.get(getattr(view.flags, name)) == bool(ins.flags & value), name
        for name, *_ in LAYOUT.get(op, ()):
            assert ctx.get(getattr(view, name)) == getattr(ins, name), name

    sim = Simulator(Module())
    sim.add_testbench(tb)
    sim.run()
