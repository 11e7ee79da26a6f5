"""Hand assembly for the sim tests: weight blocks, activation rows and a bump allocator for images.

Deliberately written from docs/architecture.md alone (not from the mapper), so the tests check the
contract rather than one implementation of it.
"""

from __future__ import annotations

import numpy as np
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import INSTR_BYTES, Instr, Opcode


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pack_weights(cfg: AccelConfig, w: np.ndarray, bias: np.ndarray, mult: np.ndarray) -> bytes:
    """MATMUL weight block for int8 ``w[N, K]``: n_tiles tiles of param_rows + k_words rows."""
    P, L, R = cfg.chains, cfg.chain_len, cfg.param_rows
    N, K = w.shape
    nt, kw = cdiv(N, P), cdiv(K, L)
    blk = np.zeros((nt, R + kw, P, L), dtype=np.uint8)
    wp = np.zeros((nt * P, kw * L), dtype=np.int8)
    wp[:N, :K] = w
    blk[:, R:] = wp.view(np.uint8).reshape(nt, P, kw, L).transpose(0, 2, 1, 3)
    prm = np.zeros((nt * P, R * L), dtype=np.uint8)
    prm[:N, 0:4] = np.asarray(bias, dtype="<i4").view(np.uint8).reshape(N, 4)
    prm[:N, 4:6] = np.asarray(mult, dtype="<u2").view(np.uint8).reshape(N, 2)
    blk[:, :R] = prm.reshape(nt, P, R, L).transpose(0, 2, 1, 3)
    return blk.tobytes()


def act_bytes(x: np.ndarray, words: int, L: int) -> bytes:
    """int8 rows ``x[rows, n]`` in the on-chip row layout: ``words * L`` bytes a row, zero pad."""
    rows, n = x.shape
    buf = np.zeros((rows, words * L), dtype=np.int8)
    buf[:, :n] = x
    return buf.tobytes()


def act_rows(raw: bytes, rows: int, n: int, words: int, L: int) -> np.ndarray:
    return np.frombuffer(raw[: rows * words * L], dtype=np.int8).reshape(rows, words * L)[:, :n]


class Image:
    """Bump allocator of super-beat aligned sections in a flat image."""

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        self.buf = bytearray()

    def place(self, data: bytes) -> int:
        """Append ``data`` at the next super-beat boundary; returns its super-beat address."""
        SB = self.cfg.beat_bytes
        sb = cdiv(len(self.buf), SB)
        self.buf.extend(b"\0" * (sb * SB - len(self.buf)))
        self.buf.extend(data)
        return sb

    def reserve(self, nbytes: int) -> int:
        return self.place(b"\0" * nbytes)

    def bytes(self) -> bytes:
        SB = self.cfg.beat_bytes
        return bytes(self.buf) + b"\0" * (cdiv(len(self.buf), SB) * SB - len(self.buf))


def program(instrs: list[Instr]) -> bytes:
    raw = b"".join(i.encode() for i in instrs)
    assert len(raw) % INSTR_BYTES == 0
    return raw


def load(ext: int, act: int, n: int) -> Instr:
    return Instr(Opcode.LOAD, ext=ext, a=act, b=n)


def store(ext: int, act: int, n: int) -> Instr:
    return Instr(Opcode.STORE, ext=ext, a=act, b=n)


END = Instr(Opcode.END)
