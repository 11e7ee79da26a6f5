"""Builds small memory images and programs for top-level tests, and their golden results."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwflow.golden import int8 as golden
from hwflow.golden.int4 import GROUP, dequantize_int4
from hwflow.golden.sparse import prune_nm
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import FLAG_INT4
from hwflow.mapping.weight_format import (
    DENSE_INT8,
    LayerFormat,
    channels_per_tile,
    pack_weight_block,
    tile_mem_rows,
)


def pack_weights(cfg: AccelConfig, w: np.ndarray, bias: np.ndarray, mult: np.ndarray,
                 k_words: int, n_tiles: int, fmt: LayerFormat = DENSE_INT8, w4=None,
                 w4_scale=None) -> bytes:
    """Weight block in the architecture.md layout (``mapping.weight_format``)."""
    return pack_weight_block(cfg, fmt, w, bias, mult, k_words, n_tiles, w4=w4,
                             w4_scale=w4_scale)


@dataclass
class Layer:
    """One MATMUL's weights in a format, with its instruction fields."""

    fmt: LayerFormat
    w: np.ndarray           # effective int8 weight [N, K]
    bias: np.ndarray
    mult: np.ndarray
    k_words: int
    n_tiles: int
    block: bytes
    tile_mem_rows: int

    @property
    def mode(self) -> dict:
        """MATMUL fields of the format (``Instr(..., **layer.mode)``; flags to be OR-ed)."""
        return {"tile_mem_rows": self.tile_mem_rows, "lgm": self.fmt.lgm, "lgr": self.fmt.lgr}

    @property
    def flags(self) -> int:
        return FLAG_INT4 if self.fmt.int4 else 0


def random_layer(cfg: AccelConfig, rng: np.random.Generator, K: int, N: int,
                 fmt: LayerFormat = DENSE_INT8, n_tiles: int | None = None,
                 bias_range: int = 3000, mult_range=(1, 65536)) -> Layer:
    """Random weights of ``fmt`` (pruned to its N:M, int4 codes and scales), packed."""
    L = cfg.chain_len
    kw = -(-K // L)
    C = channels_per_tile(cfg, fmt)
    nt = -(-N // C) if n_tiles is None else n_tiles
    w4 = s4 = None
    if fmt.int4:
        q = rng.integers(-8, 8, size=(N, K))
        q = prune_nm(q, fmt.n, fmt.m).astype(np.int8)
        s4 = rng.integers(1, 16, size=(N, -(-K // GROUP))).astype(np.uint8)
        w4 = q
        w = dequantize_int4(q, s4)
    else:
        w = rng.integers(-128, 128, size=(N, K))
        w = np.where(rng.random((N, K)) < 0.1, rng.choice([-128, 127], size=(N, K)), w)
        w = prune_nm(w, fmt.n, fmt.m).astype(np.int8)
    bias = rng.integers(-bias_range, bias_range, size=N)
    mult = rng.integers(*mult_range, size=N)
    block = pack_weights(cfg, w, bias, mult, kw, nt, fmt, w4, s4)
    return Layer(fmt, w, bias, mult, kw, nt, block, tile_mem_rows(cfg, fmt, kw))


def act_rows(x: np.ndarray, words: int, L: int) -> bytes:
    """int8 rows laid out ``words`` words apart, zero padded."""
    rows = np.zeros((x.shape[0], words * L), dtype=np.int8)
    rows[:, :x.shape[1]] = x
    return rows.tobytes()


def matmul_expect(x, w, bias, mult, shift, relu, res=None, res_mult=0):
    acc = golden.matmul(x, w)
    return golden.requantize(acc, bias, mult, shift, relu, res=res, res_mult=res_mult)


def fill_entries(cfg: AccelConfig, fmt: LayerFormat, block: bytes, k_words: int,
                 n_tiles: int) -> list:
    """The weight-ring entries a block decodes into, read off docs/architecture.md ("Weight
    ring", "Weight tile formats") row by row: ``[(values, idx)]``, each ``uint8 [P, L]``
    (memory order: chain p, slice i), ``R + k_words`` per tile (parameter rows raw)."""
    P, L, R, r = cfg.chains, cfg.chain_len, cfg.param_rows, fmt.r
    S, tmr = L // r, tile_mem_rows(cfg, fmt, k_words)
    rows = np.frombuffer(block, dtype=np.uint8).reshape(n_tiles, tmr, P, L)
    zero = np.zeros((P, L), dtype=np.uint8)
    lanes = np.arange(L)
    out = []
    for t in range(n_tiles):
        it = iter(rows[t])
        out += [(next(it), zero) for _ in range(R)]
        if not fmt.int4 and not fmt.sparse:
            out += [(next(it), zero) for _ in range(k_words)]
            continue
        per_block = GROUP // r                          # int4 value rows per scale row
        for h in range(-(-k_words // 2)):
            if fmt.int4 and h % per_block == 0:
                scale = next(it)
            idx_row = next(it) if fmt.sparse else zero
            if fmt.int4:
                vrow = next(it)
            for half in (0, 1):
                kw = 2 * h + half
                if kw >= k_words:
                    break
                idx = (idx_row >> (4 * half)) & 15
                if not fmt.int4:
                    out.append((next(it), idx))
                    continue
                q = (vrow >> (4 * half)) & 15
                q = np.where(q >= 8, q.astype(np.int16) - 16, q)
                gamma = 2 * h * L // GROUP
                gamma0 = h // per_block * 2 * L // r
                c = (gamma - gamma0) * r + lanes // S           # per slice i
                s = (scale[:, c // 2] >> (4 * (c % 2))) & 15    # [P, L]
                out.append(((q * s).astype(np.int8).view(np.uint8), idx))
    return out
