"""A Mamba end to end through the CLI: a tiny random ``MambaForCausalLM`` (hidden 40, 80 inner
channels, 6 states, 2 layers, vocabulary 97) saved with ``save_pretrained`` -> ``hwflow
compile --weights int4`` (LightMamba's rotations: every state-space instruction, HADAMARD
included; the state-space units sized for the model by the compile) -> ``hwflow sim``
(Verilator): an 11-token prompt (an 8-row prefill bucket, then one-token runs: a recurrent
prompt's runs never overlap) and 8 greedy decode steps, every run's logits equal the golden
run's, the RTL's own tokens feed the next step and equal golden's, no activation or state
byte crosses the memory interface, and the RTL's traffic counters equal the ISA model's.

The engine is a small one (a board of this file's own, so the Verilator build stays short);
``hwflow compile`` of the same folder for the u280 is the README's figure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hwflow.cli import main
from hwflow.compiler.decoder_io import load_saved_decoder
from hwflow.compiler.ssm_quant import QMambaState, qmamba_step
from tests._cli import assert_one_line_error, run_cli

from ..compiler.test_ssm_interpret import _tiny_mamba

#: One 16-byte port, 4 chains of 8 (an act word of 8 channels: the 80 inner channels are 10
#: words, the 6 states one), a vector unit of 8 lanes.
MAMBA_BOARD = """\
name: ssm-tiny
description: a one-port test card for the state-space path
vendor: xilinx
part: xcu280-fsvh2892-2L-e
family: virtex-ultrascale-plus-hbm
resources: {lut: 1303680, ff: 2607360, dsp: 9024, bram: 2016, uram: 960}
memory: {type: hbm2, channels: 1, port_bytes: 16, capacity_gb: 1, bandwidth_gbps: 4.8}
clocks: {kernel_mhz: 300}
flow: vitis
engine: {chains: 4, chain_len: 8, mem_ports: 1, act_depth: 2048, weight_depth: 64,
         transformer: true, vec_lanes: 8}
"""

PROMPT = [int(t) for t in np.arange(11) * 7 % 97]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mamba")
    _tiny_mamba(0).save_pretrained(tmp / "tiny-mamba")
    boards = tmp / "boards"
    boards.mkdir()
    (boards / "ssm-tiny.yaml").write_text(MAMBA_BOARD)
    out = tmp / "build"
    assert main(["--boards-dir", str(boards), "compile", str(tmp / "tiny-mamba"), "--board",
                 "ssm-tiny", "--weights", "int4", "-o", str(out)]) == 0
    assert main(["sim", str(out), "--prompt", ",".join(map(str, PROMPT)),
                 "--new-tokens", "8"]) == 0
    return out, json.loads((out / "reports" / "sim.json").read_text())


def test_the_compile_sizes_the_state_space_units(build):
    out, _ = build
    rep = json.loads((out / "reports" / "compile.json").read_text())
    c = rep["config"]
    assert (rep["family"], rep["weights"], rep["lm_head"]) == ("mamba", "int4", "int4")
    # 6 states, 4 taps, 2 layers x 80 channels of state, 2 x 10 conv words, blocks of 16, two
    # scan units (L / 4)
    assert [c[k] for k in ("ssm_states", "conv_taps", "ssm_channels", "conv_words",
                           "hadamard_block", "ssm_lanes")] == [6, 4, 160, 20, 16, 2]
    assert rep["naive_program_bytes"] is None
    assert any("state-space units sized" in n for n in rep["config_notes"])


def test_prompt_and_decode_are_bit_exact_in_rtl(build):
    out, sim = build
    steps = sim["steps"]
    assert sim["bit_exact"] and sim["completed"] and len(steps) == 4 + 8
    assert [(s["pos"], s["rows"], s["tokens"]) for s in steps[:4]] == [
        (0, 8, 8), (8, 1, 1), (9, 1, 1), (10, 1, 1)]
    assert all(s["bit_exact"] and s["isa_model_bit_exact"] for s in steps)
    # golden run here, independently of the report: the state carried token by token
    qm = load_saved_decoder(out / "decoder" / "quantized")
    state, tokens = QMambaState.empty(qm), []
    for t in PROMPT:
        logits, state = qmamba_step(qm, state, t)
    for _ in range(9):
        tokens.append(int(np.argmax(logits)))
        logits, state = qmamba_step(qm, state, tokens[-1])
    assert sim["tokens"] == sim["golden_tokens"] == tokens and len(set(tokens)) > 2


def test_state_stays_on_chip_and_traffic_equals_the_isa_model(build):
    _, sim = build
    assert all(s["traffic_matches_isa_model"] for s in sim["steps"])
    assert sim["traffic"] == sim["isa_model_traffic"]
    assert {k for k, v in sim["traffic"]["decode"].items() if v} == {
        "weights_read", "io_read", "io_written", "program_read"}


def test_predicted_decode_cycles_match_the_rtl(build, capfd):
    """``hwflow predict`` of the build (the cycle model's CONV, SCAN and HADAMARD terms, the
    built-in values on this uncalibrated engine): the decode step within 1 % of the RTL's
    measured one (5,869 predicted, 5,908 measured when written), the same at every position."""
    out, sim = build
    code, _o, _e = run_cli(capfd, "--boards-dir", str(out.parent / "boards"), "predict",
                           str(out))
    assert code == 0
    pred = json.loads((out / "reports" / "predict.json").read_text())["decode"]
    measured = {s["cycles"] for s in sim["steps"] if s["kind"] == "decode"}
    assert len(measured) == 1 and len(set(pred["cycles_at_positions"].values())) == 1
    print(f"decode step: predicted {pred['cycles_per_token']:.0f}, RTL {measured}")
    assert pred["cycles_per_token"] == pytest.approx(measured.pop(), rel=0.01)


def test_a_weight_format_a_mamba_has_no_path_for_is_one_line(build, tmp_path, capfd):
    out, _ = build
    code, _o, err = run_cli(capfd, "compile", str(out.parent / "tiny-mamba"), "--board", "u280",
                            "--weights", "ternary", "-o", str(tmp_path / "t"))
    assert_one_line_error(code, err, "--weights ternary: a Mamba takes int8, int4")
    assert not (tmp_path / "t").exists()
