"""Requantization epilogue: int32 accumulator (+ residual) to int8, one element per cycle.

Computes exactly :func:`hwflow.golden.int8.requantize` for one element::

    v = (acc + bias) * mult + res * res_mult
    v = (v + 2**(shift-1)) >> shift        # only when shift > 0; arithmetic shift
    v = max(v, 0) if relu
    out = clip(v, -128, 127)

The same unit serves VADD (``acc`` = sign-extended ``a``, ``bias`` = 0, ``mult`` = a_mult,
``res`` = b, ``res_mult`` = b_mult), which is :func:`golden.int8.residual_add`.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Epilogue", "epilogue_in_layout", "epilogue_out_layout"]

# (int32 + int32) is 33 bits signed; times an unsigned 16-bit multiplier gives 33 + 17 = 50 bits;
# int8 * u16 is 25 bits; their sum plus the rounding term (< 2**46) fits 52 bits. Golden uses
# int64, which never overflows for these ranges, so exact 52-bit arithmetic is bit-identical.
_SUM_BITS = 33
_PROD_BITS = 50
_RES_BITS = 25
_V_BITS = 52


def epilogue_in_layout(tag_bits: int) -> data.StructLayout:
    """Payload of the epilogue input stream (one element, with its own parameters)."""
    return data.StructLayout({
        "acc": signed(32),
        "bias": signed(32),
        "mult": unsigned(16),
        "res": signed(8),
        "res_mult": unsigned(16),
        "shift": unsigned(6),
        "relu": unsigned(1),
        "zero": unsigned(1),     # force the output to 0 (row padding bytes)
        "tag": unsigned(max(tag_bits, 1)),
    })


def epilogue_out_layout(tag_bits: int) -> data.StructLayout:
    """Payload of the epilogue output stream: the int8 result and the untouched tag."""
    return data.StructLayout({"value": signed(8), "tag": unsigned(max(tag_bits, 1))})


class Epilogue(wiring.Component):
    """Pipelined requantization unit (4 stages, one element per cycle).

    Parameters
    ----------
    tag_bits : int
        Width of an opaque tag carried alongside each element (the caller's write address).

    Attributes
    ----------
    i : stream of :func:`epilogue_in_layout`
        One element with its per-element parameters.
    o : stream of :func:`epilogue_out_layout`
        The int8 result, in input order, 4 cycles after acceptance when never stalled.
    busy : Signal, out
        An element is inside the pipeline (used by the controller to know when writes ended).
    """

    LATENCY = 4

    def __init__(self, tag_bits: int = 1):
        self.tag_bits = tag_bits
        super().__init__({
            "i": In(stream.Signature(epilogue_in_layout(tag_bits))),
            "o": Out(stream.Signature(epilogue_out_layout(tag_bits))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        tb = max(self.tag_bits, 1)

        # Whole-pipeline stall: everything moves when the output register is free or drained.
        # Simple and enough, since the consumer (buffer write port) is always ready.
        en = Signal()
        m.d.comb += en.eq(~self.o.valid | self.o.ready)
        m.d.comb += self.i.ready.eq(en)

        # stage 0: bias add; every other input only registered. The residual byte comes
        # straight from an activation-buffer read: a block-RAM read, a mux and a multiply in one
        # cycle was the ECP5 critical path (5.8 ns DP16KD clock-to-out + 3.9 ns MULT18X18D +
        # routing = 17 ns, 58 MHz), so both products start from registers (stage 1).
        v0 = Signal()
        p = Signal.like(self.i.payload)
        s0 = Signal(signed(_SUM_BITS))
        # stage 1: main product, residual product, rounding constant
        v1 = Signal()
        m1 = Signal(signed(_PROD_BITS))
        r1 = Signal(signed(_RES_BITS))
        rnd1 = Signal(unsigned(47))
        shift1 = Signal(6)
        relu1 = Signal()
        zero1 = Signal()
        tag1 = Signal(tb)
        # stage 2: sum
        v3 = Signal()
        s3 = Signal(signed(_V_BITS))
        shift3 = Signal(6)
        relu3 = Signal()
        zero3 = Signal()
        tag3 = Signal(tb)

        with m.If(en):
            m.d.sync += [
                v0.eq(self.i.valid),
                p.eq(self.i.payload),
                s0.eq(self.i.payload.acc + self.i.payload.bias),

                v1.eq(v0),
                m1.eq(s0 * p.mult),
                r1.eq(p.res * p.res_mult),
                # 2**(shift-1) for shift > 0, else 0 (golden adds no rounding term at shift 0)
                rnd1.eq(Mux(p.shift == 0, 0, (Const(1, 47) << p.shift) >> 1)),
                shift1.eq(p.shift), relu1.eq(p.relu), zero1.eq(p.zero), tag1.eq(p.tag),

                v3.eq(v1),
                s3.eq(m1 + r1 + rnd1),
                shift3.eq(shift1), relu3.eq(relu1), zero3.eq(zero1), tag3.eq(tag1),
            ]

        # stage 3: arithmetic shift, ReLU, saturation (into the output register)
        sh = Signal(signed(_V_BITS))
        m.d.comb += sh.eq(s3 >> shift3)
        sat = Signal(signed(8))
        with m.If(zero3 | (relu3 & (sh < 0))):
            m.d.comb += sat.eq(0)
        with m.Elif(sh > 127):
            m.d.comb += sat.eq(127)
        with m.Elif(sh < -128):
            m.d.comb += sat.eq(-128)
        with m.Else():
            m.d.comb += sat.eq(sh[:8])
        with m.If(en):
            m.d.sync += [
                self.o.valid.eq(v3),
                self.o.payload.value.eq(sat),
                self.o.payload.tag.eq(tag3),
            ]

        m.d.comb += self.busy.eq(v0 | v1 | v3 | self.o.valid)
        return m
