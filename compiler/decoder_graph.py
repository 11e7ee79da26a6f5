"""A quantized decoder as the graph IR: the one representation the lowering reads.

:func:`decoder_graph` writes a :class:`~hwflow.compiler.decoder.QDecoder` as a graph of the
decoder-level op kinds (``ops.OP_KINDS``: ``embed``, ``rope_table``, ``gamma_codes``,
``rmsnorm``, ``absquant``, ``qlinear``, ``rope``, ``attention``, ``silu_mul``, ``qadd``,
``lm_head``), one node per instruction group of a program, in program order
(``graph.graph["schedule"]``). The graph is one row's program: a decode step runs it on one
row, a prefill bucket on ``B`` rows, so tensor shapes are ``[1, features]``. A ``qlinear``
carries the attributes of the MLP graph's ``qlinear`` (the same record), so one lowering
(``mapping.emit``) emits both families' linears.

Its memory plan is static: each op's ``area`` attribute names the activation area its output
lives in (``x`` the residual stream, ``h`` a norm's output, ``q``, ``k``, ``v``, ``att``,
``gate``, ``up``; ``rope``, ``absquant``, ``silu_mul`` and the per-head norms work in place),
and ``mapping.llm_lower.ActPlan`` lays the areas out for a run of any number of rows.
Spec-checked by :func:`hwflow.compiler.spec.check_decoder_graph`.
"""

from __future__ import annotations

from .decoder import QDecoder, QLinear
from .ir import Graph, add_op, new_graph
from .ops import Op, TensorType

__all__ = ["decoder_graph", "linear_attrs", "linear_of", "GAMMA_SLOTS", "LINEARS"]

#: A block's linears, in program order.
LINEARS = ("q", "k", "v", "o", "gate", "up", "down")
#: Every slot of a layer's gamma codes (``gamma_codes``), in slot order: ABSQUANT's before
#: ternary linears, Qwen3's per-head q/k norms', Gemma 2's post-norms'.
GAMMA_SLOTS = ("attn_gamma", "attn_sub_gamma", "mlp_gamma", "mlp_sub_gamma",
               "q_norm_gamma", "k_norm_gamma", "post_attn_gamma", "post_mlp_gamma")
#: Every tensor's ``TensorType.scale``: a placeholder. The lowering reads no scale (the
#: integer parameters are in the ops); the calibrated scales are ``graph.graph["scales"]``.
_UNIT = 1.0


def linear_attrs(ql: QLinear, head_pad: str = "") -> dict:
    """The ``qlinear`` attributes of decoder linear ``ql`` (the MLP graph's keys);
    ``head_pad``: ``"rows"`` (q, k, v: output heads) or ``"cols"`` (o: input heads) are
    padded to whole act words per head when lowered."""
    attrs = {"weight": ql.weight, "bias": ql.bias, "mult": ql.mult, "shift": int(ql.shift),
             "res_mult": int(ql.res_mult), "relu": False, "ternary": bool(ql.ternary),
             "head_pad": head_pad}
    if ql.w4 is not None:
        attrs |= {"w4": ql.w4, "w4_scale": ql.w4_scale}
    return attrs


def linear_of(op: Op) -> QLinear:
    """The :class:`QLinear` a ``qlinear`` or ``lm_head`` op holds."""
    a = op.attrs
    return QLinear(weight=a["weight"], bias=a["bias"], mult=a["mult"], shift=a["shift"],
                   res_mult=a["res_mult"], ternary=a["ternary"], w4=a.get("w4"),
                   w4_scale=a.get("w4_scale"))


class _Builder:
    """Appends ops in program order, each output ``[1, features]`` in its named area."""

    def __init__(self, qd: QDecoder):
        self.g = new_graph(qd.name)

    def op(self, name: str, kind: str, inputs: tuple, features: int, area: str,
           **attrs) -> str:
        add_op(self.g, name, Op(kind, inputs, TensorType((1, features), "i8", _UNIT),
                                {"area": area, **attrs}))
        return name


def _norm(eps_mult_shift) -> dict:
    eps, mult, shift = (int(v) for v in eps_mult_shift)
    return {"eps": eps, "mult": mult, "shift": shift}


def _layer(b: _Builder, qd: QDecoder, i: int, x: str, cs: str) -> str:
    """Block ``i`` (the instruction order of ``docs/architecture.md``, "Transformer path";
    ternary blocks: "Ternary path"); returns the residual stream's node after it."""
    s, ly, p = qd.shape, qd.layers[i], f"L{i}."
    tern = bool(ly.q.ternary)
    qf, kvf = s.heads * s.head_dim, s.kv_heads * s.head_dim
    has_gammas = any(getattr(ly, nm, None) is not None for nm in GAMMA_SLOTS)

    def gam(nm: str) -> str:
        return nm if getattr(ly, nm, None) is not None else ""

    def load_gammas():
        if has_gammas:
            b.op(p + "gamma", "gamma_codes", (), 1, "gamma",
                 **{nm: getattr(ly, nm) for nm in GAMMA_SLOTS
                    if getattr(ly, nm, None) is not None})

    def quantized(src: str, name: str, area: str, feats: int, gamma: str) -> str:
        """A ternary linear's input: ABSQUANT in place (int8 linears read ``src``)."""
        if not tern:
            return src
        return b.op(p + name, "absquant", (src,), feats, area, gamma=gamma)

    def block_output(lin: str, src: str, x: str, post_norm, post_gamma: str, add) -> str:
        """o (down) and the residual stream after it: fused into the linear's epilogue, or
        into ``h`` and an unfused add (a ternary block's ``add``; Gemma 2's post-norm)."""
        unfused = add is not None if tern else post_norm is not None
        ql = getattr(ly, lin)
        if not unfused:
            return b.op(p + lin, "qlinear", (src, x), s.hidden, "x",
                        **linear_attrs(ql, "cols" if lin == "o" else ""))
        y = b.op(p + lin, "qlinear", (src,), s.hidden, "h",
                 **linear_attrs(ql, "cols" if lin == "o" else ""))
        if not tern and post_norm is not None:
            y = b.op(p + lin + "_post_norm", "rmsnorm", (y,), s.hidden, "h",
                     **_norm(post_norm), gamma=post_gamma, heads=0, last_row=False)
        a_mult, b_mult, shift = (int(v) for v in add)
        return b.op(p + lin + "_add", "qadd", (y, x), s.hidden, "x", a_mult=a_mult,
                    b_mult=b_mult, shift=shift, relu=False)

    if not tern:
        load_gammas()
    h = b.op(p + "attn_norm", "rmsnorm", (x,), s.hidden, "h", **_norm(ly.attn_norm), gamma="",
             heads=0, last_row=False)
    if tern:
        load_gammas()
    hq = quantized(h, "attn_absquant", "h", s.hidden, gam("attn_gamma"))
    q = b.op(p + "q", "qlinear", (hq,), qf, "q", **linear_attrs(ly.q, "rows"))
    k = b.op(p + "k", "qlinear", (hq,), kvf, "k", **linear_attrs(ly.k, "rows"))
    v = b.op(p + "v", "qlinear", (hq,), kvf, "v", **linear_attrs(ly.v, "rows"))
    if ly.q_norm is not None:
        q = b.op(p + "q_norm", "rmsnorm", (q,), qf, "q", **_norm(ly.q_norm),
                 gamma="q_norm_gamma", heads=s.heads, last_row=False)
        k = b.op(p + "k_norm", "rmsnorm", (k,), kvf, "k", **_norm(ly.k_norm),
                 gamma="k_norm_gamma", heads=s.kv_heads, last_row=False)
    q = b.op(p + "q_rope", "rope", (q, cs), qf, "q", heads=s.heads)
    k = b.op(p + "k_rope", "rope", (k, cs), kvf, "k", heads=s.kv_heads)
    smul, sshift, omul, oshift = (int(v) for v in ly.attn)
    w = s.window(i)
    att = b.op(p + "attn", "attention", (q, k, v), qf, "att", layer=i, smul=smul,
               sshift=sshift, omul=omul, oshift=oshift,
               window=w if 0 < w < qd.max_context else 0, cap=int(ly.attn_cap))
    if ly.attn_sub_norm is not None:
        att = b.op(p + "attn_sub_norm", "rmsnorm", (att,), qf, "att", **_norm(ly.attn_sub_norm),
                   gamma="", heads=0, last_row=False)
    att = quantized(att, "o_absquant", "att", qf, gam("attn_sub_gamma"))
    x = block_output("o", att, x, ly.post_attn_norm, "post_attn_gamma", ly.attn_add)
    h = b.op(p + "mlp_norm", "rmsnorm", (x,), s.hidden, "h", **_norm(ly.mlp_norm), gamma="",
             heads=0, last_row=False)
    hq = quantized(h, "mlp_absquant", "h", s.hidden, gam("mlp_gamma"))
    gate = b.op(p + "gate", "qlinear", (hq,), s.intermediate, "gate", **linear_attrs(ly.gate))
    up = b.op(p + "up", "qlinear", (hq,), s.intermediate, "up", **linear_attrs(ly.up))
    mult, shift = (int(v) for v in ly.silu)
    g = b.op(p + "act", "silu_mul", (gate, up), s.intermediate, "gate", act=ly.act, mult=mult,
             shift=shift)
    if ly.mlp_sub_norm is not None:
        g = b.op(p + "mlp_sub_norm", "rmsnorm", (g,), s.intermediate, "gate",
                 **_norm(ly.mlp_sub_norm), gamma="", heads=0, last_row=False)
    g = quantized(g, "down_absquant", "gate", s.intermediate, gam("mlp_sub_gamma"))
    return block_output("down", g, x, ly.post_mlp_norm, "post_mlp_gamma", ly.mlp_add)


def decoder_graph(qd: QDecoder) -> Graph:
    """The graph IR of quantized decoder ``qd`` (module docstring).

    ``graph.graph`` holds ``name``, ``family`` (``"decoder"``), ``shape`` (the
    :class:`~hwflow.compiler.decoder.DecoderShape` as a dict), ``max_context``, ``scales``
    (every tensor's float scale, for reports), ``schedule``
    (program order), ``inputs`` (none: the host writes the token ids the ``embed`` op
    gathers) and ``outputs`` (``["lm_head"]``, whose rows the host reads). Arrays are the
    decoder's own where nothing can write them (``ops.freeze_value``), copies otherwise.
    """
    b = _Builder(qd)
    s = qd.shape
    b.g.graph.update(family="decoder", shape=s.to_dict(), max_context=int(qd.max_context),
                     scales={k: float(v) for k, v in qd.scales.items()}, step="quantize")
    x = b.op("embed", "embed", (), s.hidden, "x", table=qd.embed)
    cs = b.op("rope_table", "rope_table", (), 2 * s.head_dim, "cs", table=qd.rope)
    for i in range(len(qd.layers)):
        x = _layer(b, qd, i, x, cs)
    h = b.op("final_norm", "rmsnorm", (x,), s.hidden, "h", **_norm(qd.final_norm), gamma="",
             heads=0, last_row=True)
    cap = tuple(int(v) for v in qd.final_cap) if qd.final_cap is not None else ()
    b.op("lm_head", "lm_head", (h,), s.vocab, "logits", **linear_attrs(qd.lm_head), cap=cap)
    b.g.graph.update(outputs=["lm_head"], schedule=list(b.g.nodes))
    return b.g
