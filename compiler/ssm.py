"""The selective state-space model IR: a Mamba (Mamba-1) or Mamba-2 language model as recognised
by the frontend (``compiler/ssm_frontend.py``; Mamba-2 from ``transformers``' parameters so far),
in float32.

Like the decoder IR (``compiler/decoder.py``), a Mamba model is a fixed repetition of one block,
so its float IR is structured: an embedding, ``layers`` blocks, a final RMSNorm and the LM head.
Block ``x -> x + out_proj(mixer(rms(x) * norm))`` with the mixer (Gu & Dao, "Mamba", 2023;
``transformers``' ``MambaMixer``), for a sequence of tokens ``t``::

    xz = in_proj(n)                        [2 * d_inner]: x = xz[:d_inner], z = xz[d_inner:]
    u = silu(causal_conv1d(x))             depthwise over the last d_conv tokens, with bias
    dt_in, B, C = split(x_proj(u), [dt_rank, d_state, d_state])
    dt = softplus(dt_proj(dt_in) + dt_bias)                       [d_inner]
    h[t] = exp(dt * A) * h[t-1] + (dt * B) * u      per channel c and state s: [d_inner, d_state]
    y = h[t] @ C + D * u
    out = out_proj(y * silu(z))

The Mamba-2 mixer (Dao & Gu, "Transformers are SSMs", 2024; ``transformers``'
``Mamba2Mixer``): ``H`` heads of ``P`` channels (``d_inner = H * P``), ``G`` groups of ``B``/``C``
(head ``h`` reads group ``h // (H / G)``), one scalar decay per head::

    z, xBC, dt_in = split(in_proj(n), [d_inner, d_inner + 2 * G * N, H])
    x, B, C = split(silu(causal_conv1d(xBC)), [d_inner, G * N, G * N])
    dt = clamp(softplus(dt_in + dt_bias), dt_limit)                              [H]
    h[t] = exp(dt * A) * h[t-1] + dt * x B       per head: [P, N] (x [P], B [N] of its group)
    y = h[t] @ C + D * x
    out = out_proj(rmsnorm_per_group(y * silu(z)) * gate_norm)       groups of d_inner / G

Conventions: linear weights are ``[out_features, in_features]`` (torch layout); ``A`` is the
negative real decay ``-exp(A_log)`` (``[d_inner, d_state]``; Mamba-2: ``[H]``); the conv weight
is ``[channels, d_conv]`` with tap ``d_conv - 1`` on the current token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SsmShape", "FloatMambaLayer", "FloatMamba2Layer", "FloatMamba"]


@dataclass(frozen=True)
class SsmShape:
    """Architecture numbers of a Mamba model."""

    vocab: int
    hidden: int          # d_model
    layers: int
    d_inner: int         # expand * d_model
    d_state: int
    d_conv: int
    dt_rank: int         # Mamba-1's dt projection rank (0 for Mamba-2)
    rms_eps: float
    heads: int = 0       # Mamba-2: heads H (0: Mamba-1)
    head_dim: int = 0    # Mamba-2: P = d_inner / H
    groups: int = 0      # Mamba-2: B/C groups G

    @property
    def conv_dim(self) -> int:
        """Channels of the causal conv: ``x`` (Mamba-1), ``x``, ``B`` and ``C`` (Mamba-2)."""
        return self.d_inner + 2 * self.groups * self.d_state

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class FloatMambaLayer:
    """One Mamba block in float32 (module docstring); biases are None where the model has
    none (``use_bias`` of in/out projections, ``use_conv_bias``)."""

    norm: np.ndarray            # [hidden] RMSNorm gamma
    in_proj: np.ndarray         # [2 * d_inner, hidden]
    conv: np.ndarray            # [d_inner, d_conv]
    conv_bias: np.ndarray | None
    x_proj: np.ndarray          # [dt_rank + 2 * d_state, d_inner]
    dt_proj: np.ndarray         # [d_inner, dt_rank]
    dt_bias: np.ndarray         # [d_inner]
    A: np.ndarray               # [d_inner, d_state], -exp(A_log)
    D: np.ndarray               # [d_inner]
    out_proj: np.ndarray        # [hidden, d_inner]
    in_bias: np.ndarray | None = None
    out_bias: np.ndarray | None = None


@dataclass
class FloatMamba2Layer:
    """One Mamba-2 block in float32 (module docstring)."""

    norm: np.ndarray            # [hidden] RMSNorm gamma
    in_proj: np.ndarray         # [2 * d_inner + 2 * G * N + H, hidden]: z, xBC, dt
    conv: np.ndarray            # [conv_dim, d_conv]
    conv_bias: np.ndarray | None
    dt_bias: np.ndarray         # [H]
    A: np.ndarray               # [H], -exp(A_log)
    D: np.ndarray               # [H]
    gate_norm: np.ndarray       # [d_inner] the gated RMSNorm's gamma
    out_proj: np.ndarray        # [hidden, d_inner]
    in_bias: np.ndarray | None = None
    out_bias: np.ndarray | None = None
    dt_limit: tuple = (0.0, float("inf"))


@dataclass
class FloatMamba:
    """The recognised float model: embedding, blocks, final RMSNorm, LM head."""

    name: str
    shape: SsmShape
    embed: np.ndarray           # [vocab, hidden]
    layers: list
    final_norm: np.ndarray      # [hidden] gamma
    lm_head: np.ndarray         # [vocab, hidden]
    source: str = ""
    family: str = "mamba"       # or "mamba2"
