"""Behavioural model of the DSP48E2 subset the matrix engine uses.

Modelled: ``A`` (27-bit signed) x ``B`` (18-bit signed) with AREG = BREG = 1, MREG = 1, PREG = 1;
the post-adder ``P = M + Z + W`` with ``Z`` = PCIN (cascade input, a static choice per slice,
OPMODE[6:4] = 001) and ``W`` = P (accumulate, OPMODE[8:7] = 10) or 0 (clear); one clock enable
for every register (CEA/CEB/CEM/CEP tied together), or none: the matrix engine never stalls
mid-flight (it is throttled at its input), so its slices have their CE pins tied high and no
enable logic at all.

The matrix engine uses every slice with ``accumulator=False`` and ``clock_enable=False``:
its slices only multiply and pass the cascade on; sums over k-groups are kept in fabric by the
reduction nodes (:mod:`.dsp_chain`), because the packed multiply's low field would overflow its
18 bits in the 48-bit P after a few k-groups. The W = P option stays for a single-slice MAC and
is covered by the model test.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["DSP48E2Slice", "DSP48E2Model"]

A_BITS, B_BITS, P_BITS = 27, 18, 48


class DSP48E2Slice(wiring.Component):
    """One DSP48E2 in MAC configuration: ``P <= A*B (+ PCIN) (+ P)``, three register stages.

    Parameters
    ----------
    cascade : bool
        Add ``pcin`` in the post-adder (Z-mux = PCIN). False for the first slice of a chain.
    accumulator : bool
        Give the slice an ``accumulate`` port (dynamic W-mux: P or 0). False ties the W-mux to
        0 (static OPMODE), as in every slice of the matrix engine's chains: no OPMODE register
        and no feedback mux.
    clock_enable : bool
        Give the slice a ``ce`` port. False ties CE high: the registers load every cycle, which
        keeps 256 slices x 5 registers free of enable muxes (Verilator evaluates each one).

    Attributes
    ----------
    a, b : Signal, in
        Multiplier operands, sampled into AREG/BREG when ``ce``.
    accumulate : Signal, in
        W-mux select (1: add P, 0: clear), sampled together with ``a``/``b`` and delayed with
        them so that it acts on the product of the same operands (OPMODEREG = 1 after one
        fabric register).
    pcin : Signal, in
        Cascade input, used in the same cycle as M (it comes from the previous slice's PREG).
    ce : Signal, in (only with ``clock_enable``)
        Clock enable of every register.
    p, pcout : Signal, out
        PREG (``pcout`` is the same value, routed to the next slice's ``pcin``).
    """

    def __init__(self, cascade: bool = True, clock_enable: bool = True, accumulator: bool = True):
        self.cascade = cascade
        self.clock_enable = clock_enable
        self.accumulator = accumulator
        ports = {
            "a": In(signed(A_BITS)),
            "b": In(signed(B_BITS)),
            "pcin": In(signed(P_BITS)),
            "p": Out(signed(P_BITS)),
            "pcout": Out(signed(P_BITS)),
        }
        if accumulator:
            ports["accumulate"] = In(1)
        if clock_enable:
            ports["ce"] = In(1)
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        # Datapath registers have no reset (as in the primitive with RSTA/RSTB/RSTM unused):
        # fewer terms per register keep Verilator's per-cycle work small (256 slices at P=L=16).
        # PREG too (RSTP unused): nothing reads P before a dot product clears it.
        a_r = Signal(signed(A_BITS), reset_less=True)
        b_r = Signal(signed(B_BITS), reset_less=True)
        m_r = Signal(signed(A_BITS + B_BITS), reset_less=True)
        p_r = Signal(signed(P_BITS), reset_less=True)
        z = self.pcin if self.cascade else 0
        updates = [a_r.eq(self.a), b_r.eq(self.b), m_r.eq(a_r * b_r)]
        if self.accumulator:
            acc_r = Signal(reset_less=True)
            acc_m = Signal(reset_less=True)
            updates += [acc_r.eq(self.accumulate), acc_m.eq(acc_r)]
            w = Mux(acc_m, p_r, 0)
        else:
            w = 0
        # 48-bit wrap-around like the primitive's ALU (a dot product never gets near it)
        updates.append(p_r.eq(m_r + z + w))
        if self.clock_enable:
            with m.If(self.ce):
                m.d.sync += updates
        else:
            m.d.sync += updates
        m.d.comb += [self.p.eq(p_r), self.pcout.eq(p_r)]
        return m


class DSP48E2Model:
    """Cycle model of :class:`DSP48E2Slice` in plain Python (for tests)."""

    def __init__(self, cascade: bool = True):
        self.cascade = cascade
        self.a = self.b = self.acc = self.m = self.acc_m = self.p = 0

    @staticmethod
    def _wrap(v: int) -> int:
        v &= (1 << P_BITS) - 1
        return v - (1 << P_BITS) if v >> (P_BITS - 1) else v

    def step(self, a: int, b: int, accumulate: int, pcin: int, ce: int = 1) -> int:
        """Advance one clock edge; return P after it."""
        if ce:
            z = pcin if self.cascade else 0
            w = self.p if self.acc_m else 0
            self.p = self._wrap(self.m + z + w)
            self.m, self.acc_m = self.a * self.b, self.acc
            self.a, self.b, self.acc = a, b, accumulate
        return self.p
