from dataclasses import replace

import pytest

from hwflow.boards import load_board
from hwflow.hw.config import AccelConfig
from hwflow.mapping.engine import (
    check_fit,
    choose_config,
    estimate_resources,
    memory_blocks,
    param_lanes,
)
from hwflow.mapping.errors import MappingError


def test_u280_default_engine_matches_one_row_per_cycle():
    cfg = choose_config(load_board("u280"))
    assert (cfg.chains, cfg.chain_len, cfg.mem_ports) == (16, 16, 8)
    assert cfg.beat_bytes == cfg.row_bytes == 256
    fit = check_fit(cfg, load_board("u280"))
    # 256 MAC slices, 4 epilogues of 3 multipliers, the controller's one, and the transformer
    # units (5 per lane + 10)
    assert fit["dsp"]["used"] == 256 + 12 + 1 + 90 and fit["dsp"]["available"] == 9024
    assert cfg.sparse and cfg.int4


def test_kv260_engine_is_ddr_bound():
    cfg = choose_config(load_board("kv260"))
    assert cfg.beat_bytes == 16 and cfg.beats_per_row == 8


def test_oversized_engine_is_refused_with_numbers():
    kv = load_board("kv260")
    cfg = choose_config(kv, chains=128, chain_len=16)
    assert estimate_resources(cfg)["dsp"] == 128 * 16 + 13 + 90
    with pytest.raises(MappingError, match=r"DSP 2151 > 1248"):
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
    # Yosys 0.70 synth_xilinx -family xcup on the KV260 default (v2 engine, sparse + int4):
    # 141 DSP48E2 (128 MAC slices, 4 epilogues x 3, the controller's 1) and 60 blocks:
    # activation buffer 3 ports x 16 lanes of 2048 x 8 (48 RAMB18E2 = 24), ring 16 + 12
    # parameter lanes of 256 x 64 (28 RAMB36E2) and 16 index lanes of 256 x 32 (16 RAMB18E2 =
    # 8); 34306 LUT. (tests/hwflow/export/test_fit.py measures a small configuration; this
    # pins the numbers of the full one, which takes minutes.)
    # The transformer units (on for the KV260) add 5 DSP48E2 per lane + 10 (test_fit.py).
    kv = load_board("kv260")
    no_units = replace(choose_config(kv), transformer=False, tlmm=False)
    assert estimate_resources(no_units, kv.bram_kbits) == {"dsp": 141, "bram": 60}
    small = AccelConfig(chains=2, chain_len=4, mem_ports=1, port_bytes=8, act_depth=64,
                        weight_depth=16)
    assert estimate_resources(small) == {"dsp": 15, "bram": 0}


def test_ecp5_and_ice40_count_their_own_blocks():
    ulx = load_board("ulx3s")
    assert ulx.bram_kbits == 18 and load_board("icebreaker").bram_kbits == 4
    # 4 lanes x 3 read ports of 1024 x 8 (one EBR each), 4 + 4 ring lanes of 128 x 32 and 4
    # index lanes of 128 x 16 (one each)
    assert check_fit(choose_config(ulx), ulx)["bram"]["used"] == 24


def test_small_fpga_engine_drops_the_sparse_and_int4_paths():
    ice = load_board("icebreaker")
    cfg = choose_config(ice)
    assert (cfg.chains, cfg.chain_len, cfg.sparse, cfg.int4) == (1, 2, False, False)
    # 2 MAC slices + one epilogue (P = 1) + the controller; act 3 x 2 lanes, ring 2 + 2 lanes
    # (no index lanes), one 4 Kb EBR each
    assert estimate_resources(cfg, ice.bram_kbits) == {"dsp": 6, "bram": 10}
    assert not choose_config(ice, sparse=True).int4 and choose_config(ice, sparse=True).sparse


def test_param_lanes_hold_the_records_of_every_segment():
    def cfg(L):
        return AccelConfig(chains=8, chain_len=L, mem_ports=1, port_bytes=16, act_depth=64,
                           weight_depth=16)
    # records of G = 4 segments at bytes [8s, 8s + 6) of a chain's parameter bytes
    assert [param_lanes(cfg(L)) for L in (2, 4, 8, 16)] == [2, 4, 6, 12]
    # a dense-only engine reads segment 0's record only
    assert param_lanes(replace(cfg(16), sparse=False)) == 6


# ------------------------------------------------------------------------- TLMM sizing

def test_tlmm_model_reproduces_the_synthesized_points():
    from hwflow.mapping.engine import tlmm_resources

    # Yosys synth_xilinx (xcup) of hw/tlmm.py, G=3, SB=16, acc_depth=1024: LUT + LUTRAM
    for (T, Q), lut in {(2, 2): 3402, (4, 4): 4354, (8, 4): 6233, (4, 8): 6970,
                        (8, 8): 13199}.items():
        r = tlmm_resources(3, T, Q, 1024, 16)
        assert abs(r["lut"] - lut) <= 0.025 * lut and r["dsp"] == 6 and r["uram"] == 0
    assert [tlmm_resources(3, T, Q, 1024, 16)["bram"] for T, Q in ((2, 2), (4, 4), (8, 4))] \
        == [3, 4, 4]


def test_size_tlmm_respects_budget_and_bandwidth():
    from hwflow.mapping.engine import TLMM_LUT_SHARE, size_tlmm, tlmm_resources

    for name in ("kv260", "u280"):
        b = load_board(name)
        r = size_tlmm(b)
        T, Q, SB = r["T"], r["Q"], r["SB"]
        assert r["resources"]["lut"] <= TLMM_LUT_SHARE * b.resources["lut"] == r["lut_budget"]
        assert T * Q * 5 <= 8 * SB                              # one record per super-beat
        # the most lookups per cycle the record width allows (powers of two)
        assert 2 * T * Q * 5 > 8 * SB or 2 * T * Q > 64 * 64
        assert r["resources"] == tlmm_resources(3, T, Q, 1024, SB)
        assert r["constants_source"].startswith("fitted")
    kv = size_tlmm(load_board("kv260"))
    assert kv["SB"] == 16 and kv["T"] * kv["Q"] == 16
    # a budget too small for T = Q = 1 is refused with the numbers
    with pytest.raises(MappingError, match=r"T = Q = 1.*needs LUT \d+.*budget is LUT"):
        size_tlmm(load_board("kv260"), lut_share=0.01)


def test_tlmm_config_from_board_or_sized():
    from dataclasses import replace as dc_replace

    from hwflow.mapping.engine import check_fit_tlmm, tlmm_config

    kv = load_board("kv260")
    base = choose_config(kv)
    cfg, rep = tlmm_config(kv, base, acc_depth=5000)
    assert cfg.tlmm and cfg.tlmm_acc_depth >= 5000
    if "tlmm_t" in kv.engine and "tlmm_q" in kv.engine:
        assert rep["source"] == "board" and (cfg.tlmm_t, cfg.tlmm_q) == (
            kv.engine["tlmm_t"], kv.engine["tlmm_q"])
    bare = dc_replace(kv, engine={k: v for k, v in kv.engine.items()
                                  if k not in ("tlmm_t", "tlmm_q")})
    cfg2, rep2 = tlmm_config(bare, base)
    assert rep2["source"] == "sized" and (cfg2.tlmm_t, cfg2.tlmm_q) == (rep2["T"], rep2["Q"])
    fit = check_fit_tlmm(cfg2, kv)
    assert fit["lut_tlmm"]["used"] == rep2["resources"]["lut"]
    with pytest.raises(MappingError, match=r"TLMM engine .* does not fit kv260: LUT_TLMM"):
        check_fit_tlmm(dc_replace(cfg2, tlmm_t=64, tlmm_q=64), kv)
