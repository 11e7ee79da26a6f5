"""The bundled language-model examples (LLaMA family, BitNet b1.58, Mamba; ``hwflow.examples``
lists every example), generated deterministically (nothing to download)."""

from __future__ import annotations

import os
from pathlib import Path

from hwflow.examples import examples_of

__all__ = ["TINY_LLAMA", "TINY_BITNET", "TINY_MAMBA", "LLM_EXAMPLES", "tiny_llama_config",
           "write_tiny_llama", "tiny_bitnet_config", "write_tiny_bitnet", "tiny_mamba_config",
           "write_tiny_mamba", "example_config", "write_example"]

#: The registry's language-model examples (``hwflow compile --example NAME``).
LLM_EXAMPLES = examples_of("decoder")

#: The tiny LLaMA of the "tiny-llama" example and the tests: GQA (6 heads over 2 kv heads,
#: head_dim 20), widths that are not multiples of the engine sizes on purpose.
TINY_LLAMA = dict(vocab_size=320, hidden_size=120, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=2, intermediate_size=200, max_position_embeddings=2048,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, hidden_act="silu")


#: Per family, config fields that the tiny sizes need besides :data:`TINY_LLAMA`: Phi-3's
#: default pad/eos ids (32000) lie outside the tiny vocabulary (the embedding refuses a
#: ``padding_idx`` past it), and its window stays off (Phi-3-mini's is 2047; the tiny model is
#: plain causal, like the tiny LLaMA); Qwen3 names its head size (the LLaMA derives it).
_FAMILY_FIELDS = {"phi3": dict(bos_token_id=None, eos_token_id=None, pad_token_id=None,
                               sliding_window=None),
                  "qwen3": dict(head_dim=20),     # Qwen3's config defaults to heads of 128
                  # Gemma 2: its scale, caps and window at tiny sizes (caps near the tiny
                  # model's scores and logits, so that capping changes them), tied embeddings
                  "gemma2": dict(head_dim=20, hidden_activation="gelu_pytorch_tanh",
                                 query_pre_attn_scalar=4, attn_logit_softcapping=2.0,
                                 final_logit_softcapping=3.0, sliding_window=6,
                                 tie_word_embeddings=True, bos_token_id=None,
                                 eos_token_id=None, pad_token_id=None)}


def tiny_llama_config(family: str = "llama", **overrides):
    """``transformers`` config of the tiny model (``family``: a ``model_type`` such as
    ``llama``, ``mistral``, ``qwen2`` or ``phi3``), with keyword overrides."""
    from transformers import AutoConfig

    return AutoConfig.for_model(family, **{**TINY_LLAMA, **_FAMILY_FIELDS.get(family, {}),
                                           **overrides})


def write_tiny_llama(folder: str | os.PathLike, seed: int = 0, family: str = "llama",
                     **overrides) -> Path:
    """Write a randomly initialised tiny LLaMA as a Hugging Face folder (safetensors).

    Weights come from ``transformers``' own initialisation under ``torch.manual_seed(seed)``;
    the RMSNorm gammas (all ones after init) are then drawn from U(0.5, 1.5) so that folding
    them into the linears is visible, and any biases (``attention_bias=True``) from N(0, 0.02).
    ``overrides`` change config fields (e.g. ``hidden_act="gelu"`` for an unsupported model);
    ``family`` picks another LLaMA-like architecture of the same sizes (``mistral``, ``qwen2``:
    q/k/v biases; ``phi3``: fused ``qkv_proj`` and ``gate_up_proj``). Returns the folder.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(family, **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):  # attention_bias=True: HF initialises them to 0
                p.normal_(0.0, 0.02)
    os.makedirs(folder, exist_ok=True)
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(str(folder))
    return Path(folder)


#: The tiny BitNet b1.58 of the "tiny-bitnet" example and the tests: the sizes of
#: :data:`TINY_LLAMA` with BitNet's squared-ReLU MLP and sub-norms (``BitNetConfig``; its
#: default RoPE theta 500000).
TINY_BITNET = {**TINY_LLAMA, "hidden_act": "relu2"}

#: Linears of a BitNet block whose weights are ternary (the LM head and embedding are not).
BITNET_TERNARY_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                          "down_proj")


def tiny_bitnet_config(**overrides):
    """``transformers.BitNetConfig`` of the tiny BitNet, with keyword overrides."""
    from transformers import BitNetConfig

    return BitNetConfig(**{**TINY_BITNET, "bos_token_id": None, "eos_token_id": None,
                           **overrides})


def write_tiny_bitnet(folder: str | os.PathLike, seed: int = 0, ternary_weights: bool = False,
                      **overrides) -> Path:
    """Write a randomly initialised tiny BitNet b1.58 as a Hugging Face folder (safetensors).

    Weights come from ``transformers``' own initialisation under ``torch.manual_seed(seed)``;
    every RMSNorm gamma (input, post-attention, ``attn_sub_norm``, ``ffn_sub_norm``, final) is
    then drawn from U(0.5, 1.5). The block linears stay float (the compiler ternarizes them
    with BitNet's absmean rule) unless ``ternary_weights``: then every q/k/v/o/gate/up/down
    weight ``W`` is replaced by its absmean ternarization ``gamma * t``
    (``golden.ternary.ternarize_absmean``), a model whose weights are already ternary.
    ``overrides`` change config fields. Returns the folder.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from hwflow.golden.ternary import ternarize_absmean

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_bitnet_config(**overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.02)
            elif ternary_weights and name.endswith(".weight") and \
                    name.split(".")[-2] in BITNET_TERNARY_LINEARS:
                t, gamma = ternarize_absmean(p.detach().numpy())
                p.copy_(torch.from_numpy((t * gamma).astype("float32")))
    os.makedirs(folder, exist_ok=True)
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(str(folder))
    return Path(folder)


#: The tiny Mamba of the "tiny-mamba" example: ``transformers``' defaults of a Mamba block (16
#: states, 4 taps, expand 2) at a width that is not a multiple of the engine sizes (hidden 40,
#: 80 inner channels, dt rank 5), 2 layers, a vocabulary of 97, an LM head of its own (tied to
#: the embedding, a random model's greedy tokens repeat the last one).
TINY_MAMBA = dict(vocab_size=97, hidden_size=40, state_size=16, num_hidden_layers=2, expand=2,
                  conv_kernel=4, time_step_rank=5, tie_word_embeddings=False)


def tiny_mamba_config():
    """``transformers.MambaConfig`` of the tiny Mamba (:data:`TINY_MAMBA`)."""
    from transformers import MambaConfig

    return MambaConfig(**TINY_MAMBA)


def write_tiny_mamba(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write a randomly initialised tiny ``MambaForCausalLM`` (:data:`TINY_MAMBA`) as a Hugging
    Face folder (safetensors): ``transformers``' initialisation under ``torch.manual_seed(seed)``,
    with the decays (``A_log``), the D skip and the norms moved off their constant init so
    that every parameter shows in the logits, and the embedding at unit scale (its init of 0.1
    leaves the blocks' outputs in the noise of int8)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.MambaForCausalLM(tiny_mamba_config()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.add_(torch.rand_like(p))
            elif name.endswith(".D") or name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("embeddings.weight"):
                p.normal_(0.0, 1.0)
    os.makedirs(folder, exist_ok=True)
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(str(folder))
    return Path(folder)


def example_config(name: str):
    """The ``transformers`` config of the bundled example ``name`` (its shapes, no weights)."""
    configs = {"tiny-llama": tiny_llama_config, "tiny-bitnet": tiny_bitnet_config,
               "tiny-mamba": tiny_mamba_config}
    if name not in configs:
        raise ValueError(f"unknown example '{name}' (known: {', '.join(LLM_EXAMPLES)})")
    return configs[name]()


def write_example(name: str, folder: str | os.PathLike) -> Path:
    """Write the bundled example ``name`` (one of :data:`LLM_EXAMPLES`) into ``folder``.

    Raises
    ------
    ValueError
        An unknown name.
    """
    writers = {"tiny-llama": write_tiny_llama, "tiny-bitnet": write_tiny_bitnet,
               "tiny-mamba": write_tiny_mamba}
    if name not in writers:
        raise ValueError(f"unknown example '{name}' (known: {', '.join(LLM_EXAMPLES)})")
    return writers[name](folder)
