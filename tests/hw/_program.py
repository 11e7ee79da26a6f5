"""Builds small memory images and programs for top-level tests, and their golden results."""

from __future__ import annotations

import numpy as np

from hwflow.golden import int8 as golden
from hwflow.hw.config import AccelConfig


def pack_weights(cfg: AccelConfig, w: np.ndarray, bias: np.ndarray, mult: np.ndarray,
                 k_words: int, n_tiles: int) -> bytes:
    """Weight block in the architecture.md layout: tiles of param rows + k_words rows."""
    P, L, R = cfg.chains, cfg.chain_len, cfg.param_rows
    N, K = w.shape
    blk = np.zeros((n_tiles, R + k_words, P, L), dtype=np.uint8)
    for t in range(n_tiles):
        for p in range(P):
            n = t * P + p
            if n >= N:
                continue
            prm = np.zeros(R * L, dtype=np.uint8)
            prm[:8] = np.frombuffer(
                int(bias[n]).to_bytes(4, "little", signed=True)
                + int(mult[n]).to_bytes(2, "little") + b"\0\0", dtype=np.uint8)
            blk[t, :R, p, :] = prm.reshape(R, L)
            row = np.zeros(k_words * L, dtype=np.int8)
            row[:K] = w[n]
            blk[t, R:, p, :] = row.view(np.uint8).reshape(k_words, L)
    return blk.tobytes()


def act_rows(x: np.ndarray, words: int, L: int) -> bytes:
    """int8 rows laid out ``words`` words apart, zero padded."""
    rows = np.zeros((x.shape[0], words * L), dtype=np.int8)
    rows[:, :x.shape[1]] = x
    return rows.tobytes()


def matmul_expect(x, w, bias, mult, shift, relu, res=None, res_mult=0):
    acc = golden.matmul(x, w)
    return golden.requantize(acc, bias, mult, shift, relu, res=res, res_mult=res_mult)
