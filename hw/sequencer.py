"""Address sequencers of MATMUL and VADD: the engine feed and the output (epilogue) side.

Both walk the loops of architecture.md ("tiles outer, rows inner") with incrementing pointers
only (no multiplies or divides per cycle), so they run one step per cycle.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .epilogue import Epilogue

__all__ = ["KGroupSequencer", "OutputSequencer"]


def _aw(depth: int) -> int:
    return max(1, (depth - 1).bit_length())


def _wrap(v, depth: int):
    """``v mod depth`` for ``0 <= v < 2*depth``."""
    return Mux(v >= depth, v - depth, v)


class KGroupSequencer(wiring.Component):
    """Feeds the matrix engine one k-group per cycle from the weight ring and activation buffer.

    For every tile ``t`` (outer), row ``b`` and ``kw < k_words`` (inner) it reads weight row
    ``param_rows + kw`` of tile ``t`` from the ring and act word ``x + b*k_words + kw``, and
    flags the group ``first``/``last``. A group is issued only when its ring row has arrived
    (``arrived`` > its absolute index) and, for a ``last`` group, when the engine has room for
    one more result (``credit``); otherwise a bubble (``valid`` = 0) goes in. Bubbles are the
    only stall: the engine itself never stops.

    The addresses go out in the issue cycle to the skewed read ports of both memories (lane
    ``i`` is read ``i`` cycles later); the flags are registered, so they reach the engine with
    lane 0's data one cycle later.

    Parameters
    ----------
    cfg : AccelConfig

    Attributes
    ----------
    start : in, pulse; latches nothing, the fields must stay stable until ``busy`` falls
    x, k_words, rows, n_tiles, tile_rows : in, instruction fields
    arrived : in, rows the weight ring has received
    credit : in, the engine can take one more ``last`` group
    ring_addr : out, weight ring slot (skewed engine port)
    act_addr : out, activation word (skewed port ``a``)
    valid, first, last : out, flags of the group whose lane 0 data arrive now
    busy : out
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        super().__init__({
            "start": In(1),
            "x": In(16), "k_words": In(16), "rows": In(16), "n_tiles": In(16),
            "tile_rows": In(17),
            "arrived": In(32),
            "credit": In(1),
            "ring_addr": Out(_aw(cfg.weight_depth)),
            "act_addr": Out(_aw(cfg.act_depth)),
            "valid": Out(1), "first": Out(1), "last": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        D, R = cfg.weight_depth, cfg.param_rows

        kw = Signal(16)
        b = Signal(16)
        t = Signal(16)
        rptr = Signal(range(D))         # ring slot of the next weight row
        tptr = Signal(range(D))         # ring slot of the current tile's first row
        xrow = Signal(17)               # act word of x row b
        xptr = Signal(17)
        need = Signal(32)               # absolute ring row index of the next read
        tabs = Signal(32)               # absolute index of the current tile's first row

        is_last = Signal()
        m.d.comb += is_last.eq(kw == self.k_words - 1)
        issue = Signal()
        m.d.comb += issue.eq(self.busy & (need < self.arrived) & (~is_last | self.credit))
        m.d.comb += [self.ring_addr.eq(rptr), self.act_addr.eq(xptr)]
        m.d.sync += [
            self.valid.eq(issue),
            self.first.eq(kw == 0),
            self.last.eq(is_last),
        ]

        with m.If(issue):
            with m.If(~is_last):
                m.d.sync += [kw.eq(kw + 1), rptr.eq(_wrap(rptr + 1, D)), xptr.eq(xptr + 1),
                             need.eq(need + 1)]
            with m.Else():
                m.d.sync += kw.eq(0)
                with m.If(b != self.rows - 1):
                    m.d.sync += [
                        b.eq(b + 1),
                        rptr.eq(_wrap(tptr + R, D)),
                        xrow.eq(xrow + self.k_words),
                        xptr.eq(xrow + self.k_words),
                        need.eq(tabs + R),
                    ]
                with m.Else():
                    m.d.sync += [b.eq(0), xrow.eq(self.x), xptr.eq(self.x)]
                    with m.If(t != self.n_tiles - 1):
                        ntp = Signal(range(D))
                        m.d.comb += ntp.eq(_wrap(tptr + self.tile_rows, D))
                        m.d.sync += [
                            t.eq(t + 1),
                            tptr.eq(ntp),
                            rptr.eq(_wrap(ntp + R, D)),
                            tabs.eq(tabs + self.tile_rows),
                            need.eq(tabs + self.tile_rows + R),
                        ]
                    with m.Else():
                        m.d.sync += self.busy.eq(0)

        with m.If(self.start):
            m.d.sync += [
                kw.eq(0), b.eq(0), t.eq(0),
                rptr.eq(R % D), tptr.eq(0),
                xrow.eq(self.x), xptr.eq(self.x),
                need.eq(R), tabs.eq(0),
                self.busy.eq((self.rows != 0) & (self.n_tiles != 0) & (self.k_words != 0)),
            ]
        return m


class OutputSequencer(wiring.Component):
    """Turns engine results (MATMUL) or buffer words (VADD) into int8 writes via the epilogue.

    MATMUL: for each tile, the parameter rows are read from the ring into a bank of ``P``
    (bias, mult) pairs; each engine result (``P`` accumulators of one row) is captured into a
    bank and sent to the :class:`Epilogue` one channel per cycle with its residual byte (read
    from the buffer at the very byte it will overwrite, so ``res == out`` works); the result is
    written as one byte (byte enable) of ``out + b*out_words + n//L``. Channels
    ``n_out <= n < out_words*L`` are written as 0; channels beyond the row are not written; after
    the last tile, row bytes no tile covers are zero-filled. A tile is released to the ring after
    its last row (its parameters are then no longer needed).

    VADD: for each row and element ``i < words*L``, bytes ``a[i]`` and ``b[i]`` are read and
    ``residual_add`` is written to ``out`` (0 for ``i >= n``).

    Parameters
    ----------
    cfg : AccelConfig
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        aw = _aw(cfg.act_depth)
        self.tag_bits = aw + max(1, (cfg.chain_len - 1).bit_length()) + 1
        super().__init__({
            "start_mm": In(1), "start_vadd": In(1),
            "rows": In(16), "n_tiles": In(16), "tile_rows": In(17),
            "n": In(16), "words": In(16),
            "a_base": In(16), "b_base": In(16), "out_base": In(16),
            "mult_a": In(16), "mult_b": In(16), "shift": In(6), "relu": In(1),
            "residual": In(1),
            "i": In(stream.Signature(data.ArrayLayout(signed(32), cfg.chains))),
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
        P, L, D, R = cfg.chains, cfg.chain_len, cfg.weight_depth, cfg.param_rows
        aw = _aw(cfg.act_depth)
        lane_bits = max(1, (L - 1).bit_length())

        m.submodules.epilogue = epi = Epilogue(self.tag_bits)

        # --- capture bank for one engine result -------------------------------------------------
        bank = Signal(data.ArrayLayout(signed(32), P))
        bank_full = Signal()
        bank_clear = Signal()
        m.d.comb += self.i.ready.eq(~bank_full)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [bank.eq(self.i.payload), bank_full.eq(1)]
        with m.If(bank_clear):
            m.d.sync += bank_full.eq(0)

        # --- parameter bank: chain p's 8 parameter bytes (bias i32, mult u16, 2 zero bytes) ----
        prm = Signal(data.ArrayLayout(64, P))
        cap_valid = Signal()
        cap_r = Signal(range(max(R, 2)))
        m.d.sync += cap_valid.eq(0)
        with m.If(cap_valid):
            for r in range(R):
                lo, hi = r * L, min(8, r * L + L)
                with m.If(cap_r == r):
                    for p in range(P):
                        # prm_data is lane-major: byte k of chain p is at k*P + p
                        m.d.sync += prm[p][8 * lo:8 * hi].eq(Cat(
                            self.prm_data[8 * (k * P + p):8 * (k * P + p + 1)]
                            for k in range(hi - lo)))

        # --- loop state ---------------------------------------------------------------------------
        vadd = Signal()                 # mode of the current instruction
        t = Signal(16)
        b = Signal(16)
        p = Signal(range(P))
        r = Signal(range(max(R, 2)))
        tptr = Signal(range(D))
        n = Signal(32)                  # output channel / element index of the next element
        cw = Signal(17)                 # its word within the row
        cl = Signal(lane_bits)          # its byte lane
        nbase = Signal(32)              # channel of p = 0 in this tile
        nbw = Signal(17)
        nbl = Signal(lane_bits)
        rowoff = Signal(32)             # b * words

        # element issue -> e0 (buffer reads in flight) -> epilogue
        adv = Signal()
        e0_valid = Signal()
        m.d.comb += adv.eq(~e0_valid | epi.i.ready)
        issue = Signal()
        el_zero = Signal()
        el_we = Signal()
        e0_acc = Signal(signed(32))
        e0_bias = Signal(signed(32))
        e0_mult = Signal(16)
        e0_lane = Signal(lane_bits)
        e0_waddr = Signal(aw)
        e0_zero = Signal()
        e0_we = Signal()

        word_addr = Signal(32)
        m.d.comb += word_addr.eq(rowoff + cw)
        m.d.comb += [
            self.a_addr.eq(self.a_base + word_addr), self.a_en.eq(adv),
            self.b_addr.eq(self.b_base + word_addr), self.b_en.eq(adv),
        ]
        with m.If(adv):
            m.d.sync += [
                e0_valid.eq(issue),
                e0_acc.eq(bank[p]),
                e0_bias.eq(Mux(vadd, 0, prm[p][0:32].as_signed())),
                e0_mult.eq(Mux(vadd, self.mult_a, prm[p][32:48])),
                e0_lane.eq(cl),
                e0_waddr.eq(self.out_base + word_addr),
                e0_zero.eq(el_zero),
                e0_we.eq(el_we),
            ]

        a_byte = Signal(signed(8))
        b_byte = Signal(signed(8))
        m.d.comb += [
            a_byte.eq(self.a_data.word_select(e0_lane, 8)),
            b_byte.eq(self.b_data.word_select(e0_lane, 8)),
        ]
        ep = epi.i.payload
        m.d.comb += [
            epi.i.valid.eq(e0_valid),
            ep.acc.eq(Mux(vadd, a_byte, e0_acc)),
            ep.bias.eq(e0_bias),
            ep.mult.eq(e0_mult),
            ep.res.eq(b_byte),
            ep.res_mult.eq(Mux(vadd | self.residual, self.mult_b, 0)),
            ep.shift.eq(self.shift),
            ep.relu.eq(self.relu),
            ep.zero.eq(e0_zero),
            ep.tag.eq(Cat(e0_waddr, e0_lane, e0_we)),
        ]

        # epilogue result -> one byte-enable write
        o_addr = epi.o.payload.tag[:aw]
        o_lane = epi.o.payload.tag[aw:aw + lane_bits]
        o_we = epi.o.payload.tag[aw + lane_bits]
        m.d.comb += [
            epi.o.ready.eq(1),
            self.w_addr.eq(o_addr),
            self.w_data.eq(Cat([epi.o.payload.value] * L)),
            self.w_en.eq(Mux(epi.o.valid & o_we, (Const(1, L) << o_lane)[:L], 0)),
        ]

        def step_lane():
            """Advance (cw, cl) by one byte."""
            with m.If(cl == L - 1):
                m.d.sync += [cl.eq(0), cw.eq(cw + 1)]
            with m.Else():
                m.d.sync += cl.eq(cl + 1)

        # (word, lane) + P, with P = pw*L + pl
        pw, pl = divmod(P, L)
        nl_sum = nbl + pl
        next_nbw = Mux(nl_sum >= L, nbw + pw + 1, nbw + pw)
        next_nbl = Mux(nl_sum >= L, nl_sum - L, nl_sum)
        row_end = (cw == self.words - 1) & (cl == L - 1)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.busy.eq(0)
                m.d.sync += [t.eq(0), b.eq(0), p.eq(0), r.eq(0), tptr.eq(0), n.eq(0),
                             cw.eq(0), cl.eq(0), nbase.eq(0), nbw.eq(0), nbl.eq(0),
                             rowoff.eq(0)]
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
                # fetches rows in order, so the engine having used the tile's last weight row
                # proves the parameter rows at the head of the tile have arrived.
                m.d.comb += [self.busy.eq(1), self.prm_addr.eq(_wrap(tptr + r, D)),
                             self.prm_en.eq(bank_full)]
                with m.If(bank_full):
                    m.d.sync += [cap_valid.eq(1), cap_r.eq(r)]
                    with m.If(r == R - 1):
                        m.d.sync += r.eq(0)
                        m.next = "PARAMS_WAIT"
                    with m.Else():
                        m.d.sync += r.eq(r + 1)

            with m.State("PARAMS_WAIT"):
                # the last parameter row lands in the bank at the end of this cycle
                m.d.comb += self.busy.eq(1)
                m.next = "ELEM"

            with m.State("ELEM"):
                m.d.comb += [
                    self.busy.eq(1),
                    issue.eq(bank_full & adv),
                    el_zero.eq(n >= self.n),
                    el_we.eq(cw < self.words),
                ]
                with m.If(issue):
                    with m.If(p != P - 1):
                        m.d.sync += [p.eq(p + 1), n.eq(n + 1)]
                        step_lane()
                    with m.Else():
                        m.d.comb += bank_clear.eq(1)
                        m.d.sync += p.eq(0)
                        with m.If(b != self.rows - 1):
                            m.d.sync += [b.eq(b + 1), rowoff.eq(rowoff + self.words),
                                         n.eq(nbase), cw.eq(nbw), cl.eq(nbl)]
                        with m.Else():
                            m.d.comb += self.release.eq(1)
                            m.d.sync += [
                                b.eq(0), rowoff.eq(0), t.eq(t + 1),
                                tptr.eq(_wrap(tptr + self.tile_rows, D)),
                                nbase.eq(nbase + P), n.eq(nbase + P),
                                nbw.eq(next_nbw), nbl.eq(next_nbl),
                                cw.eq(next_nbw), cl.eq(next_nbl),
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
                m.d.comb += [self.busy.eq(1), issue.eq(adv), el_zero.eq(1), el_we.eq(1)]
                with m.If(issue):
                    with m.If(row_end):
                        m.d.sync += [cw.eq(nbw), cl.eq(nbl), b.eq(b + 1),
                                     rowoff.eq(rowoff + self.words)]
                        with m.If(b == self.rows - 1):
                            m.next = "DRAIN"
                    with m.Else():
                        step_lane()

            with m.State("VADD"):
                m.d.comb += [self.busy.eq(1), issue.eq(adv), el_zero.eq(n >= self.n),
                             el_we.eq(1)]
                with m.If(issue):
                    with m.If(row_end):
                        m.d.sync += [cw.eq(0), cl.eq(0), n.eq(0), b.eq(b + 1),
                                     rowoff.eq(rowoff + self.words)]
                        with m.If(b == self.rows - 1):
                            m.next = "DRAIN"
                    with m.Else():
                        m.d.sync += n.eq(n + 1)
                        step_lane()

            with m.State("DRAIN"):
                m.d.comb += self.busy.eq(1)
                with m.If(~e0_valid & ~epi.busy):
                    m.next = "IDLE"
        return m
