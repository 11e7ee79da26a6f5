"""Matrix engine (MPE): P sparse DSP chains sharing one broadcast pair of activation words."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .contract import RESULT_FIFO_DEPTH
from .dsp_chain import DSP_LATENCY, DSPChain, SparseSelector

__all__ = ["MatrixEngine", "RESULT_FIFO_DEPTH", "result_layout"]

# RESULT_FIFO_DEPTH (results the engine can hold) is in the contract, hw/contract.py


def result_layout(cfg: AccelConfig) -> data.ArrayLayout:
    """``[row][seg][chain]`` signed 32: one finished dot product of every chain."""
    return data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(signed(32), cfg.chains),
                                             cfg.groups), 2)


class MatrixEngine(wiring.Component):
    """``P`` :class:`~.dsp_chain.DSPChain` s of ``L`` slices: two k-groups (rows b, b+1) of
    ``P * L`` packed MACs per cycle, dense or N:M sparse.

    Every cycle a k-group or a bubble enters. ``x0``/``x1`` are the whole activation words of
    rows b and b+1 (unskewed, at lane 0 time; ``x1`` is taken as 0 unless ``pair``); the
    :class:`~.dsp_chain.SparseSelector` packs them once for all chains, delays them for the DG
    positions and picks every slice's operand by its index. ``w`` and ``idx`` arrive already
    skewed (lane ``i`` is ``i mod S0`` cycles late: the weight ring reads lane ``i`` with the
    address delayed so); both are registered once on the way in (``w`` here, ``idx`` in the
    selector), in step with the selector's banks. ``valid``/``first``/``last``/``pair`` and the
    mode ``lgm``/``lgr`` describe the group whose lane 0 enters now; one shared delay line
    carries them to the reduction nodes. A bubble (``valid`` = 0) may carry anything (data,
    flags, mode) and changes no accumulator.

    The mode travels with the groups (5 bits per stage): it must be constant within a dot
    product, and a MATMUL may change it with its first group while the previous results are
    still in flight. Without ``cfg.sparse`` the engine is dense only and ignores ``idx``,
    ``lgm`` and ``lgr``.

    The chains have no clock enable: nothing stalls once a group is in. Back-pressure is applied
    at the input instead: ``credit`` is high while one more dot product may be finished, i.e.
    while results in flight plus results in the output FIFO are fewer than
    :data:`RESULT_FIFO_DEPTH`. The producer may send a group flagged ``last`` only in a cycle
    *after* one where it saw ``credit`` (it registers its flags; ``credit`` already counts a
    ``last`` group that is entering this cycle).

    Latency: a dot product whose last group's lane 0 entered at cycle ``c`` is accumulated by
    the reduction nodes at the end of ``c + S0 + 3`` (input registers 1, DG skew ``S0 - 1``,
    AREG, MREG, PREG), combined and written to the FIFO at the end of ``c + S0 + 4``, and is on
    ``o`` (``valid``) from ``c + S0 + 6`` (the buffered FIFO's two cycles): 10 cycles at
    L = 16, 7 at L = 4.

    Parameters
    ----------
    cfg : AccelConfig
        ``chains`` (P), ``chain_len`` (L), ``groups`` (G), ``group_len`` (S0), ``sparse``.

    Attributes
    ----------
    x0, x1 : in, ``L`` signed bytes each: the words of rows b and b+1 (unskewed)
    w : in, ``L`` lanes of ``P`` signed bytes (lane-major: ``w[i][p]`` is chain p's lane i;
        lane i is ``i mod S0`` cycles late)
    idx : in, ``L`` lanes of ``P`` 4-bit indices (as ``w``)
    lgm, lgr : in, the mode of the group whose lane 0 enters now: ``M = 2**lgm``, ``r = 2**lgr``
    valid, first, last, pair : in, flags of the group whose lane 0 enters now
    credit : out
    o : stream of ``[row][seg][chain]`` signed 32 (:func:`result_layout`), in completion order;
        segments ``>= r`` and row 1 of a dot product without ``pair`` are don't-care (the compiler
        guarantees int32 sums, see ``golden.int8.matmul``).
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        P, L = cfg.chains, cfg.chain_len
        self.P, self.L, self.G, self.S0 = P, L, cfg.groups, cfg.group_len
        #: cycles from a ``last`` group's lane 0 entering to its result being valid on ``o``
        self.latency = self.S0 + 6
        lanes = data.ArrayLayout(signed(8), L)
        super().__init__({
            "x0": In(lanes), "x1": In(lanes),
            "w": In(data.ArrayLayout(data.ArrayLayout(signed(8), P), L)),
            "idx": In(data.ArrayLayout(data.ArrayLayout(unsigned(4), P), L)),
            "lgm": In(3), "lgr": In(2),
            "valid": In(1), "first": In(1), "last": In(1), "pair": In(1),
            "credit": Out(1),
            "o": Out(stream.Signature(result_layout(cfg))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, P, L, G, S0 = self.cfg, self.P, self.L, self.G, self.S0

        # --- operands: packed, skewed, selected (shared by all chains) ---------------------------
        m.submodules.selector = sel = SparseSelector(cfg)
        m.d.comb += [
            sel.x0.eq(self.x0),
            # row b+1 absent: x1 = 0 (L byte ANDs here instead of anything per chain)
            sel.x1.eq(Mux(self.pair, self.x1, 0)),
            sel.idx.eq(self.idx), sel.lgm.eq(self.lgm), sel.lgr.eq(self.lgr),
        ]
        w = Signal.like(self.w, reset_less=True)
        m.d.sync += w.eq(self.w)

        # --- shared flag and mode delay lines ---------------------------------------------------
        # The reduction nodes see a group S0 + 3 cycles after its lane 0 entered; its result is
        # complete one cycle later (written to the FIFO then, combined by the mode delayed as
        # much). Only valid/done need a reset.
        lat = 1 + S0 - 1 + DSP_LATENCY
        vline = Signal(lat)
        fline = Signal(lat, reset_less=True)
        done = Signal(lat + 1)
        m.d.sync += [
            vline.eq(Cat(self.valid, vline[:-1])),
            fline.eq(Cat(self.first, fline[:-1])),
            done.eq(Cat(self.valid & self.last, done[:-1])),
        ]
        lgr_done = self.lgr
        if cfg.sparse:
            lgr_line = Signal(2 * (lat + 1), reset_less=True)
            m.d.sync += lgr_line.eq(Cat(self.lgr, lgr_line[:-2]))
            lgr_done = lgr_line[-2:]

        # --- chains ---------------------------------------------------------------------------
        m.submodules.results = res = fifo.SyncFIFOBuffered(
            width=result_layout(cfg).size, depth=RESULT_FIFO_DEPTH)
        w_data = Signal(result_layout(cfg))
        for p in range(P):
            ch = DSPChain(cfg)
            m.submodules[f"chain{p}"] = ch
            assert ch.latency + 1 == lat        # + the input registers
            m.d.comb += [
                ch.en.eq(vline[-1]), ch.first.eq(fline[-1]), ch.lgr.eq(lgr_done),
            ]
            for i in range(L):
                m.d.comb += [ch.a[i].eq(sel.a[i][p]), ch.w[i].eq(w[i][p])]
            for row in range(2):
                for s in range(G):
                    m.d.comb += w_data[row][s][p].eq(ch.o[row][s])
        m.d.comb += [
            res.w_data.eq(w_data),
            res.w_en.eq(done[-1]),
            self.o.valid.eq(res.r_rdy),
            self.o.payload.eq(res.r_data),
            res.r_en.eq(self.o.ready),
        ]

        # --- credits --------------------------------------------------------------------------
        # results promised: dot products whose last group has entered and that are not yet taken
        owed = Signal(range(RESULT_FIFO_DEPTH + 1))
        entering = self.valid & self.last
        taken = self.o.valid & self.o.ready
        m.d.sync += owed.eq(owed + entering - taken)
        m.d.comb += self.credit.eq(owed + entering < RESULT_FIFO_DEPTH)
        return m
