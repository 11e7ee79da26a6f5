"""Weight tile formats of the matrix engine: which mode a layer runs in, and its memory layout.

docs/architecture.md ("Matrix engine", "Weight ring", "Weight tile formats") is the contract;
this module is its one implementation on the mapping side (:func:`pack_weight_block`) and its
exact inverse (:func:`unpack_weight_block`), which the ISA functional model executes. The logical
formats (N:M packing, int4 codes and group scales) are defined in :mod:`hwflow.golden.sparse` and
:mod:`hwflow.golden.int4`; here they are only arranged per DSP slice.

Terms (P chains of L slices, G DSP groups per chain, R parameter rows):

* a mode N:M runs ``r = M/N`` output channels per chain, so a tile holds ``C = P·r`` channels;
  chain p, segment s (slices ``[s·S, (s+1)·S)``, ``S = L/r``) computes channel ``t·C + s·P + p``;
* a *slot* is what one slice multiplies in one activation word: slice ``i`` of segment ``s``
  takes the ``j = i mod S``-th entry of the golden packing in that word (group ``j // N``, entry
  ``j mod N``), a value and a 4-bit position within its group of M;
* dense is the mode 1:1 (slot i is position i of the word, index 0).

Everything is whole-array numpy: a 4096 x 1024 layer packs in about 0.2 s (N:M; the golden
packing's sort dominates) or 10 ms (dense), and unpacks in a few tens of milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwflow.golden.int4 import GROUP as INT4_GROUP
from hwflow.golden.sparse import pack_nm, satisfies_nm
from hwflow.hw.config import AccelConfig
from hwflow.hw.matrix_engine_model import legal_modes

__all__ = [
    "LayerFormat",
    "DENSE_INT8",
    "legal_formats",
    "is_legal",
    "choose_format",
    "channels_per_tile",
    "tile_mem_rows",
    "ring_reserve",
    "pack_weight_block",
    "unpack_weight_block",
]

#: Group sizes M the sparse selector can name (4-bit indices, ``lgm`` up to 4).
_MS = (1, 2, 4, 8, 16)
#: Ratios r = M/N the reduction nodes can split a chain into (``lgr`` up to 2).
_RS = (1, 2, 4)
#: Bytes of one (bias, mult) record in the parameter rows.
_RECORD = 8


@dataclass(frozen=True)
class LayerFormat:
    """How one MATMUL's weights are stored and run: N:M mode and weight width.

    Parameters
    ----------
    n, m : int
        The N:M mode: at most ``n`` nonzeros in every group of ``m`` weights along K. ``m`` is a
        power of two up to 16 and a multiple of ``n``; (1, 1) is dense.
    wbits : {8, 4}
        int8 weights, or int4 codes with group scales (``golden.int4``).

    Whether the engine of a configuration can run the format is :func:`is_legal`'s question.
    """

    n: int = 1
    m: int = 1
    wbits: int = 8

    def __post_init__(self):
        if self.m not in _MS or not 1 <= self.n <= self.m or self.m % self.n:
            raise ValueError(f"N:M = {self.n}:{self.m} is not a mode: M must be a power of two "
                             "up to 16 and a multiple of N")
        if self.wbits not in (4, 8):
            raise ValueError(f"weight width {self.wbits} bits: only 8 and 4 are supported")

    @property
    def r(self) -> int:
        """Output channels per chain per pass over K (``M / N``)."""
        return self.m // self.n

    @property
    def lgm(self) -> int:
        return self.m.bit_length() - 1

    @property
    def lgr(self) -> int:
        return self.r.bit_length() - 1

    @property
    def sparse(self) -> bool:
        """The tile carries index rows (any mode but 1:1)."""
        return self.m > 1

    @property
    def int4(self) -> bool:
        return self.wbits == 4

    @property
    def sparsity(self) -> str:
        """``"N:M"``, or ``"dense"`` for 1:1."""
        return f"{self.n}:{self.m}" if self.sparse else "dense"

    @property
    def label(self) -> str:
        """For reports: ``"int8 dense"``, ``"int8 2:4"``, ``"int4 1:4"``, ..."""
        return f"int{self.wbits} {self.sparsity}"


DENSE_INT8 = LayerFormat()


# ------------------------------------------------------------------------------ legality

def is_legal(cfg: AccelConfig, fmt: LayerFormat) -> bool:
    """Can the engine of ``cfg`` run ``fmt`` (docs/architecture.md, "Legal modes")?

    Besides the doc's ``M <= L`` and ``r <= G`` this needs ``M | L`` and ``r | G`` (segments of
    whole groups of M, whole DSP groups), which the doc's rules imply for power-of-two L;
    sparse modes need the sparse selectors (``cfg.sparse``), int4 the dequantizer
    (``cfg.int4``) and ``2L | 32`` (a value row's two words lie in one group of 32).
    """
    # the N:M modes are the matrix engine's own list (the RTL's selectors are built from it)
    if (fmt.lgm, fmt.lgr) not in legal_modes(cfg.chain_len, cfg.sparse):
        return False
    return not fmt.int4 or (cfg.int4 and INT4_GROUP % (2 * cfg.chain_len) == 0)


def legal_formats(cfg: AccelConfig) -> list[LayerFormat]:
    """Every format the engine of ``cfg`` runs, fastest (highest r) first, then dense before
    sparse and smaller M first at equal r, int8 before int4."""
    out = []
    for m in _MS:
        for r in _RS:
            if m % r == 0:
                for wbits in (8, 4):
                    fmt = LayerFormat(m // r, m, wbits)
                    if is_legal(cfg, fmt):
                        out.append(fmt)
    return sorted(out, key=lambda f: (-f.r, f.m, -f.wbits))


def _requested(sparsity, wbits) -> LayerFormat | None:
    """The layer's own format, or None if it is not a mode at all (e.g. 1:8, 3:8)."""
    n, m = (1, 1) if sparsity is None else (int(v) for v in sparsity)
    if n >= m:
        n, m = 1, 1
    try:
        return LayerFormat(n, m, 8 if wbits is None else int(wbits))
    except ValueError:
        return None


def choose_format(cfg: AccelConfig, weight: np.ndarray, sparsity=None, wbits=None) -> LayerFormat:
    """The format a layer runs in on the engine of ``cfg``.

    Parameters
    ----------
    cfg : AccelConfig
    weight : numpy.ndarray
        The effective int8 weight ``[N, K]`` (``q·s`` for int4 layers, zeros where pruned).
    sparsity : (int, int), optional
        The layer's N:M ((1, 1) or None: dense; N >= M counts as dense).
    wbits : {8, 4}, optional
        The layer's weight width (None: 8).

    Returns
    -------
    LayerFormat
        The requested format if the engine runs it and ``weight`` satisfies its N:M; otherwise
        the legal format with the highest r whose N:M the weight satisfies (dense always does),
        int4 only if the layer asked for int4 and the engine runs that int4 mode. Every choice is
        exact: all of them encode the same effective int8 weight.
    """
    want = _requested(sparsity, wbits)
    if want is not None and is_legal(cfg, want) and satisfies_nm(weight, want.n, want.m):
        return want
    bits = 8 if wbits is None else int(wbits)
    # fastest first; at equal mode the layer's own width (int4 only where it asked for int4)
    options = sorted((f for f in legal_formats(cfg) if f.wbits == 8 or bits == 4),
                     key=lambda f: (-f.r, f.m, f.wbits != bits))
    for fmt in options:
        if satisfies_nm(weight, fmt.n, fmt.m):
            return fmt
    return DENSE_INT8


# -------------------------------------------------------------------------------- sizes

def channels_per_tile(cfg: AccelConfig, fmt: LayerFormat) -> int:
    """C = P·r output channels per weight tile."""
    return cfg.chains * fmt.r


def _u(k_words: int) -> int:
    """Rows of word pairs (index rows, int4 value rows)."""
    return -(-k_words // 2)


def _blocks(fmt: LayerFormat, k_words: int) -> int:
    """int4 scale rows per tile: one per 32 value rows (dense) or 32/r (index, value) units."""
    return -(-_u(k_words) * fmt.r // INT4_GROUP)


def tile_mem_rows(cfg: AccelConfig, fmt: LayerFormat, k_words: int) -> int:
    """Memory rows (``row_bytes`` each) of one weight tile (docs/architecture.md)."""
    R, u = cfg.param_rows, _u(k_words)
    if fmt.int4:
        return R + (2 * u if fmt.sparse else u) + _blocks(fmt, k_words)
    return R + k_words + (u if fmt.sparse else 0)


def ring_reserve(cfg: AccelConfig, fmt: LayerFormat, k_words: int) -> int:
    """Weight-ring entries the prefetcher reserves for one tile (1 or 2 per memory row)."""
    return tile_mem_rows(cfg, fmt, k_words) * (2 if fmt.int4 else 1)


def _check_geometry(cfg: AccelConfig, fmt: LayerFormat, k_words: int, n_tiles: int) -> None:
    if k_words < 1 or n_tiles < 0:
        raise ValueError(f"k_words={k_words}, n_tiles={n_tiles}: need k_words >= 1")
    if cfg.param_rows * cfg.chain_len < _RECORD * fmt.r:
        raise ValueError(f"{fmt.label}: {fmt.r} records per chain do not fit the "
                         f"{cfg.param_rows} parameter rows")
    if cfg.chain_len % fmt.m or cfg.chain_len % fmt.r:
        raise ValueError(f"{fmt.label} does not tile a chain of {cfg.chain_len} slices")
    if fmt.int4 and INT4_GROUP % (2 * cfg.chain_len):
        raise ValueError(f"int4 needs 2L to divide {INT4_GROUP} (L = {cfg.chain_len})")


# ----------------------------------------------------------------------------- slots

def _pad2(a: np.ndarray, rows: int, cols: int, dtype) -> np.ndarray:
    out = np.zeros((rows, cols), dtype=dtype)
    a = np.asarray(a)
    out[: a.shape[0], : a.shape[1]] = a
    return out


def _to_slots(cfg: AccelConfig, fmt: LayerFormat, w: np.ndarray, n_tiles: int, k_words: int):
    """Per-slice values and indices ``[n_tiles, k_words, P, L]`` of a padded ``w[t·C, kw·L]``.

    Slot ``(t, kw, p, i)``: channel ``t·C + (i // S)·P + p``, entry ``i mod S`` of that channel's
    packing in word kw (the packing's groups of M never straddle words because ``M | L``).
    """
    P, L, r = cfg.chains, cfg.chain_len, fmt.r
    S = L // r
    if fmt.sparse:
        vals, idx = pack_nm(w, fmt.n, fmt.m)      # [t·C, kw·L/M, N]
    else:
        vals, idx = w, np.zeros(w.shape, dtype=np.uint8)

    def arrange(a):
        # channel = (t, seg, p), entries of a word = (seg-local slot j): lane i = seg·S + j
        a = a.reshape(n_tiles, r, P, k_words, S)
        return a.transpose(0, 3, 2, 1, 4).reshape(n_tiles, k_words, P, L)

    return arrange(vals), arrange(idx)


def _from_slots(cfg: AccelConfig, fmt: LayerFormat, vals: np.ndarray,
                idx: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_to_slots`: dense ``w[t·C, kw·L]`` (int8 or int16: entries that share a
    position add up)."""
    P, L, r = cfg.chains, cfg.chain_len, fmt.r
    n_tiles, k_words = vals.shape[:2]
    S = L // r

    def channel_major(a):
        # [t·C, kw·S]: a channel's S slots per word, words in order
        a = a.reshape(n_tiles, k_words, P, r, S)
        return a.transpose(0, 3, 2, 1, 4).reshape(n_tiles * r * P, k_words * S)

    v = channel_major(vals)
    if not fmt.sparse:
        return v
    i = channel_major(idx)
    if i.size and i.max() >= fmt.m:
        raise ValueError(f"{fmt.label}: sparse index {int(i.max())} >= M = {fmt.m}")
    # slot number q (over the whole row) is entry q mod N of group q // N (S/N = L/M groups per
    # word, so groups run on across words); its K position is group·M + index
    rows, width = v.shape[0], k_words * L
    pos = (np.arange(v.shape[1]) // fmt.n) * fmt.m + i.astype(np.int64)
    grouped = i.reshape(rows, -1, fmt.n)
    if np.all(np.diff(grouped.astype(np.int16), axis=-1) > 0):
        # ascending, hence distinct, positions in every group (what golden.pack_nm writes)
        dense = np.zeros((rows, width), dtype=np.int16)
        np.put_along_axis(dense, pos, v.astype(np.int16), axis=1)
        return dense
    # entries that share a position add up, as the chain's adders do (float64 is exact here)
    flat = (np.arange(rows)[:, None] * width + pos).ravel()
    dense = np.bincount(flat, weights=v.ravel().astype(np.float64), minlength=rows * width)
    return np.rint(dense).astype(np.int16).reshape(rows, width)


# ----------------------------------------------------------------------------- rows

def _param_rows(cfg: AccelConfig, fmt: LayerFormat, bias, mult, n_tiles: int) -> np.ndarray:
    """``[n_tiles, R, P, L]``: chain p's R·L bytes hold segment s's record at ``[8s, 8s+8)``."""
    P, L, R, r = cfg.chains, cfg.chain_len, cfg.param_rows, fmt.r
    C = P * r
    rec = np.zeros((n_tiles * C, _RECORD), dtype=np.uint8)
    n = len(bias)
    rec[:n, 0:4] = np.asarray(bias, dtype="<i4").reshape(n, 1).view(np.uint8)
    rec[:n, 4:6] = np.asarray(mult, dtype="<u2").reshape(n, 1).view(np.uint8)
    lanes = np.zeros((n_tiles, P, R * L), dtype=np.uint8)
    lanes[:, :, : r * _RECORD] = (rec.reshape(n_tiles, r, P, _RECORD).transpose(0, 2, 1, 3)
                                  .reshape(n_tiles, P, r * _RECORD))
    return lanes.reshape(n_tiles, P, R, L).transpose(0, 2, 1, 3)


def _read_params(cfg: AccelConfig, fmt: LayerFormat, prm: np.ndarray):
    """Inverse of :func:`_param_rows`: (bias int32, mult uint16) per channel ``t·C + s·P + p``."""
    P, L, R, r = cfg.chains, cfg.chain_len, cfg.param_rows, fmt.r
    n_tiles = prm.shape[0]
    lanes = prm.transpose(0, 2, 1, 3).reshape(n_tiles, P, R * L)[:, :, : r * _RECORD]
    rec = np.ascontiguousarray(lanes.reshape(n_tiles, P, r, _RECORD).transpose(0, 2, 1, 3))
    rec = rec.reshape(n_tiles * r * P, _RECORD)
    bias = rec[:, 0:4].copy().view("<i4").reshape(-1).astype(np.int32)
    mult = rec[:, 4:6].copy().view("<u2").reshape(-1).astype(np.uint16)
    return bias, mult


def _pair_rows(a: np.ndarray, u: int) -> np.ndarray:
    """``[t, kw, P, L]`` 4-bit fields -> ``[t, u, P, L]`` bytes: word 2h low nibble, 2h+1 high."""
    n_tiles, k_words = a.shape[:2]
    pad = np.zeros((n_tiles, 2 * u) + a.shape[2:], dtype=np.uint8)
    pad[:, :k_words] = a.astype(np.uint8) & 0xF
    return pad[:, 0::2] | (pad[:, 1::2] << 4)


def _split_rows(b: np.ndarray, k_words: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`_pair_rows`: (low, high) nibbles interleaved back to ``[t, kw, P, L]``
    as unsigned fields, plus the nibbles past ``k_words`` (padding)."""
    n_tiles, u = b.shape[:2]
    out = np.empty((n_tiles, 2 * u) + b.shape[2:], dtype=np.uint8)
    out[:, 0::2] = b & 0xF
    out[:, 1::2] = b >> 4
    return out[:, :k_words], out[:, k_words:]


def _scale_rows(cfg: AccelConfig, fmt: LayerFormat, w4_scale, n: int, n_tiles: int,
                n_blocks: int) -> np.ndarray:
    """``[n_tiles, n_blocks, P, L]``: chain p's nibble ``c = (γ − γ0)·r + seg`` of block β is
    the scale of channel ``t·C + seg·P + p`` in group ``γ = γ0 + c // r``, ``γ0 = β·2L/r``."""
    P, L, r = cfg.chains, cfg.chain_len, fmt.r
    per_block = 2 * L // r
    s = _pad2(np.asarray(w4_scale)[:n], n_tiles * P * r, n_blocks * per_block, np.uint8)
    nib = s.reshape(n_tiles, r, P, n_blocks, per_block).transpose(0, 3, 2, 4, 1)
    nib = nib.reshape(n_tiles, n_blocks, P, 2 * L) & 0xF
    return nib[..., 0::2] | (nib[..., 1::2] << 4)


def _read_scales(cfg: AccelConfig, fmt: LayerFormat, rows: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_scale_rows`: scales ``[n_tiles·C, n_blocks·2L/r]`` (uint8)."""
    P, L, r = cfg.chains, cfg.chain_len, fmt.r
    n_tiles, n_blocks = rows.shape[:2]
    nib = np.empty((n_tiles, n_blocks, P, 2 * L), dtype=np.uint8)
    nib[..., 0::2] = rows & 0xF
    nib[..., 1::2] = rows >> 4
    nib = nib.reshape(n_tiles, n_blocks, P, 2 * L // r, r).transpose(0, 4, 2, 1, 3)
    return nib.reshape(n_tiles * r * P, n_blocks * 2 * L // r)


def _interleave_blocks(head: np.ndarray, units: np.ndarray, per_block: int) -> np.ndarray:
    """Rows ``[t, n_blocks, P, L]`` of block heads (scale rows) each followed by up to
    ``per_block`` of ``units [t, n_units, k, P, L]`` (k rows each): ``[t, rows, P, L]``."""
    n_tiles, n_units, k = units.shape[:3]
    n_blocks = head.shape[1]
    pad = np.zeros((n_tiles, n_blocks * per_block) + units.shape[2:], dtype=np.uint8)
    pad[:, :n_units] = units
    body = pad.reshape(n_tiles, n_blocks, per_block * k, *units.shape[3:])
    rows = np.concatenate([head[:, :, None], body], axis=2)
    return rows.reshape(n_tiles, -1, *units.shape[3:])[:, : n_blocks + n_units * k]


def _deinterleave_blocks(rows: np.ndarray, n_blocks: int, n_units: int, k: int,
                         per_block: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`_interleave_blocks`: (heads, units)."""
    n_tiles = rows.shape[0]
    full = np.zeros((n_tiles, n_blocks * (1 + per_block * k)) + rows.shape[2:], dtype=np.uint8)
    full[:, : rows.shape[1]] = rows
    full = full.reshape(n_tiles, n_blocks, 1 + per_block * k, *rows.shape[2:])
    units = full[:, :, 1:].reshape(n_tiles, n_blocks * per_block, k, *rows.shape[2:])
    return full[:, :, 0], units[:, :n_units]


# ------------------------------------------------------------------------------ bodies

def _body_int8(fmt: LayerFormat, vals: np.ndarray, idx: np.ndarray) -> np.ndarray:
    if not fmt.sparse:
        return vals.view(np.uint8)
    n_tiles, k_words = vals.shape[:2]
    u = _u(k_words)
    v = np.zeros((n_tiles, 2 * u) + vals.shape[2:], dtype=np.uint8)
    v[:, :k_words] = vals.view(np.uint8)
    # per pair h: index row, value row 2h, value row 2h+1 (absent when 2h+1 = k_words)
    rows = np.stack([_pair_rows(idx, u), v[:, 0::2], v[:, 1::2]], axis=2)
    return rows.reshape(n_tiles, 3 * u, *vals.shape[2:])[:, : k_words + u]


def _body_int4(fmt: LayerFormat, codes: np.ndarray, idx: np.ndarray,
               scales: np.ndarray) -> np.ndarray:
    u = _u(codes.shape[1])
    values = _pair_rows(codes, u)
    if fmt.sparse:
        units = np.stack([_pair_rows(idx, u), values], axis=2)
    else:
        units = values[:, :, None]
    return _interleave_blocks(scales, units, INT4_GROUP // fmt.r)


def pack_weight_block(cfg: AccelConfig, fmt: LayerFormat, weight, bias, mult, k_words: int,
                      n_tiles: int, w4=None, w4_scale=None) -> bytes:
    """The weight block of one MATMUL: ``n_tiles`` tiles of ``tile_mem_rows`` rows, contiguous.

    Parameters
    ----------
    cfg : AccelConfig
    fmt : LayerFormat
        The layer's format (normally from :func:`choose_format`; legality is not checked here,
        only that the layout exists).
    weight : array_like
        Effective int8 weight ``[N, K]``; must satisfy ``fmt``'s N:M. For int4 it must equal
        ``golden.int4.dequantize_int4(w4, w4_scale)``.
    bias, mult : array_like
        int32 / uint16 per output channel ``[N]``.
    k_words, n_tiles : int
        ``K <= k_words·L`` and ``N <= n_tiles·C``; everything past K and N is zero.
    w4, w4_scale : array_like, optional
        int4 only: codes ``[N, K]`` in -8..7 and group scales ``[N, ceil(K/32)]`` in 1..15.

    Returns
    -------
    bytes
        ``n_tiles · tile_mem_rows · P·L`` bytes in the layout of docs/architecture.md.

    Raises
    ------
    ValueError
        Shapes exceed the tiling, the weight breaks the N:M, or the int4 parts are missing or
        disagree with ``weight``.
    """
    _check_geometry(cfg, fmt, k_words, n_tiles)
    weight = np.asarray(weight)
    n, k = weight.shape
    C, L = channels_per_tile(cfg, fmt), cfg.chain_len
    if k > k_words * L or n > n_tiles * C or len(bias) != n or len(mult) != n:
        raise ValueError(f"weight {list(weight.shape)} (bias {len(bias)}, mult {len(mult)}) does "
                         f"not fit {n_tiles} tiles of {C} channels x {k_words} words of {L}")
    if not satisfies_nm(weight, fmt.n, fmt.m):
        raise ValueError(f"weight does not satisfy {fmt.sparsity} sparsity")
    head = _param_rows(cfg, fmt, bias, mult, n_tiles)
    if fmt.int4:
        codes = _int4_codes(weight, w4, w4_scale)
        q, idx = _to_slots(cfg, fmt, _pad2(codes, n_tiles * C, k_words * L, np.int8),
                           n_tiles, k_words)
        scales = _scale_rows(cfg, fmt, w4_scale, n, n_tiles, _blocks(fmt, k_words))
        body = _body_int4(fmt, q, idx, scales)
    else:
        vals, idx = _to_slots(cfg, fmt, _pad2(weight, n_tiles * C, k_words * L, np.int8),
                              n_tiles, k_words)
        body = _body_int8(fmt, vals, idx)
    block = np.concatenate([head, body], axis=1)
    assert block.shape[1] == tile_mem_rows(cfg, fmt, k_words)
    return block.tobytes()


def _int4_codes(weight: np.ndarray, w4, w4_scale) -> np.ndarray:
    """Check the int4 parts against the effective weight; returns the codes as int8."""
    if w4 is None or w4_scale is None:
        raise ValueError("int4 format needs the codes w4 and the group scales w4_scale")
    q = np.asarray(w4)
    s = np.asarray(w4_scale)
    n, k = weight.shape
    groups = -(-k // INT4_GROUP)
    if q.shape != weight.shape or s.shape != (n, groups):
        raise ValueError(f"int4 codes {list(q.shape)} / scales {list(s.shape)} do not match "
                         f"weight {[n, k]} (scales need [{n}, {groups}])")
    if (q.min(initial=0) < -8 or q.max(initial=0) > 7 or s.min(initial=1) < 1
            or s.max(initial=1) > 15):
        raise ValueError("int4 codes must lie in -8..7 and scales in 1..15")
    sk = np.repeat(s.astype(np.int16), INT4_GROUP, axis=1)[:, :k]
    if not np.array_equal(q.astype(np.int16) * sk, weight.astype(np.int16)):
        raise ValueError("the effective weight is not w4 * w4_scale")
    return q.astype(np.int8)


def unpack_weight_block(cfg: AccelConfig, fmt: LayerFormat, data, k_words: int,
                        n_tiles: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode a weight block the way the engine does (the inverse of :func:`pack_weight_block`).

    Parameters
    ----------
    cfg, fmt, k_words, n_tiles
        As for :func:`pack_weight_block`.
    data : bytes-like or uint8 array
        At least ``n_tiles · tile_mem_rows · P·L`` bytes; the rest is ignored.

    Returns
    -------
    weight : numpy.ndarray
        int8 ``[n_tiles·C, k_words·L]``: the dense weight every tile encodes (``q·s`` for int4).
    bias : numpy.ndarray
        int32 ``[n_tiles·C]``.
    mult : numpy.ndarray
        uint16 ``[n_tiles·C]``.

    Raises
    ------
    ValueError
        Too few bytes, a sparse index ``>= M``, or sparse entries that share a position and sum
        outside int8. Bytes the doc says are zero (unused records, nibbles past ``k_words``,
        padding scales) are ignored, not checked.
    """
    _check_geometry(cfg, fmt, k_words, n_tiles)
    P, L = cfg.chains, cfg.chain_len
    rows = tile_mem_rows(cfg, fmt, k_words)
    nbytes = n_tiles * rows * cfg.row_bytes
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if buf.size < nbytes:
        raise ValueError(f"{fmt.label} block of {n_tiles} tiles x {rows} rows needs {nbytes} B, "
                         f"got {buf.size}")
    blk = buf.reshape(-1)[:nbytes].reshape(n_tiles, rows, P, L)
    R = cfg.param_rows
    bias, mult = _read_params(cfg, fmt, blk[:, :R])
    body = blk[:, R:]
    if fmt.int4:
        w = _unpack_int4(cfg, fmt, body, k_words)
    else:
        w = _unpack_int8(cfg, fmt, body, k_words)
    if w.size and (w.min() < -128 or w.max() > 127):
        raise ValueError(f"{fmt.label}: sparse entries at one position sum outside int8")
    return w.astype(np.int8), bias, mult


def _unpack_int8(cfg: AccelConfig, fmt: LayerFormat, body: np.ndarray, k_words: int):
    if not fmt.sparse:
        return _from_slots(cfg, fmt, body.view(np.int8), np.zeros(body.shape, np.uint8))
    n_tiles, u = body.shape[0], _u(k_words)
    full = np.zeros((n_tiles, 3 * u) + body.shape[2:], dtype=np.uint8)
    full[:, : body.shape[1]] = body
    full = full.reshape(n_tiles, u, 3, *body.shape[2:])
    idx, _ = _split_rows(full[:, :, 0], k_words)
    vals = np.stack([full[:, :, 1], full[:, :, 2]], axis=2).reshape(n_tiles, 2 * u,
                                                                    *body.shape[2:])
    return _from_slots(cfg, fmt, vals[:, :k_words].view(np.int8), idx)


def _unpack_int4(cfg: AccelConfig, fmt: LayerFormat, body: np.ndarray, k_words: int):
    u, per_block = _u(k_words), INT4_GROUP // fmt.r
    k = 2 if fmt.sparse else 1
    heads, units = _deinterleave_blocks(body, _blocks(fmt, k_words), u, k, per_block)
    codes, _ = _split_rows(units[:, :, -1], k_words)
    q = np.where(codes >= 8, codes.astype(np.int16) - 16, codes)  # two's complement nibbles
    if fmt.sparse:
        idx, _ = _split_rows(units[:, :, 0], k_words)
    else:
        idx = np.zeros(q.shape, dtype=np.uint8)
    qd = _from_slots(cfg, fmt, q, idx)                           # [t·C, kw·L] codes
    scales = _read_scales(cfg, fmt, heads).astype(np.int16)
    sk = np.repeat(scales, INT4_GROUP, axis=1)[:, : qd.shape[1]]
    return qd.astype(np.int16) * sk
