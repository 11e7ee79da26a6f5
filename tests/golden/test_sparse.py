"""golden.sparse: N:M pruning, detection and the packed (values, indices) format."""

import numpy as np
import pytest

from hwflow.golden.sparse import (
    NM_CANDIDATES,
    detect_nm,
    pack_nm,
    parse_nm,
    prune_nm,
    satisfies_nm,
    unpack_nm,
)


@pytest.mark.parametrize("text,nm", [("2:4", (2, 4)), ("dense", (1, 1)), (" 1:16 ", (1, 16)),
                                     ("4:4", (4, 4))])
def test_parse(text, nm):
    assert parse_nm(text) == nm


@pytest.mark.parametrize("text", ["2-4", "2:3", "5:4", "0:4", "1:32", "x"])
def test_parse_rejects(text):
    with pytest.raises(ValueError, match="sparsity"):
        parse_nm(text)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8), (4, 16), (1, 2)])
def test_prune_keeps_the_largest_magnitudes(n, m):
    rng = np.random.default_rng(n * 100 + m)
    w = rng.integers(-128, 128, (9, 37), dtype=np.int8)          # K not a multiple of M
    p = prune_nm(w, n, m)
    assert p.dtype == w.dtype and p.shape == w.shape
    assert satisfies_nm(p, n, m)
    kept = p != 0
    assert (p[kept] == w[kept]).all()
    for r in range(w.shape[0]):
        for g0 in range(0, w.shape[1], m):
            grp, pg = np.abs(w[r, g0:g0 + m].astype(int)), p[r, g0:g0 + m]
            dropped = grp[pg == 0]
            survivors = grp[pg != 0]
            if survivors.size and dropped.size:
                assert dropped.max() <= survivors.min()


def test_prune_ties_keep_the_lower_position_and_minus_128_is_largest():
    w = np.array([[3, -3, 3, 3, 127, -128, 1, 2]], dtype=np.int8)
    np.testing.assert_array_equal(prune_nm(w, 2, 4), [[3, -3, 0, 0, 127, -128, 0, 0]])
    np.testing.assert_array_equal(prune_nm(w, 1, 4), [[3, 0, 0, 0, 0, -128, 0, 0]])
    np.testing.assert_array_equal(prune_nm(w, 4, 4), w)


def test_satisfies_and_detect():
    w = np.zeros((2, 16), dtype=np.int8)
    assert detect_nm(w) == NM_CANDIDATES[0] == (1, 16)
    assert detect_nm(w, max_m=4) == (1, 4)
    w[0, [0, 4, 8, 12]] = 1                                        # 1:4, not 1:8
    assert satisfies_nm(w, 1, 4) and not satisfies_nm(w, 1, 8)
    assert detect_nm(w) == (1, 4)
    w[0, 1] = 1                                                    # 2:4 now
    assert detect_nm(w) == (2, 4) and not satisfies_nm(w, 2, 8)     # 3 in the first 8
    w[0, :] = 1
    assert detect_nm(w) == (1, 1)


def test_pack_by_hand_pads_with_the_lowest_unused_positions():
    w = np.array([[0, 0, 0, 5, 3, 0, 0, 0, 0, 0, 0, 0]], dtype=np.int8)   # K = 12, M = 8
    v, i = pack_nm(w, 2, 8)
    assert v.shape == i.shape == (1, 2, 2)
    # group 0: 5 @ 3, 3 @ 4; group 1 (positions 8..11, padded to 16): all zero -> 0 @ 0, 0 @ 1
    assert v.tolist() == [[[5, 3], [0, 0]]] and i.tolist() == [[[3, 4], [0, 1]]]
    w = np.array([[0, 0, 0, 5]], dtype=np.int8)
    v, i = pack_nm(w, 2, 4)
    assert v.tolist() == [[[0, 5]]] and i.tolist() == [[[0, 3]]]


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8), (4, 16), (1, 1), (4, 4)])
def test_pack_unpack_round_trip(n, m):
    rng = np.random.default_rng(m)
    w = prune_nm(rng.integers(-128, 128, (6, 45), dtype=np.int8), n, m)
    v, i = pack_nm(w, n, m)
    assert i.dtype == np.uint8 and (i < m).all()
    assert (np.diff(i.astype(int), axis=-1) > 0).all()              # ascending, distinct
    np.testing.assert_array_equal(unpack_nm(v, i, m, 45), w)


def test_pack_and_unpack_errors():
    with pytest.raises(ValueError, match="2:4"):
        pack_nm(np.ones((1, 4), dtype=np.int8), 2, 4)
    with pytest.raises(ValueError, match="outside"):
        unpack_nm(np.ones((1, 1, 2), np.int8), np.array([[[0, 4]]]), 4, 4)
