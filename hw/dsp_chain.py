"""A systolic column of DSP48E2 slices computing int8 dot products (one k-group per cycle)."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .dsp48e2 import P_BITS, DSP48E2Slice

__all__ = ["DSPChain"]


class DSPChain(wiring.Component):
    """``L`` DSP48E2 slices cascaded PCOUT -> PCIN, the last one accumulating over k-groups.

    Every cycle one k-group ``(x[0..L-1], w[0..L-1])`` enters. Lane ``i`` is delayed by ``i``
    input skew registers, so slice ``i`` multiplies its pair exactly when slice ``i-1``'s partial
    sum of the same k-group arrives on PCIN (the way real DSP columns are used: no adder tree,
    only the dedicated cascade). The last slice adds its own P (W-mux) unless the k-group is the
    ``first`` of a dot product, so a dot product over any number of consecutive k-groups ends in
    its PREG; the group flagged ``last`` makes ``acc_valid`` high for one (enabled) cycle, and
    the next dot product can follow without a bubble.

    Latency: ``L - 1`` skew + AREG + MREG + PREG = ``L + 2`` enabled cycles from the last
    k-group to ``acc_valid``.

    Parameters
    ----------
    chain_len : int
        L, slices in the chain (also the k-group width).

    Attributes
    ----------
    x, w : in, ``L`` signed bytes
        Activation and weight lanes of the k-group.
    valid, first, last : in
        The k-group is real / starts a dot product / ends one. Invalid groups are fed as zeros,
        so bubbles inside a dot product do not change it.
    ce : in
        Clock enable of the whole chain (stall).
    acc : out, signed 48
        PREG of the last slice.
    acc_valid : out
        ``acc`` holds a finished dot product.
    """

    def __init__(self, chain_len: int):
        self.L = chain_len
        lanes = data.ArrayLayout(signed(8), chain_len)
        super().__init__({
            "x": In(lanes), "w": In(lanes),
            "valid": In(1), "first": In(1), "last": In(1),
            "ce": In(1),
            "acc": Out(signed(P_BITS)),
            "acc_valid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.L
        ce = self.ce
        slices = []
        for i in range(L):
            s = DSP48E2Slice(cascade=i > 0)
            m.submodules[f"dsp{i}"] = s
            m.d.comb += s.ce.eq(ce)
            slices.append(s)
            if i > 0:
                m.d.comb += s.pcin.eq(slices[i - 1].pcout)

        def delay(sig, n, name, keep_reset=False):
            """``n`` clock-enabled registers after ``sig``."""
            for k in range(n):
                # data skew needs no reset; the valid/flag delays keep theirs
                r = Signal.like(sig, name=f"{name}_d{k + 1}", reset_less=not keep_reset)
                with m.If(ce):
                    m.d.sync += r.eq(sig)
                sig = r
            return sig

        for i in range(L):
            # a bubble enters as x = 0, so its products are 0 and the running sum is unchanged
            x = Signal(signed(8), name=f"x{i}")
            m.d.comb += x.eq(Mux(self.valid, self.x[i], 0))
            m.d.comb += [
                slices[i].a.eq(delay(x, i, f"x{i}")),
                slices[i].b.eq(delay(self.w[i], i, f"w{i}")),
            ]
        v = delay(self.valid, L - 1, "valid", True)
        first = delay(self.first, L - 1, "first")
        last = delay(self.last, L - 1, "last")
        # clear (W = 0) only on a real first group; a bubble keeps the partial sum
        m.d.comb += slices[L - 1].accumulate.eq(~(v & first))
        for i in range(L - 1):
            m.d.comb += slices[i].accumulate.eq(0)
        # AREG, MREG, PREG of the last slice
        m.d.comb += self.acc_valid.eq(delay(v & last, 3, "done", True))
        m.d.comb += self.acc.eq(slices[L - 1].p)
        return m
