"""A systolic column of DSP48E2 slices computing int8 dot products (one k-group per cycle)."""

from __future__ import annotations

from amaranth import Module, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .dsp48e2 import P_BITS, DSP48E2Slice

__all__ = ["DSPChain"]


class DSPChain(wiring.Component):
    """``L`` DSP48E2 slices cascaded PCOUT -> PCIN, the last one accumulating over k-groups.

    Every cycle one k-group ``(x[0..L-1], w[0..L-1])`` enters, **already skewed**: lane ``i``
    of a group arrives ``i`` cycles after lane 0, so slice ``i`` multiplies its pair exactly
    when slice ``i-1``'s partial sum of the same group arrives on PCIN (no adder tree, only the
    dedicated cascade). The skew is not made here with ``i`` fabric registers per lane (that was
    ~15 kbit of flops at P = L = 16): the weight ring and the activation buffer read lane ``i``
    of their per-lane memories with the address delayed by ``i`` cycles, as DSP columns fed by
    per-column BRAMs do (see :mod:`.buffers`).

    The last slice adds its own P (W-mux) unless ``clear`` is high; ``clear`` travels with lane
    ``L-1`` (it marks the group whose lane ``L-1`` enters now as the first of a dot product). A
    dot product whose last group's lane ``L-1`` entered at cycle ``c`` is in ``acc`` after
    AREG + MREG + PREG, i.e. from cycle ``c + 3`` until that slice's next update. Bubbles must
    enter with ``x = 0`` (their products are then 0 and the running sum is unchanged).

    There is no clock enable: the matrix engine never stalls mid-flight.

    Parameters
    ----------
    chain_len : int
        L, slices in the chain (also the k-group width).

    Attributes
    ----------
    x, w : in, ``L`` signed bytes, skewed (lane ``i`` is ``i`` cycles late)
    clear : in, with lane ``L-1``: start a new dot product
    acc : out, signed 48, PREG of the last slice
    """

    def __init__(self, chain_len: int):
        self.L = chain_len
        lanes = data.ArrayLayout(signed(8), chain_len)
        super().__init__({
            "x": In(lanes), "w": In(lanes),
            "clear": In(1),
            "acc": Out(signed(P_BITS)),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.L
        prev = None
        for i in range(L):
            s = DSP48E2Slice(cascade=i > 0, clock_enable=False, accumulator=i == L - 1)
            m.submodules[f"dsp{i}"] = s
            m.d.comb += [s.a.eq(self.x[i]), s.b.eq(self.w[i])]
            if prev is not None:
                m.d.comb += s.pcin.eq(prev.pcout)
            if i == L - 1:
                # only the last slice accumulates (W = P); the others pass product + PCIN on
                m.d.comb += s.accumulate.eq(~self.clear)
            prev = s
        m.d.comb += self.acc.eq(prev.p)
        return m
