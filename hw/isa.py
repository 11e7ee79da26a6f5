"""Instruction encoding (docs/architecture.md, "Instruction set").

Plain Python shared by the hardware decoder (field positions), the mapper (encoder) and the ISA
functional model (decoder). Every instruction is 32 bytes: eight little-endian u32 words.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

INSTR_BYTES = 32
FLAG_RELU = 1 << 0
FLAG_RESIDUAL = 1 << 1
#: MATMUL weights are int4 codes with group scales, dequantized in the weight-fill path.
FLAG_INT4 = 1 << 2
#: LOAD/STORE: the external address is ``ext + POS * pos_stride`` (POS: control register 0x34).
FLAG_POS = 1 << 3

#: Largest ``lgm = log2 M`` (M = 16) and ``lgr = log2 r`` (r = 4) of a MATMUL mode. Whether a mode
#: is legal on a given engine (M <= L, r <= G) is the hardware's check (ERROR = 2), not the
#: encoder's: the encoder only refuses values the ISA cannot name.
MAX_LGM = 4
MAX_LGR = 2

#: Values of the ERROR register (docs/architecture.md, "Control registers").
ERROR_OK = 0
ERROR_ILLEGAL_OPCODE = 1
ERROR_ILLEGAL_MODE = 2
ERROR_GATHER_RANGE = 3


class Opcode(IntEnum):
    END = 0x00
    LOAD = 0x01
    STORE = 0x02
    MATMUL = 0x03
    VADD = 0x04
    GATHER = 0x05
    RMSNORM = 0x06
    ROPE = 0x07
    SILUMUL = 0x08
    ATTN = 0x09


@dataclass(frozen=True)
class Instr:
    """One decoded instruction; field meaning depends on the opcode (see the architecture doc)."""

    op: Opcode
    flags: int = 0
    shift: int = 0
    ext: int = 0          # LOAD/STORE external address; MATMUL weight address (super-beats)
    a: int = 0            # LOAD/STORE act address; MATMUL x; VADD a
    out: int = 0          # MATMUL/VADD output act address
    b: int = 0            # LOAD/STORE length; MATMUL residual; VADD b
    rows: int = 0
    k_words: int = 0
    n_tiles: int = 0
    n: int = 0            # valid outputs per row
    words: int = 0        # output (and residual) row stride in act words
    mult_b: int = 0       # MATMUL res_mult; VADD b_mult
    mult_a: int = 0       # VADD a_mult
    tile_mem_rows: int = 0  # MATMUL: memory rows per weight tile (weight_format.tile_mem_rows)
    lgm: int = 0          # MATMUL: log2 M of the N:M mode (0: dense)
    lgr: int = 0          # MATMUL: log2 r, r = M/N output channels per chain (0: dense)

    @property
    def relu(self) -> bool:
        return bool(self.flags & FLAG_RELU)

    @property
    def residual(self) -> bool:
        return bool(self.flags & FLAG_RESIDUAL)

    @property
    def int4(self) -> bool:
        return bool(self.flags & FLAG_INT4)

    def encode(self) -> bytes:
        _check(self)
        w = [0] * 8
        w[0] = int(self.op) | (self.flags << 8) | (self.shift << 16)
        if self.op in (Opcode.LOAD, Opcode.STORE):
            w[1], w[2], w[3] = self.ext, self.a, self.b
        elif self.op in (Opcode.MATMUL, Opcode.VADD):
            w[1] = self.ext
            w[2] = self.a | (self.out << 16)
            w[3] = self.b | (self.rows << 16)
            w[4] = self.k_words | (self.n_tiles << 16)
            w[5] = self.n | (self.words << 16)
            w[6] = self.mult_b | (self.mult_a << 16)
        if self.op == Opcode.MATMUL:
            w[7] = self.tile_mem_rows | (self.lgm << 16) | (self.lgr << 19)
        return struct.pack("<8I", *w)


def _check(i: Instr) -> None:
    for name, bits in (("flags", 8), ("shift", 6), ("a", 16), ("out", 16), ("b", 16),
                       ("rows", 16), ("k_words", 16), ("n_tiles", 16), ("n", 16),
                       ("words", 16), ("mult_b", 16), ("mult_a", 16), ("ext", 32)):
        v = getattr(i, name)
        if not 0 <= v < (1 << bits):
            raise ValueError(f"{i.op.name}: field {name}={v} does not fit {bits} bits")
    if i.shift > 47:
        raise ValueError(f"{i.op.name}: shift {i.shift} > 47")
    mode = (("tile_mem_rows", i.tile_mem_rows, (1 << 16) - 1), ("lgm", i.lgm, MAX_LGM),
            ("lgr", i.lgr, MAX_LGR))
    for name, v, hi in mode:
        if not 0 <= v <= hi:
            raise ValueError(f"{i.op.name}: field {name}={v} outside 0..{hi}")
        if v and i.op != Opcode.MATMUL:
            raise ValueError(f"{i.op.name}: field {name} is a MATMUL field, must be 0")


def decode(raw: bytes) -> Instr:
    """Decode 32 bytes into an :class:`Instr` (raises ValueError on an unknown opcode)."""
    w = struct.unpack("<8I", raw[:INSTR_BYTES])
    op = Opcode(w[0] & 0xFF)
    flags, shift = (w[0] >> 8) & 0xFF, (w[0] >> 16) & 0x3F
    if op in (Opcode.LOAD, Opcode.STORE):
        return Instr(op, flags, shift, ext=w[1], a=w[2] & 0xFFFF, b=w[3] & 0xFFFF)
    if op in (Opcode.MATMUL, Opcode.VADD):
        return Instr(op, flags, shift, ext=w[1], a=w[2] & 0xFFFF, out=w[2] >> 16,
                     b=w[3] & 0xFFFF, rows=w[3] >> 16, k_words=w[4] & 0xFFFF,
                     n_tiles=w[4] >> 16, n=w[5] & 0xFFFF, words=w[5] >> 16,
                     mult_b=w[6] & 0xFFFF, mult_a=w[6] >> 16,
                     **(_mode_fields(w[7]) if op == Opcode.MATMUL else {}))
    return Instr(op, flags, shift)


def _mode_fields(w7: int) -> dict:
    """MATMUL's w7: tile_mem_rows[15:0], lgm[18:16], lgr[20:19] (any bit pattern decodes; an
    illegal mode is the executor's error, as in the hardware)."""
    return {"tile_mem_rows": w7 & 0xFFFF, "lgm": (w7 >> 16) & 0x7, "lgr": (w7 >> 19) & 0x3}
