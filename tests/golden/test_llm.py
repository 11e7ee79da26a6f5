"""golden.llm: the sliding-window rule of attention (the rest of the kernels are checked
against the RTL in tests/hw and against float in tests/compiler)."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.golden import llm as gl


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
