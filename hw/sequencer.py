"""Address sequencers of MATMUL and VADD: the engine feed and the output (epilogue) side.

Both walk the loops of architecture.md ("tiles outer, rows inner") with incrementing pointers
only (no multiplies or divides per cycle), so they run one step per cycle.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .contract import MAX_EPILOGUE_LANES, epilogue_lanes
from .epilogue import Epilogue
from .matrix_engine import result_layout

__all__ = ["KGroupSequencer", "OutputSequencer", "epilogue_lanes", "MAX_EPILOGUE_LANES"]

# MAX_EPILOGUE_LANES and epilogue_lanes (E, elements requantized per cycle) are in the
# contract, hw/contract.py


def _aw(depth: int) -> int:
    return max(1, (depth - 1).bit_length())


def _wrap(v, depth: int):
    """``v mod depth`` for ``0 <= v < 2*depth``."""
    return Mux(v >= depth, v - depth, v)


class KGroupSequencer(wiring.Component):
    """Feeds the matrix engine one k-group of a row pair per cycle from the ring and the buffer.

    For every tile ``t`` (outer), row pair ``(b, b+1)`` (``b = 0, 2, ...``) and ``kw <
    k_words`` (inner) it reads ring entry ``R + kw`` of tile ``t`` (a tile is ``tile_entries =
    R + k_words`` entries) and act words ``x + b*x_words + kw`` (``act_addr0``) and ``x +
    (b+1)*x_words + kw`` (``act_addr1``; rows ``x_words >= k_words`` apart), and flags the
    group ``first``/``last`` and ``pair`` (row ``b+1`` exists). A group is issued only when its
    ring entry has arrived (``arrived`` > its absolute index) and, for a ``last`` group, when
    the engine has room for one more result (``credit``); otherwise a bubble (``valid`` = 0)
    goes in. Bubbles are the only stall: the engine itself never stops.

    The addresses go out in the issue cycle (the ring's engine port skews its lanes itself);
    the flags are registered, so they reach the engine with the activation words and lane 0's
    weights one cycle later.

    Parameters
    ----------
    cfg : AccelConfig

    Attributes
    ----------
    start : in, pulse; latches nothing, the fields must stay stable until ``busy`` falls
    x, k_words, x_words, rows, n_tiles, tile_entries : in, instruction fields (``x_words``:
        the MATMUL's ``k_words + x_pad``)
    arrived : in, entries the weight ring has received
    credit : in, the engine can take one more ``last`` group
    ring_addr : out, weight ring slot (engine port)
    act_addr0, act_addr1 : out, activation words of rows b and b+1
    valid, first, last, pair : out, flags of the group whose data arrive now
    busy : out
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        super().__init__({
            "start": In(1),
            "x": In(16), "k_words": In(16), "x_words": In(17), "rows": In(16),
            "n_tiles": In(16), "tile_entries": In(17),
            "arrived": In(32),
            "credit": In(1),
            "ring_addr": Out(_aw(cfg.weight_depth)),
            "act_addr0": Out(_aw(cfg.act_depth)),
            "act_addr1": Out(_aw(cfg.act_depth)),
            "valid": Out(1), "first": Out(1), "last": Out(1), "pair": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        D, R = cfg.weight_depth, cfg.param_rows

        kw = Signal(16)
        rows_left = Signal(16)          # rows from b on
        t = Signal(16)
        rptr = Signal(range(D))         # ring slot of the next entry
        tptr = Signal(range(D))         # ring slot of the current tile's first entry
        # act words of x rows b and b+1 (at kw = 0, and now): addresses modulo the port's width
        aw = _aw(cfg.act_depth)
        xrow0 = Signal(aw)
        xrow1 = Signal(aw)
        xptr0 = Signal(aw)
        xptr1 = Signal(aw)
        need = Signal(32)               # absolute ring entry index of the next read
        tabs = Signal(32)               # absolute index of the current tile's first entry
        xw2 = Signal(18)                # two rows of x
        m.d.comb += xw2.eq(self.x_words << 1)

        is_last = Signal()
        m.d.comb += is_last.eq(kw == self.k_words - 1)
        issue = Signal()
        m.d.comb += issue.eq(self.busy & (need < self.arrived) & (~is_last | self.credit))
        m.d.comb += [self.ring_addr.eq(rptr), self.act_addr0.eq(xptr0),
                     self.act_addr1.eq(xptr1)]
        m.d.sync += [
            self.valid.eq(issue),
            self.first.eq(kw == 0),
            self.last.eq(is_last),
            self.pair.eq(rows_left != 1),
        ]

        with m.If(issue):
            with m.If(~is_last):
                m.d.sync += [kw.eq(kw + 1), rptr.eq(_wrap(rptr + 1, D)), xptr0.eq(xptr0 + 1),
                             xptr1.eq(xptr1 + 1), need.eq(need + 1)]
            with m.Else():
                m.d.sync += kw.eq(0)
                with m.If(rows_left > 2):
                    m.d.sync += [
                        rows_left.eq(rows_left - 2),
                        rptr.eq(_wrap(tptr + R, D)),
                        xrow0.eq(xrow0 + xw2), xptr0.eq(xrow0 + xw2),
                        xrow1.eq(xrow1 + xw2), xptr1.eq(xrow1 + xw2),
                        need.eq(tabs + R),
                    ]
                with m.Else():
                    m.d.sync += [rows_left.eq(self.rows),
                                 xrow0.eq(self.x), xptr0.eq(self.x),
                                 xrow1.eq(self.x + self.x_words),
                                 xptr1.eq(self.x + self.x_words)]
                    with m.If(t != self.n_tiles - 1):
                        ntp = Signal(range(D))
                        m.d.comb += ntp.eq(_wrap(tptr + self.tile_entries, D))
                        m.d.sync += [
                            t.eq(t + 1),
                            tptr.eq(ntp),
                            rptr.eq(_wrap(ntp + R, D)),
                            tabs.eq(tabs + self.tile_entries),
                            need.eq(tabs + self.tile_entries + R),
                        ]
                    with m.Else():
                        m.d.sync += self.busy.eq(0)

        with m.If(self.start):
            m.d.sync += [
                kw.eq(0), rows_left.eq(self.rows), t.eq(0),
                rptr.eq(R % D), tptr.eq(0),
                xrow0.eq(self.x), xptr0.eq(self.x),
                xrow1.eq(self.x + self.x_words), xptr1.eq(self.x + self.x_words),
                need.eq(R), tabs.eq(0),
                self.busy.eq((self.rows != 0) & (self.n_tiles != 0) & (self.k_words != 0)),
            ]
        return m


class OutputSequencer(wiring.Component):
    """Turns engine results (MATMUL) or buffer words (VADD) into int8 writes via the epilogues.

    Elements go ``E`` at a time (:func:`epilogue_lanes`: consecutive channels, ``E`` dividing
    both P and L, so a group is aligned within one activation word) through ``E``
    :class:`Epilogue` s in lockstep, and are written with one byte-enable write per group.

    MATMUL: for each tile, the R parameter rows are read from the ring into a bank of ``P*G``
    (bias, mult) records (chain p's bytes, concatenated over the rows, hold segment s's record
    at ``[8s, 8s+8)``). Each engine result (rows b and b+1, ``G`` segments of ``P`` int32) is
    captured; for row b and, if the pair has it, row b+1, the ``r*P`` channels ``n = t*P*r +
    s*P + p`` (``s < r``: consecutive within the tile) are sent to the epilogues with their
    residual bytes (read from the buffer at the very bytes they will overwrite, so ``res ==
    out`` works) and written to ``out + row*out_words`` byte ``n``. Channels ``n_out <= n <
    out_words*L`` are written as 0; channels beyond the row are not written; after the last
    tile, row bytes no tile covers are zero-filled. A tile is released to the ring after its
    last row pair (its parameters are then no longer needed).

    VADD: for each row and element ``i < words*L``, bytes ``a[i]`` and ``b[i]`` are read and
    ``residual_add`` is written to ``out`` (0 for ``i >= n``).

    Timing: one group of E elements per cycle, so a result takes ``2*r*P/E`` cycles (``r*P/E``
    for a lone last row), back to back with the next result; a tile's parameter rows take
    ``R + 1`` cycles once its first result is in. A group is written 6 cycles after its issue
    (buffer read, operand register, 4 epilogue stages). A dense-only engine (``cfg.sparse``
    off, r = 1) keeps only segment 0 of results and parameters.

    Parameters
    ----------
    cfg : AccelConfig
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        self.E = E = epilogue_lanes(cfg)
        aw = _aw(cfg.act_depth)
        self.grp_bits = max(1, (cfg.chain_len // E - 1).bit_length())
        self.tag_bits = aw + self.grp_bits + 1
        super().__init__({
            "start_mm": In(1), "start_vadd": In(1),
            "rows": In(16), "n_tiles": In(16), "tile_entries": In(17), "lgr": In(2),
            "n": In(16), "words": In(16),
            "a_base": In(16), "b_base": In(16), "out_base": In(16),
            "mult_a": In(16), "mult_b": In(16), "shift": In(6), "relu": In(1),
            "residual": In(1),
            "i": In(stream.Signature(result_layout(cfg))),
            "prm_addr": Out(_aw(cfg.weight_depth)), "prm_en": Out(1),
            "prm_data": In(8 * cfg.row_bytes),
            "a_addr": Out(aw), "a_en": Out(1), "a_data": In(8 * cfg.chain_len),
            "b_addr": Out(aw), "b_en": Out(1), "b_data": In(8 * cfg.chain_len),
            "w_addr": Out(aw), "w_data": Out(8 * cfg.chain_len), "w_en": Out(cfg.chain_len),
            "release": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        P, L, D, R, G, E = (cfg.chains, cfg.chain_len, cfg.weight_depth, cfg.param_rows,
                            cfg.groups, self.E)
        aw = _aw(cfg.act_depth)
        gb = self.grp_bits
        LG = L // E                     # element groups per activation word
        # segments a result can carry: r <= G in sparse modes, 1 on a dense-only engine
        GS = G if cfg.sparse else 1
        GP = GS * P

        epis = [Epilogue(self.tag_bits if e == 0 else 1) for e in range(E)]
        for e, epi in enumerate(epis):
            m.submodules[f"epilogue{e}"] = epi

        # --- the result being written: one row at the bottom of ``cur`` (shifted down by one
        # group per step), the other row waiting in ``nxt`` ---------------------------------
        cur = Signal(32 * GP, reset_less=True)
        nxt = Signal(32 * GP, reset_less=True)
        have = Signal()
        finishing = Signal()            # the result's last group is issued this cycle
        m.d.comb += self.i.ready.eq(~have | finishing)
        with m.If(finishing):
            m.d.sync += have.eq(0)
        with m.If(self.i.valid & self.i.ready):
            res = self.i.payload.as_value()
            m.d.sync += [cur.eq(res[:32 * GP]), nxt.eq(res[32 * G * P:32 * (G * P + GP)]),
                         have.eq(1)]

        # --- parameter bank: record s*P + p = (bias i32, mult u16) of chain p, segment s ---------
        prm = Signal(48 * GP, reset_less=True)
        cap_valid = Signal()
        cap_r = Signal(range(max(R, 2)))
        m.d.sync += cap_valid.eq(0)
        with m.If(cap_valid):
            for rr in range(R):
                with m.If(cap_r == rr):
                    for i in range(L):
                        j = rr * L + i              # byte of chain p's parameter bytes
                        s, k = divmod(j, 8)
                        if s >= GS or k >= 6:
                            continue
                        for p in range(P):
                            # prm_data is lane-major: lane i of chain p is byte i*P + p
                            bit = 48 * (s * P + p) + 8 * k
                            m.d.sync += prm[bit:bit + 8].eq(
                                self.prm_data[8 * (i * P + p):8 * (i * P + p + 1)])

        # --- loop state -----------------------------------------------------------------------
        vadd = Signal()                 # mode of the current instruction
        t = Signal(16)
        rows_left = Signal(16)          # rows from the current one (MATMUL: from row b) on
        row = Signal()                  # MATMUL: row b (0) or b+1 (1) of the result
        q = Signal(range(max(GP // E, 2)))      # element group within the row
        q_last = Signal.like(q)         # r*P/E - 1
        rr = Signal(range(max(R, 2)))
        tptr = Signal(range(D))
        # channels reach n_tiles * 4P (MATMUL), elements words * L (VADD); word addresses are
        # kept modulo the buffer's address width (the ports take the low bits anyway)
        nb = 16 + max((4 * P).bit_length(), L.bit_length()) + 1
        n = Signal(nb)                  # channel / element index of the group's first element
        cw = Signal(nb)                 # its word within the row
        cg = Signal(gb)                 # its group within the word
        nbase = Signal(nb)              # first channel of this tile
        nbw = Signal(nb)
        nbg = Signal(gb)
        tw_inc = Signal(nb)             # one tile's channels (P*r) in words and groups
        tg_inc = Signal(gb)
        rowoff = Signal(aw)             # row * words

        # element groups: issue -> e0 (buffer reads in flight) -> e1 (operands registered) ->
        # epilogues. e1 keeps the block-RAM read out of the epilogue's first adder: data out
        # (5.8 ns on ECP5) + byte select + the 33-bit acc + bias was the 2 x 4 ULX3S build's
        # critical path (68 MHz < 70).
        adv = Signal()
        adv1 = Signal()
        e0_valid = Signal()
        e1_valid = Signal()
        m.d.comb += [adv1.eq(~e1_valid | epis[0].i.ready), adv.eq(~e0_valid | adv1)]
        issue = Signal()
        el_zero = Signal(E)
        el_we = Signal()
        e0_acc = Signal(32 * E, reset_less=True)
        e0_prm = Signal(48 * E, reset_less=True)
        e0_grp = Signal(gb)
        e0_waddr = Signal(aw)
        e0_zero = Signal(E)
        e0_we = Signal()

        word_addr = Signal(aw)
        m.d.comb += word_addr.eq(rowoff + cw)
        m.d.comb += [
            self.a_addr.eq(self.a_base + word_addr), self.a_en.eq(adv),
            self.b_addr.eq(self.b_base + word_addr), self.b_en.eq(adv),
        ]
        with m.If(adv):
            m.d.sync += [
                e0_valid.eq(issue),
                e0_acc.eq(cur[:32 * E]),
                e0_prm.eq(prm.word_select(q, 48 * E)),
                e0_grp.eq(cg),
                e0_waddr.eq(self.out_base + word_addr),
                e0_zero.eq(el_zero),
                e0_we.eq(el_we),
            ]

        a_bytes = self.a_data.word_select(e0_grp, 8 * E) if LG > 1 else self.a_data
        b_bytes = self.b_data.word_select(e0_grp, 8 * E) if LG > 1 else self.b_data
        e1_tag = Signal(self.tag_bits)
        e1_zero = Signal(E)
        with m.If(adv1):
            m.d.sync += [e1_valid.eq(e0_valid), e1_tag.eq(Cat(e0_waddr, e0_grp, e0_we)),
                         e1_zero.eq(e0_zero)]
        for e, epi in enumerate(epis):
            ep = epi.i.payload
            rec = e0_prm[48 * e:48 * (e + 1)]
            acc = Signal(signed(32), name=f"e1_acc{e}", reset_less=True)
            bias = Signal(signed(32), name=f"e1_bias{e}", reset_less=True)
            mult = Signal(16, name=f"e1_mult{e}", reset_less=True)
            res = Signal(signed(8), name=f"e1_res{e}", reset_less=True)
            with m.If(adv1):
                m.d.sync += [
                    acc.eq(Mux(vadd, a_bytes[8 * e:8 * e + 8].as_signed(),
                               e0_acc[32 * e:32 * (e + 1)].as_signed())),
                    bias.eq(Mux(vadd, 0, rec[0:32].as_signed())),
                    mult.eq(Mux(vadd, self.mult_a, rec[32:48])),
                    res.eq(b_bytes[8 * e:8 * e + 8].as_signed()),
                ]
            m.d.comb += [
                epi.i.valid.eq(e1_valid),
                ep.acc.eq(acc), ep.bias.eq(bias), ep.mult.eq(mult), ep.res.eq(res),
                ep.res_mult.eq(Mux(vadd | self.residual, self.mult_b, 0)),
                ep.shift.eq(self.shift),
                ep.relu.eq(self.relu),
                ep.zero.eq(e1_zero[e]),
                epi.o.ready.eq(1),
            ]
        m.d.comb += epis[0].i.payload.tag.eq(e1_tag)

        # epilogue results -> one byte-enable write of E bytes
        tag = epis[0].o.payload.tag
        o_addr, o_grp, o_we = tag[:aw], tag[aw:aw + gb], tag[aw + gb]
        group = Cat(epi.o.payload.value for epi in epis)
        m.d.comb += [
            self.w_addr.eq(o_addr),
            self.w_data.eq(Cat([group] * LG)),
            self.w_en.eq(Mux(epis[0].o.valid & o_we,
                             Cat(Mux(o_grp == g, (1 << E) - 1, 0) for g in range(LG)), 0)),
        ]

        def step_group():
            """Advance (cw, cg) by one group of E bytes."""
            with m.If(cg == LG - 1):
                m.d.sync += [cg.eq(0), cw.eq(cw + 1)]
            with m.Else():
                m.d.sync += cg.eq(cg + 1)

        def zeros_from(limit):
            return Cat(n + e >= limit for e in range(E))

        # (word, group) + one tile's channels
        ng_sum = nbg + tg_inc
        next_nbw = Mux(ng_sum >= LG, nbw + tw_inc + 1, nbw + tw_inc)
        next_nbg = Mux(ng_sum >= LG, ng_sum - LG, ng_sum)
        row_end = (cw == self.words - 1) & (cg == LG - 1)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.busy.eq(0)
                m.d.sync += [t.eq(0), rows_left.eq(self.rows), row.eq(0), q.eq(0), rr.eq(0),
                             tptr.eq(0), n.eq(0), cw.eq(0), cg.eq(0), nbase.eq(0), nbw.eq(0),
                             nbg.eq(0), rowoff.eq(0)]
                # per mode r = 2**lgr: steps per row and one tile's advance
                with m.Switch(self.lgr):
                    for lr in range(3):
                        with m.Case(lr):
                            w_i, g_i = divmod((P << lr) // E, LG)
                            m.d.sync += [q_last.eq(min(((P << lr) // E) - 1, GP // E - 1)),
                                         tw_inc.eq(w_i), tg_inc.eq(g_i)]
                with m.If(self.start_mm):
                    m.d.sync += vadd.eq(0)
                    with m.If(self.rows == 0):
                        m.next = "DRAIN"
                    with m.Elif(self.n_tiles == 0):
                        m.next = "TAIL_CHECK"
                    with m.Else():
                        m.next = "PARAMS"
                with m.Elif(self.start_vadd):
                    m.d.sync += vadd.eq(1)
                    with m.If((self.rows == 0) | (self.words == 0)):
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "VADD"

            with m.State("PARAMS"):
                # Read the tile's parameter rows only once its first result exists: the ring
                # writes entries in order, so the engine having used the tile's last entry
                # proves the parameter rows at the head of the tile have arrived.
                m.d.comb += [self.busy.eq(1), self.prm_addr.eq(_wrap(tptr + rr, D)),
                             self.prm_en.eq(have)]
                with m.If(have):
                    m.d.sync += [cap_valid.eq(1), cap_r.eq(rr)]
                    with m.If(rr == R - 1):
                        m.d.sync += rr.eq(0)
                        m.next = "PARAMS_WAIT"
                    with m.Else():
                        m.d.sync += rr.eq(rr + 1)

            with m.State("PARAMS_WAIT"):
                # the last parameter row lands in the bank at the end of this cycle
                m.d.comb += self.busy.eq(1)
                m.next = "ELEM"

            with m.State("ELEM"):
                m.d.comb += [
                    self.busy.eq(1),
                    issue.eq(have & adv),
                    el_zero.eq(zeros_from(self.n)),
                    el_we.eq(cw < self.words),
                ]
                with m.If(issue):
                    with m.If(q != q_last):
                        m.d.sync += [q.eq(q + 1), n.eq(n + E), cur.eq(cur >> (32 * E))]
                        step_group()
                    with m.Else():
                        m.d.sync += q.eq(0)
                        with m.If((row == 0) & (rows_left != 1)):
                            # row b+1 of the pair
                            m.d.sync += [row.eq(1), cur.eq(nxt), rowoff.eq(rowoff + self.words),
                                         n.eq(nbase), cw.eq(nbw), cg.eq(nbg)]
                        with m.Else():
                            m.d.comb += finishing.eq(1)
                            m.d.sync += row.eq(0)
                            with m.If(rows_left > 2):
                                m.d.sync += [rows_left.eq(rows_left - 2),
                                             rowoff.eq(rowoff + self.words),
                                             n.eq(nbase), cw.eq(nbw), cg.eq(nbg)]
                            with m.Else():
                                m.d.comb += self.release.eq(1)
                                m.d.sync += [
                                    rows_left.eq(self.rows), rowoff.eq(0), t.eq(t + 1),
                                    tptr.eq(_wrap(tptr + self.tile_entries, D)),
                                    nbase.eq(nbase + (P << self.lgr)),
                                    n.eq(nbase + (P << self.lgr)),
                                    nbw.eq(next_nbw), nbg.eq(next_nbg),
                                    cw.eq(next_nbw), cg.eq(next_nbg),
                                ]
                                with m.If(t == self.n_tiles - 1):
                                    m.next = "TAIL_CHECK"
                                with m.Else():
                                    m.next = "PARAMS"

            with m.State("TAIL_CHECK"):
                m.d.comb += self.busy.eq(1)
                with m.If(nbw < self.words):
                    m.next = "TAIL"
                with m.Else():
                    m.next = "DRAIN"

            with m.State("TAIL"):
                # bytes of each row beyond the last tile's channels: written as 0
                m.d.comb += [self.busy.eq(1), issue.eq(adv), el_zero.eq(-1), el_we.eq(1)]
                with m.If(issue):
                    with m.If(row_end):
                        m.d.sync += [cw.eq(nbw), cg.eq(nbg), rows_left.eq(rows_left - 1),
                                     rowoff.eq(rowoff + self.words)]
                        with m.If(rows_left == 1):
                            m.next = "DRAIN"
                    with m.Else():
                        step_group()

            with m.State("VADD"):
                m.d.comb += [self.busy.eq(1), issue.eq(adv), el_zero.eq(zeros_from(self.n)),
                             el_we.eq(1)]
                with m.If(issue):
                    with m.If(row_end):
                        m.d.sync += [cw.eq(0), cg.eq(0), n.eq(0), rows_left.eq(rows_left - 1),
                                     rowoff.eq(rowoff + self.words)]
                        with m.If(rows_left == 1):
                            m.next = "DRAIN"
                    with m.Else():
                        m.d.sync += n.eq(n + E)
                        step_group()

            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                with m.If(~e0_valid & ~e1_valid & ~epis[0].busy):
                    m.next = "IDLE"
        return m
