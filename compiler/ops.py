"""The op record carried by every IR node, and the one list of op kinds.

An IR node's ``op`` attribute is an immutable :class:`Op`. Passes never modify an op; they build
a new one with :func:`dataclasses.replace` (or :meth:`Op.with_attrs`) and put it in a new graph.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

#: Every op kind, with its one-line definition. Float level (frontend output) uses f32 tensors;
#: quantized level (after ``quantize``) uses int8 tensors with a per-tensor scale.
OP_KINDS: dict[str, str] = {
    # both levels
    "input": "graph input; f32, or i8 with the scale the host quantizes with (no inputs)",
    "output": "graph output (x,); at the i8 level attrs scale: the host dequantizes with it",
    "relu": "max(x, 0) (x,); at the i8 level max(q, 0) with the input's scale (exact)",
    "reshape": "same elements, new shape (x,); row-major order kept",
    # float level
    "linear": "x @ weight.T + bias (x,); attrs weight f32 [N,K], bias f32 [N] or None; after "
              "sparsify/precision also sparsity (n, m) and wbits 8|4|2 (2: ternary, weight "
              "s*t, dense)",
    "add": "a + b (a, b), same shapes",
    # quantized level
    "qlinear": "requantize(matmul(x, weight), bias, mult, shift, relu, residual, res_mult) "
               "(x,) or (x, residual); attrs weight i8 [N,K], bias i32 [N], mult u16 [N], "
               "shift, relu, res_mult (0 without residual), w_scale f64 [N], sparsity (n, m) "
               "((1, 1) dense; weight obeys it), wbits 8|4; int4 adds w4 i8 [N,K] in -8..7 "
               "and w4_scale u8 [N,ceil(K/32)] in 1..15 with weight == w4*w4_scale "
               "(w_scale is then golden.int4's c); ternary (TLMM engine): wbits 2, ternary "
               "True, weight t in {-1,0,1}, w_scale s per channel, dense, and the value is "
               "requantize(matmul(xq, t) * m, ...) with xq, m = golden.ternary.absmax_quant(x),"
               " bias and mult in units of acc*m (bias = round(b*127/(s_x*s)), mult/2**shift "
               "= s_x*s/(127*s_out)); missing sparsity/wbits: dense int8",
    "qadd": "residual_add(a, b, a_mult, b_mult, shift, relu) (a, b); attrs a_mult, b_mult, "
            "shift, relu",
}

# the decoder level (compiler/decoder_graph.py: a quantized decoder, one row's program; every
# op's ``area`` attr names the activation area it writes, its memory plan)
OP_KINDS.update({
    "embed": "the embedding rows of the run's token ids, which the host writes (); attrs "
             "table i8 [vocab, hidden]",
    "rope_table": "the RoPE rows of the run's positions (); attrs table i16 "
                  "[max_context, head_dim] (golden.llm.rope_table)",
    "gamma_codes": "a layer's int8 gamma codes, loaded for the norms and ABSQUANTs that "
                   "apply them (); attrs one i8 array per slot name (lowering GAMMA_SLOTS)",
    "rmsnorm": "golden.llm.rmsnorm (x,); attrs eps, mult, shift, gamma (slot name or ''), "
               "heads (> 0: each head of the row normalized alone), last_row (the run's "
               "last row only)",
    "absquant": "golden.ternary.absmax_quant (x,), in place: the per-row int8 input of the "
                "ternary qlinears that read it and its absmax m; attrs gamma (slot or '')",
    "rope": "golden.llm.rope of each head (x, cs), in place; attrs heads",
    "attention": "the layer's K and V rows appended to its cache at POS, then causal "
                 "grouped-query attention with an online softmax (q, k, v); attrs layer, "
                 "smul, sshift, omul, oshift, window (0: full), cap",
    "silu_mul": "golden.llm.silu_mul (gate, up), in place of gate; attrs act (silu, relu2, "
                "gelu_tanh), mult, shift",
    "lm_head": "the LM head (a qlinear's attrs) on the run's last row (x,), stored to the "
               "host's logits row; attrs also cap (tanh cap (mult, shift), or ())",
})
# the state-space level (compiler/ssm_graph.py: a quantized Mamba, the decoder level's kinds
# and these; the conv history and scan state live in their units)
OP_KINDS.update({
    "conv": "golden.ssm.causal_conv of the rows after the layer's held inputs, then "
            "golden.llm.gate_mul(c, 1, silu_mult, silu_shift) (x,), in place; attrs layer, "
            "weight i8 [C, d_conv], bias, mult [C], shift, silu_mult, silu_shift",
    "scan": "golden.ssm.scan_step of every row in order on the layer's state, dt = "
            "golden.ssm.softplus_dt(dt) (u, dt, B, C); attrs layer, a_codes [C, d_state], "
            "d_mult [C], d_shift, bu_mult, bu_shift, y_mult, y_shift",
    "hadamard": "golden.int8.requantize(golden.ssm.hadamard(x, 2**lgb), 0, mult, shift, bits) "
                "(x,), in place; attrs lgb, mult, shift, bits (4 or 8)",
})
DECODER_KINDS = frozenset({"embed", "rope_table", "gamma_codes", "rmsnorm", "absquant", "rope",
                           "attention", "silu_mul", "qlinear", "qadd", "lm_head", "conv", "scan",
                           "hadamard"})

FLOAT_KINDS = frozenset({"input", "output", "relu", "reshape", "linear", "add"})
QUANT_KINDS = frozenset({"input", "output", "relu", "reshape", "qlinear", "qadd"})
#: Kinds left after ``fuse``: the ones the accelerator executes (or that are pure layout).
FUSED_KINDS = frozenset({"input", "output", "reshape", "qlinear", "qadd"})


@dataclass(frozen=True)
class TensorType:
    """Type of the tensor an op produces.

    Parameters
    ----------
    shape : tuple of int
        Logical shape; the accelerator views it as 2-D (rows = product of the leading dims,
        features = last dim), see :func:`rows_features`.
    dtype : {'f32', 'i8'}
    scale : float or None
        Per-tensor quantization scale (``real = q * scale``); set for every i8 tensor.
    """

    shape: tuple[int, ...]
    dtype: str
    scale: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.scale is not None:
            object.__setattr__(self, "scale", float(self.scale))


@dataclass(frozen=True)
class TileInfo:
    """How a ``qlinear`` is cut for a matrix engine of P chains of length L.

    Parameters
    ----------
    k_words : int
        ``ceil(K / L)``: input words per activation row (k-groups per weight tile).
    n_tiles : int
        ``ceil(N / P)``: dense weight tiles (P output channels each). The mapper runs an N:M
        layer in tiles of ``P·r`` channels (``r = M/N``), i.e. ``ceil(N / (P·r))`` tiles; the
        format depends on the engine, so it is chosen there, not here.
    out_words : int
        ``ceil(N / L)``: output words per activation row.
    """

    k_words: int
    n_tiles: int
    out_words: int


@dataclass(frozen=True)
class MemInfo:
    """Place of an i8 activation tensor in the on-chip activation buffer (units: words of L bytes).

    Parameters
    ----------
    addr : int
        First word; row ``b`` starts at word ``addr + b * words``.
    rows : int
        Rows of the 2-D view of the tensor.
    words : int
        ``ceil(features / L)``: words per row (bytes past ``features`` are zero padding).
    span : int
        Words reserved from ``addr``: ``rows * words`` rounded up to whole super-beats. Tensors
        that alias (``reshape``, ``output``) share ``addr`` and ``span``.
    """

    addr: int
    rows: int
    words: int
    span: int


def immutable(a: np.ndarray) -> bool:
    """Whether nothing can write ``a``: it and every array it views are read-only, down to
    an owner of its own data or immutable bytes."""
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        a = a.base
    return a is None or isinstance(a, bytes)


def freeze_value(value: Any) -> Any:
    """Make an attribute value immutable: arrays become read-only copies (an array nothing can
    write is shared as it is), lists become tuples."""
    if isinstance(value, np.ndarray):
        if immutable(value):   # nothing can write it: share it (a 7B decoder's zero-stride
            return value        # shape-only weights would materialize if copied)
        a = np.array(value, copy=True)
        a.setflags(write=False)
        return a
    if isinstance(value, (list, tuple)):
        return tuple(freeze_value(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def freeze_attrs(attrs: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """Read-only mapping of frozen attribute values, keys sorted (stable saving and printing)."""
    attrs = attrs or {}
    return types.MappingProxyType({k: freeze_value(attrs[k]) for k in sorted(attrs)})


@dataclass(frozen=True)
class Op:
    """The immutable record of one IR node.

    Parameters
    ----------
    kind : str
        One of :data:`OP_KINDS`.
    inputs : tuple of str
        Producer node names, in operand order (the graph has one edge per distinct producer).
    out : TensorType
        Type of the produced tensor.
    attrs : Mapping
        Read-only kind-specific attributes (see :data:`OP_KINDS`); arrays are non-writeable.
    tile : TileInfo or None
        Set by ``tile`` on ``qlinear``.
    mem : MemInfo or None
        Set by ``memory_plan`` on every i8 tensor.
    source : str or None
        Where the op came from in the user's model (``file:line``), for messages.
    """

    kind: str
    inputs: tuple[str, ...]
    out: TensorType
    attrs: Mapping[str, Any] = field(default_factory=lambda: freeze_attrs(None))
    tile: TileInfo | None = None
    mem: MemInfo | None = None
    source: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if not isinstance(self.attrs, types.MappingProxyType):
            object.__setattr__(self, "attrs", freeze_attrs(self.attrs))

    def with_attrs(self, **changes: Any) -> Op:
        """Copy of this op with some attributes replaced or added."""
        return replace(self, attrs=freeze_attrs({**self.attrs, **changes}))


def rows_features(shape: tuple[int, ...]) -> tuple[int, int]:
    """The 2-D view the accelerator uses: (product of the leading dims, last dim)."""
    if len(shape) == 0:
        return 1, 1
    rows = 1
    for d in shape[:-1]:
        rows *= int(d)
    return rows, int(shape[-1])


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for non-negative integers."""
    return -(-int(a) // int(b))
