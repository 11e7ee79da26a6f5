"""Executors of the state-space instructions: the controller's side of the units of
``hw/ssm.py``, ``hw/conv.py`` and ``hw/hadamard.py`` (docs/architecture.md, "State-space
path"): HADAMARD, CONV and SCAN.

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

:class:`ScanExec` runs a SCAN row by row (the recurrence) on ``W = ssm_lanes``
:class:`~.ssm.ScanUnit` units side by side (state channel ``c`` in unit ``c mod W`` at ``c // W``;
``n`` and ``state`` multiples of W): the row's ``B`` and ``C`` words are read into the units'
token operands; then per beat ``j`` the ``u`` and ``dt`` words (read during the previous beat's
feed) and the beat's parameter record are taken (the block streams once per row: the units
take the decay-rate codes with the channels), and its channels enter the units W a cycle
(``dt`` through a softplus ROM a unit, zeros on row 0 at POS 0), ``L / W + 1`` cycles a beat;
the ``y`` bytes, W a cycle, are gathered into words and written ``out + r * words`` on, the
row's padding words 0. The next row's token waits until the row's last ``y`` is written (the
pipelines hold the token's operands).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .config import AccelConfig
from .contract import conv_record_bytes, record_slots, scan_record_bytes
from .conv import CausalConvUnit
from .epilogue import Epilogue
from .hadamard import HadamardUnit
from .isa_layout import LAYOUTS
from .mem_port import read_req_layout
from .sfu import SILU_ROM
from .ssm import SOFTPLUS_ROM, ScanUnit

__all__ = ["HadamardExec", "ConvExec", "ScanExec", "exec_signature"]

#: Super-beats of one burst request of a parameter block (as LOAD's).
_BURST = 16


def exec_signature(cfg: AccelConfig, streams: bool = False) -> dict:
    """The members of an executor (the controller's side of a unit): the instruction, start
    and busy, the activation buffer's read and write ports and, with ``streams``, a memory read
    stream and the POS register."""
    L = cfg.chain_len
    members = {"ins": In(256), "start": In(1), "busy": Out(1),
               "rd_addr": Out(16), "rd_en": Out(1), "act_rd_data": In(8 * L),
               "wr_addr": Out(16), "wr_data": Out(8 * L), "wr_en": Out(L)}
    if streams:
        members |= {"pos": In(32),
                    "rd_req": Out(stream.Signature(read_req_layout(cfg.addr_bits))),
                    "rd_data": In(stream.Signature(8 * cfg.beat_bytes))}
    return members


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
        self.unit = HadamardUnit(cfg.chain_len, cfg.hadamard_block)
        super().__init__(exec_signature(cfg))

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
            # n = 0: no beat to read (the rows' words are all padding, written 0)
            m.d.sync += [r_row.eq(0), r_beat.eq(0), r_base.eq(f.a),
                         r_more.eq((f.rows != 0) & (f.n != 0)),
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
        self.unit = CausalConvUnit(cfg.chain_len, cfg.conv_taps, cfg.conv_words,
                                   uram=cfg.ssm_uram)
        super().__init__(exec_signature(cfg, streams=True))

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        L, K = cfg.chain_len, cfg.conv_taps
        R = conv_record_bytes(L, K)
        f = data.View(LAYOUTS[isa.Opcode.CONV], self.ins)
        m.submodules.unit = unit = self.unit
        m.d.comb += unit.shift.eq(f.shift)

        # the parameter block, once (a record serves all the rows of its beat)
        recs = _Records(m, cfg, R, self.rd_req, self.rd_data)
        beats = Signal(16)
        m.d.comb += [beats.eq((f.n + L - 1) // L),
                     recs.nsb.eq(((beats + recs.per - 1) // recs.per) * recs.span)]

        # --- feed: beat j, rows r = 0 .. rows-1, one act read in flight ------------------------
        j, r = Signal(16), Signal(16)
        row_addr = Signal(16)               # a + r * words + j
        more = Signal()
        pending, pend_zero, pend_addr = Signal(), Signal(), Signal.like(unit.i.payload.addr)
        cur = Signal(8 * R)                 # the record of the beat being fed
        issue = Signal()
        first = r == 0
        # a word the unit has not taken is never re-read (the data holds while en is low)
        m.d.comb += [issue.eq(more & (~pending | unit.i.ready) & (~first | recs.have)),
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
                m.d.sync += cur.eq(recs.rec)
                recs.take(m, j == beats - 1)
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

        with m.If(self.start):
            m.d.sync += [*recs.start(f.ext, Mux(f.rows != 0, 1, 0)), j.eq(0), r.eq(0),
                         row_addr.eq(f.a),
                         more.eq((f.rows != 0) & (beats != 0)), pending.eq(0), wj.eq(0),
                         wr_r.eq(0), w_addr.eq(f.out), w_more.eq(f.rows != 0), self.busy.eq(1)]
        with m.Elif(self.busy & ~w_more & ~more & ~pending & (recs.req_left == 0)):
            m.d.sync += self.busy.eq(0)
        return m


class _Records:
    """A parameter block's records out of their super-beat slots (``mapping.ssm_format``):
    ``rec`` is the next record while ``have``; ``take`` (the record is used) moves on; the
    block is requested in bursts of ``_BURST`` super-beats, ``rows`` times from ``ext`` (a
    SCAN reads it per row)."""

    def __init__(self, m: Module, cfg: AccelConfig, R: int, rd_req, rd_data):
        SB = cfg.beat_bytes
        self.per, self.span = per, span = record_slots(R, SB)
        self.nsb = Signal(32)               # super-beats of the block (set by the owner)
        self.req_left, self.req_rows = Signal(32), Signal(16)
        self.req_addr, self.ext = Signal(cfg.addr_bits), Signal(cfg.addr_bits)
        left, step = self.req_left, Mux(self.req_left >= _BURST, _BURST, self.req_left)
        m.d.comb += [rd_req.valid.eq(left != 0), rd_req.payload.addr.eq(self.req_addr),
                     rd_req.payload.len.eq(step)]
        with m.If(rd_req.valid & rd_req.ready):
            with m.If((left == step) & (self.req_rows > 1)):      # the next row's block
                m.d.sync += [left.eq(self.nsb), self.req_addr.eq(self.ext),
                             self.req_rows.eq(self.req_rows - 1)]
            with m.Else():
                m.d.sync += [left.eq(left - step), self.req_addr.eq(self.req_addr + step)]
        buf = Signal(8 * SB * span)
        self.got = got = Signal(range(span + 1))
        self.slot = Signal(range(per))
        self.have = got == span
        m.d.comb += rd_data.ready.eq(~self.have)
        with m.If(rd_data.valid & rd_data.ready):
            m.d.sync += [buf.word_select(got, 8 * SB).eq(rd_data.payload), got.eq(got + 1)]
        self.rec = Signal(8 * R)
        m.d.comb += self.rec.eq(buf.word_select(self.slot, 8 * R) if per > 1 else buf[:8 * R])

    def start(self, ext, rows) -> list:
        """Statements starting an instruction's block (``rows`` times from ``ext``)."""
        return [self.req_left.eq(Mux(rows != 0, self.nsb, 0)), self.req_rows.eq(rows),
                self.req_addr.eq(ext), self.ext.eq(ext), self.got.eq(0), self.slot.eq(0)]

    def take(self, m: Module, last) -> None:
        """Statements (in the caller's ``If``) for using ``rec``; ``last``: the block's last."""
        if self.per > 1:
            with m.If((self.slot == self.per - 1) | last):
                m.d.sync += [self.slot.eq(0), self.got.eq(0)]
            with m.Else():
                m.d.sync += self.slot.eq(self.slot + 1)
        else:
            m.d.sync += self.got.eq(0)


class ScanExec(wiring.Component):
    """Executes SCAN (module docstring).

    Parameters
    ----------
    cfg : AccelConfig
        ``chain_len``, ``ssm_states``, ``ssm_channels``.

    Attributes
    ----------
    As :class:`ConvExec`'s.
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        W = cfg.ssm_lanes
        self.units = [ScanUnit(cfg.ssm_states, -(-cfg.ssm_channels // W), uram=cfg.ssm_uram)
                      for _ in range(W)]
        super().__init__(exec_signature(cfg, streams=True))

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        L, S, W = cfg.chain_len, cfg.ssm_states, cfg.ssm_lanes
        sw = -(-S // L)                     # act words of B (of C)
        R = scan_record_bytes(L, S)
        f = data.View(LAYOUTS[isa.Opcode.SCAN], self.ins)
        for k, u in enumerate(self.units):
            m.submodules[f"unit{k}"] = u
        unit = self.units[0]                # the units move in lockstep: unit 0's handshakes
        recs = _Records(m, cfg, R, self.rd_req, self.rd_data)
        beats = Signal(16)
        m.d.comb += [beats.eq((f.n + L - 1) // L),
                     recs.nsb.eq(((beats + recs.per - 1) // recs.per) * recs.span)]

        # --- act reads: one a cycle, captured the next cycle into the word they were for -------
        tok_b, tok_c = Signal(8 * L * sw), Signal(8 * L * sw)
        u_w, dt_w = Signal(8 * L), Signal(8 * L)       # the beat being fed
        nu_w, ndt_w = Signal(8 * L), Signal(8 * L)     # the next beat's, read during the feed
        pre_done = Signal()                            # nu_w and ndt_w hold the next beat's
        T_B, T_C, T_NU, T_NDT = range(4)
        cap_en, cap_to, cap_k = Signal(), Signal(2), Signal(range(max(sw, 2)))
        with m.If(cap_en):
            with m.Switch(cap_to):
                with m.Case(T_B):
                    m.d.sync += tok_b.word_select(cap_k, 8 * L).eq(self.act_rd_data)
                with m.Case(T_C):
                    m.d.sync += tok_c.word_select(cap_k, 8 * L).eq(self.act_rd_data)
                with m.Case(T_NU):
                    m.d.sync += nu_w.eq(self.act_rd_data)
                with m.Case(T_NDT):
                    m.d.sync += [ndt_w.eq(self.act_rd_data), pre_done.eq(1)]
        m.d.sync += cap_en.eq(0)

        def read(addr, to, k=0):
            m.d.comb += [self.rd_en.eq(1), self.rd_addr.eq(addr)]
            m.d.sync += [cap_en.eq(1), cap_to.eq(to), cap_k.eq(k)]

        for u in self.units:
            tk = u.token
            for s in range(S):
                m.d.comb += [tk.b[s].eq(tok_b[8 * s:8 * s + 8].as_signed()),
                             tk.c[s].eq(tok_c[8 * s:8 * s + 8].as_signed())]
            m.d.comb += [tk.bu_mult.eq(f.bu_mult), tk.bu_shift.eq(f.bu_shift),
                         tk.y_mult.eq(f.y_mult), tk.y_shift.eq(f.shift), tk.d_shift.eq(f.d_shift)]

        # --- feed: per row the token, per beat u, dt and the record, then its channels, W a
        # cycle; the next beat's u and dt words are read in the beat's first two feed cycles
        # (L / W >= 2 of them), so a beat takes L / W + 1 cycles (the +1: the swap to the next
        # beat's words and record)
        t, j, i, k = Signal(16), Signal(16), Signal(range(L)), Signal(range(2 * sw + 1))
        pre = Signal(2)                             # next-beat reads issued in this beat
        row_off, bc_off = Signal(16), Signal(16)    # t * words, t * bc_words
        chan = Signal(32)                           # state channel of lane i
        cur = Signal(8 * R)
        rows_done = Signal(16)                      # rows whose y are all written
        for q, u in enumerate(self.units):          # unit q takes lane i + q
            c = u.i.payload
            lane = i + q
            sp = memory.Memory(shape=16, depth=256, init=SOFTPLUS_ROM)
            m.submodules[f"softplus{q}"] = sp
            spr = sp.read_port(domain="comb")
            m.d.comb += [spr.addr.eq(dt_w.word_select(lane, 8) + 128),
                         c.chan.eq(chan // W if W > 1 else chan), c.dt.eq(spr.data),
                         c.u.eq(u_w.word_select(lane, 8).as_signed()),
                         c.zero.eq((t == 0) & (self.pos == 0)),
                         c.d_mult.eq(cur.word_select(2 * S * L // 4 + lane, 32)[:17].as_signed())]
            for s in range(S):
                m.d.comb += c.a[s].eq(cur.word_select(lane * S + s, 16))
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start & (f.rows != 0) & (f.n != 0)):
                    m.d.sync += [t.eq(0), row_off.eq(0), bc_off.eq(0), k.eq(0),
                                 chan.eq(f.state)]
                    m.next = "TOKEN"
            with m.State("TOKEN"):
                with m.If(k < sw):
                    read(f.b + bc_off + k, T_B, k)
                with m.Else():
                    read(f.c + bc_off + k - sw, T_C, k - sw)
                m.d.sync += k.eq(k + 1)
                with m.If(k == 2 * sw - 1):
                    m.d.sync += [j.eq(0), k.eq(0)]
                    m.next = "U"
            with m.State("U"):              # the row's first beat: its words, then the swap
                read(f.a + row_off + j, T_NU)
                m.next = "DT"
            with m.State("DT"):
                read(f.dt + row_off + j, T_NDT)
                m.next = "SWAP"
            with m.State("SWAP"):
                with m.If(pre_done & recs.have):
                    m.d.sync += [u_w.eq(nu_w), dt_w.eq(ndt_w), pre_done.eq(0), pre.eq(0),
                                 cur.eq(recs.rec), i.eq(0)]
                    recs.take(m, j == beats - 1)
                    m.next = "FEED"
            with m.State("FEED"):
                with m.If(j + 1 < beats):
                    with m.If(pre == 0):
                        read(f.a + row_off + j + 1, T_NU)
                    with m.Elif(pre == 1):
                        read(f.dt + row_off + j + 1, T_NDT)
                    with m.If(pre != 2):
                        m.d.sync += pre.eq(pre + 1)
                m.d.comb += [u.i.valid.eq(1) for u in self.units]
                with m.If(unit.i.ready):
                    m.d.sync += [chan.eq(chan + W), i.eq(i + W)]
                    end_row = j * L + i + W == f.n
                    with m.If(end_row):
                        m.next = "DRAIN"
                    with m.Elif(i == L - W):
                        m.d.sync += j.eq(j + 1)
                        m.next = "SWAP"
            with m.State("DRAIN"):
                with m.If(rows_done == t + 1):
                    m.d.sync += [t.eq(t + 1), row_off.eq(row_off + f.words),
                                 bc_off.eq(bc_off + f.bc_words), k.eq(0),
                                 chan.eq(chan - f.n)]
                    with m.If(t == f.rows - 1):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "TOKEN"

        # --- write: y gathered into words, W bytes a cycle, then the row's padding words -------
        ycol, yi = Signal(8 * L), Signal(range(L))
        w_cnt, wj, w_row = Signal(16), Signal(16), Signal(16)
        pad = w_cnt == f.n
        nxt = Signal(8 * L)
        ys = Cat(*(u.o.payload for u in self.units))
        m.d.comb += [nxt.eq(ycol | (ys << (yi * 8))),
                     *(u.o.ready.eq(~pad) for u in self.units)]
        wr = Signal()
        m.d.comb += [self.wr_addr.eq(f.out + w_row + wj), self.wr_data.eq(Mux(pad, 0, nxt))]
        with m.If(self.busy & pad & (rows_done != f.rows)):
            m.d.comb += wr.eq(1)
        with m.If(unit.o.valid & ~pad):
            m.d.sync += [w_cnt.eq(w_cnt + W), yi.eq(yi + W), ycol.eq(nxt)]
            with m.If((yi == L - W) | (w_cnt + W == f.n)):
                m.d.comb += wr.eq(1)
                m.d.sync += [yi.eq(0), ycol.eq(0)]
        m.d.comb += self.wr_en.eq(Mux(wr, (1 << L) - 1, 0))
        with m.If(wr):
            with m.If(wj == f.words - 1):
                m.d.sync += [wj.eq(0), w_cnt.eq(0), w_row.eq(w_row + f.words),
                             rows_done.eq(rows_done + 1)]
            with m.Else():
                m.d.sync += wj.eq(wj + 1)

        with m.If(self.start):
            m.d.sync += [*recs.start(f.ext, f.rows), ycol.eq(0), yi.eq(0), w_cnt.eq(0),
                         wj.eq(0), w_row.eq(0), rows_done.eq(0), self.busy.eq(1)]
        with m.Elif(self.busy & (rows_done == f.rows) & (recs.req_left == 0)):
            m.d.sync += self.busy.eq(0)
        return m
