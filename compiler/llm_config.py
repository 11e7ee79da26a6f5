"""A decoder's architecture from a ``transformers`` config alone: no weights are read or
allocated (``hwflow compile CONFIG --shape-only``, README "Full-size models without weights").

:func:`shape_from_config` builds the model with ``AutoModelForCausalLM.from_config`` under
``torch.device("meta")`` (parameters carry shapes, no storage: a LLaMA-2-7B costs no 13 GB)
and reads the :class:`~compiler.decoder.DecoderShape` off the parameters' shapes, checked
against the config. :func:`shape_decoder` turns that shape into a :class:`QDecoder` with the
*structure* ``compiler.llm_quant.quantize_decoder`` gives a real model of that family (the same
layers, sub-norms, gamma codes, unfused residual adds), whose weight and embedding arrays are
zero-stride views (``numpy.broadcast_to``: one byte each, whatever their shape) and whose
epilogue constants are placeholders. The mapper's shape-only lowering
(``mapping.llm_lower.lower_decoder(..., shape_only=True)``) reads only its shapes and
structure, so the programs, the memory map and the predictions of a full-size model come out
without its weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwflow.golden.llm import softcap_code

from .decoder import (
    DECODER_WEIGHTS,
    LM_HEAD_WEIGHTS,
    DecoderShape,
    QDecoder,
    QLayer,
    QLinear,
    lm_head_weights,
)
from .errors import FrontendError, UnsupportedOpError

__all__ = ["ConfigShape", "SHAPE_FAMILIES", "SSM_SHAPE_FAMILIES", "shape_from_config",
           "shape_decoder", "is_ssm_config", "mamba_shape_from_config", "shape_mamba",
           "attention_windows"]

#: ``model_type``\ s whose blocks the shape-only path knows (the families the pattern
#: recogniser of ``compiler.llm_frontend`` is tested on).
SHAPE_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "bitnet", "phi3", "gemma2")

#: Parameters of one block, relative to ``model.layers.<i>.`` (``bias`` where the config has
#: attention_bias, the sub-norms for BitNet; fused linears count as their parts, see
#: ``_unfused``): anything else is a feature the mapper lacks.
_BLOCK = {"input_layernorm.weight", "post_attention_layernorm.weight",
          "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
          "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
          "mlp.down_proj.weight"}
_BIASES = {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias",
           "self_attn.o_proj.bias"}
_SUB_NORMS = {"self_attn.attn_sub_norm.weight", "mlp.ffn_sub_norm.weight"}
_HEAD_NORMS = {"self_attn.q_norm.weight", "self_attn.k_norm.weight"}     # Qwen3
#: Gemma 2's norms around each block: its ``post_attention_layernorm`` is the post-norm of o's
#: output, ``pre_feedforward_layernorm`` the MLP's input norm.
_POST_NORMS = {"pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"}
_TOP = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}


@dataclass(frozen=True)
class ConfigShape:
    """What a config says about a decoder: its shape and the structure the mapper needs.

    Attributes
    ----------
    shape : DecoderShape
    family : str
        The config's ``model_type``.
    act : str
        MLP activation: ``"silu"`` (SwiGLU) or ``"relu2"`` (BitNet's squared ReLU).
    sub_norms : bool
        RMSNorms before ``o`` and ``down`` (BitNet's ``attn_sub_norm`` / ``ffn_sub_norm``).
    ternary : bool
        Whether the block linears are ternary by default (BitNet b1.58).
    parameters : int
        Parameters of the meta model (embedding and LM head counted apart even when tied).
    source : str
        The config file.
    head_norms : bool
        RMSNorms of every q and k head before RoPE (Qwen3's ``q_norm`` / ``k_norm``).
    post_norms : bool
        RMSNorms of o's and down's outputs before the residual adds (Gemma 2).
    """

    shape: DecoderShape
    family: str
    act: str
    sub_norms: bool
    ternary: bool
    parameters: int
    source: str
    head_norms: bool = False
    post_norms: bool = False


def _config_file(path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FrontendError(f"{path}: no such config (give a transformers config.json or a "
                            "folder holding one)")
    return p


def shape_from_config(path, max_context: int | None = None) -> ConfigShape:
    """Read a ``transformers`` config and derive the decoder's shape from its meta model.

    Parameters
    ----------
    path : path-like
        A ``config.json`` or a folder holding one (weights next to it are not read).
    max_context : int, optional
        Context to check against the config's ``max_position_embeddings`` and sliding window.

    Returns
    -------
    ConfigShape

    Raises
    ------
    FrontendError
        Missing or unreadable config, a ``model_type`` transformers does not know, or a
        ``max_context`` past the model's positions.
    UnsupportedOpError
        A family outside :data:`SHAPE_FAMILIES`, a RoPE variant other than the default, an
        activation, soft-capping or block parameter the mapper has no unit for.
    """
    from .llm_frontend import _check_max_context, _hf_config_checks, config_error

    cfg_path = _config_file(path)
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise FrontendError(f"{cfg_path}: not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise FrontendError(f"{cfg_path}: not a transformers config (a JSON object)")
    model_type = raw.get("model_type")
    if model_type not in SHAPE_FAMILIES:
        raise UnsupportedOpError(f"{cfg_path}: model_type '{model_type}' is not supported by "
                                 f"the decoder path (supported: {', '.join(SHAPE_FAMILIES)})")
    try:
        import torch  # noqa: F401 (the meta model's; here: a missing install is named first)
        import transformers
        from transformers import AutoConfig
    except ImportError:
        raise FrontendError("reading a transformers config needs the 'transformers' package "
                            "(pip install transformers)") from None
    transformers.utils.logging.set_verbosity_error()
    try:
        config = AutoConfig.for_model(**raw)
    except Exception as e:  # noqa: BLE001
        raise config_error(cfg_path, model_type, e) from None
    max_pos = int(getattr(config, "max_position_embeddings", 0) or 2048)
    max_context = _check_max_context(max_context, max_pos, str(cfg_path))
    _hf_config_checks(cfg_path.parent, raw)
    rope_type, theta = rope_type_and_theta(config)
    rope = rope_frequencies(config, rope_type, max_context, str(cfg_path))
    params = _meta_parameters(cfg_path, config)
    return _derive(cfg_path, config, model_type, params, max_pos, theta, rope)


def _meta_parameters(cfg_path: Path, config) -> dict:
    """``{name: shape}`` of the parameters of ``config``'s model built on the meta device
    (nothing allocated), or one line naming why transformers cannot build it."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as e:  # noqa: BLE001
        raise FrontendError(f"{cfg_path}: transformers cannot build the model from its config "
                            f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})"
                            ) from None
    assert all(p.is_meta for p in model.parameters())    # nothing was allocated
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def rope_frequencies(config, rope_type: str | None, max_context: int, where: str) -> dict:
    """The rotary frequencies of a config's rope type, from transformers' own initialisation
    (``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS``, what the model's rotary module
    runs): ``{}`` for the default RoPE, else ``rope_inv_freq``, ``rope_scaling`` (the attention
    factor) and ``rope_type`` for :class:`DecoderShape`. ``dynamic`` and ``longrope`` depend on
    the sequence length: they are taken at ``max_context``, the fixed length the programs are
    compiled for. A rope type transformers does not know is refused."""
    if rope_type in (None, "default"):
        return {}
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise UnsupportedOpError(f"{where}: rope_type '{rope_type}' is not one transformers "
                                 f"defines ({', '.join(sorted(ROPE_INIT_FUNCTIONS))}, default)")
    try:
        inv, factor = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=int(max_context))
    except Exception as e:  # noqa: BLE001 -- a config transformers cannot initialise
        raise UnsupportedOpError(f"{where}: rope_type '{rope_type}': transformers cannot build "
                                 f"its frequencies ({type(e).__name__}: "
                                 f"{(str(e).splitlines() or [''])[0][:120]})") from None
    factor = float(factor)
    inv = inv.double().numpy()
    theta = rope_type_and_theta(config)[1]
    head_dim = int(getattr(config, "head_dim", None)
                   or config.hidden_size // config.num_attention_heads)
    default = 1.0 / theta ** (np.arange(head_dim // 2, dtype=np.float64) * 2 / head_dim)
    if len(inv) == len(default) and np.max(np.abs(inv - default) / default) <= 1e-6:
        inv = ()        # the default frequencies (dynamic within its original context)
    if not 0 < factor < 2:
        raise UnsupportedOpError(f"{where}: rope_type '{rope_type}' scales cos/sin by "
                                 f"{factor:.6g}; the Q1.14 RoPE table holds a scale below 2")
    return {"rope_inv_freq": tuple(float(v) for v in inv), "rope_scaling": factor,
            "rope_type": rope_type}


def rope_type_and_theta(config) -> tuple:
    """``(rope_type, theta)`` of a config (transformers 5 ``rope_parameters`` or 4.x keys)."""
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict):
        rtype = rp.get("rope_type") or rp.get("type")
        theta = rp.get("rope_theta", getattr(config, "rope_theta", None))
    else:
        rs = getattr(config, "rope_scaling", None)
        rtype = (rs.get("rope_type") or rs.get("type")) if isinstance(rs, dict) else None
        theta = getattr(config, "rope_theta", None)
    return rtype, float(theta if theta is not None else 10000.0)


def attention_windows(config, layers: int) -> tuple:
    """Per layer, the sliding attention window a ``transformers`` config gives (0: full).

    ``layer_types`` names each layer's attention where the config has it (Qwen2/3 past
    ``max_window_layers``, Gemma 2's alternation): ``sliding_attention`` layers get
    ``sliding_window``. Otherwise ``sliding_window`` applies to every layer (Mistral, Phi-3)
    unless ``use_sliding_window`` is false. A window is the number of keys a query attends,
    itself included (``golden.llm.attended``)."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return ()
    types = getattr(config, "layer_types", None)
    if types is None:
        return (int(window),) * layers
    if len(types) != layers:
        raise UnsupportedOpError(f"layer_types names {len(types)} layers, the model has "
                                 f"{layers}")
    wins = tuple(int(window) if t == "sliding_attention" else 0 for t in types)
    return wins if any(wins) else ()


def _unfused(config, params: dict) -> dict:
    """``params`` with each fused block linear (Phi-3's ``qkv_proj``, ``gate_up_proj``)
    replaced by the shapes of its parts, the linears ``compiler.llm_frontend`` splits it into
    at load (rows ``[q | k | v]``, ``[gate | up]``)."""
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    hd = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    out = {}
    for n, shp in params.items():
        stem, _, rel = n.rpartition(".self_attn.qkv_proj.")
        if stem and rel == "weight" and shp[0] == (heads + 2 * kv) * hd:
            out.update({f"{stem}.self_attn.{p}_proj.weight": (r, shp[1])
                        for p, r in (("q", heads * hd), ("k", kv * hd), ("v", kv * hd))})
            continue
        stem, _, rel = n.rpartition(".mlp.gate_up_proj.")
        if stem and rel == "weight" and shp[0] % 2 == 0:
            out.update({f"{stem}.mlp.{p}_proj.weight": (shp[0] // 2, shp[1])
                        for p in ("gate", "up")})
            continue
        out[n] = shp       # anything else (a fused linear of other rows too) is checked below
    return out


def _derive(cfg_path: Path, config, family: str, params: dict, max_pos: int,
            theta: float, rope: dict) -> ConfigShape:
    params = _unfused(config, params)
    layers = sorted({int(n.split(".")[2]) for n in params if n.startswith("model.layers.")})
    if not layers or layers != list(range(len(layers))):
        raise UnsupportedOpError(f"{cfg_path}: the model has no numbered decoder blocks "
                                 "(model.layers.<i>)")
    allowed = _BLOCK | _BIASES | _SUB_NORMS | _HEAD_NORMS | _POST_NORMS
    for n in params:
        rel = n.split(".", 3)[3] if n.startswith("model.layers.") else None
        if (rel is None and n not in _TOP) or (rel is not None and rel not in allowed):
            raise UnsupportedOpError(f"{cfg_path}: parameter '{n}' is not part of a LLaMA or "
                                     "BitNet block; the mapper has no unit for it")
    p0 = "model.layers.0."
    vocab, hidden = params["model.embed_tokens.weight"]
    n_q, _ = params[p0 + "self_attn.q_proj.weight"]
    n_kv, _ = params[p0 + "self_attn.k_proj.weight"]
    inter, _ = params[p0 + "mlp.gate_proj.weight"]
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    if n_q != heads * head_dim or n_kv != kv_heads * head_dim:
        raise UnsupportedOpError(f"{cfg_path}: q_proj has {n_q} outputs and k_proj {n_kv}, "
                                 f"not heads*head_dim = {heads}*{head_dim} and kv_heads*head_dim "
                                 f"= {kv_heads}*{head_dim}")
    for i in layers:   # every block the same shape (the programs repeat one block)
        p = f"model.layers.{i}."
        for nm in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "mlp.gate_proj.weight",
                   "mlp.down_proj.weight"):
            if params[p + nm] != params[p0 + nm]:
                raise UnsupportedOpError(f"{cfg_path}: block {i}'s {nm} is "
                                         f"{list(params[p + nm])}, block 0's "
                                         f"{list(params[p0 + nm])}; blocks must be alike")
    sub = any(n.endswith(("attn_sub_norm.weight", "ffn_sub_norm.weight")) for n in params)
    act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", "silu")
    act = {"swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}.get(act, act)
    post = any(n.endswith("post_feedforward_layernorm.weight") for n in params)
    qpas = getattr(config, "query_pre_attn_scalar", None)
    gemma = dict(embed_scale=float(np.float32(float(hidden) ** 0.5)),
                 attn_scale=float(qpas) ** -0.5 if qpas else 0.0,
                 attn_softcap=float(getattr(config, "attn_logit_softcapping", None) or 0.0),
                 final_softcap=float(getattr(config, "final_logit_softcapping", None) or 0.0)
                 ) if family == "gemma2" else {}
    shape = DecoderShape(vocab=int(vocab), hidden=int(hidden), layers=len(layers), heads=heads,
                         kv_heads=kv_heads, head_dim=head_dim, intermediate=int(inter),
                         max_position=max_pos, rope_theta=theta,
                         rms_eps=float(getattr(config, "rms_norm_eps", 1e-6)),
                         windows=attention_windows(config, len(layers)), **rope, **gemma)
    rp = getattr(config, "rope_parameters", None)
    partial = (rp.get("partial_rotary_factor") if isinstance(rp, dict) else None) or getattr(
        config, "partial_rotary_factor", None) or 1.0
    if float(partial) != 1.0:      # a default RoPE's frequencies do not show it (head_dim/2)
        raise UnsupportedOpError(f"{cfg_path}: partial_rotary_factor {float(partial):g} rotates "
                                 f"{int(head_dim * float(partial))} of the {head_dim} dimensions "
                                 "of a head; the ROPE unit rotates whole heads")
    if len(shape.inv_freq()) != head_dim // 2:
        raise UnsupportedOpError(f"{cfg_path}: rope_type '{shape.rope_type}' rotates "
                                 f"{2 * len(shape.inv_freq())} of the {head_dim} dimensions of a "
                                 "head (partial rotary); the ROPE unit rotates whole heads")
    n_params = sum(int(np.prod(s, dtype=np.int64)) for s in params.values())
    if "lm_head.weight" not in params:     # tied: the IR keeps the LM head apart
        n_params += int(vocab) * int(hidden)
    heads_normed = any(n.endswith("self_attn.q_norm.weight") for n in params)
    return ConfigShape(shape, family, act, sub, family == "bitnet", n_params, str(cfg_path),
                       heads_normed, post)


# ------------------------------------------------------------------------ shape decoder

#: Placeholder epilogue constants of a shape-only decoder. They only fill instruction fields
#: that no cycle, byte or address count reads (shift, multipliers, eps); the real values come
#: from calibration on real weights.
_NORM = (1, 1 << 14, 14)
_ATTN = (1 << 14, 14, 1 << 14, 14)
_ACT = (1 << 14, 14)
_ADD = (1 << 14, 1 << 14, 15)
_SHIFT = 16


def _zeros(shape, dtype, value: int = 0) -> np.ndarray:
    """A read-only array of ``shape``, every element ``value``, that holds one element (zero
    strides); nothing can write it, so the IR shares it instead of copying it."""
    one = np.full((), value, dtype=dtype)
    one.setflags(write=False)
    return np.broadcast_to(one, tuple(int(s) for s in shape))


def _linear(n_out: int, n_in: int, ternary: bool, residual: bool, int4: bool = False) -> QLinear:
    i4 = {}
    if int4:            # codes and group scales (golden.int4.GROUP = 32 along K) as views
        i4 = dict(w4=_zeros((n_out, n_in), np.int8),
                  w4_scale=_zeros((n_out, -(-n_in // 32)), np.uint8, 1))
    return QLinear(weight=_zeros((n_out, n_in), np.int8), bias=_zeros((n_out,), np.int64),
                   mult=_zeros((n_out,), np.int64, 1 << 14), shift=_SHIFT,
                   res_mult=(1 << 14) if residual and not ternary else 0, ternary=ternary,
                   **i4)


def shape_decoder(cs: ConfigShape, max_context: int, weights: str | None = None,
                  name: str = "model", lm_head: str | None = None) -> QDecoder:
    """A weightless :class:`QDecoder` with the structure of ``cs``'s family.

    Parameters
    ----------
    cs : ConfigShape
    max_context : int
        Positions of the KV caches and the RoPE table.
    weights : {"int8", "int4", "mixed", "ternary"}, optional
        Block linears' format; default ternary for BitNet, int8 otherwise (as
        ``quantize_decoder``). Ternary layers carry the unfused residual adds, and BitNet's
        unfolded gammas (input, sub-norm, post-attention and FFN sub-norm) become gamma codes;
        int8 folds gammas away. int4: every linear W4A8, the LM head too; mixed (no weights
        to measure the int4 error on): the block linears int4, the LM head int8.
    lm_head : {"int8", "int4"}, optional
        The LM head's weights whatever ``weights`` says (``quantize_decoder``'s rule).

    Returns
    -------
    QDecoder
        Arrays are zero-stride views (no weight-sized allocation); ``rope`` is zeros of
        ``[max_context, head_dim]`` (int16, 256 KiB at 2048 x 64).
    """
    s = cs.shape
    if weights is None:
        weights = "ternary" if cs.ternary else "int8"
    if weights not in DECODER_WEIGHTS:
        raise FrontendError(f"weights '{weights}': use {', '.join(DECODER_WEIGHTS)} for a "
                            "decoder")
    if not 1 <= int(max_context) <= s.max_position:
        raise FrontendError(f"max_context {max_context} outside 1..{s.max_position} (the "
                            "model's max_position_embeddings)")
    if lm_head not in (None, *LM_HEAD_WEIGHTS):
        raise FrontendError(f"LM head weights '{lm_head}': use {', '.join(LM_HEAD_WEIGHTS)}")
    tern = weights == "ternary"
    w4 = weights in ("int4", "mixed")
    head_w = lm_head_weights(weights, lm_head)
    dims = s.linear_dims()
    # BitNet keeps its block gammas unfolded (compiler.llm_frontend, fold_gammas): ternary
    # compiles carry them as ABSQUANT gamma codes; other families fold them into the weights.
    gammas = tern and cs.family == "bitnet"

    def g(n):
        return _zeros((n,), np.int8) if gammas else None

    # Qwen3's per-head q/k norms: gamma codes whatever the weights (RoPE follows them)
    head = dict(q_norm=_NORM, k_norm=_NORM, q_norm_gamma=_zeros((s.head_dim,), np.int8),
                k_norm_gamma=_zeros((s.head_dim,), np.int8)) if cs.head_norms else {}
    # Gemma 2: post-norms with gamma codes and unfused residual adds, the caps
    post = dict(post_attn_norm=_NORM, post_mlp_norm=_NORM,
                post_attn_gamma=_zeros((s.hidden,), np.int8),
                post_mlp_gamma=_zeros((s.hidden,), np.int8),
                attn_add=_ADD, mlp_add=_ADD) if cs.post_norms else {}
    cap = dict(attn_cap=softcap_code(s.attn_softcap)) if s.attn_softcap else {}
    layers = []
    for _ in range(s.layers):
        extra = dict(post)
        if tern:
            extra.update(attn_gamma=g(s.hidden),
                         attn_sub_gamma=g(dims["o"][1]) if cs.sub_norms else None,
                         mlp_gamma=g(s.hidden),
                         mlp_sub_gamma=g(s.intermediate) if cs.sub_norms else None,
                         attn_add=_ADD, mlp_add=_ADD)
        # o and down carry the fused residual add unless Gemma 2's post-norms unfuse it
        lin = {n: _linear(*d, tern, n in ("o", "down") and not cs.post_norms, w4)
               for n, d in dims.items()}
        layers.append(QLayer(
            attn_norm=_NORM, attn=_ATTN, mlp_norm=_NORM, silu=_ACT, act=cs.act, **lin,
            attn_sub_norm=_NORM if cs.sub_norms else None,
            mlp_sub_norm=_NORM if cs.sub_norms else None, **extra, **head, **cap))
    return QDecoder(name=name, shape=s, embed=_zeros((s.vocab, s.hidden), np.int8),
                    rope=np.zeros((int(max_context), s.head_dim), dtype=np.int16),
                    layers=layers, final_norm=_NORM,
                    lm_head=_linear(s.vocab, s.hidden, False, False, head_w == "int4"),
                    max_context=int(max_context), scales={},
                    weight_formats={"shape_only": True, "weights": weights, "lm_head": head_w},
                    final_cap=_ACT if s.final_softcap else None)


# -- state-space models (Mamba) ---------------------------------------------------------------

#: ``model_type``s of the state-space models hwflow compiles (from weights or shapes alone).
SSM_SHAPE_FAMILIES = ("mamba",)


def is_ssm_config(path) -> bool:
    """Whether ``path`` (a ``config.json`` or a folder holding one) is the config of a Mamba
    hwflow compiles (:data:`SSM_SHAPE_FAMILIES`); False for anything else, including what the
    decoder path then refuses in one line."""
    try:
        raw = json.loads(_config_file(path).read_text())
    except (FrontendError, OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("model_type") in SSM_SHAPE_FAMILIES


def mamba_shape_from_config(path) -> ConfigShape:
    """The shape of a Mamba (``MambaConfig``) from its meta model's parameters, as
    :func:`shape_from_config` reads a decoder's: ``ConfigShape.shape`` an ``SsmShape``,
    ``family`` ``"mamba"``."""
    import transformers
    from transformers import AutoConfig

    from .llm_frontend import config_error
    from .ssm import SsmShape

    cfg_path = _config_file(path)
    raw = json.loads(cfg_path.read_text())      # is_ssm_config read it
    transformers.utils.logging.set_verbosity_error()
    try:
        config = AutoConfig.for_model(**raw)
    except Exception as e:  # noqa: BLE001
        raise config_error(cfg_path, raw.get("model_type"), e) from None
    p = _meta_parameters(cfg_path, config)
    blocks = sorted({int(n.split(".")[2]) for n in p if n.startswith("backbone.layers.")})
    mixer = "backbone.layers.0.mixer."
    C, S = p[mixer + "A_log"]
    R = p[mixer + "dt_proj.weight"][1]
    V, H = p["backbone.embeddings.weight"]
    shape = SsmShape(vocab=V, hidden=H, layers=len(blocks), d_inner=C, d_state=S,
                     d_conv=p[mixer + "conv1d.weight"][-1], dt_rank=R,
                     rms_eps=float(config.layer_norm_epsilon))
    params = sum(int(np.prod(s)) for s in p.values())
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" not in p:
        params += V * H         # counted apart, as a decoder's
    return ConfigShape(shape, "mamba", "", False, False, params, str(cfg_path))


def shape_mamba(s, weights: str = "int8", name: str = "model"):
    """A weightless QMamba of shape ``s`` (``compiler.ssm_quant``'s structure: LightMamba's
    rotations, the out-projection's input Hadamard-transformed in blocks of
    ``golden.ssm.hadamard_block(d_inner)``; ``weights`` int8 or int4 for every linear); arrays
    are zero-stride views, as :func:`shape_decoder`'s."""
    from hwflow.golden.ssm import hadamard_block

    from .ssm_quant import QMamba, QMambaLayer

    if weights not in ("int8", "int4"):
        raise FrontendError(f"weights '{weights}': a Mamba takes int8 or int4")
    w4 = weights == "int4"
    C, S, H = s.d_inner, s.d_state, s.hidden
    mult = (1 << 14, _SHIFT)

    def lin(n_out, n_in, residual=False):
        return _linear(n_out, n_in, False, residual, int4=w4)

    layer = QMambaLayer(
        norm=_NORM, in_x=lin(C, H), in_z=lin(C, H), conv=_zeros((C, s.d_conv), np.int8),
        conv_bias=_zeros((C,), np.int32), conv_mult=_zeros((C,), np.uint16, 1 << 14),
        conv_shift=_SHIFT, silu=mult, x_dt=lin(s.dt_rank, C), x_b=lin(S, C), x_c=lin(S, C),
        dt_proj=lin(C, s.dt_rank), a_codes=_zeros((C, S), np.int64, 256), bu=mult, y=mult,
        d_mult=_zeros((C,), np.int64, 1 << 14), d_shift=_SHIFT, gate=mult,
        out_in=(hadamard_block(C), *mult), out_proj=lin(H, C, residual=True))
    return QMamba(name=name, shape=s, embed=_zeros((s.vocab, H), np.int8),
                  layers=[layer] * s.layers, final_norm=_NORM, lm_head=lin(s.vocab, H),
                  scales={"x0": 1.0, "logits": 1.0}, wbits=4 if w4 else 8)
