"""Attention unit: ATTN (opcode 0x09), causal grouped-query attention with an online softmax.

docs/architecture.md, "Transformer path (v3)": instruction fields, layouts and the unit's ports.
The arithmetic is :func:`hwflow.golden.llm.attention_row`, bit for bit (this module does not
import ``golden``; the test checks the ROM below against ``golden.llm.EXP2_LUT``).
"""

from __future__ import annotations

from amaranth import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .arith import tree_sum
from .config import AccelConfig
from .mem_port import read_req_layout

__all__ = ["AttentionUnit", "ATTN_BLOCK", "EXP2_ROM"]

#: Keys per online-softmax block: the score buffer's depth (golden.llm.ATTN_BLOCK).
ATTN_BLOCK = 16
#: 2**(15 - f/256) in Q15 for the fractional part f of a log2-domain difference (8 fraction
#: bits); the same formula as golden.llm.EXP2_LUT. 32768 at f = 0 needs 16 bits.
EXP2_ROM = tuple(int(round(2.0 ** (15 - f / 256))) for f in range(256))

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

_K, _V, _O = 0, 1, 2    # item kinds in the shared pipeline: key word, value word, output word




class AttentionUnit(wiring.Component):
    """Executes ATTN: for each query row and head, online softmax over the causal keys.

    For row ``b < rows`` (position ``pos + b``, ``n = pos + b + 1`` keys) and head ``h <
    heads`` (kv head ``g = h // (heads // kv_heads)``) the unit writes
    ``golden.llm.attention_row(q head, K[:n, g], V[:n, g], smul, sshift, omul, oshift)`` to the
    head's ``hd_words`` activation words at ``out + b*q_words + h*hd_words``.

    Per (row, head), word-parallel (one activation word of ``L`` lanes per cycle):

    1. setup: the q head (``hd_words`` words) is copied from the activation buffer into a local
       memory, and the kv head's word range inside a cache row is located (beat and word);
    2. per block of up to 16 keys: the K rows arrive as ONE burst (``nk * kv_stride``
       super-beats at ``K + j0 * kv_stride``); each word of the head is one pipeline item:
       ``L`` int8 products and an adder tree, summed over the head's words into ``s``; then
       ``t = s * smul >> sshift`` goes to a 16-entry score buffer and the block max. The block's
       ``alpha`` and ``p_j`` come from a 256-entry EXP2 ROM and a shifter, one per cycle, with
       ``l = (l * alpha >> 15) + sum p``; then the V burst streams through the same ``L``
       multipliers (``p_j * v``) into the accumulator memory (``hd_words`` words of ``L`` 40-bit
       lanes), rescaled by ``alpha`` at each word's first key of the block;
    3. ``recip = 2**31 // l`` by a restoring divider (one bit per cycle, 32 cycles; no
       combinational divider), then each accumulator word goes through ``(acc * recip) >> 16``
       (the rescale multipliers), ``* omul``, round, saturate, and is written back.

    The per-block ``alpha``/``p`` pass (one ``p`` per cycle from the EXP2 ROM) runs while the V
    burst streams: a value word of key ``j`` waits only until ``p_j`` is written.

    Cycles per (row, head), when memory keeps up, with ``c_row`` = the sum over a cache row's
    super-beats of max(1, head words in that beat) (``hd_words + kv_stride - 1`` when the head
    lies in one beat; a beat without head words takes one cycle):
    ``2 * n * c_row + 10 * ceil(n / 16) + 45 + 2 * hd_words``, about. That is ``2 * c_row``
    cycles per key (K word, V word), ~10 per block of 16 (pipeline drain before the block max
    is known, ``p`` latency) and ~45 fixed (setup, 33-cycle divider, output pipeline).
    Measured at L = 4, ``n = 64``, ``kv_stride = 1``: 347 cycles with ``hd_words = 2``, 218
    with ``hd_words = 1`` (3.4 per key). Read requests run up to 4 bursts ahead (the next
    block's K and V), so memory latency is paid about once per instruction, not per block.

    Parameters
    ----------
    cfg : AccelConfig
    max_head_dim : int
        Largest head (in int8 channels) the local q and accumulator memories hold:
        ``ceil(max_head_dim / L)`` words. An ATTN with more ``hd_words`` is not executable.

    Attributes
    ----------
    ins : in, 256 bits
        The instruction (w0 in the low bits), stable from ``start`` until ``busy`` falls.
        w1 K base, w4 V base (super-beats); w2 q[15:0], out[31:16] (act words);
        w3 q_words[15:0], rows[31:16]; w5 heads[7:0], kv_heads[15:8], hd_words[23:16],
        kv_stride[31:24]; w6 smul[15:0], omul[31:16]; w7 sshift[5:0]; w0[21:16] oshift.
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
        HW = self.head_words

        # --- instruction fields ----------------------------------------------------------------
        w = [self.ins[32 * i:32 * (i + 1)] for i in range(8)]
        oshift = w[0][16:22]
        k_base, v_base = w[1][:ab], w[4][:ab]
        q_addr, out_addr = w[2][:16], w[2][16:32]
        q_words, rows = w[3][:16], w[3][16:32]
        heads, kv_heads, hd_words, kv_stride = w[5][0:8], w[5][8:16], w[5][16:24], w[5][24:32]
        smul, omul = w[6][:16], w[6][16:32]
        sshift = w[7][:6]

        # --- local memories ------------------------------------------------------------------
        m.submodules.qmem = qmem = memory.Memory(shape=8 * L, depth=HW, init=[])
        q_wp, q_rp = qmem.write_port(), qmem.read_port()
        m.submodules.accmem = accmem = memory.Memory(shape=_ACC_BITS * L, depth=HW, init=[])
        acc_wp = accmem.write_port()
        # Transparent: a value word's read-modify-write takes one cycle (read in S1, write in
        # S2), so with hd_words = 1 the next key's read of the same word must see this write.
        acc_rp = accmem.read_port(transparent_for=(acc_wp,))
        m.submodules.exp2 = exp2 = memory.Memory(shape=_P_BITS, depth=256, init=EXP2_ROM)
        exp2_rp = exp2.read_port()

        # --- request side: K and V burst per block, in the data side's order ------------------
        ahead = Signal(range(_MAX_AHEAD + 1))   # bursts requested, not yet fully consumed
        burst_done = Signal()                   # data side: last beat of a burst taken
        rq_run, rq_valid, rq_is_v = Signal(), Signal(), Signal()
        rq_b, rq_h = Signal(16), Signal(8)
        rq_n, rq_rem = Signal(33), Signal(33)   # keys of the row; keys from this block on
        rq_off = Signal(ab)                     # j0 * kv_stride
        rq_addr, rq_len = Signal(ab), Signal(16)
        issue = self.rd_req.valid & self.rd_req.ready
        m.d.comb += [self.rd_req.valid.eq(rq_valid), self.rd_req.payload.addr.eq(rq_addr),
                     self.rd_req.payload.len.eq(rq_len)]
        m.d.sync += ahead.eq(ahead + issue - burst_done)
        with m.If(rq_run & ~rq_valid & (ahead < _MAX_AHEAD)):
            rq_nk = Mux(rq_rem > ATTN_BLOCK, ATTN_BLOCK, rq_rem[:5])
            m.d.sync += [rq_valid.eq(1), rq_len.eq(rq_nk * kv_stride),
                         rq_addr.eq(Mux(rq_is_v, v_base, k_base) + rq_off)]
        with m.If(issue):
            m.d.sync += [rq_valid.eq(0), rq_is_v.eq(~rq_is_v)]
            with m.If(rq_is_v):
                with m.If(rq_rem > ATTN_BLOCK):
                    m.d.sync += [rq_rem.eq(rq_rem - ATTN_BLOCK),
                                 rq_off.eq(rq_off + (kv_stride << 4))]
                with m.Else():
                    m.d.sync += rq_off.eq(0)
                    with m.If(rq_h == heads - 1):
                        m.d.sync += [rq_h.eq(0), rq_b.eq(rq_b + 1), rq_n.eq(rq_n + 1),
                                     rq_rem.eq(rq_n + 1)]
                        with m.If(rq_b == rows - 1):
                            m.d.sync += rq_run.eq(0)
                    with m.Else():
                        m.d.sync += [rq_h.eq(rq_h + 1), rq_rem.eq(rq_n)]

        # --- data side state -------------------------------------------------------------------
        group, grem = Signal(8), Signal(8)      # heads per kv head (by repeated subtraction)
        c_b, c_h, c_hh = Signal(16), Signal(8), Signal(8)   # row, head, head within its group
        lo_g = Signal(16)                       # g * hd_words: the kv head's first word in a row
        c_n, c_rem = Signal(33), Signal(33)     # keys of the row; keys from this block on
        nk = Signal(range(ATTN_BLOCK + 1))      # keys in this block
        m.d.comb += nk.eq(Mux(c_rem > ATTN_BLOCK, ATTN_BLOCK, c_rem[:5]))
        first_blk = Signal()
        q_row, q_ptr, o_row, o_ptr = Signal(16), Signal(16), Signal(16), Signal(16)
        # kv head's words in a cache row: from word k_lo of beat b_lo to word k_hi of beat b_hi
        k_lo, k_hi = Signal(16), Signal(16)
        b_lo, b_hi = Signal(8), Signal(8)
        ql_i = Signal(9)                        # q words requested from the activation buffer
        ql_wv, ql_wa = Signal(), Signal(range(max(HW, 2)))
        # stream position: beat in row, word in beat, word in head, key in block
        br = Signal(8)
        kk = Signal(range(max(WPB, 2)))
        cd = Signal(8)
        cj = Signal(range(ATTN_BLOCK))

        m_run = Signal(signed(_T_BITS))         # running max m
        m_new = Signal(signed(_T_BITS))
        bmax = Signal(signed(_T_BITS))          # this block's max score
        l_sum = Signal(_L_BITS)
        alpha = Signal(_P_BITS)
        psum = Signal(_L_BITS)
        recip = Signal(32)
        dv_rem = Signal(33)
        dv_i = Signal(5)
        oi = Signal(8)
        pi = Signal(range(ATTN_BLOCK + 2))      # p pass: 0 = alpha, 1 + j = key j
        p_run = Signal()                        # p pass of the current block under way
        p_cnt = Signal(range(ATTN_BLOCK + 1))   # p_j written so far (alpha before p_0)
        scores = Array(Signal(signed(_T_BITS), name=f"score{j}") for j in range(ATTN_BLOCK))
        pbuf = Array(Signal(_P_BITS, name=f"p{j}") for j in range(ATTN_BLOCK))

        # S0 item (combinational), filled in by the FSM
        s0_v, s0_kind = Signal(), Signal(2)
        s0_word, s0_d = Signal(8 * L), Signal(8)
        m.d.comb += q_rp.addr.eq(cd)            # K items carry d = cd (q word read for S1)

        # --- q preload writes (act data one cycle after the enabled address) ------------------
        m.d.comb += [q_wp.addr.eq(ql_wa), q_wp.data.eq(self.act_rd_data), q_wp.en.eq(ql_wv)]
        m.d.sync += ql_wv.eq(0)

        # --- p pass pipeline registers ----------------------------------------------------------
        p0_v, p1_v = Signal(), Signal()
        p0_i, p1_i = Signal.like(pi), Signal.like(pi)
        p0_d = Signal(signed(_T_BITS + 1))      # m' - x >= 0
        p1_big, p1_sh = Signal(), Signal(4)
        m.d.sync += p0_v.eq(0)

        beat = self.rd_data.payload
        in_range = (br >= b_lo) & (br <= b_hi)
        last_in_beat = Mux(br == b_hi, kk == k_hi, kk == WPB - 1)
        row_end = br == kv_stride - 1
        br_next = Mux(row_end, 0, br + 1)

        def consume(kind):
            """Take the head's words of the burst's beats; skip beats without any."""
            ok = (p_cnt > cj) if kind == _V else 1
            take = self.rd_data.valid & (~in_range | (last_in_beat & ok))
            emit = self.rd_data.valid & in_range & ok
            m.d.comb += [self.rd_data.ready.eq(take), s0_v.eq(emit), s0_kind.eq(kind),
                         s0_word.eq(beat.word_select(kk, 8 * L)), s0_d.eq(cd)]
            with m.If(emit):
                m.d.sync += cd.eq(Mux(cd == hd_words - 1, 0, cd + 1))
                with m.If(~last_in_beat):
                    m.d.sync += kk.eq(kk + 1)
            with m.If(take):
                m.d.sync += [br.eq(br_next), kk.eq(Mux(br_next == b_lo, k_lo, 0))]
                with m.If(row_end):
                    m.d.sync += cj.eq(cj + 1)
            return take & row_end & (cj == nk - 1)

        def block_init():
            m.d.sync += [br.eq(0), kk.eq(Mux(b_lo == 0, k_lo, 0)), cd.eq(0), cj.eq(0)]

        pipe_empty = Signal()

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    n0 = self.pos + 1
                    m.d.sync += [
                        rq_run.eq((rows != 0) & (heads != 0)), rq_valid.eq(0), rq_is_v.eq(0),
                        rq_b.eq(0), rq_h.eq(0), rq_n.eq(n0), rq_rem.eq(n0), rq_off.eq(0),
                        c_b.eq(0), c_h.eq(0), c_hh.eq(0), lo_g.eq(0), c_n.eq(n0),
                        q_row.eq(q_addr), q_ptr.eq(q_addr), o_row.eq(out_addr),
                        o_ptr.eq(out_addr), grem.eq(heads), group.eq(0),
                    ]
                    m.next = "GROUP"
            with m.State("GROUP"):
                # heads // kv_heads in at most heads cycles, once per instruction
                with m.If((grem >= kv_heads) & (kv_heads != 0)):
                    m.d.sync += [grem.eq(grem - kv_heads), group.eq(group + 1)]
                with m.Elif((rows == 0) | (heads == 0)):
                    m.next = "IDLE"
                with m.Else():
                    m.next = "SETUP0"
            with m.State("SETUP0"):
                m.d.sync += [k_lo.eq(lo_g), b_lo.eq(0), k_hi.eq(lo_g + hd_words - 1),
                             b_hi.eq(0), ql_i.eq(0), c_rem.eq(c_n), first_blk.eq(1)]
                m.next = "SETUP"
            with m.State("SETUP"):
                rd = ql_i < hd_words
                m.d.comb += [self.rd_addr.eq(q_ptr + ql_i), self.rd_en.eq(rd)]
                with m.If(rd):
                    m.d.sync += [ql_i.eq(ql_i + 1), ql_wv.eq(1), ql_wa.eq(ql_i)]
                # word -> (beat, word in beat) by repeated subtraction: <= kv_stride cycles
                with m.If(k_lo >= WPB):
                    m.d.sync += [k_lo.eq(k_lo - WPB), b_lo.eq(b_lo + 1)]
                with m.If(k_hi >= WPB):
                    m.d.sync += [k_hi.eq(k_hi - WPB), b_hi.eq(b_hi + 1)]
                with m.If(~rd & ~ql_wv & (k_lo < WPB) & (k_hi < WPB)):
                    block_init()
                    m.next = "KEYS"
            with m.State("KEYS"):
                with m.If(consume(_K)):
                    m.d.comb += burst_done.eq(1)
                    m.d.sync += cj.eq(0)
                    m.next = "KDRAIN"
            with m.State("KDRAIN"):
                with m.If(pipe_empty & ~p_run):
                    m.d.sync += [m_new.eq(Mux(first_blk | (bmax > m_run), bmax, m_run)),
                                 pi.eq(0), psum.eq(0), p_cnt.eq(0), p_run.eq(1)]
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
                    m.d.sync += [dv_rem.eq(0), dv_i.eq(31), recip.eq(0)]
                    m.next = "DIV"
            with m.State("DIV"):
                # restoring division 2**31 // l, MSB first: dividend bit i is 1 only at i = 31
                r2 = Cat(dv_i == 31, dv_rem[:32])
                ge = r2 >= l_sum
                m.d.sync += [dv_rem.eq(Mux(ge, r2 - l_sum, r2)), recip.eq(Cat(ge, recip[:31])),
                             dv_i.eq(dv_i - 1)]
                with m.If(dv_i == 0):
                    m.d.sync += oi.eq(0)
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += [s0_v.eq(1), s0_kind.eq(_O), s0_d.eq(oi)]
                m.d.sync += oi.eq(oi + 1)
                with m.If(oi == hd_words - 1):
                    m.next = "ODRAIN"
            with m.State("ODRAIN"):
                with m.If(pipe_empty):
                    m.next = "NEXT"
            with m.State("NEXT"):
                m.next = "SETUP0"
                with m.If(c_h == heads - 1):
                    m.d.sync += [c_h.eq(0), c_hh.eq(0), lo_g.eq(0), c_b.eq(c_b + 1),
                                 c_n.eq(c_n + 1), q_row.eq(q_row + q_words),
                                 q_ptr.eq(q_row + q_words), o_row.eq(o_row + q_words),
                                 o_ptr.eq(o_row + q_words)]
                    with m.If(c_b == rows - 1):
                        m.next = "IDLE"
                with m.Else():
                    m.d.sync += [c_h.eq(c_h + 1), q_ptr.eq(q_ptr + hd_words),
                                 o_ptr.eq(o_ptr + hd_words)]
                    with m.If(c_hh == group - 1):
                        m.d.sync += [c_hh.eq(0), lo_g.eq(lo_g + hd_words)]
                    with m.Else():
                        m.d.sync += c_hh.eq(c_hh + 1)
            m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))

        # --- p pass: item pi = 0 is alpha, pi = 1 + j is p_j; one per cycle, 3 stages -----------
        # It runs while the block's V burst streams: a value word of key j waits only until p_j
        # is written (p_cnt > j), so the pass costs ~4 cycles per block instead of nk + 4.
        with m.If(p_run & (pi <= nk)):
            x = Mux(pi == 0, m_run, scores[(pi - 1)[:4]])
            m.d.sync += [p0_v.eq(1), p0_i.eq(pi), p0_d.eq(m_new - x), pi.eq(pi + 1)]
        with m.If(p_run & (pi > nk) & ~p0_v & ~p1_v):
            m.d.sync += [l_sum.eq(((l_sum * alpha) >> 15) + psum), m_run.eq(m_new), p_run.eq(0)]
        m.d.comb += exp2_rp.addr.eq(p0_d[:8])
        m.d.sync += [p1_v.eq(p0_v), p1_i.eq(p0_i), p1_big.eq(p0_d[8:] >= 16),
                     p1_sh.eq(p0_d[8:12])]
        p_val = Mux(p1_big, 0, exp2_rp.data >> p1_sh)    # golden.llm.exp2_neg
        with m.If(p1_v):
            with m.If(p1_i == 0):
                # first block: l = acc = 0 in golden; alpha = 0 clears the stale accumulators
                m.d.sync += alpha.eq(Mux(first_blk, 0, p_val))
            with m.Else():
                m.d.sync += [pbuf[(p1_i - 1)[:4]].eq(p_val), psum.eq(psum + p_val),
                             p_cnt.eq(p_cnt + 1)]

        # --- shared word pipeline: S0 -> S1 (multiply) -> S2 (tree / acc) -> S3.. -----------------
        s1_v, s1_kind, s1_word, s1_d = Signal(), Signal(2), Signal(8 * L), Signal(8)
        s1_j0, s1_first, s1_last, s1_j = Signal(), Signal(), Signal(), Signal(4)
        s1_p = Signal(_P_BITS)
        m.d.sync += [s1_v.eq(s0_v), s1_kind.eq(s0_kind), s1_word.eq(s0_word), s1_d.eq(s0_d),
                     s1_j0.eq(cj == 0), s1_first.eq(cd == 0), s1_last.eq(cd == hd_words - 1),
                     s1_j.eq(cj), s1_p.eq(pbuf[cj])]

        # S1: L multipliers, int8 x (int8 q lane | u16 p): 17 x 8 bits signed
        s2_v, s2_kind, s2_d = Signal(), Signal(2), Signal(8)
        s2_j0, s2_first, s2_last, s2_j = Signal(), Signal(), Signal(), Signal(4)
        s2_prod = [Signal(signed(25), name=f"s2_prod{i}") for i in range(L)]
        for i in range(L):
            a = Mux(s1_kind == _K, q_rp.data[8 * i:8 * (i + 1)].as_signed(), s1_p)
            m.d.sync += s2_prod[i].eq(a * s1_word[8 * i:8 * (i + 1)].as_signed())
        m.d.sync += [s2_v.eq(s1_v), s2_kind.eq(s1_kind), s2_d.eq(s1_d), s2_j0.eq(s1_j0),
                     s2_first.eq(s1_first), s2_last.eq(s1_last), s2_j.eq(s1_j)]
        m.d.comb += acc_rp.addr.eq(s1_d)

        # S2: K -> adder tree; V -> acc read-modify-write; O -> (acc * recip) >> 16
        s3_kv, s3_ov, s3_first, s3_last, s3_j = Signal(), Signal(), Signal(), Signal(), Signal(4)
        s3_part = Signal(signed(_S_BITS))
        s3_d = Signal(8)
        s3_r = [Signal(signed(_ACC_BITS + 2), name=f"s3_r{i}") for i in range(L)]
        is_o = s2_kind == _O
        mulv = Mux(is_o, recip[:17], alpha)     # recip <= 2**16, alpha <= 2**15
        new_acc = []
        for i in range(L):
            acc_i = acc_rp.data[_ACC_BITS * i:_ACC_BITS * (i + 1)].as_signed()
            prod = acc_i * mulv
            scaled = Mux(is_o, prod >> 16, prod >> 15)
            new_acc.append((Mux(s2_j0, scaled, acc_i) + s2_prod[i])[:_ACC_BITS])
            m.d.sync += s3_r[i].eq(scaled)
        m.d.comb += [acc_wp.addr.eq(s2_d), acc_wp.data.eq(Cat(new_acc)),
                     acc_wp.en.eq(s2_v & (s2_kind == _V))]
        m.d.sync += [s3_kv.eq(s2_v & (s2_kind == _K)), s3_ov.eq(s2_v & is_o),
                     s3_part.eq(tree_sum(s2_prod)), s3_first.eq(s2_first),
                     s3_last.eq(s2_last), s3_j.eq(s2_j), s3_d.eq(s2_d)]

        # S3: K -> s accumulation over the head's words; O -> * omul
        s_acc = Signal(signed(_S_BITS))
        s4_kv, s4_ov, s4_j, s4_d = Signal(), Signal(), Signal(4), Signal(8)
        s4_s = Signal(signed(_S_BITS))
        s4_o = [Signal(signed(_ACC_BITS + 2 + 17), name=f"s4_o{i}") for i in range(L)]
        s_new = Mux(s3_first, 0, s_acc) + s3_part
        with m.If(s3_kv):
            m.d.sync += s_acc.eq(s_new)
        m.d.sync += [s4_kv.eq(s3_kv & s3_last), s4_s.eq(s_new), s4_j.eq(s3_j),
                     s4_ov.eq(s3_ov), s4_d.eq(s3_d)]
        for i in range(L):
            m.d.sync += s4_o[i].eq(s3_r[i] * omul)

        # S4: K -> s * smul; O -> round, saturate, write the output word
        s5_kv, s5_j = Signal(), Signal(4)
        s5_tm = Signal(signed(_T_BITS))
        m.d.sync += [s5_kv.eq(s4_kv), s5_j.eq(s4_j), s5_tm.eq(s4_s * smul)]
        sh1 = Signal(6)
        m.d.comb += sh1.eq(oshift - 1)
        out_bytes = []
        for i in range(L):
            v = s4_o[i]
            # (v + 2**(s-1)) >> s == ((v >> (s-1)) + 1) >> 1 for s > 0: no 2**63 constant
            r = Mux(oshift == 0, v, ((v >> sh1) + 1) >> 1)
            out_bytes.append(Mux(r > 127, 127, Mux(r < -128, -128, r))[:8])
        m.d.comb += [self.wr_addr.eq(o_ptr + s4_d), self.wr_data.eq(Cat(out_bytes)),
                     self.wr_en.eq(Mux(s4_ov, (1 << L) - 1, 0))]

        # S5: K -> t = s * smul >> sshift (arithmetic) into the score buffer and the block max
        t = Signal(signed(_T_BITS))
        m.d.comb += t.eq(s5_tm >> sshift)
        with m.If(s5_kv):
            m.d.sync += [scores[s5_j].eq(t), bmax.eq(Mux((s5_j == 0) | (t > bmax), t, bmax))]

        m.d.comb += pipe_empty.eq(~(s1_v | s2_v | s3_kv | s3_ov | s4_kv | s4_ov | s5_kv))
        return m
