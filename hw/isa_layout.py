"""Amaranth data layouts of the 256-bit instruction, generated from the tables in :mod:`.isa`.

The units decode the instruction they execute by viewing it through their opcode's layout
(``data.View(LAYOUTS[Opcode.ATTN], ins).window``), so the field positions have one definition,
:data:`.isa.HEADER` and :data:`.isa.LAYOUT`, shared with the encoder and the ISA model. Field
``word``, ``low bit`` of the table sits at bit ``32 * word + low bit`` of the instruction (word 0
in bits 31..0, as the little-endian words arrive from memory).
"""

from __future__ import annotations

from amaranth.lib import data

from . import isa

__all__ = ["FLAGS_LAYOUT", "HEADER_LAYOUT", "INSTR_BITS", "LAYOUTS"]

INSTR_BITS = 8 * isa.INSTR_BYTES

#: The flags byte: one bit per ``isa.FLAG_*`` constant, named after it in lower case
#: (``flags.int4`` is :data:`.isa.FLAG_INT4`).
FLAGS_LAYOUT = data.FlexibleLayout(
    next(bits for name, _w, _lo, bits in isa.HEADER if name == "flags"),
    {name[len("FLAG_"):].lower(): data.Field(1, value.bit_length() - 1)
     for name, value in vars(isa).items() if name.startswith("FLAG_")})


def _layout(fields) -> data.FlexibleLayout:
    return data.FlexibleLayout(INSTR_BITS, {
        name: data.Field(FLAGS_LAYOUT if name == "flags" else bits, 32 * word + lo)
        for name, word, lo, bits in fields})


#: The fields every opcode has (opcode ``op``, ``flags``, ``shift``): what the controller
#: decodes before it knows the opcode.
HEADER_LAYOUT = _layout(isa.HEADER)
#: Per opcode, the header and the opcode's fields of :data:`.isa.LAYOUT`.
LAYOUTS = {op: _layout(isa.HEADER + isa.LAYOUT.get(op, ())) for op in isa.Opcode}
