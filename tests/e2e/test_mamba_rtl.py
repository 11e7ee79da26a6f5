"""A Mamba end to end on the RTL (Verilator): a tiny random ``MambaForCausalLM`` (hidden 40, 80
inner channels, 6 states, 2 layers, vocabulary 97), quantized (int4 weights with LightMamba's
rotations: every state-space instruction, HADAMARD included), lowered by the decoder's back
half, runs a 6-token prompt (a 4-row prefill bucket and two decode-program runs: a recurrent
prompt's runs never overlap) and 8 greedy decode steps; every run's logits equal the golden
run's, the RTL's own tokens feed the next step and equal golden's, no activation or state byte
crosses the memory interface, and the RTL's traffic counters equal the ISA model's.

Not yet through ``hwflow compile``/``sim``: the flow does not size the state-space units from a
board (docs/architecture.md, "State-space path")."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.compiler.ssm_quant import QMambaState, qmamba_step, quantize_mamba
from hwflow.flow import accelerator_verilog
from hwflow.hw.config import AccelConfig
from hwflow.mapping.llm_lower import lower_decoder
from hwflow.sim.isa_model import run_host_steps
from hwflow.sim.runner import rtl_jobs, simulate_steps

from ..compiler.test_ssm_interpret import _float_mamba, _tiny_mamba

L = 8


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    qm = quantize_mamba(_float_mamba(_tiny_mamba(0)), rotate=True, wbits=4)
    s = qm.shape
    cfg = AccelConfig(chains=4, chain_len=L, mem_ports=2, port_bytes=16, act_depth=2048,
                      weight_depth=64, transformer=True, vec_lanes=L, ssm_states=s.d_state,
                      ssm_channels=s.layers * s.d_inner, conv_taps=s.d_conv,
                      conv_words=s.layers * -(-s.conv_dim // L), hadamard_block=16)
    low = lower_decoder(qm, cfg, prompt_buckets=[4])
    prompt = [int(t) for t in np.arange(6) * 7 % s.vocab]
    host, steps = rtl_jobs(low, prompt, 8)
    res = simulate_steps(cfg, accelerator_verilog(cfg), low.image, steps,
                         tmp_path_factory.mktemp("mamba"),
                         traffic=low.memory_map.traffic_ranges())
    return qm, low, prompt, host, res


def test_prompt_and_decode_are_bit_exact_in_rtl(run):
    qm, low, prompt, host, res = run
    assert res.passed and len(res.steps) == len(host) == 11
    assert [(st.pos, st.rows) for st, _ in host[:3]] == [(0, 4), (4, 1), (5, 1)]
    state, tokens, golden = QMambaState.empty(qm), list(prompt), []
    for (st, is_decode), r in zip(host, res.steps, strict=True):
        assert r.done and r.error == 0
        for t in (tokens[-1:] if is_decode else prompt[st.pos:st.pos + st.tokens]):
            want, state = qmamba_step(qm, state, t)
        np.testing.assert_array_equal(np.frombuffer(r.regions[0], np.int8)[:qm.shape.vocab],
                                      want)
        if r.token is not None:             # the RTL's greedy token, fed to the next run
            assert r.token == int(np.argmax(want))
            tokens.append(r.token)
            golden.append(int(np.argmax(want)))
    assert len(golden) == 9 and len(set(golden)) > 2


def test_state_stays_on_chip_and_traffic_equals_the_isa_model(run):
    qm, low, prompt, host, res = run
    tokens = [r.token for r in res.steps if r.token is not None]
    _, isa = run_host_steps(low.cfg, low.image, low.memory_map, host, tokens)
    for (_, is_decode), r, want in zip(host, res.steps, isa, strict=True):
        assert {k: v for k, v in r.traffic.items() if v} == {k: v for k, v in want.items() if v}
        if is_decode:
            assert {k for k, v in r.traffic.items() if v} == {
                "weights_read", "io_read", "io_written", "program_read"}
