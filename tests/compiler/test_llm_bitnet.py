"""BitNet b1.58 decoders: recognition, float reference vs HF, ternary quantization, golden model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwflow.compiler.errors import CompileError
from hwflow.compiler.llm_frontend import load_decoder
from hwflow.compiler.llm_interpret import KVCache, float_forward, golden_step
from hwflow.compiler.llm_quant import quantize_decoder, ternarize_decoder
from hwflow.compiler.lm import quant_report
from hwflow.golden import ternary as gt
from hwflow.llm_examples import LLM_EXAMPLES, write_example, write_tiny_bitnet

from .llm_models import tiny_llama

IDS = [3, 141, 59, 26, 5, 35, 89, 79, 32, 38, 46, 264, 33, 8, 32, 79, 50, 28, 84, 19]
LINEARS = ("q", "k", "v", "o", "gate", "up", "down")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_bitnet(tmp_path_factory.mktemp("tiny_bitnet"))


@pytest.fixture(scope="module")
def fd(folder):
    return load_decoder(folder, max_context=48)


@pytest.fixture(scope="module")
def qd(fd):
    return quantize_decoder(fd, 48)


def test_recognises_tiny_bitnet(fd):
    s = fd.shape
    assert fd.family == "bitnet"
    assert (s.vocab, s.hidden, s.layers, s.heads, s.kv_heads, s.head_dim, s.intermediate) == \
        (320, 120, 2, 6, 2, 20, 200)
    assert s.rope_theta == 500000.0
    for ly in fd.layers:
        assert ly.act == "relu2" and ly.attn_sub_norm and ly.mlp_sub_norm
        assert ly.attn_gamma.shape == (120,) and ly.mlp_gamma.shape == (120,)
        assert ly.attn_sub_gamma.shape == (120,) and ly.mlp_sub_gamma.shape == (200,)


def test_gammas_unfolded_and_float_forward_matches_hf(folder, fd):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    sd = m.state_dict()
    ly = fd.layers[0]
    np.testing.assert_array_equal(ly.q, sd["model.layers.0.self_attn.q_proj.weight"].numpy())
    np.testing.assert_array_equal(ly.attn_sub_gamma,
                                  sd["model.layers.0.self_attn.attn_sub_norm.weight"].numpy())
    np.testing.assert_array_equal(ly.mlp_sub_gamma,
                                  sd["model.layers.0.mlp.ffn_sub_norm.weight"].numpy())
    with torch.no_grad():
        ref = m(torch.tensor([IDS]), use_cache=False).logits[0].double().numpy()
    err = np.abs(float_forward(fd, IDS) - ref).max()
    print(f"tiny BitNet float_forward vs HF: max |diff| {err:.2e}")
    assert err <= 1e-4


def test_folded_bitnet_same_float_model(folder, fd):
    folded = load_decoder(folder, max_context=48, fold_gammas=True)
    assert folded.layers[0].attn_gamma is None and folded.layers[0].attn_sub_norm
    np.testing.assert_allclose(float_forward(folded, IDS[:8]), float_forward(fd, IDS[:8]),
                               atol=1e-5)


def test_ternary_fields_in_range(fd, qd):
    assert qd.lm_head.ternary is False and qd.lm_head.weight.dtype == np.int8
    for i, ly in enumerate(qd.layers):
        assert ly.act == "relu2"
        for name in LINEARS:
            ql = getattr(ly, name)
            assert ql.ternary and ql.weight.dtype == np.int8
            assert set(np.unique(ql.weight)) <= {-1, 0, 1}
            t, _ = gt.ternarize_absmean(getattr(fd.layers[i], name))
            np.testing.assert_array_equal(ql.weight, t)
            assert 0 <= ql.mult.min() and ql.mult.max() <= 65535 and 0 <= ql.shift <= 47
            assert ql.bias.dtype == np.int32 and 0 <= ql.res_mult <= 65535
            assert len(set(ql.mult.tolist())) == 1      # one gamma_w per tensor
            assert qd.weight_formats[f"l{i}.{name}"]["ternary_from"] == "absmean"
        # ternary o/down: the residual is a separate add (one shared shift cannot hold both)
        assert ly.o.res_mult == ly.down.res_mult == ly.q.res_mult == 0
        for add in (ly.attn_add, ly.mlp_add):
            assert len(add) == 3 and all(0 <= v <= 65535 for v in add[:2]) and add[2] <= 47
        for g, n in ((ly.attn_gamma, 120), (ly.attn_sub_gamma, 120), (ly.mlp_gamma, 120),
                     (ly.mlp_sub_gamma, 200)):
            assert g.dtype == np.int8 and g.shape == (n,) and np.abs(g).max() == 127
        for eps, mult, shift in (ly.attn_sub_norm, ly.mlp_sub_norm):
            assert 0 <= eps < 2**32 and 0 < mult <= 65535 and 0 <= shift <= 47
        # gamma codes: round(gamma / s_g), s_g = max|gamma| / 127
        s_g = qd.scales[f"l{i}.attn_gamma"]
        np.testing.assert_array_equal(ly.attn_gamma, np.rint(fd.layers[i].attn_gamma / s_g))
    assert qd.weight_formats["lm_head"]["weights"] == "int8"


def test_chunked_prefill_equals_one_shot(qd):
    one = KVCache.empty(qd)
    full = golden_step(qd, IDS, 0, one)
    assert full.shape == (20, 320) and full.dtype == np.int8
    two = KVCache.empty(qd)
    a = golden_step(qd, IDS[:17], 0, two)
    b = golden_step(qd, IDS[17:], 17, two)
    np.testing.assert_array_equal(np.concatenate([a, b]), full)
    for i in range(2):
        np.testing.assert_array_equal(one.k[i], two.k[i])
        np.testing.assert_array_equal(one.v[i], two.v[i])


def test_decode_equals_prefill_rows(qd):
    full = golden_step(qd, IDS, 0, KVCache.empty(qd))
    cache = KVCache.empty(qd)
    golden_step(qd, IDS[:15], 0, cache)
    for p in range(15, 20):
        np.testing.assert_array_equal(golden_step(qd, [IDS[p]], p, cache)[0], full[p])


def test_already_ternary_weights_detected_exactly(tmp_path):
    f = write_tiny_bitnet(tmp_path / "ternary", ternary_weights=True)
    src = write_tiny_bitnet(tmp_path / "float")
    fd_t, fd_f = load_decoder(f, max_context=48), load_decoder(src, max_context=48)
    qd = quantize_decoder(fd_t, 48)
    ternarized, _ = ternarize_decoder(fd_t)
    for i, ly in enumerate(fd_t.layers):
        for name in LINEARS:
            t, s = gt.ternarize_absmean(getattr(fd_f.layers[i], name))
            rec = qd.weight_formats[f"l{i}.{name}"]
            assert rec["ternary_from"] == "detected"
            assert rec["scale"] == float(np.float32(s))     # the model's own scale, exactly
            np.testing.assert_array_equal(getattr(qd.layers[i], name).weight, t)
            np.testing.assert_array_equal(getattr(ternarized.layers[i], name),
                                          getattr(ly, name))


def test_quant_report_figures(fd, qd):
    """Reported, not hidden: a random float BitNet is not ternary-trained, so absmean alone
    changes it a lot; against the ternarized float model the integer error is what's left."""
    r = quant_report(fd, qd)
    fdt, _ = ternarize_decoder(fd)
    rt = quant_report(fdt, qd)
    print(f"tiny BitNet ternary golden vs float: {r}")
    print(f"tiny BitNet ternary golden vs ternarized float: {rt}")
    assert rt["cosine"] > 0.98      # measured 0.992 (the integer error alone)
    qi = quantize_decoder(fd, 48, weights="int8")
    ri = quant_report(fd, qi)
    print(f"tiny BitNet int8 golden vs float: {ri}")
    assert ri["cosine"] > 0.95 and all(not ql.ternary for ql in (qi.layers[0].q, qi.lm_head))
    assert qi.layers[0].attn_gamma is None and qi.layers[0].act == "relu2"


def test_int4_lm_head_beside_ternary_blocks(fd, qd):
    """``lm_head="int4"``: the blocks exactly as without it, the LM head W4A8 (codes and group
    scales of 32 along K); against the ternarized float model the error stays the integer
    error's."""
    q4 = quantize_decoder(fd, 48, lm_head="int4")
    assert q4.weight_formats["lm_head"] == {"weights": "int4", "why": "--lm-head int4"}
    assert qd.weight_formats["lm_head"]["weights"] == "int8"
    h = q4.lm_head
    assert h.w4.shape == (320, 120) and h.w4_scale.shape == (320, 4) and not h.ternary
    assert -8 <= h.w4.min() and h.w4.max() <= 7
    for a, b in zip(q4.layers, qd.layers, strict=True):
        for name in LINEARS:
            np.testing.assert_array_equal(getattr(a, name).weight, getattr(b, name).weight)
    fdt, _ = ternarize_decoder(fd)
    r8, r4 = quant_report(fdt, qd), quant_report(fdt, q4)
    print(f"tiny BitNet vs ternarized float: int8 head {r8}, int4 head {r4}")
    assert r4["cosine"] > 0.98      # measured 0.987 (int8 head: 0.992)
    with pytest.raises(CompileError, match="LM head weights 'int2': use int8, int4"):
        quantize_decoder(fd, 48, lm_head="int2")


def test_llama_ternary_uses_gamma_codes(tmp_path):
    f = tiny_llama(tmp_path / "llama")
    fd = load_decoder(f, max_context=32, fold_gammas=False)
    folded = load_decoder(f, max_context=32)
    np.testing.assert_allclose(float_forward(fd, IDS[:8]), float_forward(folded, IDS[:8]),
                               atol=1e-5)
    qd = quantize_decoder(fd, 32, weights="ternary")
    ly = qd.layers[0]
    assert ly.act == "silu" and ly.attn_sub_norm is None and ly.mlp_sub_norm is None
    assert ly.attn_gamma.dtype == np.int8 and ly.mlp_gamma.dtype == np.int8
    assert ly.attn_sub_gamma is None and ly.mlp_sub_gamma is None and ly.q.ternary
    full = golden_step(qd, IDS[:12], 0, KVCache.empty(qd))
    cache = KVCache.empty(qd)
    golden_step(qd, IDS[:11], 0, cache)
    np.testing.assert_array_equal(golden_step(qd, [IDS[11]], 11, cache)[0], full[11])
    with pytest.raises(CompileError, match="weights 'int2'"):
        quantize_decoder(fd, 32, weights="int2")


def test_examples_dispatcher(tmp_path):
    assert "tiny-bitnet" in LLM_EXAMPLES
    assert (write_example("tiny-bitnet", tmp_path / "b") / "config.json").is_file()
    with pytest.raises(ValueError, match="unknown example"):
        write_example("nope", tmp_path / "c")
