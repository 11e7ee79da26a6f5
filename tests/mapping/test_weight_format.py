"""mapping.weight_format: legality, format choice, sizes and the byte layout of every format.

The layout is checked three ways: hand-written bytes of tiny tiles, the doc-derived byte-at-a-time
packer of ``tests/sim/_asm.py`` (written independently of this module) and round trips through
:func:`unpack_weight_block`.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from hwflow.golden.sparse import prune_nm
from hwflow.hw.config import AccelConfig
from hwflow.mapping.weight_format import (
    DENSE_INT8,
    LayerFormat,
    channels_per_tile,
    choose_format,
    is_legal,
    legal_formats,
    pack_weight_block,
    ring_reserve,
    tile_mem_rows,
    unpack_weight_block,
)
from tests.sim._asm import cdiv, pack_weights, random_weight

CFGS = {
    "P4L4": AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8),
    "P8L2": AccelConfig(chains=8, chain_len=2, mem_ports=1, port_bytes=16),
    "P2L16": AccelConfig(chains=2, chain_len=16, mem_ports=1, port_bytes=32),
    "P1L8": AccelConfig(chains=1, chain_len=8, mem_ports=1, port_bytes=8),
    "P16L16": AccelConfig(chains=16, chain_len=16, mem_ports=8, port_bytes=32),
}
#: The formats of the issue (a configuration gets the ones it can run).
FORMATS = [LayerFormat(1, 1, 8), LayerFormat(2, 4, 8), LayerFormat(1, 4, 8), LayerFormat(2, 8, 8),
           LayerFormat(4, 16, 8), LayerFormat(1, 2, 8), LayerFormat(1, 1, 4), LayerFormat(2, 4, 4),
           LayerFormat(1, 4, 4), LayerFormat(4, 16, 4)]


def _layer(rng, fmt, N, K):
    w, kw = random_weight(rng, N, K, (fmt.n, fmt.m), fmt.int4)
    bias = rng.integers(-2**31, 2**31, N)
    mult = rng.integers(0, 2**16, N)
    return w, bias, mult, kw


def _pack(cfg, fmt, w, bias, mult, kw_args, k_words=None, n_tiles=None):
    N, K = w.shape
    k_words = k_words or cdiv(K, cfg.chain_len)
    n_tiles = n_tiles or cdiv(N, channels_per_tile(cfg, fmt))
    data = pack_weight_block(cfg, fmt, w, bias, mult, k_words, n_tiles,
                             w4=kw_args.get("w4"), w4_scale=kw_args.get("s4"))
    return data, k_words, n_tiles


# ------------------------------------------------------------------------------ the format

def test_format_properties_and_labels():
    f = LayerFormat(2, 8, 4)
    assert (f.r, f.lgm, f.lgr, f.sparse, f.int4) == (4, 3, 2, True, True)
    assert f.label == "int4 2:8" and f.sparsity == "2:8"
    assert DENSE_INT8.label == "int8 dense" and (DENSE_INT8.lgm, DENSE_INT8.lgr) == (0, 0)
    assert not DENSE_INT8.sparse and not DENSE_INT8.int4


@pytest.mark.parametrize("n,m,wbits", [(3, 8, 8), (1, 32, 8), (0, 4, 8), (5, 4, 8), (1, 1, 2),
                                       (1, 3, 8)])
def test_format_rejects_non_modes(n, m, wbits):
    with pytest.raises(ValueError):
        LayerFormat(n, m, wbits)


def test_legality_rules():
    big = CFGS["P16L16"]
    assert all(is_legal(big, f) for f in FORMATS)
    assert LayerFormat(1, 8) not in legal_formats(big)              # r = 8 > G
    l4 = CFGS["P4L4"]
    assert not is_legal(l4, LayerFormat(2, 8)) and not is_legal(l4, LayerFormat(4, 16))  # M > L
    assert is_legal(l4, LayerFormat(1, 4, 4))                       # 2L = 8 divides 32
    l2 = CFGS["P8L2"]                                               # G = 2
    assert not is_legal(l2, LayerFormat(1, 4)) and is_legal(l2, LayerFormat(1, 2))
    no_sparse = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, sparse=False)
    assert [f.label for f in legal_formats(no_sparse)] == ["int8 dense", "int4 dense"]
    no_int4 = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, int4=False)
    assert not any(f.int4 for f in legal_formats(no_int4))
    # L = 24: no int4 (2L does not divide 32) and no M = 16 (groups would straddle words)
    l24 = AccelConfig(chains=4, chain_len=24, mem_ports=3, port_bytes=32)
    assert not is_legal(l24, LayerFormat(1, 1, 4)) and not is_legal(l24, LayerFormat(4, 16))
    assert is_legal(l24, LayerFormat(2, 8))
    # L = 3: G = 3 DSP groups cannot split in two segments
    l3 = AccelConfig(chains=32, chain_len=3, mem_ports=3, port_bytes=32)
    assert not is_legal(l3, LayerFormat(1, 2)) and is_legal(l3, DENSE_INT8)


def test_legal_formats_fastest_first():
    fmts = legal_formats(CFGS["P16L16"])
    assert fmts[0] == LayerFormat(1, 4, 8)
    assert [f.r for f in fmts] == sorted((f.r for f in fmts), reverse=True)
    assert fmts.index(DENSE_INT8) < fmts.index(LayerFormat(2, 2, 8))   # dense before r=1 sparse


# -------------------------------------------------------------------------------- choice

def test_choose_requested_format_when_legal():
    rng = np.random.default_rng(0)
    cfg = CFGS["P16L16"]
    w = prune_nm(rng.integers(-128, 128, (8, 64), dtype=np.int8), 2, 8)
    assert choose_format(cfg, w, (2, 8), 8) == LayerFormat(2, 8, 8)
    assert choose_format(cfg, w, (2, 8), 4) == LayerFormat(2, 8, 4)
    assert choose_format(cfg, w, None, None) == DENSE_INT8            # old graphs: dense int8
    assert choose_format(cfg, w, (1, 1), 8) == DENSE_INT8             # dense stays dense
    assert choose_format(cfg, w, (4, 4), 8) == DENSE_INT8             # N >= M counts as dense


def test_choose_falls_back_to_the_fastest_satisfied_mode():
    rng = np.random.default_rng(1)
    w = prune_nm(rng.integers(1, 128, (8, 64), dtype=np.int8), 2, 8)
    # 2:8 on L = 4 (M > L): the weight is also 2:4 (every half of a group of 8 has <= 2)
    assert choose_format(CFGS["P4L4"], w, (2, 8), 8) == LayerFormat(2, 4, 8)
    # 1:8 is no mode (r = 8): a 1:8 weight satisfies 1:4
    w18 = prune_nm(rng.integers(1, 128, (8, 64), dtype=np.int8), 1, 8)
    assert choose_format(CFGS["P16L16"], w18, (1, 8), 8) == LayerFormat(1, 4, 8)
    # no sparse selectors: dense, int4 kept
    no_sparse = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, sparse=False)
    assert choose_format(no_sparse, w, (2, 8), 4) == LayerFormat(1, 1, 4)
    # no dequantizer: int8 on the effective weight, N:M kept
    no_int4 = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, int4=False)
    w24 = prune_nm(rng.integers(1, 128, (8, 64), dtype=np.int8), 2, 4)
    assert choose_format(no_int4, w24, (2, 4), 4) == LayerFormat(2, 4, 8)
    # a weight that breaks its own N:M is run in a mode it satisfies (exact, never wrong)
    dense = rng.integers(1, 128, (8, 64), dtype=np.int8)
    assert choose_format(CFGS["P16L16"], dense, (2, 4), 8) == DENSE_INT8


# --------------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("fmt,k_words,rows", [
    (LayerFormat(1, 1, 8), 5, 8 + 5),
    (LayerFormat(2, 4, 8), 5, 8 + 5 + 3),
    (LayerFormat(1, 1, 4), 5, 8 + 3 + 1),
    (LayerFormat(1, 4, 4), 5, 8 + 6 + 1),
    (LayerFormat(1, 1, 4), 70, 8 + 35 + 2),            # 35 value rows: blocks of 32 and 3
    (LayerFormat(2, 4, 4), 70, 8 + 70 + 3),            # 35 units: blocks of 16, 16 and 3
])
def test_tile_mem_rows(fmt, k_words, rows):
    cfg = CFGS["P4L4"]                                 # R = 8
    assert cfg.param_rows == 8
    assert tile_mem_rows(cfg, fmt, k_words) == rows
    assert ring_reserve(cfg, fmt, k_words) == rows * (2 if fmt.int4 else 1)
    assert channels_per_tile(cfg, fmt) == 4 * fmt.r


# ------------------------------------------------------------------------- hand-checked bytes

def test_param_records_per_segment():
    """1:4 on P=2, L=4: chain p's 8 parameter rows x 4 lanes hold 4 records of 8 bytes."""
    cfg = AccelConfig(chains=2, chain_len=4, mem_ports=1, port_bytes=8)
    fmt = LayerFormat(1, 4)
    N = 11                                              # C = 8: tile 1 has channels 8..10
    w = np.zeros((N, 4), dtype=np.int8)
    bias = np.arange(N) * 1000 - 5000
    mult = np.arange(N) + 300
    blk = np.frombuffer(pack_weight_block(cfg, fmt, w, bias, mult, 1, 2), np.uint8)
    blk = blk.reshape(2, 8 + 1 + 1, 2, 4)               # R = 8, one index row, one value row
    for t in range(2):
        for p in range(2):
            lanes = blk[t, :8, p].reshape(-1).tobytes()
            for s in range(4):
                ch = t * 8 + s * 2 + p
                want = struct.pack("<iHxx", bias[ch], mult[ch]) if ch < N else bytes(8)
                assert lanes[8 * s: 8 * s + 8] == want


def test_sparse_2_4_rows_by_hand():
    """2:4 on P=1, L=4: S=2 slices per segment, channel 0 in lanes 0-1, channel 1 in lanes 2-3."""
    cfg = AccelConfig(chains=1, chain_len=4, mem_ports=1, port_bytes=4)
    w = np.array([[0, 5, 0, 7, 3, 0, 0, 0],
                  [1, 2, 0, 0, 0, 0, -4, -5]], dtype=np.int8)
    data = pack_weight_block(cfg, LayerFormat(2, 4), w, [0, 0], [0, 0], 2, 1)
    rows = np.frombuffer(data, np.uint8).reshape(-1, 4)
    assert rows.shape[0] == 8 + 1 + 2                   # R = 8; index row 0; value rows 0, 1
    # channel 0 word 0: (5 @ 1), (7 @ 3); word 1: (3 @ 0), padding (0 @ 1)
    # channel 1 word 0: (1 @ 0), (2 @ 1); word 1: (-4 @ 2), (-5 @ 3)
    assert list(rows[8]) == [0x01, 0x13, 0x20, 0x31]
    assert list(rows[9].view(np.int8)) == [5, 7, 1, 2]
    assert list(rows[10].view(np.int8)) == [3, 0, -4, -5]


def test_int4_value_and_scale_nibbles_by_hand():
    """int4 2:4 on P=2, L=4: blocks of 16 (index, value) units; nibble c = (γ-γ0)·r + seg."""
    cfg = AccelConfig(chains=2, chain_len=4, mem_ports=1, port_bytes=8)
    fmt = LayerFormat(2, 4, 4)
    rng = np.random.default_rng(5)
    N, K = 4, 160                                       # 5 groups of 32; k_words 40, u 20
    w, kw_args = random_weight(rng, N, K, (2, 4), True)
    q, s = kw_args["w4"], kw_args["s4"]
    data = pack_weight_block(cfg, fmt, w, np.zeros(N), np.zeros(N), 40, 1, w4=q, w4_scale=s)
    rows = np.frombuffer(data, np.uint8).reshape(-1, 2, 4)
    R = cfg.param_rows
    assert rows.shape[0] == R + 40 + 2
    scale0, scale1 = rows[R], rows[R + 1 + 32]          # block 0: 16 units = 32 rows
    for p in range(2):
        for c in range(8):
            gamma0, seg = 0, c % 2
            lane = scale0[p, c // 2] >> (4 * (c % 2)) & 15
            assert lane == s[seg * 2 + p, gamma0 + c // 2]
    # block 1 covers groups 4..7; only group 4 exists
    assert scale1[1, 0] == s[1, 4] | s[3, 4] << 4
    assert not scale1[:, 1:].any()
    # value row 0 of chain 0, segment 0 (lanes 0-1): entries of channel 0 in words 0 and 1
    entries = []
    for k in range(2):
        grp = list(q[0, 4 * k: 4 * k + 4])
        nz = [i for i in range(4) if grp[i]]
        pad = [i for i in range(4) if not grp[i]][: 2 - len(nz)]   # lowest unused positions
        entries.append([grp[i] for i in sorted(nz + pad)])
    v0 = rows[R + 2, 0]                                 # scale row, index row 0, value row 0
    for i in range(2):
        assert v0[i] == (int(entries[0][i]) & 15) | (int(entries[1][i]) & 15) << 4


# ---------------------------------------------------------------------------- round trips

LEGAL = [(c, f) for c in sorted(CFGS) for f in FORMATS if is_legal(CFGS[c], f)]


@pytest.mark.parametrize("cfg_name,fmt", LEGAL,
                         ids=[f"{c}-{f.label.replace(' ', '-')}" for c, f in LEGAL])
def test_round_trip_and_independent_packer(cfg_name, fmt):
    cfg = CFGS[cfg_name]
    rng = np.random.default_rng([sum(map(ord, cfg_name)), fmt.n, fmt.m, fmt.wbits])
    C = channels_per_tile(cfg, fmt)
    for N, K in [(C + 3, 3 * cfg.chain_len), (2 * C - 1, 5 * cfg.chain_len - 1), (7, 70)]:
        w, bias, mult, kw_args = _layer(rng, fmt, N, K)
        data, k_words, n_tiles = _pack(cfg, fmt, w, bias, mult, kw_args)
        assert len(data) == n_tiles * tile_mem_rows(cfg, fmt, k_words) * cfg.row_bytes
        assert data == pack_weights(cfg, w, bias, mult, **kw_args)
        W, B, M = unpack_weight_block(cfg, fmt, data, k_words, n_tiles)
        assert W.shape == (n_tiles * C, k_words * cfg.chain_len) and W.dtype == np.int8
        np.testing.assert_array_equal(W[:N, :K], w)
        assert not W[N:].any() and not W[:, K:].any()
        np.testing.assert_array_equal(B[:N], bias.astype(np.int32))
        np.testing.assert_array_equal(M[:N], mult)
        assert not B[N:].any() and not M[N:].any()


def test_extra_tiles_and_words_are_zero():
    cfg, fmt = CFGS["P4L4"], LayerFormat(2, 4)
    w, bias, mult, kw_args = _layer(np.random.default_rng(3), fmt, 5, 9)
    data, k_words, n_tiles = _pack(cfg, fmt, w, bias, mult, kw_args, k_words=7, n_tiles=3)
    W, B, _ = unpack_weight_block(cfg, fmt, data, 7, 3)
    np.testing.assert_array_equal(W[:5, :9], w)
    assert not W[5:].any() and not W[:, 9:].any() and not B[5:].any()


# --------------------------------------------------------------------------------- errors

def test_pack_errors():
    cfg = CFGS["P4L4"]
    rng = np.random.default_rng(4)
    w = rng.integers(1, 128, (4, 8), dtype=np.int8)
    z = np.zeros(4)
    with pytest.raises(ValueError, match="does not satisfy 2:4"):
        pack_weight_block(cfg, LayerFormat(2, 4), w, z, z, 2, 1)
    with pytest.raises(ValueError, match="does not fit"):
        pack_weight_block(cfg, DENSE_INT8, w, z, z, 1, 1)
    with pytest.raises(ValueError, match="needs the codes"):
        pack_weight_block(cfg, LayerFormat(1, 1, 4), w, z, z, 2, 1)
    q = rng.integers(-8, 8, (4, 8)).astype(np.int8)
    s = np.full((4, 1), 2, dtype=np.uint8)
    with pytest.raises(ValueError, match="not w4"):
        pack_weight_block(cfg, LayerFormat(1, 1, 4), q * 3, z, z, 2, 1, w4=q, w4_scale=s)
    with pytest.raises(ValueError, match="scales"):
        pack_weight_block(cfg, LayerFormat(1, 1, 4), q * 2, z, z, 2, 1, w4=q,
                          w4_scale=np.zeros((4, 2), np.uint8))


def test_unpack_errors_and_duplicate_positions():
    cfg = AccelConfig(chains=1, chain_len=4, mem_ports=1, port_bytes=4)
    fmt = LayerFormat(2, 4)
    w = np.array([[0, 5, 0, 7]], dtype=np.int8)
    data = bytearray(pack_weight_block(cfg, fmt, w, [1], [1], 1, 1))
    with pytest.raises(ValueError, match="needs"):
        unpack_weight_block(cfg, fmt, bytes(data[:-1]), 1, 1)
    bad = bytearray(data)
    bad[8 * 4] = 0x04                                   # index 4 >= M in lane 0
    with pytest.raises(ValueError, match="index 4 >= M"):
        unpack_weight_block(cfg, fmt, bytes(bad), 1, 1)
    dup = bytearray(data)
    dup[8 * 4: 8 * 4 + 2] = bytes([0x03, 0x03])         # both entries at position 3: 5 + 7
    W, _, _ = unpack_weight_block(cfg, fmt, bytes(dup), 1, 1)
    assert list(W[0]) == [0, 0, 0, 12]
    dup[9 * 4: 9 * 4 + 2] = bytes([100, 100])           # 100 + 100 does not fit int8
    with pytest.raises(ValueError, match="outside int8"):
        unpack_weight_block(cfg, fmt, bytes(dup), 1, 1)


# ------------------------------------------------------------------- a decode-sized layer

@pytest.mark.parametrize("fmt", [LayerFormat(1, 1, 8), LayerFormat(2, 4, 8), LayerFormat(1, 4, 4)],
                         ids=lambda f: f.label.replace(" ", "-"))
def test_large_layer_round_trips(fmt):
    """A 4096 x 1024 layer packs and unpacks exactly (its speed: benchmarks/bench_pack.py)."""
    cfg = CFGS["P16L16"]
    rng = np.random.default_rng(9)
    N, K = 4096, 1024
    w, bias, mult, kw_args = _layer(rng, fmt, N, K)
    data, k_words, n_tiles = _pack(cfg, fmt, w, bias, mult, kw_args)
    W, _, _ = unpack_weight_block(cfg, fmt, data, k_words, n_tiles)
    np.testing.assert_array_equal(W[:N], w)


@pytest.mark.parametrize("chain_len, sparse", [(1, True), (2, True), (4, True), (8, False),
                                               (16, True), (16, False)])
def test_legal_formats_are_the_engines_modes(chain_len, sparse):
    """One list of legal N:M modes: the formats the mapper may choose are exactly the matrix
    engine's modes (hw.matrix_engine_model.legal_modes, which the RTL's selectors are built
    from), each in int8 and, where the dequantizer is built, int4."""
    from hwflow.hw.matrix_engine_model import legal_modes
    from hwflow.mapping.weight_format import legal_formats

    cfg = AccelConfig(chains=16, chain_len=chain_len, mem_ports=1, port_bytes=chain_len,
                      sparse=sparse, int4=True)
    modes = {(f.lgm, f.lgr) for f in legal_formats(cfg) if f.wbits == 8}
    assert modes == set(legal_modes(chain_len, sparse))
    int4 = {(f.lgm, f.lgr) for f in legal_formats(cfg) if f.wbits == 4}
    assert int4 == (modes if 32 % (2 * chain_len) == 0 else set())
