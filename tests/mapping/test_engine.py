import pytest

from hwflow.boards import load_board
from hwflow.hw.config import AccelConfig
from hwflow.mapping.engine import check_fit, choose_config, estimate_resources, memory_blocks
from hwflow.mapping.errors import MappingError


def test_u280_default_engine_matches_one_row_per_cycle():
    cfg = choose_config(load_board("u280"))
    assert (cfg.chains, cfg.chain_len, cfg.mem_ports) == (16, 16, 8)
    assert cfg.beat_bytes == cfg.row_bytes == 256
    fit = check_fit(cfg, load_board("u280"))
    assert fit["dsp"]["used"] == 256 + 4 and fit["dsp"]["available"] == 9024


def test_kv260_engine_is_ddr_bound():
    cfg = choose_config(load_board("kv260"))
    assert cfg.beat_bytes == 16 and cfg.beats_per_row == 8


def test_oversized_engine_is_refused_with_numbers():
    kv = load_board("kv260")
    cfg = choose_config(kv, chains=128, chain_len=16)
    assert estimate_resources(cfg)["dsp"] == 128 * 16 + 4
    with pytest.raises(MappingError, match=r"DSP 2052 > 1248"):
        check_fit(cfg, kv)


def test_invalid_engine_combination():
    with pytest.raises(MappingError, match="multiple of chain_len"):
        choose_config(load_board("u280"), chain_len=24)


def test_bram_blocks_follow_the_family_block_size():
    # 8-bit x 2048 lane: one RAMB18E2 (half a 36 Kb block), one 18 Kb EBR, four 4 Kb EBRs
    assert memory_blocks(8, 2048, 36) == 0.5
    assert memory_blocks(8, 2048, 18) == 1
    assert memory_blocks(8, 2048, 4) == 4
    # 128-bit x 256 ring lane: two RAMB36 at 72 x 512 (width-bound, half the depth unused)
    assert memory_blocks(128, 256, 36) == 2
    # 64 words or fewer stay in LUTRAM on Xilinx (as Yosys maps the test configuration)
    assert memory_blocks(8, 64, 36) == 0 and memory_blocks(8, 64, 4) == 1


def test_kv260_estimate_equals_yosys_synth_xilinx():
    # Yosys 0.70 synth_xilinx -family xcup on the KV260 default: 132 DSP48E2,
    # 22 RAMB36E2 + 32 RAMB18E2 = 38 blocks (tests/hwflow/export/test_fit.py measures a
    # small configuration; this pins the numbers of the full one, which takes minutes).
    kv = load_board("kv260")
    assert estimate_resources(choose_config(kv), kv.bram_kbits) == {"dsp": 132, "bram": 38}
    small = AccelConfig(chains=2, chain_len=4, mem_ports=1, port_bytes=8, act_depth=64,
                        weight_depth=16)
    assert estimate_resources(small) == {"dsp": 12, "bram": 0}


def test_ecp5_and_ice40_count_their_own_blocks():
    ulx = load_board("ulx3s")
    assert ulx.bram_kbits == 18 and load_board("icebreaker").bram_kbits == 4
    assert check_fit(choose_config(ulx), ulx)["bram"]["used"] == 16
