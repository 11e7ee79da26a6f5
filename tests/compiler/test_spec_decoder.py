"""The decoder IR's spec check (``compiler.spec.check_decoder``): every family's quantized
decoder passes it (the quantize pass ends with it, a saved one is checked as it is read back),
and each rule, broken on a copy, is refused with the decoder, layer, linear and rule named."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hwflow.compiler import decoder_io
from hwflow.compiler.errors import SpecError
from hwflow.compiler.llm_frontend import load_decoder
from hwflow.compiler.llm_quant import quantize_decoder
from hwflow.compiler.spec import check_decoder, linear_rules
from hwflow.golden import int4 as g4
from hwflow.llm_examples import write_tiny_bitnet

from .llm_models import tiny_llama


@pytest.fixture(scope="module")
def qd(tmp_path_factory):
    fd = load_decoder(tiny_llama(tmp_path_factory.mktemp("tiny_llama")), max_context=32)
    return quantize_decoder(fd, 32, weights="mixed")


@pytest.fixture(scope="module")
def qd_ternary(tmp_path_factory):
    fd = load_decoder(write_tiny_bitnet(tmp_path_factory.mktemp("tiny_bitnet")), max_context=32)
    return quantize_decoder(fd, 32)


def _raises(qd, *parts):
    with pytest.raises(SpecError) as e:
        check_decoder(qd)
    msg = str(e.value)
    assert all(p in msg for p in parts), msg
    assert "\n" not in msg
    return msg


def _layer(qd, i=0, **changes):
    layers = list(qd.layers)
    layers[i] = dataclasses.replace(layers[i], **changes)
    return dataclasses.replace(qd, layers=layers)


def _linear(qd, name, i=0, **changes):
    return _layer(qd, i, **{name: dataclasses.replace(getattr(qd.layers[i], name), **changes)})


def test_quantized_decoders_pass(qd, qd_ternary):
    assert check_decoder(qd) is qd
    assert check_decoder(qd_ternary) is qd_ternary
    # the mixed compile has int4 linears and an int8 LM head, the BitNet one ternary linears
    # and gamma codes
    assert qd.layers[0].q.w4 is not None and qd.lm_head.w4 is None
    assert all(ly.q.ternary and ly.attn_sub_gamma is not None for ly in qd_ternary.layers)


def test_shape_rules(qd):
    name = f"decoder '{qd.name}'"
    _raises(dataclasses.replace(qd, layers=qd.layers[:-1]), name, "1 layers, the shape says 2")
    _raises(dataclasses.replace(qd, embed=qd.embed.astype(np.int16)), "'embed' must be int8")
    _raises(dataclasses.replace(qd, rope=qd.rope[:-1]), "'rope' must be int16 [32, 20]")
    _raises(dataclasses.replace(qd, max_context=10**6), "max_context 1000000 outside")
    bad = dataclasses.replace(qd.shape, kv_heads=qd.shape.heads + 1)
    _raises(dataclasses.replace(qd, shape=bad), "not a multiple of")


def test_linear_rules(qd):
    w = qd.layers[1].up.weight
    _raises(_linear(qd, "up", 1, weight=w[:, :-1], w4=None, w4_scale=None),
            "layer 1 linear 'up'", "weight [out, in] is [200, 119], the decoder's shape needs "
                                   "[200, 120]")
    _raises(_linear(qd, "q", weight=qd.layers[0].q.weight.astype(np.int32)),
            "layer 0 linear 'q'", "2-D int8 array")
    mult = qd.layers[0].k.mult.copy()
    mult[0] = 70000
    _raises(_linear(qd, "k", mult=mult), "linear 'k'", "mult outside the u16 range")
    _raises(_linear(qd, "v", shift=48), "linear 'v'", "shift 48 outside [0, 47]")
    _raises(_linear(qd, "gate", res_mult=3), "linear 'gate'", "res_mult must be 0")
    bias = qd.layers[0].down.bias.copy()
    bias[0] = 2**31 - 1
    _raises(_linear(qd, "down", bias=bias), "linear 'down'", "int32 accumulator bound")
    head = dataclasses.replace(qd.lm_head, ternary=True)
    _raises(dataclasses.replace(qd, lm_head=head), "linear 'lm_head'", "ternary weight values")


def test_int4_rules(qd):
    i, name = next((i, n) for i, ly in enumerate(qd.layers) for n in ("q", "k", "v", "o", "gate",
                                                                        "up", "down")
                   if getattr(ly, n).w4 is not None)
    lin = getattr(qd.layers[i], name)
    where = f"layer {i} linear '{name}'"
    _raises(_linear(qd, name, i, w4=None), where, "needs both its codes")
    codes = lin.w4.copy()
    codes[0, 0] = 9
    _raises(_linear(qd, name, i, w4=codes), where, f"w4 codes outside [{g4.Q_MIN}, {g4.Q_MAX}]")
    weight = lin.weight.copy()
    weight[0, 0] += 1
    _raises(_linear(qd, name, i, weight=weight), where, "differs from dequantize_int4")


def test_ternary_rules(qd_ternary, qd):
    w = qd_ternary.layers[0].o.weight.copy()
    w[0, 0] = 2
    _raises(_linear(qd_ternary, "o", weight=w), "linear 'o'", "outside {-1, 0, 1}")
    # an unfused residual add (the ternary layers' VADD) with a fused multiplier: added twice
    _raises(_linear(qd_ternary, "down", res_mult=7), "linear 'down'", "res_mult must be 0")
    # gamma codes go through ABSQUANT, in front of ternary linears only
    codes = qd_ternary.layers[0].mlp_gamma
    if codes is None:
        codes = np.ones(qd.shape.hidden, dtype=np.int8)
    _raises(_layer(qd, mlp_gamma=codes), "'mlp_gamma' codes", "linear 'gate' is not ternary")
    _raises(_layer(qd_ternary, attn_sub_gamma=qd_ternary.layers[0].attn_sub_gamma[:-1]),
            "'attn_sub_gamma' must be int8 gamma codes")


def test_parameter_rules(qd):
    _raises(_layer(qd, attn_norm=(1, 2)), "'attn_norm' must be a tuple of 3 ints")
    _raises(_layer(qd, silu=(70000, 3)), "'silu' mult 70000 outside [0, 65535]")
    _raises(_layer(qd, act="tanh"), "gate activation 'tanh'")
    _raises(_layer(qd, q_norm=(1, 2, 3)), "'q_norm' and its gamma codes 'q_norm_gamma'")
    _raises(dataclasses.replace(qd, final_norm=(1, 2, 99)), "'final_norm' shift 99")


def test_saved_decoder_is_checked_on_load(qd, tmp_path):
    decoder_io.save_decoder(qd, tmp_path / "q")
    assert check_decoder(decoder_io.load_saved_decoder(tmp_path / "q")).name == qd.name
    decoder_io.save_decoder(_linear(qd, "v", shift=60), tmp_path / "bad")
    with pytest.raises(SpecError, match="linear 'v': shift 60 outside"):
        decoder_io.load_saved_decoder(tmp_path / "bad")


def test_one_linear_rule_for_both_irs(qd):
    """The graph IR's qlinear check and the decoder's read the same rules."""
    lin = qd.layers[0].up
    assert list(linear_rules(lin.weight, lin.bias, lin.mult, lin.shift, lin.res_mult,
                             w4=lin.w4, w4_scale=lin.w4_scale)) == []
    assert list(linear_rules(lin.weight, lin.bias, lin.mult, 48, 0)) == [
        "shift 48 outside [0, 47]"]
