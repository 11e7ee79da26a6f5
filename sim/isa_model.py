"""ISA functional model: executes a program on a memory image exactly as docs/architecture.md says.

This is the executable form of the contract between the mapper and the RTL. The arithmetic is not
re-implemented here: every number comes from :mod:`hwflow.golden.int8` (``matmul``,
``requantize``, ``residual_add``), and instructions are decoded with :func:`hwflow.hw.isa.decode`,
so the model, the golden reference and the hardware decoder cannot drift apart.

External addresses are super-beat indices into the flat byte image; how super-beats are striped
over the memory ports does not matter at this level (the RTL simulator splits the image).

Every instruction is executed with whole-array numpy operations (no Python loop over rows,
channels or words), so a 1024 x 1024 GEMV layer runs in a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwflow.golden import int8 as golden
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import INSTR_BYTES, Instr, Opcode, decode

__all__ = [
    "IsaError",
    "IllegalInstruction",
    "AddressError",
    "IsaStats",
    "IsaModel",
    "run_program",
]


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


class AddressError(IsaError):
    """An external or activation-buffer access falls outside the memory it addresses."""


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
        k-groups fed to the matrix engine: sum over MATMULs of ``n_tiles * rows * k_words``.
        Each k-group is one cycle of ``P * L`` MAC slots, so this is the RTL's MPE_BUSY when the
        engine is never stalled mid-k-group.
    mac_slots : int
        ``mpe_kgroups * P * L``: DSP multiply slots used, padding included.
    macs_valid : int
        Sum over MATMULs of ``rows * n_out * k_words * L``: MACs on valid output channels
        (the K padding to a multiple of L is still counted; the mapper knows the true K).
    ext_read_bytes, ext_write_bytes : int
        Bytes moved by LOAD, STORE, instruction fetch and weight fetch (weights fetched once
        per MATMUL, as the hardware's tiles-outer loop order does).
    """

    retired: int = 0
    by_opcode: dict = field(default_factory=dict)
    mpe_kgroups: int = 0
    mac_slots: int = 0
    macs_valid: int = 0
    ext_read_bytes: int = 0
    ext_write_bytes: int = 0

    def to_dict(self) -> dict:
        return {
            "retired": self.retired,
            "by_opcode": dict(self.by_opcode),
            "mpe_kgroups": self.mpe_kgroups,
            "mac_slots": self.mac_slots,
            "macs_valid": self.macs_valid,
            "ext_read_bytes": self.ext_read_bytes,
            "ext_write_bytes": self.ext_write_bytes,
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

    Attributes
    ----------
    mem : numpy.ndarray
        uint8 copy of the image, updated by STORE.
    act : numpy.ndarray
        int8 activation buffer of shape ``(act_depth, L)``; starts zeroed (the RTL's buffer is
        zero after configuration, and a program must not read words it did not write anyway).
    stats : IsaStats
    """

    def __init__(self, cfg: AccelConfig, image: bytes):
        self.cfg = cfg
        self.mem = np.frombuffer(bytes(image), dtype=np.uint8).copy()
        self.act = np.zeros((cfg.act_depth, cfg.chain_len), dtype=np.int8)
        self.stats = IsaStats()
        self._pc = 0
        self._index = 0

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
        lo, hi = self._ext_range(ins.ext, nbytes, name)
        a0, a1 = self._act_range(ins.a, ins.b, name)
        if ins.op == Opcode.LOAD:
            self.act[a0:a1] = self.mem[lo:hi].view(np.int8).reshape(-1, L)
            self.stats.ext_read_bytes += nbytes
        else:
            self.mem[lo:hi] = self.act[a0:a1].reshape(-1).view(np.uint8)
            self.stats.ext_write_bytes += nbytes

    def _matmul(self, ins: Instr) -> None:
        cfg = self.cfg
        P, L, R = cfg.chains, cfg.chain_len, cfg.param_rows
        rows, kw, nt = ins.rows, ins.k_words, ins.n_tiles
        n_out, out_words = ins.n, ins.words
        if n_out > nt * P:
            self._fail(IsaError, f"MATMUL: n_out={n_out} > n_tiles*P = {nt * P}")
        if n_out > out_words * L:
            self._fail(IsaError, f"MATMUL: n_out={n_out} > out_words*L = {out_words * L}")
        if kw == 0:
            self._fail(IsaError, "MATMUL: k_words = 0")
        # The hardware re-reads x for every tile while it already writes out (tiles outer), so an
        # output that overlaps x has no defined result; res is read element by element at the
        # position being written, so out == res is fine.
        if _overlap(*self._span(ins.out, rows, out_words, out_words),
                    *self._span(ins.a, rows, kw, kw)):
            self._fail(IsaError, "MATMUL: output rows overlap the input rows x")

        tile_rows = R + kw
        lo, hi = self._ext_range(ins.ext, nt * tile_rows * cfg.row_bytes, "MATMUL weights")
        blk = self.mem[lo:hi].reshape(nt, tile_rows, P, L)
        # Parameter lanes of chain p are bytes [p*L, (p+1)*L) of each parameter row, concatenated
        # over the R rows: bias (int32 LE), mult (u16 LE), 2 zero bytes.
        prm = np.ascontiguousarray(blk[:, :R].transpose(0, 2, 1, 3)).reshape(nt * P, R * L)
        bias = prm[:, 0:4].copy().view("<i4").reshape(-1).astype(np.int64)
        mult = prm[:, 4:6].copy().view("<u2").reshape(-1).astype(np.int64)
        # Weight row R+kw, lane byte i of chain p of tile t is w[t*P + p, kw*L + i].
        w = blk[:, R:].transpose(0, 2, 1, 3).reshape(nt * P, kw * L).view(np.int8)

        x = self._act_rows(ins.a, rows, kw, kw, "MATMUL x")
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
        s.mpe_kgroups += nt * rows * kw
        s.mac_slots += nt * rows * kw * P * L
        s.macs_valid += rows * n_out * kw * L
        s.ext_read_bytes += hi - lo

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

    # -- driver --------------------------------------------------------------------------------

    def run(self, prog_base: int, max_instructions: int = 1_000_000) -> IsaStats:
        """Execute from super-beat ``prog_base`` until END.

        Raises
        ------
        IllegalInstruction
            Unknown opcode.
        AddressError
            Fetch, LOAD/STORE, weight or activation access out of range.
        IsaError
            Malformed instruction fields, or more than ``max_instructions`` without END.
        """
        self._pc = prog_base * self.cfg.beat_bytes
        self._index = 0
        handlers = {Opcode.LOAD: self._load_store, Opcode.STORE: self._load_store,
                    Opcode.MATMUL: self._matmul, Opcode.VADD: self._vadd}
        while True:
            if self._index >= max_instructions:
                self._fail(IsaError, f"no END within {max_instructions} instructions")
            lo, hi = self._ext_range(0, self._pc + INSTR_BYTES, "instruction fetch")
            raw = self.mem[self._pc:hi].tobytes()
            try:
                ins = decode(raw)
            except ValueError:
                self._fail(IllegalInstruction, f"illegal opcode 0x{raw[0]:02x}")
            self.stats.retired += 1
            self.stats.ext_read_bytes += INSTR_BYTES
            self.stats.by_opcode[ins.op.name] = self.stats.by_opcode.get(ins.op.name, 0) + 1
            if ins.op == Opcode.END:
                return self.stats
            handlers[ins.op](ins)
            self._pc += INSTR_BYTES
            self._index += 1

    def image(self) -> bytes:
        """The external memory image in its current state."""
        return self.mem.tobytes()


def run_program(cfg: AccelConfig, image: bytes, prog_base: int,
                max_instructions: int = 1_000_000) -> tuple[bytes, IsaStats]:
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

    Returns
    -------
    new_image : bytes
        The image after the run (same length; only STORE changes it).
    stats : IsaStats
        Counters of the run.
    """
    model = IsaModel(cfg, image)
    stats = model.run(prog_base, max_instructions)
    return model.image(), stats
