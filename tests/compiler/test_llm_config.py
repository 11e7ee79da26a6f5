"""compiler.llm_config: a decoder's shape from a transformers config on the meta device, and
the weightless QDecoder the shape-only lowering reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hwflow.compiler.errors import FrontendError, UnsupportedOpError
from hwflow.compiler.llm_config import shape_decoder, shape_from_config
from hwflow.golden import llm as gl

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


def test_llama_2_7b_config():
    cs = shape_from_config(CONFIGS / "llama-2-7b.json")
    s = cs.shape
    assert (s.vocab, s.hidden, s.layers, s.heads, s.kv_heads, s.head_dim, s.intermediate,
            s.max_position) == (32000, 4096, 32, 32, 32, 128, 11008, 4096)
    assert (s.rope_theta, s.rms_eps) == (10000.0, 1e-5)
    assert (cs.family, cs.act, cs.sub_norms, cs.ternary) == ("llama", "silu", False, False)
    # LLaMA-2-7B's published parameter count: 6,738,415,616
    assert cs.parameters == 6_738_415_616


def test_bitnet_0_7b_config_from_a_folder(tmp_path):
    (tmp_path / "config.json").write_text((CONFIGS / "bitnet-b1.58-0.7b.json").read_text())
    cs = shape_from_config(tmp_path)
    s = cs.shape
    assert (s.vocab, s.hidden, s.layers, s.heads, s.kv_heads, s.head_dim, s.intermediate,
            s.max_position) == (32002, 1536, 24, 16, 16, 96, 4096, 2048)
    assert cs.family == "bitnet" and cs.ternary and cs.sub_norms


def test_gemma2_config():
    """Gemma-2-2B (published config): heads of 256, GELU-tanh, post-norms around each block,
    the embedding scaled by sqrt(hidden), scores by query_pre_attn_scalar**-0.5 and capped at
    50, logits capped at 30, every other layer sliding (window 4096); 2.61 B parameters (the
    tied embedding counted once)."""
    cs = shape_from_config(CONFIGS / "gemma-2-2b.json", max_context=8192)
    s = cs.shape
    assert (s.vocab, s.hidden, s.layers, s.heads, s.kv_heads, s.head_dim, s.intermediate) == (
        256000, 2304, 26, 8, 4, 256, 9216)
    assert (cs.family, cs.act, cs.post_norms, cs.sub_norms) == ("gemma2", "gelu_tanh", True,
                                                                 False)
    assert (s.embed_scale, s.attn_scale, s.attn_softcap, s.final_softcap) == (
        48.0, 1 / 16, 50.0, 30.0)
    assert s.windows == (4096, 0) * 13
    assert round((cs.parameters - s.vocab * s.hidden) / 1e9, 2) == 2.61
    qd = shape_decoder(cs, 64)
    ly = qd.layers[0]
    assert ly.post_attn_gamma.shape == ly.post_mlp_gamma.shape == (2304,)
    assert ly.attn_add is not None and ly.mlp_add is not None and ly.o.res_mult == 0
    assert ly.attn_cap == gl.softcap_code(50.0) == 577 and qd.final_cap is not None


def test_qwen3_config_has_head_norms():
    """Qwen3-0.6B (published config): per-head q/k norms, heads of 128 (not hidden / heads),
    tied embeddings; 0.44 B parameters besides the embedding and the LM head (model card)."""
    cs = shape_from_config(CONFIGS / "qwen3-0.6b.json", max_context=2048)
    s = cs.shape
    assert (s.vocab, s.hidden, s.layers, s.heads, s.kv_heads, s.head_dim, s.intermediate) == (
        151936, 1024, 28, 16, 8, 128, 3072)
    assert cs.family == "qwen3" and cs.head_norms and not cs.sub_norms and s.windows == ()
    assert round((cs.parameters - 2 * s.vocab * s.hidden) / 1e9, 2) == 0.44
    qd = shape_decoder(cs, 64)
    assert qd.layers[0].q_norm is not None and qd.layers[0].k_norm_gamma.shape == (128,)


def test_phi3_mini_config_counts_its_fused_linears_as_their_parts(tmp_path):
    cs = shape_from_config(CONFIGS / "phi-3-mini-4k.json", max_context=2047)
    s = cs.shape
    assert (s.vocab, s.hidden, s.layers, s.heads, s.kv_heads, s.head_dim, s.intermediate,
            s.max_position) == (32064, 3072, 32, 32, 32, 96, 8192, 4096)
    assert (s.rope_theta, s.rms_eps, s.rope_type) == (10000.0, 1e-5, "default")
    assert (cs.family, cs.act, cs.sub_norms, cs.ternary) == ("phi3", "silu", False, False)
    # Phi-3-mini's published parameter count: 3,821,079,552 (qkv_proj and gate_up_proj whole)
    assert cs.parameters == 3_821_079_552
    conf = json.loads((CONFIGS / "phi-3-mini-4k.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**conf, "partial_rotary_factor": 0.75}))
    with pytest.raises(UnsupportedOpError) as e:
        shape_from_config(tmp_path, max_context=1024)
    assert "partial_rotary_factor 0.75 rotates 72 of the 96" in str(e.value)
    assert "\n" not in str(e.value)


def test_gqa_and_head_dim_come_from_the_meta_parameters(tmp_path):
    from hwflow.llm_examples import tiny_llama_config

    tiny_llama_config("qwen2").save_pretrained(tmp_path)
    cs = shape_from_config(tmp_path / "config.json", max_context=64)
    s = cs.shape
    assert (s.heads, s.kv_heads, s.head_dim, s.hidden, s.intermediate) == (6, 2, 20, 120, 200)
    assert cs.family == "qwen2"


def _write(tmp_path, **over) -> Path:
    conf = json.loads((CONFIGS / "llama-2-7b.json").read_text())
    conf.update(over)
    f = tmp_path / "config.json"
    f.write_text(json.dumps(conf))
    return f


@pytest.mark.parametrize("over, words", [
    ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"rope_scaling": {"rope_type": "ntk-magic", "factor": 2.0}}, "rope_type 'ntk-magic' is not"),
])
def test_unsupported_architectures_are_refused_in_one_line(tmp_path, over, words):
    with pytest.raises(UnsupportedOpError) as e:
        shape_from_config(_write(tmp_path, **over))
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("over, windows", [
    ({"model_type": "mistral", "sliding_window": 512}, (512,) * 32),
    ({"model_type": "mistral", "sliding_window": None}, ()),
    # Qwen2: layers from max_window_layers on slide, and only with use_sliding_window
    ({"model_type": "qwen2", "sliding_window": 1024, "use_sliding_window": True,
      "max_window_layers": 28}, (0,) * 28 + (1024,) * 4),
    ({"model_type": "qwen2", "sliding_window": 1024, "use_sliding_window": False}, ()),
])
def test_sliding_windows_per_layer(tmp_path, over, windows):
    assert shape_from_config(_write(tmp_path, **over), max_context=2048).shape.windows == windows


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "dynamic", "factor": 2.0},
    {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 1024},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
    {"rope_type": "longrope", "short_factor": [1.0] * 64, "long_factor": [2.0] * 64,
     "original_max_position_embeddings": 1024},
])
def test_rope_variants_take_the_models_own_frequencies(tmp_path, rope):
    """Every rope type transformers defines that rescales the frequencies (or cos/sin): the
    table comes from the model's own rotary module, at the compiled max context."""
    import torch
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    f = _write(tmp_path, rope_scaling=rope, max_position_embeddings=4096)
    cs = shape_from_config(f, max_context=2048)
    s = cs.shape
    assert s.rope_type == rope["rope_type"] and len(s.inv_freq()) == 64
    config = AutoConfig.from_pretrained(str(tmp_path), local_files_only=True)
    emb = LlamaRotaryEmbedding(config)
    # what the model computes over the compiled context (LongRoPE switches to its long
    # factors past original_max_position_embeddings, as its forward does)
    cos, sin = emb(torch.zeros(1, 2048, 128), torch.arange(2048)[None])
    cos, sin = cos[:, :256], sin[:, :256]
    assert s.rope_scaling == pytest.approx(emb.attention_scaling, rel=1e-12)
    if s.rope_inv_freq:     # the module's own float32 frequencies
        np.testing.assert_array_equal(s.inv_freq(), emb.inv_freq.double().numpy())
    table = gl.rope_table(256, s.inv_freq(), s.rope_scaling)
    one = float(1 << gl.ROPE_FRAC)
    # within one unit of Q1.14 (rounding plus transformers' float32 angles; at thousands of
    # positions its float32 angle error alone grows past 2 units: the float64 table is the
    # exact value of the same frequencies)
    np.testing.assert_allclose(table[:, :64] / one, cos[0, :, :64].numpy(), atol=1 / one)
    np.testing.assert_allclose(table[:, 64:] / one, sin[0, :, :64].numpy(), atol=1 / one)
    if rope["rope_type"] in ("yarn", "longrope"):
        assert s.rope_scaling > 1.0                 # the attention factor scales cos/sin
    else:
        assert s.rope_scaling == 1.0
    # dynamic rescales only past max_position_embeddings, which no compiled context reaches
    default = rope["rope_type"] == "dynamic"
    assert (s.rope_inv_freq == ()) == default
    assert np.allclose(s.inv_freq(), gl.default_inv_freq(128, s.rope_theta)) == default


def test_missing_and_broken_configs(tmp_path):
    with pytest.raises(FrontendError, match="no such config"):
        shape_from_config(tmp_path / "nothing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FrontendError, match="not valid JSON"):
        shape_from_config(bad)
    with pytest.raises(FrontendError, match="max_position_embeddings"):
        shape_from_config(CONFIGS / "llama-2-7b.json", max_context=8192)


@pytest.mark.parametrize("weights", ["int8", "ternary"])
def test_shape_decoder_allocates_no_weights(weights):
    cs = shape_from_config(CONFIGS / "llama-2-7b.json")
    qd = shape_decoder(cs, 2048, weights)
    arrays = [qd.embed, qd.lm_head.weight] + [getattr(ly, nm).weight for ly in qd.layers
                                              for nm in ("q", "k", "v", "o", "gate", "up",
                                                         "down")]
    assert all(a.strides == (0, 0) for a in arrays)      # one element each, any shape
    assert qd.layers[0].down.weight.shape == (4096, 11008)
    assert all(ly.q.ternary == (weights == "ternary") for ly in qd.layers)
    assert qd.lm_head.ternary is False and qd.rope.shape == (2048, 128)
    # ternary layers carry the unfused residual adds quantize_decoder gives them
    assert all((ly.attn_add is not None) == (weights == "ternary") for ly in qd.layers)


def test_bitnet_shape_decoder_has_the_bitnet_structure():
    cs = shape_from_config(CONFIGS / "bitnet-b1.58-0.7b.json")
    ly = shape_decoder(cs, 512).layers[0]
    assert ly.attn_sub_norm is not None and ly.mlp_sub_norm is not None
    assert all(getattr(ly, g) is not None and np.all(getattr(ly, g) == 0)
               for g in ("attn_gamma", "attn_sub_gamma", "mlp_gamma", "mlp_sub_gamma"))
    ly8 = shape_decoder(cs, 512, "int8").layers[0]
    assert ly8.attn_gamma is None and not ly8.q.ternary and ly8.attn_sub_norm is not None
