"""A quantized Mamba as the graph IR: the decoder graph's op kinds plus the state-space ones
(``conv``, ``scan``, ``hadamard``), lowered by the decoder's back half
(``mapping.llm_lower``) with the rules every family shares (``mapping.emit``).

One block, in program order (``compiler.ssm_quant._block`` is the golden run it equals)::

    rmsnorm x -> h                          gamma folded into in_x, in_z
    qlinear in_x (h) -> xin, in_z (h) -> z
    conv xin -> xin                         causal conv, requantized, SiLU: u (in place)
    qlinear x_dt (u) -> dtr, x_b (u) -> b, x_c (u) -> c, dt_proj (dtr) -> dt
    scan (u, dt, b, c) -> y                 the selective scan, softplus of dt inside
    silu_mul (z, y) -> z                    g = silu(z) * y, in place
    hadamard z -> z                         the online rotation (when the block has one)
    qlinear out_proj (z, x) -> x            the residual add in the epilogue

The conv history and the scan state are held by their units, never in the activation buffer
or external memory: a layer's ``conv`` and ``scan`` name their layer, and the lowering gives
each layer its own part of the units' memories. Only Mamba-1 with 8-bit activations is lowered
so far; :func:`mamba_graph` refuses the rest in one line.
"""

from __future__ import annotations

import numpy as np

from .decoder_graph import linear_attrs
from .ir import Graph, add_op, new_graph
from .ops import Op, TensorType
from .ssm_quant import QMamba, QMamba2Layer

__all__ = ["mamba_graph", "GraphError", "MAMBA_MAX_CONTEXT"]

#: A Mamba's context is unbounded (its state does not grow); the positions a program serves
#: are those of the 32-bit POS register.
MAMBA_MAX_CONTEXT = (1 << 31) - 1
_UNIT = 1.0


class GraphError(ValueError):
    """A quantized Mamba the graph cannot express yet (Mamba-2, 4-bit activations)."""


def _norm(t) -> dict:
    eps, mult, shift = (int(v) for v in t)
    return {"eps": eps, "mult": mult, "shift": shift}


def mamba_graph(qm: QMamba) -> Graph:
    """The graph IR of quantized Mamba ``qm`` (module docstring); ``graph.graph`` as the
    decoder graph's (``family`` ``"mamba"``, ``shape`` the ``SsmShape``)."""
    if any(isinstance(ly, QMamba2Layer) for ly in qm.layers):
        raise GraphError(f"'{qm.name}': Mamba-2 blocks are not lowered yet (only Mamba-1)")
    if qm.abits != 8:
        raise GraphError(f"'{qm.name}': {qm.abits}-bit activations are not lowered yet "
                         "(the vector unit's RMSNORM writes 8 bits); quantize with abits=8")
    s = qm.shape
    C, S = s.d_inner, s.d_state
    g = new_graph(qm.name)
    g.graph.update(family="mamba", shape=s.to_dict(), max_context=MAMBA_MAX_CONTEXT,
                   scales={k: float(v) for k, v in qm.scales.items()}, step="quantize")

    def op(name: str, kind: str, inputs: tuple, features: int, area: str, **attrs) -> str:
        add_op(g, name, Op(kind, inputs, TensorType((1, features), "i8", _UNIT),
                           {"area": area, **attrs}))
        return name

    x = op("embed", "embed", (), s.hidden, "x", table=qm.embed)
    for i, ly in enumerate(qm.layers):
        p = f"L{i}."
        h = op(p + "norm", "rmsnorm", (x,), s.hidden, "h", **_norm(ly.norm), gamma="", heads=0,
               last_row=False)
        xin = op(p + "in_x", "qlinear", (h,), C, "xin", **linear_attrs(ly.in_x))
        z = op(p + "in_z", "qlinear", (h,), C, "z", **linear_attrs(ly.in_z))
        silu_mult, silu_shift = (int(v) for v in ly.silu)
        u = op(p + "conv", "conv", (xin,), C, "xin", layer=i, weight=ly.conv,
               bias=np.asarray(ly.conv_bias, np.int64), mult=np.asarray(ly.conv_mult, np.int64),
               shift=int(ly.conv_shift), silu_mult=silu_mult, silu_shift=silu_shift)
        dtr = op(p + "x_dt", "qlinear", (u,), s.dt_rank, "dtr", **linear_attrs(ly.x_dt))
        b = op(p + "x_b", "qlinear", (u,), S, "b", **linear_attrs(ly.x_b))
        c = op(p + "x_c", "qlinear", (u,), S, "c", **linear_attrs(ly.x_c))
        dt = op(p + "dt_proj", "qlinear", (dtr,), C, "dt", **linear_attrs(ly.dt_proj))
        (bu_mult, bu_shift), (y_mult, y_shift) = ((int(a), int(b_)) for a, b_ in (ly.bu, ly.y))
        y = op(p + "scan", "scan", (u, dt, b, c), C, "y", layer=i,
               a_codes=np.asarray(ly.a_codes, np.int64), d_mult=np.asarray(ly.d_mult, np.int64),
               d_shift=int(ly.d_shift), bu_mult=bu_mult, bu_shift=bu_shift, y_mult=y_mult,
               y_shift=y_shift)
        gm, gs_ = (int(v) for v in ly.gate)
        gt = op(p + "gate", "silu_mul", (z, y), C, "z", act="silu", mult=gm, shift=gs_)
        if ly.out_in is not None:
            block, mult, shift = (int(v) for v in ly.out_in)
            gt = op(p + "hadamard", "hadamard", (gt,), C, "z", lgb=block.bit_length() - 1,
                    mult=mult, shift=shift, bits=int(qm.abits))
        x = op(p + "out_proj", "qlinear", (gt, x), s.hidden, "x", **linear_attrs(ly.out_proj))
    h = op("final_norm", "rmsnorm", (x,), s.hidden, "h", **_norm(qm.final_norm), gamma="",
           heads=0, last_row=True)
    op("lm_head", "lm_head", (h,), s.vocab, "logits", **linear_attrs(qm.lm_head), cap=())
    g.graph.update(outputs=["lm_head"], schedule=list(g.nodes))
    return g
