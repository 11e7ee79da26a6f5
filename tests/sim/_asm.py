"""Hand assembly for the sim tests: weight blocks, activation rows and a bump allocator for images.

Deliberately written from docs/architecture.md alone (not from the mapper), so the tests check the
contract rather than one implementation of it.
"""

from __future__ import annotations

import numpy as np

from hwflow.golden import int8 as golden
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import FLAG_RELU, FLAG_RESIDUAL, INSTR_BYTES, Instr, Opcode


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


def matmul_case(cfg, rng, rows=3, K=37, N=23, relu=True, residual=True, vadd=True):
    """LOAD x, res and junk; MATMUL (+res, relu) over junk; VADD in place; STORE; END."""
    L, SB = cfg.chain_len, cfg.beat_bytes
    sbw = SB // L                                      # words per super-beat
    kw, ow = cdiv(K, L), cdiv(N, L)
    x = rng.integers(-128, 128, (rows, K), dtype=np.int8)
    res = rng.integers(-128, 128, (rows, N), dtype=np.int8)
    w = rng.integers(-128, 128, (N, K), dtype=np.int8)
    bias = rng.integers(-5000, 5000, N)
    mult = rng.integers(20, 60, N)
    shift, res_mult = 16, 30000
    a_mult, b_mult, vshift = 23000, 41000, 15

    x_words, r_words = rows * kw, rows * ow
    x_ld, r_ld = cdiv(x_words, sbw) * sbw, cdiv(r_words, sbw) * sbw
    img = Image(cfg)
    prog_sb = img.reserve(8 * 32)
    x_sb = img.place(act_bytes(x, kw, L))
    r_sb = img.place(act_bytes(res, ow, L))
    junk_sb = img.place(rng.integers(-128, 128, r_ld * L, dtype=np.int8).tobytes())
    w_sb = img.place(pack_weights(cfg, w, bias, mult))
    out_sb = img.reserve(r_ld * L)
    X, RES, OUT = 0, 128, 256
    flags = (FLAG_RELU if relu else 0) | (FLAG_RESIDUAL if residual else 0)
    instrs = [
        load(x_sb, X, x_ld), load(r_sb, RES, r_ld), load(junk_sb, OUT, r_ld),
        Instr(Opcode.MATMUL, flags=flags, shift=shift, ext=w_sb, a=X, out=OUT, b=RES, rows=rows,
              k_words=kw, n_tiles=cdiv(N, cfg.chains), n=N, words=ow, mult_b=res_mult),
    ]
    if vadd:
        instrs.append(Instr(Opcode.VADD, flags=FLAG_RELU, shift=vshift, a=OUT, out=OUT, b=RES,
                            rows=rows, n=N, words=ow, mult_a=a_mult, mult_b=b_mult))
    instrs += [store(out_sb, OUT, r_ld), END]
    image = bytearray(img.bytes())
    raw = program(instrs)
    image[prog_sb * SB: prog_sb * SB + len(raw)] = raw

    y = golden.requantize(golden.matmul(x, w), bias, mult, shift, relu,
                          res=res if residual else None, res_mult=res_mult)
    if vadd:
        y = golden.residual_add(y, res, a_mult, b_mult, vshift, relu=True)
    return bytes(image), prog_sb, out_sb, y, dict(rows=rows, ow=ow, r_ld=r_ld, kw=kw, N=N)
