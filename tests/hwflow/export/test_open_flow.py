"""The open flow end to end: compile for an ECP5 / iCE40 board, build a real bitstream with the
YoWASP tools, check the reports; an oversized design is refused with needed-vs-available numbers.

The toolchains are PyPI wheels the project installs, so nothing here skips.
"""

import json
from pathlib import Path

import pytest
import yaml

from hwflow.boards import BOARD_DIR, load_board
from hwflow.errors import HwflowError
from hwflow.export.open_flow import _main_clock, build_open, parse_nextpnr
from hwflow.flow import compile_model
from hwflow.hw.config import AccelConfig
from hwflow.mapping.errors import MappingError

KINDS = ("lut", "ff", "dsp", "bram", "uram")


def _build(tmp_path_factory, board, example="mlp-tiny", boards_dir=None):
    out = tmp_path_factory.mktemp(board) / "build"
    compile_model(example=example, board=board, out=out, boards_dir=boards_dir)
    conf = json.loads((out / "config.json").read_text())
    brd = load_board(board, boards_dir)
    return out, build_open(out, brd, AccelConfig(**conf["accel"]))


def _check(out: Path, r: dict, suffix: str):
    bit = Path(r["bitstream"])
    assert bit.suffix == suffix and bit.parent == out / "bitstream"
    assert bit.stat().st_size > 10_000
    assert r["exit_code"] == 0 and r["summary"]
    timing = json.loads((out / "reports" / "timing.json").read_text())
    assert {"fmax_mhz", "target_mhz", "pass", "clock"} <= set(timing)
    assert timing["fmax_mhz"] > 0 and timing["fmax_mhz"] == r["fmax_mhz"]
    util = json.loads((out / "reports" / "utilization.json").read_text())
    assert set(util) == set(KINDS)
    for kind in KINDS:
        assert 0 <= util[kind]["used"] <= util[kind]["available"], kind
    assert util["lut"]["used"] > 500 and util["dsp"]["used"] >= 1 and util["bram"]["used"] >= 1
    assert not list(out.glob(".bitstream*"))            # no temp folder left behind
    return timing, util


@pytest.fixture(scope="module")
def ulx3s_build(tmp_path_factory):
    # the bundled board with a 2 x 4 engine and small buffers: the same blocks as the 4 x 4
    # default at about half the logic, so place-and-route takes ~1 min instead of ~2.5
    boards = tmp_path_factory.mktemp("boards")
    data = yaml.safe_load((BOARD_DIR / "ulx3s.yaml").read_text())
    data.update(name="ulx3s-ci")
    data["engine"].update(chains=2, chain_len=4, act_depth=256, weight_depth=32)
    (boards / "ulx3s-ci.yaml").write_text(yaml.safe_dump(data))
    return _build(tmp_path_factory, "ulx3s-ci", boards_dir=boards)


@pytest.fixture(scope="module")
def icebreaker_build(tmp_path_factory):
    return _build(tmp_path_factory, "icebreaker")


def test_ulx3s_bitstream(ulx3s_build):
    out, r = ulx3s_build
    timing, util = _check(out, r, ".bit")
    # the board's clock (70 MHz, set from the measured Fmax of the bundled engine) is met
    assert timing["target_mhz"] == yaml.safe_load((BOARD_DIR / "ulx3s.yaml").read_text())[
        "clocks"]["kernel_mhz"]
    assert timing["pass"], timing
    assert util["dsp"]["used"] >= 8                                  # 2 x 4 engine


def test_icebreaker_bitstream(icebreaker_build):
    out, r = icebreaker_build
    timing, _ = _check(out, r, ".bin")
    assert timing["target_mhz"] == 12
    assert timing["pass"]


def test_oversized_engine_is_refused_with_numbers(tmp_path, tmp_path_factory):
    # the iCEBreaker with a 4 x 4 engine: its board budget claims enough DSPs for the compile
    # step, the UP5K has 8 SB_MAC16 and 5280 logic cells, so place-and-route cannot fit it
    data = yaml.safe_load((BOARD_DIR / "icebreaker.yaml").read_text())
    data.update(name="icebreaker-big")
    data["resources"]["dsp"] = 64
    data["memory"]["port_bytes"] = 4
    data["engine"].update(chains=4, chain_len=4)
    (tmp_path / "icebreaker-big.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(HwflowError) as e:
        _build(tmp_path_factory, "icebreaker-big", boards_dir=tmp_path)
    msg = str(e.value)
    assert "does not fit" in msg and "needed > available" in msg and "\n" not in msg
    assert "LUT" in msg or "ICESTORM" in msg


def test_memory_image_over_budget_is_refused(ulx3s_build, tmp_path):
    out, _ = ulx3s_build
    data = yaml.safe_load((BOARD_DIR / "ulx3s.yaml").read_text())
    data.update(name="ulx3s-small")
    data["memory"]["capacity_gb"] = 0.0000001            # 100 B for the image
    (tmp_path / "ulx3s-small.yaml").write_text(yaml.safe_dump(data))
    conf = json.loads((out / "config.json").read_text())
    with pytest.raises(MappingError, match=r"memory image does not fit .*\d+ B > 100 B"):
        build_open(out, load_board("ulx3s-small", tmp_path), AccelConfig(**conf["accel"]))


def test_parse_nextpnr_log(tmp_path):
    (tmp_path / "t.tim").write_text(
        "Info: Device utilisation:\n"
        "Info:             ICESTORM_LC:  6012/ 5280   113%\n"
        "Info:            ICESTORM_RAM:    20/   30    66%\n"
        "Info: Max frequency for clock 'clk': 20.50 MHz (PASS at 12.00 MHz)\n")
    p = parse_nextpnr(tmp_path, "t")
    assert p["cells"]["ICESTORM_LC"] == (6012, 5280)
    assert p["clocks"]["clk"] == (20.5, 12.0)


def test_main_clock_ignores_packer_nets():
    # nextpnr-ice40 lists a constant net it routed through a global buffer as a ~260 MHz clock
    clocks = {"$PACKER_GND_NET_$glb_clk": (263.0, 12.0), "accel.clk": (19.8, 12.0)}
    assert _main_clock(clocks, 12.0) == ("accel.clk", 19.8)
