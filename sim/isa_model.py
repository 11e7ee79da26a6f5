"""ISA functional model: executes a program on a memory image exactly as docs/architecture.md says.

The transformer instructions (GATHER, RMSNORM, ROPE, SILUMUL, ATTN, KVSTORE; LOAD/STORE with
the POS flag) are defined the same way: each calls the kernel of :mod:`hwflow.golden.llm` on the
bytes the doc's fields name ("Instruction set", "Transformer instructions"). The POS register
is an argument of :class:`IsaModel` (and of :meth:`IsaModel.run`). Memory traffic is counted per
region kind ("Memory traffic") when the model is given the memory map.

The ternary instructions ("Ternary path") are ABSQUANT (``golden.ternary.absmax_quant``)
and TMATMUL: its weight block is decoded by
:func:`hwflow.mapping.ternary_format.unpack_ternary_block`, the group indices are looked up in
the tables ``golden.ternary.group_table`` defines, and the epilogue is
``golden.int8.requantize(acc * m, ...)``; SILUMUL with flag RELU2 is ``golden.llm.relu2_mul``.

SILUMUL's flags pick its kernel: none ``golden.llm.silu_mul``, GELU ``golden.llm.gate_mul(...,
"gelu_tanh")`` (Gemma's gate), TANH ``golden.llm.tanh_cap(a, mult, shift)`` (the final logit
cap: unary, ``b`` is neither read nor checked). Two or more of RELU2, GELU and TANH are
undefined and raise :class:`IsaError` (the mapper never emits them; the vector unit would take
TANH over GELU over RELU2).

This is the executable form of the contract between the mapper and the RTL. The arithmetic is not
re-implemented here: every number comes from :mod:`hwflow.golden.int8` (``matmul``,
``requantize``, ``residual_add``), and instructions are decoded with :func:`hwflow.hw.isa.decode`,
so the model, the golden reference and the hardware decoder cannot drift apart. A MATMUL's
weight block is decoded by :func:`hwflow.mapping.weight_format.unpack_weight_block`, the exact
inverse of the mapper's packer, into the dense int8 weight every tile encodes (N:M, int4 or
both): whatever the format, the result is ``golden.matmul`` on that weight.

External addresses are super-beat indices into the flat byte image; how super-beats are striped
over the memory ports does not matter at this level (the RTL simulator splits the image).

Every instruction is executed with whole-array numpy operations (no Python loop over rows,
channels or words), so a 1024 x 1024 GEMV layer runs in a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwflow.golden import int8 as golden
from hwflow.golden import llm as golden_llm
from hwflow.golden import ssm as golden_ssm
from hwflow.golden import ternary as golden_t
from hwflow.hw.config import AccelConfig
from hwflow.hw.contract import conv_record_bytes, scan_record_bytes, tlmm_passes
from hwflow.hw.isa import (
    ERROR_GATHER_RANGE,
    ERROR_ILLEGAL_MODE,
    ERROR_ILLEGAL_OPCODE,
    FLAG_GAMMA,
    FLAG_GELU,
    FLAG_INT4,
    FLAG_POS,
    FLAG_RELU2,
    FLAG_TANH,
    INSTR_BYTES,
    Instr,
    Opcode,
    decode,
)
from hwflow.mapping.ssm_format import block_bytes, unpack_conv, unpack_scan
from hwflow.mapping.ternary_format import block_layout, row_read_words, unpack_ternary_block
from hwflow.mapping.traffic import TRAFFIC_KEYS, TrafficCount, fetched_beats
from hwflow.mapping.weight_format import (
    LayerFormat,
    channels_per_tile,
    is_legal,
    ring_reserve,
    tile_mem_rows,
    unpack_weight_block,
)

__all__ = [
    "IsaError",
    "IllegalInstruction",
    "IllegalMode",
    "AddressError",
    "GatherRangeError",
    "TRAFFIC_KEYS",
    "IsaStats",
    "IsaModel",
    "run_program",
]


#: Instructions of the transformer path (illegal on an engine built without it).
_TRANSFORMER_OPS = (Opcode.GATHER, Opcode.ROPE, Opcode.ATTN, Opcode.KVSTORE, Opcode.PREFETCH)
#: Instructions of the vector unit, built with the transformer path or the TLMM engine
#: (``AccelConfig.vector_unit``).
_VECTOR_OPS = (Opcode.RMSNORM, Opcode.SILUMUL, Opcode.ABSQUANT)
#: Instructions of the state-space units (``AccelConfig.ssm``).
_SSM_OPS = (Opcode.CONV, Opcode.SCAN, Opcode.HADAMARD)


class IsaError(Exception):
    """A program did something the architecture does not define.

    Attributes
    ----------
    pc : int
        Byte address in the image of the offending instruction (``None`` if not known).
    index : int
        Index of the offending instruction counted from ``prog_base`` (``None`` if not known).
    """

    def __init__(self, message: str, pc: int | None = None, index: int | None = None):
        where = "" if pc is None else f"instruction #{index} at byte 0x{pc:x}: "
        super().__init__(where + message)
        self.pc = pc
        self.index = index


class IllegalInstruction(IsaError):
    """Unknown opcode; the hardware stops the run and sets ERROR = 1."""

    error = ERROR_ILLEGAL_OPCODE


class IllegalMode(IsaError):
    """A MATMUL mode (N:M, int4) this engine cannot run; the hardware stops, ERROR = 2."""

    error = ERROR_ILLEGAL_MODE


class AddressError(IsaError):
    """An external or activation-buffer access falls outside the memory it addresses."""


class GatherRangeError(IsaError):
    """A GATHER token id is >= the table's rows; the hardware stops the run, ERROR = 3."""

    error = ERROR_GATHER_RANGE


@dataclass
class IsaStats:
    """Counters of one program run.

    Attributes
    ----------
    retired : int
        Instructions executed, END included (the RTL's RETIRED register counts the same way).
    by_opcode : dict
        Executed instructions per opcode name.
    mpe_kgroups : int
        k-groups fed to the matrix engine: sum over MATMULs of
        ``n_tiles * ceil(rows / 2) * k_words`` (one activation word of a row pair per cycle).
        This is the RTL's MPE_BUSY when the engine is never stalled mid-k-group.
    mac_slots : int
        ``mpe_kgroups * 2 * P * L``: DSP multiply slots used (two per slice per cycle), padding
        included.
    macs_valid : int
        Sum over MATMULs of ``rows * n_out * k_words * L``: dense-equivalent MACs on valid output
        channels (an N:M layer does them in ``1/r`` of the slots; the K padding to a multiple of
        L is still counted, the mapper knows the true K).
    weight_read_bytes : int
        Weight bytes fetched: sum over MATMULs of ``n_tiles * tile_mem_rows * P * L``, and over
        TMATMULs of the parameter super-beats plus the index stream's once per group of up to
        ``tlmm_passes * tlmm_rows`` rows.
    ext_read_bytes, ext_write_bytes : int
        Bytes moved by LOAD, STORE, instruction fetch and weight fetch (weights fetched once
        per MATMUL, as the hardware's tiles-outer loop order does), and by GATHER and ATTN.
    traffic : dict
        Bytes per category (:data:`TRAFFIC_KEYS`), counted with the one traffic rule of
        ``mapping.traffic`` (``instr_accesses``, ``fetched_beats``, ``TrafficCount``): whole
        super-beats, classified by the memory-map region holding an access's first super-beat.
    tlmm_lookups : int
        TLMM lookup records: sum over TMATMULs of ``rows * ceil(k_groups / T) * ceil(n_out /
        Q)``; each record is ``T * Q`` lookups (``T * Q * G`` ternary MACs, padding included).
    tlmm_busy_cycles : int
        Cycles in which the TLMM engine did its lookups: one per record of a pass of up to
        ``R = tlmm_rows`` rows (``T * Q`` lookups for each of the pass's rows), so ``passes``
        (:func:`tlmm_passes`) times a row's records; the RTL's TLMM_BUSY register (0x208/0x20C)
        when the engine is never stalled mid-record.
    tlmm_macs_valid : int
        Sum over TMATMULs of ``rows * n_out * k_groups * G``: ternary MACs on valid output
        channels (K padded to whole groups).
    """

    retired: int = 0
    by_opcode: dict = field(default_factory=dict)
    mpe_kgroups: int = 0
    mac_slots: int = 0
    macs_valid: int = 0
    weight_read_bytes: int = 0
    ext_read_bytes: int = 0
    ext_write_bytes: int = 0
    traffic: dict = field(default_factory=lambda: dict.fromkeys(TRAFFIC_KEYS, 0))
    tlmm_lookups: int = 0
    tlmm_busy_cycles: int = 0
    tlmm_macs_valid: int = 0

    def to_dict(self) -> dict:
        return {
            "retired": self.retired,
            "by_opcode": dict(self.by_opcode),
            "mpe_kgroups": self.mpe_kgroups,
            "mac_slots": self.mac_slots,
            "macs_valid": self.macs_valid,
            "weight_read_bytes": self.weight_read_bytes,
            "ext_read_bytes": self.ext_read_bytes,
            "ext_write_bytes": self.ext_write_bytes,
            "traffic": dict(self.traffic),
            "tlmm_lookups": self.tlmm_lookups,
            "tlmm_busy_cycles": self.tlmm_busy_cycles,
            "tlmm_macs_valid": self.tlmm_macs_valid,
        }


def _overlap(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 < b1 and b0 < a1


class IsaModel:
    """State of the accelerator as the ISA sees it: external memory image and activation buffer.

    Parameters
    ----------
    cfg : AccelConfig
        Accelerator parameters (P, L, SB, act_depth, addr_bits are used).
    image : bytes
        Initial external memory image (flat, little-endian byte address space). It is copied.
    pos : int
        The POS register (control register 0x200): sequence position of the first activation
        row; :meth:`run` may override it per run.
    regions : MemoryMap or list of (int, int, str), optional
        Where the traffic counters classify accesses: a ``mapping.memory_image.MemoryMap``
        or ``(start_sb, end_sb, kind)`` ranges (end exclusive). Kinds ``weights``, ``kv``,
        ``activations``, ``io`` (also ``input``/``output``) and ``program`` are counted;
        anything else, or no map, counts as ``other``.

    Attributes
    ----------
    mem : numpy.ndarray
        uint8 copy of the image, updated by STORE.
    act : numpy.ndarray
        int8 activation buffer of shape ``(act_depth, L)``; starts zeroed (the RTL's buffer is
        zero after configuration, and a program must not read words it did not write anyway).
    conv_hist : numpy.ndarray
        The causal conv unit's history, int8 ``(conv_words, conv_taps - 1, L)``: per beat the
        last ``K - 1`` inputs of its ``L`` channels, oldest first (kept across runs).
    ssm_state : numpy.ndarray
        The scan unit's state, int64 ``(ssm_channels, ssm_states)`` holding int32 values
        (kept across runs).
    stats : IsaStats
    """

    def __init__(self, cfg: AccelConfig, image: bytes, pos: int = 0, regions=None):
        self.cfg = cfg
        self.mem = np.frombuffer(bytes(image), dtype=np.uint8).copy()
        self.act = np.zeros((cfg.act_depth, cfg.chain_len), dtype=np.int8)
        self.conv_hist = np.zeros((cfg.conv_words, max(0, cfg.conv_taps - 1), cfg.chain_len),
                                  dtype=np.int8)
        self.ssm_state = np.zeros((cfg.ssm_channels, cfg.ssm_states), dtype=np.int64)
        self.stats = IsaStats()
        self.pos = int(pos)
        self._regions = regions
        self._count = TrafficCount(cfg, regions)
        self.stats.traffic = self._count.counts
        self._pc = 0
        self._index = 0
        self._fetched_sb = None
        self._prefetched = None     # the ring fields of a pending PREFETCH

    def reset_stats(self) -> None:
        """Start new counters (the memory image and the activation buffer are kept)."""
        self.stats = IsaStats()
        self._count = TrafficCount(self.cfg, self._regions)
        self.stats.traffic = self._count.counts

    def write(self, byte_addr: int, data: bytes) -> None:
        """Host write into external memory (e.g. token ids before a run)."""
        data = np.frombuffer(bytes(data), dtype=np.uint8)
        if byte_addr < 0 or byte_addr + data.size > self.mem.size:
            raise AddressError(f"host write of {data.size} B at 0x{byte_addr:x} outside the "
                               f"{self.mem.size}-byte image")
        self.mem[byte_addr: byte_addr + data.size] = data

    def read(self, byte_addr: int, nbytes: int) -> bytes:
        """Host read from external memory (e.g. logits after a run)."""
        if byte_addr < 0 or byte_addr + nbytes > self.mem.size:
            raise AddressError(f"host read of {nbytes} B at 0x{byte_addr:x} outside the "
                               f"{self.mem.size}-byte image")
        return self.mem[byte_addr: byte_addr + nbytes].tobytes()

    # -- helpers -----------------------------------------------------------------------------

    def _fail(self, cls: type, message: str):
        raise cls(message, self._pc, self._index)

    def _ext_range(self, sb: int, nbytes: int, what: str) -> tuple[int, int]:
        """Byte range of ``nbytes`` from super-beat ``sb``, checked against the image and the
        port address width (``2**addr_bits`` beats per port)."""
        cfg = self.cfg
        nbeats = -(-nbytes // cfg.beat_bytes)
        if sb + nbeats > (1 << cfg.addr_bits):
            self._fail(AddressError, f"{what}: super-beats {sb}..{sb + nbeats - 1} exceed the "
                       f"{cfg.addr_bits}-bit port address space")
        lo = sb * cfg.beat_bytes
        hi = lo + nbytes
        if hi > self.mem.size:
            self._fail(AddressError, f"{what}: bytes 0x{lo:x}..0x{hi - 1:x} (super-beat {sb}, "
                       f"{nbytes} B) lie outside the {self.mem.size}-byte image")
        return lo, hi

    def _act_range(self, word: int, nwords: int, what: str) -> tuple[int, int]:
        if word + nwords > self.cfg.act_depth:
            self._fail(AddressError, f"{what}: activation words {word}..{word + nwords - 1} "
                       f"exceed act_depth={self.cfg.act_depth}")
        return word, word + nwords

    def _act_rows(self, base: int, rows: int, stride: int, width: int, what: str) -> np.ndarray:
        """Rows of ``width`` words, ``stride`` words apart, as an int8 array ``[rows, width*L]``."""
        if rows == 0 or width == 0:
            return np.zeros((rows, width * self.cfg.chain_len), dtype=np.int8)
        self._act_range(base, (rows - 1) * stride + width, what)
        idx = base + np.arange(rows)[:, None] * stride + np.arange(width)[None, :]
        return self.act[idx].reshape(rows, width * self.cfg.chain_len)

    def _write_rows(self, base: int, stride: int, values: np.ndarray, what: str) -> None:
        """Write int8 rows ``[rows, words*L]`` to the buffer, row b at ``base + b*stride``."""
        L = self.cfg.chain_len
        rows, nbytes = values.shape
        width = nbytes // L
        if rows == 0 or width == 0:
            return
        self._act_range(base, (rows - 1) * stride + width, what)
        idx = base + np.arange(rows)[:, None] * stride + np.arange(width)[None, :]
        self.act[idx] = values.reshape(rows, width, L)

    def _span(self, base: int, rows: int, stride: int, width: int) -> tuple[int, int]:
        if rows == 0 or width == 0:
            return base, base
        return base, base + (rows - 1) * stride + width

    # -- instructions --------------------------------------------------------------------------

    def _load_store(self, ins: Instr) -> None:
        cfg = self.cfg
        L, SB = cfg.chain_len, cfg.beat_bytes
        name = ins.op.name
        nbytes = ins.b * L
        # Transfers are whole super-beats on every port (architecture.md, "External memory").
        if nbytes % SB:
            self._fail(IsaError, f"{name}: n={ins.b} words = {nbytes} B is not a multiple of "
                       f"the {SB}-byte super-beat")
        ext = ins.ext + (self.pos * ins.pos_stride if ins.flags & FLAG_POS else 0)
        lo, hi = self._ext_range(ext, nbytes, name)
        a0, a1 = self._act_range(ins.a, ins.b, name)
        if ins.op == Opcode.LOAD:
            self.act[a0:a1] = self.mem[lo:hi].view(np.int8).reshape(-1, L)
            self.stats.ext_read_bytes += nbytes
        else:
            self.mem[lo:hi] = self.act[a0:a1].reshape(-1).view(np.uint8)
            self.stats.ext_write_bytes += nbytes
            # a STORE may overwrite the program: the controller drops its fetched super-beat
            self._fetched_sb = None

    def _mode(self, ins: Instr) -> LayerFormat:
        """The MATMUL's weight format; IllegalMode if this engine cannot run it."""
        m, r = 1 << ins.lgm, 1 << ins.lgr
        wbits = 4 if ins.flags & FLAG_INT4 else 8
        name = f"int{wbits} mode lgm={ins.lgm} lgr={ins.lgr}"
        try:
            fmt = LayerFormat(m // r, m, wbits)
        except ValueError:
            fmt = None
        if fmt is None or r > m or not is_legal(self.cfg, fmt):
            cfg = self.cfg
            self._fail(IllegalMode, f"MATMUL: {name} is not legal on this engine (L="
                       f"{cfg.chain_len}, G={cfg.groups}, sparse={cfg.sparse}, int4={cfg.int4})")
        return fmt

    def _weights(self, ins: Instr, fmt: LayerFormat):
        """Decode the weight block: (w int8 [n_tiles*C, k_words*L], bias, mult, its bytes)."""
        cfg, kw, nt = self.cfg, ins.k_words, ins.n_tiles
        rows = tile_mem_rows(cfg, fmt, kw)
        if ins.tile_mem_rows != rows:
            self._fail(IsaError, f"MATMUL: tile_mem_rows={ins.tile_mem_rows}, but a {fmt.label} "
                       f"tile of k_words={kw} has {rows} memory rows")
        # The prefetcher must hold two tiles' reservation to overlap fetch and compute; the
        # mapper guarantees it (docs/architecture.md, "Weight ring").
        need = 2 * ring_reserve(cfg, fmt, kw)
        if need > cfg.weight_depth:
            self._fail(IsaError, f"MATMUL: a {fmt.label} tile of k_words={kw} reserves "
                       f"{need // 2} ring entries, twice that exceeds weight_depth="
                       f"{cfg.weight_depth}")
        lo, hi = self._ext_range(ins.ext, nt * rows * cfg.row_bytes, "MATMUL weights")
        try:
            w, bias, mult = unpack_weight_block(cfg, fmt, self.mem[lo:hi], kw, nt)
        except ValueError as e:
            self._fail(IsaError, f"MATMUL: malformed {fmt.label} weight block: {e}")
        return w, bias, mult, hi - lo

    @staticmethod
    def _ring_fields(ins: Instr) -> tuple:
        """What the weight ring streams for a MATMUL or PREFETCH: the block, its tiling, its
        format (and nothing for ``rows`` = 0)."""
        return (ins.ext, ins.k_words, ins.n_tiles, ins.tile_mem_rows, ins.lgm, ins.lgr,
                ins.int4, ins.rows == 0)

    def _prefetch(self, ins: Instr) -> None:
        """PREFETCH: the next MATMUL's weights start streaming into the ring (no effect on
        the state; the MATMUL counts the bytes). The hardware stops with ERROR = 2 at an
        illegal mode, at a second PREFETCH before the MATMUL, and at a MATMUL of other weights
        (docs/architecture.md, "Weight prefetch")."""
        if self._prefetched is not None:
            self._fail(IllegalMode, "PREFETCH while the previous PREFETCH's MATMUL has not run")
        self._mode(ins)
        if ins.k_words == 0 or ins.tile_mem_rows * (2 if ins.int4 else 1) > self.cfg.weight_depth:
            self._fail(IllegalMode, f"PREFETCH: k_words={ins.k_words}, tile_mem_rows="
                       f"{ins.tile_mem_rows}: no MATMUL tile of this engine")
        self._prefetched = self._ring_fields(ins)

    def _matmul(self, ins: Instr) -> None:
        cfg = self.cfg
        if self._prefetched is not None and self._prefetched != self._ring_fields(ins):
            self._fail(IllegalMode, "MATMUL: its weights are not those of the pending PREFETCH")
        self._prefetched = None
        P, L = cfg.chains, cfg.chain_len
        rows, kw, nt = ins.rows, ins.k_words, ins.n_tiles
        n_out, out_words = ins.n, ins.words
        fmt = self._mode(ins)
        C = channels_per_tile(cfg, fmt)
        if n_out > nt * C:
            self._fail(IsaError, f"MATMUL: n_out={n_out} > n_tiles*C = {nt * C} ({fmt.label})")
        if n_out > out_words * L:
            self._fail(IsaError, f"MATMUL: n_out={n_out} > out_words*L = {out_words * L}")
        if kw == 0:
            self._fail(IsaError, "MATMUL: k_words = 0")
        # The hardware re-reads x for every tile while it already writes out (tiles outer), so an
        # output that overlaps x has no defined result; res is read element by element at the
        # position being written, so out == res is fine.
        xw = kw + ins.x_pad                          # x rows are xw words apart
        if _overlap(*self._span(ins.out, rows, out_words, out_words),
                    *self._span(ins.a, rows, xw, kw)):
            self._fail(IsaError, "MATMUL: output rows overlap the input rows x")
        w, bias, mult, nbytes = self._weights(ins, fmt)

        x = self._act_rows(ins.a, rows, xw, kw, "MATMUL x")
        acc = golden.matmul(x, w[:n_out])
        res = None
        if ins.residual:
            res = self._act_rows(ins.b, rows, out_words, out_words, "MATMUL res")[:, :n_out]
        y = golden.requantize(acc, bias[:n_out], mult[:n_out], ins.shift, ins.relu,
                              res=res, res_mult=ins.mult_b)
        out = np.zeros((rows, out_words * L), dtype=np.int8)
        out[:, :n_out] = y
        self._write_rows(ins.out, out_words, out, "MATMUL out")

        s = self.stats
        kgroups = nt * -(-rows // 2) * kw            # a row pair per k-group (packed multiply)
        s.mpe_kgroups += kgroups
        s.mac_slots += kgroups * 2 * P * L
        s.macs_valid += rows * n_out * kw * L
        s.weight_read_bytes += nbytes
        s.ext_read_bytes += nbytes

    def _vadd(self, ins: Instr) -> None:
        L = self.cfg.chain_len
        rows, n, words = ins.rows, ins.n, ins.words
        if n > words * L:
            self._fail(IsaError, f"VADD: n={n} > words*L = {words * L}")
        # Each element is read before it is written, so out may be a or b exactly; a partial
        # overlap would make later rows read earlier results, which the model does not define.
        o_span = self._span(ins.out, rows, words, words)
        for src, nm in ((ins.a, "a"), (ins.b, "b")):
            if src != ins.out and _overlap(*o_span, *self._span(src, rows, words, words)):
                self._fail(IsaError, f"VADD: out overlaps {nm} without being equal to it")
        a = self._act_rows(ins.a, rows, words, words, "VADD a")[:, :n]
        b = self._act_rows(ins.b, rows, words, words, "VADD b")[:, :n]
        y = golden.residual_add(a, b, ins.mult_a, ins.mult_b, ins.shift, ins.relu)
        out = np.zeros((rows, words * L), dtype=np.int8)
        out[:, :n] = y
        self._write_rows(ins.out, words, out, "VADD out")

    # -- transformer instructions (docs/architecture.md, "Transformer instructions") -----------

    def _check_out(self, ins: Instr, srcs, words: int) -> None:
        """In-place rule of RMSNORM/SILUMUL: ``out`` may equal an input, not partly overlap it."""
        o_span = self._span(ins.out, ins.rows, words, words)
        for src, nm in srcs:
            if src != ins.out and _overlap(*o_span, *self._span(src, ins.rows, words, words)):
                self._fail(IsaError, f"{ins.op.name}: out overlaps {nm} without being equal to it")

    def _padded(self, y: np.ndarray, words: int) -> np.ndarray:
        out = np.zeros((y.shape[0], words * self.cfg.chain_len), dtype=np.int8)
        out[:, :y.shape[1]] = y
        return out

    def _gather(self, ins: Instr) -> None:
        cfg = self.cfg
        L, SB = cfg.chain_len, cfg.beat_bytes
        rows, n = ins.rows, ins.n
        nbytes = n * L
        if nbytes % SB:
            self._fail(IsaError, f"GATHER: n={n} words = {nbytes} B is not a multiple of the "
                       f"{SB}-byte super-beat")
        id_bytes = -(-4 * rows // SB) * SB
        lo, hi = self._ext_range(ins.ids, id_bytes, "GATHER ids")
        ids = self.mem[lo:lo + 4 * rows].view("<u4").astype(np.int64)
        self.stats.ext_read_bytes += id_bytes
        a0, _ = self._act_range(ins.a, rows * n, "GATHER act")
        for b, tok in enumerate(ids):
            if tok >= ins.table_rows:
                self._fail(GatherRangeError, f"GATHER: row {b} has token id {tok} >= "
                           f"table_rows={ins.table_rows}")
            sb = ins.ext + int(tok) * ins.stride
            lo, hi = self._ext_range(sb, nbytes, "GATHER table")
            self.act[a0 + b * n: a0 + (b + 1) * n] = self.mem[lo:hi].view(np.int8).reshape(n, L)
            self.stats.ext_read_bytes += nbytes

    def _rmsnorm(self, ins: Instr) -> None:
        L, rows, n, words = self.cfg.chain_len, ins.rows, ins.n, ins.words
        if n > words * L:
            self._fail(IsaError, f"RMSNORM: n={n} > words*L = {words * L}")
        self._check_out(ins, ((ins.a, "a"),), words)
        x = self._act_rows(ins.a, rows, words, words, "RMSNORM a")[:, :n]
        gamma = None
        if ins.flags & FLAG_GAMMA:
            gamma = self._act_rows(ins.g, 1, 1, -(-n // L), "RMSNORM gamma")[0, :n]
        y = golden_llm.rmsnorm(x, ins.eps, ins.mult_b, ins.shift, gamma) if rows else x
        self._write_rows(ins.out, words, self._padded(y, words), "RMSNORM out")

    def _silumul(self, ins: Instr) -> None:
        L, rows, n, words = self.cfg.chain_len, ins.rows, ins.n, ins.words
        if n > words * L:
            self._fail(IsaError, f"SILUMUL: n={n} > words*L = {words * L}")
        tables = [nm for f, nm in ((FLAG_RELU2, "RELU2"), (FLAG_GELU, "GELU"), (FLAG_TANH, "TANH"))
                  if ins.flags & f]
        if len(tables) > 1:
            self._fail(IsaError, f"SILUMUL: flags {' and '.join(tables)} together (one table "
                       "flag at most)")
        if ins.flags & FLAG_TANH:
            # unary: b is not read (not even bounds-checked), so out may overlap it
            self._check_out(ins, ((ins.a, "a"),), words)
            x = self._act_rows(ins.a, rows, words, words, "SILUMUL a")[:, :n]
            y = golden_llm.tanh_cap(x, ins.mult_b, ins.shift)
        else:
            self._check_out(ins, ((ins.a, "a (gate)"), (ins.b, "b (up)")), words)
            g = self._act_rows(ins.a, rows, words, words, "SILUMUL a")[:, :n]
            u = self._act_rows(ins.b, rows, words, words, "SILUMUL b")[:, :n]
            act = ("relu2" if ins.flags & FLAG_RELU2 else
                   "gelu_tanh" if ins.flags & FLAG_GELU else "silu")
            y = golden_llm.gate_mul(g, u, ins.mult_b, ins.shift, act)
        self._write_rows(ins.out, words, self._padded(y, words), "SILUMUL out")

    def _rope(self, ins: Instr) -> None:
        L, rows, heads, hd = self.cfg.chain_len, ins.rows, ins.heads, ins.hd
        if hd % 2 or hd == 0:
            self._fail(IsaError, f"ROPE: hd={hd} must be even and > 0")
        if 2 * hd > ins.cs_words * L and rows > 1:
            self._fail(IsaError, f"ROPE: a table row of {2 * hd} B does not fit cs_words="
                       f"{ins.cs_words} words of {L} B")
        if heads and (heads - 1) * ins.head_stride + hd > ins.words * L:
            self._fail(IsaError, f"ROPE: {heads} heads of {hd} B, {ins.head_stride} B apart, "
                       f"exceed the row of words={ins.words} x {L} B")
        if rows == 0 or heads == 0:
            return
        cs_w = -(-2 * hd // L)
        tab = self._act_rows(ins.cs, rows, ins.cs_words, cs_w, "ROPE cs")
        table = tab[:, :2 * hd].view(np.uint8).copy().view("<i2")
        x = self._act_rows(ins.a, rows, ins.words, ins.words, "ROPE a")
        cols = (np.arange(heads)[:, None] * ins.head_stride + np.arange(hd)[None, :]).ravel()
        x[:, cols] = golden_llm.rope(x[:, cols], table, heads, hd)
        self._write_rows(ins.a, ins.words, x, "ROPE a")

    def _attn(self, ins: Instr) -> None:
        """One ATTN pass (docs/architecture.md, "Attention over a head-major KV cache")."""
        cfg = self.cfg
        L, SB = cfg.chain_len, cfg.beat_bytes
        wpb = SB // L
        rows, lanes, grp, slots, hdw = ins.rows, ins.lanes, ins.grp, ins.slots, ins.hd_words
        if lanes == 0 or grp == 0 or hdw == 0 or slots * grp != lanes:
            self._fail(IsaError, f"ATTN: lanes={lanes}, grp={grp}, slots={slots}, "
                       f"hd_words={hdw}: need lanes = slots x grp > 0 and hd_words > 0")
        if lanes > cfg.attn_heads:
            self._fail(IsaError, f"ATTN: {lanes} lanes exceed the unit's attn_heads="
                       f"{cfg.attn_heads}")
        if wpb % slots:
            self._fail(IsaError, f"ATTN: slots={slots} does not divide the {wpb} words of a "
                       "super-beat")
        if slots * hdw > ins.pos_sb * wpb:
            self._fail(IsaError, f"ATTN: {slots} kv heads x {hdw} words exceed a position "
                       f"block of pos_sb={ins.pos_sb} super-beats")
        if lanes * hdw > ins.q_words:
            self._fail(IsaError, f"ATTN: {lanes} heads x {hdw} words exceed q_words="
                       f"{ins.q_words}")
        if rows == 0:
            return
        n_keys = self.pos + rows
        block = ins.pos_sb * SB
        caches = []
        for base, nm in ((ins.ext, "K"), (ins.v_ext, "V")):
            lo, hi = self._ext_range(base, n_keys * block, f"ATTN {nm} cache")
            c = self.mem[lo:hi].view(np.int8).reshape(n_keys, block)[:, :slots * hdw * L]
            # word d * slots + k of a position block is word d of kv head k
            c = c.reshape(n_keys, hdw, slots, L).transpose(0, 2, 1, 3).reshape(n_keys, -1)
            caches.append(c)
            # per query row b the unit reads the position blocks of its keys once for all its
            # lanes (golden.llm.attended: 0..POS+b, or the window's last ones)
            nbytes = golden_llm.attended_total(self.pos, rows, ins.window) * block
            self.stats.ext_read_bytes += nbytes
        q = self._act_rows(ins.a, rows, ins.q_words, lanes * hdw, "ATTN q")
        y = golden_llm.attention(q, caches[0], caches[1], self.pos, lanes, slots, hdw * L,
                                 ins.smul, ins.sshift, ins.omul, ins.shift, window=ins.window,
                                 cap=ins.cap)
        self._write_rows(ins.out, ins.q_words, y, "ATTN out")

    def _kvstore(self, ins: Instr) -> None:
        """KVSTORE: rows of k or v heads into position blocks of a pass's cache region, word
        ``d`` of kv head ``k`` at word ``d * slots + k``, zero padding to the block's end."""
        cfg = self.cfg
        L, SB = cfg.chain_len, cfg.beat_bytes
        rows, slots, hdw, pst = ins.rows, ins.slots, ins.hd_words, ins.pos_stride
        if slots == 0 or hdw == 0 or slots * hdw * L > pst * SB:
            self._fail(IsaError, f"KVSTORE: {slots} heads x {hdw} words do not fit a position "
                       f"block of pos_stride={pst} super-beats")
        if rows == 0:
            return
        ext = ins.ext + (self.pos * pst if ins.flags & FLAG_POS else 0)
        nbytes = rows * pst * SB
        lo, hi = self._ext_range(ext, nbytes, "KVSTORE")
        x = self._act_rows(ins.a, rows, ins.words, slots * hdw, "KVSTORE")
        blocks = np.zeros((rows, pst * SB), dtype=np.int8)
        blocks[:, :slots * hdw * L] = x.reshape(rows, slots, hdw, L).transpose(
            0, 2, 1, 3).reshape(rows, -1)
        self.mem[lo:hi] = blocks.reshape(-1).view(np.uint8)
        self.stats.ext_write_bytes += nbytes
        self._fetched_sb = None             # as STORE: the program may have been overwritten

    # -- ternary instructions (docs/architecture.md, "Ternary path") ---------------------------

    def _m_bytes(self, m_addr: int, rows: int, what: str) -> tuple[int, int]:
        """Byte range ``[lo, hi)`` of the rows' u16 absmax values in the flat activation buffer."""
        L = self.cfg.chain_len
        self._act_range(m_addr, -(-2 * rows // L), what)
        return m_addr * L, m_addr * L + 2 * rows

    def _absquant(self, ins: Instr) -> None:
        L, rows, n, words = self.cfg.chain_len, ins.rows, ins.n, ins.words
        if n > words * L:
            self._fail(IsaError, f"ABSQUANT: n={n} > words*L = {words * L}")
        self._check_out(ins, ((ins.a, "a"),), words)
        m_lo, m_hi = self._m_bytes(ins.m_addr, rows, "ABSQUANT m")
        o0, o1 = self._span(ins.out, rows, words, words)
        if rows and _overlap(m_lo, m_hi, o0 * L, o1 * L):
            self._fail(IsaError, "ABSQUANT: the m area overlaps the output rows")
        x = self._act_rows(ins.a, rows, words, words, "ABSQUANT a")[:, :n]
        gamma = None
        if ins.flags & FLAG_GAMMA:
            gamma = self._act_rows(ins.g, 1, 1, -(-n // L), "ABSQUANT gamma")[0, :n]
        xq, m = golden_t.absmax_quant(x, gamma)
        self._write_rows(ins.out, words, self._padded(xq, words), "ABSQUANT out")
        if rows:
            flat = self.act.reshape(-1).view(np.uint8)
            flat[m_lo:m_hi] = m.astype("<u2").view(np.uint8)

    def _tmatmul(self, ins: Instr) -> None:
        cfg = self.cfg
        L, SB = cfg.chain_len, cfg.beat_bytes
        G, T, Q = cfg.tlmm_g, cfg.tlmm_t, cfg.tlmm_q
        rows, kg, n_out, xw, words = ins.rows, ins.k_groups, ins.n_out, ins.x_words, ins.words
        if kg == 0 or n_out == 0:
            self._fail(IsaError, f"TMATMUL: k_groups={kg}, n_out={n_out} must be > 0")
        if n_out > cfg.tlmm_acc_depth:
            self._fail(IsaError, f"TMATMUL: n_out={n_out} > tlmm_acc_depth="
                       f"{cfg.tlmm_acc_depth} (the accumulator's depth)")
        if n_out > words * L:
            self._fail(IsaError, f"TMATMUL: n_out={n_out} > words*L = {words * L}")
        lay = block_layout(n_out, kg * G, G, T, Q, SB)
        # the engine reads whole chunks of T*G bytes of every row (bytes past the row's K are
        # looked up with the padding index, so their value does not matter)
        xread = row_read_words(kg * G, G, T, L)
        o_span = self._span(ins.out, rows, words, words)
        if _overlap(*o_span, *self._span(ins.a, rows, xw, xread)):
            self._fail(IsaError, "TMATMUL: output rows overlap the input rows x")
        m_lo, m_hi = self._m_bytes(ins.m_addr, rows, "TMATMUL m")
        if rows and _overlap(m_lo, m_hi, o_span[0] * L, o_span[1] * L):
            self._fail(IsaError, "TMATMUL: the m area overlaps the output rows")

        param_bytes, stream_bytes = lay["param_beats"] * SB, lay["stream_beats"] * SB
        lo, hi = self._ext_range(ins.ext, param_bytes + stream_bytes, "TMATMUL weights")
        try:
            t, bias, mult = unpack_ternary_block(self.mem[lo:hi].tobytes(), n_out, kg * G, G,
                                                 T, Q, SB)
        except ValueError as e:
            self._fail(IsaError, f"TMATMUL: malformed weight block: {e}")
        idx = golden_t.encode_groups(t, G)                      # [n_out, k_groups]

        x = self._act_rows(ins.a, rows, xw, xread, "TMATMUL x")[:, :kg * G].astype(np.int64)
        m = self.act.reshape(-1).view(np.uint8)[m_lo:m_hi].copy().view("<u2").astype(np.int64)
        # golden.ternary.lookup_matmul, vectorized: per row and group the 3**G-entry table
        # (column i of `digits` is group_table of the unit vector e_i), indexed by the weights
        digits = np.stack([golden_t.group_table(e) for e in np.eye(G, dtype=np.int64)], axis=1)
        tables = x.reshape(rows, kg, G) @ digits.T              # [rows, k_groups, 3**G]
        acc = tables[:, np.arange(kg)[None, :], idx].sum(axis=-1)   # [rows, n_out]
        res = None
        if ins.residual:
            res = self._act_rows(ins.b, rows, words, words, "TMATMUL res")[:, :n_out]
        y = golden.requantize(acc * m[:, None], bias, mult, ins.shift, ins.relu, res=res,
                              res_mult=ins.mult_b)
        out = np.zeros((rows, words * L), dtype=np.int8)
        out[:, :n_out] = y
        self._write_rows(ins.out, words, out, "TMATMUL out")

        s = self.stats
        groups, passes = tlmm_passes(rows, cfg)
        s.tlmm_lookups += rows * lay["records"]
        s.tlmm_busy_cycles += passes * lay["records"]
        s.tlmm_macs_valid += rows * n_out * kg * G
        # parameters once per instruction, the index stream once per group of S passes
        nbytes = param_bytes + groups * stream_bytes
        s.weight_read_bytes += nbytes
        s.ext_read_bytes += nbytes

    # -- state-space instructions (docs/architecture.md, "State-space path") -------------------

    def _params(self, ins: Instr, nbytes: int, what: str, times: int = 1) -> bytes:
        """The parameter block at ``ext``, counted as read ``times`` times."""
        lo, hi = self._ext_range(ins.ext, nbytes, what)
        self.stats.weight_read_bytes += nbytes * times
        self.stats.ext_read_bytes += nbytes * times
        return self.mem[lo:hi].tobytes()

    def _conv(self, ins: Instr) -> None:
        """The causal conv of every row in order (the history of beats ``state ..`` carried
        from row to row and kept; read as zeros on the first row at POS 0), requantized to
        the SiLU ROM's 1/16 and passed through ``gate_mul(c, 1, mult_b, silu_shift)``; the
        parameters read once."""
        cfg = self.cfg
        L, K, n, rows, words = cfg.chain_len, cfg.conv_taps, ins.n, ins.rows, ins.words
        beats = -(-n // L)
        if beats > words:
            self._fail(IsaError, f"CONV: n={n} > words*L = {words * L}")
        if ins.state + beats > cfg.conv_words:
            self._fail(AddressError, f"CONV: history beats {ins.state}..{ins.state + beats - 1} "
                       f"exceed conv_words={cfg.conv_words}")
        raw = self._params(ins, block_bytes(conv_record_bytes(L, K), n, L, cfg.beat_bytes),
                           "CONV parameters")
        w, bias, mult = unpack_conv(raw, n, K, L, cfg.beat_bytes)
        if rows == 0:
            return
        x = self._act_rows(ins.a, rows, words, words, "CONV a")[:, :n]
        held = self.conv_hist[ins.state:ins.state + beats]           # [beats, K-1, L]
        hist = held.transpose(1, 0, 2).reshape(K - 1, beats * L)[:, :n]
        if self.pos == 0:
            hist = np.zeros_like(hist)
        c, hist = golden_ssm.causal_conv(x, hist, w, bias, mult, ins.shift)
        u = golden_llm.gate_mul(c, 1, ins.mult_b, ins.silu_shift)
        full = np.zeros((K - 1, beats * L), np.int8)
        full[:, :n] = hist
        self.conv_hist[ins.state:ins.state + beats] = full.reshape(K - 1, beats, L
                                                                   ).transpose(1, 0, 2)
        self._write_rows(ins.out, words, self._padded(u, words), "CONV out")

    def _scan(self, ins: Instr) -> None:
        """``golden.ssm.scan_step`` for every row in order, on channels ``state ..`` of the
        state memory (read as zeros on the first row at POS 0); dt through the softplus ROM;
        the parameters read once per row (the unit streams them with the channels)."""
        cfg = self.cfg
        L, S, n, rows, words = cfg.chain_len, cfg.ssm_states, ins.n, ins.rows, ins.words
        if -(-n // L) > words:
            self._fail(IsaError, f"SCAN: n={n} > words*L = {words * L}")
        if -(-S // L) > ins.bc_words and rows > 1:
            self._fail(IsaError, f"SCAN: {S} states exceed bc_words={ins.bc_words} words")
        if ins.state + n > cfg.ssm_channels:
            self._fail(AddressError, f"SCAN: state channels {ins.state}..{ins.state + n - 1} "
                       f"exceed ssm_channels={cfg.ssm_channels}")
        if n % cfg.ssm_lanes or ins.state % cfg.ssm_lanes:
            self._fail(IsaError, f"SCAN: n={n} and state={ins.state} must be multiples of "
                       f"ssm_lanes={cfg.ssm_lanes} (the scan units take W channels a cycle)")
        if rows == 0:
            return
        raw = self._params(ins, block_bytes(scan_record_bytes(L, S), n, L, cfg.beat_bytes),
                           "SCAN parameters", times=rows)
        a_codes, d_mult = unpack_scan(raw, n, S, L, cfg.beat_bytes)
        sw = -(-S // L)
        u = self._act_rows(ins.a, rows, words, words, "SCAN a (u)")[:, :n]
        dt = golden_ssm.softplus_dt(self._act_rows(ins.dt, rows, words, words, "SCAN dt")[:, :n])
        bb = self._act_rows(ins.b, rows, ins.bc_words, sw, "SCAN b")[:, :S]
        cc = self._act_rows(ins.c, rows, ins.bc_words, sw, "SCAN c")[:, :S]
        h = self.ssm_state[ins.state:ins.state + n]
        if self.pos == 0:
            h = np.zeros_like(h)
        y = np.zeros((rows, n), np.int8)
        for t in range(rows):       # the recurrence: one row after the other
            h, y[t] = golden_ssm.scan_step(h, dt[t], a_codes, bb[t], cc[t], u[t], ins.bu_mult,
                                           ins.bu_shift, ins.y_mult, ins.shift, d_mult,
                                           ins.d_shift)
        self.ssm_state[ins.state:ins.state + n] = h
        self._write_rows(ins.out, words, self._padded(y, words), "SCAN out")

    def _hadamard(self, ins: Instr) -> None:
        """``requantize(golden.ssm.hadamard(x, 2**lgb), 0, mult_b, shift, bits=obits)`` of
        every row."""
        L, n, rows, words = self.cfg.chain_len, ins.n, ins.rows, ins.words
        block = 1 << ins.lgb
        if -(-n // L) > words:
            self._fail(IsaError, f"HADAMARD: n={n} > words*L = {words * L}")
        if n % block or block > self.cfg.hadamard_block:
            self._fail(IsaError, f"HADAMARD: block {block} must divide n={n} and be at most "
                       f"hadamard_block={self.cfg.hadamard_block}")
        if ins.obits not in (4, 8):
            self._fail(IsaError, f"HADAMARD: obits={ins.obits}, must be 4 or 8")
        x = self._act_rows(ins.a, rows, words, words, "HADAMARD a")[:, :n]
        y = golden.requantize(golden_ssm.hadamard(x, block), 0, ins.mult_b, ins.shift,
                              bits=ins.obits)
        self._write_rows(ins.out, words, self._padded(y, words), "HADAMARD out")

    def _check_built(self, ins: Instr) -> None:
        """IllegalInstruction for an instruction of a unit this engine was built without: the
        RTL stops with ERROR = 1 (docs/architecture.md, "Transformer path", "Ternary path")."""
        cfg = self.cfg
        if not cfg.transformer and (ins.op in _TRANSFORMER_OPS or (
                ins.op in (Opcode.LOAD, Opcode.STORE) and ins.flags & FLAG_POS)):
            self._fail(IllegalInstruction, f"{ins.op.name} needs the transformer units "
                       "(AccelConfig.transformer)")
        if not cfg.vector_unit and ins.op in _VECTOR_OPS:
            self._fail(IllegalInstruction, f"{ins.op.name} needs the vector unit "
                       "(AccelConfig.transformer or AccelConfig.tlmm)")
        if not cfg.ssm and ins.op in _SSM_OPS:
            self._fail(IllegalInstruction, f"{ins.op.name} needs the state-space units "
                       "(AccelConfig.ssm_states)")
        if not cfg.tlmm and ins.op == Opcode.TMATMUL:
            self._fail(IllegalInstruction, "TMATMUL needs the TLMM engine (AccelConfig.tlmm; "
                       "boards: engine: tlmm: true)")

    def run(self, prog_base: int, max_instructions: int = 1_000_000,
            pos: int | None = None) -> IsaStats:
        """Execute from super-beat ``prog_base`` until END (``pos``: set the POS register first).

        Raises
        ------
        IllegalInstruction
            Unknown opcode, or an instruction of a unit the engine was built without
            (transformer path, vector unit, TLMM engine).
        IllegalMode
            MATMUL mode (N:M, int4) this engine cannot run.
        GatherRangeError
            A GATHER token id past the table (ERROR = 3).
        AddressError
            Fetch, LOAD/STORE, weight or activation access out of range.
        IsaError
            Malformed instruction fields, or more than ``max_instructions`` without END.
        """
        if pos is not None:
            self.pos = int(pos)
        SB = self.cfg.beat_bytes
        self._pc = prog_base * SB
        self._index = 0
        self._fetched_sb = None
        self._prefetched = None
        handlers = {Opcode.LOAD: self._load_store, Opcode.STORE: self._load_store,
                    Opcode.MATMUL: self._matmul, Opcode.VADD: self._vadd,
                    Opcode.GATHER: self._gather, Opcode.RMSNORM: self._rmsnorm,
                    Opcode.ROPE: self._rope, Opcode.SILUMUL: self._silumul,
                    Opcode.ATTN: self._attn, Opcode.ABSQUANT: self._absquant,
                    Opcode.TMATMUL: self._tmatmul, Opcode.KVSTORE: self._kvstore,
                    Opcode.PREFETCH: self._prefetch, Opcode.CONV: self._conv,
                    Opcode.SCAN: self._scan, Opcode.HADAMARD: self._hadamard}
        while True:
            if self._index >= max_instructions:
                self._fail(IsaError, f"no END within {max_instructions} instructions")
            lo, hi = self._ext_range(0, self._pc + INSTR_BYTES, "instruction fetch")
            raw = self.mem[self._pc:hi].tobytes()
            for sb in fetched_beats(self._pc, self._fetched_sb, SB):
                self._count.add(sb, SB, False)
                self._fetched_sb = sb
            try:
                ins = decode(raw)
            except ValueError:
                self._fail(IllegalInstruction, f"illegal opcode 0x{raw[0]:02x}")
            self._check_built(ins)
            self.stats.retired += 1
            self.stats.ext_read_bytes += INSTR_BYTES
            self.stats.by_opcode[ins.op.name] = self.stats.by_opcode.get(ins.op.name, 0) + 1
            if ins.op == Opcode.END:
                return self.stats
            handlers[ins.op](ins)
            self._count.add_instr(ins, self.pos)     # mapping.traffic: the one traffic count
            self._pc += INSTR_BYTES
            self._index += 1

    def image(self) -> bytes:
        """The external memory image in its current state."""
        return self.mem.tobytes()


def run_program(cfg: AccelConfig, image: bytes, prog_base: int,
                max_instructions: int = 1_000_000, pos: int = 0,
                regions=None) -> tuple[bytes, IsaStats]:
    """Run the program at super-beat ``prog_base`` of ``image`` to its END.

    Parameters
    ----------
    cfg : AccelConfig
        Accelerator parameters.
    image : bytes
        External memory image (not modified).
    prog_base : int
        Super-beat address of the first instruction (the PROG_BASE register).
    max_instructions : int
        Guard against a program without END.
    pos : int
        The POS register.
    regions : MemoryMap or list of (int, int, str), optional
        Memory map for the traffic counters (see :class:`IsaModel`).

    Returns
    -------
    new_image : bytes
        The image after the run (same length; only STORE changes it).
    stats : IsaStats
        Counters of the run.
    """
    model = IsaModel(cfg, image, pos=pos, regions=regions)
    stats = model.run(prog_base, max_instructions)
    return model.image(), stats


def run_host_steps(cfg: AccelConfig, image: bytes, memory_map, host: list, tokens_in: list[int]):
    """The ISA model over a decoder's host steps (``mapping.host_schedule.host_writes``), each
    decode step fed its token from ``tokens_in`` (e.g. the golden tokens); returns
    ``(logits, traffic)``: per step, the logits of its last row and its traffic counters."""
    from hwflow.mapping.llm_lower import read_logits

    model = IsaModel(cfg, image, regions=memory_map)
    logits, traffic, k = [], [], 0
    for st, is_decode in host:
        for addr, data in st.writes:
            if is_decode:
                data = np.array([tokens_in[k]], "<u4").tobytes() + bytes(data[4:])
            model.write(addr, data)
        if is_decode:
            k += 1
        model.reset_stats()
        model.pos = st.pos
        model.run(st.prog_base)
        logits.append(read_logits(st, model))
        traffic.append(dict(model.stats.traffic))
    return logits, traffic
