"""int4 weights with group-wise scales, dequantized to int8 in the engine.

A weight ``w[N, K]`` is stored as 4-bit codes ``q`` (two's complement, -8..7) and, for every
output channel n and group of :data:`GROUP` consecutive weights along K, an unsigned 4-bit scale
``s`` (1..15). The engine multiplies ``q * s`` (an int8 in -120..105) and from then on the layer
is an exact int8 matmul; the per-channel float scale ``c[n]`` goes into the requantization
multiplier as an int8 layer's weight scale does:

    w[n, k] ~= c[n] * s[n, k // GROUP] * q[n, k]

Choosing the scales: ``c[n] = max|w[n, :]| / (7 * 15)``, so the largest group uses s = 15 and
|q| <= 7 there; every group gets the smallest s with ``max|w[n, group]| <= 7 * s * c[n]``
(at least 1), and ``q = clip(round(w / (c * s)), -8, 7)``. Smaller groups keep more of their
resolution than with one scale per channel. Zeros stay zeros (pruned weights stay pruned).
"""

from __future__ import annotations

import numpy as np

__all__ = ["GROUP", "Q_MIN", "Q_MAX", "S_MAX", "quantize_weight_int4", "dequantize_int4"]

GROUP = 32
Q_MIN, Q_MAX = -8, 7
S_MAX = 15


def _group_absmax(w: np.ndarray) -> np.ndarray:
    n, k = w.shape
    g = -(-k // GROUP)
    pad = np.zeros((n, g * GROUP))
    pad[:, :k] = np.abs(w)
    return pad.reshape(n, g, GROUP).max(axis=-1)


def quantize_weight_int4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float ``w[N, K]`` -> ``(q, s, c)``: codes int8 ``[N, K]`` in -8..7, scales uint8
    ``[N, ceil(K/32)]`` in 1..15, per-channel float scales ``c [N]``."""
    w = np.asarray(w, dtype=np.float64)
    amax = _group_absmax(w)
    top = amax.max(axis=1)
    c = np.where(top > 0, top / (Q_MAX * S_MAX), 1.0)
    s = np.clip(np.ceil(amax / (Q_MAX * c[:, None]) - 1e-9), 1, S_MAX).astype(np.uint8)
    step = c[:, None] * np.repeat(s, GROUP, axis=1)[:, :w.shape[1]]
    q = np.clip(np.rint(w / step), Q_MIN, Q_MAX).astype(np.int8)
    return q, s, c


def dequantize_int4(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The int8 weight the engine computes with: ``q[n, k] * s[n, k // 32]``."""
    q = np.asarray(q, dtype=np.int16)
    sk = np.repeat(np.asarray(s, dtype=np.int16), GROUP, axis=1)[:, :q.shape[1]]
    return (q * sk).astype(np.int8)
