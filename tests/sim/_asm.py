"""Hand assembly for the sim tests: weight blocks, activation rows and a bump allocator for images.

Deliberately written from docs/architecture.md alone (not from the mapper), so the tests check the
contract rather than one implementation of it.
"""

from __future__ import annotations

import struct

import numpy as np

from hwflow.golden import int4 as golden_int4
from hwflow.golden import int8 as golden
from hwflow.golden import sparse as golden_sparse
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import FLAG_INT4, FLAG_RELU, FLAG_RESIDUAL, INSTR_BYTES, Instr, Opcode


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def mode(cfg: AccelConfig, K: int, sparsity=(1, 1), int4: bool = False) -> dict:
    """MATMUL fields of a weight format: tile_mem_rows, lgm, lgr and the INT4 flag bit.

    The tile_mem_rows formulas of docs/architecture.md, "Weight tile formats".
    """
    n, m = sparsity
    r, R, kw = m // n, cfg.param_rows, cdiv(K, cfg.chain_len)
    u = cdiv(kw, 2)
    if int4:
        rows = R + (2 * u + cdiv(u * r, 32) if m > 1 else u + cdiv(u, 32))
    else:
        rows = R + kw + (u if m > 1 else 0)
    return dict(tile_mem_rows=rows, lgm=m.bit_length() - 1, lgr=r.bit_length() - 1,
                flags=FLAG_INT4 if int4 else 0)


def n_tiles(cfg: AccelConfig, N: int, sparsity=(1, 1)) -> int:
    """Tiles of C = P·r channels."""
    return cdiv(N, cfg.chains * (sparsity[1] // sparsity[0]))


def _pack_dense_int8(cfg: AccelConfig, w: np.ndarray, bias: np.ndarray, mult: np.ndarray) -> bytes:
    """int8 dense, vectorized (1024 x 1024 layers): tiles of R + k_words rows of P·L bytes."""
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


def pack_weights(cfg: AccelConfig, w: np.ndarray, bias: np.ndarray, mult: np.ndarray,
                 sparsity=(1, 1), w4=None, s4=None) -> bytes:
    """MATMUL weight block for ``w[N, K]`` in any format, one byte at a time from the doc.

    ``w`` is the effective int8 weight (pruned to ``sparsity``); for int4 pass the codes ``w4``
    ``[N, K]`` and group scales ``s4`` ``[N, ceil(K/32)]`` (``w = w4 * s4`` per group of 32).
    Slow for the sparse and int4 formats (Python loops over bytes): keep those layers small.
    """
    if sparsity[1] == 1 and w4 is None:
        return _pack_dense_int8(cfg, w, bias, mult)
    P, L, R = cfg.chains, cfg.chain_len, cfg.param_rows
    n, m = sparsity
    r = m // n
    C, S = P * r, L // r
    N, K = w.shape
    kw = cdiv(K, L)
    nt, u = cdiv(N, C), cdiv(kw, 2)
    codes = w if w4 is None else w4
    wp = np.zeros((nt * C, kw * L), dtype=np.int64)
    wp[:N, :K] = codes
    vals, idxs = golden_sparse.pack_nm(wp, n, m) if m > 1 else (wp[:, :, None], 0 * wp[:, :, None])

    def slot(t, k, p, i):
        """(value, index) slice i of chain p uses in word k of tile t."""
        ch = t * C + (i // S) * P + p
        j = i % S
        g, e = j // n, j % n
        grp = k * L // m + g
        if k >= kw:
            return 0, 0
        return int(vals[ch, grp, e]), int(idxs[ch, grp, e])

    def scale(ch, gamma):
        if s4 is None or ch >= N or gamma >= s4.shape[1]:
            return 0
        return int(s4[ch, gamma])

    def row_of(f):
        """One memory row: chain p's lane i holds byte f(p, i)."""
        return bytes(f(p, i) & 0xFF for p in range(P) for i in range(L))

    def tile_rows(t):
        prm = [bytearray(R * L) for _ in range(P)]
        for pc in range(P):
            for s in range(r):
                ch = t * C + s * P + pc
                if ch < N:
                    prm[pc][8 * s: 8 * s + 8] = struct.pack("<iHxx", int(bias[ch]), int(mult[ch]))
        rows = [b"".join(bytes(prm[pc][row * L:(row + 1) * L]) for pc in range(P))
                for row in range(R)]

        def value_row(k):
            return row_of(lambda p, i: slot(t, k, p, i)[0])

        def index_row(h):
            return row_of(lambda p, i: slot(t, 2 * h, p, i)[1] | slot(t, 2 * h + 1, p, i)[1] << 4)

        def int4_row(h):
            return row_of(lambda p, i: (slot(t, 2 * h, p, i)[0] & 15)
                          | (slot(t, 2 * h + 1, p, i)[0] & 15) << 4)

        def scale_row(beta):
            g0 = beta * 2 * L // r

            def nib(p, c):                 # nibble c = (gamma - gamma0) * r + seg
                return scale(t * C + (c % r) * P + p, g0 + c // r)
            return row_of(lambda p, i: nib(p, 2 * i) | nib(p, 2 * i + 1) << 4)

        if w4 is None and m == 1:
            rows += [value_row(k) for k in range(kw)]
        elif w4 is None:
            for h in range(u):
                rows += [index_row(h), value_row(2 * h)]
                if 2 * h + 1 < kw:
                    rows.append(value_row(2 * h + 1))
        else:
            per_block = 32 // r
            for h in range(u):
                if h % per_block == 0:
                    rows.append(scale_row(h // per_block))
                if m > 1:
                    rows.append(index_row(h))
                rows.append(int4_row(h))
        assert len(rows) == mode(cfg, K, sparsity, w4 is not None)["tile_mem_rows"]
        return b"".join(rows)

    out = b"".join(tile_rows(t) for t in range(nt))
    return out


def int4_weight(rng, N: int, K: int, sparsity=(1, 1)):
    """Random int4 layer: codes (pruned to ``sparsity``), scales and the effective int8 weight."""
    q = rng.integers(-8, 8, (N, K)).astype(np.int8)
    if sparsity[1] > 1:
        q = golden_sparse.prune_nm(q, *sparsity)
    s = rng.integers(1, 16, (N, cdiv(K, 32))).astype(np.uint8)
    return golden_int4.dequantize_int4(q, s), q, s


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


class SpanImage:
    """Bump allocator of super-beat aligned regions, each with a traffic kind (``spans``, for
    the ISA model's counters); super-beat 0 is left unclassified."""

    def __init__(self, sb: int):
        self.sb = sb
        self.buf = bytearray(sb)
        self.spans = []

    def add(self, data: bytes, kind: str) -> int:
        addr = len(self.buf) // self.sb
        self.buf += data + bytes(-len(data) % self.sb)
        self.spans.append((addr, len(self.buf) // self.sb, kind))
        return addr

    def program(self, instrs) -> int:
        return self.add(b"".join(i.encode() for i in instrs) + Instr(Opcode.END).encode(),
                        "program")


def program(instrs: list[Instr]) -> bytes:
    raw = b"".join(i.encode() for i in instrs)
    assert len(raw) % INSTR_BYTES == 0
    return raw


def load(ext: int, act: int, n: int) -> Instr:
    return Instr(Opcode.LOAD, ext=ext, a=act, b=n)


def store(ext: int, act: int, n: int) -> Instr:
    return Instr(Opcode.STORE, ext=ext, a=act, b=n)


END = Instr(Opcode.END)


def matmul_instr(cfg, K: int, N: int, sparsity=(1, 1), int4: bool = False, flags: int = 0,
                 **fields) -> Instr:
    """A MATMUL of a K x N layer in the given format (mode fields and n_tiles filled in)."""
    md = mode(cfg, K, sparsity, int4)
    return Instr(Opcode.MATMUL, flags=flags | md.pop("flags"), k_words=cdiv(K, cfg.chain_len),
                 n_tiles=n_tiles(cfg, N, sparsity), n=N, **md, **fields)


def random_weight(rng, N: int, K: int, sparsity=(1, 1), int4: bool = False):
    """(effective int8 weight, pack_weights keyword arguments) of a random layer."""
    if int4:
        w, q, s = int4_weight(rng, N, K, sparsity)
        return w, dict(sparsity=sparsity, w4=q, s4=s)
    w = rng.integers(-128, 128, (N, K), dtype=np.int8)
    if sparsity[1] > 1:
        w = golden_sparse.prune_nm(w, *sparsity)
    return w, dict(sparsity=sparsity)


def matmul_case(cfg, rng, rows=3, K=37, N=23, relu=True, residual=True, vadd=True,
                sparsity=(1, 1), int4=False):
    """LOAD x, res and junk; MATMUL (+res, relu) over junk; VADD in place; STORE; END.

    The MATMUL's weights are random in the format ``sparsity`` (N:M) / ``int4``.
    """
    L, SB = cfg.chain_len, cfg.beat_bytes
    sbw = SB // L                                      # words per super-beat
    kw, ow = cdiv(K, L), cdiv(N, L)
    x = rng.integers(-128, 128, (rows, K), dtype=np.int8)
    res = rng.integers(-128, 128, (rows, N), dtype=np.int8)
    w, wfmt = random_weight(rng, N, K, sparsity, int4)
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
    w_sb = img.place(pack_weights(cfg, w, bias, mult, **wfmt))
    out_sb = img.reserve(r_ld * L)
    X, RES, OUT = 0, 128, 256
    flags = (FLAG_RELU if relu else 0) | (FLAG_RESIDUAL if residual else 0)
    instrs = [
        load(x_sb, X, x_ld), load(r_sb, RES, r_ld), load(junk_sb, OUT, r_ld),
        matmul_instr(cfg, K, N, sparsity, int4, flags=flags, shift=shift, ext=w_sb, a=X,
                     out=OUT, b=RES, rows=rows, words=ow, mult_b=res_mult),
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
