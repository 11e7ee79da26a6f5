"""N:M structured sparsity: pruning, detection and the packed (values + indices) format.

N:M means: along the input axis K of a weight ``w[N_out, K]``, every group of M consecutive
weights (group ``g`` covers ``k = g*M .. g*M + M - 1``; K is zero padded to a multiple of M) has
at most N nonzeros. Dense is the N = M case (and 1:1).

Packed format (the logical format; the memory layout in ``mapping/weight_format.py`` arranges it
per DSP slice): for every output row and group, exactly N entries ``(value, index)``, ``index``
the position within the group (``0 <= index < M``), in ascending position. A group with fewer
than N nonzeros is padded with zero-valued entries at its lowest unused positions, so the
indices of a group are distinct and the packing is unique. Unpacking adds every entry's value at
its position.
"""

from __future__ import annotations

import numpy as np

__all__ = ["parse_nm", "prune_nm", "satisfies_nm", "detect_nm", "pack_nm", "unpack_nm",
           "NM_CANDIDATES"]

#: Patterns :func:`detect_nm` considers, strongest first: ratio M/N descending, then M ascending
#: (a 1:4 weight also satisfies 2:8 and 4:16; the smallest M is the cheapest to index).
NM_CANDIDATES = ((1, 16), (1, 8), (1, 4), (2, 8), (4, 16), (1, 2), (2, 4), (4, 8), (8, 16))


def parse_nm(text: str) -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``; ``"dense"`` -> ``(1, 1)``. Raises ValueError naming the rule."""
    s = str(text).strip().lower()
    if s == "dense":
        return 1, 1
    try:
        n, m = (int(v) for v in s.split(":"))
    except ValueError:
        raise ValueError(f"sparsity '{text}' is not of the form N:M (e.g. 2:4) or 'dense'") \
            from None
    if m < 1 or m > 16 or m & (m - 1):
        raise ValueError(f"sparsity '{text}': M must be a power of two up to 16")
    if not 1 <= n <= m:
        raise ValueError(f"sparsity '{text}': N must be between 1 and M")
    return n, m


def _groups(w: np.ndarray, m: int) -> np.ndarray:
    """``w[R, K]`` zero padded to ``[R, ceil(K/m), m]``."""
    w = np.asarray(w)
    r, k = w.shape
    g = -(-k // m)
    pad = np.zeros((r, g * m), dtype=w.dtype)
    pad[:, :k] = w
    return pad.reshape(r, g, m)


def prune_nm(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """Magnitude pruning: keep the N largest ``|w|`` of every group of M along K (ties: lower K)."""
    w = np.asarray(w)
    if n >= m:
        return w.copy()
    r, k = w.shape
    grp = _groups(w, m)
    # stable sort of -|w| keeps the lower position first among equal magnitudes
    order = np.argsort(-np.abs(grp), axis=-1, kind="stable")
    keep = np.zeros(grp.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.where(keep, grp, 0).reshape(r, -1)[:, :k].astype(w.dtype)


def satisfies_nm(w: np.ndarray, n: int, m: int) -> bool:
    """True if every group of M along K has at most N nonzeros."""
    if n >= m:
        return True
    return bool(np.all(np.count_nonzero(_groups(w, m), axis=-1) <= n))


def detect_nm(w: np.ndarray, max_m: int = 16) -> tuple[int, int]:
    """The strongest pattern of :data:`NM_CANDIDATES` (M <= ``max_m``) that ``w`` satisfies;
    (1, 1) if none.

    An all-zero or tiny weight satisfies everything; it gets the strongest candidate.
    """
    for n, m in NM_CANDIDATES:
        if m <= max_m and satisfies_nm(w, n, m):
            return n, m
    return 1, 1


def pack_nm(w: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack an N:M weight: ``(values[R, G, N], indices[R, G, N])`` with ``G = ceil(K/M)``.

    Raises ValueError if a group has more than N nonzeros.
    """
    w = np.asarray(w)
    if not satisfies_nm(w, n, m):
        raise ValueError(f"weight does not satisfy {n}:{m} sparsity")
    grp = _groups(w, m)
    nz = grp != 0
    # kept positions: the nonzeros, then the lowest zero positions, N in all, ascending
    rank = np.where(nz, 0, 1) * m + np.arange(m)          # nonzeros first, each by position
    chosen = np.sort(np.argsort(rank, axis=-1, kind="stable")[..., :n], axis=-1)
    values = np.take_along_axis(grp, chosen, axis=-1)
    return values, chosen.astype(np.uint8)


def unpack_nm(values: np.ndarray, indices: np.ndarray, m: int, k: int) -> np.ndarray:
    """Dense ``w[R, k]`` from a packing (entries at the same position add up)."""
    values = np.asarray(values)
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= m):
        raise ValueError(f"sparse index outside the group of {m}")
    r, g, _ = values.shape
    dense = np.zeros((r, g, m), dtype=np.int64)
    rows = np.arange(r)[:, None, None]
    grps = np.arange(g)[None, :, None]
    np.add.at(dense, (rows, grps, indices), values.astype(np.int64))
    return dense.reshape(r, g * m)[:, :k].astype(values.dtype)
