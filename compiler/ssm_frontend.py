"""Mamba frontend: a ``torch.export`` program of a Mamba-1 language model (``transformers``'
``MambaForCausalLM``, or a Hugging Face folder of one) to a :class:`~compiler.ssm.FloatMamba`.

The recogniser reads the ATen graph the way the LLaMA-family one does
(``compiler/llm_frontend.py``, whose graph view and linear / RMSNorm recognisers it shares),
walking back from the logits along the residual stream. Layout ops (``transpose``,
``unsqueeze``, ``squeeze``, float32 casts, ``alias``, the first part of ``tensor_split`` and a
one-input ``cat``: the slow path's split of the sequence into a scanned part and an empty
sequential part) are looked through. The recognised patterns, for a block on the residual
stream ``x`` (``n`` its RMSNorm, ``T`` the exported sequence length)::

    x' = add(x, linear(mul(add(stack(y_t), mul(u, D)), silu(z)), W_out))
    x, z = chunk(linear(n, W_in) (transposed), 2, dim 1)
    u = silu(slice(conv1d(x, W_conv, b_conv, padding d_conv - 1, groups d_inner), 0..T))
    dt_in, B, C = split_with_sizes(linear(u, W_x), [dt_rank, d_state, d_state], -1)
    dt = softplus(add(matmul(W_dt, dt_in), b_dt))
    dA = exp(mul(-exp(A_log), dt)), dBu = mul(mul(dt, B), u)
    h_t = add(mul(select(dA, t), h_{t-1}), select(dBu, t)),  h_-1 = zeros
    y_t = select(matmul(h_t, select(C, t)))

The scan is checked step by step (every ``h_t`` reads ``h_{t-1}`` and the ``t``-th slices of
the same ``dA`` and ``dBu``; ``y_t`` the ``t``-th slice of ``C``). A recognised model is then
checked numerically against the program on the example tokens
(``compiler.ssm_interpret.mamba_logits``), so a variant the patterns do not see is refused, not
miscompiled. Any other op on the hidden-state path raises
:class:`~compiler.errors.UnsupportedOpError` naming the op and the source line.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from .errors import FrontendError
from .llm_frontend import _Graph, _int, _match_linear, _match_rmsnorm, _opname, _unsupported
from .ssm import FloatMamba, FloatMambaLayer, SsmShape

__all__ = ["mamba_from_exported_program", "load_mamba", "EXAMPLE_TOKENS"]

#: Tokens of the example a model is exported and checked with (the scan is unrolled over them).
EXAMPLE_TOKENS = 5
#: Largest |logit difference| of the recognised model against the program, relative to the
#: logits' scale: float32 program against the float64 reference.
_TOLERANCE = 1e-3
#: Ops that only move or view data: looked through on the way back.
_LAYOUT = {"transpose", "unsqueeze", "squeeze", "to", "_to_copy", "alias", "clone",
           "contiguous", "detach", "view", "reshape", "_unsafe_view"}


def _src(G: _Graph, node):
    """``node`` looked through layout ops, ``getitem(tensor_split(x), 0)`` and ``cat([x])``."""
    while getattr(node, "op", None) == "call_function":
        name = _opname(node)
        if name in _LAYOUT:
            G.used.add(node)
            node = node.args[0]
        elif name == "cat" and len(node.args[0]) == 1:
            G.used.add(node)
            node = node.args[0][0]
        elif (name == "getitem" and node.args[1] == 0
              and G.is_call(node.args[0], "tensor_split")):
            G.used.update((node, node.args[0]))
            node = node.args[0].args[0]
        else:
            break
    return node


def _call(G: _Graph, node, *names, what: str):
    """``node`` (through layout ops) as a call of one of ``names``, marked used."""
    return G.expect(_src(G, node), *names, what=what)


def _operands(G: _Graph, node, name: str, what: str):
    """The two operands of a binary call, the call of op ``name`` (through layout ops) first;
    neither: the op found where ``what`` was expected is named."""
    a, b = node.args[0], node.args[1]
    if G.is_call(_src(G, a), name):
        return a, b
    if G.is_call(_src(G, b), name):
        return b, a
    found = [n for n in (_src(G, a), _src(G, b)) if getattr(n, "op", None) == "call_function"]
    raise _unsupported(found[0] if found else node, f"expected {what}")


def _const(G: _Graph, node, what: str) -> np.ndarray:
    v = G.const(_src(G, node))
    if v is None:
        raise FrontendError(f"the {what} is not a constant of the program")
    return v


def _part(G: _Graph, node, what: str) -> tuple:
    """``getitem(chunk(transpose(linear(n, W)), 2, 1), i)`` -> (linear node, i)."""
    gi = _src(G, node)
    if not (G.is_call(gi, "getitem") and G.is_call(gi.args[0], "chunk")):
        raise _unsupported(gi, f"{what}: expected a half of the in-projection")
    ch = gi.args[0]
    if int(ch.args[1]) != 2:
        raise _unsupported(ch, f"{what}: the in-projection splits in two")
    G.used.update((gi, ch))
    return _call(G, ch.args[0], "linear", what="the in-projection"), int(gi.args[1])


def _match_scan(G: _Graph, stack, where: str) -> tuple:
    """``stack([y_0 .. y_T-1], -1)`` -> (dA node, dBu node, C node): the scan, step by step."""
    ys = stack.args[0]
    h_prev, dA, dBu, C = None, None, None, None
    for t, y in enumerate(ys):
        sel = _call(G, y, "select", what=f"{where} scan output {t}")
        mm = _call(G, sel.args[0], "matmul", what=f"{where} scan output h @ C")
        h = _call(G, mm.args[0], "add", what=f"{where} scan state update")
        c_t = _call(G, mm.args[1], "select", what=f"{where} C of step {t}")
        decay, inp = _operands(G, h, "mul", f"{where} the decayed state")
        mul = _call(G, decay, "mul", what=f"{where} decayed state")
        a_t, prev = _operands(G, mul, "select", f"{where} dA[t]")
        a_t, b_t = _call(G, a_t, "select", what="dA[t]"), _call(G, inp, "select", what="dBu[t]")
        for s in (a_t, b_t, c_t):
            if _int(s.args[2]) != t:
                raise _unsupported(s, f"{where}: scan step {t} reads another step's slice")
        prev = _src(G, prev)
        if t == 0:
            if not G.is_call(prev, "zeros", "new_zeros"):
                raise _unsupported(prev, f"{where}: the scan must start from a zero state")
            G.used.add(prev)
            dA, dBu, C = _src(G, a_t.args[0]), _src(G, b_t.args[0]), _src(G, c_t.args[0])
        elif prev is not h_prev or _src(G, a_t.args[0]) is not dA \
                or _src(G, b_t.args[0]) is not dBu or _src(G, c_t.args[0]) is not C:
            raise _unsupported(h, f"{where}: scan step {t} is not the previous step's update")
        h_prev = h
    return dA, dBu, C


def _match_block(G: _Graph, add, i: int):
    """Block ``i`` whose output is ``add`` -> (its FloatMambaLayer, its RMSNorm's eps)."""
    where = f"block {i}"
    G.used.add(add)
    branch, x = _operands(G, add, "linear", f"the {where} out-projection")
    out = _call(G, branch, "linear", what=f"the {where} out-projection")
    w_out = _const(G, out.args[1], f"{where} out-projection weight")
    b_out = G.const(out.args[2]) if len(out.args) > 2 and out.args[2] is not None else None
    gated = _call(G, out.args[0], "mul", what=f"the {where} gate")
    ssm, gate = _operands(G, gated, "add", f"the {where} scan output + D u")
    z_lin, z_half = _part(G, _call(G, gate, "silu", what=f"{where} silu(z)").args[0], where)
    ssm = _call(G, ssm, "add", what=f"the {where} scan output + D u")
    stack, skip = _operands(G, ssm, "stack", f"the {where} scan")
    dA, dBu, C = _match_scan(G, _call(G, stack, "stack", what="the scan"), where)
    skip = _call(G, skip, "mul", what=f"{where} D * u")
    u, d = _operands(G, skip, "silu", f"{where} silu(conv)")
    D = _const(G, d, f"{where} D")
    u = _call(G, u, "silu", what=f"{where} silu(conv)")
    sl = _call(G, u.args[0], "slice", what=f"{where} the conv's causal part")
    conv = _call(G, sl.args[0], "conv1d", what=f"{where} the depthwise conv1d")
    x_lin, x_half = _part(G, conv.args[0], where)
    if x_lin is not z_lin or (x_half, z_half) != (0, 1):
        raise _unsupported(conv, f"{where}: x and z must be the in-projection's two halves")
    w_conv = _const(G, conv.args[1], f"{where} conv weight")
    b_conv = G.const(conv.args[2]) if len(conv.args) > 2 and conv.args[2] is not None else None
    d_inner = w_conv.shape[0]
    groups = _int(conv.args[6]) if len(conv.args) > 6 else 1
    if groups != d_inner or w_conv.ndim != 3 or w_conv.shape[1] != 1:
        raise _unsupported(conv, f"{where}: the conv must be depthwise ({d_inner} groups)")
    d_conv = w_conv.shape[2]
    if list(conv.args[4]) != [d_conv - 1] or _int(sl.args[2]) != 0:
        raise _unsupported(conv, f"{where}: the conv must be causal (padding {d_conv - 1}, "
                                 "the first tokens kept)")
    # dA = exp(A * dt), dBu = (dt * B) * u
    e = _call(G, dA, "exp", what=f"{where} exp(A dt)")
    a_dt = _call(G, e.args[0], "mul", what=f"{where} A dt")
    a_node, dt = _operands(G, a_dt, "neg", f"{where} -exp(A_log)")
    neg = _call(G, a_node, "neg", what=f"{where} -exp(A_log)")
    A = -np.exp(_const(G, _call(G, neg.args[0], "exp", what="exp(A_log)").args[0], "A_log"))
    sp = _call(G, dt, "softplus", what=f"{where} softplus(dt)")
    dt_add = _call(G, sp.args[0], "add", what=f"{where} dt + dt bias")
    dt_mm, dt_b = _operands(G, dt_add, "matmul", f"{where} dt_proj")
    dt_mm = _call(G, dt_mm, "matmul", what=f"{where} dt_proj")
    w_dt, dt_bias = _const(G, dt_mm.args[0], "dt_proj weight"), _const(G, dt_b, "dt bias")
    dbu = _call(G, dBu, "mul", what=f"{where} dt B u")
    dtb, u2 = _operands(G, dbu, "mul", f"{where} dt B")
    if _src(G, u2) is not u:
        raise _unsupported(dbu, f"{where}: dt B must multiply the conv output u")
    dtb = _call(G, dtb, "mul", what=f"{where} dt B")
    dt2, b_part = _operands(G, dtb, "softplus", f"{where} softplus(dt)")
    if _src(G, dt2) is not sp:
        raise _unsupported(dtb, f"{where}: B must be scaled by the same dt")
    # dt_in, B and C: the parts of one x-projection of u
    parts = [_match_linear(G, _src(G, p), f"{where} {nm}")
             for nm, p in (("dt_in", dt_mm.args[1]), ("B", b_part), ("C", C))]
    if any(_src(G, xp) is not u for xp, _w, _b in parts) or any(b is not None
                                                                for _x, _w, b in parts):
        raise _unsupported(dtb, f"{where}: dt_in, B and C must be parts of one bias-free "
                                "linear of u")
    w_dtin, w_b, w_c = (w for _x, w, _b in parts)
    _n, gamma, eps = _match_rmsnorm(G, x_lin.args[0], where)
    w_in = _const(G, x_lin.args[1], f"{where} in-projection weight")
    b_in = G.const(x_lin.args[2]) if len(x_lin.args) > 2 and x_lin.args[2] is not None else None
    layer = FloatMambaLayer(
        norm=gamma, in_proj=w_in, conv=w_conv[:, 0, :], conv_bias=b_conv,
        x_proj=np.concatenate([w_dtin, w_b, w_c]), dt_proj=w_dt, dt_bias=dt_bias.reshape(-1),
        A=A, D=D.reshape(-1), out_proj=w_out, in_bias=b_in, out_bias=b_out)
    return layer, eps


def mamba_from_exported_program(ep, name: str = "model", source: str = "") -> FloatMamba:
    """Recognise a Mamba-1 language model in ``ep`` (``input_ids`` -> logits first).

    Raises
    ------
    FrontendError, UnsupportedOpError
        The graph is not a recognised Mamba model (naming the op and the source line).
    """
    G = _Graph(ep, "Mamba model")
    out = next(n for n in ep.graph.nodes if n.op == "output").args[0][0]
    xf, w_head, b_head = _match_linear(G, out, "the LM head")
    if b_head is not None:
        raise _unsupported(_src(G, out), "the LM head has a bias")
    x, gamma_f, eps = _match_rmsnorm(G, xf, "final")
    x, adds = _src(G, x), []
    while G.is_call(x, "add"):     # the residual stream back to the embedding: the blocks
        adds.append(x)
        x = _src(G, _operands(G, x, "linear", "a block's out-projection")[1])
    if not G.is_call(x, "embedding"):
        raise _unsupported(x, "expected a block's residual add or the embedding")
    blocks = [_match_block(G, add, len(adds) - 1 - k) for k, add in enumerate(adds)][::-1]
    if any(e != eps for _ly, e in blocks):
        raise FrontendError(f"the RMSNorms' eps differ ({sorted({e for _ly, e in blocks})} and "
                            f"{eps}); one eps per model is supported")
    layers = [ly for ly, _e in blocks]
    emb = _const(G, x.args[0], "embedding table")
    ly = layers[0]
    d_inner, d_state = ly.A.shape
    shape = SsmShape(vocab=emb.shape[0], hidden=emb.shape[1], layers=len(layers),
                     d_inner=d_inner, d_state=d_state, d_conv=ly.conv.shape[1],
                     dt_rank=ly.dt_proj.shape[1], rms_eps=eps)
    return FloatMamba(name=name, shape=shape, embed=emb, layers=layers, final_norm=gamma_f,
                      lm_head=w_head, source=source)


def _check_numerics(fm: FloatMamba, model, ids: torch.Tensor, where: str) -> None:
    """The recognised model reproduces the program's logits on ``ids``."""
    from .ssm_interpret import mamba_logits

    with torch.no_grad():
        want = model(ids).logits[0].numpy().astype(np.float64)
    got = mamba_logits(fm, ids[0].tolist())
    err = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want))) or 1.0
    if not err <= _TOLERANCE * scale:
        raise FrontendError(f"{where}: the recognised Mamba model differs from the program by "
                            f"{err:.3g} (logits up to {scale:.3g}); a variant outside the "
                            "recognised patterns")


def load_mamba(folder) -> FloatMamba:
    """Load a Hugging Face ``MambaForCausalLM`` folder (``config.json`` + ``*.safetensors``,
    read offline; pickled weights are never loaded) as a :class:`FloatMamba`: the model is
    built by ``transformers`` in float32, exported with :data:`EXAMPLE_TOKENS` token ids,
    recognised and checked against its own logits.

    Raises
    ------
    FrontendError
        Not a Mamba folder, no safetensors, or a model the recogniser refuses.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise FrontendError(f"{folder}: not a Hugging Face model folder (config.json and "
                            "*.safetensors, as save_pretrained writes them)")
    import transformers

    transformers.utils.logging.disable_progress_bar()   # hwflow prints its own summary
    transformers.utils.logging.set_verbosity_error()    # the kernels' "falling back" notes
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001
        raise FrontendError(f"{folder}: transformers cannot load it "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if model.config.model_type != "mamba":
        raise FrontendError(f"{folder}: model_type '{model.config.model_type}' is not mamba")
    model.eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, EXAMPLE_TOKENS), generator=g)
    with torch.no_grad():
        ep = torch.export.export(model, (ids,), kwargs={"use_cache": False}, strict=False)
    name = re.sub(r"\W", "_", folder.name) or "model"
    fm = mamba_from_exported_program(ep, name=name, source=f"hf:{folder}")
    _check_numerics(fm, model, ids, str(folder))
    return fm
