"""Instruction encoding (docs/architecture.md, "Instruction set").

Plain Python shared by the hardware decoder (field positions), the mapper (encoder) and the ISA
functional model (decoder). Every instruction is 32 bytes: eight little-endian u32 words.
:data:`HEADER` (every opcode) and :data:`LAYOUT` (per opcode) are the one table of field
positions: the base instructions (END, LOAD, STORE, MATMUL, VADD), the transformer instructions
(GATHER, RMSNORM, ROPE, SILUMUL, ATTN, KVSTORE; LOAD/STORE ``pos_stride``) and the ternary ones
(ABSQUANT, TMATMUL; SILUMUL flag RELU2) and the state-space ones (CONV, SCAN, HADAMARD).
Encode, decode and the hardware's data layouts
(``hw/isa_layout.py``) all read it, and docs/architecture.md's field table is rendered from it
(``docs/gen_isa_table.py``).
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
#: LOAD/STORE: the external address is ``ext + POS * pos_stride`` (POS: control register 0x200).
FLAG_POS = 1 << 3
#: SILUMUL: ``golden.llm.relu2_mul`` (BitNet's squared ReLU) instead of ``silu_mul``.
FLAG_RELU2 = 1 << 4
#: ABSQUANT, RMSNORM: multiply every element by the int8 gamma codes at act word ``g`` (one
#: vector for every row).
FLAG_GAMMA = 1 << 5
#: SILUMUL: ``golden.llm.gate_mul(..., "gelu_tanh")`` (Gemma's GELU-tanh gate).
FLAG_GELU = 1 << 6
#: SILUMUL: ``golden.llm.tanh_cap`` of ``a`` (final logit soft-capping); ``b`` is not read.
FLAG_TANH = 1 << 7

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
    ABSQUANT = 0x0A
    TMATMUL = 0x0B
    KVSTORE = 0x0C
    PREFETCH = 0x0D
    CONV = 0x0E
    SCAN = 0x0F
    HADAMARD = 0x10


#: Opcodes with MATMUL's fields: a PREFETCH is the instruction word of the MATMUL whose weights
#: it starts streaming into the weight ring, with the opcode changed (docs/architecture.md,
#: "Weight prefetch").
WEIGHT_OPCODES = (Opcode.MATMUL, Opcode.PREFETCH)


@dataclass(frozen=True)
class Instr:
    """One decoded instruction; field meaning depends on the opcode (see the architecture doc).

    Fields of the base instructions keep their names in the others where the doc reuses the word:
    ``ext`` (the first external address: LOAD/STORE ext, MATMUL and TMATMUL wgt, GATHER table,
    ATTN K), ``a`` (the first activation operand: LOAD/STORE act, MATMUL and TMATMUL x, GATHER
    act, ATTN q), ``out``, ``b`` (LOAD/STORE length n, MATMUL and TMATMUL res, SILUMUL up),
    ``rows``, ``n``, ``words`` and ``mult_b`` (MATMUL and TMATMUL res_mult, VADD b_mult, RMSNORM
    and SILUMUL mult). ``shift`` is ATTN's oshift. :data:`LAYOUT` gives every opcode's bit
    positions.
    """

    op: Opcode
    flags: int = 0
    shift: int = 0
    ext: int = 0          # LOAD/STORE ext; MATMUL wgt; GATHER table; ATTN K (super-beats)
    a: int = 0            # LOAD/STORE/GATHER act; MATMUL x; VADD/RMSNORM/ROPE/SILUMUL a; ATTN q
    out: int = 0          # MATMUL/VADD/RMSNORM/SILUMUL/ATTN output act address
    b: int = 0            # LOAD/STORE length n; MATMUL residual; VADD b; SILUMUL b (up)
    rows: int = 0
    k_words: int = 0
    n_tiles: int = 0
    n: int = 0            # valid outputs per row (GATHER: words per gathered row)
    words: int = 0        # output (and residual) row stride in act words
    mult_b: int = 0       # MATMUL res_mult; VADD b_mult; RMSNORM/SILUMUL mult
    mult_a: int = 0       # VADD a_mult
    tile_mem_rows: int = 0  # MATMUL: memory rows per weight tile (weight_format.tile_mem_rows)
    lgm: int = 0          # MATMUL: log2 M of the N:M mode (0: dense)
    lgr: int = 0          # MATMUL: log2 r, r = M/N output channels per chain (0: dense)
    x_pad: int = 0        # MATMUL: act words between rows of x past k_words (rows k_words +
                          # x_pad apart: a row padded to super-beats streams no zero columns)
    # -- transformer path -----------------------------------------------------------------
    pos_stride: int = 0   # LOAD/STORE with FLAG_POS: super-beats added per unit of POS
    ids: int = 0          # GATHER: super-beat address of the u32 token ids
    stride: int = 0       # GATHER: super-beats between table rows
    table_rows: int = 0   # GATHER: rows of the table (an id >= this stops with ERROR = 3)
    eps: int = 0          # RMSNORM: u32 epsilon added to the sum of squares
    cs: int = 0           # ROPE: act word of row 0's cos/sin table row
    cs_words: int = 0     # ROPE: act words between table rows
    heads: int = 0        # ROPE/ATTN: (query) heads per row
    hd: int = 0           # ROPE: head dimension (elements rotated per head)
    head_stride: int = 0  # ROPE: bytes between heads
    v_ext: int = 0        # ATTN: V base of the pass's cache region (super-beats); K is ``ext``
    q_words: int = 0      # ATTN: act words between rows of q and of out
    lanes: int = 0        # ATTN: query heads of the pass (one per lane of the unit)
    grp: int = 0          # ATTN: query heads per kv head in the pass
    slots: int = 0        # ATTN/KVSTORE: kv heads of the pass (words per slot of the cache)
    hd_words: int = 0     # ATTN/KVSTORE: act words per (padded) head
    pos_sb: int = 0       # ATTN: super-beats per position block of the pass's cache region
    smul: int = 0         # ATTN: score multiplier
    omul: int = 0         # ATTN: output multiplier
    sshift: int = 0       # ATTN: score shift (the output shift is ``shift``)
    window: int = 0       # ATTN: sliding window (keys per query, the newest; 0: all)
    cap: int = 0          # ATTN: score soft-cap (golden.llm.softcap_code; 0: none)
    # -- ternary path ---------------------------------------------------------------------
    g: int = 0            # ABSQUANT/RMSNORM: act word of the int8 gamma codes (flag GAMMA)
    m_addr: int = 0       # ABSQUANT/TMATMUL: act word of the rows' absmax m (u16 LE at byte 2b)
    k_groups: int = 0     # TMATMUL: groups of G activations per row (ceil(K / G))
    n_out: int = 0        # TMATMUL: output channels
    x_words: int = 0      # TMATMUL: act words between rows of x
    # -- state-space path -----------------------------------------------------------------
    state: int = 0        # CONV: first history beat of the layer; SCAN: first state channel
    silu_shift: int = 0   # CONV: the SiLU's shift (its multiplier is ``mult_b``)
    c: int = 0            # SCAN: act word of row 0's C (B's is ``b``)
    dt: int = 0           # SCAN: act word of row 0's dt projection (int8, softplus ROM input)
    bc_words: int = 0     # SCAN: act words between rows of B and of C
    bu_mult: int = 0      # SCAN: multiplier and shift of dt * u * B into the state
    bu_shift: int = 0
    y_mult: int = 0       # SCAN: multiplier of h . C into y (its shift is ``shift``)
    d_shift: int = 0      # SCAN: shift of the D skip (its multipliers are in the parameters)
    lgb: int = 0          # HADAMARD: log2 of the block
    obits: int = 0        # HADAMARD: output bits (4 or 8)

    @property
    def relu(self) -> bool:
        return bool(self.flags & FLAG_RELU)

    @property
    def residual(self) -> bool:
        return bool(self.flags & FLAG_RESIDUAL)

    @property
    def int4(self) -> bool:
        return bool(self.flags & FLAG_INT4)

    @property
    def pos(self) -> bool:
        return bool(self.flags & FLAG_POS)

    @property
    def relu2(self) -> bool:
        return bool(self.flags & FLAG_RELU2)

    @property
    def gamma(self) -> bool:
        return bool(self.flags & FLAG_GAMMA)

    def encode(self) -> bytes:
        _check(self)
        w = [0] * 8
        for name, word, lo, _bits in HEADER + LAYOUT.get(self.op, ()):
            w[word] |= getattr(self, name) << lo
        return struct.pack("<8I", *w)


#: Fields of every opcode, ``(field, word, low bit, width)`` as in :data:`LAYOUT`: w0[7:0]
#: opcode, w0[15:8] flags (the ``FLAG_*`` bits), w0[21:16] shift.
HEADER = (("op", 0, 0, 8), ("flags", 0, 8, 8), ("shift", 0, 16, 6))
#: Field positions per opcode: ``(field, word, low bit, width)`` (docs/architecture.md,
#: "Instruction set"). VADD has MATMUL's common fields, so its encoder also writes w1 and w4
#: (zero in every program the mapper emits).
_MATMUL_COMMON = (("ext", 1, 0, 32), ("a", 2, 0, 16), ("out", 2, 16, 16), ("b", 3, 0, 16),
                  ("rows", 3, 16, 16), ("k_words", 4, 0, 16), ("n_tiles", 4, 16, 16),
                  ("n", 5, 0, 16), ("words", 5, 16, 16), ("mult_b", 6, 0, 16),
                  ("mult_a", 6, 16, 16))
_LOAD_STORE = (("ext", 1, 0, 32), ("a", 2, 0, 16), ("b", 3, 0, 16), ("pos_stride", 4, 0, 16))
_MATMUL = _MATMUL_COMMON + (("tile_mem_rows", 7, 0, 16), ("lgm", 7, 16, 3), ("lgr", 7, 19, 2),
                            ("x_pad", 7, 21, 11))
LAYOUT: dict = {
    Opcode.LOAD: _LOAD_STORE,
    Opcode.STORE: _LOAD_STORE,
    Opcode.MATMUL: _MATMUL,
    Opcode.VADD: _MATMUL_COMMON,
    Opcode.PREFETCH: _MATMUL,
    Opcode.GATHER: (("ext", 1, 0, 32), ("a", 2, 0, 16), ("n", 3, 0, 16), ("rows", 3, 16, 16),
                    ("ids", 4, 0, 32), ("stride", 5, 0, 16), ("table_rows", 6, 0, 32)),
    Opcode.RMSNORM: (("a", 2, 0, 16), ("out", 2, 16, 16), ("g", 3, 0, 16), ("rows", 3, 16, 16),
                     ("eps", 4, 0, 32), ("n", 5, 0, 16), ("words", 5, 16, 16),
                     ("mult_b", 6, 0, 16)),
    Opcode.ROPE: (("a", 2, 0, 16), ("cs", 2, 16, 16), ("cs_words", 3, 0, 16),
                  ("rows", 3, 16, 16), ("heads", 4, 0, 16), ("hd", 4, 16, 16),
                  ("head_stride", 5, 0, 16), ("words", 5, 16, 16)),
    Opcode.SILUMUL: (("a", 2, 0, 16), ("out", 2, 16, 16), ("b", 3, 0, 16), ("rows", 3, 16, 16),
                     ("n", 5, 0, 16), ("words", 5, 16, 16), ("mult_b", 6, 0, 16)),
    Opcode.ATTN: (("ext", 1, 0, 32), ("a", 2, 0, 16), ("out", 2, 16, 16), ("q_words", 3, 0, 16),
                  ("rows", 3, 16, 16), ("v_ext", 4, 0, 32), ("lanes", 5, 0, 8),
                  ("grp", 5, 8, 8), ("hd_words", 5, 16, 8), ("pos_sb", 5, 24, 8),
                  ("smul", 6, 0, 16), ("omul", 6, 16, 16), ("sshift", 7, 0, 6),
                  ("slots", 7, 8, 8), ("window", 7, 16, 16), ("cap", 0, 22, 10)),
    Opcode.KVSTORE: (("ext", 1, 0, 32), ("a", 2, 0, 16), ("words", 3, 0, 16),
                     ("rows", 3, 16, 16), ("pos_stride", 4, 0, 16), ("slots", 5, 0, 8),
                     ("hd_words", 5, 8, 8)),
    Opcode.ABSQUANT: (("a", 2, 0, 16), ("out", 2, 16, 16), ("g", 3, 0, 16), ("rows", 3, 16, 16),
                      ("m_addr", 4, 0, 16), ("n", 5, 0, 16), ("words", 5, 16, 16)),
    Opcode.TMATMUL: (("ext", 1, 0, 32), ("a", 2, 0, 16), ("out", 2, 16, 16), ("b", 3, 0, 16),
                     ("rows", 3, 16, 16), ("k_groups", 4, 0, 16), ("n_out", 4, 16, 16),
                     ("x_words", 5, 0, 16), ("words", 5, 16, 16), ("mult_b", 6, 0, 16),
                     ("m_addr", 6, 16, 16)),
    Opcode.CONV: (("ext", 1, 0, 32), ("a", 2, 0, 16), ("out", 2, 16, 16), ("n", 3, 0, 16),
                  ("rows", 3, 16, 16), ("words", 4, 0, 16), ("mult_b", 4, 16, 16),
                  ("state", 5, 0, 32), ("silu_shift", 6, 0, 6)),
    Opcode.SCAN: (("ext", 1, 0, 32), ("a", 2, 0, 16), ("out", 2, 16, 16), ("b", 3, 0, 16),
                  ("rows", 3, 16, 16), ("c", 4, 0, 16), ("dt", 4, 16, 16), ("n", 5, 0, 16),
                  ("words", 5, 16, 16), ("bu_mult", 6, 0, 16), ("y_mult", 6, 16, 16),
                  ("state", 7, 0, 20), ("bu_shift", 7, 20, 6), ("d_shift", 7, 26, 6),
                  ("bc_words", 0, 22, 10)),
    Opcode.HADAMARD: (("a", 2, 0, 16), ("out", 2, 16, 16), ("n", 3, 0, 16), ("rows", 3, 16, 16),
                      ("words", 4, 0, 16), ("mult_b", 4, 16, 16), ("lgb", 5, 0, 4),
                      ("obits", 5, 4, 4)),
}

def field_max(op: Opcode, name: str) -> int:
    """The largest value field ``name`` of opcode ``op`` holds (:data:`LAYOUT`'s width)."""
    widths = {fld: bits for fld, _w, _lo, bits in LAYOUT[op]}
    return (1 << widths[name]) - 1


#: Fields of the base instructions: checked against these widths for every opcode, whether or
#: not the opcode encodes them.
_BASE_WIDTHS = (("a", 16), ("out", 16), ("b", 16), ("rows", 16), ("k_words", 16),
                ("n_tiles", 16), ("n", 16), ("words", 16), ("mult_b", 16), ("mult_a", 16),
                ("ext", 32))
_MODE_FIELDS = {"tile_mem_rows", "lgm", "lgr"}
#: Fields of the transformer and ternary instructions: must be 0 on an opcode that does not
#: encode them (they would be silently lost).
_EXTENSION_FIELDS = ("pos_stride", "ids", "stride", "table_rows", "eps", "cs", "cs_words",
                     "heads", "hd", "head_stride", "v_ext", "q_words", "lanes", "grp", "slots",
                     "hd_words", "pos_sb", "smul", "omul", "sshift", "window", "cap", "g",
                     "m_addr", "k_groups", "n_out", "x_words", "x_pad", "state", "silu_shift",
                     "c", "dt", "bc_words", "bu_mult", "bu_shift", "y_mult", "d_shift", "lgb",
                     "obits")


def _check(i: Instr) -> None:
    name = i.op.name
    header = tuple((fld, bits) for fld, _w, _lo, bits in HEADER if fld != "op")
    for fld, bits in header + _BASE_WIDTHS:
        v = getattr(i, fld)
        if not 0 <= v < (1 << bits):
            raise ValueError(f"{name}: field {fld}={v} does not fit {bits} bits")
    if i.shift > 47:
        raise ValueError(f"{name}: shift {i.shift} > 47")
    layout = {f: bits for f, _w, _lo, bits in LAYOUT.get(i.op, ())}
    for fld, v, hi in (("tile_mem_rows", i.tile_mem_rows, (1 << 16) - 1), ("lgm", i.lgm, MAX_LGM),
                       ("lgr", i.lgr, MAX_LGR)):
        if not 0 <= v <= hi:
            raise ValueError(f"{name}: field {fld}={v} outside 0..{hi}")
        if v and i.op not in WEIGHT_OPCODES:
            raise ValueError(f"{name}: field {fld} is a MATMUL field, must be 0")
    for fld in _EXTENSION_FIELDS:
        v = getattr(i, fld)
        if fld not in layout:
            if v:
                raise ValueError(f"{name}: field {fld}={v} is not a field of {name}, must be 0")
            continue
        if not 0 <= v < (1 << layout[fld]):
            raise ValueError(f"{name}: field {fld}={v} does not fit {layout[fld]} bits")
    for fld, bits in layout.items():    # base fields narrower in an opcode's layout (none today)
        v = getattr(i, fld)
        if fld not in _MODE_FIELDS and not 0 <= v < (1 << bits):
            raise ValueError(f"{name}: field {fld}={v} does not fit {bits} bits")


def decode(raw: bytes) -> Instr:
    """Decode 32 bytes into an :class:`Instr` (raises ValueError on an unknown opcode).

    Any bit pattern of a known opcode decodes; an illegal MATMUL mode is the executor's error,
    as in the hardware.
    """
    w = struct.unpack("<8I", raw[:INSTR_BYTES])

    def fields(table):
        return {name: (w[word] >> lo) & ((1 << bits) - 1) for name, word, lo, bits in table}

    head = fields(HEADER)
    op = Opcode(head.pop("op"))
    return Instr(op, **head, **fields(LAYOUT.get(op, ())))
