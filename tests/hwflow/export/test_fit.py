"""Yosys synth_xilinx utilization of a small accelerator, its cache, and the fit check."""

from dataclasses import replace

import pytest

from hwflow.boards import load_board
from hwflow.export.fit import check_fit, parse_cells, xilinx_utilization
from hwflow.hw.config import AccelConfig
from hwflow.hw.sequencer import epilogue_lanes
from hwflow.hw.top import MODULE_NAME, generate_verilog
from hwflow.mapping.accel_config import estimate_resources, param_lanes
from hwflow.mapping.errors import MappingError

SMALL = AccelConfig(chains=2, chain_len=4, mem_ports=1, port_bytes=8, act_depth=64,
                    weight_depth=16)

TINY_BOARD = """\
name: tiny
description: a board too small for the test configuration
vendor: xilinx
part: xcup-tiny
family: zynq-ultrascale-plus
resources: {lut: 1000, ff: 100000, dsp: 10, bram: 4, uram: 0}
memory: {type: ddr4, channels: 1, port_bytes: 8, capacity_gb: 4, bandwidth_gbps: 1}
clocks: {kernel_mhz: 100}
flow: vivado
"""


@pytest.fixture(scope="module")
def small_util(tmp_path_factory):
    """One Yosys run (~15-20 s) shared by the tests; the cache lives in a fresh folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HWFLOW_CACHE", str(tmp_path_factory.mktemp("cache")))
    verilog = generate_verilog(SMALL)
    first = xilinx_utilization(verilog, MODULE_NAME, load_board("u280"))
    yield verilog, first
    mp.undo()


def test_dsp_count_is_the_designed_slices_plus_epilogue(small_util):
    _, util = small_util
    # 2 x 4 DSP48E2 MAC slices map 1:1 (behavioural A*B + PCIN + P), plus 3 multipliers in
    # each of the E = 2 epilogues and the controller's n_tiles * tile_mem_rows: the analytic
    # estimate exactly.
    assert epilogue_lanes(SMALL) == 2
    assert util["dsp"]["used"] == SMALL.dsp_slices + 3 * 2 + 1 == estimate_resources(SMALL)["dsp"]
    assert util["bram"]["used"] == estimate_resources(SMALL)["bram"] == 0   # 64 words: LUTRAM
    assert util["lutram"]["used"] > 0
    assert util["lut"]["used"] > 0 and util["ff"]["used"] > 0
    assert util["dsp"]["available"] == 9024
    assert util["meta"]["family"] == "xcup" and not util["meta"]["cached"]
    assert "Yosys" in util["meta"]["tool"] and util["meta"]["seconds"] > 0


@pytest.mark.parametrize("vec_lanes", [1, 4])
def test_dsp_count_with_the_transformer_units(tmp_path, monkeypatch, vec_lanes):
    """The vector and attention units: H (3 L + 5) + 2 L + 9 DSP48E2, plus 5 per vector lane
    past the first (mapping/accel_config.py)."""
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    cfg = replace(SMALL, transformer=True, attn_heads=2, vec_lanes=vec_lanes)
    util = xilinx_utilization(generate_verilog(cfg), MODULE_NAME, load_board("u280"))
    assert util["dsp"]["used"] == estimate_resources(cfg)["dsp"] == (
        15 + 2 * 17 + 17 + 5 * (vec_lanes - 1))


def test_ring_in_uram_is_mapped_to_uram288_as_estimated(tmp_path, monkeypatch):
    """``ring_uram``: every ring lane memory (the engine's and the parameter reader's copies,
    the index lanes) is marked ram_style "ultra" and becomes URAM288, counted as the analytic
    estimate; the activation buffer stays where it was."""
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    cfg = replace(SMALL, weight_depth=64, ring_uram=True)
    verilog = generate_verilog(cfg)
    assert verilog.count('ram_style = "ultra"') == 2 * cfg.chain_len    # ring + index lanes
    util = xilinx_utilization(verilog, MODULE_NAME, load_board("u280"))
    est = estimate_resources(cfg)
    assert est["uram"] == cfg.chain_len + param_lanes(cfg) + cfg.chain_len > 0
    assert util["uram"]["used"] == est["uram"]
    assert util["bram"]["used"] == est["bram"] == 0
    assert util["dsp"]["used"] == est["dsp"]


def test_attention_unit_lanes_equal_the_lane_model(tmp_path, monkeypatch):
    """The attention unit alone at L = 4 with 2 lanes: DSP exact, LUT and FF within 1% of the
    shared + per-lane model fitted on eight (L, H) points (mapping/accel_config.py)."""
    from amaranth.back import verilog

    from hwflow.hw.attention import AttentionUnit
    from hwflow.mapping import accel_config

    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    cfg = AccelConfig(chains=4, chain_len=4, mem_ports=1, port_bytes=16, act_depth=256,
                      transformer=True, attn_heads=2)
    util = xilinx_utilization(verilog.convert(AttentionUnit(cfg, max_head_dim=64),
                                              name="attn"), "attn", load_board("u280"))
    L, H = 4, 2
    # shared 2 L + 3: + 2 for the sliding window's first key times pos_sb (33 x 8 bits); per
    # lane 3 L + 5: + 1 for the score soft-cap's y * cap (13 x 10 bits)
    assert util["dsp"]["used"] == H * (3 * L + 5) + 2 * L + 3
    # the two lanes' soft-cap ROM: one RAMB18E2 read on both ports (half a 36 Kb block)
    assert accel_config.attention_rom_blocks(cfg) == 0.5 and util["bram"]["used"] == 1
    for kind, shared, lane in (("lut", accel_config.ATTN_SHARED_LUT, accel_config.ATTN_LANE_LUT),
                               ("ff", accel_config.ATTN_SHARED_FF, accel_config.ATTN_LANE_FF)):
        model = shared[0] + shared[1] * L + H * (lane[0] + lane[1] * L)
        assert abs(util[kind]["used"] - model) <= 0.01 * model, (kind, util[kind], model)


def test_second_call_hits_the_cache(small_util):
    verilog, first = small_util
    again = xilinx_utilization(verilog, MODULE_NAME, load_board("u280"))
    assert again["meta"]["cached"]
    assert {k: v for k, v in again.items() if k != "meta"} == \
        {k: v for k, v in first.items() if k != "meta"}
    # same Verilog and the same Yosys family: the Versal board reuses the run, as a proxy
    vck = xilinx_utilization(verilog, MODULE_NAME, load_board("vck190"))
    assert vck["meta"]["cached"] and "UltraScale+" in vck["meta"]["proxy"]
    assert vck["dsp"] == {"used": first["dsp"]["used"], "available": 1968}


def test_oversized_design_is_refused_with_numbers(small_util, tmp_path):
    verilog, _ = small_util
    (tmp_path / "tiny.yaml").write_text(TINY_BOARD)
    tiny = load_board("tiny", tmp_path)
    util = xilinx_utilization(verilog, MODULE_NAME, tiny)
    assert util["meta"]["cached"]
    with pytest.raises(MappingError) as e:
        check_fit(util, tiny)
    msg = str(e.value)
    lut = util["lut"]["used"]
    dsp = util["dsp"]["used"]
    assert f"LUT {lut} > 1000" in msg and f"DSP {dsp} > 10" in msg and "\n" not in msg
    assert "FF" not in msg and "BRAM" not in msg
    # the same design against the U280's numbers fits: no error
    check_fit(small_util[1], load_board("u280"))


def test_parse_cells_counts_bram_in_36kb_units():
    used = parse_cells({"LUT6": 3, "LUT1": 1, "FDRE": 5, "FDCE": 1, "DSP48E2": 2,
                        "RAMB36E2": 2, "RAMB18E2": 3, "URAM288": 1, "RAM64M8": 4, "SRL16E": 2})
    assert used == {"lut": 4, "ff": 6, "dsp": 2, "bram": 4, "uram": 1, "lutram": 4, "srl": 2}


@pytest.mark.parametrize("damage", [
    lambda p: p.write_text(p.read_text()[:40]),                        # truncated
    lambda p: p.write_text(p.read_text().replace('"cached": false', '"cached": true')),
    lambda p: p.write_text("[]"),                                      # valid JSON, wrong shape
])
def test_damaged_synthesis_cache_entry_is_redone_with_one_line(tmp_path, monkeypatch, capfd,
                                                               damage):
    """A cached Yosys result is checked against its recorded sha256 before it is believed."""
    import hwflow.export.fit as fit

    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    runs = []

    def fake_yosys(exe, verilog, top, family, timeout_s):
        runs.append(top)
        return {"LUT6": 10, "DSP48E2": 2}, 0.5
    monkeypatch.setattr(fit, "_run_yosys", fake_yosys)
    board = load_board("u280")
    first = xilinx_utilization("module m; endmodule", "m", board)
    (entry,) = fit.synth_cache_dir().glob("*.json")
    damage(entry)
    capfd.readouterr()
    again = xilinx_utilization("module m; endmodule", "m", board)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(runs) == 2 and len(err) == 1 and "was damaged" in err[0] and str(entry) in err[0]
    assert again["dsp"] == first["dsp"]
    third = xilinx_utilization("module m; endmodule", "m", board)
    assert len(runs) == 2 and third["meta"]["cached"]
