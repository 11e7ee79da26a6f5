"""Causal conv unit: Mamba's depthwise causal conv1d with its rolling state
(``golden.ssm.causal_conv``), ``W`` channels a beat, the last ``K - 1`` inputs of every channel
kept on chip.

A token's row of ``C`` int8 channels arrives as ``C / W`` beats, each with its channels' taps,
bias and requantization multipliers (streamed with the weights). For every channel::

    acc = sum_j win[j] * w[j]        win = (the K - 1 held inputs, oldest first; x)
    y   = requantize(acc, bias, mult, shift)          golden.int8.requantize, hw.epilogue

and the held inputs become ``(win[1:], x)``. The history memory holds ``words`` beats of
``(K - 1) * W`` bytes; a beat's history is read when it enters and written back as it passes
to the requantization (a read in that cycle sees the write), so the next token's row may follow
at once, at any length. ``zero`` reads the history as zeros (a sequence's first token).

Throughput: one beat a cycle. Latency: one stage plus :class:`~.epilogue.Epilogue`'s four, one
epilogue a lane.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .epilogue import Epilogue

__all__ = ["CausalConvUnit", "conv_beat_layout"]


def conv_beat_layout(lanes: int, taps: int, words: int) -> data.StructLayout:
    """One beat: its place in the row, ``lanes`` inputs with their taps (oldest first, the
    last on the current token), biases and u16 multipliers, and ``zero``."""
    return data.StructLayout({
        "addr": unsigned(max(1, (words - 1).bit_length())),
        "x": data.ArrayLayout(signed(8), lanes),
        "w": data.ArrayLayout(data.ArrayLayout(signed(8), taps), lanes),
        "bias": data.ArrayLayout(signed(32), lanes),
        "mult": data.ArrayLayout(unsigned(16), lanes),
        "zero": 1,
    })


class CausalConvUnit(wiring.Component):
    """The causal depthwise conv of a token, one beat of ``lanes`` channels a cycle (module
    docstring).

    Parameters
    ----------
    lanes : int
        ``W``, channels a beat.
    taps : int
        ``K`` = ``d_conv`` (at least 2).
    words : int
        Beats of history held: ``d_inner / W`` of the largest layer served.

    Attributes
    ----------
    i : stream of :func:`conv_beat_layout`
    shift : in, the layer's requantization shift (constant while its rows are inside)
    o : stream of ``lanes`` signed bytes, in order
    """

    def __init__(self, lanes: int, taps: int, words: int, uram: bool = False):
        if taps < 2:
            raise ValueError(f"a causal conv of {taps} taps holds no history")
        self.lanes, self.taps, self.words, self.uram = lanes, taps, words, uram
        super().__init__({
            "i": In(stream.Signature(conv_beat_layout(lanes, taps, words))),
            "shift": In(6),
            "o": Out(stream.Signature(data.ArrayLayout(signed(8), lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        W, K = self.lanes, self.taps
        hist_shape = data.ArrayLayout(data.ArrayLayout(signed(8), K - 1), W)
        m.submodules.hist = hist = memory.Memory(
            shape=hist_shape, depth=self.words, init=[],
            attrs={"ram_style": "ultra"} if self.uram else None)
        wr = hist.write_port()
        rd = hist.read_port(transparent_for=(wr,))

        epis = [Epilogue() for _ in range(W)]
        for j, e in enumerate(epis):
            m.submodules[f"epi{j}"] = e
        # S1: the beat and its history; moves on when the epilogues take it
        v1 = Signal()
        p1 = Signal(self.i.payload.shape())
        take = epis[0].i.ready
        m.d.comb += [self.i.ready.eq(~v1 | take), rd.en.eq(self.i.ready),
                     rd.addr.eq(self.i.payload.addr)]
        with m.If(self.i.ready):
            m.d.sync += [v1.eq(self.i.valid), p1.eq(self.i.payload)]

        for j, e in enumerate(epis):
            held = [Mux(p1.zero, 0, rd.data[j][t]) for t in range(K - 1)]
            win = [*held, p1.x[j]]
            acc = Signal(signed(8 + 8 + K.bit_length()), name=f"acc{j}")
            m.d.comb += acc.eq(sum(win[t] * p1.w[j][t] for t in range(K)))
            m.d.comb += [wr.data[j][t].eq(win[t + 1]) for t in range(K - 1)]
            m.d.comb += [e.i.valid.eq(v1), e.i.payload.acc.eq(acc),
                         e.i.payload.bias.eq(p1.bias[j]), e.i.payload.mult.eq(p1.mult[j]),
                         e.i.payload.shift.eq(self.shift),
                         e.o.ready.eq(self.o.ready), self.o.payload[j].eq(e.o.payload.value)]
        m.d.comb += [wr.en.eq(v1 & take), wr.addr.eq(p1.addr), self.o.valid.eq(epis[0].o.valid)]
        return m
