"""golden.ssm: the Mamba block's integer kernels against their float meaning and their own
definitions (the softplus ROM, the decay through the exp2 ROM, the causal conv and one scan
step), with the integer widths the state-space unit is to have."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwflow.golden import int8 as g8
from hwflow.golden import ssm as gs

_V = torch.arange(-128, 128, dtype=torch.float64)       # every int8 ROM address


def test_softplus_lut_is_torch_softplus_rounded():
    ref = torch.nn.functional.softplus(_V / 16).numpy() * (1 << gs.DT_FRAC)
    assert np.array_equal(gs.SOFTPLUS_LUT, np.round(ref))
    assert gs.SOFTPLUS_LUT.min() >= 1 and gs.SOFTPLUS_LUT.max() < 1 << 16     # uint16, dt > 0
    np.testing.assert_array_equal(gs.softplus_dt([-128, 0, 127]), gs.SOFTPLUS_LUT[[0, 128, 255]])


def test_decay_is_exp_dt_a():
    """``decay(dt, codes(A))`` is ``exp(dt * A)`` in Q15 within the ROM's resolution: 2**-8 of
    an octave in the exponent and the Q15 rounding (measured below 0.3 % relative where the
    decay is above 1/256)."""
    rng = np.random.default_rng(0)
    A = -np.exp(rng.uniform(-1, 4, (7, 5)))               # rates 0.37 .. 55
    dt = rng.integers(1, 1 << 14, 7)                      # 2.4e-4 .. 4
    got = gs.decay(dt, gs.decay_rate_codes(A)) / 2.0**gs.DECAY_FRAC
    want = np.exp(dt[:, None] / 2.0**gs.DT_FRAC * A)
    big = want > 1 / 256
    assert np.all(np.abs(got - want)[big] / want[big] < 3e-3)
    assert np.all(np.abs(got - want)[~big] < 1 / 256)
    assert gs.decay(np.array([0]), np.array([[100]]))[0, 0] == 1 << 15        # dt 0: no decay


def test_causal_conv_is_the_windowed_sum():
    rng = np.random.default_rng(1)
    C, K, T = 9, 4, 6
    x = rng.integers(-128, 128, (T, C)).astype(np.int8)
    hist = rng.integers(-128, 128, (K - 1, C)).astype(np.int8)
    w = rng.integers(-128, 128, (C, K)).astype(np.int8)
    bias = rng.integers(-1000, 1000, C)
    mult = rng.integers(1, 1 << 16, C)
    out, new = gs.causal_conv(x, hist, w, bias, mult, 20)
    win = np.concatenate([hist, x]).astype(np.int64)
    for t in range(T):
        acc = sum(win[t + k] * w[:, k].astype(np.int64) for k in range(K))
        np.testing.assert_array_equal(out[t], g8.requantize(acc, bias, mult, 20))
    np.testing.assert_array_equal(new, x[-(K - 1):])
    # one token at a time with the held inputs is the same conv
    h, rows = hist, []
    for t in range(T):
        o, h = gs.causal_conv(x[t:t + 1], h, w, bias, mult, 20)
        rows.append(o[0])
    np.testing.assert_array_equal(np.stack(rows), out)


def test_scan_step_tracks_the_float_recurrence():
    """Ten steps of the integer scan against ``h = exp(dt A) h + dt B u``, ``y = h C + D u``
    at the scales the multipliers encode: within 1 % of the state's range and one int8 step
    of ``y`` (plus its own rounding)."""
    rng = np.random.default_rng(2)
    C, S = 12, 6
    s_b, s_c, s_u, s_y, s_h = 0.02, 0.03, 0.05, 0.05, 2.0**-20
    A = -np.exp(rng.uniform(0, 2, (C, S)))
    D = rng.uniform(-1, 2, C)
    codes = gs.decay_rate_codes(A)
    bu_real = 2.0**-gs.DT_FRAC * s_b * s_u / s_h
    bu_shift = g8.choose_shift(np.array([bu_real]))
    y_real = s_h * s_c / s_y
    y_shift = g8.choose_shift(np.array([y_real]))
    d_shift = g8.choose_shift(np.abs(D * s_u / s_y))
    args = (int(round(bu_real * 2**bu_shift)), bu_shift, int(round(y_real * 2**y_shift)),
            y_shift, np.rint(D * s_u / s_y * 2**d_shift).astype(np.int64), d_shift)
    h, hf = np.zeros((C, S), np.int64), np.zeros((C, S))
    for _ in range(10):
        dt = rng.integers(100, 4000, C)
        b, c = rng.integers(-128, 128, S), rng.integers(-128, 128, S)
        u = rng.integers(-128, 128, C)
        h, y = gs.scan_step(h, dt, codes, b, c, u, *args)
        dtf = dt / 2.0**gs.DT_FRAC
        hf = np.exp(dtf[:, None] * A) * hf + (dtf * u * s_u)[:, None] * (b * s_b)[None, :]
        yf = hf @ (c * s_c) + D * u * s_u
        span = np.abs(hf).max()
        assert np.abs(h * s_h - hf).max() <= 0.01 * span
        assert np.all(np.abs(y.astype(float) - np.clip(yf / s_y, -128, 127)) <= 1.5)
    assert np.abs(h).max() < 1 << 31 and y.dtype == np.int8


def _sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1), dtype=np.int64)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def test_hadamard_is_the_block_diagonal_sylvester_product():
    x = np.random.default_rng(3).integers(-128, 128, (5, 192))
    block = gs.hadamard_block(192)
    assert block == 64
    want = np.concatenate([x[:, j:j + 64] @ _sylvester(64).T for j in range(0, 192, 64)], 1)
    got = gs.hadamard(x, block)
    np.testing.assert_array_equal(got, want)
    # its own inverse up to the block: H H = block * I (what the quantizer folds as 1/block)
    np.testing.assert_array_equal(gs.hadamard(got, block), block * x)
    assert np.abs(got).max() <= block * 128                     # the unit's output width


def test_hadamard_blocks_of_the_models():
    assert [gs.hadamard_block(n) for n in (5120, 96, 80, 7)] == [1024, 32, 16, 1]
    np.testing.assert_array_equal(gs.hadamard([[3, -4]], 1), [[3, -4]])
    for bad in (3, 128):
        with pytest.raises(ValueError, match="power of two dividing"):
            gs.hadamard(np.zeros((1, 96), np.int64), bad)
