import pytest

from hwflow.boards import load_board
from hwflow.mapping.engine import check_fit, choose_config, estimate_resources
from hwflow.mapping.errors import MappingError


def test_u280_default_engine_matches_one_row_per_cycle():
    cfg = choose_config(load_board("u280"))
    assert (cfg.chains, cfg.chain_len, cfg.mem_ports) == (16, 16, 8)
    assert cfg.beat_bytes == cfg.row_bytes == 256
    fit = check_fit(cfg, load_board("u280"))
    assert fit["dsp"]["used"] == 256 + 3 and fit["dsp"]["available"] == 9024


def test_kv260_engine_is_ddr_bound():
    cfg = choose_config(load_board("kv260"))
    assert cfg.beat_bytes == 16 and cfg.beats_per_row == 8


def test_oversized_engine_is_refused_with_numbers():
    kv = load_board("kv260")
    cfg = choose_config(kv, chains=128, chain_len=16)
    assert estimate_resources(cfg)["dsp"] == 128 * 16 + 3
    with pytest.raises(MappingError, match=r"DSP 2051 > 1248"):
        check_fit(cfg, kv)


def test_invalid_engine_combination():
    with pytest.raises(MappingError, match="multiple of chain_len"):
        choose_config(load_board("u280"), chain_len=24)
