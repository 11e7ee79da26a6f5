"""LLaMA frontend: pattern recognition on the ATen graph, gamma folding, errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from hwflow.compiler.errors import FrontendError, UnsupportedOpError
from hwflow.compiler.llm_frontend import is_decoder_source, load_decoder
from hwflow.compiler.llm_interpret import float_forward
from hwflow.golden import llm as gl

from .llm_models import tiny_llama

IDS = [5, 17, 300, 2, 99, 45, 45, 1, 0, 319, 12, 13]


def _hf_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()


def _hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=False).logits
    return out[0].double().numpy()


def _export_archive(model, path):
    ids = torch.tensor([IDS[:6]])
    ep = torch.export.export(model, (ids,), kwargs={"use_cache": False})
    torch.export.save(ep, str(path))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="module")
def fd(folder):
    return load_decoder(folder, max_context=64)


def test_recognises_tiny_llama(folder, fd):
    s = fd.shape
    assert (s.vocab, s.hidden, s.layers, s.heads, s.kv_heads, s.head_dim, s.intermediate) == (
        320, 120, 2, 6, 2, 20, 200)
    assert s.max_position == 2048 and fd.max_context == 64
    assert s.rope_theta == 10000.0 and s.rope_scaling == 1.0 and s.rms_eps == pytest.approx(1e-5)
    assert fd.family == "llama" and fd.source.startswith("hf:")
    assert is_decoder_source(folder)
    ly = fd.layers[1]
    assert ly.q.shape == (120, 120) and ly.k.shape == (40, 120) and ly.v.shape == (40, 120)
    assert ly.o.shape == (120, 120) and ly.gate.shape == (200, 120) and ly.down.shape == (120, 200)
    assert ly.q_bias is None and fd.lm_head.shape == (320, 120)


def test_gammas_are_folded(folder, fd):
    from safetensors.numpy import load_file

    w = load_file(str(folder / "model.safetensors"))
    g1 = w["model.layers.1.input_layernorm.weight"]
    g2 = w["model.layers.1.post_attention_layernorm.weight"]
    assert np.ptp(g1) > 0.5  # the builder draws gammas, so folding is visible
    np.testing.assert_array_equal(fd.layers[1].k, w["model.layers.1.self_attn.k_proj.weight"] * g1)
    np.testing.assert_array_equal(fd.layers[1].up, w["model.layers.1.mlp.up_proj.weight"] * g2)
    np.testing.assert_array_equal(fd.layers[1].o, w["model.layers.1.self_attn.o_proj.weight"])
    np.testing.assert_array_equal(fd.lm_head, w["lm_head.weight"] * w["model.norm.weight"])


def test_float_forward_matches_hf(folder, fd):
    ref = _hf_logits(_hf_model(folder), IDS)
    assert np.max(np.abs(float_forward(fd, IDS) - ref)) <= 1e-4


def test_default_max_context_and_limit(folder):
    assert load_decoder(folder).max_context == 2048  # min(max_position_embeddings, 2048)
    with pytest.raises(FrontendError, match="max_context 3000 is larger than .* 2048"):
        load_decoder(folder, max_context=3000)


def test_export_archive_same_decoder(folder, fd, tmp_path):
    model = _hf_model(folder)
    path = _export_archive(model, tmp_path / "tiny.pt2")
    assert is_decoder_source(path)
    fa = load_decoder(path, max_context=64)
    assert fa.shape.to_dict() | {"max_position": 0} == fd.shape.to_dict() | {"max_position": 0}
    assert fa.source.startswith("export:")
    for a, b in zip(fa.layers, fd.layers, strict=True):
        np.testing.assert_array_equal(a.q, b.q)
        np.testing.assert_array_equal(a.down, b.down)
    assert np.max(np.abs(float_forward(fa, IDS) - _hf_logits(model, IDS))) <= 1e-4


def test_mlp_archive_is_not_a_decoder(tmp_path):
    from .models import make

    ep = torch.export.export(make(0), (torch.randn(3, 37),))
    torch.export.save(ep, str(tmp_path / "mlp.pt2"))
    assert not is_decoder_source(tmp_path / "mlp.pt2")
    assert not is_decoder_source(tmp_path)


def test_attention_bias_accepted(tmp_path):
    f = tiny_llama(tmp_path / "biased", attention_bias=True)
    fb = load_decoder(f, max_context=32)
    assert fb.layers[0].q_bias.shape == (120,) and fb.layers[0].o_bias.shape == (120,)
    assert np.max(np.abs(float_forward(fb, IDS) - _hf_logits(_hf_model(f), IDS))) <= 1e-4


def test_phi3_fused_projections_are_split(tmp_path):
    """Phi-3's qkv_proj (sliced into q, k, v) and gate_up_proj (chunked into gate, up) come
    out as the separate linears of the LLaMA block: rows of the fused weights, gammas folded."""
    from safetensors.numpy import load_file

    f = tiny_llama(tmp_path / "phi3", family="phi3")
    fp = load_decoder(f, max_context=32)
    s = fp.shape
    assert (s.heads, s.kv_heads, s.head_dim, s.intermediate, s.layers) == (6, 2, 20, 200, 2)
    assert fp.family == "phi3" and s.windows == ()
    w = load_file(str(f / "model.safetensors"))
    for i, ly in enumerate(fp.layers):
        p = f"model.layers.{i}."
        qkv, gate_up = w[p + "self_attn.qkv_proj.weight"], w[p + "mlp.gate_up_proj.weight"]
        assert qkv.shape == (200, 120) and gate_up.shape == (400, 120)
        g1, g2 = w[p + "input_layernorm.weight"], w[p + "post_attention_layernorm.weight"]
        np.testing.assert_array_equal(ly.q, qkv[:120] * g1)
        np.testing.assert_array_equal(ly.k, qkv[120:160] * g1)
        np.testing.assert_array_equal(ly.v, qkv[160:] * g1)
        np.testing.assert_array_equal(ly.gate, gate_up[:200] * g2)   # chunk(2): gate first
        np.testing.assert_array_equal(ly.up, gate_up[200:] * g2)
        np.testing.assert_array_equal(ly.o, w[p + "self_attn.o_proj.weight"])
        assert ly.q_bias is None and ly.act == "silu"
    assert np.max(np.abs(float_forward(fp, IDS) - _hf_logits(_hf_model(f), IDS))) <= 1e-4


def test_qwen3_head_norms_are_recognised(tmp_path):
    """Qwen3 normalizes every q and k head (RMSNorm over head_dim with its own gamma) between
    the head view and RoPE: recognised as the layer's q_norm / k_norm gammas (not folded:
    RoPE mixes a head's elements), the float model reproducing HF."""
    from safetensors.numpy import load_file

    f = tiny_llama(tmp_path / "qwen3", family="qwen3")
    fq = load_decoder(f, max_context=32)
    assert fq.family == "qwen3" and fq.shape.head_dim == 20
    w = load_file(str(f / "model.safetensors"))
    for i, ly in enumerate(fq.layers):
        p = f"model.layers.{i}.self_attn."
        np.testing.assert_array_equal(ly.q_norm, w[p + "q_norm.weight"])
        np.testing.assert_array_equal(ly.k_norm, w[p + "k_norm.weight"])
    assert np.max(np.abs(float_forward(fq, IDS) - _hf_logits(_hf_model(f), IDS))) <= 1e-4


def test_gemma2_is_recognised(tmp_path):
    """Gemma 2: (1 + w) RMSNorm gammas, the embedding scaled by sqrt(hidden), eager attention
    scaled by query_pre_attn_scalar**-0.5 with its scores soft-capped, post-norms of o's and
    down's outputs before the residual adds, a GELU-tanh gate, the logits soft-capped; every
    other layer sliding. The float model reproduces HF, and leaving out a cap or the scale is
    seen by the same check."""
    from safetensors.numpy import load_file

    f = tiny_llama(tmp_path / "gemma2", family="gemma2")
    fg = load_decoder(f, max_context=32)
    s = fg.shape
    assert fg.family == "gemma2" and s.head_dim == 20 and s.windows == (6, 0)
    assert (s.attn_scale, s.attn_softcap, s.final_softcap) == (0.5, 2.0, 3.0)
    assert s.embed_scale == pytest.approx(120 ** 0.5, rel=1e-7)
    w = load_file(str(f / "model.safetensors"))
    for i, ly in enumerate(fg.layers):
        p = f"model.layers.{i}."
        assert ly.act == "gelu_tanh"
        np.testing.assert_array_equal(ly.post_attn_gamma,
                                      1 + w[p + "post_attention_layernorm.weight"])
        np.testing.assert_array_equal(ly.post_mlp_gamma,
                                      1 + w[p + "post_feedforward_layernorm.weight"])
    ref = _hf_logits(_hf_model(f), IDS)
    err = np.max(np.abs(float_forward(fg, IDS) - ref))
    assert err <= 1e-4, err
    for change in (dict(attn_softcap=0.0), dict(final_softcap=0.0), dict(attn_scale=0.0),
                   dict(embed_scale=1.0)):
        off = dataclasses.replace(fg, shape=dataclasses.replace(s, **change))
        assert np.max(np.abs(float_forward(off, IDS) - ref)) > 1e-2, change


def test_phi3_partial_rotary_is_refused(tmp_path):
    """Phi-3's RoPE code passes the head dims past ``partial_rotary_factor * head_dim`` through
    unrotated: the ROPE unit rotates whole heads, so a factor below 1 is refused by name."""
    f = tiny_llama(tmp_path / "phi3", family="phi3", partial_rotary_factor=0.5)
    with pytest.raises(UnsupportedOpError) as e:
        load_decoder(f, max_context=32)
    msg = _one_line(e)
    assert msg.startswith("unsupported op aten.cat.default") and "modeling_phi3.py:" in msg
    assert "only 10 of the 20 dims" in msg and "partial_rotary_factor 0.5" in msg


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_gelu_config_is_refused(tmp_path):
    f = tiny_llama(tmp_path / "gelu", hidden_act="gelu")
    with pytest.raises(UnsupportedOpError) as e:
        load_decoder(f)
    assert "hidden_act 'gelu'" in _one_line(e)


def test_gelu_graph_names_the_op(tmp_path):
    f = tiny_llama(tmp_path / "gelu", hidden_act="gelu")
    path = _export_archive(_hf_model(f), tmp_path / "gelu.pt2")
    with pytest.raises(UnsupportedOpError) as e:
        load_decoder(path)
    msg = _one_line(e)
    assert msg.startswith("unsupported op aten.gelu.default (node gelu")
    assert "modeling_llama.py:" in msg


def test_rope_variant_takes_the_traced_frequencies(tmp_path):
    """Llama 3's rope (rescaled low frequencies): the table is built from the inv_freq
    constant the model's rotary module computes, not from theta."""
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}
    f = tiny_llama(tmp_path / "llama3", rope_parameters=rope)
    fd = load_decoder(f)
    want = _hf_model(f).model.rotary_emb.inv_freq.double().numpy()
    assert fd.shape.rope_type == "llama3" and fd.shape.rope_theta == 10000.0
    np.testing.assert_array_equal(fd.shape.inv_freq(), want)
    assert not np.allclose(want, gl.default_inv_freq(fd.shape.head_dim, 10000.0))


def test_pickled_weights_need_trust(tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "pytorch_model.bin").write_bytes(b"\x80\x02not really")
    assert is_decoder_source(d)
    with pytest.raises(FrontendError, match="trust"):
        load_decoder(d)


def test_unknown_model_type(tmp_path):
    d = tmp_path / "odd"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "frobnicator"}))
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(FrontendError) as e:
        load_decoder(d)
    assert "model_type 'frobnicator'" in _one_line(e)


# ---------------------------------------------------------- broken and hostile model folders

def _edit_weights(folder, edit):
    from safetensors.torch import load_file, save_file

    f = folder / "model.safetensors"
    sd = load_file(str(f))
    edit(sd)
    save_file(sd, str(f), metadata={"format": "pt"})
    return folder


def _copy(folder, dst):
    import shutil

    shutil.copytree(folder, dst)
    return dst


@pytest.mark.parametrize("edit,needles", [
    (lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"),
     ["tensor 'model.layers.1.mlp.up_proj.weight' is missing", "random values"]),
    (lambda sd: sd.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(39, 120)}),
     ["tensor 'model.layers.0.self_attn.k_proj.weight' has shape [39, 120]", "needs [40, 120]"]),
    (lambda sd: sd.update({"model.layers.7.extra.weight": torch.zeros(3)}),
     ["tensor 'model.layers.7.extra.weight'", "not part of the model"]),
])
def test_checkpoint_that_does_not_fill_the_model_is_refused(folder, tmp_path, edit, needles):
    bad = _edit_weights(_copy(folder, tmp_path / "bad"), edit)
    with pytest.raises(FrontendError) as e:
        load_decoder(bad)
    msg = _one_line(e)
    for n in needles:
        assert n in msg, msg


def test_nan_weights_are_named_not_blamed_on_a_variant(folder, tmp_path):
    def edit(sd):
        sd["model.layers.0.mlp.down_proj.weight"][3, 4] = float("nan")
    bad = _edit_weights(_copy(folder, tmp_path / "nan"), edit)
    with pytest.raises(FrontendError) as e:
        load_decoder(bad)
    msg = _one_line(e)
    assert "model.layers.0.mlp.down_proj.weight" in msg and "NaN" in msg
    assert "variant" not in msg


@pytest.mark.parametrize("config,needles", [
    ([1, 2], ["holds a JSON list", "not a transformers config"]),
    ("not json", ["not valid JSON"]),
])
def test_config_that_is_not_an_object(tmp_path, config, needles):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(FrontendError) as e:
        load_decoder(d)
    for n in needles:
        assert n in _one_line(e)


def test_invalid_architecture_names_the_reason_not_the_model_type(folder, tmp_path):
    bad = _copy(folder, tmp_path / "heads")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["num_attention_heads"] = 7            # hidden 120 is not a multiple of 7
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FrontendError) as e:
        load_decoder(bad)
    msg = _one_line(e)
    assert "not a valid llama config" in msg
    assert "hidden size (120) is not a multiple of the number of attention heads (7)" in msg
    assert "not known" not in msg


def test_enormous_declared_model_is_refused_before_allocating(folder, tmp_path, monkeypatch):
    import hwflow.compiler.llm_frontend as lf

    monkeypatch.setattr(lf, "machine_memory_bytes", lambda: 10**6)   # the tiny model is ~2 MB
    with pytest.raises(FrontendError) as e:
        load_decoder(folder)
    msg = _one_line(e)
    assert "declares" in msg and "--shape-only" in msg


@pytest.mark.parametrize("files,needles", [
    ((), ["no config.json", "save_pretrained"]),
    (("config.json",), ["no *.safetensors weights"]),
    (("model.safetensors",), ["no config.json"]),
])
def test_incomplete_folder_names_what_is_missing(capfd, folder, tmp_path, files, needles):
    from tests._cli import assert_one_line_error, run_cli

    d = tmp_path / "partial"
    d.mkdir()
    for f in files:
        (d / f).write_bytes((folder / f).read_bytes())
    code, out, err = run_cli(capfd, "compile", d, "--board", "u280", "-o", tmp_path / "out")
    line = assert_one_line_error(code, err, *needles)
    assert "not found" not in line


def test_missing_tensor_through_the_cli_is_one_line_without_the_load_report(capfd, folder,
                                                                            tmp_path):
    """transformers prints a load-report table for a missing tensor; the CLI shows one line."""
    from tests._cli import assert_no_build_left, assert_one_line_error, run_cli

    bad = _edit_weights(_copy(folder, tmp_path / "bad"),
                        lambda sd: sd.pop("model.norm.weight"))
    code, out, err = run_cli(capfd, "compile", bad, "--board", "u280", "-o", tmp_path / "out")
    assert_one_line_error(code, err, "tensor 'model.norm.weight' is missing")
    assert out == ""
    assert_no_build_left(tmp_path)


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_rope_theta_recovered_exactly_at_head_dim_128(tmp_path, theta):
    """theta from every inv_freq entry: from inv_freq[1] alone float32 rounding grows by
    head_dim/2 (4e-6 at 128) and a real 7B-class model was refused as a RoPE variant."""
    f = tiny_llama(tmp_path / "hd128", num_attention_heads=2, num_key_value_heads=1,
                   head_dim=128, rope_parameters={"rope_type": "default", "rope_theta": theta})
    fd = load_decoder(f, max_context=32)
    assert fd.shape.head_dim == 128 and fd.shape.rope_theta == theta
