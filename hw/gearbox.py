"""Byte-stream width converter (super-beat <-> activation word / weight row / instruction)."""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Gearbox"]


class Gearbox(wiring.Component):
    """Convert a stream of ``in_bytes``-wide words into ``out_bytes``-wide words.

    Little-endian in both directions: when widening, the first input word lands in the low
    bytes; when narrowing, the low bytes leave first. One width must divide the other.

    Widening by ``k`` takes ``k`` input beats per output beat, narrowing by ``k`` gives ``k``
    output beats per input beat; both sustain the narrow side's full rate (no bubble at word
    boundaries).

    Parameters
    ----------
    in_bytes, out_bytes : int
        Payload widths in bytes.

    Attributes
    ----------
    i : stream of ``8 * in_bytes`` bits
    o : stream of ``8 * out_bytes`` bits
    """

    def __init__(self, in_bytes: int, out_bytes: int):
        if in_bytes % out_bytes and out_bytes % in_bytes:
            raise ValueError(
                f"gearbox widths {in_bytes} and {out_bytes}: one must divide the other")
        self.in_bytes, self.out_bytes = in_bytes, out_bytes
        super().__init__({
            "i": In(stream.Signature(8 * in_bytes)),
            "o": Out(stream.Signature(8 * out_bytes)),
        })

    def elaborate(self, platform):
        m = Module()
        ib, ob = self.in_bytes, self.out_bytes
        if ib == ob:
            wiring.connect(m, wiring.flipped(self.i), wiring.flipped(self.o))
            return m
        if ob > ib:
            k = ob // ib
            # shift register: new words enter at the top, so after k words the first is lowest
            buf = Signal(8 * ob)
            cnt = Signal(range(k + 1))
            full = Signal()
            m.d.comb += [
                self.o.valid.eq(full),
                self.o.payload.eq(buf),
                self.i.ready.eq(~full | self.o.ready),
            ]
            with m.If(self.o.valid & self.o.ready):
                m.d.sync += full.eq(0)
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += buf.eq(Cat(buf[8 * ib:], self.i.payload))
                with m.If(cnt == k - 1):
                    m.d.sync += [cnt.eq(0), full.eq(1)]
                with m.Else():
                    m.d.sync += cnt.eq(cnt + 1)
        else:
            k = ib // ob
            buf = Signal(8 * ib)
            cnt = Signal(range(k))
            have = Signal()
            last = cnt == k - 1
            m.d.comb += [
                self.o.valid.eq(have),
                self.o.payload.eq(buf[:8 * ob]),
                self.i.ready.eq(~have | (self.o.ready & last)),
            ]
            with m.If(self.o.valid & self.o.ready):
                m.d.sync += [buf.eq(buf >> (8 * ob)), cnt.eq(cnt + 1)]
                with m.If(last):
                    m.d.sync += [have.eq(0), cnt.eq(0)]
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += [buf.eq(self.i.payload), have.eq(1), cnt.eq(0)]
        return m
