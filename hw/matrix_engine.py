"""Matrix engine (MPE): P DSP chains sharing one broadcast activation word."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .dsp_chain import DSPChain

__all__ = ["MatrixEngine", "RESULT_FIFO_DEPTH"]

# Results the engine can hold: finished (in the FIFO) plus in flight (last group entered, result
# not yet out). The output sequencer drains one result per P (+ a few) cycles, so with
# k_words >= P the FIFO never holds more than 1-2; 4 also covers short dot products well enough
# (they are bound by the epilogue's one element per cycle anyway).
RESULT_FIFO_DEPTH = 4


class MatrixEngine(wiring.Component):
    """``P`` :class:`DSPChain` s of length ``L``: one k-group (P*L MACs) per cycle.

    Chain ``p`` gets the same activation word and weight lanes ``w[.][p]``, so a dot product
    over ``k_words`` k-groups yields ``P`` int32 accumulators (output channels) at once.

    Input (skewed, no back-pressure): every cycle a k-group or a bubble enters. ``valid``,
    ``first`` and ``last`` describe the group whose lane 0 is on ``x[0]`` / ``w[0]`` now; lane
    ``i`` of that group arrives ``i`` cycles later on ``x[i]`` / ``w[i]`` (the buffers produce
    this skew by reading lane ``i`` with a delayed address). The flags go through one shared
    delay line (L bits each), not one per chain.

    The chains have no clock enable: nothing stalls once a group is in. Back-pressure is applied
    at the input instead: ``credit`` is high while one more dot product may be finished, i.e.
    while results in flight plus results in the output FIFO are fewer than
    :data:`RESULT_FIFO_DEPTH`. The producer may send a group flagged ``last`` only in a cycle
    *after* one where it saw ``credit`` (it registers its flags; ``credit`` already counts a
    ``last`` group that is entering this cycle).

    Latency: a dot product whose last group's lane 0 entered at cycle ``c`` is written to the
    FIFO at ``c + L + 2`` (skew ``L-1``, AREG, MREG, PREG) and is on ``o`` one or two cycles
    later.

    Parameters
    ----------
    chains : int
        P.
    chain_len : int
        L.

    Attributes
    ----------
    x : in, ``L`` signed bytes (skewed); bubbles may carry anything (zeroed here)
    w : in, ``L`` lanes of ``P`` signed bytes (skewed; lane-major: ``w[i][p]`` is chain p's
        lane i)
    valid, first, last : in, flags of the group whose lane 0 enters now
    credit : out
    o : stream of ``P`` signed 32-bit accumulators (low 32 bits of the 48-bit PREG; the compiler
        guarantees int32 sums, see ``golden.int8.matmul``).
    """

    def __init__(self, chains: int, chain_len: int):
        self.P, self.L = chains, chain_len
        super().__init__({
            "x": In(data.ArrayLayout(signed(8), chain_len)),
            "w": In(data.ArrayLayout(data.ArrayLayout(signed(8), chains), chain_len)),
            "valid": In(1), "first": In(1), "last": In(1),
            "credit": Out(1),
            "o": Out(stream.Signature(data.ArrayLayout(signed(32), chains))),
        })

    def elaborate(self, platform):
        m = Module()
        P, L = self.P, self.L

        # --- shared flag delay lines (one shift register each) --------------------------------
        # vline[i-1] = valid delayed i cycles: lane i of a bubble is zeroed with it
        if L > 1:
            vline = Signal(L - 1)
            fline = Signal(L - 1, reset_less=True)
            lline = Signal(L - 1)
            m.d.sync += [
                vline.eq(Cat(self.valid, vline[:-1])),
                fline.eq(Cat(self.first, fline[:-1])),
                lline.eq(Cat(self.last, lline[:-1])),
            ]
            vd = [self.valid] + [vline[i] for i in range(L - 1)]
            v_last, f_last, l_last = vline[-1], fline[-1], lline[-1]
        else:
            vd = [self.valid]
            v_last, f_last, l_last = self.valid, self.first, self.last
        # a bubble enters as x = 0, so its products are 0 and the running sum is unchanged
        # (x is broadcast, so this is L byte muxes for the whole engine)
        x = Signal(data.ArrayLayout(signed(8), L))
        for i in range(L):
            m.d.comb += x[i].eq(Mux(vd[i], self.x[i], 0))
        # clear (W = 0) only on a real first group; a bubble keeps the partial sum
        clear = Signal()
        m.d.comb += clear.eq(v_last & f_last)
        # AREG, MREG, PREG of the last slice
        done = Signal(3)
        m.d.sync += done.eq(Cat(v_last & l_last, done[:-1]))

        # --- chains -------------------------------------------------------------------------------
        m.submodules.results = res = fifo.SyncFIFOBuffered(width=32 * P, depth=RESULT_FIFO_DEPTH)
        for p in range(P):
            ch = DSPChain(L)
            m.submodules[f"chain{p}"] = ch
            m.d.comb += [
                ch.x.eq(x),
                ch.clear.eq(clear),
                res.w_data[32 * p:32 * (p + 1)].eq(ch.acc[:32]),
            ]
            for i in range(L):
                m.d.comb += ch.w[i].eq(self.w[i][p])
        m.d.comb += [
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
