"""golden.llm: the sliding-window rule of attention, the GELU-tanh and tanh ROMs and the logit
cap against float (the rest of the kernels are checked against the RTL in tests/hw and against
float in tests/compiler)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwflow.golden import llm as gl

_V = torch.arange(-128, 128, dtype=torch.float64)       # every int8 ROM address


def test_gelu_lut_is_torch_gelu_tanh_rounded():
    """GELU_LUT / 256 is ``gelu(v / 16, approximate="tanh")`` (Gemma's ``gelu_pytorch_tanh``)
    to half an LSB: |GELU_LUT - 256 gelu| <= 0.5 exactly (float64; measured 0.49979)."""
    ref = torch.nn.functional.gelu(_V / 16, approximate="tanh").numpy() * 256
    assert np.abs(gl.GELU_LUT - ref).max() <= 0.5
    assert np.array_equal(gl.GELU_LUT, np.round(ref))
    assert (gl.GELU_LUT.min(), gl.GELU_LUT.max()) == (-44, 2032)


def test_tanh_lut_is_torch_tanh_rounded():
    ref = torch.tanh(_V / gl.TANH_STEPS).numpy() * (1 << 14)
    assert np.abs(gl.TANH_LUT - ref).max() <= 0.5                  # measured 0.49915
    assert np.abs(gl.TANH_LUT).max() < 1 << 14                     # tanh < 1: 15 signed bits


@pytest.mark.parametrize("mult, shift", [
    (127, 14),          # output at cap / 127 (Gemma 2: cap 30)
    (100, 14), (300, 14),        # a narrower output range; a wider one, saturating past |y| 127
    (5000, 16), (65535, 23),
])
def test_tanh_cap_matches_float(mult, shift):
    """``cap * tanh(x / cap)`` with x at scale cap / TANH_STEPS and the output at
    ``s_y = cap * 2**shift / (2**14 * mult)``, saturated: within the LUT's half LSB scaled by
    ``mult / 2**shift`` plus the output's half LSB (measured 0.4903 LSB at (127, 14), 0.4991
    at most over these points)."""
    x = np.arange(-128, 128)
    want = np.clip(torch.tanh(_V / gl.TANH_STEPS).numpy() * (1 << 14) * mult / 2.0 ** shift,
                   -128, 127)
    err = np.abs(gl.tanh_cap(x, mult, shift) - want)
    assert err.max() <= 0.5 + 0.5 * mult / 2.0 ** shift
    assert err.max() < 0.4992


@pytest.mark.parametrize("p, window, want", [
    (0, 0, (0, 1)), (9, 0, (0, 10)),          # full causal: keys 0..p
    (3, 6, (0, 4)), (5, 6, (0, 6)),           # the window not yet full
    (6, 6, (1, 6)), (40, 20, (21, 20)),       # the last `window` keys, itself included
])
def test_attended(p, window, want):
    assert gl.attended(p, window) == want


def test_attended_total_sums_the_rows():
    for pos, rows, window in ((0, 8, 0), (0, 8, 3), (5, 1, 3), (30, 4, 16)):
        assert gl.attended_total(pos, rows, window) == sum(
            gl.attended(pos + b, window)[1] for b in range(rows))


def test_windowed_attention_is_attention_over_the_windows_keys():
    """Row b of a windowed call equals one attention_row over exactly its window's keys, with
    the online-softmax blocks counted from the window's first key; a window longer than the
    context is full attention."""
    rng = np.random.default_rng(0)
    heads, kvh, hd, pos, rows, window = 4, 2, 8, 30, 4, 19
    q = rng.integers(-128, 128, (rows, heads * hd))
    k = rng.integers(-128, 128, (pos + rows, kvh * hd))
    v = rng.integers(-128, 128, (pos + rows, kvh * hd))
    args = (20000, 16, 30000, 30)
    got = gl.attention(q, k, v, pos, heads, kvh, hd, *args, window=window)
    for b in range(rows):
        f, n = gl.attended(pos + b, window)
        for h in range(heads):
            g = slice(h // 2 * hd, (h // 2 + 1) * hd)
            want = gl.attention_row(q[b, h * hd:(h + 1) * hd], k[f:f + n, g], v[f:f + n, g],
                                    *args)
            assert np.array_equal(got[b, h * hd:(h + 1) * hd], want)
    full = gl.attention(q, k, v, pos, heads, kvh, hd, *args)
    assert not np.array_equal(got, full)
    assert np.array_equal(gl.attention(q, k, v, pos, heads, kvh, hd, *args, window=pos + rows),
                          full)


_LOG2E = float(np.log2(np.e))


def _softcap_bound(u, code: int, cap: float):
    """The error bound of ``softcap_scores(u, code)`` against ``cap_t * tanh(u / 4096)``
    (``cap_t = cap * log2(e) * 256``, the cap in log2-domain units of 2**-8), per ``u``.

    In ``y`` units (Q12 of the cap): within the ROM (``|u| < 2**14``) the correction
    ``x - tanh x`` (slope ``tanh(x)**2``) is taken at the midpoint of its 1/256 step, at most
    1/512 away: ``4096 / 512 * tanh(x_hi)**2 = 8 tanh(x_hi)**2`` with ``x_hi`` the step's end,
    plus the ROM's rounding 0.5; past it ``y = 4096`` against ``4096 tanh(x)``, at most
    ``4096 (1 - tanh 4)`` (2.75). ``y * code / 128`` scales that by ``code / 128``; the
    output's rounding adds 0.5 and the code's own rounding ``|32 code - cap_t| tanh(x)``.
    """
    a = np.abs(u)
    i = a >> 4
    y_err = np.where(i < 1024, 8 * np.tanh(np.minimum(i + 1, 1024) / 256) ** 2 + 0.5,
                     4096 * (1 - np.tanh(4.0)))
    cap_t = cap * _LOG2E * 256
    return code / 128 * y_err + 0.5 + abs(32 * code - cap_t) * np.tanh(a / 4096)


@pytest.mark.parametrize("cap", [50.0, 30.0, 88.0, 5.0, 1.0])
def test_softcap_scores_match_float_tanh(cap):
    """``softcap_scores(u, softcap_code(cap))`` is ``cap * tanh(score / cap)`` in log2-domain
    units (``u = 4096 * score / cap``) within :func:`_softcap_bound` at every ``u`` of
    ``[-2**16, 2**16)``, the bound met within 4 % (measured at cap 50 (Gemma 2): 41.08
    units of 2**-8 at u = -15360, 0.111 in score units, 0.22 % of the cap, against a bound of
    41.23 there; the bound's largest term is ``cap_t * tanh(x)**2 / 512``)."""
    code = gl.softcap_code(cap)
    u = np.arange(-(1 << 16), 1 << 16)
    got = gl.softcap_scores(u, code)
    want = cap * _LOG2E * 256 * np.tanh(u / 4096)
    err = np.abs(got - want)
    bound = _softcap_bound(u, code, cap)
    assert (err <= bound).all(), (u[np.argmax(err - bound)], (err - bound).max())
    assert (err / bound).max() > 0.96                      # the bound is reached: not loose
    assert np.array_equal(gl.softcap_scores(-u, code), -got)    # odd
    if cap == 50.0:
        assert code == 577 and 41.0 < err.max() < 41.1


def test_attention_row_with_cap_matches_float_softmax_of_capped_scores():
    """attention_row with a cap against float: the softmax (natural exp) of ``cap *
    tanh(score / cap)`` over the keys, its weighted mean of v (omul / 2**oshift = 2**-15:
    the output in v's units).

    The capped scores err by at most ``E`` (the realized ``max |t_j - t_float_j|``, each
    within :func:`_softcap_bound` plus the floor of u, ``32 code / 4096``), weights by a
    factor within ``e**(+-eps)``, ``eps = E ln 2 / 256``; such weights move a weighted mean by
    at most ``tanh(eps / 2) * (max v - min v)`` (the worst split of the keys into two sets
    scaled apart). Plus the output's rounding 0.5 and one 2**-15 of v's range per Q15
    truncation (p_j, the block's two alpha rescales, recip and the final shift). Measured
    over these 360 rows (scores to 5 caps at cap 50, 26 at cap 10): at most 0.59 of the
    bound; 4.8 LSB at cap 50, 3.7 at 30, 1.3 at 10 (0.51 against the float softmax of the
    integer capped scores t_j themselves: the output's rounding)."""
    rng = np.random.default_rng(0)
    worst, capped = 0.0, 0
    for cap in (50.0, 30.0, 10.0):
        code = gl.softcap_code(cap)
        for per_dot in (1 / 300, 1 / 1000, 1 / 3000):  # score per unit of q . k
            for _ in range(40):
                hd, n = 16, int(rng.integers(1, 60))
                gain = 4096 / cap * per_dot             # smul / 2**sshift, u = 4096 score / cap
                sshift = 24
                while gain * 2 ** sshift >= 1 << 16:
                    sshift -= 1
                smul = int(round(gain * 2 ** sshift))
                q = rng.integers(-128, 128, hd)
                k = rng.integers(-128, 128, (n, hd))
                v = rng.integers(-128, 128, (n, hd))
                got = gl.attention_row(q, k, v, smul, sshift, 1 << 15, 30, cap=code)
                score = (k @ q) * smul / 2 ** sshift * cap / 4096
                c = cap * np.tanh(score / cap)
                w = np.exp(c - c.max())
                want = (w / w.sum()) @ v
                t = gl.softcap_scores((k @ q) * smul >> sshift, code)
                e_score = np.abs(t - c * _LOG2E * 256).max()
                eps = e_score * np.log(2) / 256
                blocks = -(-n // gl.ATTN_BLOCK)
                span = v.max(axis=0) - v.min(axis=0)
                bound = (np.tanh(eps / 2) * span + 0.5
                         + (n + 2 * blocks + 2) * span / 2 ** 15)
                err = np.abs(got - want)
                assert (err <= bound).all(), (cap, per_dot, n, err.max())
                worst = max(worst, (err / bound).max())
                capped += bool((np.abs(score) > cap).any())
    assert worst > 0.55                                 # the bound is approached
    assert capped > 100                                 # most rows have scores past the cap


def test_rmsnorm_four_bit_output_is_the_int8_output_saturated():
    # W4A4: the norm's output to a 4-bit linear is the same rounding clipped to -8..7
    x = np.random.default_rng(2).integers(-128, 128, (6, 40))
    eps, mult, shift = 5, 41000, 41
    y8 = gl.rmsnorm(x, eps, mult, shift)
    y4 = gl.rmsnorm(x, eps, mult, shift, bits=4)
    assert np.abs(y8).max() > 8                         # the case saturates
    np.testing.assert_array_equal(y4, np.clip(y8, -8, 7))
