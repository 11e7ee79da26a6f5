"""W8A8 integer arithmetic: the one definition of what the matrix engine and its epilogue compute.

Every hardware block that touches these numbers (``hw.matrix_engine``, ``hw.epilogue``), the ISA
functional model (``sim.isa_model``) and the IR interpreter (``compiler.interpret``) call these
functions or are tested against them, so the RTL, the model and the compiler cannot disagree.

Number formats
--------------
* activations and weights: signed int8, symmetric (zero point 0), ``real = q * scale``;
* weights: one scale per output channel, ``scale = max|w_row| / 127``;
* activations: one static scale per tensor, ``scale = max|x| / 127`` over a calibration sample;
* accumulation: exact integer sums, required (and checked by the compiler) to fit int32;
* requantization multiplier: ``real ~= mult * 2**-shift`` with ``mult`` an unsigned 16-bit integer
  (one per output channel) and ``shift`` in ``[0, 47]`` (one per layer). 16 bits keep the
  relative error of the multiplier below 2**-15 for the largest channel of a layer, and
  ``(int32 + int32) * u16`` fits the 48-bit DSP48E2 accumulator.
* rounding: round half up (add ``2**(shift-1)`` then arithmetic shift right), as a DSP48E2
  does with its RND input; saturation to ``[-128, 127]``; ReLU clamps at 0 before saturation.
"""

from __future__ import annotations

import numpy as np

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MULT_BITS = 16
MULT_MAX = 2**MULT_BITS - 1
SHIFT_MAX = 47
#: Weight elements widened to int64 at a time by :func:`matmul` (64 MiB).
_WIDEN_BLOCK = 2**23


def quantize(x: np.ndarray, scale: float) -> np.ndarray:
    """Float tensor to int8 with a per-tensor scale: round half to even, saturate."""
    q = np.rint(np.asarray(x, dtype=np.float64) / scale)
    return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)


def dequantize(q: np.ndarray, scale) -> np.ndarray:
    """int8 (or int32) tensor back to float64: ``q * scale`` (scale broadcasts on the last axis)."""
    return np.asarray(q, dtype=np.float64) * np.asarray(scale, dtype=np.float64)


def tensor_scale(x: np.ndarray) -> float:
    """Static per-tensor activation scale ``max|x| / 127`` (1.0 for an all-zero tensor)."""
    m = float(np.max(np.abs(x))) if np.size(x) else 0.0
    return m / INT8_MAX if m > 0 else 1.0


def channel_scales(w: np.ndarray) -> np.ndarray:
    """Per-output-channel symmetric weight scales ``max|w[o, :]| / 127`` (1.0 for zero rows)."""
    m = np.max(np.abs(np.asarray(w, dtype=np.float64)), axis=1)
    return np.where(m > 0, m / INT8_MAX, 1.0)


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float weight ``[out, in]`` to (int8 weight, per-channel scales)."""
    s = channel_scales(w)
    q = np.clip(np.rint(np.asarray(w, dtype=np.float64) / s[:, None]), INT8_MIN, INT8_MAX)
    return q.astype(np.int8), s


def choose_shift(reals: np.ndarray) -> int:
    """Largest shift (<= 47) at which every real multiplier fits the unsigned 16-bit field."""
    top = float(np.max(np.abs(reals)))
    if top <= 0:
        return SHIFT_MAX
    shift = int(np.floor(np.log2(MULT_MAX / top)))
    while shift >= 0 and np.rint(top * 2.0**shift) > MULT_MAX:
        shift -= 1
    if shift < 0:
        raise ValueError(f"requantization multiplier {top:.3g} is too large for a u16 multiplier")
    return min(shift, SHIFT_MAX)


def quantize_multiplier(reals, shift: int) -> np.ndarray:
    """Real multipliers to unsigned 16-bit integers at a given shift: ``round(real * 2**shift)``."""
    m = np.rint(np.asarray(reals, dtype=np.float64) * 2.0**shift)
    if np.any(m < 0) or np.any(m > MULT_MAX):
        raise ValueError("multiplier out of the u16 range at this shift")
    return m.astype(np.int64)


def multiplier(real: float) -> tuple[int, int]:
    """``(mult, shift)`` of one real multiplier: ``mult / 2**shift = real`` at the largest shift
    the u16 field allows (:func:`choose_shift`, :func:`quantize_multiplier`)."""
    shift = choose_shift(np.array([real]))
    return int(quantize_multiplier([real], shift)[0]), shift


def matmul(x_q: np.ndarray, w_q: np.ndarray) -> np.ndarray:
    """int8 ``x[..., K]`` times int8 ``w[N, K]`` transposed: exact int32 sums ``[..., N]``.

    A large ``w`` is widened to int64 in blocks of rows (the same exact sums): the int64 copy
    of Llama-3's 128256 x 2048 LM head would be 2.1 GB."""
    x = np.asarray(x_q, dtype=np.int64)
    w_q = np.asarray(w_q)
    step = max(1, _WIDEN_BLOCK // max(1, w_q.shape[-1]))
    if w_q.shape[0] <= step:
        acc = x @ np.asarray(w_q, dtype=np.int64).T
    else:
        acc = np.concatenate([x @ np.asarray(w_q[a:a + step], dtype=np.int64).T
                              for a in range(0, w_q.shape[0], step)], axis=-1)
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        raise OverflowError("int32 accumulator overflow")
    return acc


def requantize(acc, bias, mult, shift: int, relu: bool = False, res=None, res_mult: int = 0,
               bits: int = 8):
    """The matmul epilogue: bias, scale, optional residual, round, ReLU, saturate to int8.

    ``v = (acc + bias) * mult + res * res_mult``; ``v = (v + 2**(shift-1)) >> shift`` (no rounding
    term when shift is 0); ``v = max(v, 0)`` if ReLU; ``out = clip(v, -128, 127)``.
    ``bias`` and ``mult`` broadcast over the last (channel) axis. ``bits = 4``: a 4-bit
    activation (W4A4), saturated to ``[-8, 7]`` instead (:func:`saturate`), still an int8 array.
    """
    if not 0 <= shift <= SHIFT_MAX:
        raise ValueError(f"shift {shift} outside [0, {SHIFT_MAX}]")
    v = (np.asarray(acc, dtype=np.int64) + np.asarray(bias, dtype=np.int64)) * np.asarray(
        mult, dtype=np.int64
    )
    if res is not None:
        v = v + np.asarray(res, dtype=np.int64) * int(res_mult)
    if shift > 0:
        v = (v + (1 << (shift - 1))) >> shift
    if relu:
        v = np.maximum(v, 0)
    return saturate(v, bits)


def saturate(v, bits: int = 8) -> np.ndarray:
    """Clip integers to a signed ``bits``-wide activation (8: int8; 4: the W4A4 activations,
    -8..7), as an int8 array."""
    if bits not in (4, 8):
        raise ValueError(f"activation width {bits}: 8 or 4 bits")
    top = (1 << (bits - 1)) - 1
    return np.clip(v, -top - 1, top).astype(np.int8)


def residual_add(a, b, a_mult: int, b_mult: int, shift: int, relu: bool = False) -> np.ndarray:
    """int8 + int8 with rescaling: the epilogue with ``acc = a``, no bias, ``res = b``."""
    return requantize(a, 0, a_mult, shift, relu, res=b, res_mult=b_mult)
