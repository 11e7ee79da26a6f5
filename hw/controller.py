"""Instruction controller: fetch, decode, and in-order execution of every instruction.

Owns the datapath (activation buffer, weight ring, matrix engine, sequencers; the vector unit
with ``cfg.transformer`` or ``cfg.tlmm``, the attention unit with ``cfg.transformer``, the
ternary table-lookup engine with ``cfg.tlmm``) and the super-beat memory streams, and
multiplexes them by the instruction being executed (one at a time, in order). The one unit
that runs beside the others is the weight ring after a PREFETCH (docs/architecture.md,
"Weight prefetch"): its reads and the instruction's share the memory through a
:class:`~.mem_port.ReadArbiter`.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .attention import AttentionUnit
from .buffers import ActivationBuffer, WeightRing
from .config import AccelConfig
from .contract import int4_capable
from .gearbox import Gearbox
from .isa_layout import HEADER_LAYOUT, INSTR_BITS, LAYOUTS
from .matrix_engine import MatrixEngine
from .mem_port import ReadArbiter, read_req_layout, write_layout
from .sequencer import KGroupSequencer, OutputSequencer
from .sfu import VectorUnit
from .ssm_exec import ConvExec, HadamardExec, ScanExec
from .tlmm import TernaryLookupMatmul

__all__ = ["Controller", "LOAD_BURST_BEATS", "mode_legal", "VECTOR_OPCODES"]

# LOAD read bursts; the buffer takes SB/L cycles per super-beat, so 16 beats in flight are plenty.
LOAD_BURST_BEATS = 16

#: Opcodes the :class:`~.sfu.VectorUnit` executes (the controller hands it the buffer ports).
VECTOR_OPCODES = (isa.Opcode.RMSNORM, isa.Opcode.ROPE, isa.Opcode.SILUMUL, isa.Opcode.ABSQUANT)
#: Vector opcodes legal on an engine whose vector unit was built for ``cfg.tlmm`` alone (ROPE
#: belongs to the transformer path).
_VU_BASE_OPCODES = (isa.Opcode.RMSNORM, isa.Opcode.SILUMUL, isa.Opcode.ABSQUANT)


def mode_legal(cfg: AccelConfig, lgm: int, lgr: int, int4: bool) -> bool:
    """Can this engine run a MATMUL in mode ``(lgm, lgr)`` with int8 or int4 weights?

    docs/architecture.md, "Legal modes": ``M = 2**lgm <= 16``, ``r = 2**lgr <= 4``, ``M <= L``,
    ``r <= G``, ``N = M/r >= 1``; with whole groups of M per word and whole DSP groups per
    segment (``M | L``, ``r | G``; always so for a power-of-two L). Sparse modes (``M > 1``)
    need ``cfg.sparse``, int4 needs the int4 fill path (``cfg.int4`` and ``2L | 32``). The same
    rule as ``mapping.weight_format.is_legal``; anything else stops the run with ERROR = 2.
    """
    L, G = cfg.chain_len, cfg.groups
    M, r = 1 << lgm, 1 << lgr
    return (lgm <= isa.MAX_LGM and lgr <= isa.MAX_LGR and lgr <= lgm
            and M <= L and L % M == 0 and r <= G and G % r == 0
            and (M == 1 or cfg.sparse) and (not int4 or int4_capable(cfg)))


class Controller(wiring.Component):
    """The accelerator minus its host and port plumbing.

    Parameters
    ----------
    cfg : AccelConfig

    Attributes
    ----------
    start : in, pulse (ignored while running)
    prog_base : in, super-beat address of the first instruction
    pos : in, POS: sequence position of the run's first activation row (LOAD/STORE with flag
        POS; ATTN's causal lengths)
    running : out
    done : out, pulse at the end of a run (END, illegal opcode or mode), after the last write
    error : out, after the run: 0 ok, 1 illegal opcode (also GATHER, ROPE, ATTN, PREFETCH and
        flag POS without ``cfg.transformer``; RMSNORM, SILUMUL and ABSQUANT without the vector unit,
        ``cfg.transformer or cfg.tlmm``; TMATMUL without ``cfg.tlmm``; HADAMARD, CONV and SCAN
        without ``cfg.ssm``), 2 illegal MATMUL mode,
        3 GATHER token id out of the table (until the next start;
        :data:`~.isa.ERROR_ILLEGAL_OPCODE`, :data:`~.isa.ERROR_ILLEGAL_MODE`,
        :data:`~.isa.ERROR_GATHER_RANGE`)
    cycles, mpe_busy, retired : out, counters of the current/last run
    tlmm_busy : out, cycles of the current/last run in which the TLMM engine did its ``T * Q``
        lookups (its ``lookup`` output; 0 without ``cfg.tlmm``)
    rd_req, rd_data, wr : super-beat memory streams (to :class:`SuperBeatPorts`)
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        ab = cfg.addr_bits
        super().__init__({
            "start": In(1),
            "prog_base": In(32),
            "pos": In(32),
            "running": Out(1),
            "done": Out(1),
            "error": Out(2),
            "cycles": Out(64),
            "mpe_busy": Out(64),
            "tlmm_busy": Out(64),
            "retired": Out(32),
            "rd_req": Out(stream.Signature(read_req_layout(ab))),
            "rd_data": In(stream.Signature(8 * cfg.beat_bytes)),
            "wr": Out(stream.Signature(write_layout(ab, cfg.beat_bytes))),
        })
        # datapath blocks (attributes so that tests can probe them)
        self.act = ActivationBuffer(cfg.chain_len, cfg.act_depth, uram=cfg.act_uram)
        self.ring = WeightRing(cfg)
        self.engine = MatrixEngine(cfg)
        self.kseq = KGroupSequencer(cfg)
        # PREFETCH (and so reads of two requesters in flight) is a transformer-path instruction
        self.reads = ReadArbiter(cfg, in_order=cfg.transformer)
        self.oseq = OutputSequencer(cfg)
        self.vec = self.attn = self.tlmm = self.had = self.conv = self.scan = None
        if cfg.vector_unit:
            self.vec = VectorUnit(cfg)
        if cfg.transformer:
            self.attn = AttentionUnit(cfg)
        if cfg.tlmm:
            self.tlmm = TernaryLookupMatmul(cfg, cfg.tlmm_g, cfg.tlmm_t, cfg.tlmm_q,
                                            cfg.tlmm_acc_depth, R=cfg.tlmm_rows,
                                            S=cfg.tlmm_passes,
                                            uram=cfg.tlmm_uram)
        if cfg.ssm:
            self.had = HadamardExec(cfg)
            self.conv = ConvExec(cfg)
            self.scan = ScanExec(cfg)

    @staticmethod
    def _kv_step(m, kv, slots, hd_words, row_words, pos_stride, wpb, words_left):
        """KVSTORE's read order: ``d`` outer, kv head ``k`` inner, then the block's padding to
        its last super-beat; the next row at ``row_words``; after the last row's block, stop
        issuing (``words_left`` 0)."""
        with m.If(~kv["pad"]):
            with m.If(kv["k"] == slots - 1):
                m.d.sync += [kv["k"].eq(0), kv["koff"].eq(0), kv["d"].eq(kv["d"] + 1)]
            with m.Else():
                m.d.sync += [kv["k"].eq(kv["k"] + 1), kv["koff"].eq(kv["koff"] + hd_words)]
        m.d.sync += kv["issued"].eq(kv["issued"] + 1)
        beat_end = kv["wb"] == wpb - 1
        block_end = beat_end & (kv["beat"] == pos_stride - 1)
        m.d.sync += kv["wb"].eq(Mux(beat_end, 0, kv["wb"] + 1))
        with m.If(beat_end):
            m.d.sync += kv["beat"].eq(kv["beat"] + 1)
        with m.If(block_end):
            m.d.sync += [kv["beat"].eq(0), kv["k"].eq(0), kv["koff"].eq(0), kv["d"].eq(0),
                         kv["row"].eq(kv["row"] + row_words),
                         kv["rows_left"].eq(kv["rows_left"] - 1)]
            with m.If(kv["rows_left"] == 1):
                m.d.sync += words_left.eq(0)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        SB, L, R = cfg.beat_bytes, cfg.chain_len, cfg.param_rows
        wpb = SB // L                                   # act words per super-beat
        fetch_beats = max(1, isa.INSTR_BYTES // SB)     # super-beats per instruction
        slots = max(1, SB // isa.INSTR_BYTES)           # instructions per super-beat
        id_beats = max(1, 4 // SB)                      # super-beats per GATHER token id
        id_slots = max(1, SB // 4)                      # token ids per super-beat
        tf = cfg.transformer
        vu = cfg.vector_unit
        tl = cfg.tlmm
        # units that take over the buffer ports (and, ATTN and TMATMUL, the read streams) from
        # start until busy falls
        units = []

        m.submodules.act = act = self.act
        m.submodules.ring = ring = self.ring
        m.submodules.engine = eng = self.engine
        m.submodules.kseq = kseq = self.kseq
        m.submodules.oseq = oseq = self.oseq
        m.submodules.load_gb = load_gb = Gearbox(SB, L)
        m.submodules.store_gb = store_gb = Gearbox(L, SB)
        vec = attn = tlmm = None
        if vu:
            m.submodules.vec = vec = self.vec
        if tf:
            m.submodules.attn = attn = self.attn
        if tl:
            m.submodules.tlmm = tlmm = self.tlmm
        if cfg.ssm:
            m.submodules.had = had = self.had
            m.submodules.conv = conv = self.conv
            m.submodules.scan = scan = self.scan

        # --- decoded instruction --------------------------------------------------------------
        ins = Signal(INSTR_BITS)
        hdr = data.View(HEADER_LAYOUT, ins)
        opcode, flags = hdr.op, hdr.flags
        # MATMUL's fields (f_*); the states that serve several opcodes (DECODE, LOAD, STORE,
        # POS_ADDR) read the other opcodes' fields at the same positions through them: ext and a
        # (LOAD, STORE, GATHER, KVSTORE), b (LOAD/STORE's and GATHER's n), rows (KVSTORE)
        mm = data.View(LAYOUTS[isa.Opcode.MATMUL], ins)
        ld = data.View(LAYOUTS[isa.Opcode.LOAD], ins)    # STORE, KVSTORE: pos_stride is LOAD's
        ga = data.View(LAYOUTS[isa.Opcode.GATHER], ins)
        kvs = data.View(LAYOUTS[isa.Opcode.KVSTORE], ins)
        f_ext, f_a, f_out, f_b, f_rows = mm.ext, mm.a, mm.out, mm.b, mm.rows
        f_kw, f_nt, f_tmr, f_lgm, f_lgr = mm.k_words, mm.n_tiles, mm.tile_mem_rows, mm.lgm, mm.lgr
        f_int4 = flags.int4
        f_pos = flags.pos               # LOAD/STORE/KVSTORE: ext + POS * pos_stride
        tile_entries = Signal(17)       # ring entries of a tile: R parameter rows + k_words
        total_rows = Signal(32)         # memory rows of the weight block
        m.d.comb += tile_entries.eq(f_kw + R)
        # settled one cycle after fetch (one DSP slice: 16 x 16 bits)
        m.d.sync += total_rows.eq(f_nt * f_tmr)
        # KVSTORE (docs/architecture.md, "Attention over a head-major KV cache"): rows position
        # blocks of pos_stride super-beats; word d * slots + k of a block is act word
        # a + b * words + k * hd_words + d, the rest of the block zero. Counters only, no
        # multiplier: (d, k) walk the data words, (beat, word in beat) the block, and the
        # instruction ends when every issued word was written.
        is_kv = opcode == isa.Opcode.KVSTORE
        kv_row = Signal(16)             # act word of row b's first head
        kv_koff = Signal(16)            # k * hd_words
        kv_d = Signal(8)
        kv_k = Signal(8)
        kv_beat = Signal(16)            # super-beat of the position block
        kv_wb = Signal(range(max(wpb, 2)))  # word of the super-beat
        kv_rows_left = Signal(16)
        kv_issued = Signal(33)          # words issued (data and padding)
        kv_pad = kv_d >= kvs.hd_words  # every (d, k) of the block taken: padding words
        kv = {"row": kv_row, "koff": kv_koff, "d": kv_d, "k": kv_k, "beat": kv_beat,
              "wb": kv_wb, "rows_left": kv_rows_left, "issued": kv_issued, "pad": kv_pad}
        # legal modes: a 64-entry table indexed by (lgr, lgm, int4). Refused too, as they would
        # hang the run: k_words = 0 (no k-group ever produces a result to write) and a tile
        # whose ring reservation exceeds the ring (its last rows could never be fetched).
        table = sum(1 << (lr | lm << 2 | i4 << 5) for i4 in (0, 1) for lm in range(8)
                    for lr in range(4) if mode_legal(cfg, lm, lr, bool(i4)))
        legal = Signal()
        reserve = Mux(f_int4, f_tmr << 1, f_tmr)
        m.d.comb += legal.eq(Const(table, 64).bit_select(Cat(f_lgr, f_lgm, f_int4), 1)
                             & (f_kw != 0) & (reserve <= cfg.weight_depth))

        # PREFETCH ("Weight prefetch"): the ring fields of the MATMUL it announced, and whether
        # one is pending; its MATMUL then finds the ring already streaming, and a MATMUL of other
        # weights (or a second PREFETCH) stops the run with ERROR = 2
        ring_fields = Cat(f_ext, f_kw, f_nt, f_tmr, f_lgm, f_lgr, f_int4, f_rows == 0)
        pf_fields = Signal.like(ring_fields)
        pf_pending = Signal()
        pf_hit = Signal()               # this MATMUL's weights are streaming already

        # --- datapath wiring that does not depend on the mode ---------------------------------
        m.d.comb += [
            ring.base.eq(f_ext), ring.total_rows.eq(Mux(f_rows == 0, 0, total_rows)),
            ring.tile_mem_rows.eq(f_tmr), ring.k_words.eq(f_kw), ring.lgm.eq(f_lgm),
            ring.lgr.eq(f_lgr), ring.int4.eq(f_int4),
            # engine feed: the ring skews its lanes per DSP group, the activation words of rows
            # b and b+1 come whole (ports a and c)
            ring.eng_addr.eq(kseq.ring_addr),
            eng.w.eq(ring.eng_data), eng.idx.eq(ring.eng_idx),
            eng.x0.eq(act.a_data), eng.x1.eq(act.c_data),
            eng.lgm.eq(f_lgm), eng.lgr.eq(f_lgr),
            eng.valid.eq(kseq.valid), eng.first.eq(kseq.first), eng.last.eq(kseq.last),
            eng.pair.eq(kseq.pair),
            kseq.credit.eq(eng.credit),
            act.c_addr.eq(kseq.act_addr1), act.c_en.eq(1),
            ring.prm_addr.eq(oseq.prm_addr), ring.prm_en.eq(oseq.prm_en),
            oseq.prm_data.eq(ring.prm_data),
            ring.release.eq(oseq.release),
            kseq.arrived.eq(ring.arrived),
            kseq.x.eq(f_a), kseq.k_words.eq(f_kw), kseq.x_words.eq(f_kw + mm.x_pad),
            kseq.rows.eq(f_rows), kseq.n_tiles.eq(f_nt),
            kseq.tile_entries.eq(tile_entries),
            oseq.rows.eq(f_rows), oseq.n_tiles.eq(f_nt), oseq.tile_entries.eq(tile_entries),
            oseq.lgr.eq(f_lgr),
            oseq.n.eq(mm.n), oseq.words.eq(mm.words),
            oseq.a_base.eq(f_a), oseq.b_base.eq(f_b), oseq.out_base.eq(f_out),
            oseq.mult_a.eq(mm.mult_a), oseq.mult_b.eq(mm.mult_b),
            oseq.shift.eq(mm.shift), oseq.relu.eq(flags.relu), oseq.residual.eq(flags.residual),
            oseq.a_data.eq(act.a_data), oseq.b_data.eq(act.b_data),
            act.b_addr.eq(oseq.b_addr), act.b_en.eq(oseq.b_en),
        ]
        wiring.connect(m, eng.o, oseq.i)
        with m.If(eng.valid):
            m.d.sync += self.mpe_busy.eq(self.mpe_busy + 1)

        # --- mode multiplexers ----------------------------------------------------------------
        # mode selects who owns the memory streams and the buffer ports
        (M_NONE, M_FETCH, M_LOAD, M_STORE, M_MM, M_VADD, M_VEC, M_ATTN, M_TLMM, M_HAD,
         M_CONV, M_SCAN) = range(12)
        mode = Signal(range(12))
        if vu:
            units.append((M_VEC, vec))
        if tf:
            units.append((M_ATTN, attn))
        if tl:
            units.append((M_TLMM, tlmm))
        if cfg.ssm:
            units += [(M_HAD, had), (M_CONV, conv), (M_SCAN, scan)]
        # the opcodes each unit executes (the vector unit: ROPE with the transformer path only)
        unit_opcodes = {M_VEC: _VU_BASE_OPCODES + ((isa.Opcode.ROPE,) if tf else ()),
                        M_ATTN: (isa.Opcode.ATTN,), M_TLMM: (isa.Opcode.TMATMUL,),
                        M_HAD: (isa.Opcode.HADAMARD,), M_CONV: (isa.Opcode.CONV,),
                        M_SCAN: (isa.Opcode.SCAN,)}
        # the units with their own memory read stream
        streamers = [(um, u) for um, u in units if um in (M_ATTN, M_TLMM, M_CONV, M_SCAN)]

        # the instruction's own read stream (fg) and the weight ring share the memory through
        # the arbiter: the ring streams a PREFETCHed MATMUL's weights while other instructions
        # run ("Weight prefetch"); fg has the priority
        m.submodules.reads = arb = self.reads
        wiring.connect(m, arb.out_req, wiring.flipped(self.rd_req))
        wiring.connect(m, wiring.flipped(self.rd_data), arb.out_data)
        wiring.connect(m, ring.rd_req, arb.req[1])
        wiring.connect(m, arb.data[1], ring.rd_data)
        fg_req, fg_data = arb.req[0], arb.data[0]
        m.d.comb += [arb.bg_limit.eq(mode != M_MM), arb.owner.eq(mode == M_MM)]

        fetch_req_valid = Signal()
        fetch_req_addr = Signal(cfg.addr_bits)
        fetch_req_len = Signal(16, init=fetch_beats)    # id_beats while GATHER reads an id
        load_req_valid = Signal()
        load_req_addr = Signal(cfg.addr_bits)
        load_req_len = Signal(16)
        with m.Switch(mode):
            with m.Case(M_FETCH):
                m.d.comb += [fg_req.valid.eq(fetch_req_valid),
                             fg_req.payload.addr.eq(fetch_req_addr),
                             fg_req.payload.len.eq(fetch_req_len)]
            with m.Case(M_LOAD):
                m.d.comb += [fg_req.valid.eq(load_req_valid),
                             fg_req.payload.addr.eq(load_req_addr),
                             fg_req.payload.len.eq(load_req_len)]
            for unit_mode, unit in streamers:
                with m.Case(unit_mode):
                    wiring.connect(m, unit.rd_req, fg_req)
        m.d.comb += load_gb.i.payload.eq(fg_data.payload)
        for _, unit in streamers:
            m.d.comb += unit.rd_data.payload.eq(fg_data.payload)
        fetch_data_ready = Signal()
        with m.Switch(mode):
            with m.Case(M_FETCH):
                m.d.comb += fg_data.ready.eq(fetch_data_ready)
            with m.Case(M_LOAD):
                m.d.comb += [load_gb.i.valid.eq(fg_data.valid),
                             fg_data.ready.eq(load_gb.i.ready)]
            for unit_mode, unit in streamers:
                with m.Case(unit_mode):
                    m.d.comb += [unit.rd_data.valid.eq(fg_data.valid),
                                 fg_data.ready.eq(unit.rd_data.ready)]

        # activation buffer port a / write port
        store_addr = Signal(16)
        store_en = Signal()
        load_waddr = Signal(16)
        with m.Switch(mode):
            with m.Case(M_MM):
                m.d.comb += [act.a_addr.eq(kseq.act_addr0), act.a_en.eq(1)]
            with m.Case(M_VADD):
                m.d.comb += [act.a_addr.eq(oseq.a_addr), act.a_en.eq(oseq.a_en)]
            with m.Case(M_STORE):
                m.d.comb += [act.a_addr.eq(Mux(is_kv, kv_row + kv_koff + kv_d, store_addr)),
                             act.a_en.eq(store_en)]
            for unit_mode, unit in units:
                with m.Case(unit_mode):
                    m.d.comb += [act.a_addr.eq(unit.rd_addr), act.a_en.eq(unit.rd_en)]
        with m.Switch(mode):
            with m.Case(M_LOAD):
                m.d.comb += [act.w_addr.eq(load_waddr), act.w_data.eq(load_gb.o.payload),
                             act.w_en.eq(Mux(load_gb.o.valid, (1 << L) - 1, 0)),
                             load_gb.o.ready.eq(1)]
            for unit_mode, unit in units:
                with m.Case(unit_mode):
                    m.d.comb += [act.w_addr.eq(unit.wr_addr), act.w_data.eq(unit.wr_data),
                                 act.w_en.eq(unit.wr_en)]
            with m.Default():
                m.d.comb += [act.w_addr.eq(oseq.w_addr), act.w_data.eq(oseq.w_data),
                             act.w_en.eq(oseq.w_en)]
        unit_busy = Signal()
        for unit_mode, unit in units:
            m.d.comb += unit.ins.eq(ins)
            if unit is vec:
                m.d.comb += unit.rd_data.eq(act.a_data)
            else:
                m.d.comb += unit.act_rd_data.eq(act.a_data)
            with m.If(mode == unit_mode):
                m.d.comb += unit_busy.eq(unit.busy)
        if tf:
            m.d.comb += attn.pos.eq(self.pos)
        if cfg.ssm:
            m.d.comb += [conv.pos.eq(self.pos), scan.pos.eq(self.pos)]
        if tl:
            with m.If(tlmm.lookup):
                m.d.sync += self.tlmm_busy.eq(self.tlmm_busy + 1)

        # --- counters -------------------------------------------------------------------------
        with m.If(self.running):
            m.d.sync += self.cycles.eq(self.cycles + 1)

        # --- program counter ------------------------------------------------------------------
        pc_beat = Signal(cfg.addr_bits)
        pc_slot = Signal(range(slots))
        fetch_cnt = Signal(range(fetch_beats + 1))
        ibuf = Signal(8 * SB)               # last fetched program super-beat (SB > 32 only)
        ibuf_beat = Signal(cfg.addr_bits)
        ibuf_valid = Signal()

        def advance_pc():
            m.d.sync += self.retired.eq(self.retired + 1)
            if slots > 1:
                with m.If(pc_slot == slots - 1):
                    m.d.sync += [pc_slot.eq(0), pc_beat.eq(pc_beat + 1)]
                with m.Else():
                    m.d.sync += pc_slot.eq(pc_slot + 1)
            else:
                m.d.sync += pc_beat.eq(pc_beat + fetch_beats)

        # LOAD / STORE bookkeeping (in act words; a super-beat is wpb words)
        words_left = Signal(33)     # words still to request (LOAD) / to read (STORE, KVSTORE)
        words_done = Signal(33)     # words written to the buffer (LOAD) / to memory (STORE)
        ext_addr = Signal(cfg.addr_bits)
        big = words_left >= LOAD_BURST_BEATS * wpb

        # STORE: buffer reads -> L-to-SB gearbox -> write beats
        s1_valid = Signal()
        s1_zero = Signal()              # KVSTORE: a padding word of a position block
        s_adv = Signal()
        m.d.comb += [
            s_adv.eq(~s1_valid | store_gb.i.ready),
            store_gb.i.valid.eq(s1_valid),
            store_gb.i.payload.eq(Mux(s1_zero, 0, act.a_data)),
            self.wr.payload.addr.eq(ext_addr),
            self.wr.payload.data.eq(store_gb.o.payload),
        ]
        store_issue = Signal()
        with m.If(mode == M_STORE):
            m.d.comb += [
                store_en.eq(s_adv),
                store_issue.eq(s_adv & (words_left != 0)),
                self.wr.valid.eq(store_gb.o.valid),
                store_gb.o.ready.eq(self.wr.ready),
            ]
        with m.If(s_adv):
            m.d.sync += [s1_valid.eq(store_issue), s1_zero.eq(is_kv & kv_pad)]

        # POS-relative LOAD/STORE and GATHER rows: one registered multiplier (addr_bits x 16),
        # POS * pos_stride or id * stride, settled one cycle after its operands
        is_gather = opcode == isa.Opcode.GATHER
        id_reg = Signal(32)             # the current GATHER row's token id
        id_beat = Signal(cfg.addr_bits)  # super-beat of the next id
        id_slot = Signal(range(id_slots))
        id_cnt = Signal(range(id_beats + 1))
        # the ids' super-beat: rows b with (4b) % SB != 0 take their id from it without a read
        # (the ISA model counts ceil(4 rows / SB) super-beats of ids)
        idbuf = Signal(8 * SB) if id_slots > 1 else None
        gather_row = Signal(16)
        gather_act = Signal(16)         # act word of the current row
        prod = Signal(cfg.addr_bits)
        if tf:
            ab = cfg.addr_bits
            m.d.sync += prod.eq(Mux(is_gather, id_reg[:ab], self.pos[:ab])
                                * Mux(is_gather, ga.stride, ld.pos_stride))

        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += mode.eq(M_NONE)
                with m.If(self.start):
                    m.d.sync += [
                        self.running.eq(1), self.error.eq(0),
                        self.cycles.eq(0), self.mpe_busy.eq(0), self.tlmm_busy.eq(0),
                        self.retired.eq(0),
                        pc_beat.eq(self.prog_base), pc_slot.eq(0), ibuf_valid.eq(0),
                        pf_pending.eq(0),
                        mode.eq(M_FETCH), fetch_cnt.eq(0),
                    ]
                    m.next = "FETCH_REQ"

            with m.State("FETCH_REQ"):
                if slots > 1:
                    # the last fetched super-beat holds the next instructions of a straight-line
                    # program (8 per beat at SB = 256): no ~35-cycle memory round trip for them
                    with m.If(ibuf_valid & (ibuf_beat == pc_beat)):
                        m.d.sync += [ins.eq(ibuf.word_select(pc_slot, INSTR_BITS)),
                                     mode.eq(M_NONE)]
                        m.next = "DECODE"
                    with m.Else():
                        m.d.comb += [fetch_req_valid.eq(1), fetch_req_addr.eq(pc_beat)]
                        with m.If(fg_req.ready):
                            m.next = "FETCH_DATA"
                else:
                    m.d.comb += [fetch_req_valid.eq(1), fetch_req_addr.eq(pc_beat)]
                    with m.If(fg_req.ready):
                        m.next = "FETCH_DATA"

            with m.State("FETCH_DATA"):
                m.d.comb += fetch_data_ready.eq(1)
                with m.If(fg_data.valid):
                    if slots > 1:
                        m.d.sync += [
                            ins.eq(fg_data.payload.word_select(pc_slot, INSTR_BITS)),
                            ibuf.eq(fg_data.payload), ibuf_beat.eq(pc_beat),
                            ibuf_valid.eq(1),
                        ]
                    elif fetch_beats > 1:
                        m.d.sync += ins.eq(Cat(ins[8 * SB:], fg_data.payload))
                    else:
                        m.d.sync += ins.eq(fg_data.payload)
                    with m.If(fetch_cnt == fetch_beats - 1):
                        m.d.sync += [fetch_cnt.eq(0), mode.eq(M_NONE)]
                        m.next = "DECODE"
                    with m.Else():
                        m.d.sync += fetch_cnt.eq(fetch_cnt + 1)

            with m.State("DECODE"):
                # total_rows is registered from the fields: settles in this cycle
                m.d.sync += [words_left.eq(f_b), words_done.eq(0),
                             ext_addr.eq(f_ext), load_waddr.eq(f_a), store_addr.eq(f_a),
                             kv_row.eq(f_a), kv_koff.eq(0), kv_d.eq(0), kv_k.eq(0),
                             kv_beat.eq(0), kv_wb.eq(0), kv_issued.eq(0), kv_rows_left.eq(f_rows)]
                with m.Switch(opcode):
                    with m.Case(isa.Opcode.END):
                        m.d.sync += self.retired.eq(self.retired + 1)
                        m.next = "FINISH"
                    with m.Case(isa.Opcode.LOAD):
                        with m.If(f_pos):
                            if tf:
                                m.next = "POS_ADDR"
                            else:
                                m.d.sync += self.error.eq(isa.ERROR_ILLEGAL_OPCODE)
                                m.next = "FINISH"
                        with m.Else():
                            m.d.sync += mode.eq(M_LOAD)
                            m.next = "LOAD"
                    with m.Case(isa.Opcode.STORE):
                        with m.If(f_pos):
                            if tf:
                                m.d.sync += ibuf_valid.eq(0)
                                m.next = "POS_ADDR"
                            else:
                                m.d.sync += self.error.eq(isa.ERROR_ILLEGAL_OPCODE)
                                m.next = "FINISH"
                        with m.Else():
                            # a STORE may overwrite the program: forget the buffered beat
                            m.d.sync += [mode.eq(M_STORE), ibuf_valid.eq(0)]
                            m.next = "STORE"
                    with m.Case(isa.Opcode.MATMUL):
                        with m.If(legal & (~pf_pending | (pf_fields == ring_fields))):
                            m.d.sync += [pf_hit.eq(pf_pending), pf_pending.eq(0)]
                            m.next = "MM_START"
                        with m.Else():
                            m.d.sync += self.error.eq(isa.ERROR_ILLEGAL_MODE)
                            m.next = "FINISH"
                    with m.Case(isa.Opcode.VADD):
                        m.d.sync += mode.eq(M_VADD)
                        m.d.comb += oseq.start_vadd.eq(1)
                        m.next = "WAIT"
                    if tf:
                        with m.Case(isa.Opcode.PREFETCH):
                            with m.If(legal & ~pf_pending):
                                m.next = "PF_START"
                            with m.Else():
                                m.d.sync += self.error.eq(isa.ERROR_ILLEGAL_MODE)
                                m.next = "FINISH"
                        with m.Case(isa.Opcode.GATHER):
                            m.d.sync += [mode.eq(M_FETCH), gather_row.eq(0),
                                         gather_act.eq(ga.a), id_beat.eq(ga.ids), id_slot.eq(0),
                                         id_cnt.eq(0)]
                            m.next = "G_REQ"
                        with m.Case(isa.Opcode.KVSTORE):
                            # a KVSTORE may overwrite the program: forget the buffered beat
                            m.d.sync += ibuf_valid.eq(0)
                            m.next = "KV_START"
                    for unit_mode, unit in units:       # an execution unit's opcodes
                        with m.Case(*unit_opcodes[unit_mode]):
                            m.d.sync += mode.eq(unit_mode)
                            m.d.comb += unit.start.eq(1)
                            m.next = "UNIT"
                    with m.Default():
                        m.d.sync += self.error.eq(isa.ERROR_ILLEGAL_OPCODE)
                        m.next = "FINISH"

            with m.State("LOAD"):
                m.d.comb += [
                    load_req_valid.eq(words_left != 0),
                    load_req_addr.eq(ext_addr),
                    load_req_len.eq(Mux(big, LOAD_BURST_BEATS, 1)),
                ]
                with m.If(fg_req.valid & fg_req.ready):
                    m.d.sync += [
                        words_left.eq(words_left - Mux(big, LOAD_BURST_BEATS * wpb, wpb)),
                        ext_addr.eq(ext_addr + Mux(big, LOAD_BURST_BEATS, 1)),
                    ]
                with m.If(load_gb.o.valid):
                    m.d.sync += [load_waddr.eq(load_waddr + 1), words_done.eq(words_done + 1)]
                with m.If(words_done == f_b):
                    m.d.sync += mode.eq(M_FETCH)
                    if tf:
                        with m.If(is_gather):
                            m.d.sync += [gather_row.eq(gather_row + 1),
                                         gather_act.eq(gather_act + ga.n)]
                            m.next = "G_REQ"
                        with m.Else():
                            advance_pc()
                            m.next = "FETCH_REQ"
                    else:
                        advance_pc()
                        m.next = "FETCH_REQ"

            with m.State("STORE"):
                with m.If(store_issue):
                    m.d.sync += store_addr.eq(store_addr + 1)
                    if tf:
                        with m.If(is_kv):
                            self._kv_step(m, kv, kvs.slots, kvs.hd_words, kvs.words,
                                          kvs.pos_stride, wpb, words_left)
                        with m.Else():
                            m.d.sync += words_left.eq(words_left - 1)
                    else:
                        m.d.sync += words_left.eq(words_left - 1)
                with m.If(self.wr.valid & self.wr.ready):
                    m.d.sync += [ext_addr.eq(ext_addr + 1), words_done.eq(words_done + wpb)]
                done = words_done == f_b
                if tf:
                    done = Mux(is_kv, (words_left == 0) & (words_done == kv_issued), done)
                with m.If(done):
                    m.d.sync += mode.eq(M_FETCH)
                    advance_pc()
                    m.next = "FETCH_REQ"

            with m.State("MM_START"):
                m.d.sync += mode.eq(M_MM)
                m.d.comb += [ring.start.eq(~pf_hit), kseq.start.eq(1), oseq.start_mm.eq(1)]
                m.next = "WAIT"

            if tf:
                with m.State("PF_START"):
                    # total_rows has settled; the ring streams from here on, beside the next
                    # instructions, until its MATMUL takes the entries
                    m.d.comb += ring.start.eq(1)
                    m.d.sync += [pf_fields.eq(ring_fields), pf_pending.eq(1), mode.eq(M_FETCH)]
                    advance_pc()
                    m.next = "FETCH_REQ"

            with m.State("WAIT"):
                # a VADD leaves the ring alone: it may be streaming a PREFETCHed MATMUL's weights
                with m.If(~kseq.busy & ~oseq.busy & (ring.idle | (mode == M_VADD))):
                    m.d.sync += mode.eq(M_FETCH)
                    advance_pc()
                    m.next = "FETCH_REQ"

            if tf:
                with m.State("KV_START"):
                    # words_left: nonzero until the last row's block is issued (_kv_step); a
                    # KVSTORE of no rows or an empty block writes nothing
                    m.d.sync += words_left.eq((kvs.rows != 0) & (kvs.pos_stride != 0))
                    with m.If(f_pos):
                        m.next = "POS_ADDR"
                    with m.Else():
                        m.d.sync += mode.eq(M_STORE)
                        m.next = "STORE"

                with m.State("POS_ADDR"):
                    # prod = POS * pos_stride has settled
                    m.d.sync += [ext_addr.eq(f_ext + prod),
                                 mode.eq(Mux(opcode == isa.Opcode.LOAD, M_LOAD, M_STORE))]
                    with m.If(opcode == isa.Opcode.LOAD):
                        m.next = "LOAD"
                    with m.Else():
                        m.next = "STORE"

                # GATHER: per row, read the id's super-beat(s), check it, LOAD the table row
                with m.State("G_REQ"):
                    with m.If(gather_row == ga.rows):
                        advance_pc()
                        m.next = "FETCH_REQ"
                    if id_slots > 1:
                        with m.Elif(id_slot != 0):
                            m.d.sync += id_reg.eq(idbuf.word_select(id_slot, 32))
                            with m.If(id_slot == id_slots - 1):
                                m.d.sync += [id_slot.eq(0), id_beat.eq(id_beat + 1)]
                            with m.Else():
                                m.d.sync += id_slot.eq(id_slot + 1)
                            m.next = "G_CHECK"
                    with m.Else():
                        m.d.comb += [fetch_req_valid.eq(1), fetch_req_addr.eq(id_beat),
                                     fetch_req_len.eq(id_beats)]
                        with m.If(fg_req.ready):
                            m.next = "G_DATA"

                with m.State("G_DATA"):
                    m.d.comb += fetch_data_ready.eq(1)
                    with m.If(fg_data.valid):
                        if id_beats == 1:    # id_slot is 0 here
                            m.d.sync += id_reg.eq(fg_data.payload[:32])
                        else:       # SB < 4: the id spans id_beats super-beats, low first
                            m.d.sync += id_reg.eq(Cat(id_reg[8 * SB:], fg_data.payload))
                        with m.If(id_cnt == id_beats - 1):
                            m.d.sync += id_cnt.eq(0)
                            if id_slots > 1:
                                m.d.sync += [idbuf.eq(fg_data.payload), id_slot.eq(1)]
                            else:
                                m.d.sync += id_beat.eq(id_beat + id_beats)
                            m.next = "G_CHECK"
                        with m.Else():
                            m.d.sync += id_cnt.eq(id_cnt + 1)

                with m.State("G_CHECK"):
                    # prod = id * stride settles in this cycle
                    with m.If(id_reg >= ga.table_rows):
                        m.d.sync += [self.error.eq(isa.ERROR_GATHER_RANGE), mode.eq(M_NONE)]
                        m.next = "FINISH"
                    with m.Else():
                        m.next = "G_ADDR"

                with m.State("G_ADDR"):
                    m.d.sync += [ext_addr.eq(ga.ext + prod), words_left.eq(ga.n),
                                 words_done.eq(0), load_waddr.eq(gather_act), mode.eq(M_LOAD)]
                    m.next = "LOAD"

            if units:
                with m.State("UNIT"):
                    # the unit raised busy in the cycle after start; it owns the buffer ports
                    # (and, for ATTN and TMATMUL, the memory read streams) until busy falls
                    with m.If(~unit_busy):
                        m.d.sync += mode.eq(M_FETCH)
                        advance_pc()
                        m.next = "FETCH_REQ"

            with m.State("FINISH"):
                # a run that ends with a PREFETCH pending (an error stop) lets the ring's reads
                # finish first: it stops by itself once its room is used up
                with m.If(arb.idle & (ring.idle | ring.starved)):
                    m.d.comb += self.done.eq(1)
                    m.d.sync += [self.running.eq(0), mode.eq(M_NONE)]
                    m.next = "IDLE"

        return m
