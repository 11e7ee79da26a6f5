"""Executors of the state-space instructions: the controller's side of the units of
``hw/ssm.py``, ``hw/conv.py`` and ``hw/hadamard.py`` (docs/architecture.md, "State-space
path"). So far HADAMARD; CONV and SCAN stop the run with ERROR = 1 until theirs land.

:class:`HadamardExec` runs a HADAMARD: every row's ``ceil(n / L)`` words stream from the
activation buffer through the :class:`~.hadamard.HadamardUnit` (``W = L`` lanes: one
activation word a beat) and one :class:`~.epilogue.Epilogue` a lane
(``golden.int8.requantize(v, 0, mult, shift)``; ``obits`` 4 then clamps to -8..7, which is
``requantize(..., bits=4)`` since -8..7 lies inside the int8 range), and are written back
``out + row * words`` on; channels from ``n`` on and the row's words past its beats are written
0, as the ISA model writes them. Reads run ahead of writes by the unit's latency, so ``out``
may be ``a`` (in place).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .config import AccelConfig
from .epilogue import Epilogue
from .hadamard import HadamardUnit
from .isa_layout import LAYOUTS

__all__ = ["HadamardExec"]


class HadamardExec(wiring.Component):
    """Executes HADAMARD (module docstring).

    Parameters
    ----------
    cfg : AccelConfig
        ``chain_len`` (the lanes) and ``hadamard_block`` (the largest block).

    Attributes
    ----------
    ins : in, 256 bits, the instruction, stable from ``start`` until ``busy`` falls
    start : in, pulse
    busy : out, high from the cycle after ``start`` until the last word is written
    rd_addr, rd_en, act_rd_data : activation buffer read port (synchronous)
    wr_addr, wr_data, wr_en : activation buffer write port (``wr_en``: byte enables)
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        L = cfg.chain_len
        self.unit = HadamardUnit(L, cfg.hadamard_block)
        super().__init__({
            "ins": In(256), "start": In(1), "busy": Out(1),
            "rd_addr": Out(16), "rd_en": Out(1), "act_rd_data": In(8 * L),
            "wr_addr": Out(16), "wr_data": Out(8 * L), "wr_en": Out(L),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.cfg.chain_len
        f = data.View(LAYOUTS[isa.Opcode.HADAMARD], self.ins)
        m.submodules.unit = unit = self.unit
        epis = [Epilogue() for _ in range(L)]
        for j, e in enumerate(epis):
            m.submodules[f"epi{j}"] = e

        beats = Signal(16)          # words a row streams: ceil(n / L)
        m.d.comb += [beats.eq((f.n + L - 1) // L), unit.lgb.eq(f.lgb)]

        # --- read side: row r, beat j at a + r * words + j, one word in flight ------------------
        r_row, r_beat, r_base = Signal(16), Signal(16), Signal(16)
        r_more = Signal()
        pending, pend_last = Signal(), Signal()
        take = unit.i.ready & pending
        issue = Signal()
        # the read data holds while en is low: a word the unit has not taken is never re-read
        # (in place, it may have been overwritten)
        m.d.comb += [issue.eq(r_more & (~pending | unit.i.ready)),
                     self.rd_en.eq(issue), self.rd_addr.eq(r_base + r_beat),
                     unit.i.valid.eq(pending), unit.i.payload.last.eq(pend_last)]
        for j in range(L):
            m.d.comb += unit.i.payload.x[j].eq(self.act_rd_data[8 * j:8 * j + 8].as_signed())
        with m.If(issue):
            m.d.sync += [pending.eq(1), pend_last.eq(r_beat == beats - 1)]
            with m.If(r_beat == beats - 1):
                m.d.sync += [r_beat.eq(0), r_row.eq(r_row + 1), r_base.eq(r_base + f.words)]
                with m.If(r_row == f.rows - 1):
                    m.d.sync += r_more.eq(0)
            with m.Else():
                m.d.sync += r_beat.eq(r_beat + 1)
        with m.Elif(take):
            m.d.sync += pending.eq(0)

        # --- the epilogues: one a lane, in lockstep ---------------------------------------------
        o_chan = Signal(16)         # the first channel of the beat leaving the unit
        m.d.comb += unit.o.ready.eq(epis[0].i.ready)
        with m.If(unit.o.valid & unit.o.ready):
            m.d.sync += o_chan.eq(Mux(unit.o.payload.last, 0, o_chan + L))
        for j, e in enumerate(epis):
            m.d.comb += [e.i.valid.eq(unit.o.valid), e.i.payload.acc.eq(unit.o.payload.x[j]),
                         e.i.payload.mult.eq(f.mult_b), e.i.payload.shift.eq(f.shift),
                         e.i.payload.zero.eq(o_chan + j >= f.n)]

        # --- write side: the row's beats from the epilogues, then its padding words as 0 --------
        w_row, w_word, w_base = Signal(16), Signal(16), Signal(16)
        w_more = Signal()
        four = f.obits == 4
        vals = [Mux(four, Mux(e.o.payload.value > 7, 7, Mux(e.o.payload.value < -8, -8,
                                                              e.o.payload.value)),
                    e.o.payload.value)[:8] for e in epis]
        pad = w_word >= beats
        wr = Signal()
        m.d.comb += [wr.eq(w_more & (pad | epis[0].o.valid)),
                     self.wr_addr.eq(w_base + w_word),
                     self.wr_data.eq(Mux(pad, 0, Cat(*vals))),
                     self.wr_en.eq(Mux(wr, (1 << L) - 1, 0))]
        for e in epis:
            m.d.comb += e.o.ready.eq(w_more & ~pad)
        with m.If(wr):
            with m.If(w_word == f.words - 1):
                m.d.sync += [w_word.eq(0), w_row.eq(w_row + 1), w_base.eq(w_base + f.words)]
                with m.If(w_row == f.rows - 1):
                    m.d.sync += w_more.eq(0)
            with m.Else():
                m.d.sync += w_word.eq(w_word + 1)

        with m.If(self.start):
            m.d.sync += [r_row.eq(0), r_beat.eq(0), r_base.eq(f.a), r_more.eq(f.rows != 0),
                         pending.eq(0), w_row.eq(0), w_word.eq(0), w_base.eq(f.out),
                         w_more.eq(f.rows != 0), o_chan.eq(0), self.busy.eq(1)]
        with m.Elif(self.busy & ~w_more & ~r_more & ~pending):
            m.d.sync += self.busy.eq(0)
        return m
