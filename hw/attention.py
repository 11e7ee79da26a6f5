"""Attention unit: ATTN (opcode 0x09), causal grouped-query attention with an online softmax,
``H`` query heads at once over a head-major KV cache read once per pass.

docs/architecture.md, "Attention over a head-major KV cache": instruction fields, the cache
layout and the unit's ports. The arithmetic is :func:`hwflow.golden.llm.attention_row`, bit for
bit, for every query head (this module does not import ``golden``; the test checks the ROMs
below against ``golden.llm.EXP2_LUT`` and ``golden.llm.SOFTCAP_CORR``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from amaranth import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .arith import tree_sum
from .config import AccelConfig
from .contract import ATTN_BLOCK
from .isa import Opcode
from .isa_layout import LAYOUTS
from .mem_port import read_req_layout

__all__ = ["AttentionUnit", "ATTN_BLOCK", "EXP2_ROM", "SOFTCAP_ROM"]

# ATTN_BLOCK (keys per online-softmax block, the score buffers' depth) is in the contract,
# hw/contract.py
#: 2**(15 - f/256) in Q15 for the fractional part f of a log2-domain difference (8 fraction
#: bits); the same formula as golden.llm.EXP2_LUT. 32768 at f = 0 needs 16 bits.
EXP2_ROM = tuple(int(round(2.0 ** (15 - f / 256))) for f in range(256))
#: Score soft-capping (Gemma 2): ``round((c - tanh c) * 2**12)`` at the midpoint
#: ``c = (i + 0.5) / 256`` of the i-th 1/256 of ``[0, 4)``, the correction that turns ``|u|``
#: (the score over the cap in Q12) into ``4096 * tanh(|u| / 4096)``; the same formula as
#: golden.llm.SOFTCAP_CORR. Entries 0 .. 12283: 14 bits.
SOFTCAP_ROM = tuple(int(round((c - math.tanh(c)) * 4096))
                    for c in ((i + 0.5) / 256 for i in range(1024)))
_SOFTCAP_BITS = 14

# Widths, from golden.llm.attention_row's bounds:
# |s| = |q . k| <= 128 * 128 * hd; hd <= 255 words * 28 lanes < 2**13, so |s| < 2**27: int32.
_S_BITS = 32
# t = s * smul >> sshift: int32 times u16 is 49 bits signed (the brief asks >= 48).
_T_BITS = 49
# |acc| < 2**38 (golden: n < 2**16 keys); 40 bits signed leaves a bit of margin each side.
_ACC_BITS = 40
# p <= EXP2_ROM[0] = 2**15: 16 bits unsigned; l in [2**15, 2**31): 32 bits unsigned.
_P_BITS = 16
_L_BITS = 32
# Memory bursts (one K or V block each) the request side may run ahead of the data side: the
# current block's K and V and the next block's, so the next K arrives while V is consumed.
_MAX_AHEAD = 4

_K, _V, _O = 0, 1, 2    # item kinds in the shared pipeline: key slot, value slot, output word


@dataclass(frozen=True)
class _LaneControl:
    """The control every lane follows in lockstep (the unit's FSM, p pass and pipeline
    stages): what :meth:`AttentionUnit._lane` reads besides its own datapath."""

    q_wd: object            # q preload: the word being written
    cd: object              # word of the head the stream is at (q read address)
    cj: object              # key of the block (p read index)
    s1_kind: object
    s1_d: object
    s2_v: object
    s2_kind: object
    s2_d: object
    s2_j0: object           # first key of the block: rescale by alpha
    s3_kv: object
    s3_first: object
    s6_kv: object
    s6_j: object
    smul: object
    sshift: object
    cap: object
    p_issue: object         # p pass: item pi enters (alpha, then p_j)
    p_close: object         # p pass: the block's l and m are updated
    pi: object
    p1_v: object
    p1_i: object
    block_first: object     # the row's first block
    pass_start: object      # a block's p pass begins (m' chosen)
    div_go: object          # the dividers start


class AttentionUnit(wiring.Component):
    """Executes ATTN: one pass of up to ``H`` query heads over the keys of their kv heads.

    The cache of a pass (``slots`` kv heads) is head-major and word-interleaved: position
    ``j``'s block is the ``pos_sb`` super-beats at ``K + j * pos_sb``; its word
    ``d * slots + k`` is word ``d`` of kv head ``k`` (``d < hd_words``; the rest of the block is
    padding). Lane ``h < lanes`` computes query head ``h`` of the pass, whose kv head is
    ``k_h = h // grp``; its q and out heads are the ``hd_words`` activation words at
    ``q + b * q_words + h * hd_words`` (``out`` likewise). For row ``b < rows`` (position
    ``pos + b``, ``n = pos + b + 1`` keys) every lane writes
    ``golden.llm.attention_row(q head, K[f:n, k_h], V[f:n, k_h], smul, sshift, omul, oshift,
    cap)`` with ``f = 0``, or ``f = max(0, n - window)`` for a sliding ``window`` (nonzero): the
    window's keys alone are streamed, so its cost does not grow with the position.

    Each cache byte of the pass is read once per row for all its query heads: a *slot* (``d``
    for every kv head, ``slots`` words) enters per cycle and every lane takes its kv head's
    word, so the unit eats ``slots * L`` bytes of K (then of V) per cycle. ``slots`` divides
    the words of a super-beat (``SB / L``); at ``slots = SB / L`` the unit takes a whole
    super-beat per cycle, the memory's rate.

    Per (row, pass), in lockstep over the lanes:

    1. setup: every lane's q head (``lanes * hd_words`` words) is copied from the activation
       buffer into the lane's q memory;
    2. per block of up to 16 keys: the K blocks arrive as ONE burst (``nk * pos_sb``
       super-beats at ``K + j0 * pos_sb``); each slot is one pipeline item: per lane ``L``
       int8 products and an adder tree, summed over the head's words into ``s``; then
       ``t = s * smul >> sshift`` goes to the lane's 16-entry score buffer and block max, with
       a nonzero ``cap`` as ``golden.llm.softcap_scores(t, cap)``: ``|t| >> 4`` addresses a
       1024-entry soft-cap ROM (one per two lanes, on its two read ports), and the next stage
       takes ``y = |t| - ROM`` (4096 from ``|t| >= 2**14`` on), one ``y * cap`` product
       (13 x 10 bits), rounds and signs it (this stage is there whatever the cap). The
       lanes' ``alpha`` and ``p_j`` come from their 256-entry EXP2 ROMs and shifters, one per
       cycle, with ``l = (l * alpha >> 15) + sum p``; then the V burst streams through the same
       multipliers (``p_j * v``) into each lane's accumulator memory (``hd_words`` words of
       ``L`` 40-bit lanes), rescaled by ``alpha`` at each word's first key of the block;
    3. ``recip = 2**31 // l`` by a restoring divider per lane (one bit per cycle, 32 cycles),
       then lane by lane each accumulator word goes through ``(acc * recip) >> 16`` (the lane's
       rescale multipliers), ``* omul`` (one set of multipliers shared by the lanes), round,
       saturate, and is written back.

    Cycles per (row, pass), when memory keeps up: ``2 * n * c_pos + 11 * ceil(n / 16) +
    lanes * (2 * hd_words + 1) + 45`` about, with ``c_pos`` the cycles per position block
    (``hd_words`` slots, plus one per super-beat of the block holding no slot); requests run up
    to 4 bursts ahead (the next block's K and V), so memory latency is paid about once per
    instruction, not per block.

    Parameters
    ----------
    cfg : AccelConfig
        ``attn_heads`` is ``H``, the lanes.
    max_head_dim : int
        Largest head (in int8 channels) the lanes' q and accumulator memories hold:
        ``ceil(max_head_dim / L)`` words. An ATTN with more ``hd_words`` is not executable.

    Attributes
    ----------
    ins : in, 256 bits
        The ATTN instruction, stable from ``start`` until ``busy`` falls, read through
        :data:`.isa_layout.LAYOUTS` (fields: :data:`.isa.LAYOUT`): K base ``ext`` and V base
        ``v_ext`` (super-beats), q ``a`` and ``out`` (act words), oshift ``shift``.
    start : in, pulse
    busy : out, high from the cycle after ``start`` until the last output word was written
    pos : in, POS (sampled at ``start``)
    rd_addr, rd_en, act_rd_data : activation buffer read port (synchronous, data one cycle
        after an enabled address)
    wr_addr, wr_data, wr_en : activation buffer write port (``wr_en``: byte enables)
    rd_req : stream out, :func:`~.mem_port.read_req_layout` (super-beat address and length)
    rd_data : stream in, ``8 * SB`` bits, beats in request order
    """

    def __init__(self, cfg: AccelConfig, max_head_dim: int = 256):
        self.cfg = cfg
        L = cfg.chain_len
        self.head_words = max(1, -(-max_head_dim // L))
        super().__init__({
            "ins": In(256),
            "start": In(1),
            "busy": Out(1),
            "pos": In(32),
            "rd_addr": Out(16), "rd_en": Out(1), "act_rd_data": In(8 * L),
            "wr_addr": Out(16), "wr_data": Out(8 * L), "wr_en": Out(L),
            "rd_req": Out(stream.Signature(read_req_layout(cfg.addr_bits))),
            "rd_data": In(stream.Signature(8 * cfg.beat_bytes)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        L, SB, ab = cfg.chain_len, cfg.beat_bytes, cfg.addr_bits
        WPB = SB // L                   # activation words per super-beat
        H = cfg.attn_heads

        # --- instruction fields ----------------------------------------------------------------
        ins = data.View(LAYOUTS[Opcode.ATTN], self.ins)
        oshift, cap = ins.shift, ins.cap
        k_base, v_base = ins.ext[:ab], ins.v_ext[:ab]
        q_addr, out_addr = ins.a, ins.out
        q_words, rows = ins.q_words, ins.rows
        grp, hd_words, pos_sb = ins.grp, ins.hd_words, ins.pos_sb
        # more lanes than the unit has are not computed (the ISA model refuses the field)
        lanes = Mux(ins.lanes > H, H, ins.lanes)
        smul, omul = ins.smul, ins.omul
        sshift, slots, window = ins.sshift, ins.slots, ins.window

        def keys_of(n):
            """Keys a row with ``n`` keys up to its position attends: the last ``window``."""
            return Mux((window != 0) & (n > window), window, n)

        # --- request side: K and V burst per block, in the data side's order ------------------
        ahead = Signal(range(_MAX_AHEAD + 1))   # bursts requested, not yet fully consumed
        burst_done = Signal()                   # data side: last beat of a burst taken
        rq_run, rq_valid, rq_is_v = Signal(), Signal(), Signal()
        rq_b = Signal(16)
        rq_n, rq_rem = Signal(33), Signal(33)   # keys of the row; keys from this block on
        rq_off = Signal(ab)                     # j0 * pos_sb
        rq_base = Signal(ab)                    # the row's first key * pos_sb (window start)
        rq_addr, rq_len = Signal(ab), Signal(16)
        issue = self.rd_req.valid & self.rd_req.ready
        m.d.comb += [self.rd_req.valid.eq(rq_valid), self.rd_req.payload.addr.eq(rq_addr),
                     self.rd_req.payload.len.eq(rq_len)]
        m.d.sync += ahead.eq(ahead + issue - burst_done)
        with m.If(rq_run & ~rq_valid & (ahead < _MAX_AHEAD)):
            rq_nk = Mux(rq_rem > ATTN_BLOCK, ATTN_BLOCK, rq_rem[:5])
            m.d.sync += [rq_valid.eq(1), rq_len.eq(rq_nk * pos_sb),
                         rq_addr.eq(Mux(rq_is_v, v_base, k_base) + rq_off)]
        with m.If(issue):
            m.d.sync += [rq_valid.eq(0), rq_is_v.eq(~rq_is_v)]
            with m.If(rq_is_v):
                with m.If(rq_rem > ATTN_BLOCK):
                    m.d.sync += [rq_rem.eq(rq_rem - ATTN_BLOCK),
                                 rq_off.eq(rq_off + (pos_sb << 4))]
                with m.Else():
                    # the window's first key moves on by one once the row has more keys
                    base = rq_base + Mux((window != 0) & (rq_n >= window), pos_sb, 0)
                    m.d.sync += [rq_off.eq(base), rq_base.eq(base), rq_b.eq(rq_b + 1),
                                 rq_n.eq(rq_n + 1), rq_rem.eq(keys_of(rq_n + 1))]
                    with m.If(rq_b == rows - 1):
                        m.d.sync += rq_run.eq(0)

        # --- data side state (shared by the lanes) ---------------------------------------------
        c_b = Signal(16)                        # row
        c_n, c_rem = Signal(33), Signal(33)     # keys of the row; keys from this block on
        nk = Signal(range(ATTN_BLOCK + 1))      # keys in this block
        m.d.comb += nk.eq(Mux(c_rem > ATTN_BLOCK, ATTN_BLOCK, c_rem[:5]))
        first_blk = Signal()
        q_row, o_row = Signal(16), Signal(16)
        ql_a = Signal(16)                       # next q word to read (act address)
        ql_h, ql_d = Signal(range(H + 1)), Signal(8)   # its lane and word
        ql_wv = Signal()                        # a q word arrives this cycle (for lane ql_wh)
        ql_wh, ql_wd = Signal.like(ql_h), Signal(8)
        # lane -> kv head slot (h // grp), by counting once per instruction
        kv_of = [Signal(range(max(WPB, 2)), name=f"kv_of{h}") for h in range(H)]
        map_h, map_k, map_g = Signal(range(H + 1)), Signal(8), Signal(8)
        # stream position: beat in the position block, word offset of the slot in the beat,
        # slots taken of the position (word of the head), key in block
        br = Signal(8)
        so = Signal(range(max(WPB, 2)))
        cd = Signal(9)
        cj = Signal(range(ATTN_BLOCK))
        # output: lane, word, and the lane's first output word (o_row + oh * hd_words, summed)
        oh, oi = Signal(range(max(H, 2))), Signal(8)
        o_head = Signal(16)
        dv_i = Signal(5)
        pi = Signal(range(ATTN_BLOCK + 2))      # p pass: 0 = alpha, 1 + j = key j
        p_run = Signal()                        # p pass of the current block under way
        p_cnt = Signal(range(ATTN_BLOCK + 1))   # p_j written so far (alpha before p_0)

        beat = self.rd_data.payload
        has_slot = cd < hd_words
        last_in_beat = (so + slots >= WPB) | (cd == hd_words - 1)
        row_end = br == pos_sb - 1
        active = [Signal(name=f"active{h}") for h in range(H)]
        for h in range(H):
            m.d.comb += active[h].eq(h < lanes)

        # S0 item (combinational), filled in by the FSM
        s0_v, s0_kind = Signal(), Signal(2)
        s0_d = Signal(9)
        s0_oaddr = Signal(16)                   # O items: the act word they write
        s0_words = [Signal(8 * L, name=f"s0_word{h}") for h in range(H)]

        def consume(kind):
            """Take the slots of the burst's beats; skip padding beats."""
            ok = (p_cnt > cj) if kind == _V else 1
            take = self.rd_data.valid & (~has_slot | (last_in_beat & ok))
            emit = self.rd_data.valid & has_slot & ok
            m.d.comb += [self.rd_data.ready.eq(take), s0_v.eq(emit), s0_kind.eq(kind),
                         s0_d.eq(cd)]
            for h in range(H):
                m.d.comb += s0_words[h].eq(beat.word_select(so + kv_of[h], 8 * L))
            with m.If(emit):
                m.d.sync += cd.eq(cd + 1)
                with m.If(~last_in_beat):
                    m.d.sync += so.eq(so + slots)
            with m.If(take):
                m.d.sync += [br.eq(Mux(row_end, 0, br + 1)), so.eq(0)]
                with m.If(row_end):
                    m.d.sync += [cj.eq(cj + 1), cd.eq(0)]
            return take & row_end & (cj == nk - 1)

        def block_init():
            m.d.sync += [br.eq(0), so.eq(0), cd.eq(0), cj.eq(0)]

        pipe_empty = Signal()
        div_go = Signal()                       # start the lanes' dividers
        pass_start = Signal()                   # a new block: p pass bookkeeping
        block_first = Signal()

        # --- q preload writes (act data one cycle after the enabled address) -----------------
        m.d.sync += ql_wv.eq(0)

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    n0 = self.pos + 1
                    base0 = (n0 - keys_of(n0)) * pos_sb     # once per instruction
                    m.d.sync += [
                        rq_run.eq((rows != 0) & (lanes != 0)), rq_valid.eq(0), rq_is_v.eq(0),
                        rq_b.eq(0), rq_n.eq(n0), rq_rem.eq(keys_of(n0)), rq_off.eq(base0),
                        rq_base.eq(base0),
                        c_b.eq(0), c_n.eq(n0), q_row.eq(q_addr), o_row.eq(out_addr),
                        map_h.eq(0), map_k.eq(0), map_g.eq(0),
                    ]
                    m.next = "MAP"
            with m.State("MAP"):
                # kv slot of every lane, h // grp, once per instruction (H cycles)
                for h in range(H):
                    with m.If(map_h == h):
                        m.d.sync += kv_of[h].eq(map_k)
                with m.If(map_g == grp - 1):
                    m.d.sync += [map_g.eq(0), map_k.eq(map_k + 1)]
                with m.Else():
                    m.d.sync += map_g.eq(map_g + 1)
                m.d.sync += map_h.eq(map_h + 1)
                with m.If((rows == 0) | (lanes == 0) | (grp == 0)):
                    m.next = "IDLE"
                with m.Elif(map_h == H - 1):
                    m.next = "SETUP0"
            with m.State("SETUP0"):
                m.d.sync += [ql_a.eq(q_row), ql_h.eq(0), ql_d.eq(0),
                             c_rem.eq(keys_of(c_n)), first_blk.eq(1)]
                m.next = "SETUP"
            with m.State("SETUP"):
                rd = ql_h < lanes               # lane by lane, hd_words words each
                m.d.comb += [self.rd_addr.eq(ql_a), self.rd_en.eq(rd)]
                with m.If(rd):
                    m.d.sync += [ql_a.eq(ql_a + 1), ql_wv.eq(1),
                                 ql_wh.eq(ql_h), ql_wd.eq(ql_d)]
                    with m.If(ql_d == hd_words - 1):
                        m.d.sync += [ql_d.eq(0), ql_h.eq(ql_h + 1)]
                    with m.Else():
                        m.d.sync += ql_d.eq(ql_d + 1)
                with m.If(~rd & ~ql_wv):
                    block_init()
                    m.next = "KEYS"
            with m.State("KEYS"):
                with m.If(consume(_K)):
                    m.d.comb += burst_done.eq(1)
                    m.d.sync += cj.eq(0)
                    m.next = "KDRAIN"
            with m.State("KDRAIN"):
                with m.If(pipe_empty & ~p_run):
                    m.d.comb += pass_start.eq(1)
                    m.d.sync += [pi.eq(0), p_cnt.eq(0), p_run.eq(1)]
                    block_init()
                    m.next = "VALUES"
            with m.State("VALUES"):
                with m.If(consume(_V)):
                    m.d.comb += burst_done.eq(1)
                    m.d.sync += [cj.eq(0), first_blk.eq(0)]
                    with m.If(c_rem > ATTN_BLOCK):
                        m.d.sync += c_rem.eq(c_rem - ATTN_BLOCK)
                        m.next = "KEYS"
                    with m.Else():
                        m.next = "VDRAIN"
            with m.State("VDRAIN"):
                with m.If(pipe_empty & ~p_run):
                    m.d.comb += div_go.eq(1)
                    m.d.sync += dv_i.eq(31)
                    m.next = "DIV"
            with m.State("DIV"):
                m.d.sync += dv_i.eq(dv_i - 1)
                with m.If(dv_i == 0):
                    m.d.sync += [oh.eq(0), oi.eq(0), o_head.eq(o_row)]
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += [s0_v.eq(1), s0_kind.eq(_O), s0_d.eq(oi), s0_oaddr.eq(o_head + oi)]
                with m.If(oi == hd_words - 1):
                    m.d.sync += [oi.eq(0), oh.eq(oh + 1), o_head.eq(o_head + hd_words)]
                    with m.If(oh == lanes - 1):
                        m.next = "ODRAIN"
                with m.Else():
                    m.d.sync += oi.eq(oi + 1)
            with m.State("ODRAIN"):
                with m.If(pipe_empty):
                    m.next = "NEXT"
            with m.State("NEXT"):
                m.d.sync += [c_b.eq(c_b + 1), c_n.eq(c_n + 1), q_row.eq(q_row + q_words),
                             o_row.eq(o_row + q_words)]
                with m.If(c_b == rows - 1):
                    m.next = "IDLE"
                with m.Else():
                    m.next = "SETUP0"
            m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        m.d.comb += block_first.eq(first_blk)

        # --- p pass control (shared): item pi = 0 is alpha, pi = 1 + j is p_j; 3 stages ---------
        # It runs while the block's V burst streams: a value slot of key j waits only until p_j
        # is written (p_cnt > j), so the pass costs ~4 cycles per block instead of nk + 4.
        p0_v, p1_v = Signal(), Signal()
        p0_i, p1_i = Signal.like(pi), Signal.like(pi)
        p_issue = p_run & (pi <= nk)
        p_close = p_run & (pi > nk) & ~p0_v & ~p1_v
        with m.If(p_issue):
            m.d.sync += [p0_v.eq(1), p0_i.eq(pi), pi.eq(pi + 1)]
        with m.Else():
            m.d.sync += p0_v.eq(0)
        with m.If(p_close):
            m.d.sync += p_run.eq(0)
        m.d.sync += [p1_v.eq(p0_v), p1_i.eq(p0_i)]
        with m.If(p1_v & (p1_i != 0)):
            m.d.sync += p_cnt.eq(p_cnt + 1)

        # --- shared word pipeline control: S0 -> S1 -> ... -> S6 --------------------------------
        s1_v, s1_kind, s1_d = Signal(), Signal(2), Signal(9)
        s1_j0, s1_first, s1_last, s1_j = Signal(), Signal(), Signal(), Signal(4)
        s1_oh, s1_oa = Signal.like(oh), Signal(16)
        m.d.sync += [s1_v.eq(s0_v), s1_kind.eq(s0_kind), s1_d.eq(s0_d), s1_j0.eq(cj == 0),
                     s1_first.eq(cd == 0), s1_last.eq(cd == hd_words - 1), s1_j.eq(cj),
                     s1_oh.eq(oh), s1_oa.eq(s0_oaddr)]
        s2_v, s2_kind, s2_d = Signal(), Signal(2), Signal(9)
        s2_j0, s2_first, s2_last, s2_j = Signal(), Signal(), Signal(), Signal(4)
        s2_oh, s2_oa = Signal.like(oh), Signal(16)
        m.d.sync += [s2_v.eq(s1_v), s2_kind.eq(s1_kind), s2_d.eq(s1_d), s2_j0.eq(s1_j0),
                     s2_first.eq(s1_first), s2_last.eq(s1_last), s2_j.eq(s1_j),
                     s2_oh.eq(s1_oh), s2_oa.eq(s1_oa)]
        s3_kv, s3_ov, s3_first, s3_last, s3_j = Signal(), Signal(), Signal(), Signal(), Signal(4)
        s3_oh, s3_oa = Signal.like(oh), Signal(16)
        m.d.sync += [s3_kv.eq(s2_v & (s2_kind == _K)), s3_ov.eq(s2_v & (s2_kind == _O)),
                     s3_first.eq(s2_first), s3_last.eq(s2_last), s3_j.eq(s2_j),
                     s3_oh.eq(s2_oh), s3_oa.eq(s2_oa)]
        s4_kv, s4_ov, s4_j = Signal(), Signal(), Signal(4)
        s4_oa = Signal(16)
        m.d.sync += [s4_kv.eq(s3_kv & s3_last), s4_j.eq(s3_j), s4_ov.eq(s3_ov),
                     s4_oa.eq(s3_oa)]
        s5_kv, s5_j = Signal(), Signal(4)
        m.d.sync += [s5_kv.eq(s4_kv), s5_j.eq(s4_j)]
        # S6: the score after the soft-cap ROM's synchronous read (with or without a cap)
        s6_kv, s6_j = Signal(), Signal(4)
        m.d.sync += [s6_kv.eq(s5_kv), s6_j.eq(s5_j)]
        m.d.comb += pipe_empty.eq(~(s1_v | s2_v | s3_kv | s3_ov | s4_kv | s4_ov | s5_kv |
                                    s6_kv))

        # --- the lanes -------------------------------------------------------------------------
        ctl = _LaneControl(q_wd=ql_wd, cd=cd, cj=cj, s1_kind=s1_kind, s1_d=s1_d, s2_v=s2_v,
                           s2_kind=s2_kind, s2_d=s2_d, s2_j0=s2_j0, s3_kv=s3_kv,
                           s3_first=s3_first, s6_kv=s6_kv, s6_j=s6_j, smul=smul,
                           sshift=sshift, cap=cap, p_issue=p_issue, p_close=p_close, pi=pi,
                           p1_v=p1_v, p1_i=p1_i, block_first=block_first,
                           pass_start=pass_start, div_go=div_go)
        # the soft-cap ROM (1024 x 14 bits: a RAMB18E2) serves two lanes on its two read ports
        softcap_rps = []
        for r in range(-(-H // 2)):
            rom = memory.Memory(shape=_SOFTCAP_BITS, depth=len(SOFTCAP_ROM), init=SOFTCAP_ROM)
            m.submodules[f"softcap{r}"] = rom
            softcap_rps += [rom.read_port() for _ in range(min(2, H - 2 * r))]
        s3_r_lanes = []                          # per lane: L values of (acc * recip) >> 16
        for h in range(H):
            s3_r_lanes.append(self._lane(m, h, s0_words[h], active[h], ql_wv & (ql_wh == h),
                                         softcap_rps[h], ctl))

        # --- shared output stage: S3 -> * omul -> S4 -> round, saturate, write -----------------
        s3_r = Array(s3_r_lanes)[s3_oh]
        s4_o = [Signal(signed(_ACC_BITS + 2 + 17), name=f"s4_o{i}") for i in range(L)]
        for i in range(L):
            m.d.sync += s4_o[i].eq(s3_r[i] * omul)
        sh1 = Signal(6)
        m.d.comb += sh1.eq(oshift - 1)
        out_bytes = []
        for i in range(L):
            v = s4_o[i]
            # (v + 2**(s-1)) >> s == ((v >> (s-1)) + 1) >> 1 for s > 0: no 2**63 constant
            r = Mux(oshift == 0, v, ((v >> sh1) + 1) >> 1)
            out_bytes.append(Mux(r > 127, 127, Mux(r < -128, -128, r))[:8])
        m.d.comb += [self.wr_addr.eq(s4_oa),
                     self.wr_data.eq(Cat(out_bytes)),
                     self.wr_en.eq(Mux(s4_ov, (1 << L) - 1, 0))]
        return m

    def _lane(self, m, h: int, word, active, q_we, softcap_rp, c: _LaneControl):
        """One query head's datapath (lane ``h``): q and accumulator memories, products, score
        soft-cap (on ``softcap_rp``, a read port of a soft-cap ROM), score buffer and block
        max, p pass, divider and the first output multiply. Returns the lane's
        ``(acc * recip) >> 16`` values (S3) for the shared output stage."""
        L, HW = self.cfg.chain_len, self.head_words
        pre = f"l{h}_"
        qmem = memory.Memory(shape=8 * L, depth=HW, init=[])
        accmem = memory.Memory(shape=_ACC_BITS * L, depth=HW, init=[])
        exp2 = memory.Memory(shape=_P_BITS, depth=256, init=EXP2_ROM)
        m.submodules[pre + "qmem"] = qmem
        m.submodules[pre + "accmem"] = accmem
        m.submodules[pre + "exp2"] = exp2
        q_wp, q_rp = qmem.write_port(), qmem.read_port()
        acc_wp = accmem.write_port()
        # Transparent: a value word's read-modify-write takes one cycle (read in S1, write in
        # S2), so with hd_words = 1 the next key's read of the same word must see this write.
        acc_rp = accmem.read_port(transparent_for=(acc_wp,))
        exp2_rp = exp2.read_port()
        m.d.comb += [q_wp.addr.eq(c.q_wd), q_wp.data.eq(self.act_rd_data), q_wp.en.eq(q_we),
                     q_rp.addr.eq(c.cd)]

        m_run = Signal(signed(_T_BITS), name=pre + "m_run")
        m_new = Signal(signed(_T_BITS), name=pre + "m_new")
        bmax = Signal(signed(_T_BITS), name=pre + "bmax")
        l_sum = Signal(_L_BITS, name=pre + "l_sum")
        alpha = Signal(_P_BITS, name=pre + "alpha")
        psum = Signal(_L_BITS, name=pre + "psum")
        recip = Signal(32, name=pre + "recip")
        dv_rem = Signal(33, name=pre + "dv_rem")
        dv_k = Signal(6, name=pre + "dv_k")
        scores = Array(Signal(signed(_T_BITS), name=f"{pre}score{j}") for j in range(ATTN_BLOCK))
        pbuf = Array(Signal(_P_BITS, name=f"{pre}p{j}") for j in range(ATTN_BLOCK))

        # p pass (control shared, data per lane)
        p0_d = Signal(signed(_T_BITS + 1), name=pre + "p0_d")      # m' - x >= 0
        p1_big, p1_sh = Signal(name=pre + "p1_big"), Signal(4, name=pre + "p1_sh")
        with m.If(c.pass_start):
            m.d.sync += [m_new.eq(Mux(c.block_first | (bmax > m_run), bmax, m_run)),
                         psum.eq(0)]
        with m.If(c.p_issue):
            x = Mux(c.pi == 0, m_run, scores[(c.pi - 1)[:4]])
            m.d.sync += p0_d.eq(m_new - x)
        with m.If(c.p_close):
            m.d.sync += [l_sum.eq(((l_sum * alpha) >> 15) + psum), m_run.eq(m_new)]
        m.d.comb += exp2_rp.addr.eq(p0_d[:8])
        m.d.sync += [p1_big.eq(p0_d[8:] >= 16), p1_sh.eq(p0_d[8:12])]
        p_val = Mux(p1_big, 0, exp2_rp.data >> p1_sh)    # golden.llm.exp2_neg
        with m.If(c.p1_v):
            with m.If(c.p1_i == 0):
                # first block: l = acc = 0 in golden; alpha = 0 clears the stale accumulators
                m.d.sync += alpha.eq(Mux(c.block_first, 0, p_val))
            with m.Else():
                m.d.sync += [pbuf[(c.p1_i - 1)[:4]].eq(p_val), psum.eq(psum + p_val)]

        # divider: recip = 2**31 // l, restoring, MSB first: dividend bit i is 1 only at i = 31
        with m.If(c.div_go):
            m.d.sync += [dv_rem.eq(0), dv_k.eq(32), recip.eq(0)]
        with m.Elif(dv_k != 0):
            r2 = Cat(dv_k == 32, dv_rem[:32])
            ge = r2 >= l_sum
            m.d.sync += [dv_rem.eq(Mux(ge, r2 - l_sum, r2)), recip.eq(Cat(ge, recip[:31])),
                         dv_k.eq(dv_k - 1)]

        # S1: L multipliers, int8 x (int8 q lane | u16 p): 17 x 8 bits signed
        s1_word = Signal(8 * L, name=pre + "s1_word")
        s1_p = Signal(_P_BITS, name=pre + "s1_p")
        m.d.sync += [s1_word.eq(word), s1_p.eq(pbuf[c.cj])]
        s2_prod = [Signal(signed(25), name=f"{pre}s2_prod{i}") for i in range(L)]
        for i in range(L):
            a = Mux(c.s1_kind == _K, q_rp.data[8 * i:8 * (i + 1)].as_signed(), s1_p)
            m.d.sync += s2_prod[i].eq(a * s1_word[8 * i:8 * (i + 1)].as_signed())
        m.d.comb += acc_rp.addr.eq(c.s1_d)

        # S2: K -> adder tree; V -> acc read-modify-write; O -> (acc * recip) >> 16
        s3_part = Signal(signed(_S_BITS), name=pre + "s3_part")
        s3_r = [Signal(signed(_ACC_BITS + 2), name=f"{pre}s3_r{i}") for i in range(L)]
        is_o = c.s2_kind == _O
        mulv = Mux(is_o, recip[:17], alpha)     # recip <= 2**16, alpha <= 2**15
        new_acc = []
        for i in range(L):
            acc_i = acc_rp.data[_ACC_BITS * i:_ACC_BITS * (i + 1)].as_signed()
            prod = acc_i * mulv
            scaled = Mux(is_o, prod >> 16, prod >> 15)
            new_acc.append((Mux(c.s2_j0, scaled, acc_i) + s2_prod[i])[:_ACC_BITS])
            m.d.sync += s3_r[i].eq(scaled)
        m.d.comb += [acc_wp.addr.eq(c.s2_d), acc_wp.data.eq(Cat(new_acc)),
                     acc_wp.en.eq(c.s2_v & (c.s2_kind == _V) & active)]
        m.d.sync += s3_part.eq(tree_sum(s2_prod))

        # S3: K -> s accumulation over the head's words
        s_acc = Signal(signed(_S_BITS), name=pre + "s_acc")
        s4_s = Signal(signed(_S_BITS), name=pre + "s4_s")
        s_new = Mux(c.s3_first, 0, s_acc) + s3_part
        with m.If(c.s3_kv):
            m.d.sync += s_acc.eq(s_new)
        m.d.sync += s4_s.eq(s_new)

        # S4: K -> s * smul; S5: t = s * smul >> sshift, |t| >> 4 addresses the soft-cap ROM
        s5_tm = Signal(signed(_T_BITS), name=pre + "s5_tm")
        m.d.sync += s5_tm.eq(s4_s * c.smul)
        t = Signal(signed(_T_BITS), name=pre + "t")
        m.d.comb += t.eq(s5_tm >> c.sshift)
        # |t| without a 49-bit negation: its low 14 bits are those of -t[:14] when t < 0, and
        # |t| >= 2**14 unless t[14:] is all zeros (t >= 0) or all ones with t[:14] != 0
        # (-2**14 < t < 0)
        neg, lo, hi = t[-1], t[:14], t[14:]
        t_lo = Signal(14, name=pre + "t_lo")                # |t| mod 2**14
        m.d.comb += [t_lo.eq(Mux(neg, -lo, lo)), softcap_rp.addr.eq(t_lo[4:])]
        s6_t = Signal(signed(_T_BITS), name=pre + "s6_t")
        s6_neg, s6_big = Signal(name=pre + "s6_neg"), Signal(name=pre + "s6_big")
        s6_a = Signal(14, name=pre + "s6_a")
        m.d.sync += [s6_t.eq(t), s6_neg.eq(neg), s6_a.eq(t_lo),
                     s6_big.eq(Mux(neg, ~(hi.all() & lo.any()), hi.any()))]

        # S6: golden.llm.softcap_scores: y = |t| - ROM[|t| >> 4] (4096 past index 1023; at
        # most 4100, 13 bits), sign(t) * ((y * cap + 64) >> 7); then the score buffer and
        # the block max
        y = Signal(13, name=pre + "softcap_y")
        m.d.comb += y.eq(Mux(s6_big, 4096, s6_a - softcap_rp.data))
        ycap = Signal(23, name=pre + "softcap_ycap")
        m.d.comb += ycap.eq(y * c.cap)
        r = (ycap + 64) >> 7
        score = Signal(signed(_T_BITS), name=pre + "score")
        m.d.comb += score.eq(Mux(c.cap == 0, s6_t, Mux(s6_neg, -r, r)))
        with m.If(c.s6_kv):
            m.d.sync += [scores[c.s6_j].eq(score),
                         bmax.eq(Mux((c.s6_j == 0) | (score > bmax), score, bmax))]
        return s3_r
