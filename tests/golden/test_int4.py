"""golden.int4: group-wise int4 quantization and its int8 dequantization."""

import numpy as np
import pytest

from hwflow.golden.int4 import GROUP, S_MAX, dequantize_int4, quantize_weight_int4


@pytest.mark.parametrize("shape", [(8, 64), (5, 70), (3, 7)])
def test_ranges_and_shapes(shape):
    rng = np.random.default_rng(shape[1])
    w = rng.standard_normal(shape) * rng.uniform(0.1, 3, (shape[0], 1))
    q, s, c = quantize_weight_int4(w)
    groups = -(-shape[1] // GROUP)
    assert q.shape == shape and q.dtype == np.int8 and q.min() >= -8 and q.max() <= 7
    assert s.shape == (shape[0], groups) and s.dtype == np.uint8
    assert s.min() >= 1 and s.max() <= S_MAX
    assert (s.max(axis=1) == S_MAX).all()                          # the largest group uses 15
    assert c.shape == (shape[0],)


def test_error_within_half_a_step():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 100))
    w[:, 32:64] *= 0.05                                            # a small group keeps detail
    q, s, c = quantize_weight_int4(w)
    step = c[:, None] * np.repeat(s, GROUP, axis=1)[:, :100]
    assert np.all(np.abs(w - q * step) <= step / 2 + 1e-12)
    assert (s[:, 1] < s[:, 0]).all()


def test_zeros_stay_zero_and_zero_rows():
    w = np.zeros((2, 40))
    w[0, ::3] = np.linspace(-1, 1, 14)
    q, s, c = quantize_weight_int4(w)
    assert not q[w == 0].any()
    assert not q[1].any() and (s[1] == 1).all() and c[1] == 1.0


def test_dequantize_is_q_times_group_scale():
    rng = np.random.default_rng(2)
    q = rng.integers(-8, 8, (4, 70)).astype(np.int8)
    s = rng.integers(1, 16, (4, 3)).astype(np.uint8)
    d = dequantize_int4(q, s)
    assert d.dtype == np.int8
    for k in range(70):
        np.testing.assert_array_equal(d[:, k], q[:, k].astype(int) * s[:, k // GROUP])
    extremes = dequantize_int4(np.array([[-8, 7]], np.int8), np.array([[15]], np.uint8))
    assert extremes.tolist() == [[-120, 105]]                      # int8 without saturation
