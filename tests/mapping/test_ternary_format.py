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
    straddle bytes; SB = 16 (128 bits) holds k = 4 of them at bit offsets 0, 30, 60, 90 and
    8 zero bits; records never straddle a super-beat."""
    G, T, Q, SB = 3, 2, 3, 16
    n_out, K = 4, 28                      # k_groups 10 (last group 1 weight), 5 chunks, 2 blocks
    rng = np.random.default_rng(1)
    t, bias, mult = _rand(rng, n_out, K)
    lay = block_layout(n_out, K, G, T, Q, SB)
    assert lay == {"k_groups": 10, "n_chunks": 5, "n_blocks": 2, "records": 10,
                   "record_bits": 30, "records_per_beat": 4, "beats_per_record": 1,
                   "param_beats": 2, "stream_beats": 3, "total_beats": 5}
    blk = pack_ternary_block(t, bias, mult, G, T, Q, SB)
    # parameter record 3: bias, mult, 2 zero bytes; padding to 2 super-beats is zero
    rec = blk[24:32]
    assert int.from_bytes(rec[:4], "little", signed=True) == bias[3]
    assert int.from_bytes(rec[4:6], "little") == mult[3]
    assert rec[6:] == b"\0\0" and blk[32:2 * SB] == bytes(2 * SB - 32)
    idx = encode_groups(t, G)
    z = ZERO_INDEX(G)
    for r in range(lay["records"]):
        c, j = divmod(r, 2)
        beat = int.from_bytes(blk[(2 + r // 4) * SB:(3 + r // 4) * SB], "little")
        word = beat >> (30 * (r % 4))
        for qq in range(Q):
            for tt in range(T):
                n, g = j * Q + qq, c * T + tt
                want = idx[n, g] if n < n_out and g < lay["k_groups"] else z
                assert (word >> (5 * (qq * T + tt))) & 31 == want, (r, qq, tt)
    # the 8 bits past the 4th record of each full beat and the rest of the last beat are 0
    for bi in range(3):
        beat = int.from_bytes(blk[(2 + bi) * SB:(3 + bi) * SB], "little")
        used = 30 * min(4, lay["records"] - 4 * bi)
        assert beat >> used == 0, bi
    assert GROUP_BITS[G] * T * Q == lay["record_bits"]


@pytest.mark.parametrize("G,T,Q,SB,per_beat,beats", [
    (3, 8, 8, 16, 1, 3),      # KV260: 320-bit records take 3 whole 128-bit beats
    (3, 16, 8, 256, 3, 1),    # U280: 3 records of 640 bits per 2048-bit beat
    (4, 4, 5, 16, 1, 2),      # 140 bits: 2 beats
    (2, 1, 1, 16, 32, 1),     # 4-bit records, 32 per beat
    (3, 5, 5, 16, 1, 1),      # 125 of 128 bits
])
def test_alignment(G, T, Q, SB, per_beat, beats):
    """Records of more than a beat start on a beat and take whole beats; a record of one
    beat's bits or fewer sits inside one beat at offset (r % k) * RB."""
    n_out, K = 3 * Q + 1, 2 * T * G + 1
    lay = block_layout(n_out, K, G, T, Q, SB)
    assert (lay["records_per_beat"], lay["beats_per_record"]) == (per_beat, beats)
    rng = np.random.default_rng(G + T + Q)
    t, bias, mult = _rand(rng, n_out, K)
    blk = pack_ternary_block(t, bias, mult, G, T, Q, SB)
    rb = lay["record_bits"]
    stream = blk[lay["param_beats"] * SB:]
    assert len(stream) == lay["stream_beats"] * SB == -(-lay["records"] // per_beat) * beats * SB
    full = np.full((4 * Q, 3 * T), ZERO_INDEX(G))
    full[:n_out, :lay["k_groups"]] = encode_groups(t, G)
    for r in range(lay["records"]):
        c, j = divmod(r, lay["n_blocks"])
        want = full[j * Q:(j + 1) * Q, c * T:(c + 1) * T].reshape(-1)
        base = (r // per_beat) * beats * SB
        bits_ = int.from_bytes(stream[base:base + beats * SB], "little")
        rec = (bits_ >> ((r % per_beat) * rb)) & ((1 << rb) - 1)
        np.testing.assert_array_equal(
            unpack_indices(rec.to_bytes(-(-rb // 8), "little"), G, T * Q), want)
    t2, b2, m2 = unpack_ternary_block(blk, n_out, K, G, T, Q, SB)
    np.testing.assert_array_equal(t2, t)


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
