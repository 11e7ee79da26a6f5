"""Ternary (BitNet b1.58) weights and the table-lookup matmul, as the TLMM engine computes them
(docs/architecture.md, "Ternary path").

* Weights: ``t`` in {-1, 0, +1} with one float scale per tensor (absmean rule: ``gamma =
  mean(|W|)``, ``t = clip(round(W / gamma), -1, 1)``).
* Activations: BitNet's per-token absmax int8 quantization (:func:`absmax_quant`), applied to an
  int8 row (optionally times an int8 per-element gamma, for RMSNorm gammas that cannot be
  folded into ternary weights); the row's absmax ``m`` travels with it to the epilogue.
* Groups of ``G`` weights along K are one table index ``sum_i (t_i + 1) * 3**i`` (``G = 3``: 27
  combinations in 5 bits, as TeLLMe); the engine builds, per group of ``G`` activations, the
  table of all ``3**G`` signed sums and looks the index up.
* Epilogue: ``golden.int8.requantize(acc * m, bias, mult, shift, relu, res, res_mult)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["GROUP_BITS", "ABSQ_SHIFT", "ternarize_absmean", "detect_ternary", "absmax_quant",
           "encode_groups", "decode_groups", "group_table", "lookup_matmul",
           "pack_indices", "unpack_indices"]

#: Bits of one group index: 3**G combinations (G = 2: 9 -> 4 bits, 3: 27 -> 5, 4: 81 -> 7).
GROUP_BITS = {2: 4, 3: 5, 4: 7}
#: absmax_quant: xq = sat8((v * R + 2**(ABSQ_SHIFT-1)) >> ABSQ_SHIFT), R = (127 << 24) // m.
ABSQ_SHIFT = 24
ABSMEAN_EPS = 1e-5


def ternarize_absmean(w) -> tuple[np.ndarray, float]:
    """BitNet b1.58 weight quantization: ``(t, gamma)`` with ``W ~ gamma * t``, ``t`` int8 in
    {-1, 0, 1}, ``gamma = mean(|W|) + 1e-5`` (one scale per tensor)."""
    w = np.asarray(w, dtype=np.float64)
    gamma = float(np.mean(np.abs(w))) + ABSMEAN_EPS
    t = np.clip(np.rint(w / gamma), -1, 1).astype(np.int8)
    return t, gamma


def detect_ternary(w, rtol: float = 1e-5) -> tuple[np.ndarray, float] | None:
    """``(t, s)`` if every weight is 0 or +-s for one ``s > 0`` (within ``rtol``), else None."""
    w = np.asarray(w, dtype=np.float64)
    nz = np.abs(w[w != 0])
    if nz.size == 0:
        return None
    s = float(np.median(nz))
    if not np.all(np.abs(nz - s) <= rtol * s):
        return None
    return np.sign(w).astype(np.int8), s


def absmax_quant(x, gamma=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (per-token) absmax int8 quantization of int8 rows ``x[rows, n]``.

    ``v = x * gamma`` (``gamma`` int8 per element, or 1), ``m = max |v|`` per row (0..2**14),
    ``R = (127 << 24) // m``, ``xq = sat8((v * R + 2**23) >> 24)`` (0 when ``m = 0``). Returns
    ``(xq int8 [rows, n], m int64 [rows])``. Float meaning: ``xq ~ v * 127 / m``, so
    ``v = xq * m / 127``.
    """
    v = np.asarray(x, dtype=np.int64)
    if gamma is not None:
        v = v * np.asarray(gamma, dtype=np.int64)
    m = np.max(np.abs(v), axis=-1) if v.shape[-1] else np.zeros(v.shape[:-1], np.int64)
    r = np.where(m > 0, (127 << ABSQ_SHIFT) // np.maximum(m, 1), 0)
    xq = (v * r[..., None] + (1 << (ABSQ_SHIFT - 1))) >> ABSQ_SHIFT
    return np.clip(xq, -128, 127).astype(np.int8), m.astype(np.int64)


def encode_groups(t, G: int) -> np.ndarray:
    """Group indices ``[out, ceil(in / G)]``: ``sum_i (t[.., g*G + i] + 1) * 3**i``; K is padded
    with zero weights (digit 1)."""
    t = np.asarray(t, dtype=np.int64)
    out, k = t.shape
    kp = -(-k // G) * G
    tp = np.zeros((out, kp), dtype=np.int64)
    tp[:, :k] = t
    digits = (tp + 1).reshape(out, kp // G, G)
    return (digits * (3 ** np.arange(G))).sum(axis=-1)


def decode_groups(idx, G: int, k: int) -> np.ndarray:
    """Inverse of :func:`encode_groups`: ternary ``[out, k]``."""
    idx = np.asarray(idx, dtype=np.int64)
    digits = (idx[..., None] // (3 ** np.arange(G))) % 3 - 1
    return digits.reshape(idx.shape[0], -1)[:, :k].astype(np.int8)


def group_table(a) -> np.ndarray:
    """The ``3**G`` signed sums of one activation group ``a[G]``: entry ``idx`` is
    ``sum_i (digit_i(idx) - 1) * a[i]``."""
    a = np.asarray(a, dtype=np.int64)
    G = a.shape[-1]
    digits = (np.arange(3 ** G)[:, None] // (3 ** np.arange(G))) % 3 - 1
    return digits @ a


def lookup_matmul(xq, idx, G: int) -> np.ndarray:
    """int32 ``acc[rows, out]`` by table lookup (equal to ``xq @ t.T`` for the decoded ``t``):
    per row and group, build :func:`group_table` and sum the looked-up entries over groups."""
    xq = np.asarray(xq, dtype=np.int64)
    rows, k = xq.shape
    ng = idx.shape[1]
    xp = np.zeros((rows, ng * G), dtype=np.int64)
    xp[:, :k] = xq
    acc = np.zeros((rows, idx.shape[0]), dtype=np.int64)
    for b in range(rows):
        for g in range(ng):
            acc[b] += group_table(xp[b, g * G:(g + 1) * G])[idx[:, g]]
    return acc


def pack_indices(idx, G: int) -> bytes:
    """Indices packed densely, ``GROUP_BITS[G]`` bits each, LSB first, in row-major order."""
    bits = GROUP_BITS[G]
    flat = np.asarray(idx, dtype=np.uint64).ravel()
    nbits = flat.size * bits
    out = np.zeros(-(-nbits // 8), dtype=np.uint8)
    pos = np.arange(flat.size, dtype=np.uint64) * np.uint64(bits)
    for j in range(bits):
        bit = (flat >> np.uint64(j)) & np.uint64(1)
        p = pos + np.uint64(j)
        np.bitwise_or.at(out, (p >> np.uint64(3)).astype(np.int64),
                         (bit << (p & np.uint64(7))).astype(np.uint8))
    return out.tobytes()


def unpack_indices(data: bytes, G: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_indices`: ``count`` indices."""
    bits = GROUP_BITS[G]
    raw = np.frombuffer(data, dtype=np.uint8)
    pos = np.arange(count, dtype=np.int64) * bits
    out = np.zeros(count, dtype=np.int64)
    for j in range(bits):
        p = pos + j
        out |= ((raw[p >> 3] >> (p & 7)) & 1).astype(np.int64) << j
    return out
