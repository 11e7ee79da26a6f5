"""The state-space parameter blocks (``mapping.ssm_format``): the packer and its inverse round
trip, records in their super-beat slots."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.hw.contract import conv_record_bytes
from hwflow.mapping.ssm_format import (
    block_bytes,
    pack_conv,
    pack_scan,
    unpack_conv,
    unpack_scan,
)

L = 8


@pytest.mark.parametrize("n,SB", [(5, 32), (21, 32), (21, 256), (40, 256)])
def test_parameter_blocks_round_trip(n, SB):
    """Records of 80 B (conv) and 128 B (scan, 6 states): three and four super-beats each at
    SB = 32; three conv and two scan records to a super-beat at 256."""
    rng = np.random.default_rng(n)
    w = rng.integers(-128, 128, (n, 4))
    bias = rng.integers(-2**31, 2**31, n)
    mult = rng.integers(0, 2**16, n)
    raw = pack_conv(w, bias, mult, L, SB)
    assert len(raw) == block_bytes(conv_record_bytes(L, 4), n, L, SB)
    beats = -(-n // L)
    assert len(raw) == (beats * 96 if SB == 32 else -(-beats // 3) * 256)
    for got, want in zip(unpack_conv(raw, n, 4, L, SB), (w, bias, mult), strict=True):
        np.testing.assert_array_equal(got, want)
    a = rng.integers(0, 2**16, (n, 6))
    d = rng.integers(-2**16, 2**16, n)
    got_a, got_d = unpack_scan(pack_scan(a, d, L, SB), n, 6, L, SB)
    np.testing.assert_array_equal(got_a, a)
    np.testing.assert_array_equal(got_d, d)
