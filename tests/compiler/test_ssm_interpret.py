"""The float Mamba reference (compiler/ssm_interpret.py) against ``transformers``'
``MambaForCausalLM`` and ``Mamba2ForCausalLM``, and recurrent decode against the
whole-sequence run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwflow.compiler.ssm import FloatMamba, FloatMamba2Layer, FloatMambaLayer, SsmShape
from hwflow.compiler.ssm_interpret import MambaState, mamba_logits, mamba_step

transformers = pytest.importorskip("transformers")

IDS = [3, 96, 41, 0, 17, 59, 26, 5, 88]

# Sizes that are not powers of two (vocab 97, hidden 40, d_inner 80, d_state 6, dt_rank 5),
# so a transposed or mis-split weight cannot line up by accident.
SIZES = dict(vocab_size=97, hidden_size=40, state_size=6, num_hidden_layers=2, expand=2,
             conv_kernel=4, time_step_rank=5)
VARIANTS = {
    "default": {},      # conv bias, no projection biases, LM head tied to the embedding
    "bias": dict(use_bias=True, use_conv_bias=False, tie_word_embeddings=False),
}


def _tiny_mamba(seed: int, **overrides):
    torch.manual_seed(seed)
    model = transformers.MambaForCausalLM(transformers.MambaConfig(**SIZES, **overrides))
    with torch.no_grad():
        # the init leaves norms at 1, biases at 0, D at 1 and dt ~ 1e-3 (a scan that barely
        # moves): perturb every parameter so that each one shows in the logits
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for ly in model.backbone.layers:
            # dt = softplus(bias + ...) near 1 so the state decays within the 9 tokens, and
            # three channels beyond softplus' threshold of 20 (torch takes the identity there)
            ly.mixer.dt_proj.bias.copy_(torch.randn_like(ly.mixer.dt_proj.bias))
            ly.mixer.dt_proj.bias[:3] = torch.tensor([21.0, 23.0, 30.0])
    return model.eval().float()


def _params(model):
    """``(w, opt, sd)``: a parameter by name as numpy float32, or None where the model has none,
    and the state dict."""
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}

    def w(name):
        return sd[name].numpy()

    def opt(name):
        return w(name) if name in sd else None

    return w, opt, sd


def _float_mamba(model) -> FloatMamba:
    """The FloatMamba of a ``MambaForCausalLM`` by parameter name (the tests' stand-in for the
    frontend)."""
    cfg = model.config
    w, opt, sd = _params(model)

    layers = []
    for i in range(cfg.num_hidden_layers):
        p = f"backbone.layers.{i}."
        m = p + "mixer."
        layers.append(FloatMambaLayer(
            norm=w(p + "norm.weight"),
            in_proj=w(m + "in_proj.weight"),
            conv=w(m + "conv1d.weight")[:, 0, :],
            conv_bias=opt(m + "conv1d.bias"),
            x_proj=w(m + "x_proj.weight"),
            dt_proj=w(m + "dt_proj.weight"),
            dt_bias=w(m + "dt_proj.bias"),
            A=(-torch.exp(sd[m + "A_log"])).numpy(),    # as the mixer: float32 exp
            D=w(m + "D"),
            out_proj=w(m + "out_proj.weight"),
            in_bias=opt(m + "in_proj.bias"),
            out_bias=opt(m + "out_proj.bias"),
        ))
    shape = SsmShape(vocab=cfg.vocab_size, hidden=cfg.hidden_size, layers=cfg.num_hidden_layers,
                     d_inner=cfg.intermediate_size, d_state=cfg.state_size,
                     d_conv=cfg.conv_kernel, dt_rank=cfg.time_step_rank,
                     rms_eps=cfg.layer_norm_epsilon)
    return FloatMamba(name="tiny_mamba", shape=shape, embed=w("backbone.embeddings.weight"),
                      layers=layers, final_norm=w("backbone.norm_f.weight"),
                      lm_head=w("lm_head.weight"))


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request):
    model = _tiny_mamba(0, **VARIANTS[request.param])
    return model, _float_mamba(model)


def test_variants_have_the_layers_they_claim(pair):
    _, fm = pair
    ly = fm.layers[0]
    if ly.in_bias is None:
        assert ly.conv_bias is not None and ly.out_bias is None
        np.testing.assert_array_equal(fm.lm_head, fm.embed)
    else:
        assert ly.conv_bias is None and ly.out_bias is not None
        assert not np.array_equal(fm.lm_head, fm.embed)


def test_logits_match_transformers(pair):
    model, fm = pair
    with torch.no_grad():
        ref = model(torch.tensor([IDS])).logits[0].double().numpy()
    got = mamba_logits(fm, IDS)
    assert got.shape == (len(IDS), 97) and got.dtype == np.float64
    # float32 torch against float64, logits up to 7 in magnitude: max abs error measured
    # 4.1e-5 (default) and 5.1e-6 (bias); 2e-4 leaves room for another BLAS's summation order.
    # Not tighter through a float64 torch model: its RMSNorm, residual_in_fp32 and scan
    # (dt * B * u) still round to float32 (1.2e-5 measured). Putting the conv bias after the
    # SiLU instead of before it is off by 12.
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-4)


def test_step_by_step_equals_sequence(pair):
    _, fm = pair
    full = mamba_logits(fm, IDS)
    state = MambaState.empty(fm)
    assert state.conv[1].shape == (80, 3) and state.ssm[1].shape == (80, 6)
    for t, tok in enumerate(IDS):
        before = [a.copy() for a in state.conv + state.ssm]
        row, new = mamba_step(fm, state, tok)
        for a, b in zip(before, state.conv + state.ssm, strict=True):
            np.testing.assert_array_equal(a, b)    # the input state is left as it was
        # both float64, the same operations on 1 row instead of 9: 2e-13 measured
        np.testing.assert_allclose(row, full[t], rtol=0, atol=1e-9)
        state = new
    # the conv state holds the last d_conv - 1 tokens' conv inputs: not zero after 9 tokens
    assert all(np.abs(c).min() > 0 for c in state.conv)


# Mamba-2: 6 heads of 12 channels in 2 groups (3 heads a group), state 10, hidden 36
SIZES2 = dict(vocab_size=97, hidden_size=36, state_size=10, num_hidden_layers=2, expand=2,
              num_heads=6, head_dim=12, n_groups=2, conv_kernel=4, chunk_size=4)


def _tiny_mamba2(seed: int, **overrides):
    torch.manual_seed(seed)
    model = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(**SIZES2, **overrides))
    with torch.no_grad():
        for p in model.parameters():        # as _tiny_mamba: every parameter shows
            p.add_(0.3 * torch.randn_like(p))
        for ly in model.backbone.layers:
            ly.mixer.dt_bias.copy_(torch.randn_like(ly.mixer.dt_bias))
    return model.eval().float()


def _float_mamba2(model) -> FloatMamba:
    """The FloatMamba of a ``Mamba2ForCausalLM`` by parameter name (the tests' stand-in for a
    frontend)."""
    cfg = model.config
    w, opt, sd = _params(model)

    layers = []
    for i in range(cfg.num_hidden_layers):
        p = f"backbone.layers.{i}."
        m = p + "mixer."
        layers.append(FloatMamba2Layer(
            norm=w(p + "norm.weight"), in_proj=w(m + "in_proj.weight"),
            conv=w(m + "conv1d.weight")[:, 0, :], conv_bias=opt(m + "conv1d.bias"),
            dt_bias=w(m + "dt_bias"), A=(-torch.exp(sd[m + "A_log"])).numpy(), D=w(m + "D"),
            gate_norm=w(m + "norm.weight"), out_proj=w(m + "out_proj.weight"),
            in_bias=opt(m + "in_proj.bias"), out_bias=opt(m + "out_proj.bias"),
            dt_limit=tuple(cfg.time_step_limit)))
    d_inner = int(cfg.expand * cfg.hidden_size)
    shape = SsmShape(vocab=cfg.vocab_size, hidden=cfg.hidden_size, layers=cfg.num_hidden_layers,
                     d_inner=d_inner, d_state=cfg.state_size, d_conv=cfg.conv_kernel, dt_rank=0,
                     rms_eps=cfg.layer_norm_epsilon, heads=cfg.num_heads,
                     head_dim=cfg.head_dim, groups=cfg.n_groups)
    return FloatMamba(name="tiny_mamba2", shape=shape, embed=w("backbone.embeddings.weight"),
                      layers=layers, final_norm=w("backbone.norm_f.weight"),
                      lm_head=w("lm_head.weight"), family="mamba2")


@pytest.fixture(scope="module")
def pair2():
    model = _tiny_mamba2(1)
    return model, _float_mamba2(model)


def test_mamba2_logits_match_transformers(pair2):
    model, fm = pair2
    with torch.no_grad():
        # 9 tokens in chunks of 4: the chunked form (padded) is the recurrence
        ref = model(torch.tensor([IDS])).logits[0].double().numpy()
    got = mamba_logits(fm, IDS)
    assert got.shape == (len(IDS), 97)
    # float32 torch (its chunked scan, exp of segment sums) against float64: 7.8e-6 measured
    # on logits up to 5.8; the same room as Mamba-1's
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-4)


def test_mamba2_step_by_step_equals_sequence(pair2):
    _, fm = pair2
    full = mamba_logits(fm, IDS)
    state = MambaState.empty(fm)
    assert state.conv[0].shape == (72 + 2 * 2 * 10, 3) and state.ssm[0].shape == (6, 12, 10)
    for t, tok in enumerate(IDS):
        row, state = mamba_step(fm, state, tok)
        np.testing.assert_allclose(row, full[t], rtol=0, atol=1e-9)
