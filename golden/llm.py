"""Integer-only kernels of the transformer path, exactly as the SFU and the attention unit compute
them (docs/architecture.md, "Transformer path").

Every function takes and returns integer numpy arrays and is bit-exact by definition: the RTL
and the ISA functional model must reproduce it bit for bit. The float meaning of each kernel
(what the compiler chooses the multipliers for) is in its docstring. Shifts of negative numbers
are arithmetic (floor), as ``>>`` on numpy int64 and on signed hardware values.

Fixed constants (hardware ROMs):

* ``SILU_LUT``: ``round(silu(v / 16) * 256)`` for int8 ``v`` (the gate's scale is fixed at 1/16);
  ``RELU2_LUT`` and ``GELU_LUT`` alike for BitNet's squared ReLU and Gemma's GELU-tanh;
* ``TANH_LUT``: ``round(tanh(v / 64) * 2**14)`` for int8 ``v`` (Gemma 2's final logit cap);
* ``SOFTCAP_CORR``: ``u - tanh(u)`` in Q12 at 1024 midpoints of ``[0, 4)`` (attention score cap);
* ``EXP2_LUT``: ``round(2 ** (15 - f / 256))`` for ``f < 256`` (``EXP2_LUT[0] = 32768``);
* RoPE cos/sin: Q1.14 int16 (``round(cos * 2**14)``), from a table in external memory.
"""

from __future__ import annotations

import math

import numpy as np

from .int8 import saturate

__all__ = [
    "SILU_SCALE", "SILU_LUT", "EXP2_FRAC", "EXP2_LUT", "ROPE_FRAC", "ATTN_BLOCK", "RSQRT_SHIFT",
    "isqrt", "rmsnorm", "rope", "rope_table", "default_inv_freq", "silu_mul", "exp2_neg",
    "attention_row", "attention", "attended", "attended_total", "RELU2_LUT", "relu2_mul",
    "GELU_LUT", "GATE_LUTS", "gate_mul", "TANH_STEPS", "TANH_LUT", "tanh_cap", "SOFTCAP_FRAC",
    "SOFTCAP_CORR", "softcap_scores", "softcap_code",
]

INT8_MIN, INT8_MAX = -128, 127

#: The gate input of SiLU is int8 at this fixed scale (range +-8), so SiLU is one 256-entry ROM.
SILU_SCALE = 1.0 / 16
#: SILU_LUT[v + 128] = round(silu(v / 16) * 2**8), v in [-128, 127]; range -71..2031 (12 bits).
SILU_LUT = np.array([int(round((v / 16) / (1.0 + math.exp(-v / 16)) * 256))
                     for v in range(-128, 128)], dtype=np.int64)

#: RELU2_LUT[v + 128] = round(relu(v / 16)**2 * 2**8) = v**2 for v > 0, else 0 (BitNet's
#: squared-ReLU gate at the same fixed scale 1/16; 14 bits).
RELU2_LUT = np.array([v * v if v > 0 else 0 for v in range(-128, 128)], dtype=np.int64)


def _gelu_tanh(x: float) -> float:
    """``gelu(x, approximate="tanh")``, the ``gelu_pytorch_tanh`` of Gemma's MLP."""
    return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


#: GELU_LUT[v + 128] = round(gelu_tanh(v / 16) * 2**8) (Gemma's gate at the same fixed scale
#: 1/16); range -44..2032 (12 bits).
GELU_LUT = np.array([int(round(_gelu_tanh(v / 16) * 256)) for v in range(-128, 128)],
                    dtype=np.int64)
#: The gate ROM of each activation ``act(gate) * up`` (SILUMUL: no flag, RELU2, GELU).
GATE_LUTS = {"silu": SILU_LUT, "relu2": RELU2_LUT, "gelu_tanh": GELU_LUT}

#: The final logit cap's input is int8 at the fixed scale cap / TANH_STEPS: inputs up to two
#: caps (tanh(2) = 0.964; a logit past twice the cap saturates), steps of 1/64 cap.
TANH_STEPS = 64
#: TANH_LUT[v + 128] = round(tanh(v / 64) * 2**14) (|entries| <= 15795, 16 signed bits).
TANH_LUT = np.array([int(round(math.tanh(v / TANH_STEPS) * (1 << 14)))
                     for v in range(-128, 128)], dtype=np.int64)

#: Attention score soft-capping (Gemma 2): the capped score is computed from ``u``, the score
#: over the cap in Q12 (``u = 4096 * score / cap``), by ``SOFTCAP_CORR[i] = round((c - tanh c)
#: * 2**12)`` at the midpoint ``c = (i + 0.5) / 256`` of the i-th 1/256 of ``[0, 4)``.
SOFTCAP_FRAC = 12
_SOFTCAP_STEP = 4                   # index = |u| >> 4: 256 entries per unit of score / cap
_SOFTCAP_ENTRIES = 1024             # [0, 4): tanh(4) = 0.99933, 1 beyond
SOFTCAP_CORR = np.array([int(round((c - math.tanh(c)) * (1 << SOFTCAP_FRAC)))
                         for c in ((i + 0.5) / 256 for i in range(_SOFTCAP_ENTRIES))],
                        dtype=np.int64)
#: The cap operand is the cap in log2-domain score units (t of attention_row) over 32.
_SOFTCAP_CAP_SHIFT = 5

#: Fractional bits of the log2-domain scores (t = s * smul >> sshift is log2(e) * score * 2**8).
EXP2_FRAC = 8
#: EXP2_LUT[f] = round(2 ** (15 - f / 256)): 2**-x in Q15 for the fractional part of x.
EXP2_LUT = np.array([int(round(2.0 ** (15 - f / 256))) for f in range(256)], dtype=np.int64)

#: RoPE cos/sin are Q1.14.
ROPE_FRAC = 14
#: Keys per online-softmax block (the attention unit's score buffer).
ATTN_BLOCK = 16
#: RMSNorm: d = isqrt(S << 16) (= sqrt(S) * 2**8), r = 2**40 // d (= 2**32 / sqrt(S)).
RSQRT_SHIFT = 40


def _sat8(v: np.ndarray) -> np.ndarray:
    return np.clip(v, INT8_MIN, INT8_MAX).astype(np.int8)


def _round_shift(v: np.ndarray, shift: int) -> np.ndarray:
    """``(v + 2**(shift-1)) >> shift`` (round half up), ``v`` when shift is 0."""
    v = np.asarray(v, dtype=np.int64)
    return (v + (1 << (shift - 1))) >> shift if shift > 0 else v


def isqrt(v) -> np.ndarray:
    """Floor square root of non-negative integers (elementwise, exact for v < 2**62)."""
    v = np.asarray(v, dtype=np.int64)
    return np.array([math.isqrt(int(x)) for x in v.ravel()], dtype=np.int64).reshape(v.shape)


def rmsnorm(x, eps: int, mult: int, shift: int, gamma=None, bits: int = 8) -> np.ndarray:
    """RMSNorm of int8 rows; its gamma is folded by the compiler into the next linear, or
    given here as int8 codes (``gamma``, one per element of a row, the same for every row:
    Qwen3's per-head q/k norms, whose gamma cannot pass through RoPE).

    Per row: ``S = sum(x**2) + eps``; ``d = isqrt(S << 16)``; ``r = 2**40 // d`` (``r = 0`` when
    ``d = 0``); ``y = sat8((x * g * r * mult + 2**(shift-1)) >> shift)`` (``g`` the code, 1
    without ``gamma``; ``bits = 4`` saturates to a 4-bit activation, ``golden.int8.saturate``).

    Float meaning: ``y * s_out = x * s_x / sqrt(mean(x**2) * s_x**2 + eps_f) * g * s_g`` with
    ``eps = round(eps_f * H / s_x**2)``, ``mult / 2**shift = sqrt(H) * s_g / (s_out * 2**32)``
    (``s_g = 1`` without codes).
    Widths: ``S < 2**32`` (H <= 2**17), ``|x * r| <= 2**32``, ``|x * g * r| <= 2**39``, the
    product with the u16 mult < 2**56.
    """
    x = np.asarray(x, dtype=np.int64)
    s = np.sum(x * x, axis=-1, keepdims=True) + int(eps)
    d = isqrt(s << 16)
    r = np.where(d > 0, (1 << RSQRT_SHIFT) // np.maximum(d, 1), 0)
    xg = x if gamma is None else x * np.asarray(gamma, dtype=np.int64)
    return saturate(_round_shift(xg * r * int(mult), shift), bits)


def default_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """The default RoPE's inverse frequencies ``theta**(-2i/head_dim)``, ``i < head_dim/2``
    (float64)."""
    return 1.0 / (theta ** (np.arange(head_dim // 2, dtype=np.float64) * 2 / head_dim))


def rope_table(positions: int, inv_freq, scaling: float = 1.0) -> np.ndarray:
    """int16 table ``[positions, head_dim]``: per position ``head_dim/2`` cos then ``head_dim/2``
    sin, Q1.14, of the angles ``p * inv_freq[i]`` times ``scaling``. ``inv_freq`` (``head_dim/2``
    entries) is the model's rotary module's (:func:`default_inv_freq` for the default RoPE;
    llama3, YaRN, linear, ... rescale it), ``scaling`` its ``attention_scaling`` (1 but for
    YaRN and LongRoPE). Q1.14 holds ``|cos * scaling| < 2``."""
    inv = np.asarray(inv_freq, dtype=np.float64)
    if not 0 < abs(scaling) < 2:
        raise ValueError(f"RoPE attention scaling {scaling} outside (0, 2): the Q1.14 table "
                         "cannot hold it")
    ang = np.arange(positions, dtype=np.float64)[:, None] * inv[None, :]
    one = float(1 << ROPE_FRAC)
    c = np.rint(np.cos(ang) * scaling * one)
    s = np.rint(np.sin(ang) * scaling * one)
    return np.concatenate([c, s], axis=1).astype(np.int16)


def rope(x, table_rows, heads: int, head_dim: int) -> np.ndarray:
    """Rotary embedding of int8 rows ``x[rows, heads * head_dim]`` (heads contiguous).

    ``table_rows[rows, head_dim]``: each row's cos/sin (``rope_table`` at its position). For
    ``i < head_dim/2``, ``x1 = x[i]``, ``x2 = x[i + head_dim/2]``, ``c, s`` the table's i-th
    cos and sin: ``y[i] = sat8((x1*c - x2*s + 2**13) >> 14)``,
    ``y[i + head_dim/2] = sat8((x2*c + x1*s + 2**13) >> 14)``. Same scale in and out.
    """
    x = np.asarray(x, dtype=np.int64)
    rows = x.shape[0]
    half = head_dim // 2
    t = np.asarray(table_rows, dtype=np.int64)
    c, s = t[:, None, :half], t[:, None, half:2 * half]
    xh = x.reshape(rows, heads, head_dim)
    x1, x2 = xh[..., :half], xh[..., half:]
    y1 = _round_shift(x1 * c - x2 * s, ROPE_FRAC)
    y2 = _round_shift(x2 * c + x1 * s, ROPE_FRAC)
    return _sat8(np.concatenate([y1, y2], axis=-1).reshape(rows, heads * head_dim))


def gate_mul(g, u, mult: int, shift: int, act: str = "silu") -> np.ndarray:
    """A gated MLP's ``act(gate) * up``:
    ``sat8((GATE_LUTS[act][g] * u * mult + 2**(shift-1)) >> shift)`` (SILUMUL; flag RELU2 for
    ``relu2``, GELU for ``gelu_tanh``).

    Float meaning: ``g`` at scale 1/16, ``u`` at ``s_u``, output at ``s_y``:
    ``mult / 2**shift = s_u / (256 * s_y)``.
    """
    g = np.asarray(g, dtype=np.int64)
    u = np.asarray(u, dtype=np.int64)
    return _sat8(_round_shift(GATE_LUTS[act][g + 128] * u * int(mult), shift))


def silu_mul(g, u, mult: int, shift: int) -> np.ndarray:
    """SwiGLU's ``silu(gate) * up``: :func:`gate_mul` with ``SILU_LUT``."""
    return gate_mul(g, u, mult, shift, "silu")


def relu2_mul(g, u, mult: int, shift: int) -> np.ndarray:
    """BitNet's ``relu(gate)**2 * up``: :func:`gate_mul` with ``RELU2_LUT``."""
    return gate_mul(g, u, mult, shift, "relu2")


def tanh_cap(x, mult: int, shift: int) -> np.ndarray:
    """Final logit soft-capping ``cap * tanh(logit / cap)`` of int8 logits (SILUMUL with flag
    TANH; the up operand is not read): ``sat8((TANH_LUT[x] * mult + 2**(shift-1)) >> shift)``.

    Float meaning: ``x`` at scale ``cap / TANH_STEPS`` (1/64), output at ``s_y``:
    ``mult / 2**shift = cap / (2**14 * s_y)``.
    """
    x = np.asarray(x, dtype=np.int64)
    return _sat8(_round_shift(TANH_LUT[x + 128] * int(mult), shift))


def softcap_code(cap: float) -> int:
    """The ATTN ``cap`` operand of a score cap (in score units): ``round(cap * log2(e) * 8)``,
    the cap in log2-domain units of 2**-8 over 32 (10 bits: caps up to 88.6)."""
    return int(round(cap * math.log2(math.e) * (1 << EXP2_FRAC) / (1 << _SOFTCAP_CAP_SHIFT)))


def softcap_scores(u, cap: int) -> np.ndarray:
    """Attention score soft-capping ``cap * tanh(score / cap)``, in the log2 domain of
    :func:`attention_row`.

    ``u``: the scores over the cap in Q12 (``4096 * score / cap``); ``cap``: the
    :func:`softcap_code`. With ``a = |u|``, ``i = a >> 4``: ``y = a - SOFTCAP_CORR[i]`` for
    ``i < 1024`` (``4096 * tanh(a / 4096)``, the correction taken at the 1/256 step's midpoint:
    exact to ``tanh(c)**2 / 512`` of the cap), else ``y = 4096``; the result is
    ``sign(u) * ((y * cap + 64) >> 7)`` (``= 32 * cap * y / 4096``, log2-domain units).
    """
    u = np.asarray(u, dtype=np.int64)
    a = np.abs(u)
    i = a >> _SOFTCAP_STEP
    y = np.where(i < _SOFTCAP_ENTRIES,
                 a - SOFTCAP_CORR[np.minimum(i, _SOFTCAP_ENTRIES - 1)], 1 << SOFTCAP_FRAC)
    shift = SOFTCAP_FRAC - _SOFTCAP_CAP_SHIFT
    t = _round_shift(y * int(cap), shift)
    return np.where(u < 0, -t, t)


def exp2_neg(d) -> np.ndarray:
    """``2**(-d / 256)`` in Q15 for integers ``d >= 0``: ``EXP2_LUT[d & 255] >> (d >> 8)``
    (0 once the shift reaches 16)."""
    d = np.asarray(d, dtype=np.int64)
    n = d >> EXP2_FRAC
    return np.where(n < 16, EXP2_LUT[d & 255] >> np.minimum(n, 15), 0)


def attention_row(q, k, v, smul: int, sshift: int, omul: int, oshift: int,
                  cap: int = 0) -> np.ndarray:
    """One query row of one head against ``n >= 1`` keys: online softmax in blocks of
    ``ATTN_BLOCK`` keys, int8 output.

    ``q[hd]``, ``k[n, hd]``, ``v[n, hd]`` int8. Scores ``t_j = (q . k_j) * smul >> sshift``
    (log2-domain, 8 fractional bits). Over blocks ``B`` of up to 16 consecutive keys:
    ``m' = max(m, max_B t)`` (the first block: ``m' = max_B t``, ``l = acc = 0``),
    ``alpha = exp2_neg(m' - m)``, ``p_j = exp2_neg(m' - t_j)``,
    ``l = (l * alpha >> 15) + sum p_j``, ``acc[d] = (acc[d] * alpha >> 15) + sum p_j v[j, d]``.
    Then ``recip = 2**31 // l`` and ``o[d] = sat8((((acc[d] * recip) >> 16) * omul + 2**(oshift-1))
    >> oshift)``.

    With a score ``cap`` (nonzero, :func:`softcap_code`), ``(q . k_j) * smul >> sshift`` is
    the score over the cap in Q12 and ``t_j`` is its :func:`softcap_scores`.

    Float meaning: ``smul / 2**sshift = s_q s_k log2(e) 2**8 * scaling`` (``scaling`` is
    ``1 / sqrt(hd)`` or the model's own; with a cap, ``s_q s_k 2**12 * scaling / cap``);
    ``(acc * recip) >> 16`` is the softmax-weighted mean of v in Q15, so
    ``omul / 2**oshift = s_v / (s_o * 2**15)``. Widths: ``l`` in [2**15, 2**31), ``|acc| < 2**38``
    for n < 2**16, ``recip <= 2**16``.
    """
    q = np.asarray(q, dtype=np.int64)
    k = np.asarray(k, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    n = k.shape[0]
    t = (k @ q) * int(smul) >> int(sshift)
    if cap:
        t = softcap_scores(t, cap)
    m = 0
    total = 0                   # l of the docstring: the running softmax denominator
    acc = np.zeros(v.shape[1], dtype=np.int64)
    for j0 in range(0, n, ATTN_BLOCK):
        tb = t[j0:j0 + ATTN_BLOCK]
        mb = int(tb.max())
        if j0 == 0:
            m_new, alpha = mb, 0
        else:
            m_new = max(m, mb)
            alpha = int(exp2_neg(m_new - m))
        p = exp2_neg(m_new - tb)
        total = ((total * alpha) >> 15) + int(p.sum())
        acc = ((acc * alpha) >> 15) + p @ v[j0:j0 + ATTN_BLOCK]
        m = m_new
    recip = (1 << 31) // total
    return _sat8(_round_shift(((acc * recip) >> 16) * int(omul), oshift))


def attended(p: int, window: int = 0) -> tuple[int, int]:
    """The keys a query at position ``p`` attends, ``(first, count)``: keys ``0 .. p``, or with
    a sliding ``window > 0`` the last ``window`` of them, ``max(0, p + 1 - window) .. p`` (the
    Hugging Face rule ``p - j < window``: Mistral, Phi-3, Gemma 2's local layers)."""
    first = max(0, p + 1 - window) if window > 0 else 0
    return first, p + 1 - first


def attended_total(pos: int, rows: int, window: int = 0) -> int:
    """Keys attended by ``rows`` query rows at positions ``pos .. pos + rows - 1`` in all: what
    an ATTN reads per cache (in position blocks) and computes per head."""
    if window <= 0:
        return rows * pos + rows * (rows + 1) // 2
    return sum(attended(pos + b, window)[1] for b in range(rows))


def attention(q, k_cache, v_cache, pos: int, heads: int, kv_heads: int, head_dim: int,
              smul: int, sshift: int, omul: int, oshift: int, window: int = 0,
              cap: int = 0) -> np.ndarray:
    """Causal grouped-query attention of ``rows`` query rows at positions ``pos .. pos+rows-1``.

    ``q[rows, heads * head_dim]``; ``k_cache``, ``v_cache``: ``[>= pos + rows, kv_heads *
    head_dim]`` (the cache after this step's keys/values were appended). Query head ``h`` uses
    kv head ``h // (heads // kv_heads)``; row ``b`` attends the keys :func:`attended` gives
    for position ``pos + b`` (``0 .. pos + b``; with a sliding ``window > 0`` its last
    ``window``), online-softmax blocks counted from the first of them; ``cap``: the score
    cap of :func:`attention_row`.
    """
    q = np.asarray(q)
    rows = q.shape[0]
    group = heads // kv_heads
    out = np.zeros((rows, heads * head_dim), dtype=np.int8)
    for b in range(rows):
        first, count = attended(pos + b, window)
        keys = slice(first, first + count)
        for h in range(heads):
            g = h // group
            sl = slice(g * head_dim, (g + 1) * head_dim)
            out[b, h * head_dim:(h + 1) * head_dim] = attention_row(
                q[b, h * head_dim:(h + 1) * head_dim], k_cache[keys, sl], v_cache[keys, sl],
                smul, sshift, omul, oshift, cap)
    return out
