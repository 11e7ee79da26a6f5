"""Matrix engine (MPE): P DSP chains sharing one broadcast activation word."""

from __future__ import annotations

from amaranth import Module, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .dsp_chain import DSPChain

__all__ = ["MatrixEngine", "kgroup_layout"]


def kgroup_layout(chains: int, chain_len: int) -> data.StructLayout:
    """One k-group: activation word ``x`` (L int8), weight row ``w`` (P x L int8), flags."""
    lanes = data.ArrayLayout(signed(8), chain_len)
    return data.StructLayout({
        "x": lanes,
        "w": data.ArrayLayout(lanes, chains),
        "first": 1,
        "last": 1,
    })


class MatrixEngine(wiring.Component):
    """``P`` :class:`DSPChain` s of length ``L``: one k-group (P*L MACs) per cycle.

    Chain ``p`` gets the same activation word and weight lanes ``w[p]``, so a dot product over
    ``k_words`` k-groups yields ``P`` int32 accumulators (output channels) at once.

    Back-pressure uses one global clock enable: when a finished result is not taken
    (``o.valid & ~o.ready``) every register of every chain holds, and ``i.ready`` is low. The
    consumer (a capture bank) takes a result in one cycle, so with ``k_words >= 2`` and a free
    bank the engine never stalls.

    Parameters
    ----------
    chains : int
        P.
    chain_len : int
        L.

    Attributes
    ----------
    i : stream of :func:`kgroup_layout`
    o : stream of ``P`` signed 32-bit accumulators (low 32 bits of the 48-bit PREG; the compiler
        guarantees int32 sums, see ``golden.int8.matmul``).
    """

    def __init__(self, chains: int, chain_len: int):
        self.P, self.L = chains, chain_len
        super().__init__({
            "i": In(stream.Signature(kgroup_layout(chains, chain_len))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(32), chains))),
        })

    def elaborate(self, platform):
        m = Module()
        ce = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(ce)
        for p in range(self.P):
            ch = DSPChain(self.L)
            m.submodules[f"chain{p}"] = ch
            m.d.comb += [
                ch.ce.eq(ce),
                ch.x.eq(self.i.payload.x),
                ch.w.eq(self.i.payload.w[p]),
                ch.valid.eq(self.i.valid),
                ch.first.eq(self.i.payload.first),
                ch.last.eq(self.i.payload.last),
                self.o.payload[p].eq(ch.acc[:32]),
            ]
            if p == 0:
                # all chains see the same flags, so chain 0 speaks for the engine
                m.d.comb += self.o.valid.eq(ch.acc_valid)
        return m
