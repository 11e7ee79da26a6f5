"""TMATMUL weight block: round trips, layout sizes and the record order of the doc."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.golden.ternary import GROUP_BITS, encode_groups, unpack_indices
from hwflow.mapping.ternary_format import (
    ZERO_INDEX,
    block_layout,
    pack_ternary_block,
    unpack_ternary_block,
)


def _rand(rng, n_out, K):
    t = rng.integers(-1, 2, size=(n_out, K)).astype(np.int8)
    bias = rng.integers(-(2 ** 31), 2 ** 31, size=n_out)
    mult = rng.integers(0, 2 ** 16, size=n_out)
    return t, bias, mult


def test_zero_index():
    assert [ZERO_INDEX(g) for g in (2, 3, 4)] == [4, 13, 40]
    with pytest.raises(ValueError):
        ZERO_INDEX(5)


@pytest.mark.parametrize("G", [2, 3, 4])
@pytest.mark.parametrize("T,Q", [(1, 1), (2, 4), (4, 2), (3, 5)])
@pytest.mark.parametrize("SB", [16, 32, 96])
def test_round_trip(G, T, Q, SB):
    rng = np.random.default_rng(G * 100 + T * 10 + Q + SB)
    for n_out, K in ((1, 1), (7, 13), (11, 29), (5, 2 * G * T)):
        t, bias, mult = _rand(rng, n_out, K)
        blk = pack_ternary_block(t, bias, mult, G, T, Q, SB)
        lay = block_layout(n_out, K, G, T, Q, SB)
        assert len(blk) == lay["total_beats"] * SB
        t2, b2, m2 = unpack_ternary_block(blk, n_out, K, G, T, Q, SB)
        np.testing.assert_array_equal(t2, t)
        np.testing.assert_array_equal(b2, bias)
        np.testing.assert_array_equal(m2, mult)


def test_layout_and_record_order():
    """Check bytes by hand: G = 3 (5-bit indices), T = 2, Q = 3 -> 30-bit records that
    straddle bytes, and with SB = 16 (128 bits) records straddle super-beats too."""
    G, T, Q, SB = 3, 2, 3, 16
    n_out, K = 4, 10                      # k_groups 4 (last group 1 weight), 2 chunks, 2 blocks
    rng = np.random.default_rng(1)
    t, bias, mult = _rand(rng, n_out, K)
    lay = block_layout(n_out, K, G, T, Q, SB)
    assert lay == {"k_groups": 4, "n_chunks": 2, "n_blocks": 2, "records": 4,
                   "record_bits": 30, "stream_bits": 120, "param_beats": 2,
                   "stream_beats": 1, "total_beats": 3}
    blk = pack_ternary_block(t, bias, mult, G, T, Q, SB)
    # parameter record 3: bias, mult, 2 zero bytes; padding to 2 super-beats is zero
    rec = blk[24:32]
    assert int.from_bytes(rec[:4], "little", signed=True) == bias[3]
    assert int.from_bytes(rec[4:6], "little") == mult[3]
    assert rec[6:] == b"\0\0" and blk[32:2 * SB] == bytes(2 * SB - 32)
    flat = unpack_indices(blk[2 * SB:], G, 4 * T * Q)
    idx = encode_groups(t, G)
    z = ZERO_INDEX(G)
    for c in range(2):
        for j in range(2):
            for qq in range(Q):
                for tt in range(T):
                    n, g = j * Q + qq, c * T + tt
                    want = idx[n, g] if n < n_out else z
                    assert flat[((c * 2 + j) * Q + qq) * T + tt] == want
    assert GROUP_BITS[G] * T * Q == lay["record_bits"]


def test_bad_inputs():
    t = np.zeros((2, 3), np.int8)
    with pytest.raises(ValueError):
        pack_ternary_block(t + 2, [0, 0], [1, 1], 3, 1, 1, 16)
    with pytest.raises(ValueError):
        pack_ternary_block(t, [0, 0], [1, 1 << 16], 3, 1, 1, 16)
    blk = bytearray(pack_ternary_block(t, [0, 0], [1, 1], 2, 1, 1, 16))
    with pytest.raises(ValueError):
        unpack_ternary_block(bytes(blk[:-1]), 2, 3, 2, 1, 1, 16)
    # record 2 (chunk 1, channel 0) = group 1: digit 2 at position 3 >= K would add garbage
    bad = bytearray(blk)
    bad[17] = (bad[17] & 0xF0) | 6
    with pytest.raises(ValueError, match="past K"):
        unpack_ternary_block(bytes(bad), 2, 3, 2, 1, 1, 16)
    bad[17] = (bad[17] & 0xF0) | 9            # index 9 >= 3**2
    with pytest.raises(ValueError, match="3\\*\\*2"):
        unpack_ternary_block(bytes(bad), 2, 3, 2, 1, 1, 16)
