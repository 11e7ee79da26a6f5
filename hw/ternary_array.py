"""The plain ternary MAC array: the baseline the table-lookup engine (:mod:`.tlmm`) is measured
against (``benchmarks/tlmm_synth.py``).

Every output channel adds, subtracts or skips every activation of the cycle (an add/subtract
tree per output, no multipliers and no tables): ``outputs * lanes`` ternary MACs per cycle. The
TLMM engine does ``T * Q * G`` per cycle; an array with ``lanes = T * G`` and ``outputs = Q``
has the same throughput.
"""

from __future__ import annotations

from amaranth import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from .arith import tree_sum

__all__ = ["TernaryAddArray", "TableLookupDatapath", "CODE_NEG", "CODE_ZERO", "CODE_POS"]

#: 2-bit weight codes: ``t + 1``, the digit of ``golden.ternary.encode_groups`` (a group of
#: one weight); code 3 is unused and counts as 0.
CODE_NEG, CODE_ZERO, CODE_POS = 0, 1, 2


class TernaryAddArray(wiring.Component):
    """``outputs`` int32 accumulators, each adding ``sum_i t[o, i] * x[i]`` every valid cycle.

    **Datapath.** Per output and lane the term is ``x``, ``-x`` or 0 (a 9-bit signed mux), and
    the ``lanes`` terms of an output go through a balanced adder tree (``9 + ceil(log2(lanes))``
    bits). The tree sum is registered (stage 1) and added to the accumulator (stage 2). Yosys
    maps the negation into the mux LUTs and the first adder level: measured at 12 x 4 it used
    1244 LUTs, against 1290 for terms ``x ^ sign`` with the ``+1`` corrections added as a
    popcount operand (the usual trick to avoid negation adders).

    **Timing.** Inputs sampled at cycle ``c`` with ``valid`` are in ``acc`` from cycle ``c +
    LATENCY``. ``first`` (with ``valid``) starts a new sum: the accumulator takes that cycle's
    tree sum instead of adding it. ``last`` (with ``valid``) marks the final cycle of a sum:
    ``done`` is high in the cycle ``acc`` holds the finished sum (``LATENCY`` cycles later).
    Cycles without ``valid`` leave the accumulators alone.

    Parameters
    ----------
    lanes : int
        Activations per cycle (shared by all outputs).
    outputs : int
        Output channels (accumulators).

    Attributes
    ----------
    x : In, array of ``lanes`` signed(8)
        The activations.
    w : In, array of ``outputs`` arrays of ``lanes`` unsigned(2)
        Weight codes ``t + 1`` (:data:`CODE_NEG`, :data:`CODE_ZERO`, :data:`CODE_POS`);
        ``w[o][i]`` weighs ``x[i]`` for output ``o``.
    valid, first, last : In(1)
    acc : Out, array of ``outputs`` signed(32)
        The accumulators (wrap modulo 2**32).
    done : Out(1)
        ``acc`` holds a sum whose ``last`` cycle has arrived.
    """

    #: Cycles from the inputs to ``acc``.
    LATENCY = 2

    def __init__(self, lanes: int, outputs: int):
        if lanes < 1 or outputs < 1:
            raise ValueError(f"TernaryAddArray({lanes}, {outputs}): lanes and outputs must be >= 1")
        self.lanes, self.outputs = lanes, outputs
        super().__init__({
            "x": In(data.ArrayLayout(signed(8), lanes)),
            "w": In(data.ArrayLayout(data.ArrayLayout(unsigned(2), lanes), outputs)),
            "valid": In(1),
            "first": In(1),
            "last": In(1),
            "acc": Out(data.ArrayLayout(signed(32), outputs)),
            "done": Out(1),
        })

    @property
    def macs_per_cycle(self) -> int:
        """Ternary MACs per cycle: ``lanes * outputs``."""
        return self.lanes * self.outputs

    def elaborate(self, platform):
        m = Module()
        n = self.lanes
        sum_bits = 9 + (n - 1).bit_length()       # |sum| <= 128 * lanes
        s1_valid, s1_first, s1_last = Signal(), Signal(), Signal()
        m.d.sync += [s1_valid.eq(self.valid), s1_first.eq(self.first), s1_last.eq(self.last),
                     self.done.eq(s1_valid & s1_last)]
        for o in range(self.outputs):
            terms = []
            for i in range(n):
                code, x = self.w[o][i], self.x[i]
                terms.append(Mux(code == CODE_POS, x,
                                 Mux(code == CODE_NEG, -x, Const(0, signed(9)))))
            s1_sum = Signal(signed(sum_bits), name=f"s1_sum_{o}")
            m.d.sync += s1_sum.eq(tree_sum(terms))
            acc = self.acc[o]
            with m.If(s1_valid):
                m.d.sync += acc.eq(Mux(s1_first, s1_sum, (acc + s1_sum)[:32]))
        return m





class TableLookupDatapath(wiring.Component):
    """The bare table-lookup datapath of TeLLMe's scheme, for resource comparisons only (the
    engine that runs TMATMUL is :class:`hwflow.hw.tlmm.TernaryLookupMatmul`): ``T`` tables of
    the ``3**G`` signed sums of one activation group, ``Q`` lookups in each per cycle, a
    ``T``-input adder tree and an int32 accumulator per output: ``T * Q * G`` ternary MACs per
    cycle, the throughput of ``TernaryAddArray(T * G, Q)``.

    **Tables.** ``load`` (with ``x``) stores table ``t``'s entries ``golden.ternary.group_table(
    x[t])`` in registers (built by ``G`` levels of shared adders: level ``i`` makes
    ``e - x[i]``, ``e``, ``e + x[i]`` of the level below, ``2 * 3**(i-1)`` adders); the
    entries are ``8 + ceil(log2(G + 1))`` bits. With ``lutram=True`` the entries live in a
    ``3**G``-deep memory per table read asynchronously by ``Q`` ports (LUTRAM) and ``load``
    writes one entry per cycle for ``3**G`` cycles (``busy`` meanwhile), from ``x`` held in a
    register; with registers the table is ready the cycle after ``load``.

    **Lookups.** Sampled with ``valid``: ``idx[q][t]`` (``golden.ternary.encode_groups``
    digits) selects an entry of table ``t`` for output ``q``; the ``T`` entries are summed and
    registered (stage 1) and accumulated (stage 2, ``first`` clears), so ``acc`` holds the sum
    ``LATENCY`` cycles after the inputs, as in :class:`TernaryAddArray`.

    Parameters
    ----------
    G, T, Q : int
        Group size (2, 3 or 4), tables, lookups per table and cycle (outputs).
    lutram : bool
        Tables in asynchronous-read memories (LUTRAM) instead of registers.
    """

    LATENCY = 2

    def __init__(self, G: int, T: int, Q: int, lutram: bool = False):
        from .tlmm import GROUP_BITS

        if G not in GROUP_BITS or T < 1 or Q < 1:
            raise ValueError(f"TableLookupDatapath({G}, {T}, {Q}): G in {sorted(GROUP_BITS)}, "
                             f"T, Q >= 1")
        self.G, self.T, self.Q, self.lutram = G, T, Q, lutram
        self.entries = 3 ** G
        self.entry_bits = 8 + G.bit_length()        # |entry| <= 128 * G
        super().__init__({
            "x": In(data.ArrayLayout(data.ArrayLayout(signed(8), G), T)),
            "load": In(1),
            "busy": Out(1),
            "idx": In(data.ArrayLayout(data.ArrayLayout(unsigned(GROUP_BITS[G]), T), Q)),
            "valid": In(1),
            "first": In(1),
            "acc": Out(data.ArrayLayout(signed(32), Q)),
        })

    @property
    def macs_per_cycle(self) -> int:
        """Ternary MACs per cycle: ``T * Q * G``."""
        return self.T * self.Q * self.G

    def elaborate(self, platform):
        m = Module()
        G, T, Q, E, eb = self.G, self.T, self.Q, self.entries, self.entry_bits
        lookups = [[None] * T for _ in range(Q)]        # lookups[q][t]: the selected entry
        if not self.lutram:
            for t in range(T):
                vals = [Const(0, signed(eb))]
                for i in range(G):
                    a = self.x[t][i]
                    vals = [v - a for v in vals] + vals + [v + a for v in vals]
                table = Array(Signal(signed(eb), name=f"table_{t}_{e}") for e in range(E))
                with m.If(self.load):
                    m.d.sync += [table[e].eq(vals[e]) for e in range(E)]
                for q in range(Q):
                    lookups[q][t] = table[self.idx[q][t]]
        else:
            # sequential build: a ternary digit counter walks the entries, one write per cycle
            held = Signal.like(self.x)
            digits = [Signal(2, name=f"digit_{i}") for i in range(G)]
            addr = Signal(range(E))
            with m.If(self.load & ~self.busy):
                m.d.sync += [held.eq(self.x), self.busy.eq(1), addr.eq(0),
                             *(d.eq(0) for d in digits)]
            with m.Elif(self.busy):
                m.d.sync += addr.eq(addr + 1)
                carry = 1
                for d in digits:
                    wrap = d == 2
                    m.d.sync += d.eq(Mux(carry, Mux(wrap, 0, d + 1), d))
                    carry = carry & wrap
                with m.If(addr == E - 1):
                    m.d.sync += self.busy.eq(0)
            for t in range(T):
                terms = [Mux(d == 0, -held[t][i], Mux(d == 2, held[t][i], 0))
                         for i, d in enumerate(digits)]
                mem = memory.Memory(shape=signed(eb), depth=E, init=[])
                m.submodules[f"table_{t}"] = mem
                wp = mem.write_port()
                m.d.comb += [wp.addr.eq(addr), wp.data.eq(tree_sum(terms)),
                             wp.en.eq(self.busy)]
                for q in range(Q):
                    rp = mem.read_port(domain="comb")
                    m.d.comb += rp.addr.eq(self.idx[q][t])
                    lookups[q][t] = rp.data
        s1_valid, s1_first = Signal(), Signal()
        m.d.sync += [s1_valid.eq(self.valid), s1_first.eq(self.first)]
        sum_bits = eb + (T - 1).bit_length()
        for q in range(Q):
            s1_sum = Signal(signed(sum_bits), name=f"s1_sum_{q}")
            m.d.sync += s1_sum.eq(tree_sum(lookups[q]))
            acc = self.acc[q]
            with m.If(s1_valid):
                m.d.sync += acc.eq(Mux(s1_first, s1_sum, (acc + s1_sum)[:32]))
        return m
