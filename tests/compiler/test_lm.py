"""compiler.lm: one interface over the model families. A Mamba answers as a decoder does: its
folder opens through ``open_model``, its greedy golden run carries the state token by token
(equal to ``qmamba_step`` one token at a time), and its quantization report is the decoder's
(a realistic init: W8A8 and W4A8 close to float)."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.compiler import lm
from hwflow.compiler.ssm import FloatMamba
from hwflow.compiler.ssm_graph import MAMBA_MAX_CONTEXT
from hwflow.compiler.ssm_quant import QMambaState, qmamba_step, quantize_mamba

from .test_ssm_frontend import _save


@pytest.fixture(scope="module")
def fm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mamba") / "m"
    _save(folder)
    m = lm.open_model(folder)
    assert isinstance(m, FloatMamba) and lm.is_state_space(m)
    return m


def test_golden_generate_carries_the_state(fm):
    qm = quantize_mamba(fm)
    prompt = [5, 90, 13, 2, 61]
    run = lm.golden_generate(qm, prompt, 4)
    assert run.step_logits[0].shape == (5, 97) and len(run.step_logits) == 4
    state, want = QMambaState.empty(qm), []
    for t in prompt:
        logits, state = qmamba_step(qm, state, t)
        want.append(logits)
    np.testing.assert_array_equal(run.step_logits[0], np.stack(want))
    for tok, rows in zip(run.tokens, run.step_logits[1:], strict=False):
        logits, state = qmamba_step(qm, state, tok)
        np.testing.assert_array_equal(rows[0], logits)
    assert lm.max_context(qm) == MAMBA_MAX_CONTEXT


@pytest.mark.parametrize("wbits, cosine", [(8, 0.995), (4, 0.98)])
def test_quant_report_of_a_mamba(fm, wbits, cosine):
    r = lm.quant_report(fm, quantize_mamba(fm, wbits=wbits))
    print(f"W{wbits}A8 with rotation: cosine {r['cosine']:.4f}, top-1 {r['top1']:.3f}, "
          f"greedy top-1 {r['greedy_top1']:.3f}")
    assert r["cosine"] > cosine and r["top1"] > 0.9
