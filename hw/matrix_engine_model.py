"""Plain-Python reference of the matrix engine (docs/architecture.md, "Matrix engine").

Two references, so that the RTL is checked against the selector rule from two directions:

* :func:`engine_reference` models what the engine computes from the lane data it is given
  (packed multiply per DSP group, the reduction node's lo/hi split and int32 accumulators, the
  per-mode combination of the groups): the bit-exact golden for random weights and indices.
* :func:`pack_sparse_weights` turns a dense N:M-sparse weight matrix into the lanes' weights and
  indices by the documented tile format (``v(kw, p, i)``, ``idx(kw, p, i)``), and
  :func:`dense_reference` computes ``x @ w.T`` from the dense matrix: feeding the packed lanes to
  the engine must give the plain matrix product.

Plain Python ints only (``hw/`` must not import numpy); the numbers are small enough for the
tests (a few k-groups of 16 lanes).
"""

from __future__ import annotations

from .config import MAX_GROUPS

__all__ = [
    "LO_BITS", "legal_modes", "mode_shape", "selector_base", "slice_position",
    "pack", "split_packed", "wrap", "engine_reference",
    "pack_sparse_weights", "dense_reference",
]

#: Width of the packed multiply's low field: ``A = x0 + x1 * 2**LO_BITS``.
LO_BITS = 18
_P_BITS = 48


def wrap(v: int, bits: int = 32) -> int:
    """``v`` as a ``bits``-bit two's complement number (the wrap of a fabric register)."""
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def _groups(chain_len: int) -> int:
    return min(MAX_GROUPS, chain_len)


def legal_modes(chain_len: int, sparse: bool = True) -> list[tuple[int, int]]:
    """The ``(lgm, lgr)`` modes an engine with chains of ``chain_len`` slices runs.

    ``M = 2**lgm`` in {1, 2, 4, 8, 16} with ``M <= L``, ``r = 2**lgr`` in {1, 2, 4} with
    ``r <= G``, ``N = M / r >= 1``; dense (0, 0) first. Beyond the documented rules, ``M`` must
    divide ``L`` and ``r`` must divide ``G`` (both always hold for a power-of-two ``L``): an
    activation word holds whole groups of ``M`` and a segment whole DSP groups. An engine built
    without the sparse selectors (``sparse=False``) runs dense only.
    """
    if not sparse:
        return [(0, 0)]
    L, G = chain_len, _groups(chain_len)
    modes = []
    for lgm in range(5):
        M = 1 << lgm
        if M > L or L % M:
            continue
        for lgr in range(3):
            r = 1 << lgr
            if r <= G and G % r == 0 and M >= r:
                modes.append((lgm, lgr))
    return modes


def mode_shape(chain_len: int, lgm: int, lgr: int) -> tuple[int, int, int, int]:
    """``(M, r, N, S)``: group size, segments (outputs per chain and row), kept entries per
    group, slices per segment."""
    M, r = 1 << lgm, 1 << lgr
    return M, r, M // r, chain_len // r


def selector_base(chain_len: int, lgm: int, lgr: int, i: int) -> int:
    """``g * M``: the first word position of the group slice ``i`` draws from."""
    M, _, N, S = mode_shape(chain_len, lgm, lgr)
    return (i % S) // N * M


def slice_position(chain_len: int, lgm: int, lgr: int, i: int, idx: int) -> int:
    """Word position slice ``i`` multiplies in mode ``(lgm, lgr)`` with index ``idx``.

    ``pos = g * M + idx``; index bits at or above ``lgm`` are ignored (the hardware ORs the low
    ``lgm`` bits of ``idx`` into the base; ``idx < M`` by contract, 0 when dense).
    """
    return selector_base(chain_len, lgm, lgr, i) | (idx & ((1 << lgm) - 1))


def pack(x0: int, x1: int) -> int:
    """The 27-bit A operand of the packed multiply: ``x0 + x1 * 2**18``."""
    return x0 + (x1 << LO_BITS)


def split_packed(p: int) -> tuple[int, int]:
    """``(lo, hi)`` of a DSP group's 48-bit P: ``sext(P[17:0])`` and ``P[47:18] + P[17]``.

    ``P[17]`` is the low sum's sign: a negative low sum borrowed one from the high field.
    """
    p = wrap(p, _P_BITS)
    lo = wrap(p, LO_BITS)
    hi = (p >> LO_BITS) + ((p >> (LO_BITS - 1)) & 1)
    return lo, hi


def engine_reference(cfg, lgm: int, lgr: int, x0_words, x1_words, w_groups, idx_groups,
                     pair: bool = True) -> list:
    """Exact outputs of one dot product of the engine, given its k-groups (unskewed).

    Parameters
    ----------
    cfg : AccelConfig
        Only ``chains`` (P), ``chain_len`` (L) and ``sparse`` are used.
    lgm, lgr : int
        The mode (must be in :func:`legal_modes`).
    x0_words, x1_words : list of list of int
        Per k-group, the L int8 activations of rows b and b+1 (``x1_words`` is ignored and
        taken as zeros when not ``pair``).
    w_groups, idx_groups : list of list of list of int
        Per k-group, lane-major ``[i][p]`` int8 weights and 4-bit indices (as the engine's
        ``w`` / ``idx`` ports, unskewed).
    pair : bool
        Row b+1 exists.

    Returns
    -------
    list
        ``out[row][seg][p]`` (int32) for ``row < 2``, ``seg < r``.
    """
    P, L = cfg.chains, cfg.chain_len
    G = _groups(L)
    S0 = L // G
    if (lgm, lgr) not in legal_modes(L, cfg.sparse):
        raise ValueError(f"mode lgm={lgm} lgr={lgr} is not legal for L={L}")
    # acc[row][g][p]: the reduction nodes' int32 accumulators
    acc = [[[0] * P for _ in range(G)] for _ in range(2)]
    for kw, (x0, w, idx) in enumerate(zip(x0_words, w_groups, idx_groups, strict=True)):
        x1 = x1_words[kw] if pair else [0] * L
        for p in range(P):
            for g in range(G):
                psum = 0
                for d in range(S0):
                    i = g * S0 + d
                    pos = slice_position(L, lgm, lgr, i, idx[i][p]) if cfg.sparse else i
                    psum += pack(x0[pos], x1[pos]) * w[i][p]
                lo, hi = split_packed(psum)
                acc[0][g][p] = wrap(acc[0][g][p] + lo)
                acc[1][g][p] = wrap(acc[1][g][p] + hi)
    r = 1 << lgr
    return [[[wrap(sum(acc[row][g][p] for g in range(s * G // r, (s + 1) * G // r)))
              for p in range(P)] for s in range(r)] for row in range(2)]


def _keep_nm(row_group: list[int], n_keep: int) -> list[int]:
    """Positions of the ``n_keep`` entries kept of one group of ``M`` (golden ``pack_nm``):
    the nonzeros in ascending position, padded with the lowest unused positions."""
    nz = [q for q, v in enumerate(row_group) if v]
    if len(nz) > n_keep:
        raise ValueError(f"group {row_group} has more than {n_keep} nonzeros")
    pad = [q for q in range(len(row_group)) if q not in nz][:n_keep - len(nz)]
    return sorted(nz + pad)


def pack_sparse_weights(cfg, lgm: int, lgr: int, w_dense) -> tuple[list, list]:
    """Lane weights and indices of one tile from its dense N:M-sparse weight matrix.

    Follows the tile format of docs/architecture.md ("Weight tile formats"), not the selector
    rule: slice ``i`` of chain ``p`` in word ``kw`` takes channel ``n = (i // S) * P + p``, group
    ``kw * L / M + (i mod S) // N`` of that row and its ``((i mod S) mod N)``-th kept entry.

    Parameters
    ----------
    w_dense : list of list of int
        ``C = P * r`` rows (output channels) of ``K = k_words * L`` int8 weights, at most ``N``
        nonzeros in every aligned group of ``M``.

    Returns
    -------
    (w_groups, idx_groups)
        Per word ``kw``, lane-major ``[i][p]`` weights and indices (the engine's ``w``/``idx``).
    """
    P, L = cfg.chains, cfg.chain_len
    M, r, N, S = mode_shape(L, lgm, lgr)
    if len(w_dense) != P * r:
        raise ValueError(f"expected {P * r} weight rows, got {len(w_dense)}")
    K = len(w_dense[0])
    if K % L:
        raise ValueError(f"K = {K} is not a multiple of L = {L}")
    w_groups, idx_groups = [], []
    for kw in range(K // L):
        wl = [[0] * P for _ in range(L)]
        il = [[0] * P for _ in range(L)]
        for i in range(L):
            for p in range(P):
                n = (i // S) * P + p
                g, e = divmod(i % S, N)
                gamma = kw * L // M + g
                kept = _keep_nm(w_dense[n][gamma * M:(gamma + 1) * M], N)
                wl[i][p] = w_dense[n][gamma * M + kept[e]]
                il[i][p] = kept[e]
        w_groups.append(wl)
        idx_groups.append(il)
    return w_groups, idx_groups


def dense_reference(cfg, lgr: int, x_rows, w_dense) -> list:
    """``out[row][seg][p] = int32(sum_k x[row][k] * w[seg * P + p][k])``: the tile's matmul.

    ``x_rows`` holds 1 or 2 rows of ``K`` activations (a missing row b+1 gives zeros).
    """
    P = cfg.chains
    r = 1 << lgr
    rows = list(x_rows) + [[0] * len(x_rows[0])] * (2 - len(x_rows))
    return [[[wrap(sum(a * b for a, b in zip(x, w_dense[s * P + p], strict=True)))
              for p in range(P)] for s in range(r)] for x in rows]
