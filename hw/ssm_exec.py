"""Executors of the state-space instructions: the controller's side of the units of
``hw/ssm.py``, ``hw/conv.py`` and ``hw/hadamard.py`` (docs/architecture.md, "State-space
path"). So far HADAMARD and CONV; SCAN stops the run with ERROR = 1 until its executor lands.

:class:`HadamardExec` runs a HADAMARD: every row's ``ceil(n / L)`` words stream from the
activation buffer through the :class:`~.hadamard.HadamardUnit` (``W = L`` lanes: one
activation word a beat) and one :class:`~.epilogue.Epilogue` a lane
(``golden.int8.requantize(v, 0, mult, shift)``; ``obits`` 4 then clamps to -8..7, which is
``requantize(..., bits=4)`` since -8..7 lies inside the int8 range), and are written back
``out + row * words`` on; channels from ``n`` on and the row's words past its beats are written
0, as the ISA model writes them. Reads run ahead of writes by the unit's latency, so ``out``
may be ``a`` (in place).

:class:`ConvExec` runs a CONV channel-major: for each beat ``j`` of ``L`` channels its
parameter record comes from memory (``mapping.ssm_format``: records in super-beat slots, the
block requested in bursts at the start), then rows ``0 .. rows-1`` of word ``j`` enter the
:class:`~.conv.CausalConvUnit` one a cycle (history beat ``state + j``, read as zeros on row 0
at POS 0), so every record is fetched once per instruction and the unit's transparent history
port carries a row's inputs to the next; each lane's output passes the SiLU ROM and an
:class:`~.epilogue.Epilogue` (``gate_mul(c, 1, silu_mult, silu_shift)`` is
``requantize(SILU_ROM[c], 0, silu_mult, silu_shift)``), and is written to ``out + r * words +
j``; then the rows' words past ``ceil(n / L)`` are written 0, as the ISA model writes them.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .config import AccelConfig
from .conv import CausalConvUnit
from .epilogue import Epilogue
from .hadamard import HadamardUnit
from .isa_layout import LAYOUTS
from .mem_port import read_req_layout
from .sfu import SILU_ROM

__all__ = ["HadamardExec", "ConvExec", "record_slots"]

#: Super-beats of one burst request of a parameter block (as LOAD's).
_BURST = 16


def record_slots(record: int, SB: int) -> tuple[int, int]:
    """``(records per super-beat, super-beats per record)``: the one rule of
    ``mapping.ssm_format.record_slots`` (hw/ may not import mapping; a test holds them equal)."""
    return (SB // record, 1) if record <= SB else (1, -(-record // SB))


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


class ConvExec(wiring.Component):
    """Executes CONV (module docstring).

    Parameters
    ----------
    cfg : AccelConfig
        ``chain_len`` (the lanes), ``conv_taps``, ``conv_words``.

    Attributes
    ----------
    ins, start, busy : as :class:`HadamardExec`'s
    pos : in, the POS register
    rd_addr, rd_en, act_rd_data, wr_addr, wr_data, wr_en : activation buffer ports
    rd_req : stream out, :func:`~.mem_port.read_req_layout`
    rd_data : stream in, ``8 * SB`` bits, beats in request order
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        L = cfg.chain_len
        self.unit = CausalConvUnit(L, cfg.conv_taps, cfg.conv_words)
        super().__init__({
            "ins": In(256), "start": In(1), "busy": Out(1), "pos": In(32),
            "rd_addr": Out(16), "rd_en": Out(1), "act_rd_data": In(8 * L),
            "wr_addr": Out(16), "wr_data": Out(8 * L), "wr_en": Out(L),
            "rd_req": Out(stream.Signature(read_req_layout(cfg.addr_bits))),
            "rd_data": In(stream.Signature(8 * cfg.beat_bytes)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        L, K, SB = cfg.chain_len, cfg.conv_taps, cfg.beat_bytes
        R = L * (K + 6)                     # record bytes (mapping.ssm_format)
        per, span = record_slots(R, SB)
        f = data.View(LAYOUTS[isa.Opcode.CONV], self.ins)
        m.submodules.unit = unit = self.unit
        m.d.comb += unit.shift.eq(f.shift)

        beats = Signal(16)
        m.d.comb += beats.eq((f.n + L - 1) // L)

        # --- the parameter block: requested in bursts, records out of their slots --------------
        req_left, req_addr = Signal(32), Signal(cfg.addr_bits)
        step = Mux(req_left >= _BURST, _BURST, req_left)
        m.d.comb += [self.rd_req.valid.eq(req_left != 0),
                     self.rd_req.payload.addr.eq(req_addr), self.rd_req.payload.len.eq(step)]
        with m.If(self.rd_req.valid & self.rd_req.ready):
            m.d.sync += [req_left.eq(req_left - step), req_addr.eq(req_addr + step)]
        buf = Signal(8 * SB * span)         # the super-beat(s) holding the current record(s)
        got = Signal(range(span + 1))       # super-beats of buf filled
        slot = Signal(range(per))           # the record of buf to use next
        have = got == span
        m.d.comb += self.rd_data.ready.eq(~have)
        with m.If(self.rd_data.valid & self.rd_data.ready):
            m.d.sync += [buf.word_select(got, 8 * SB).eq(self.rd_data.payload), got.eq(got + 1)]
        rec = Signal(8 * R)
        m.d.comb += rec.eq(buf.word_select(slot, 8 * R) if per > 1 else buf[:8 * R])

        # --- feed: beat j, rows r = 0 .. rows-1, one act read in flight ------------------------
        j, r = Signal(16), Signal(16)
        row_addr = Signal(16)               # a + r * words + j
        more = Signal()
        pending, pend_zero, pend_addr = Signal(), Signal(), Signal.like(unit.i.payload.addr)
        cur = Signal(8 * R)                 # the record of the beat being fed
        issue = Signal()
        first = r == 0
        # a word the unit has not taken is never re-read (the data holds while en is low)
        m.d.comb += [issue.eq(more & (~pending | unit.i.ready) & (~first | have)),
                     self.rd_en.eq(issue), self.rd_addr.eq(row_addr)]
        p = unit.i.payload
        m.d.comb += [unit.i.valid.eq(pending), p.addr.eq(pend_addr), p.zero.eq(pend_zero)]
        for i in range(L):
            m.d.comb += p.x[i].eq(self.act_rd_data[8 * i:8 * i + 8].as_signed())
            for t in range(K):
                m.d.comb += p.w[i][t].eq(cur[8 * (i * K + t):8 * (i * K + t) + 8].as_signed())
            b0, m0 = 8 * (L * K + 4 * i), 8 * (L * K + 4 * L + 2 * i)
            m.d.comb += [p.bias[i].eq(cur[b0:b0 + 32].as_signed()), p.mult[i].eq(cur[m0:m0 + 16])]
        with m.If(issue):
            m.d.sync += [pending.eq(1), pend_addr.eq(f.state + j),
                         pend_zero.eq(first & (self.pos == 0))]
            with m.If(first):       # take the record; the next one may come
                m.d.sync += cur.eq(rec)
                if per > 1:
                    with m.If((slot == per - 1) | (j == beats - 1)):
                        m.d.sync += [slot.eq(0), got.eq(0)]
                    with m.Else():
                        m.d.sync += slot.eq(slot + 1)
                else:
                    m.d.sync += got.eq(0)
            with m.If(r == f.rows - 1):
                m.d.sync += [r.eq(0), j.eq(j + 1), row_addr.eq(f.a + j + 1)]
                with m.If(j == beats - 1):
                    m.d.sync += more.eq(0)
            with m.Else():
                m.d.sync += [r.eq(r + 1), row_addr.eq(row_addr + f.words)]
        with m.Elif(unit.i.valid & unit.i.ready):
            m.d.sync += pending.eq(0)

        # --- SiLU: the ROM and an epilogue a lane -----------------------------------------------
        epis = [Epilogue() for _ in range(L)]
        m.d.comb += unit.o.ready.eq(epis[0].i.ready)
        for i, e in enumerate(epis):
            m.submodules[f"silu{i}"] = e
            rom = memory.Memory(shape=signed(16), depth=256, init=SILU_ROM)
            m.submodules[f"silu_rom{i}"] = rom
            rp = rom.read_port(domain="comb")
            m.d.comb += [rp.addr.eq(unit.o.payload[i] + 128), e.i.valid.eq(unit.o.valid),
                         e.i.payload.acc.eq(rp.data), e.i.payload.mult.eq(f.mult_b),
                         e.i.payload.shift.eq(f.silu_shift)]

        # --- write: (j, r) as fed, then the rows' padding words ---------------------------------
        wj, wr_r, w_addr = Signal(16), Signal(16), Signal(16)
        w_more = Signal()
        pad = wj >= beats
        wr = Signal()
        m.d.comb += [wr.eq(w_more & (pad | epis[0].o.valid)), self.wr_addr.eq(w_addr),
                     self.wr_data.eq(Mux(pad, 0, Cat(*(e.o.payload.value for e in epis)))),
                     self.wr_en.eq(Mux(wr, (1 << L) - 1, 0))]
        for e in epis:
            m.d.comb += e.o.ready.eq(w_more & ~pad)
        with m.If(wr):
            with m.If(wr_r == f.rows - 1):
                m.d.sync += [wr_r.eq(0), wj.eq(wj + 1), w_addr.eq(f.out + wj + 1)]
                with m.If(wj == f.words - 1):
                    m.d.sync += w_more.eq(0)
            with m.Else():
                m.d.sync += [wr_r.eq(wr_r + 1), w_addr.eq(w_addr + f.words)]

        nsb = Signal(32)
        m.d.comb += nsb.eq(((beats + per - 1) // per) * span)
        with m.If(self.start):
            m.d.sync += [req_left.eq(Mux(f.rows != 0, nsb, 0)), req_addr.eq(f.ext), got.eq(0),
                         slot.eq(0), j.eq(0), r.eq(0), row_addr.eq(f.a),
                         more.eq((f.rows != 0) & (beats != 0)), pending.eq(0), wj.eq(0),
                         wr_r.eq(0), w_addr.eq(f.out), w_more.eq(f.rows != 0), self.busy.eq(1)]
        with m.Elif(self.busy & ~w_more & ~more & ~pending & (req_left == 0)):
            m.d.sync += self.busy.eq(0)
        return m
