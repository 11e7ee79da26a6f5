import struct

import numpy as np

from hwflow.hw.config import AccelConfig
from hwflow.mapping.memory_image import (
    MAGIC,
    VERSION,
    ImageBuilder,
    MemoryMap,
    pack_rows,
    read_tensor,
    write_tensor,
)
from hwflow.mapping.weight_format import DENSE_INT8, pack_weight_block

CFG = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, act_depth=256,
                  weight_depth=64)


def test_dense_int8_block_layout_follows_the_contract():
    """The int8 dense tile (the v1 layout): R parameter rows, then k_words value rows; the other
    formats are checked in test_weight_format.py."""
    rng = np.random.default_rng(1)
    n, k = 7, 9                          # not multiples of P=4 / L=4
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    bias = rng.integers(-2**31, 2**31, n).astype(np.int64)
    mult = rng.integers(0, 2**16, n)
    k_words, n_tiles = 3, 2
    blk = np.frombuffer(pack_weight_block(CFG, DENSE_INT8, w, bias, mult, k_words, n_tiles),
                        np.uint8)
    rows_per_tile = CFG.param_rows + k_words
    assert blk.size == n_tiles * rows_per_tile * CFG.row_bytes
    blk = blk.reshape(n_tiles, rows_per_tile, CFG.chains, CFG.chain_len)
    for ch in range(n_tiles * CFG.chains):
        t, p = divmod(ch, CFG.chains)
        params = blk[t, :CFG.param_rows, p].reshape(-1).tobytes()
        lanes = blk[t, CFG.param_rows:, p].reshape(-1).view(np.int8)
        if ch < n:
            assert int.from_bytes(params[0:4], "little", signed=True) == bias[ch]
            assert int.from_bytes(params[4:6], "little") == mult[ch]
            assert params[6:8] == b"\0\0"
            assert (lanes[:k] == w[ch]).all() and not lanes[k:].any()
        else:
            assert not any(params) and not lanes.any()


def test_image_sections_and_io_roundtrip():
    b = ImageBuilder(CFG)
    b.append("program", "program", bytes(range(40)))
    q = np.arange(-10, 5, dtype=np.int8).reshape(3, 5)
    b.append("x", "input", pack_rows(q, 2, CFG.chain_len), shape=[3, 5], rows=3, words=2,
             features=5, scale=0.5)
    b.append("y", "output", bytes(3 * 2 * 4), shape=[3, 5], rows=3, words=2, features=5)
    img, mm = b.finish()
    assert img[:4] == MAGIC and len(img) % CFG.beat_bytes == 0
    mm = MemoryMap.from_json(mm.to_json())
    assert (read_tensor(img, mm, "x") == q).all()
    img = bytearray(img)
    write_tensor(img, mm, "x", -q)
    assert (read_tensor(bytes(img), mm, "x") == -q).all()
    assert mm.region("x").addr * CFG.beat_bytes >= 64 + 40
    assert struct.unpack("<II", img[4:12]) == (VERSION, CFG.beat_bytes) and VERSION == 2
