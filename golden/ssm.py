"""Integer-only kernels of the selective state-space (Mamba) block, as the state-space unit is
to compute them (issue "Mamba on the accelerator"; the float block is ``compiler/ssm.py``).

Every function takes and returns integer numpy arrays and is bit-exact by definition. The float
meaning of each kernel (what the quantizer chooses the multipliers for) is in its docstring.
Shifts of negative numbers are arithmetic (floor). The SiLU of the conv output and of the gate
reuse the transformer path's ``golden.llm.gate_mul`` (SiLU ROM at the fixed input scale 1/16),
the decay reuses its ``exp2_neg`` ROM, the linears ``golden.int8``.

Fixed formats:

* ``dt`` (the step size, after softplus): uint16 at ``2**-DT_FRAC`` (range [0, 16));
* ``SOFTPLUS_LUT``: ``round(softplus(v / 16) * 2**DT_FRAC)`` for int8 ``v``: the dt projection's
  output is int8 at the fixed scale 1/16 (range +-8: softplus(-8) = 3.4e-4, a trained model's
  ``dt`` lies in [1e-3, 1e-1] at initialisation);
* the decay rate ``|A| * log2(e)`` per (channel, state): uint16 at ``2**-A_FRAC``, so that
  ``exp(dt * A) = 2**(-dt * |A| * log2 e)`` is one product, one shift and ``exp2_neg``;
* the state ``h``: int32 at a per-layer scale ``s_h``; the decay is Q15.
"""

from __future__ import annotations

import math

import numpy as np

from .int8 import requantize
from .llm import EXP2_FRAC, exp2_neg

__all__ = ["DT_FRAC", "A_FRAC", "DECAY_FRAC", "SOFTPLUS_SCALE", "SOFTPLUS_LUT", "causal_conv",
           "softplus_dt", "decay", "scan_step", "decay_rate_codes", "hadamard",
           "hadamard_block"]

#: Fractional bits of ``dt`` (uint16).
DT_FRAC = 12
#: Fractional bits of the decay-rate codes ``|A| * log2 e`` (uint16: rates up to 256).
A_FRAC = 8
#: The decay ``exp(dt * A)`` in Q15 (``golden.llm.exp2_neg``'s format).
DECAY_FRAC = 15
#: The dt projection's int8 output scale: the softplus ROM's input.
SOFTPLUS_SCALE = 1.0 / 16
SOFTPLUS_LUT = np.array([int(round(math.log1p(math.exp(v / 16)) * (1 << DT_FRAC)))
                         for v in range(-128, 128)], dtype=np.int64)
_INT32 = (-(1 << 31), (1 << 31) - 1)


def _round_shift(v, shift: int) -> np.ndarray:
    v = np.asarray(v, dtype=np.int64)
    return (v + (1 << (shift - 1))) >> shift if shift > 0 else v


def causal_conv(x, hist, w, bias, mult, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """The causal depthwise conv of int8 rows ``x [T, C]`` after the ``d_conv - 1`` held inputs
    ``hist [d_conv - 1, C]`` (oldest first; zeros before the first token), requantized per
    channel: ``requantize(sum_k win[t + k] * w[:, k], bias, mult, shift)``.

    Float meaning: ``w`` int8 ``[C, d_conv]`` at per-channel scales ``s_w``, ``bias`` at
    ``s_x * s_w``, output at ``SILU_SCALE`` (it feeds the SiLU ROM):
    ``mult / 2**shift = s_x * s_w / (1/16)``.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        int8 ``[T, C]`` and the new ``hist`` (the last ``d_conv - 1`` inputs).
    """
    x = np.asarray(x, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    win = np.concatenate([np.asarray(hist, dtype=np.int64), x], axis=0)
    t, k = x.shape[0], w.shape[1]
    acc = sum(win[j:j + t] * w[:, j] for j in range(k))
    return requantize(acc, bias, mult, shift), win[t:].astype(np.int8)


def softplus_dt(p) -> np.ndarray:
    """``dt = softplus(p / 16)`` as uint16 at ``2**-DT_FRAC``: one ROM read (``p`` int8)."""
    return SOFTPLUS_LUT[np.asarray(p, dtype=np.int64) + 128]


def decay_rate_codes(A) -> np.ndarray:
    """The decay-rate codes of a float ``A`` (negative): ``round(-A * log2 e * 2**A_FRAC)``,
    uint16 (saturated: a rate past 256 decays to 0 in one step of dt >= 1/16 anyway)."""
    r = np.rint(-np.asarray(A, dtype=np.float64) * math.log2(math.e) * (1 << A_FRAC))
    return np.clip(r, 0, (1 << 16) - 1).astype(np.int64)


def decay(dt, a_codes) -> np.ndarray:
    """``exp(dt * A)`` in Q15 for every (channel, state): ``exp2_neg(v)`` with ``v =
    round(dt * a >> (DT_FRAC + A_FRAC - EXP2_FRAC))`` the exponent in 1/256 steps
    (``dt [..., C]`` uint16, ``a_codes [C, d_state]``)."""
    v = _round_shift(np.asarray(dt, dtype=np.int64)[..., None] * np.asarray(a_codes, np.int64),
                     DT_FRAC + A_FRAC - EXP2_FRAC)
    return exp2_neg(v)


def scan_step(h, dt, a_codes, b, c, u, bu_mult, bu_shift: int, y_mult, y_shift: int,
              d_mult, d_shift: int) -> tuple[np.ndarray, np.ndarray]:
    """One token of the selective scan for every channel: the state update and the output.

    ``h [C, d_state]`` int32 at ``s_h``; ``dt [C]`` uint16 (:func:`softplus_dt`); ``a_codes
    [C, d_state]`` (:func:`decay_rate_codes`); ``b``, ``c`` int8 ``[d_state]`` at ``s_B``,
    ``s_C``; ``u`` int8 ``[C]`` at ``s_u``.

    * ``h' = round(decay * h >> 15) + round(dt * b * u * bu_mult >> bu_shift)``, saturated to
      int32 (``bu_mult / 2**bu_shift = 2**-DT_FRAC * s_B * s_u / s_h``);
    * ``y = sat8(round(sum_s h'[:, s] * c[s] * y_mult >> y_shift) + round(u * d_mult >>
      d_shift))`` (``y_mult / 2**y_shift = s_h * s_C / s_y``; ``d_mult`` signed per channel,
      ``d_mult / 2**d_shift = D * s_u / s_y``).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``h'`` int32-valued ``[C, d_state]`` and ``y`` int8 ``[C]``.
    """
    h = np.asarray(h, dtype=np.int64)
    dt = np.asarray(dt, dtype=np.int64)
    u = np.asarray(u, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    dbu = _round_shift((dt * u)[:, None] * b[None, :] * int(bu_mult), bu_shift)
    h = np.clip(_round_shift(decay(dt, a_codes) * h, DECAY_FRAC) + dbu, *_INT32)
    acc = h @ np.asarray(c, dtype=np.int64)
    y = _round_shift(acc * int(y_mult), y_shift) + _round_shift(
        u * np.asarray(d_mult, dtype=np.int64), d_shift)
    return h, np.clip(y, -128, 127).astype(np.int8)


def hadamard_block(n: int) -> int:
    """The block of the online Walsh-Hadamard transform over ``n`` channels: the largest power
    of two that divides ``n`` (1024 for Mamba-2.8B's 5120 inner channels, 64 for 192), so the
    transform is block-diagonal with blocks of Sylvester matrices, each orthogonal after its
    ``1/sqrt(block)``."""
    return n & -n


def hadamard(x, block: int) -> np.ndarray:
    """The unnormalized fast Walsh-Hadamard transform of integer rows ``x [..., n]`` in blocks of
    ``block`` channels (a power of two dividing ``n``): ``log2(block)`` butterfly stages of one
    add and one subtract per pair, exact (``|out| <= block * max|x|``), int64.

    Float meaning: block ``j`` of the output is ``H x_j`` with ``H`` the Sylvester matrix
    (``H_1 = [1]``, ``H_2k = [[H_k, H_k], [H_k, -H_k]]``, symmetric, ``H H = block * I``), so
    ``out / sqrt(block)`` is ``x`` rotated orthogonally; the quantizer folds the same rotation
    into the weight that reads it and the ``1/sqrt(block)`` into the requantization.
    """
    x = np.asarray(x, dtype=np.int64)
    n = x.shape[-1]
    if block < 1 or block & (block - 1) or n % block:
        raise ValueError(f"Hadamard block {block} must be a power of two dividing {n}")
    y = x.reshape(*x.shape[:-1], n // block, block).copy()
    h = 1
    while h < block:
        y = y.reshape(*y.shape[:-1], block // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = np.stack([a + b, a - b], axis=-2).reshape(*x.shape[:-1], n // block, block)
        h *= 2
    return y.reshape(x.shape)
