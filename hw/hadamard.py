"""Hadamard transform unit: the online Walsh-Hadamard transform of LightMamba's rotation-assisted
W4A4 (``golden.ssm.hadamard``), streamed ``W`` channels a beat.

A row of ``n`` int8 channels arrives as ``n / W`` beats and leaves as ``n / W`` beats of the same
channels transformed in blocks of ``block = 2**lgb`` channels: ``log2(block)`` butterfly stages,
each pairing the channels ``d`` apart (``d`` a power of two below the block) into ``(a + b, a -
b)``. The stages commute (each acts on one bit of the channel index), so they run in any order:

* **in-beat stages** (``d < W``): the butterflies of one beat, combinational, one register;
* **cross-beat stages** (``d = D * W``, ``D = 1, 2, 4, ...`` beats): single-path delay
  feedback (the streaming FFT's SDF butterfly): the first ``D`` beats of a group of ``2 D`` are
  held in a ``D``-beat buffer; as each of the next ``D`` beats arrives, the stage sends the sum
  and keeps the difference in its place; the differences leave next, one a cycle, while the
  next group's first half takes their places (or on their own when no beat comes: a row's end
  needs no flush). A stage keeps every channel in its place, so the output is in the input's
  order.

Stages the block does not reach pass their beats through (``lgb`` is constant while a row is
inside). Every value is exact: ``|y| <= block * 128`` fits the output's ``8 + log2(max_block)``
bits (18 at Mamba-2.7B's block of 1024), which the requantization epilogue takes as its
accumulator (``golden.int8.requantize(..., bits=4)``).

Throughput: one beat a cycle in and out while both sides flow, rows back to back; latency
``1 + sum(D)`` cycles (``max_block / W`` at the largest block: 64 at W = 16, block 1024).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["HadamardUnit", "HadamardStage", "beat_layout", "check_shape"]


def beat_layout(lanes: int, bits: int) -> data.StructLayout:
    """A beat: ``lanes`` signed channels and the row's ``last`` flag."""
    return data.StructLayout({"x": data.ArrayLayout(signed(bits), lanes), "last": 1})


class HadamardStage(wiring.Component):
    """One cross-beat butterfly stage at a distance of ``D`` beats (module docstring).

    Parameters
    ----------
    lanes : int
        Channels a beat (``W``).
    bits : int
        Width of every value (the unit's output width).
    D : int
        The distance in beats (a power of two).

    Attributes
    ----------
    i, o : streams of :func:`beat_layout`
    enable : in, the block reaches this stage (``2 * D * W <= block``); else ``o`` is ``i``
    """

    def __init__(self, lanes: int, bits: int, D: int):
        self.lanes, self.bits, self.D = lanes, bits, D
        beat = beat_layout(lanes, bits)
        super().__init__({"i": In(stream.Signature(beat)), "o": Out(stream.Signature(beat)),
                          "enable": In(1)})

    def elaborate(self, platform):
        m = Module()
        D, W = self.D, self.lanes
        lane = signed(self.bits)
        m.submodules.buf = buf = memory.Memory(shape=data.ArrayLayout(lane, W), depth=D,
                                               init=[])
        rd = buf.read_port(domain="comb")      # reads the old word of a place written now
        wr = buf.write_port()
        cnt = Signal(range(2 * D))        # the input beat's place in its group of 2 D
        pend = Signal()                   # the buffer holds the last group's differences
        optr = Signal(range(D))           # the next of them to leave
        plast = Signal()                  # that group ended a row
        second = cnt >= D
        x = self.i.payload.x
        sums = Signal.like(x)
        diffs = Signal.like(x)
        for j in range(W):
            m.d.comb += [sums[j].eq(rd.data[j] + x[j]), diffs[j].eq(rd.data[j] - x[j])]
        m.d.comb += [rd.addr.eq(Mux(second, cnt - D, optr)),
                     wr.addr.eq(Mux(second, cnt - D, cnt))]

        with m.If(~self.enable):
            m.d.comb += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload),
                         self.i.ready.eq(self.o.ready)]
        with m.Elif(~second):
            # first half: the last group's differences leave, whether beats arrive or not; a
            # beat takes a place whose difference has left (or leaves now)
            with m.If(pend):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.x.eq(rd.data),
                             self.o.payload.last.eq(plast & (optr == D - 1)),
                             self.i.ready.eq((cnt < optr) | ((cnt == optr) & self.o.ready))]
                with m.If(self.o.ready):
                    m.d.sync += optr.eq(optr + 1)
                    with m.If(optr == D - 1):
                        m.d.sync += [optr.eq(0), pend.eq(0)]
            with m.Else():
                m.d.comb += self.i.ready.eq(1)
            with m.If(self.i.valid & self.i.ready):
                m.d.comb += [wr.data.eq(x), wr.en.eq(1)]
                m.d.sync += cnt.eq(cnt + 1)
        with m.Else():
            # second half (every difference of the last group has left): the sum leaves, the
            # difference takes the first beat's place
            m.d.comb += [self.o.valid.eq(self.i.valid), self.o.payload.x.eq(sums),
                         self.i.ready.eq(self.o.ready)]
            with m.If(self.i.valid & self.i.ready):
                m.d.comb += [wr.data.eq(diffs), wr.en.eq(1)]
                m.d.sync += cnt.eq(cnt + 1)
                with m.If(cnt == 2 * D - 1):
                    m.d.sync += [cnt.eq(0), pend.eq(1), plast.eq(self.i.payload.last)]
        return m


def check_shape(lanes: int, max_block: int) -> None:
    """Raise ValueError unless ``lanes`` and ``max_block`` are powers of two,
    ``max_block >= lanes``."""
    if lanes & (lanes - 1) or max_block & (max_block - 1) or max_block < lanes:
        raise ValueError(f"lanes {lanes} and max_block {max_block}: powers of two, "
                         "max_block >= lanes")


class HadamardUnit(wiring.Component):
    """The streamed block Walsh-Hadamard transform (module docstring).

    Parameters
    ----------
    lanes : int
        ``W``, channels a beat (a power of two).
    max_block : int
        The largest block (a power of two, at least ``lanes``); the output is
        ``8 + log2(max_block)`` bits.

    Attributes
    ----------
    i : stream of :func:`beat_layout` ``(lanes, 8)``: int8 channels, ``last`` on a row's final beat
    o : stream of :func:`beat_layout` ``(lanes, 8 + log2(max_block))``
    lgb : in, ``log2(block)`` (at most ``log2(max_block)``), constant while a row is inside
    """

    def __init__(self, lanes: int, max_block: int):
        check_shape(lanes, max_block)
        self.lanes, self.max_block = lanes, max_block
        self.out_bits = 8 + (max_block.bit_length() - 1)
        super().__init__({
            "i": In(stream.Signature(beat_layout(lanes, 8))),
            "o": Out(stream.Signature(beat_layout(lanes, self.out_bits))),
            "lgb": In(range(max_block.bit_length())),
        })

    def elaborate(self, platform):
        m = Module()
        W, bits = self.lanes, self.out_bits
        block = Signal(range(2 * self.max_block))
        m.d.comb += block.eq(1 << self.lgb)

        # in-beat stages, combinational, then one register (a stream register: it moves when
        # the next stage takes its beat or it is empty)
        v = [self.i.payload.x[j].as_signed() for j in range(W)]
        d = 1
        while d < W:
            on = 2 * d <= block
            v = [Mux(on, v[j] + v[j + d] if not j & d else v[j - d] - v[j], v[j])
                 for j in range(W)]
            d *= 2
        reg = Signal(beat_layout(W, bits))
        reg_valid = Signal()
        reg_ready = Signal()
        m.d.comb += self.i.ready.eq(~reg_valid | reg_ready)
        with m.If(self.i.ready):
            m.d.sync += [reg_valid.eq(self.i.valid), reg.last.eq(self.i.payload.last)]
            m.d.sync += [reg.x[j].eq(v[j]) for j in range(W)]

        # cross-beat stages
        src_valid, src_ready, src = reg_valid, reg_ready, reg
        D = 1
        while D * W < self.max_block:
            st = HadamardStage(W, bits, D)
            m.submodules[f"stage_d{D}"] = st
            m.d.comb += [st.enable.eq(2 * D * W <= block), st.i.valid.eq(src_valid),
                         st.i.payload.eq(src), src_ready.eq(st.i.ready)]
            src_valid, src_ready, src = st.o.valid, st.o.ready, st.o.payload
            D *= 2
        m.d.comb += [self.o.valid.eq(src_valid), self.o.payload.eq(src),
                     src_ready.eq(self.o.ready)]
        return m

