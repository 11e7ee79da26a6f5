"""The Mamba frontend (``compiler.ssm_frontend``): a tiny random ``MambaForCausalLM`` saved with
``save_pretrained`` (sizes not powers of two) is recognised from its ATen graph, every weight
equal to the checkpoint's and its logits reproduced; what the patterns do not cover is refused
with the op named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from hwflow.compiler.errors import FrontendError, UnsupportedOpError
from hwflow.compiler.ssm_frontend import load_mamba
from tests._cli import assert_one_line_error, run_cli

SIZES = dict(vocab_size=97, hidden_size=40, state_size=6, num_hidden_layers=2, expand=2,
             conv_kernel=4, time_step_rank=5)


def _save(folder, **overrides):
    torch.manual_seed(0)
    cfg = transformers.MambaConfig(**(SIZES | overrides))
    model = transformers.MambaForCausalLM(cfg).eval()
    with torch.no_grad():       # A_log and D away from their init, so that a mix-up shows
        for ly in model.backbone.layers:
            ly.mixer.A_log.add_(torch.rand_like(ly.mixer.A_log))
            ly.mixer.D.mul_(torch.rand_like(ly.mixer.D) + 0.5)
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("variant", [{}, {"use_bias": True, "use_conv_bias": False}])
def test_tiny_mamba_is_recognised(tmp_path, variant):
    model = _save(tmp_path / "m", **variant)
    fm = load_mamba(tmp_path / "m")             # checks the logits itself
    s = fm.shape
    assert (s.vocab, s.hidden, s.layers, s.d_inner, s.d_state, s.d_conv, s.dt_rank) == (
        97, 40, 2, 80, 6, 4, 5)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    for i, ly in enumerate(fm.layers):
        p = f"backbone.layers.{i}.mixer."
        np.testing.assert_array_equal(ly.in_proj, sd[p + "in_proj.weight"])
        np.testing.assert_array_equal(ly.x_proj, sd[p + "x_proj.weight"])
        np.testing.assert_array_equal(ly.dt_proj, sd[p + "dt_proj.weight"])
        np.testing.assert_array_equal(ly.dt_bias, sd[p + "dt_proj.bias"])
        np.testing.assert_array_equal(ly.conv, sd[p + "conv1d.weight"][:, 0])
        np.testing.assert_array_equal(ly.D, sd[p + "D"])
        np.testing.assert_array_equal(ly.out_proj, sd[p + "out_proj.weight"])
        np.testing.assert_allclose(ly.A, -np.exp(sd[p + "A_log"]), rtol=1e-6)
        np.testing.assert_array_equal(ly.norm, sd[f"backbone.layers.{i}.norm.weight"])
        if variant:
            assert ly.conv_bias is None
            np.testing.assert_array_equal(ly.in_bias, sd[p + "in_proj.bias"])
            np.testing.assert_array_equal(ly.out_bias, sd[p + "out_proj.bias"])
        else:
            np.testing.assert_array_equal(ly.conv_bias, sd[p + "conv1d.bias"])
            assert ly.in_bias is None and ly.out_bias is None
    np.testing.assert_array_equal(fm.final_norm, sd["backbone.norm_f.weight"])
    np.testing.assert_array_equal(fm.lm_head, sd["lm_head.weight"])


def test_an_unrecognised_op_is_named(tmp_path):
    _save(tmp_path / "g", hidden_act="gelu")
    with pytest.raises(UnsupportedOpError, match=r"aten\.gelu.*expected block 1 silu\(conv\)"):
        load_mamba(tmp_path / "g")


def test_not_a_mamba_folder(tmp_path):
    with pytest.raises(FrontendError, match="not a Hugging Face model folder"):
        load_mamba(tmp_path)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=1, num_attention_heads=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    with pytest.raises(FrontendError, match="model_type 'llama' is not mamba"):
        load_mamba(tmp_path / "llama")


def test_compile_refuses_a_mamba2_folder_in_one_line(tmp_path, capfd):
    """``hwflow compile`` of a Mamba-2 folder (not lowered yet): one line naming the family and
    what is compiled, nothing written (the LLaMA-family frontend once crashed on the Mamba
    configs' read-only ``layer_types``)."""
    from .test_ssm_interpret import _tiny_mamba2

    _tiny_mamba2(0).save_pretrained(tmp_path / "m")
    code, _out, err = run_cli(capfd, "compile", str(tmp_path / "m"), "--board", "u280",
                              "-o", str(tmp_path / "out"))
    assert_one_line_error(code, err, "model_type 'mamba2' is a state-space model")
    assert "Mamba (model_type 'mamba')" in err
    assert not (tmp_path / "out").exists()
