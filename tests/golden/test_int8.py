"""golden.int8 against straightforward Python-integer definitions of the same rules."""

import numpy as np
import pytest

from hwflow.golden import int8 as g8
from hwflow.golden.metrics import cosine, max_abs_error


def _requant_scalar(acc, bias, mult, shift, relu, res, res_mult):
    v = (acc + bias) * mult + res * res_mult
    if shift:
        v = (v + (1 << (shift - 1))) // (1 << shift)     # floor division = arithmetic shift
    if relu:
        v = max(v, 0)
    return max(-128, min(127, v))


@pytest.mark.parametrize("seed", range(4))
def test_requantize_matches_integer_definition(seed):
    rng = np.random.default_rng(seed)
    n = 500
    acc = rng.integers(-2**31, 2**31, n)
    acc[:4] = [-2**31, 2**31 - 1, 0, -1]
    bias = rng.integers(-2**20, 2**20, n)
    mult = rng.integers(0, 2**16, n)
    res = rng.integers(-128, 128, n)
    shift, res_mult = int(rng.integers(0, 48)), int(rng.integers(0, 2**16))
    for relu in (False, True):
        got = g8.requantize(acc, bias, mult, shift, relu, res, res_mult)
        want = [_requant_scalar(int(a), int(b), int(m), shift, relu, int(r), res_mult)
                for a, b, m, r in zip(acc, bias, mult, res, strict=True)]
        assert got.dtype == np.int8 and got.tolist() == want


def test_round_half_up_and_saturation():
    # 3/2 = 1.5 -> 2, -3/2 = -1.5 -> -1 (half up), 5/4 -> 1
    assert g8.requantize(np.array([3, -3, 5]), 0, 1, 1).tolist() == [2, -1, 3]
    assert g8.requantize(np.array([1000, -1000]), 0, 1, 0).tolist() == [127, -128]
    assert g8.requantize(np.array([-5]), 0, 1, 0, relu=True).tolist() == [0]


def test_four_bit_activations_saturate_at_four_bits():
    # the same rounding, clipped to -8..7 (W4A4's activations; still int8 arrays)
    got = g8.requantize(np.array([3, -3, 15, -17, 1000, -1000]), 0, 1, 1, bits=4)
    assert got.dtype == np.int8 and got.tolist() == [2, -1, 7, -8, 7, -8]
    with pytest.raises(ValueError, match="8 or 4 bits"):
        g8.saturate(np.array([1]), 5)


def test_multiplier_choice_keeps_16_bits_of_precision():
    reals = np.array([0.0123, 0.0007, 0.0099])
    s = g8.choose_shift(reals)
    m = g8.quantize_multiplier(reals, s)
    assert m.max() <= g8.MULT_MAX and m.max() >= 2**15
    assert np.abs(m / 2.0**s - reals).max() <= 2.0 ** -(s + 1)


def test_quantize_weight_per_channel():
    w = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [2.0, 1.0, -0.3]])
    q, s = g8.quantize_weight(w)
    assert q[0].tolist() == [64, -127, 32] and q[1].tolist() == [0, 0, 0]
    assert np.allclose(s, [1 / 127, 1.0, 2 / 127])


def test_matmul_is_exact_and_checks_int32():
    x = np.full((1, 4), -128, np.int8)
    w = np.full((2, 4), -128, np.int8)
    assert g8.matmul(x, w).tolist() == [[65536, 65536]]
    with pytest.raises(OverflowError):
        g8.matmul(np.full((1, 200000), -128, np.int8), np.full((1, 200000), -128, np.int8))


def test_metrics():
    a = np.array([1.0, 2.0, 3.0])
    assert cosine(a, 2 * a) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert max_abs_error(a, a + [0, 0.5, -1]) == 1.0
