"""Vector special-function unit: RMSNORM, ROPE, SILUMUL and ABSQUANT on the activation buffer.

Bit-exact with :func:`hwflow.golden.llm.rmsnorm`, :func:`~hwflow.golden.llm.rope`,
:func:`~hwflow.golden.llm.gate_mul` (SiLU, ReLU**2, GELU-tanh), :func:`~hwflow.golden.llm.tanh_cap`
(docs/architecture.md, "Transformer path") and :func:`hwflow.golden.ternary.absmax_quant`
("Ternary path"). Elements are processed ``V = AccelConfig.vec_lanes`` at a time through ``V``
copies of a 7-stage arithmetic pipeline (one at a time at ``V = 1``, the smallest unit): per lane
one ``x * r * mult`` multiplier path (16 x 34 bits, then 42 x 17 bits; an 8 x 8 product of x and
gamma before it: 5 DSP48E2) and a 1024-entry ROM (SiLU, ReLU**2, GELU-tanh, tanh: one RAMB18);
shared by the lanes, a sequential square root and divider used once per RMSNORM / ABSQUANT row.
"""

from __future__ import annotations

import math

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .contract import rope_head_steps, rope_pairs_per_step
from .isa import Opcode
from .isa_layout import HEADER_LAYOUT, LAYOUTS

__all__ = ["VectorUnit", "SILU_ROM", "RELU2_ROM", "GELU_ROM", "TANH_ROM", "rope_head_steps",
           "rope_pairs_per_step"]

#: SiLU ROM, ``SILU_ROM[v + 128] = round(silu(v / 16) * 2**8)`` for int8 ``v``: the same
#: formula as ``golden.llm.SILU_LUT`` (hw/ may not import golden; the tests compare the two).
#: Range -71..2031, so 12 signed bits.
SILU_ROM = [int(round((v / 16) / (1.0 + math.exp(-v / 16)) * 256)) for v in range(-128, 128)]
#: ReLU**2 ROM, ``RELU2_ROM[v + 128] = round(relu(v / 16)**2 * 2**8) = v**2`` for ``v > 0``, else
#: 0 (``golden.llm.RELU2_LUT``; the tests compare the two). Range 0..16129, so 16 signed bits.
RELU2_ROM = [v * v if v > 0 else 0 for v in range(-128, 128)]


def _gelu_tanh(x: float) -> float:
    return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


#: GELU-tanh ROM, ``GELU_ROM[v + 128] = round(gelu_tanh(v / 16) * 2**8)`` (Gemma's gate, SILUMUL
#: flag GELU; ``golden.llm.GELU_LUT``, the tests compare the two). Range -44..2032, 12 signed bits.
GELU_ROM = [int(round(_gelu_tanh(v / 16) * 256)) for v in range(-128, 128)]
#: tanh ROM, ``TANH_ROM[v + 128] = round(tanh(v / 64) * 2**14)`` (final logit soft-cap of logits
#: at the scale cap/64, SILUMUL flag TANH; ``golden.llm.TANH_LUT``, the tests compare the two).
#: Range -15795..15776, 15 signed bits.
TANH_ROM = [int(round(math.tanh(v / 64) * (1 << 14))) for v in range(-128, 128)]

# RMSNORM widths. S = sum x**2 + eps < 2**32 + 65535 * 2**14 < 2**34. isqrt(S << 16) < 2**25,
# found by 25 digit-by-digit steps (two radicand bits each, remainder < 2 * root + 1 < 2**26).
_S_BITS = 34
_RAD_BITS = 50
_ROOT_BITS = 25
_SQRT_STEPS = _RAD_BITS // 2
# r = 2**40 // d. d >= 256 whenever S >= 1 (d = isqrt(S << 16) >= isqrt(2**16)), so r <= 2**32
# (33 bits) and the 8 quotient bits above bit 32 are zero: the restoring divider starts from
# the partial remainder after them (2**40 >> 33 = 128 < d) and runs only 33 steps.
_R_BITS = 33
_DIV_STEPS = 33
_DIV_REM0 = 1 << (40 - _DIV_STEPS)
# ABSQUANT: R = (127 << 24) // m by the same divider: the dividend's 33 bits enter from the top
# of rad (zero after the square root for RMSNORM), one per step, below a zero remainder.
_ABSQ_DIVIDEND = 127 << 24
_ABSQ_SHIFT = 24
_M_BITS = 15                # m = max |x * gamma| <= 2**14
# Pipeline operands. a (s16) is x, up, x1/x2 (s8) or RMSNORM's x * gamma (s15); b1 (s34) is r
# (u33), the ROM value (s16), +-cos/sin (s17), gamma or x (s8); b2 (s17) is mult (u16), gamma
# (s8) or 1. p1 = a * b1 < 2**40 in magnitude (|x * r| <= 2**32, |x * gamma * r| <= 2**39);
# p2 = p1 * b2 < 2**56 (ABSQUANT: |x * R * gamma| < 2**45); plus the
# rounding term 2**(shift-1) <= 2**62 still fits a signed 64-bit v, which is exactly golden's
# int64 arithmetic.
_B1_BITS = 34
_B2_BITS = 17
_P1_BITS = 42
_V_BITS = 64

# Stage-1 actions (what the cycle after a read does with the read data).
_K_NONE, _K_SQ, _K_ELEM, _K_LATCH, _K_ZWORD, _K_C, _K_S, _K_X1, _K_X2, _K_MAX = range(10)


# rope_pairs_per_step and rope_head_steps (ROPE steps of one head) are in the contract,
# hw/contract.py


class VectorUnit(wiring.Component):
    """RMSNORM (0x06, flag GAMMA), ROPE (0x07), SILUMUL (0x08, flags RELU2, GELU, TANH) and
    ABSQUANT (0x0A, flag GAMMA) on the activation buffer.

    The controller puts the instruction on ``ins`` and pulses ``start``; ``busy`` is high from
    the next cycle until every result has been written. Field positions are those of
    docs/architecture.md's field table ("Instruction set"). Results equal ``golden.llm`` and
    ``golden.ternary.absmax_quant`` bit for bit.

    Datapath of ``V = cfg.vec_lanes`` lanes: a sequencer reads activation words (synchronous
    port: data one cycle after the address, held while ``rd_en`` is low, so a word read once
    feeds its ``G = L / V`` lane groups without a register), picks one group of ``V``
    consecutive elements per cycle and pushes it through ``V`` copies of one pipeline: pick
    bytes -> select operands (SiLU ROM read, one port per lane) -> ``p1 = a * b1`` ->
    ``p2 = p1 * b2`` -> ``v = (first ? round : v) + p2`` -> shift and saturate -> write of the
    group's ``V`` bytes (``wr_en``: ``V`` byte enables; whole words of zeros for row padding).
    Reductions take the ``V`` lanes at once: an adder tree (RMSNORM's sum of squares) or a max
    tree (ABSQUANT's ``m``) into a register, then the running sum / maximum; the square root
    and the divider (once per row) are shared and serial. Every element is read before it is
    written, so ``out`` may equal an input. ``V = 1`` is the element-serial unit.

    ABSQUANT makes two passes over each row: ``m = max |x * gamma|`` (the same pipeline, ``p2``
    into a running maximum instead of a write), then, after the pipeline drained, it writes ``m``
    (u16 LE, two byte enables at byte ``2b`` of the words from ``m_addr``) and divides
    ``R = (127 << 24) // m`` (0 when ``m = 0``) on the RMSNORM divider, then quantizes
    ``sat8((x * R * gamma + 2**23) >> 24)`` group by group. With flag GAMMA each word index
    first reads the gamma word into a register (as SILUMUL's gate), in both passes.

    SILUMUL's ROM holds four tables of 256 entries: SiLU, ReLU**2 (flag RELU2), GELU-tanh (flag
    GELU) and tanh (flag TANH), one flag selecting its table; the ISA leaves two or more of them
    undefined (the ISA model refuses them), the unit takes TANH over GELU over RELU2. Flag TANH
    (``golden.llm.tanh_cap``) is unary: the ROM is addressed by ``a``'s bytes as they are read,
    the up operand is 1 and ``b`` is not read, so there is no gate word latch either.

    ROPE runs in steps of four reads (cos word, sin word, x1 word, x2 word) while the previous
    step's four products per pair (``x1 c``, ``-x2 s``, ``x2 c``, ``x1 s``) go through the lanes,
    one per cycle, and its y1 and y2 bytes are written (one partial word each). A step takes
    ``P <= Vr = min(V, L/2)`` consecutive pairs of a head (a word holds ``L/2`` int16 cos), as
    many as keep each of its four groups inside one word (:func:`rope_head_steps`).

    Cycles (``G = L / V`` lane groups per word, ``nw = ceil(n / L)`` words holding elements,
    ``words`` the row stride):

    * RMSNORM: per row ``2 * nw * G + nw * gam + (words - nw) + 67``: sum of squares
      (``nw * G``), 7-cycle drain, 25-step isqrt, 33-step divider, normalize (``nw * G``, and
      with flag GAMMA one gamma word read per word index, as ABSQUANT), zero words, 2 cycles of
      row dispatch;
    * SILUMUL: per row ``nw * (G + 1) + (words - nw) + 2`` (one extra cycle per word reads the
      gate word into a register); with flag TANH ``nw * G + (words - nw) + 2`` (no gate word);
    * ABSQUANT: per row ``2 * nw * (G + gam) + (words - nw) + 42`` (``gam`` = 1 with flag
      GAMMA): the max pass, 7-cycle drain, 33-step divider, the quantize pass, zero words, row
      dispatch;
    * ROPE: ``4 * rows * sum_h steps(h)`` with ``steps(h) =``
      :func:`rope_head_steps` ``(L, V, hd, h * head_stride)``: ``hd / 2`` at ``V = 1`` (two
      cycles per element), ``hd / (2 Vr)`` when ``head_stride`` and ``hd / 2`` are multiples
      of ``Vr``;

    plus 9 cycles per instruction (13 for ROPE): decode and the final pipeline drain. These are
    the cycles ``busy`` is high, counted from the ``start`` edge; the tests pin them.

    Parameters
    ----------
    cfg : AccelConfig
        ``chain_len`` (L bytes per activation word, a power of two, 2..32) and ``vec_lanes``
        (V lanes, dividing L) are used. Every opcode is executed: which ones a program may
        issue is the controller's decision (ROPE needs ``cfg.transformer``).

    Attributes
    ----------
    ins : in, 256 bits
        The instruction, stable from ``start`` until ``busy`` falls, read through
        :data:`.isa_layout.LAYOUTS` (fields: :data:`.isa.LAYOUT`).
    start : in, pulse
    busy : out
    rd_addr, rd_en : out; rd_data : in, 8*L bits
        Activation buffer read port (word address).
    wr_addr, wr_data : out; wr_en : out, L byte enables
        Activation buffer write port.
    """

    def __init__(self, cfg: AccelConfig):
        L, V = cfg.chain_len, cfg.vec_lanes
        if L < 2 or L > 32 or L & (L - 1):
            raise ValueError(f"VectorUnit: chain_len {L} must be a power of two in 2..32")
        if V < 1 or L % V:
            raise ValueError(f"VectorUnit: vec_lanes {V} must divide chain_len {L}")
        self.cfg = cfg
        self.L, self.V = L, V
        self.lg = L.bit_length() - 1
        self.lv = V.bit_length() - 1
        super().__init__({
            "ins": In(256),
            "start": In(1),
            "busy": Out(1),
            "rd_addr": Out(16), "rd_en": Out(1), "rd_data": In(8 * L),
            "wr_addr": Out(16), "wr_data": Out(8 * L), "wr_en": Out(L),
        })

    def elaborate(self, platform):
        m = Module()
        L, lg, V, lv = self.L, self.lg, self.V, self.lv
        G = L // V                  # lane groups per word
        VR = rope_pairs_per_step(L, V)
        ones = (1 << V) - 1

        # each opcode's fields through its layout; a field at the same position in several
        # opcodes through one of them: RMSNORM's a, rows, words (all four), out, n (all but
        # ROPE) and mult_b (SILUMUL's too), SILUMUL's b (RMSNORM's and ABSQUANT's g)
        hdr = data.View(HEADER_LAYOUT, self.ins)
        flags = hdr.flags
        rms = data.View(LAYOUTS[Opcode.RMSNORM], self.ins)
        silu = data.View(LAYOUTS[Opcode.SILUMUL], self.ins)
        absq = data.View(LAYOUTS[Opcode.ABSQUANT], self.ins)
        rope = data.View(LAYOUTS[Opcode.ROPE], self.ins)

        # ---- instruction fields, latched at start (the instruction is stable anyway; registers
        # keep the decode logic off the sequencer's paths) -------------------------------------
        op = Signal(8)
        rows = Signal(16)
        n = Signal(16)
        words = Signal(16)
        mult = Signal(16)
        shift = Signal(6)
        rnd = Signal(_V_BITS - 1)
        eps = Signal(32)
        nw = Signal(17)             # words holding elements, ceil(n / L)
        end_i = Signal(18)          # nw * L: elements visited per pass
        cs_words = Signal(16)
        heads = Signal(16)
        hd = Signal(16)
        half = Signal(15)
        head_stride = Signal(16)
        gam = Signal()              # ABSQUANT, RMSNORM flag GAMMA
        table = Signal(2)           # SILUMUL's ROM table: SiLU, ReLU**2, GELU-tanh, tanh
        tanh = Signal()             # SILUMUL flag TANH: unary, b is not read

        is_rms = op == Opcode.RMSNORM
        is_silu = op == Opcode.SILUMUL
        is_rope = op == Opcode.ROPE
        is_absq = op == Opcode.ABSQUANT
        # SILUMUL (gate; not with TANH), ABSQUANT and RMSNORM with GAMMA latch a second word per
        # word index
        two_words = (is_silu & ~tanh) | ((is_absq | is_rms) & gam)

        # ---- sequencer state -------------------------------------------------------------------
        row = Signal(16)
        a_row = Signal(16)
        b_row = Signal(16)
        out_row = Signal(16)
        cs_row = Signal(16)
        i = Signal(18)              # element index within the row (pass loops), steps of V
        lat = Signal()              # SILUMUL: the gate word of this word index is latched
        zw = Signal(17)             # zero-fill word index
        hbase = Signal(16 + lg + 1)  # ROPE: byte address of the current head
        k = Signal(15)              # ROPE: pair index in the head
        h = Signal(16)              # ROPE: head index
        ph = Signal(2)              # ROPE: read phase (cos, sin, x1, x2)

        s_acc = Signal(_S_BITS)     # RMSNORM: sum of squares + eps
        rad = Signal(_RAD_BITS)
        root = Signal(_ROOT_BITS)
        srem = Signal(_ROOT_BITS + 3)
        drem = Signal(_ROOT_BITS + 2)
        quo = Signal(_R_BITS)
        r = Signal(_R_BITS)
        cnt = Signal(6)
        amax = Signal(_M_BITS)      # ABSQUANT: m of the current row
        mbyte = Signal(16 + lg)     # ABSQUANT: byte address of the current row's m
        m_wr = Signal()             # ABSQUANT: write m (the pipeline is idle)

        # ---- pipeline control bundles -----------------------------------------------------------
        # j: byte offset of the lane group (ROPE: of the step's first byte) in the word read;
        # zero: lanes past the row's n (written as 0, left out of the reductions); mask: lanes
        # written (ROPE: the step's P pairs)
        c0_layout = data.StructLayout({
            "kind": 4, "j": lg, "word": 16, "zero": V, "mask": V,
        })
        ctl_layout = data.StructLayout({
            "valid": 1, "first": 1, "last": 1, "sq": 1, "mx": 1, "zero": V, "full": 1,
            "word": 16, "lane": lg, "mask": V,
        })
        c0 = Signal(c0_layout)      # comb: what stage 1 does next cycle
        c1 = Signal(c0_layout)
        c2 = Signal(ctl_layout)
        c3 = Signal(ctl_layout)
        c4 = Signal(ctl_layout)
        c5 = Signal(ctl_layout)
        c6 = Signal(ctl_layout)
        wr_valid = Signal()
        burst = Signal()            # ROPE: the four products of a step are being issued
        bc = Signal(2)

        # ---- sequencer --------------------------------------------------------------------------
        j_i = i[:lg]
        w_i = i[lg:]
        # lanes of the group at i past the row's last element
        zmask = Cat(*[i + lane >= n for lane in range(V)])
        m.d.sync += c1.eq(c0)

        pipe_busy = Signal()        # an element, a ROPE product burst or a write is in flight
        m.d.comb += pipe_busy.eq((c1.kind != _K_NONE) | c2.valid | c3.valid | c4.valid
                                 | c5.valid | c6.valid | wr_valid | burst)

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.next = "INIT"
            with m.State("INIT"):
                nwv = (rms.n + (L - 1)) >> lg
                # ROPE's products are Q1.14 (cos/sin): a fixed round-shift by 14
                sh = Mux(hdr.op == Opcode.ROPE, 14,
                         Mux(hdr.op == Opcode.ABSQUANT, _ABSQ_SHIFT, hdr.shift))
                # one table flag at a time (the ISA leaves two undefined): TANH over GELU over
                # RELU2; TANH changes the read schedule, so only SILUMUL takes it
                f_tanh = flags.tanh & (hdr.op == Opcode.SILUMUL)
                half_hd = rope.hd[1:]       # hd / 2: pairs per head
                m.d.sync += [
                    op.eq(hdr.op),
                    table.eq(Mux(f_tanh, 3, Mux(flags.gelu, 2, flags.relu2))),
                    tanh.eq(f_tanh),
                    gam.eq(flags.gamma),
                    mbyte.eq(absq.m_addr << lg),
                    shift.eq(sh),
                    rnd.eq((Const(1, _V_BITS - 1) << sh) >> 1),
                    rows.eq(rms.rows),
                    n.eq(rms.n), words.eq(rms.words), nw.eq(nwv), end_i.eq(nwv << lg),
                    mult.eq(rms.mult_b), eps.eq(rms.eps),
                    cs_words.eq(rope.cs_words), heads.eq(rope.heads), hd.eq(rope.hd),
                    half.eq(half_hd), head_stride.eq(rope.head_stride),
                    row.eq(0),
                    a_row.eq(rms.a), out_row.eq(rms.out), b_row.eq(silu.b),
                    cs_row.eq(rope.cs),
                    hbase.eq(rope.a << lg),
                    k.eq(0), h.eq(0), ph.eq(0),
                ]
                with m.If(hdr.op == Opcode.ROPE):
                    with m.If((rope.rows == 0) | (rope.heads == 0) | (half_hd == 0)):
                        m.next = "FINISH"
                    with m.Else():
                        m.next = "ROPE"
                with m.Else():
                    m.next = "ROW"

            with m.State("ROW"):
                m.d.sync += [i.eq(0), lat.eq(0), zw.eq(nw), s_acc.eq(eps), amax.eq(0)]
                with m.If(row == rows):
                    m.next = "FINISH"
                with m.Elif(is_absq):
                    # n == 0: m = 0 is still written
                    with m.If(end_i == 0):
                        m.next = "MWAIT"
                    with m.Else():
                        m.next = "AMAX"
                with m.Elif(end_i == 0):
                    # n == 0: nothing to normalize or multiply, only the zero fill
                    m.next = "ZERO"
                with m.Elif(is_rms):
                    m.next = "SUMSQ"
                with m.Else():
                    m.next = "ELEMS"
            with m.State("SUMSQ"):
                # pass 1: S += x**2 over the row (read each word once, at its first group)
                m.d.comb += [
                    self.rd_en.eq(j_i == 0), self.rd_addr.eq(a_row + w_i),
                    c0.kind.eq(_K_SQ), c0.j.eq(j_i), c0.zero.eq(zmask),
                ]
                m.d.sync += i.eq(i + V)
                with m.If(i == end_i - V):
                    m.next = "SQWAIT"
            with m.State("SQWAIT"):
                # the last squares reach the running sum 6 cycles after they were issued (lane tree)
                with m.If(~pipe_busy):
                    m.d.sync += [rad.eq(s_acc << 16), root.eq(0), srem.eq(0), cnt.eq(0),
                                 i.eq(0)]
                    m.next = "SQRT"
            with m.State("SQRT"):
                # digit-by-digit square root: two radicand bits per step
                rem2 = Cat(rad[_RAD_BITS - 2:], srem)
                trial = Cat(Const(1, 2), root)
                ge = rem2 >= trial
                m.d.sync += [
                    srem.eq(Mux(ge, rem2 - trial, rem2)),
                    root.eq(Cat(ge, root)),
                    rad.eq(rad << 2),
                    cnt.eq(cnt + 1),
                ]
                with m.If(cnt == _SQRT_STEPS - 1):
                    m.d.sync += [drem.eq(_DIV_REM0), quo.eq(0), cnt.eq(0), rad.eq(0)]
                    m.next = "DIV"
            with m.State("AMAX"):
                # ABSQUANT pass 1: m = max |x * gamma| (with GAMMA, each word index first
                # latches the gamma word, as SILUMUL's gate)
                with m.If(gam & (j_i == 0) & ~lat):
                    m.d.comb += [self.rd_en.eq(1), self.rd_addr.eq(b_row + w_i),
                                 c0.kind.eq(_K_LATCH)]
                    m.d.sync += lat.eq(1)
                with m.Else():
                    m.d.comb += [
                        self.rd_en.eq(j_i == 0), self.rd_addr.eq(a_row + w_i),
                        c0.kind.eq(_K_MAX), c0.j.eq(j_i), c0.zero.eq(zmask),
                    ]
                    m.d.sync += [i.eq(i + V), lat.eq(0)]
                    with m.If(i == end_i - V):
                        m.next = "MWAIT"
            with m.State("MWAIT"):
                # the last |p2| reach amax 6 cycles after they were issued; then m is written
                # (the pipeline and the write port are idle) and R = (127 << 24) // m divided
                with m.If(~pipe_busy):
                    m.d.comb += m_wr.eq(1)
                    m.d.sync += [rad.eq(_ABSQ_DIVIDEND << (_RAD_BITS - _DIV_STEPS)),
                                 drem.eq(0), quo.eq(0), cnt.eq(0), root.eq(amax), i.eq(0),
                                 lat.eq(0)]
                    m.next = "DIV"
            with m.State("DIV"):
                # restoring division, quotient bits 32..0: 2**40 // root (RMSNORM: the dividend's
                # one bit is in the initial remainder, rad is 0), (127 << 24) // m (ABSQUANT:
                # the dividend enters from the top of rad)
                d2 = Cat(rad[-1], drem)
                ge = d2 >= root
                qn = Cat(ge, quo)[:_R_BITS]
                m.d.sync += [drem.eq(Mux(ge, d2 - root, d2)), quo.eq(qn), cnt.eq(cnt + 1),
                             rad.eq(rad << 1)]
                with m.If(cnt == _DIV_STEPS - 1):
                    m.d.sync += r.eq(Mux(root == 0, 0, qn))
                    with m.If(end_i == 0):
                        m.next = "ZERO"
                    with m.Else():
                        m.next = "ELEMS"

            with m.State("ELEMS"):
                # RMSNORM / ABSQUANT pass 2, SILUMUL: one lane group per cycle; SILUMUL (ABSQUANT
                # and RMSNORM with GAMMA) first latches the gate (gamma) word of each word index
                # (one extra cycle), then streams the up (x) word; SILUMUL with TANH streams a
                # alone (no latch)
                with m.If(two_words & (j_i == 0) & ~lat):
                    m.d.comb += [self.rd_en.eq(1),
                                 self.rd_addr.eq(Mux(is_absq | is_rms, b_row, a_row) + w_i),
                                 c0.kind.eq(_K_LATCH)]
                    m.d.sync += lat.eq(1)
                with m.Else():
                    m.d.comb += [
                        self.rd_en.eq(j_i == 0),
                        self.rd_addr.eq(Mux(is_silu & ~tanh, b_row, a_row) + w_i),
                        c0.kind.eq(_K_ELEM), c0.j.eq(j_i), c0.word.eq(out_row + w_i),
                        c0.zero.eq(zmask),
                    ]
                    m.d.sync += [i.eq(i + V), lat.eq(0)]
                    with m.If(i == end_i - V):
                        m.next = "ZERO"
            with m.State("ZERO"):
                # bytes n <= i < words * L: the rest of the last word went through ELEMS with
                # its zero flags; the whole words after it are written in one cycle each
                with m.If(zw < words):
                    m.d.comb += [c0.kind.eq(_K_ZWORD), c0.word.eq(out_row + zw)]
                    m.d.sync += zw.eq(zw + 1)
                with m.Else():
                    # ABSQUANT's and RMSNORM's gamma (in b_row) is one vector for every row
                    m.d.sync += [row.eq(row + 1), a_row.eq(a_row + words),
                                 b_row.eq(b_row + Mux(is_absq | is_rms, 0, words)),
                                 out_row.eq(out_row + words), mbyte.eq(mbyte + 2)]
                    m.next = "ROW"

            with m.State("ROPE"):
                # four reads per step: cos word, sin word, x1 word, x2 word; the products are
                # issued from a snapshot while the next step is read
                p1 = hbase + k
                p2 = p1 + half
                coff = Cat(Const(0, 1), k)
                soff = hd + coff
                if VR == 1:
                    npairs = Const(1, 1)
                else:
                    # P pairs: at most Vr and the rest of the head, and no group crosses a word;
                    # k is stable through a step, so P is registered (used at phase 3 only)
                    def vmin(a, b):
                        return Mux(a < b, a, b)
                    rest = half - k
                    pn = Mux(rest < VR, rest, VR)[:lg]
                    for lim in (L - p1[:lg], L - p2[:lg], (L - coff[:lg]) >> 1,
                                (L - soff[:lg]) >> 1):
                        pn = vmin(pn, lim)[:lg]
                    npairs = Signal(lg)
                    m.d.sync += npairs.eq(pn)
                pmask = Cat(*[npairs > lane for lane in range(V)])
                with m.Switch(ph):
                    with m.Case(0):
                        m.d.comb += [self.rd_addr.eq(cs_row + (coff >> lg)),
                                     c0.kind.eq(_K_C), c0.j.eq(coff[:lg])]
                    with m.Case(1):
                        m.d.comb += [self.rd_addr.eq(cs_row + (soff >> lg)),
                                     c0.kind.eq(_K_S), c0.j.eq(soff[:lg])]
                    with m.Case(2):
                        m.d.comb += [self.rd_addr.eq(p1 >> lg), c0.kind.eq(_K_X1),
                                     c0.j.eq(p1[:lg]), c0.word.eq(p1 >> lg)]
                    with m.Case(3):
                        m.d.comb += [self.rd_addr.eq(p2 >> lg), c0.kind.eq(_K_X2),
                                     c0.j.eq(p2[:lg]), c0.word.eq(p2 >> lg),
                                     c0.mask.eq(pmask)]
                m.d.comb += self.rd_en.eq(1)
                m.d.sync += ph.eq(ph + 1)
                with m.If(ph == 3):
                    with m.If(k + npairs != half):
                        m.d.sync += k.eq(k + npairs)
                    with m.Else():
                        m.d.sync += k.eq(0)
                        with m.If(h != heads - 1):
                            m.d.sync += [h.eq(h + 1), hbase.eq(hbase + head_stride)]
                        with m.Else():
                            nxt = (a_row + words)[:16]
                            m.d.sync += [h.eq(0), row.eq(row + 1), a_row.eq(nxt),
                                         hbase.eq(nxt << lg), cs_row.eq(cs_row + cs_words)]
                            with m.If(row == rows - 1):
                                m.next = "FINISH"

            with m.State("FINISH"):
                with m.If(~pipe_busy):
                    m.next = "IDLE"

        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))

        # ---- stage 1: pick the lane group from the read word ------------------------------------
        # SiLU in entries 0..255, ReLU**2 in 256..511 (SILUMUL flag RELU2), GELU-tanh in
        # 512..767 (GELU), tanh in 768..1023 (TANH): 1024 x 16 bits, one RAMB18 per lane (one ROM
        # of V read ports is the same logic, but Yosys' memory_libmap gives up on it at V = 16)
        rom_rd = []
        for lane in range(V):
            rom = memory.Memory(shape=signed(16), depth=1024,
                                init=SILU_ROM + RELU2_ROM + GELU_ROM + TANH_ROM)
            m.submodules["silu_rom" if V == 1 else f"silu_rom{lane}"] = rom
            rom_rd.append(rom.read_port())
        aword = Signal(8 * L)       # SILUMUL: the gate word
        if V == 1:
            byte = [self.rd_data.word_select(c1.j, 8).as_signed()]
            gate = [aword.word_select(c1.j, 8)]
            # ROPE: x (a byte) and cos / sin (int16 at an even byte) at any offset
            rbyte = byte
            h16 = [self.rd_data.word_select(c1.j[1:] if lg > 1 else Const(0, 1), 16).as_signed()]
        else:
            grp = self.rd_data if G == 1 else self.rd_data.word_select(c1.j[lv:], 8 * V)
            agrp = aword if G == 1 else aword.word_select(c1.j[lv:], 8 * V)
            byte = [grp[8 * lane:8 * lane + 8].as_signed() for lane in range(V)]
            gate = [agrp[8 * lane:8 * lane + 8] for lane in range(V)]
            # ROPE: the step's bytes start anywhere in the word (the sequencer keeps them in
            # it): rotate the word right by the offset
            rot = Cat(self.rd_data, self.rd_data).bit_select(Cat(Const(0, 3), c1.j),
                                                            16 * VR)
            rbyte = [rot[8 * lane:8 * lane + 8].as_signed() for lane in range(VR)]
            h16 = [rot[16 * lane:16 * lane + 16].as_signed() for lane in range(VR)]
        # ROM index g + 128: flipping the sign bit of the two's-complement byte. With TANH the
        # index is a's byte as it is read (no gate word latched), the same stage as the gate's
        for lane in range(V):
            idx = Mux(tanh, byte[lane].as_unsigned(), gate[lane])
            m.d.comb += [rom_rd[lane].addr.eq(Cat(idx ^ 0x80, table)),
                         rom_rd[lane].en.eq(1)]

        # stage 2 operands: x (RMSNORM, ABSQUANT), up (SILUMUL; 1 with TANH); ABSQUANT's gamma
        # (1 without GAMMA)
        oa = [Signal(signed(8), name=f"oa{lane}") for lane in range(V)]
        og = [Signal(signed(8), name=f"og{lane}") for lane in range(V)]
        for lane in range(V):
            m.d.sync += [oa[lane].eq(Mux(tanh, 1, byte[lane])),
                         og[lane].eq(Mux(gam, gate[lane].as_signed(), 1))]
        m.d.sync += c2.eq(0)

        def lanes(name, shape, count=VR):
            return [Signal(shape, name=f"{name}{lane}") for lane in range(count)]

        c_reg = lanes("c_reg", signed(16))
        s_reg = lanes("s_reg", signed(16))
        x1_reg = lanes("x1_reg", signed(8))
        w1_reg = Signal(16)
        l1_reg = Signal(lg)
        # ROPE step snapshot, taken when x2 arrives: used for 4 cycles while the next step is
        # read
        pc = lanes("pc", signed(16))
        ps = lanes("ps", signed(16))
        px1 = lanes("px1", signed(8))
        px2 = lanes("px2", signed(8))
        pw1 = Signal(16)
        pl1 = Signal(lg)
        pw2 = Signal(16)
        pl2 = Signal(lg)
        pmask_r = Signal(V)
        with m.Switch(c1.kind):
            with m.Case(_K_SQ):
                m.d.sync += [c2.valid.eq(1), c2.first.eq(1), c2.sq.eq(1), c2.zero.eq(c1.zero)]
            with m.Case(_K_MAX):
                m.d.sync += [c2.valid.eq(1), c2.first.eq(1), c2.mx.eq(1), c2.zero.eq(c1.zero)]
            with m.Case(_K_ELEM):
                m.d.sync += [c2.valid.eq(1), c2.first.eq(1), c2.last.eq(1),
                             c2.zero.eq(c1.zero), c2.word.eq(c1.word), c2.lane.eq(c1.j),
                             c2.mask.eq(ones)]
            with m.Case(_K_ZWORD):
                m.d.sync += [c2.valid.eq(1), c2.first.eq(1), c2.last.eq(1), c2.zero.eq(ones),
                             c2.full.eq(1), c2.word.eq(c1.word), c2.mask.eq(ones)]
            with m.Case(_K_LATCH):
                m.d.sync += aword.eq(self.rd_data)
            with m.Case(_K_C):
                m.d.sync += [c_reg[lane].eq(h16[lane]) for lane in range(VR)]
            with m.Case(_K_S):
                m.d.sync += [s_reg[lane].eq(h16[lane]) for lane in range(VR)]
            with m.Case(_K_X1):
                m.d.sync += [x1_reg[lane].eq(rbyte[lane]) for lane in range(VR)]
                m.d.sync += [w1_reg.eq(c1.word), l1_reg.eq(c1.j)]
            with m.Case(_K_X2):
                for lane in range(VR):
                    m.d.sync += [pc[lane].eq(c_reg[lane]), ps[lane].eq(s_reg[lane]),
                                 px1[lane].eq(x1_reg[lane]), px2[lane].eq(rbyte[lane])]
                m.d.sync += [pw1.eq(w1_reg), pl1.eq(l1_reg), pw2.eq(c1.word), pl2.eq(c1.j),
                             pmask_r.eq(c1.mask)]

        # ---- stage 2: operands ------------------------------------------------------------------
        # ROPE: y1 = x1*c + x2*(-s), y2 = x2*c + x1*s, two products accumulated per output
        with m.If(c1.kind == _K_X2):
            m.d.sync += [burst.eq(1), bc.eq(0)]
        with m.Elif(burst):
            m.d.sync += [bc.eq(bc + 1), burst.eq(bc != 3)]

        ma = lanes("ma", signed(16), V)
        mb1 = lanes("mb1", signed(_B1_BITS), V)
        mb2 = lanes("mb2", signed(_B2_BITS), V)
        m.d.sync += c3.eq(0)
        with m.If(is_rope):
            with m.If(burst):
                for lane in range(VR):
                    m.d.sync += [
                        ma[lane].eq(Mux(bc[0] ^ bc[1], px2[lane], px1[lane])),
                        mb1[lane].eq(Mux(bc[0], Mux(bc[1], ps[lane], -ps[lane]), pc[lane])),
                        mb2[lane].eq(1),
                    ]
                m.d.sync += [
                    c3.valid.eq(1), c3.first.eq(~bc[0]), c3.last.eq(bc[0]),
                    c3.word.eq(Mux(bc[1], pw2, pw1)), c3.lane.eq(Mux(bc[1], pl2, pl1)),
                    c3.mask.eq(pmask_r),
                ]
        with m.Else():
            # x * x (sum of squares), x * gamma (ABSQUANT max), (x * gamma) * r * mult
            # (RMSNORM; gamma 1 without GAMMA), x * R * gamma (ABSQUANT), up * ROM[gate] * mult
            # (SILUMUL; 1 * ROM[a] * mult with TANH: |ROM| < 2**14, |p2| < 2**30)
            for lane in range(V):
                m.d.sync += [
                    ma[lane].eq(Mux(is_rms & ~c2.sq, oa[lane] * og[lane], oa[lane])),
                    mb1[lane].eq(Mux(c2.sq, oa[lane],
                                     Mux(c2.mx, og[lane],
                                         Mux(is_rms | is_absq, r, rom_rd[lane].data)))),
                    mb2[lane].eq(Mux(c2.sq | c2.mx, 1, Mux(is_absq, og[lane], mult))),
                ]
            m.d.sync += c3.eq(c2)

        # ---- stages 3, 4: p1 = a * b1, p2 = p1 * b2 ---------------------------------------------
        p1r = lanes("p1r", signed(_P1_BITS), V)
        b2r = lanes("b2r", signed(_B2_BITS), V)
        p2r = lanes("p2r", signed(_V_BITS), V)
        for lane in range(V):
            m.d.sync += [p1r[lane].eq(ma[lane] * mb1[lane]), b2r[lane].eq(mb2[lane]),
                         p2r[lane].eq(p1r[lane] * b2r[lane])]
        m.d.sync += [c4.eq(c3), c5.eq(c4)]

        # ---- stage 5: accumulate (the rounding term starts each output); the reductions' lane
        # trees into registers ---------------------------------------------------------------
        v = lanes("v", signed(_V_BITS), V)
        m.d.sync += c6.eq(c5)
        with m.If(c5.valid & ~c5.sq & ~c5.mx):
            m.d.sync += [v[lane].eq(Mux(c5.first, rnd, v[lane]) + p2r[lane])
                         for lane in range(V)]
        # x**2 <= 2**14 and |x * gamma| <= 2**14: _M_BITS (15) bits per lane
        sq_sum = Signal(_M_BITS + lv)
        mx_max = Signal(_M_BITS)
        sq_terms = [Mux(c5.zero[lane], 0, p2r[lane][:_M_BITS]) for lane in range(V)]
        mx_terms = [Mux(c5.zero[lane], 0, Mux(p2r[lane] < 0, -p2r[lane], p2r[lane])[:_M_BITS])
                    for lane in range(V)]
        while len(sq_terms) > 1:
            sq_terms = [a + b for a, b in zip(sq_terms[::2], sq_terms[1::2], strict=True)]
            mx_terms = [Mux(a > b, a, b) for a, b in zip(mx_terms[::2], mx_terms[1::2],
                                                         strict=True)]
        m.d.sync += [sq_sum.eq(sq_terms[0]), mx_max.eq(mx_terms[0])]

        # ---- stage 6: running sum / maximum; arithmetic shift, saturation; stage 7: write -------
        with m.If(c6.valid & c6.sq):
            m.d.sync += s_acc.eq(s_acc + sq_sum)
        with m.If(c6.valid & c6.mx & (mx_max > amax)):
            m.d.sync += amax.eq(mx_max)
        y = lanes("y", 8, V)
        for lane in range(V):
            shv = Signal(signed(_V_BITS), name=f"shv{lane}")
            m.d.comb += shv.eq(v[lane] >> shift)
            sat = Signal(signed(8), name=f"sat{lane}")
            with m.If(shv > 127):
                m.d.comb += sat.eq(127)
            with m.Elif(shv < -128):
                m.d.comb += sat.eq(-128)
            with m.Else():
                m.d.comb += sat.eq(shv[:8])
            m.d.sync += y[lane].eq(Mux(c6.zero[lane], 0, sat))
        wr_word = Signal(16)
        wr_lane = Signal(lg)
        wr_full = Signal()
        wr_mask = Signal(V)
        m.d.sync += [
            wr_valid.eq(c6.valid & c6.last & ~c6.sq & ~c6.mx),
            wr_word.eq(c6.word), wr_lane.eq(c6.lane), wr_full.eq(c6.full), wr_mask.eq(c6.mask),
        ]
        ybus = Cat(*y)
        if V > 1:
            # lane l to byte wr_lane + l: rotate the lanes left by wr_lane mod V (0 but for
            # ROPE), then repeat them over the word
            rot_by = (Const(V, lv + 1) - wr_lane[:lv])[:lv + 1]
            ybus = Cat(ybus, ybus).bit_select(Cat(Const(0, 3), rot_by), 8 * V)
        with m.If(m_wr):
            # ABSQUANT's m: u16 LE at an even byte, so both bytes are in one word (L >= 2)
            m.d.comb += [
                self.wr_addr.eq(mbyte >> lg),
                self.wr_data.eq(Cat(*([Cat(amax, Const(0, 16 - _M_BITS))] * (L // 2)))),
                self.wr_en.eq(Const(0b11, L) << mbyte[:lg]),
            ]
        with m.Else():
            m.d.comb += [
                self.wr_addr.eq(wr_word),
                self.wr_data.eq(Cat(*([ybus] * G))),
                self.wr_en.eq(Mux(wr_valid, Mux(wr_full, (1 << L) - 1,
                                                (Cat(wr_mask, Const(0, L)) << wr_lane)[:L]),
                                  0)),
            ]
        return m
