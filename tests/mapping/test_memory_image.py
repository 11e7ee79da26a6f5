import struct
from dataclasses import replace

import numpy as np
import pytest

from hwflow.boards import load_board
from hwflow.hw.config import AccelConfig
from hwflow.mapping.errors import MappingError
from hwflow.mapping.memory_image import (
    MAGIC,
    MLP_IMAGE_VERSION,
    ImageBuilder,
    MemoryMap,
    check_image,
    pack_rows,
    read_tensor,
    write_tensor,
)
from hwflow.mapping.weight_format import DENSE_INT8, pack_weight_block

CFG = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, act_depth=256,
                  weight_depth=64)


def test_dense_int8_block_layout_follows_the_contract():
    """The int8 dense tile: R parameter rows, then k_words value rows; the other
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
    assert struct.unpack("<II", img[4:12]) == (MLP_IMAGE_VERSION, CFG.beat_bytes)
    assert MLP_IMAGE_VERSION == 2


def test_check_image_counts_the_block_rams_of_open_boards():
    # SB = 2 ports x 8 B: 1000 B is 63 beats, 504 B a port, one 18 Kb EBR deep, but a 64-bit
    # port is two EBRs wide (36 bits each): 2 ports x 2
    assert check_image(bytes(1000), load_board("ulx3s"), CFG) == 4
    # iCE40 (4 Kb = 512 B blocks): 4800 B is 300 beats, 2400 B a port: 5 blocks, x 2 ports
    assert check_image(bytes(4800), load_board("icebreaker"), CFG) == 10
    assert check_image(bytes(4800), load_board("u280"), CFG) == 0      # external memory


def test_check_image_refuses_an_image_over_the_memory_with_numbers():
    with pytest.raises(MappingError, match=r"^memory image does not fit icebreaker: 5000 B > "
                       r"4900 B of on-chip memory reserved for it \(memory.capacity_gb; "
                       r"needed > available\)"):
        check_image(bytes(5000), load_board("icebreaker"), CFG)
    u280 = load_board("u280")
    small = replace(u280, memory={**u280.memory, "capacity_gb": 0.00001})
    with pytest.raises(MappingError, match=r"^memory image does not fit u280: 10001 B > 10000 B "
                       r"of memory \(memory.capacity_gb; needed > available\)"):
        check_image(bytes(10001), small, CFG)


def test_check_image_refuses_an_image_over_the_block_rams_with_numbers():
    ice = load_board("icebreaker")
    few = replace(ice, resources={**ice.resources, "bram": 9})
    with pytest.raises(MappingError, match=r"^memory image does not fit icebreaker: BRAM 10 > 9 "
                       r"\(needed > available\) for 4800 B$"):
        check_image(bytes(4800), few, CFG)


def test_split_join_round_trip():
    """The image striped over 4 ports of 16 B and joined back."""
    from hwflow.mapping.memory_image import join_ports, split_ports

    img = bytes(range(256)) * 3
    ports = split_ports(img, 4, 16)
    assert ports.shape == (4, 12, 16)
    assert bytes(ports[1, 0]) == img[16:32]
    assert join_ports(list(ports)) == img
    assert split_ports(img[:40], 4, 16).shape == (4, 1, 16)        # zero-padded


def test_traffic_ranges_merge_each_category():
    """The RTL's traffic counters get one super-beat span per category, in address order; the
    ISA model classifies by the same kinds (TRAFFIC_CATEGORY)."""
    from hwflow.mapping.memory_image import TRAFFIC_CATEGORY, MemoryMap, Region

    regions = [Region("program", "program", 0, 64), Region("w0", "weights", 1, 100),
               Region("w1", "weights", 4, 64), Region("x", "input", 7, 32),
               Region("y", "output", 9, 32), Region("empty", "kv", 12, 0)]
    mm = MemoryMap(32, 16, 10 * 32, regions)
    assert mm.traffic_ranges() == [(0, 2, "program"), (1, 6, "weights"), (7, 10, "io")]
    assert {TRAFFIC_CATEGORY[k] for k in ("input", "output", "io")} == {"io"}
