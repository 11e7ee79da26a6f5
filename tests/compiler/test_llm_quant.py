"""Decoder quantization: integer fields in range and golden close to float."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.compiler.errors import CompileError
from hwflow.compiler.llm_frontend import load_decoder
from hwflow.compiler.llm_quant import quant_report, quantize_decoder
from hwflow.golden import llm as gl

from .llm_models import tiny_llama


@pytest.fixture(scope="module")
def fd(tmp_path_factory):
    return load_decoder(tiny_llama(tmp_path_factory.mktemp("tiny_llama")), max_context=64)


@pytest.fixture(scope="module")
def qd(fd):
    return quantize_decoder(fd, 64)


def _linears(qd):
    for ly in qd.layers:
        yield from (ly.q, ly.k, ly.v, ly.o, ly.gate, ly.up, ly.down)
    yield qd.lm_head


def test_integer_fields_in_range(qd):
    assert qd.embed.dtype == np.int8 and qd.embed.shape == (320, 120)
    assert qd.rope.shape == (64, 20) and qd.rope.dtype == np.int16
    np.testing.assert_array_equal(qd.rope, gl.rope_table(64, gl.default_inv_freq(20, 10000.0)))
    for ql in _linears(qd):
        assert ql.weight.dtype == np.int8 and ql.bias.dtype == np.int32
        assert 0 <= ql.mult.min() and ql.mult.max() <= 65535 and 0 <= ql.shift <= 47
        assert 0 <= ql.res_mult <= 65535
    for ly in qd.layers:
        assert ly.o.res_mult > 0 and ly.down.res_mult > 0 and ly.q.res_mult == 0
        for eps, mult, shift in (ly.attn_norm, ly.mlp_norm):
            assert 0 <= eps < 2**32 and 0 < mult <= 65535 and 0 <= shift <= 47
        smul, sshift, omul, oshift = ly.attn
        assert 0 < smul <= 65535 and 0 < omul <= 65535 and sshift <= 47 and oshift <= 47
    assert qd.scales["l0.gate"] == gl.SILU_SCALE and qd.scales["logits"] > 0


def test_quant_report_close_to_float(fd, qd):
    r = quant_report(fd, qd)
    print(f"tiny LLaMA golden vs float: {r}")
    assert r["cosine"] > 0.9 and r["cosine_min"] > 0.9
    assert r["top1"] >= 0.5


def test_calibration_is_seeded(fd, qd):
    again = quantize_decoder(fd, 64, seed=0)
    other = quantize_decoder(fd, 64, seed=1)
    assert again.scales == qd.scales and other.scales != qd.scales
    given = quantize_decoder(fd, 64, calib_ids=[list(range(40)), list(range(200, 232))])
    assert given.scales != qd.scales


def test_max_context_beyond_model(fd):
    with pytest.raises(CompileError, match="max_context 3000"):
        quantize_decoder(fd, 3000)
