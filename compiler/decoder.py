"""The decoder IR: a LLaMA-family decoder-only transformer as recognised by the frontend
(:class:`FloatDecoder`) and after quantization (:class:`QDecoder`).

A transformer is a fixed repetition of the same block, so its IR is structured (a list of
layers with named parts) instead of a free graph: the frontend recognises the blocks in the ATen
graph (``compiler/llm_frontend.py``), the quantize pass (``compiler/llm_quant.py``) turns floats
into the integer parameters of ``golden/llm.py`` and ``golden/int8.py``, and the mapper
(``mapping/llm_lower.py``) lowers a :class:`QDecoder` into one decode program and the prefill
programs. Conventions:

* Linear weights are ``[out_features, in_features]`` (torch layout).
* RMSNorm gammas are folded into the columns of the linears that read the norm's output
  (``q``/``k``/``v`` for the attention norm, ``gate``/``up`` for the MLP norm, ``lm_head`` for the
  final norm), so every norm is gamma-free in the IR: ``W' = W * gamma[None, :]``. Exception:
  a :class:`FloatLayer` whose ``*_gamma`` field is set keeps that gamma unfolded (BitNet: a
  ternary weight cannot absorb a gamma); the norm kernels stay gamma-free and the gamma is
  applied to the normalized activation (float) or by ``absmax_quant`` as int8 codes (integer).
* Heads are contiguous: ``q`` output channel ``h * head_dim + i`` is head h, element i (HF order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from hwflow.golden.llm import default_inv_freq

from .ops import immutable

__all__ = ["DecoderShape", "FloatLayer", "FloatDecoder", "QLinear", "QLayer", "QDecoder",
           "LazyLayers", "DECODER_WEIGHTS", "LM_HEAD_WEIGHTS", "lm_head_weights",
           "freeze_decoder"]


#: Weight formats of a decoder's block linears (``quantize_decoder(weights=...)``).
DECODER_WEIGHTS = ("int8", "int4", "mixed", "ternary")
#: What the LM head may be given apart from them (``lm_head=...``, ``--lm-head``).
LM_HEAD_WEIGHTS = ("int8", "int4")


def lm_head_weights(weights: str, lm_head: str | None = None) -> str:
    """The LM head's weights: ``lm_head`` where given, else int4 only when every linear is
    (``weights="int4"``); mixed keeps it int8 (the most sensitive layer), and so does ternary
    (BitNet's own recipe)."""
    return lm_head or ("int4" if weights == "int4" else "int8")


@dataclass(frozen=True)
class DecoderShape:
    """Architecture numbers of a decoder (from the recognised graph or a config)."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    max_position: int       # largest context the model supports (config max_position_embeddings)
    rope_theta: float
    rms_eps: float
    rope_scaling: float = 1.0   # HF attention_scaling (1.0 but for YaRN and LongRoPE)
    #: The model's rotary inverse frequencies (head_dim/2), when they are not the default
    #: ``rope_theta**(-2i/head_dim)``: llama3, linear, YaRN, ... (``inv_freq()`` is the one
    #: source of the table).
    rope_inv_freq: tuple = ()
    rope_type: str = "default"  # the config's rope_type (reports)
    #: Sliding attention window per layer (``golden.llm.attended``: a query at position p
    #: attends keys ``p - window + 1 .. p``); 0 is full causal attention. Empty: every layer
    #: full. Mistral and Phi-3 slide every layer, Gemma 2 every other one.
    windows: tuple = ()
    #: Gemma 2: the embedding rows are multiplied by this (``sqrt(hidden)``); the attention
    #: scores by ``attn_scale`` (``query_pre_attn_scalar**-0.5``; 0: ``1/sqrt(head_dim)``) and
    #: capped to ``attn_softcap * tanh(score / attn_softcap)``; the logits to
    #: ``final_softcap * tanh(logit / final_softcap)`` (0: no cap).
    embed_scale: float = 1.0
    attn_scale: float = 0.0
    attn_softcap: float = 0.0
    final_softcap: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "rope_inv_freq", tuple(float(v) for v in self.rope_inv_freq))
        object.__setattr__(self, "windows", tuple(int(w) for w in self.windows))
        if self.windows and len(self.windows) != self.layers:
            raise ValueError(f"{len(self.windows)} attention windows for {self.layers} layers")

    def window(self, layer: int) -> int:
        """Layer ``layer``'s sliding attention window (0: full causal attention)."""
        return self.windows[layer] if self.windows else 0

    def score_scale(self) -> float:
        """The attention scores' scale: ``attn_scale``, or ``1/sqrt(head_dim)``."""
        return self.attn_scale or 1.0 / float(np.sqrt(self.head_dim))

    def inv_freq(self) -> np.ndarray:
        """The rotary inverse frequencies (``head_dim/2``, float64) the RoPE table is built
        from: the model's own, or the default RoPE's of ``rope_theta``."""
        if self.rope_inv_freq:
            return np.asarray(self.rope_inv_freq, dtype=np.float64)
        return default_inv_freq(self.head_dim, self.rope_theta)

    def linear_dims(self) -> dict:
        """``(out, in)`` features of a block's linears (torch layout): q, k, v, o, gate, up,
        down."""
        qd, kvd = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q": (qd, self.hidden), "k": (kvd, self.hidden), "v": (kvd, self.hidden),
                "o": (self.hidden, qd), "gate": (self.intermediate, self.hidden),
                "up": (self.intermediate, self.hidden), "down": (self.hidden, self.intermediate)}

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class FloatLayer:
    """One decoder block in float32 (gammas folded into q/k/v and gate/up unless recorded).

    The block (``rms`` is the gamma-free RMSNorm, ``*`` an elementwise product):
    ``n = rms(x) [* attn_gamma]``; ``a = attention(rope(q(n)), rope(k(n)), v(n))`` (with
    ``q_norm``/``k_norm``: ``rope(rms_head(q(n)) * q_norm)``, each head normalized alone);
    ``a = rms(a) [* attn_sub_gamma]`` if ``attn_sub_norm``; ``x = x + o(a)``;
    ``n = rms(x) [* mlp_gamma]``; ``p = act(gate(n)) * up(n)`` (``act``: ``silu``,
    ``relu2`` = ``relu(.)**2`` or ``gelu_tanh``); ``p = rms(p) [* mlp_sub_gamma]`` if
    ``mlp_sub_norm``; ``x = x + down(p)``. A gamma field that is None is folded into the
    linear(s) reading that norm (or the norm is absent); one that is set is not, and the
    linear holds the raw weight. Gemma 2's post-norms (``post_attn_gamma``,
    ``post_mlp_gamma``): ``x = x + rms(o(a)) * post_attn_gamma``, likewise after down.
    """

    q: np.ndarray           # [heads*head_dim, hidden]
    k: np.ndarray           # [kv_heads*head_dim, hidden]
    v: np.ndarray           # [kv_heads*head_dim, hidden]
    o: np.ndarray           # [hidden, heads*head_dim]
    gate: np.ndarray        # [intermediate, hidden]
    up: np.ndarray          # [intermediate, hidden]
    down: np.ndarray        # [hidden, intermediate]
    q_bias: np.ndarray | None = None    # attention_bias models (zeros otherwise)
    k_bias: np.ndarray | None = None
    v_bias: np.ndarray | None = None
    o_bias: np.ndarray | None = None
    # BitNet b1.58 blocks (HF BitNetForCausalLM) and ternary compiles of other decoders.
    act: str = "silu"                       # "silu" or "relu2"
    attn_sub_norm: bool = False             # RMSNorm on the attention output, before o
    mlp_sub_norm: bool = False              # RMSNorm on act(gate) * up, before down
    attn_gamma: np.ndarray | None = None    # [hidden] input-norm gamma, unfolded (q/k/v raw)
    attn_sub_gamma: np.ndarray | None = None  # [heads*head_dim] sub-norm gamma, unfolded (o raw)
    mlp_gamma: np.ndarray | None = None     # [hidden] post-attention-norm gamma (gate/up raw)
    mlp_sub_gamma: np.ndarray | None = None  # [intermediate] ffn sub-norm gamma (down raw)
    #: Qwen3: RMSNorm of every q (k) head after its projection and before RoPE, with this
    #: gamma ([head_dim], shared by the heads; RoPE mixes elements, so it is not folded).
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None
    #: Gemma 2: RMSNorm of o's (down's) output, with this gamma ([hidden]), before the
    #: residual add; it cannot be folded (the norm follows the linear).
    post_attn_gamma: np.ndarray | None = None
    post_mlp_gamma: np.ndarray | None = None


class LazyLayers(Sequence):
    """A float decoder's ``layers`` made one at a time when indexed (:meth:`layer`), so that
    a pass over them holds one: the blocks of a Hugging Face folder as they are recognised,
    or the layers of a saved float decoder as they are read."""

    n = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(f"layer {i} of {self.n}")
        return self.layer(i % self.n)

    def layer(self, i: int) -> FloatLayer:
        """Layer ``i`` (``0 <= i < len(self)``)."""
        raise NotImplementedError


@dataclass
class FloatDecoder:
    """The recognised float model: embedding, layers, folded final norm + LM head."""

    name: str
    shape: DecoderShape
    embed: np.ndarray       # [vocab, hidden]
    layers: list[FloatLayer]
    lm_head: np.ndarray     # [vocab, hidden], final-norm gamma folded in
    source: str = ""        # "hf:<folder>" or "export:<file>"
    family: str = "llama"   # config model_type where known
    max_context: int = 0    # context the frontend was asked to compile for (0: not set)
    #: The checkpoint's block linears are already ternary (every q/k/v/o/gate/up/down weight
    #: ``0/+-s`` for one ``s``), though its family is not ``bitnet``: gammas left unfolded so
    #: the ternary values survive, and ternary is the default weight format.
    ternary_weights: bool = False


@dataclass
class QLinear:
    """An int8 linear with its epilogue (``golden.int8.requantize``).

    ``out = requantize(x @ weight.T, bias, mult, shift, res=residual, res_mult)``.
    """

    weight: np.ndarray      # int8 [out, in] (ternary: values in {-1, 0, 1})
    bias: np.ndarray        # int32 [out] (in accumulator units; ternary: units of acc * m)
    mult: np.ndarray        # int64 [out], each in [0, 65535]
    shift: int              # 0..47
    res_mult: int = 0       # residual multiplier (o and down: the residual stream), else 0
    #: BitNet ternary linear (docs/architecture.md, "Ternary path"): its input row is first
    #: quantized per token (golden.ternary.absmax_quant, with the layer's gamma codes if any),
    #: then ``out = requantize((xq @ weight.T) * m, bias, mult, shift, res, res_mult)``.
    ternary: bool = False
    #: int4 linear (``golden.int4``, W4A8): ``weight`` is the int8 the engine computes with,
    #: ``w4 * w4_scale`` per group of 32 along K; the codes ``w4`` (-8..7) and group scales
    #: ``w4_scale`` (1..15, ``[out, ceil(in / 32)]``) are what the memory holds.
    w4: np.ndarray | None = None
    w4_scale: np.ndarray | None = None


@dataclass
class QLayer:
    """One decoder block, integer parameters only (scales in ``QDecoder.scales``)."""

    attn_norm: tuple[int, int, int]     # rmsnorm (eps, mult, shift) of the residual stream
    q: QLinear
    k: QLinear
    v: QLinear
    attn: tuple[int, int, int, int]     # attention (smul, sshift, omul, oshift)
    o: QLinear                          # with residual: out = new residual stream
    mlp_norm: tuple[int, int, int]
    gate: QLinear                       # output at golden.llm.SILU_SCALE
    up: QLinear
    silu: tuple[int, int]               # silu_mul (mult, shift) (relu2_mul when act == relu2)
    down: QLinear                       # with residual
    # BitNet b1.58 blocks (HF BitNetForCausalLM): squared-ReLU gate, RMSNorms inside the
    # attention (before o) and the MLP (before down), and gammas that cannot be folded into
    # ternary weights: int8 gamma codes applied by ABSQUANT before each ternary linear
    # (attn_gamma before q/k/v, attn_sub_gamma before o, mlp_gamma before gate/up,
    # mlp_sub_gamma before down); None where folded or absent.
    act: str = "silu"                   # "silu" or "relu2"
    attn_sub_norm: tuple[int, int, int] | None = None
    mlp_sub_norm: tuple[int, int, int] | None = None
    attn_gamma: np.ndarray | None = None
    attn_sub_gamma: np.ndarray | None = None
    mlp_gamma: np.ndarray | None = None
    mlp_sub_gamma: np.ndarray | None = None
    # Unfused residual adds after o and down (ternary layers: VADD, golden.int8.residual_add
    # (a_mult, b_mult, shift) of the linear's output and the residual stream); None: fused.
    attn_add: tuple[int, int, int] | None = None
    mlp_add: tuple[int, int, int] | None = None
    # Qwen3's per-head q/k RMSNorms: rmsnorm (eps, mult, shift) of each head of q (k) with
    # the int8 gamma codes ``*_gamma`` ([head_dim]); None where the model has none.
    q_norm: tuple[int, int, int] | None = None
    k_norm: tuple[int, int, int] | None = None
    q_norm_gamma: np.ndarray | None = None
    k_norm_gamma: np.ndarray | None = None
    # Gemma 2: rmsnorm (eps, mult, shift) of o's (down's) output with the int8 gamma codes
    # ``*_gamma`` ([hidden]), then the unfused residual add ``attn_add`` (``mlp_add``).
    post_attn_norm: tuple[int, int, int] | None = None
    post_mlp_norm: tuple[int, int, int] | None = None
    post_attn_gamma: np.ndarray | None = None
    post_mlp_gamma: np.ndarray | None = None
    # Gemma 2: the attention's score cap (golden.llm.softcap_code; 0: none).
    attn_cap: int = 0


@dataclass
class QDecoder:
    """The quantized decoder: what the golden interpreter runs and the mapper lowers."""

    name: str
    shape: DecoderShape
    embed: np.ndarray                   # int8 [vocab, hidden] at scale scales["embed"]
    rope: np.ndarray                    # int16 [max_context, head_dim] (golden.llm.rope_table)
    layers: list[QLayer]
    final_norm: tuple[int, int, int]
    lm_head: QLinear                    # logits int8 at scales["logits"]
    max_context: int
    scales: dict = field(default_factory=dict)  # float scales of every tensor, for reports
    #: Per linear (``l{i}.q`` .. ``l{i}.down``, ``lm_head``), what it got and why: ``weights``
    #: ("int8" or "ternary"), for ternary ``ternary_from`` ("detected": the float weight was
    #: already 0/+-s; "absmean": BitNet's rule) and ``scale`` (gamma_w). Empty: all int8.
    weight_formats: dict = field(default_factory=dict)
    #: Gemma 2's final logit cap: golden.llm.tanh_cap (mult, shift) of the LM head's output
    #: (at ``scales["lm_head"]`` = cap/64) into the logits; None: the LM head's output is the
    #: logits.
    final_cap: tuple[int, int] | None = None


def _frozen(a: np.ndarray) -> np.ndarray:
    """``a`` itself if nothing can write it, made read-only where it owns its data, else a
    read-only copy of it."""
    if immutable(a):
        return a
    if a.base is not None:
        a = a.copy()
    a.setflags(write=False)
    return a


def _freeze_fields(obj) -> None:
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, np.ndarray):
            setattr(obj, f.name, _frozen(v))
        elif isinstance(v, QLinear):
            _freeze_fields(v)


def freeze_decoder(qd: QDecoder) -> QDecoder:
    """Make every array of ``qd`` read-only, in place, and return it: the quantized decoder is
    as immutable as the graph IR's ops, so its graph (``compiler.decoder_graph``) shares its
    arrays instead of copying them (a 7B decoder's 6.7 GB of int8 weights)."""
    _freeze_fields(qd)
    for ly in qd.layers:
        _freeze_fields(ly)
    return qd
