"""Float reference runs of the Mamba IR (``compiler/ssm.py``): the whole sequence at once
(:func:`mamba_logits`) and recurrent decode one token at a time (:func:`mamba_step`).

Both are the same float64 block on a :class:`MambaState` (the sequence starts from the empty
one), so a prompt run token by token through :func:`mamba_step` gives the rows of
:func:`mamba_logits` up to float64 rounding. The semantics are ``transformers``' torch path
(``MambaMixer`` without the CUDA kernels): ``causal_conv1d_fn`` (bias inside the conv, then
SiLU), the sequential ``mamba_selective_scan`` from a zero state, ``F.softplus`` with its
threshold of 20, and the residual added after the mixer. Mamba-2 (``Mamba2Mixer``'s torch
path): the same conv over ``x``, ``B`` and ``C``, the scan per head from a zero state (its
chunked form is the same recurrence), ``dt`` clamped to ``dt_limit``, the gated RMSNorm per
group of ``d_inner / G`` channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .llm_interpret import _lin, _rms
from .ssm import FloatMamba, FloatMamba2Layer, FloatMambaLayer, SsmShape

__all__ = ["MambaState", "mamba_logits", "mamba_step", "mamba_record"]

#: ``torch.nn.functional.softplus``'s default threshold: above it softplus is the identity.
#: Kept so that a large ``dt`` matches torch exactly (``log1p(exp(x))`` differs from ``x`` by
#: ``exp(-x)``, 2e-9 at the threshold), and so ``exp`` never overflows.
_SOFTPLUS_THRESHOLD = 20.0


@dataclass(frozen=True)
class MambaState:
    """The recurrent state of a Mamba model after some tokens, float64, per layer.

    Attributes
    ----------
    conv : list of numpy.ndarray
        ``[conv_dim, d_conv - 1]`` per layer: the conv's inputs (Mamba-1: the ``x`` half of
        ``in_proj``; Mamba-2: ``x``, ``B``, ``C``) of the last ``d_conv - 1`` tokens, oldest
        first; zeros before the first token (the conv's zero padding).
    ssm : list of numpy.ndarray
        ``[d_inner, d_state]`` per layer (Mamba-2: ``[H, P, d_state]``): the scan state ``h``.
    """

    conv: list
    ssm: list

    @classmethod
    def empty(cls, fm: FloatMamba) -> MambaState:
        """The state before the first token: zeros in every layer."""
        s = fm.shape
        h = (s.heads, s.head_dim, s.d_state) if s.heads else (s.d_inner, s.d_state)
        return cls(conv=[np.zeros((s.conv_dim, s.d_conv - 1)) for _ in range(s.layers)],
                   ssm=[np.zeros(h) for _ in range(s.layers)])


def _skip(**_tensors) -> None:
    """The default ``rec``: nothing is recorded."""


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _softplus(x: np.ndarray) -> np.ndarray:
    """``F.softplus(x)`` (beta 1, threshold :data:`_SOFTPLUS_THRESHOLD`), float64."""
    big = x > _SOFTPLUS_THRESHOLD
    return np.where(big, x, np.log1p(np.exp(np.where(big, 0.0, x))))


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _conv(ly: FloatMambaLayer, x: np.ndarray, conv_state: np.ndarray, rec=_skip):
    """The causal depthwise conv and its SiLU on rows ``x [T, d_inner]`` after the inputs
    held in ``conv_state`` (:class:`MambaState`); returns ``(u [T, d_inner], new conv
    state)``. Tap ``d_conv - 1`` multiplies the current token, tap 0 the oldest."""
    t = x.shape[0]
    w = _f64(ly.conv)
    d_conv = w.shape[1]
    # rows: the d_conv - 1 held inputs then the T new ones; output t reads rows t .. t+d_conv-1
    win = np.concatenate([conv_state.T, x], axis=0)
    c = sum(win[k:k + t] * w[:, k] for k in range(d_conv))
    if ly.conv_bias is not None:     # torch's conv1d adds its bias before the activation
        c = c + _f64(ly.conv_bias)
    rec(c=c)
    return _silu(c), win[t:].T.copy()


def _scan(s: SsmShape, ly: FloatMambaLayer, u: np.ndarray, h: np.ndarray, rec=_skip):
    """The selective scan of rows ``u [T, d_inner]`` from the state ``h [d_inner, d_state]``;
    returns ``(y [T, d_inner], new h)`` with ``y`` including the ``D`` skip, before the gate."""
    xp = _lin(u, ly.x_proj)
    dt_in, b, c = np.split(xp, [s.dt_rank, s.dt_rank + s.d_state], axis=-1)
    dt_pre = _lin(dt_in, ly.dt_proj, ly.dt_bias)
    dt = _softplus(dt_pre)          # [T, d_inner]
    rec(dt_in=dt_in, B=b, C=c, dt_pre=dt_pre)
    a, d = _f64(ly.A), _f64(ly.D)
    y = np.empty_like(u)
    # one token after the other, as the recurrence the hardware runs (and torch's fallback);
    # the decays of the whole sequence at once would be T x d_inner x d_state floats
    for i in range(u.shape[0]):
        dti = dt[i][:, None]
        h = np.exp(dti * a) * h + (dti * b[i][None, :]) * u[i][:, None]
        y[i] = h @ c[i] + d * u[i]
        rec(h=h)
    rec(y=y)
    return y, h


def _block(s: SsmShape, ly: FloatMambaLayer, x: np.ndarray, conv_state, h, rec=_skip):
    """One Mamba block on the residual stream ``x [T, hidden]`` after the tokens summarized by
    ``(conv_state, h)``; returns ``(x after the block, conv_state, h)``, new arrays. ``rec``
    is called with the block's intermediate tensors by name (the quantizer's calibration)."""
    n0 = _rms(x, s.rms_eps)
    n = n0 * _f64(ly.norm)
    xz = _lin(n, ly.in_proj, ly.in_bias)
    xin, z = xz[:, :s.d_inner], xz[:, s.d_inner:]
    u, conv_state = _conv(ly, xin, conv_state, rec)
    y, h = _scan(s, ly, u, h, rec)
    g = y * _silu(z)
    rec(x=x, n0=n0, xin=xin, z=z, u=u, g=g)
    return x + _lin(g, ly.out_proj, ly.out_bias), conv_state, h


def _block2(s: SsmShape, ly: FloatMamba2Layer, x: np.ndarray, conv_state, h, rec=_skip):
    """One Mamba-2 block (``compiler/ssm.py``), as :func:`_block`."""
    n0 = _rms(x, s.rms_eps)
    p = _lin(n0 * _f64(ly.norm), ly.in_proj, ly.in_bias)
    z, xbc, dt_in = np.split(p, [s.d_inner, s.d_inner + s.conv_dim], axis=-1)
    u, conv_state = _conv(ly, xbc, conv_state, rec)
    xs, b, c = np.split(u, [s.d_inner, s.d_inner + s.groups * s.d_state], axis=-1)
    dt_pre = dt_in + _f64(ly.dt_bias)
    dt = np.clip(_softplus(dt_pre), *ly.dt_limit)                           # [T, H]
    H, P, N, per = s.heads, s.head_dim, s.d_state, s.heads // s.groups
    a, d = _f64(ly.A), _f64(ly.D)
    y = np.empty_like(xs)
    for i in range(xs.shape[0]):            # the recurrence, one token after the other
        xh = xs[i].reshape(H, P)
        bh = np.repeat(b[i].reshape(s.groups, N), per, axis=0)               # [H, N]
        ch = np.repeat(c[i].reshape(s.groups, N), per, axis=0)
        h = np.exp(dt[i] * a)[:, None, None] * h + \
            (dt[i][:, None] * xh)[:, :, None] * bh[:, None, :]
        y[i] = (np.einsum("hpn,hn->hp", h, ch) + d[:, None] * xh).reshape(-1)
        rec(h=h)
    v = y * _silu(z)
    vg = v.reshape(-1, s.groups, s.d_inner // s.groups)
    g = (vg / np.sqrt(np.mean(vg * vg, axis=-1, keepdims=True) + s.rms_eps)).reshape(v.shape)
    rec(x=x, n0=n0, xin=xbc, z=z, u=xs, dt_pre=dt_pre, B=b, C=c, y=y, v=v, g=g)
    return x + _lin(g * _f64(ly.gate_norm), ly.out_proj, ly.out_bias), conv_state, h


def _run(fm: FloatMamba, ids, state: MambaState, record=None):
    """Logits ``[T, vocab]`` of the tokens ``ids`` following ``state``, and the state after
    them (``state`` itself is left as it is); ``record(layer, **tensors)`` sees every
    block's intermediate tensors (layer ``len(fm.layers)``: the final norm's input and
    output)."""
    s = fm.shape
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    # the rows first: a float64 copy of the whole table would be vocab x hidden
    x = _f64(np.asarray(fm.embed)[ids])
    conv, ssm = [], []
    for i, ly in enumerate(fm.layers):
        rec = _skip if record is None else (lambda i=i, **t: record(i, **t))
        block = _block2 if isinstance(ly, FloatMamba2Layer) else _block
        x, c, h = block(s, ly, x, state.conv[i], state.ssm[i], rec)
        conv.append(c)
        ssm.append(h)
    n0 = _rms(x, s.rms_eps)
    logits = _lin(n0 * _f64(fm.final_norm), fm.lm_head)
    if record is not None:
        record(len(fm.layers), x=x, n0=n0, logits=logits)
    return logits, MambaState(conv=conv, ssm=ssm)


def mamba_logits(fm: FloatMamba, ids) -> np.ndarray:
    """Float64 logits of the token ids ``ids`` as one sequence from the empty state.

    Parameters
    ----------
    fm : FloatMamba
    ids : sequence of int

    Returns
    -------
    numpy.ndarray
        float64 ``[len(ids), vocab]``: row ``t`` predicts token ``t + 1``.
    """
    return _run(fm, ids, MambaState.empty(fm))[0]


def mamba_step(fm: FloatMamba, state: MambaState, token_id: int):
    """One token of recurrent decode.

    Parameters
    ----------
    fm : FloatMamba
    state : MambaState
        The state after the previous tokens (:meth:`MambaState.empty` before the first);
        not modified.
    token_id : int

    Returns
    -------
    logits : numpy.ndarray
        float64 ``[vocab]`` after ``token_id``.
    state : MambaState
        The state after ``token_id``.
    """
    logits, new = _run(fm, [int(token_id)], state)
    return logits[0], new


def mamba_record(fm: FloatMamba, ids, record) -> np.ndarray:
    """:func:`mamba_logits` calling ``record(layer, **tensors)`` with every block's
    intermediate tensors (``x`` its input, ``n0`` its RMSNorm before the gamma, ``xin``,
    ``z``, ``c`` the conv's output before SiLU, ``u``, ``dt_in``, ``B``, ``C``, ``dt_pre``,
    ``h`` after each token, ``y``,
    ``g`` the gated output; Mamba-2: ``xin`` is the conv's whole input, ``u`` the ``x`` part of
    its output, ``dt_pre`` softplus' input, ``v`` the gated output, ``g`` its group RMSNorm
    before the gamma, what the out-projection reads; layer ``len(fm.layers)``: ``x``, ``n0``
    and ``logits`` of the final norm and LM head): the quantizer's calibration run."""
    return _run(fm, ids, MambaState.empty(fm), record)[0]
