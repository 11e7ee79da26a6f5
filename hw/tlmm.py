"""Table-lookup ternary matmul engine: TMATMUL (opcode 0x0B), TeLLMe-style.

docs/architecture.md, "Ternary path": instruction fields, the weight block (written by
``mapping/ternary_format.py``) and the numerics (``golden/ternary.py``: ``encode_groups``,
``group_table``, ``lookup_matmul``; ``golden/int8.py``: ``requantize``), bit for bit. This module
does not import ``golden``; the test checks :data:`GROUP_BITS` against it.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .arith import tree_sum
from .config import TLMM_GROUP_BITS, AccelConfig
from .contract import table_entries, tlmm_epilogue_lanes
from .isa import Opcode
from .isa_layout import LAYOUTS
from .mem_port import read_req_layout

__all__ = ["TernaryLookupMatmul", "GROUP_BITS", "TLMM_BURST", "TLMM_MAX_AHEAD", "ACC_BITS",
           "table_entries"]

#: Bits of one group index (hw.config.TLMM_GROUP_BITS): 3**G combinations in 4, 5, 7 bits.
GROUP_BITS = TLMM_GROUP_BITS
#: Super-beats per read request. 16-beat bursts with up to 64 beats in flight cover a 32-cycle
#: read latency twice over, so the index stream runs at one super-beat per cycle.
TLMM_BURST = 16
TLMM_MAX_AHEAD = 64
#: Epilogue pipeline depth: issue (buffer/acc/param reads), acc*m, +bias, *mult, sum, shift.
_EPI_STAGES = 5
#: Accumulator bits: ``k_groups < 2**16`` groups of entries ``|e| <= 128*G`` keep ``|acc| <
#: 2**25`` (26 bits signed), so the int32 sum of golden never needs more and never wraps.
ACC_BITS = {g: (0xFFFF * 128 * g).bit_length() + 1 for g in GROUP_BITS}
# table_entries (whole tables for G = 2, 3, the half with a mirror for G = 4) is part of the
# hardware contract (.contract), which the cycle model reads without Amaranth


def _ceil_div_unit(m: Module, name: str, width: int, d: int):
    """``ceil(num / d)`` for a constant ``d``, once per instruction. A power of two is an add
    and a shift (ready at once); any other ``d`` a restoring division, one quotient bit per
    cycle (``width + 1`` cycles), so no combinational divider for non-power-of-two T, Q, SB.

    Returns ``(start, num, quotient, done)``: pulse ``start`` with ``num`` valid; ``quotient``
    is valid while ``done`` (and, for a power of two, while ``num`` is).
    """
    start, num = Signal(name=f"{name}_start"), Signal(width, name=f"{name}_num")
    if d & (d - 1) == 0:
        q = Signal(width + 1 - (d.bit_length() - 1), name=f"{name}_q")
        m.d.comb += q.eq((num + (d - 1)) >> (d.bit_length() - 1))
        return start, num, q, Const(1)
    nw = max(width, (d - 1).bit_length()) + 1           # num + d - 1 must fit
    db = max(1, d.bit_length())
    q = Signal(nw, name=f"{name}_q")
    rem = Signal(db, name=f"{name}_rem")
    cnt = Signal(range(nw + 1), name=f"{name}_cnt")
    r2 = Cat(q[nw - 1], rem)
    ge = r2 >= d
    with m.If(start):
        m.d.sync += [q.eq(num + (d - 1)), rem.eq(0), cnt.eq(nw)]
    with m.Elif(cnt != 0):
        m.d.sync += [rem.eq(Mux(ge, r2 - d, r2)), q.eq(Cat(ge, q[:nw - 1])), cnt.eq(cnt - 1)]
    return start, num, q, (cnt == 0) & ~start


def _select(value, sel, width: int):
    """Word ``sel`` of ``value`` (``width``-bit words) as a binary tree of 2:1 muxes on the
    bits of ``sel`` (``word_select`` with a variable index is a wide shifter to Yosys).
    ``sel`` must be below the number of words (past it, some word is selected)."""
    words = [value[i * width:(i + 1) * width] for i in range(len(value) // width)]
    level = 0
    while len(words) > 1:
        words = [Mux(sel[level], words[i + 1], words[i]) if i + 1 < len(words) else words[i]
                 for i in range(0, len(words), 2)]
        level += 1
    return words[0]


class TernaryLookupMatmul(wiring.Component):
    """Executes TMATMUL: ternary weights by table lookup, exact accumulation, requantization.

    Per group of up to ``S*R`` activation rows ``b ..`` (groups one after another; the index
    records are streamed once per group), in passes of ``n = min(R, ..)`` rows (each record
    is looked up for each row of a pass at once; in decode ``rows`` is 1, one pass):

    1. ``m[b]``, ..: two byte reads per row of the u16 at byte ``2b`` of act words from
       ``m_addr`` (two cycles a row);
    2. per chunk ``c`` of ``T`` groups (``ceil(k_groups / T)`` chunks) and pass ``p``: the
       units ``u = (c, p)``, passes inner (with ``S = 1`` the units are the chunks), a
       builder (a, b) and a streamer (c) one unit apart: the tables have two banks, unit ``u``
       is built into bank ``u % 2`` while the streamer looks up unit ``u - 1`` in the other
       (the lookups read only the tables and the accumulators, so the byte reader is the
       builder's); the builder writes bank ``u % 2`` (b) once the streamer has finished unit
       ``u - 2`` there, the streamer starts unit ``u`` once it is built:

       a. load: the chunk's ``T*G`` activation bytes of each of the pass's rows, byte-serial
          from the buffer (``n*T*G + 1`` cycles; bytes straddle words freely; the bytes of
          groups past ``k_groups`` are read too and meet ZERO_INDEX);
       b. build: ``T`` tables of each row in parallel, ``NE =`` :func:`table_entries` entries,
          one per
          cycle after a cycle that loads entry 0 (``NE + 1`` cycles; 9 and 27 for G = 2, 3:
          the whole table; 41 for G = 4,
          where entry ``3**G - 1 - e`` has every digit mirrored (``2 - d``) and is
          ``-entry(e)``, so a lookup of an index ``>= 41`` reads the mirror and negates). Every
          table is written into one memory with ``Q`` asynchronous read ports (``Q`` LUT-RAM
          replicas on an FPGA), its two banks at ``0`` and ``2**bits`` (the bank is the top
          address bit: 25 and 59 entries, one and two 32-deep LUT-RAMs as ``2*NE``), or ``0``
          and ``NE`` for G = 4 (82). Each table has one adder: entry ``e + 1`` is entry ``e``
          plus ``a_i - 2*(a_0 + .. + a_{i-1})`` where digits ``0..i-1`` of ``e`` wrap, steps
          computed while the bytes arrive (one shared adder pair);
       c. stream: ``ceil(n_out / Q)`` records of ``T*Q`` indices (pass 0's from memory, and
          written into the record buffer; the other passes' read back from it, one a cycle);
          a record does ``T*Q``
          lookups for each of the ``R`` rows in one cycle (``lookup`` high; the tables of rows
          past ``n`` hold stale sums nobody reads), an adder tree over ``T`` per channel and
          row, and the read-modify-write of ``R*Q`` accumulators of :data:`ACC_BITS` bits
          (``acc`` memory, ``R*Q`` lanes per entry, row-major; chunk 0 overwrites). Records
          never straddle a super-beat (``mapping/ternary_format.py``): ``KR = 8*SB // RB`` of
          them sit in one beat and are
          taken with a ``KR``-way select straight from the read data (the beat is accepted with
          its last record, or the row's last), or a record of ``BPR = ceil(RB / (8*SB))``
          beats is the concatenation of ``BPR - 1`` registered beats and the arriving one.
          A chunk's last record steps to the next chunk in the same cycle.

    3. epilogue, for each row of the group in turn with no cycle between them: ``E`` output
       bytes per cycle for ``n < words*L`` (``words*L/E`` cycles):
       ``requantize(acc[n] * m[b], bias[n], mult[n], shift, RELU, res[b, n] if RESIDUAL,
       res_mult)`` for ``n < n_out``, 0 past it. ``E`` (a power of two dividing L, Q and
       ``RPB = SB/8``) consecutive outputs are one lane group of one accumulator entry, of one
       parameter entry and of one activation word: the word's residual bytes are read once,
       the ``E`` bytes written with byte enables. Four DSP48E2 a lane (acc*m, (acc*m +
       bias)*mult as two, res*res_mult). Exact in 60 bits for ``shift <= 47``
       (``golden.int8.SHIFT_MAX``).

    The parameters (``n_out`` records of 8 bytes) are loaded once per instruction into a
    block-RAM parameter memory of one super-beat's records per entry (their 48 used bits,
    one entry per cycle; the epilogue reads an entry a cycle ahead and selects its record in
    two pipelined levels); requests for the index stream
    of every pass follow, ``TLMM_BURST`` beats each, up to ``TLMM_MAX_AHEAD`` beats ahead of the
    data side, so the memory latency is paid once per instruction. Before that, a setup
    computes ``ceil(k_groups/T)``, ``ceil(n_out/Q)``, the parameter beats (an add and a shift
    for a power of two, else a sequential divider), the passes ``ceil(rows / R)`` (likewise)
    and the stream beats per pass
    (``ceil(records / KR) * BPR``, records by a shift-add multiplier of ``bits(acc_depth/Q)``
    steps), once per instruction.

    Cycles per pass of ``n`` rows with ``S = 1``, when memory keeps up (one beat per cycle)
    (with ``S > 1`` the units chain the same way, a buffered unit's records one a cycle:
    ``mapping/cycles.py`` ``tmatmul_cycles``)::

        7 + 2*(n - 1) + build + stream + (n_chunks - 1) * max(build, n_blocks*BPR)
          + n*words*L/E
        build  = n*T*G + 1 + 1 + NE            (load, its last capture, entry 0, entries)
        stream = n_blocks                      (RB <= 8*SB: one record per cycle)
               = n_blocks*BPR - (BPR - 1)      (RB > 8*SB: one beat per cycle; the first
                                                record's first beats arrive during the build)

    with ``n_chunks = ceil(k_groups / T)``, ``n_blocks = ceil(n_out / Q)``: chunk 0 is built
    alone, each later chunk takes the longer of its build (done while the previous chunk
    streams) and its records (the last chunk's ``stream``); 7 = the m reads (2; 2 more for
    each further row), the stream pipeline's drain (4) and the pass step (the epilogue's own
    pipeline drains into the next pass). ``4 + 2*(n - 1) + n*words*L/E`` when ``n_chunks`` or
    ``n_blocks`` is 0 (no lookups).
    Per instruction add the setup (``TLMM_SETUP`` in ``mapping/cycles.py``), ``param_beats``
    and one read latency.

    Parameters
    ----------
    cfg : AccelConfig
        ``chain_len`` (L), ``beat_bytes`` (SB, a multiple of 8: whole parameter records per
        beat), ``addr_bits``.
    G : int
        Group size (2, 3 or 4).
    T : int
        Tables (groups per record).
    Q : int
        Replicas of each table (output channels per record).
    acc_depth : int
        Largest ``n_out`` (channels): the accumulator memory holds ``ceil(acc_depth / Q)``
        entries of ``Q`` lanes of :data:`ACC_BITS` bits, the parameter memory ``ceil(8 *
        acc_depth / SB)`` super-beats. A TMATMUL with a larger ``n_out`` is not executable.
    E : int, optional
        Epilogue lanes (outputs per cycle, ``4*E`` DSP48E2): a power of two dividing L, Q and
        ``SB/8``; default :func:`~.contract.tlmm_epilogue_lanes` (4 on the KV260), which the
        cycle and resource models read.
    R : int, optional
        Rows a pass (``AccelConfig.tlmm_rows``): ``R`` sets of tables and ``R*Q`` accumulator
        lanes; 1 by default.
    S : int, optional
        Passes a fetch of the records serves (``AccelConfig.tlmm_passes``): a record buffer of
        one chunk's records and ``S`` passes' accumulator entries; 1 by default (no buffer).
    uram : bool, optional
        Mark the accumulator and record buffer memories ``ram_style = "ultra"``
        (``AccelConfig.tlmm_uram``).

    Attributes
    ----------
    ins : in, 256 bits
        The TMATMUL instruction, stable from ``start`` until ``busy`` falls, read through
        :data:`.isa_layout.LAYOUTS` (fields: :data:`.isa.LAYOUT`): flags RELU and RESIDUAL,
        wgt ``ext`` (super-beats), x ``a``, res ``b``, res_mult ``mult_b``.
    start : in, pulse
    busy : out, high from the cycle after ``start`` until the last output byte was written
    rd_addr, rd_en, act_rd_data : activation buffer read port (synchronous, data one cycle
        after an enabled address, held while ``rd_en`` is low)
    wr_addr, wr_data, wr_en : activation buffer write port (``wr_en``: byte enables)
    rd_req : stream out, :func:`~.mem_port.read_req_layout` (super-beat address and length)
    rd_data : stream in, ``8 * SB`` bits, beats in request order
    lookup : out, high in each cycle the engine does its ``T*Q`` lookups
    """

    def __init__(self, cfg: AccelConfig, G: int, T: int, Q: int, acc_depth: int,
                 E: int | None = None, R: int = 1, S: int = 1, uram: bool = False):
        if G not in GROUP_BITS:
            raise ValueError(f"TLMM group size G = {G} is not one of {sorted(GROUP_BITS)}")
        if T < 1 or Q < 1 or acc_depth < 1 or R < 1 or S < 1:
            raise ValueError(f"TLMM needs T, Q, acc_depth, R, S >= 1 (got {T}, {Q}, "
                             f"{acc_depth}, {R}, {S})")
        if cfg.beat_bytes % 8:
            raise ValueError(f"TLMM needs a super-beat of whole 8-byte parameter records "
                             f"(SB = {cfg.beat_bytes})")
        L = cfg.chain_len
        if E is None:
            E = tlmm_epilogue_lanes(L, Q, cfg.beat_bytes)
        if E < 1 or E & (E - 1) or L % E or Q % E or (cfg.beat_bytes // 8) % E:
            raise ValueError(f"TLMM epilogue lanes E = {E}: must be a power of two dividing "
                             f"L = {L}, Q = {Q} and SB/8 = {cfg.beat_bytes // 8}")
        self.cfg, self.G, self.T, self.Q, self.acc_depth, self.E = cfg, G, T, Q, acc_depth, E
        self.R, self.S, self.uram = R, S, uram
        super().__init__({
            "ins": In(256),
            "start": In(1),
            "busy": Out(1),
            "rd_addr": Out(16), "rd_en": Out(1), "act_rd_data": In(8 * L),
            "wr_addr": Out(16), "wr_data": Out(8 * L), "wr_en": Out(L),
            "rd_req": Out(stream.Signature(read_req_layout(cfg.addr_bits))),
            "rd_data": In(stream.Signature(8 * cfg.beat_bytes)),
            "lookup": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, G, T, Q, EL, R, S = self.cfg, self.G, self.T, self.Q, self.E, self.R, self.S
        GR = S * R                          # rows of a group: its S passes share one fetch
        L, SB, ab = cfg.chain_len, cfg.beat_bytes, cfg.addr_bits
        bits = GROUP_BITS[G]
        E = 3 ** G
        NE = table_entries(G)               # stored entries: E, or the half H with a mirror
        mirror = NE < E
        RB = T * Q * bits                   # record bits
        SBB = 8 * SB                        # super-beat bits
        KR = max(1, SBB // RB)              # records per super-beat
        BPR = -(-RB // SBB)                 # super-beats per record
        RPB = SB // 8                       # parameter records per super-beat
        # table entries: |sum| <= 128*G (512 at G = 4 needs 11 bits signed)
        TW = (128 * G).bit_length() + 1
        AW = ACC_BITS[G]                    # accumulator lanes: exact, never wrap
        AD = -(-self.acc_depth // Q)        # accumulator entries
        PD = -(-8 * self.acc_depth // SB)   # parameter memory entries (super-beats)

        # --- instruction fields ----------------------------------------------------------------
        ins = data.View(LAYOUTS[Opcode.TMATMUL], self.ins)
        relu, residual, shift = ins.flags.relu, ins.flags.residual, ins.shift
        wgt = ins.ext[:ab]
        x_addr, out_addr = ins.a, ins.out
        res_addr, rows = ins.b, ins.rows
        k_groups, n_out = ins.k_groups, ins.n_out
        x_words, words = ins.x_words, ins.words
        res_mult, m_addr = ins.mult_b, ins.m_addr

        # --- setup: chunk, block, beat counts (once per instruction) ---------------------------
        d1_go, d1_num, n_chunks, d1_done = _ceil_div_unit(m, "div_chunks", 16, T)
        d2_go, d2_num, n_blocks, d2_done = _ceil_div_unit(m, "div_blocks", 16, Q)
        d3_go, d3_num, param_beats, d3_done = _ceil_div_unit(m, "div_params", 16, RPB)
        d5_go, d5_num, n_groups, d5_done = _ceil_div_unit(m, "div_groups", 16, GR)
        m.d.comb += [d1_num.eq(k_groups), d2_num.eq(n_out), d3_num.eq(n_out), d5_num.eq(rows)]
        # records per row = n_chunks * n_blocks by shift-add over the bits of n_blocks (an
        # executable n_out <= acc_depth has at most bits(AD) of them), then the stream beats
        # per row: ceil(records / KR) (KR > 1) or records * BPR (a constant: BPR <= 2 adds)
        cw, bw = (-(-0xFFFF // T)).bit_length(), AD.bit_length()
        rec_w = cw + bw
        mul_a, mul_b, mul_p = Signal(rec_w), Signal(bw), Signal(rec_w)
        mul_cnt = Signal(range(bw + 2))
        beats_w = rec_w + BPR.bit_length() + 1
        d4_go, d4_num, d4_q, d4_done = _ceil_div_unit(m, "div_beats", rec_w, KR)
        m.d.comb += d4_num.eq(mul_p)
        stream_beats = Signal(beats_w)
        m.d.comb += stream_beats.eq(tree_sum([d4_q << k for k in range(BPR.bit_length())
                                              if (BPR >> k) & 1]))
        with m.If(mul_cnt != 0):
            m.d.sync += [mul_p.eq(mul_p + Mux(mul_b[0], mul_a, 0)), mul_a.eq(mul_a << 1),
                         mul_b.eq(mul_b >> 1), mul_cnt.eq(mul_cnt - 1)]

        # --- local memories ------------------------------------------------------------------
        # two banks per table: chunk c's lookups read bank c % 2 while chunk c + 1 is built into
        # the other. G = 2, 3: bank 1 at 2**bits (the bank is the top address bit, no adder;
        # 25 and 59 entries: one and two 32-deep LUT-RAMs, as 2*NE); G = 4: bank 1 at NE (82
        # entries: three, where 2**bits + NE would take four), its read address already an
        # add (the mirror)
        stride = NE if mirror else 1 << bits

        def table_addr(a, bank):
            if mirror:
                return a + Mux(bank, NE, 0)
            return Cat(a[:bits], Const(0, max(0, bits - len(a))), bank)

        # tables[r][tt]: table tt of row r of a pass (R rows share every record's indices)
        tables = []
        for r in range(R):
            tables.append([])
            for tt in range(T):
                mem = memory.Memory(shape=signed(TW), depth=stride + NE, init=[])
                m.submodules[f"table{tt}" if R == 1 else f"table{r}_{tt}"] = mem
                tables[r].append((mem.write_port(),
                                  [mem.read_port(domain="comb") for _ in range(Q)]))
        # accumulators: an entry holds Q lanes of each of the R rows of a pass (row-major), S
        # passes' entries (pass p's from p*n_blocks); URAM288 where the board places them there
        # (832 bits x 2048 entries at R = S = 4, Q = 8: 12 URAM288 or 48 RAMB36E2)
        ultra = {"ram_style": "ultra"} if self.uram else None
        m.submodules.accmem = accmem = memory.Memory(shape=AW * Q * R, depth=S * AD, init=[],
                                                     attrs=ultra)
        acc_wp, acc_rp = accmem.write_port(), accmem.read_port()
        # parameters: the 48 used bits of each 8-byte record (bias, mult), RPB per entry, in
        # block RAM (Yosys would put a shallow, wide one in LUT-RAM: 1.1k LUTs at SB = 256 B)
        m.submodules.prmmem = prmmem = memory.Memory(shape=48 * RPB, depth=PD, init=[],
                                                     attrs={"ram_style": "block"})
        prm_wp, prm_rp = prmmem.write_port(), prmmem.read_port()

        # --- request side ----------------------------------------------------------------------
        rq_run, rq_valid = Signal(), Signal()
        rq_addr, rq_len = Signal(ab), Signal(16)
        rq_next, rq_rem = Signal(ab), Signal(beats_w)   # next beat, beats left in the region
        rq_rows = Signal(16)                            # stream regions (groups) to request
        ahead = Signal(range(TLMM_MAX_AHEAD + TLMM_BURST + 1))
        issue = self.rd_req.valid & self.rd_req.ready
        taken = self.rd_data.valid & self.rd_data.ready
        m.d.comb += [self.rd_req.valid.eq(rq_valid), self.rd_req.payload.addr.eq(rq_addr),
                     self.rd_req.payload.len.eq(rq_len)]
        m.d.sync += ahead.eq(ahead + Mux(issue, rq_len, 0) - taken)
        blen = Mux(rq_rem > TLMM_BURST, TLMM_BURST, rq_rem[:5])
        with m.If(issue):
            m.d.sync += rq_valid.eq(0)
        with m.Elif(rq_run & ~rq_valid):
            with m.If(rq_rem != 0):
                with m.If(ahead + blen <= TLMM_MAX_AHEAD):
                    m.d.sync += [rq_valid.eq(1), rq_addr.eq(rq_next), rq_len.eq(blen),
                                 rq_next.eq(rq_next + blen), rq_rem.eq(rq_rem - blen)]
            with m.Elif(rq_rows != 0):
                m.d.sync += [rq_rows.eq(rq_rows - 1), rq_next.eq(wgt + param_beats),
                             rq_rem.eq(stream_beats)]
            with m.Else():
                m.d.sync += rq_run.eq(0)

        # --- records straight from the beats (records never straddle a super-beat) ------------
        strm_mode = Signal()                # parameters taken: every further beat is stream
        consume = Signal()                  # a record is looked up this cycle
        from_mem = Signal()                 # ... from the memory stream (a group's first pass)
        row_last = Signal()                 # ... and it is the stream region's last record
        record = Signal(RB)
        strm_ready = Signal()
        mem_take = consume & from_mem
        if BPR == 1:
            # KR records per beat at bit offsets i*RB: a KR-way select; the beat is taken with
            # its last record (or the row's last record: the rest of that beat is padding)
            slot = Signal(range(KR))
            m.d.comb += [record.eq(_select(self.rd_data.payload[:KR * RB], slot, RB)
                                   if KR > 1 else self.rd_data.payload[:RB]),
                         strm_ready.eq(mem_take & (row_last | (slot == KR - 1)))]
            rec_valid = self.rd_data.valid
            if KR > 1:
                with m.If(mem_take):
                    m.d.sync += slot.eq(Mux(row_last | (slot == KR - 1), 0, slot + 1))
        else:
            # a record of BPR beats: the first BPR - 1 are shifted into registers as soon as
            # they arrive (also ahead of the STREAM state), the last is used as it comes
            part = [Signal(SBB, name=f"part{i}") for i in range(BPR - 1)]
            have = Signal(range(BPR))
            m.d.comb += record.eq(Cat(*part, self.rd_data.payload)[:RB])
            rec_valid = self.rd_data.valid & (have == BPR - 1)
            collect = strm_mode & (have != BPR - 1)
            m.d.comb += strm_ready.eq(collect | mem_take)
            with m.If(collect & self.rd_data.valid):
                m.d.sync += [have.eq(have + 1)] + [
                    part[i].eq(part[i + 1] if i + 1 < BPR - 1 else self.rd_data.payload)
                    for i in range(BPR - 1)]
            with m.If(mem_take):
                m.d.sync += have.eq(0)
        # the record buffer (S > 1): a group's first pass writes chunk c's records as it looks
        # them up, the other passes read them back, one a cycle (address j at the lookup, data
        # in the next cycle, the S1 stage's): one chunk's records, RB bits x n_blocks
        rbuf_rd = None
        if S > 1:
            m.submodules.rbuf = rbuf = memory.Memory(shape=RB, depth=AD, init=[], attrs=ultra)
            rbuf_wr, rbuf_rd = rbuf.write_port(), rbuf.read_port()

        # --- byte reader (activation buffer): data one cycle after the address -----------------
        cap_v, cap_m = Signal(), Signal()   # capture a byte next cycle; into m (else x bytes)
        cap_lane = Signal(range(L))
        cap_row = Signal(range(GR))         # ... of row cap_row of the pass (x) or group (m)
        m_regs = [Signal(16, name="m_reg" if GR == 1 else f"m_reg{r}") for r in range(GR)]
        m.d.sync += cap_v.eq(0)
        byte_in = _select(self.act_rd_data, cap_lane, 8)
        # table steps, computed as the chunk's bytes arrive (one shared adder pair): walking the
        # entries in index order (digit 0 fastest), the step to the next entry when digits
        # 0..i-1 wrap (2 -> 0) and digit i increments is delta_i = a_i - 2*(a_0 + .. + a_{i-1});
        # entry 0 (every digit 0) is -(a_0 + .. + a_{G-1}). Shift registers: deltas[tt*G + i],
        # first0[tt] (the first byte captured ends lowest), so no per-table write decoder; one
        # set per row of the pass, shifted only by its own row's bytes (a row's T*G bytes are
        # whole groups, so the digit position and the partial sum are shared).
        DW = (128 * (2 * G - 1)).bit_length() + 1
        dpos = Signal(range(G))             # digit position of the next captured x byte
        psum = Signal(signed(TW))           # a_0 + .. + a_{dpos-1} of the current group
        deltas = [[Signal(signed(DW), name=f"delta{k}" if R == 1 else f"delta{r}_{k}")
                   for k in range(T * G)] for r in range(R)]
        first0 = [[Signal(signed(TW), name=f"entry0_{tt}" if R == 1 else f"entry0_{r}_{tt}")
                   for tt in range(T)] for r in range(R)]
        a_in = byte_in.as_signed()
        with m.If(cap_v):
            with m.If(cap_m):
                for r in range(GR):
                    with m.If(cap_row == r):
                        m.d.sync += m_regs[r].eq(Cat(m_regs[r][8:], byte_in))
            with m.Else():
                sum_in = psum + a_in
                m.d.sync += [psum.eq(sum_in), dpos.eq(dpos + 1)]
                with m.If(dpos == G - 1):
                    m.d.sync += [psum.eq(0), dpos.eq(0)]
                for r in range(R):
                    dl, f0 = deltas[r], first0[r]
                    with m.If(cap_row == r):
                        m.d.sync += [dl[k].eq(dl[k + 1]) for k in range(T * G - 1)]
                        m.d.sync += dl[-1].eq(a_in - (psum << 1))
                        with m.If(dpos == G - 1):
                            m.d.sync += [f0[k].eq(f0[k + 1]) for k in range(T - 1)]
                            m.d.sync += f0[-1].eq(-sum_in)

        def step_byte(word, lane):
            """The pointer (word, lane) one byte on."""
            return Mux(lane == L - 1, word + 1, word), Mux(lane == L - 1, 0, lane + 1)

        def read_byte(word, lane, to_m, row=0):
            """Issue a byte read at (word, lane) for row ``row`` of the pass and advance the
            pointer by one byte."""
            m.d.comb += [self.rd_addr.eq(word), self.rd_en.eq(1)]
            m.d.sync += [cap_v.eq(1), cap_m.eq(to_m), cap_lane.eq(lane), cap_row.eq(row)]
            nw, nl = step_byte(word, lane)
            m.d.sync += [word.eq(nw), lane.eq(nl)]

        # --- data side state -------------------------------------------------------------------
        b = Signal(16)                      # the group's first row
        gn = Signal(range(GR + 1))          # rows of the group: min(S*R, rows - b)
        n_pass = Signal(range(S + 1))       # its passes: ceil(gn / R)
        m.d.comb += n_pass.eq(tree_sum([gn > p * R for p in range(S)]))
        c = Signal(16)                      # chunk
        sp = Signal(range(S))               # pass of the chunk being looked up
        sbk = Signal()                      # its table bank (units alternate banks)
        abase = Signal(range(S * AD + 1))   # sp * n_blocks: the pass's accumulator entries
        j = Signal(16)                      # record (channel block) in the chunk
        # x_word, x_lane: chunk c's first byte in the pass's row 0 (rows r at + r * x_words)
        x_row, x_word, x_lane = Signal(16), Signal(16), Signal(range(L))
        m_word, m_lane = Signal(16), Signal(range(L))
        mk = Signal(range(2 * GR + 1))      # m bytes read for the group
        o_row, r_row = Signal(16), Signal(16)
        ld_i = Signal(range(T * G + 1))
        ld_r = Signal(range(R))             # row of the pass being loaded
        bp = Signal(range(S))               # pass of the chunk being built (into bank bbk)
        bbk = Signal()
        brow = Signal(range(GR + 1))        # bp * R: the pass's first row in the group
        bn = Signal(range(R + 1))           # its rows: min(R, gn - brow)
        m.d.comb += bn.eq(Mux(gn - brow >= R, R, gn - brow))
        ld_w, ld_l = Signal(16), Signal(range(L))  # the builder's byte pointer
        roff = Signal(16)                   # ld_r * x_words
        nx_w, nx_l = Signal(16), Signal(range(L))  # chunk c + 1's first byte in row 0
        be = Signal(range(NE + 1))          # table entry being built
        cb = Signal(16)                     # chunk being built (into bank cb % 2)
        full = [Signal(name=f"bank{k}_full") for k in range(2)]   # built, not yet streamed
        bld_go, bank_filled, bank_free = Signal(), Signal(), Signal()
        digits = [Signal(2, name=f"digit{i}") for i in range(G)]
        # the entry being written per table: one adder each. INIT loads entry 0 (0 + first0),
        # BUILD adds the step of the digits' carry: delta_i for i = trailing 2s of the digits
        ents = [[Signal(signed(TW), name=f"ent{tt}" if R == 1 else f"ent{r}_{tt}")
                 for tt in range(T)] for r in range(R)]
        ent_init, ent_step = Signal(), Signal()
        for r in range(R):
            for tt in range(T):
                step = deltas[r][tt * G + G - 1]
                for i in reversed(range(G - 1)):
                    step = Mux(digits[i] != 2, deltas[r][tt * G + i], step)
                with m.If(ent_init | ent_step):
                    m.d.sync += ents[r][tt].eq((Mux(ent_init, 0, ents[r][tt])
                                                + Mux(ent_init, first0[r][tt], step))[:TW])
        pi = Signal(range(PD + 1))          # parameter beats taken
        # epilogue position, EL outputs n = en_n .. en_n + EL - 1 a cycle: word ew, lane group el
        # (lanes EL*el ..); acc entry aj lane group aq; param beat pb record group pr
        # (incremental counters: no division by L, Q or SB/8)
        er = Signal(range(GR))              # the epilogue's row of the group
        erow = Signal(range(R))             # ... its row in its pass
        ebase = Signal(range(S * AD + 1))   # ... its pass's first accumulator entry
        en_n, ew, el = Signal(16), Signal(16), Signal(range(L // EL))
        e_past = Signal()                   # en_n >= n_out: every byte is padding (0)
        aj, aq = Signal(range(AD + 1)), Signal(range(Q // EL))
        pb, pr = Signal(range(PD + 1)), Signal(range(RPB // EL))
        epi_issue = Signal()
        epi_row_end = Signal()              # the issue of a row's last lane group
        no_acc = Signal()                   # k_groups == 0: every acc is 0
        pipe_busy = Signal()                # stream pipeline (lookups -> acc) not empty
        epi_busy = Signal()

        m.d.comb += row_last.eq((j == n_blocks - 1) & (c == n_chunks - 1))
        m.d.comb += self.rd_data.ready.eq(Mux(strm_mode, strm_ready, 0))

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.comb += [d1_go.eq(1), d2_go.eq(1), d3_go.eq(1), d5_go.eq(1)]
                    m.d.sync += [strm_mode.eq(0), b.eq(0), x_row.eq(x_addr), o_row.eq(out_addr),
                                 r_row.eq(res_addr), m_word.eq(m_addr), m_lane.eq(0),
                                 no_acc.eq(k_groups == 0), pi.eq(0), dpos.eq(0), psum.eq(0)]
                    m.next = "SETUP_DIV"
            with m.State("SETUP_DIV"):
                with m.If(d1_done & d2_done & d3_done & d5_done):
                    m.d.sync += [mul_a.eq(n_chunks), mul_b.eq(n_blocks), mul_p.eq(0),
                                 mul_cnt.eq(bw)]
                    m.next = "SETUP_MUL"
            with m.State("SETUP_MUL"):
                with m.If(mul_cnt == 0):
                    m.d.comb += d4_go.eq(1)
                    m.next = "SETUP_BEATS"
            with m.State("SETUP_BEATS"):
                with m.If(d4_done):
                    m.d.sync += [rq_run.eq(rows != 0), rq_valid.eq(0),
                                 rq_next.eq(wgt), rq_rem.eq(param_beats),
                                 rq_rows.eq(n_groups)]
                    m.next = "PARAMS"
            with m.State("PARAMS"):
                # parameters arrive first: one super-beat per cycle into the parameter memory
                m.d.comb += self.rd_data.ready.eq(pi != param_beats)
                m.d.comb += [prm_wp.addr.eq(pi), prm_wp.en.eq(taken), prm_wp.data.eq(
                    Cat(*[self.rd_data.payload[64 * r:64 * r + 48] for r in range(RPB)]))]
                with m.If(taken):
                    m.d.sync += pi.eq(pi + 1)
                with m.If((pi == param_beats) | (rows == 0)):
                    m.d.sync += strm_mode.eq(1)
                    m.next = "ROW"
                    with m.If(rows == 0):
                        m.next = "DRAIN"
            with m.State("ROW"):
                # a group: rows b .. b + gn - 1, their m bytes first (two per row)
                left = rows - b
                m.d.sync += [x_word.eq(x_row), x_lane.eq(0), c.eq(0), j.eq(0), mk.eq(1),
                             sp.eq(0), sbk.eq(0), abase.eq(0),
                             gn.eq(Mux(left >= GR, GR, left))]
                m.d.sync += [f.eq(0) for f in full]
                read_byte(m_word, m_lane, 1)
                m.next = "M1"
            with m.State("M1"):
                # the builder takes the byte reader from the next cycle (the group's chunks);
                # x_row steps to the next group's first row as each row's m is read
                read_byte(m_word, m_lane, 1, mk[1:])
                m.d.sync += mk.eq(mk + 1)
                with m.If(mk[0]):
                    m.d.sync += x_row.eq(x_row + x_words)
                with m.If(mk == 2 * gn - 1):
                    with m.If((n_chunks == 0) | (n_blocks == 0)):
                        m.next = "EPI_WAIT"
                    with m.Else():
                        m.d.comb += bld_go.eq(1)
                        m.next = "STREAM"
            with m.State("STREAM"):
                # the units (chunk c, pass sp), passes inner, each from bank sbk as soon as the
                # builder has filled it: pass 0's records from memory, the others' from the
                # record buffer; a unit's last record releases the bank (to the unit two on)
                # and steps to the next unit in the same cycle, so a built one streams with no
                # gap
                m.d.comb += [from_mem.eq(sp == 0),
                             consume.eq((rec_valid | (sp != 0)) & Mux(sbk, full[1], full[0]))]
                with m.If(consume):
                    m.d.sync += j.eq(j + 1)
                    with m.If(j == n_blocks - 1):
                        m.d.comb += bank_free.eq(1)
                        m.d.sync += [j.eq(0), sbk.eq(~sbk)]
                        with m.If(sp == n_pass - 1):
                            m.d.sync += [sp.eq(0), abase.eq(0), c.eq(c + 1)]
                            with m.If(c == n_chunks - 1):
                                m.next = "EPI_WAIT"
                        with m.Else():
                            m.d.sync += [sp.eq(sp + 1), abase.eq(abase + n_blocks)]
            epi_row = [en_n.eq(0), e_past.eq(n_out == 0), ew.eq(0), el.eq(0), aj.eq(0),
                       aq.eq(0), pb.eq(0), pr.eq(0)]
            with m.State("EPI_WAIT"):
                # the last records' accumulator writes land before the epilogue reads them
                with m.If(~pipe_busy):
                    m.d.sync += epi_row + [er.eq(0), erow.eq(0), ebase.eq(0)]
                    with m.If(words == 0):
                        m.next = "NEXT"
                    with m.Else():
                        m.next = "EPI"
            with m.State("EPI"):
                # the group's rows one after another, with no cycle between them
                m.d.comb += epi_issue.eq(1)
                m.d.sync += en_n.eq(en_n + EL)
                with m.If(en_n + EL >= n_out):
                    m.d.sync += e_past.eq(1)
                with m.If(el == L // EL - 1):
                    m.d.sync += [el.eq(0), ew.eq(ew + 1)]
                with m.Else():
                    m.d.sync += el.eq(el + 1)
                with m.If(aq == Q // EL - 1):
                    m.d.sync += [aq.eq(0), aj.eq(aj + 1)]
                with m.Else():
                    m.d.sync += aq.eq(aq + 1)
                with m.If(pr == RPB // EL - 1):
                    m.d.sync += [pr.eq(0), pb.eq(pb + 1)]
                with m.Else():
                    m.d.sync += pr.eq(pr + 1)
                m.d.comb += epi_row_end.eq((el == L // EL - 1) & (ew == words - 1))
                with m.If(epi_row_end):
                    with m.If(er == gn - 1):
                        m.next = "NEXT"
                    with m.Else():
                        m.d.sync += epi_row + [er.eq(er + 1), o_row.eq(o_row + words),
                                               r_row.eq(r_row + words)]
                        with m.If(erow == R - 1):
                            m.d.sync += [erow.eq(0), ebase.eq(ebase + n_blocks)]
                        with m.Else():
                            m.d.sync += erow.eq(erow + 1)
            with m.State("NEXT"):
                m.d.sync += [b.eq(b + gn), o_row.eq(o_row + words), r_row.eq(r_row + words)]
                with m.If(b + gn >= rows):
                    m.next = "DRAIN"
                with m.Else():
                    m.next = "ROW"
            with m.State("DRAIN"):
                with m.If(~epi_busy & ~pipe_busy):
                    m.d.sync += strm_mode.eq(0)
                    m.next = "IDLE"
            m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))

        # --- table builder: unit (chunk cb, pass bp)'s bytes into bank bbk, ahead of the
        # streamer ------------------------------------------------------------------------------
        # LOAD and the steps use only the byte reader (free while the streamer looks up: the
        # lookups read the tables, the accumulators are their own memory); BUILD waits in INIT
        # until the streamer has released the bank (the unit two back streamed). The group's m
        # bytes come before (M1 starts the builder) and its epilogue after the last unit
        # streamed (the builder is idle then: it finishes each unit before the streamer starts
        # it). LOAD reads the chunk's T*G bytes of each of the pass's bn rows in turn (bn*T*G + 1
        # cycles) and BUILD writes the tables of every row at once.
        load_start = [ld_i.eq(0), ld_r.eq(0), ld_w.eq(x_word), ld_l.eq(x_lane), roff.eq(0)]
        with m.FSM(name="builder"):
            with m.State("IDLE"):
                with m.If(bld_go):
                    m.d.sync += load_start + [cb.eq(0), bp.eq(0), brow.eq(0), bbk.eq(0)]
                    m.next = "LOAD"
            with m.State("LOAD"):
                with m.If(ld_i != T * G):
                    read_byte(ld_w, ld_l, 0, ld_r)
                    m.d.sync += ld_i.eq(ld_i + 1)
                    with m.If(ld_i == T * G - 1):
                        # a row's last byte: the group's row 0's next byte starts chunk c + 1;
                        # the next row's bytes (or, after the pass's last row, the capture
                        # cycle) follow
                        nw, nl = step_byte(ld_w, ld_l)
                        first = (bp == 0) & (ld_r == 0)
                        nxt_w = Mux(first, nw, nx_w)
                        nxt_l = Mux(first, nl, nx_l)
                        m.d.sync += [nx_w.eq(nxt_w), nx_l.eq(nxt_l)]
                        with m.If((ld_r == bn - 1) & (bp == n_pass - 1)):
                            m.d.sync += [x_word.eq(nxt_w), x_lane.eq(nxt_l)]
                        with m.Else():
                            # the next row to load: the pass's next, or the next pass's first
                            m.d.sync += [roff.eq(roff + x_words),
                                         ld_w.eq(x_word + roff + x_words), ld_l.eq(x_lane)]
                        with m.If(ld_r != bn - 1):
                            m.d.sync += [ld_i.eq(0), ld_r.eq(ld_r + 1)]
                with m.Else():
                    # the last byte (and its group's steps) is captured in this cycle
                    m.d.sync += [be.eq(0)] + [d.eq(0) for d in digits]
                    m.next = "INIT"
            with m.State("INIT"):
                # entry 0 (again, while waiting: first0 holds until the next LOAD)
                m.d.comb += ent_init.eq(1)
                with m.If(~Mux(bbk, full[1], full[0])):
                    m.next = "BUILD"
            with m.State("BUILD"):
                # entry be of every table at once: ent (entry 0, then ent + step)
                m.d.comb += ent_step.eq(1)
                for r in range(R):
                    for tt, (wp, _) in enumerate(tables[r]):
                        m.d.comb += [wp.addr.eq(table_addr(be, bbk)),
                                     wp.data.eq(ents[r][tt]), wp.en.eq(1)]
                # base-3 increment of the digits (digit 0 fastest, as golden's index)
                carry = Const(1)
                for i in range(G):
                    wrap = carry & (digits[i] == 2)
                    m.d.sync += digits[i].eq(Mux(carry, Mux(wrap, 0, digits[i] + 1), digits[i]))
                    carry = wrap
                m.d.sync += be.eq(be + 1)
                with m.If(be == NE - 1):
                    m.d.comb += bank_filled.eq(1)
                    m.d.sync += bbk.eq(~bbk)
                    with m.If(bp == n_pass - 1):
                        m.d.sync += [cb.eq(cb + 1), bp.eq(0), brow.eq(0)] + load_start
                        with m.If(cb == n_chunks - 1):
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "LOAD"
                    with m.Else():
                        m.d.sync += [bp.eq(bp + 1), brow.eq(brow + R), ld_i.eq(0), ld_r.eq(0)]
                        m.next = "LOAD"
        # a bank is filled by the builder and released by the streamer, never in one cycle
        for k, f in enumerate(full):
            with m.If(bank_filled & (bbk == k)):
                m.d.sync += f.eq(1)
            with m.If(bank_free & (sbk == k)):
                m.d.sync += f.eq(0)

        m.d.comb += self.lookup.eq(consume)

        # --- stream pipeline: S0 record register -> S1 lookups -> S2 tree -> S3 acc write -------
        s1_v, s1_first, s1_j = Signal(), Signal(), Signal(range(S * AD + 1))
        s1_reg = Signal(RB)
        s1_bank = Signal()
        m.d.sync += [s1_v.eq(consume), s1_first.eq(c == 0), s1_bank.eq(sbk),
                     s1_j.eq(abase + j), s1_reg.eq(record)]
        if rbuf_rd is None:
            s1_rec = s1_reg
        else:
            # pass 0 writes the record it looks up; the others read theirs (data in S1)
            s1_buf = Signal()
            m.d.sync += s1_buf.eq(~from_mem)
            m.d.comb += [rbuf_wr.addr.eq(j), rbuf_wr.data.eq(record), rbuf_wr.en.eq(mem_take),
                         rbuf_rd.addr.eq(j)]
            s1_rec = Mux(s1_buf, rbuf_rd.data, s1_reg)
        s2_v, s2_first, s2_j = Signal(), Signal(), Signal.like(s1_j)
        # lanes rq = r*Q + qq: channel qq of the record for row r of the pass (same index,
        # row r's table)
        RQ = R * Q
        s2_lk = [[Signal(signed(TW), name=f"s2_lk{rq}_{tt}") for tt in range(T)]
                 for rq in range(RQ)]
        for r in range(R):
            for tt, (_, rps) in enumerate(tables[r]):
                for qq, rp in enumerate(rps):
                    e = qq * T + tt
                    lk = s2_lk[r * Q + qq][tt]
                    idx = s1_rec[e * bits:(e + 1) * bits]
                    if mirror:
                        # G = 4: entry E - 1 - e (every digit mirrored) is -entry(e)
                        hi = idx >= NE
                        m.d.comb += rp.addr.eq(table_addr(Mux(hi, E - 1 - idx, idx), s1_bank))
                        m.d.sync += lk.eq(Mux(hi, -rp.data, rp.data))
                    else:
                        m.d.comb += rp.addr.eq(table_addr(idx, s1_bank))
                        m.d.sync += lk.eq(rp.data)
        m.d.sync += [s2_v.eq(s1_v), s2_first.eq(s1_first), s2_j.eq(s1_j)]
        SW = (T * 128 * G).bit_length() + 1
        s3_v, s3_first, s3_j = Signal(), Signal(), Signal.like(s1_j)
        s3_sum = [Signal(signed(SW), name=f"s3_sum{rq}") for rq in range(RQ)]
        for rq in range(RQ):
            m.d.sync += s3_sum[rq].eq(tree_sum(s2_lk[rq]))
        m.d.sync += [s3_v.eq(s2_v), s3_first.eq(s2_first), s3_j.eq(s2_j)]
        new_acc = [(Mux(s3_first, 0, acc_rp.data[AW * rq:AW * (rq + 1)].as_signed())
                    + s3_sum[rq])[:AW] for rq in range(RQ)]
        m.d.comb += [acc_wp.addr.eq(s3_j), acc_wp.data.eq(Cat(*new_acc)), acc_wp.en.eq(s3_v),
                     acc_rp.addr.eq(Mux(epi_issue, ebase + aj, s2_j))]
        m.d.comb += pipe_busy.eq(s1_v | s2_v | s3_v)

        # --- epilogue, EL lanes: E1 reads -> E2 acc*m -> E3 +bias -> E4 *mult, res*res_mult ->
        # E5 sum (4 DSP48E2 a lane) ------------------------------------------------------------
        # widths from |acc| < 2**25 (ACC_BITS), m < 2**16, |bias| < 2**31, mult < 2**16,
        # shift <= 47 (golden.int8.SHIFT_MAX): |acc*m| < 2**41, |+bias| < 2**42, |*mult| <
        # 2**58, + res*res_mult (< 2**23) < 2**59: 60 bits signed, exact. EL divides L, Q and
        # RPB, so a cycle's EL outputs are one lane group of one acc entry, one parameter entry
        # and one activation word (the residual bytes read once, written with byte enables)
        # parameters: the word of group n is read one cycle ahead (at n - 1's issue; word 0
        # outside EPI), so that the RPB/EL:1 record-group select takes two pipelined levels at no
        # extra latency: 4:1 within groups of 4 record groups at issue, then among the groups in
        # E1 (at SB = 256 B, EL = 1: 528 instead of 790 LUTs for 48 bits of 32:1, as Yosys
        # maps them)
        NU, UW = RPB // EL, 48 * EL         # record groups per entry, their bits
        # (word 0 after a row's last issue too: the pass's next row starts at it)
        m.d.comb += prm_rp.addr.eq(Mux(epi_issue & ~epi_row_end, Mux(pr == NU - 1, pb + 1, pb),
                                       0))
        ngrp = -(-NU // 4)
        e1_grp = Signal(UW * ngrp)
        m.d.sync += e1_grp.eq(Cat(*[_select(prm_rp.data[4 * UW * g:min(4 * UW * (g + 1), UW * NU)],
                                            pr[:2], UW) for g in range(ngrp)]))
        with m.If(epi_issue):
            m.d.comb += [self.rd_addr.eq(r_row + ew), self.rd_en.eq(1)]
        e1_v, e1_zero = Signal(), Signal(EL)
        e1_aq, e1_pr, e1_el = Signal.like(aq), Signal.like(pr), Signal.like(el)
        e1_er, e1_erow = Signal.like(er), Signal.like(erow)
        e1_wa = Signal(16)
        m.d.sync += [e1_v.eq(epi_issue), e1_aq.eq(aq), e1_pr.eq(pr), e1_el.eq(el),
                     e1_er.eq(er), e1_erow.eq(erow), e1_wa.eq(o_row + ew),
                     e1_zero.eq(Cat(*[e_past | (en_n + i >= n_out) for i in range(EL)]))]
        acc_g = _select(_select(acc_rp.data, e1_erow, Q * AW), e1_aq, EL * AW)
        m_reg = _select(Cat(*m_regs), e1_er, 16)
        prm = _select(e1_grp, e1_pr[2:], UW)
        res_g = _select(self.act_rd_data, e1_el, 8 * EL)
        e2_v, e2_zero, e2_el, e2_wa = Signal(), Signal(EL), Signal.like(el), Signal(16)
        e3_v, e3_zero, e3_el, e3_wa = Signal(), Signal(EL), Signal.like(el), Signal(16)
        e4_v, e4_zero, e4_el, e4_wa = Signal(), Signal(EL), Signal.like(el), Signal(16)
        e5_v, e5_zero, e5_el, e5_wa = Signal(), Signal(EL), Signal.like(el), Signal(16)
        m.d.sync += [e2_v.eq(e1_v), e2_zero.eq(e1_zero), e2_el.eq(e1_el), e2_wa.eq(e1_wa),
                     e3_v.eq(e2_v), e3_zero.eq(e2_zero), e3_el.eq(e2_el), e3_wa.eq(e2_wa),
                     e4_v.eq(e3_v), e4_zero.eq(e3_zero), e4_el.eq(e3_el), e4_wa.eq(e3_wa),
                     e5_v.eq(e4_v), e5_zero.eq(e4_zero), e5_el.eq(e4_el), e5_wa.eq(e4_wa)]
        # round and shift without a rounding addend: (v + 2**(s-1)) >> s = ((v >> (s-1)) + 1)
        # >> 1 for s >= 1. t = v >> max(s-1, 0) is needed only in a 10-bit window: whether
        # it leaves the window (bits s-1+9 .. 59 of v not all the sign: a thermometer mask,
        # no full-width shifter) saturates by the sign; inside, 9 bits of t and the sign are it
        sa = Signal(6)
        m.d.comb += sa.eq(Mux(shift == 0, 0, shift - 1))
        window = Signal(60)
        m.d.comb += window.eq(Const((1 << 60) - 1, 60) << (sa + 9))
        sats = []
        for i in range(EL):
            acc_v = Mux(no_acc, 0, acc_g[AW * i:AW * (i + 1)].as_signed())
            res_v = Mux(residual, res_g[8 * i:8 * (i + 1)].as_signed(), 0)
            p = prm[48 * i:48 * (i + 1)]
            e2_p = Signal(signed(42), name=f"e2_p{i}")          # acc * m
            e2_bias = Signal(signed(32), name=f"e2_bias{i}")
            e2_mult, e2_res = Signal(16, name=f"e2_mult{i}"), Signal(signed(8), name=f"e2_res{i}")
            m.d.sync += [e2_p.eq(acc_v * m_reg), e2_bias.eq(p[:32].as_signed()),
                         e2_mult.eq(p[32:48]), e2_res.eq(res_v)]
            e3_s = Signal(signed(43), name=f"e3_s{i}")
            e3_mult, e3_res = Signal(16, name=f"e3_mult{i}"), Signal(signed(8), name=f"e3_res{i}")
            m.d.sync += [e3_s.eq(e2_p + e2_bias), e3_mult.eq(e2_mult), e3_res.eq(e2_res)]
            e4_m, e4_r = Signal(signed(59), name=f"e4_m{i}"), Signal(signed(25), name=f"e4_r{i}")
            m.d.sync += [e4_m.eq(e3_s * e3_mult), e4_r.eq(e3_res * res_mult)]
            e5_sum = Signal(signed(60), name=f"e5_sum{i}")
            m.d.sync += e5_sum.eq(e4_m + e4_r)
            neg = e5_sum[-1]
            t_low = Signal(9, name=f"t_low{i}")
            m.d.comb += t_low.eq((e5_sum >> sa)[:9])
            out_win = ((e5_sum ^ Mux(neg, (1 << 60) - 1, 0)) & window).any()
            t = Cat(t_low, neg).as_signed()
            r = Signal(signed(10), name=f"r{i}")
            m.d.comb += r.eq(Mux(shift == 0, t, (t + 1) >> 1))
            sat = Signal(signed(8), name=f"sat{i}")
            with m.If(e5_zero[i] | (relu & neg)):
                m.d.comb += sat.eq(0)
            with m.Elif((out_win & ~neg) | (r > 127)):
                m.d.comb += sat.eq(127)
            with m.Elif((out_win & neg) | (r < -128)):
                m.d.comb += sat.eq(-128)
            with m.Else():
                m.d.comb += sat.eq(r[:8])
            sats.append(sat)
        lg = EL.bit_length() - 1
        m.d.comb += [self.wr_addr.eq(e5_wa), self.wr_data.eq(Cat(*(sats * (L // EL)))),
                     self.wr_en.eq(Mux(e5_v, Const((1 << EL) - 1, L) << Cat(Const(0, lg), e5_el),
                                       0))]
        m.d.comb += epi_busy.eq(e1_v | e2_v | e3_v | e4_v | e5_v)
        assert _EPI_STAGES == 5
        return m
