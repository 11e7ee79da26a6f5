"""Quantize a float Mamba or Mamba-2 model (:class:`~compiler.ssm.FloatMamba`) to W8A8 or W4A4
integers (:class:`QMamba`) and run it exactly as the hardware is to (:func:`qmamba_logits`,
:func:`qmamba_step`: ``golden.ssm``, ``golden.llm``, ``golden.int8`` and nothing else).

Scales are static, calibrated on a float run over random token sequences
(``compiler.ssm_interpret.mamba_record``): per tensor ``absmax / 127`` for int8 activations,
``absmax / 2**23`` for the int32 scan state (eight bits of headroom under int32 and 23 bits of
precision, so the products of ``golden.ssm.scan_step`` stay in int64). Fixed scales where a ROM
reads the tensor: the conv output and the gate ``z`` at 1/16 (the SiLU ROM), the dt
projection's output at 1/16 (the softplus ROM). RMSNorm gammas are folded into the
in-projection (the final one into the LM head), the residual add into the out-projection's
epilogue.

LightMamba's rotation-assisted quantization (Wei et al., DATE 2025; the QuaRot idea): the
residual stream is rotated offline (:func:`rotate_residual`, folded into the weights), and the
out-projection's input ``g = y * silu(z)`` (Mamba-2: its group RMSNorm), which no weight can
absorb a rotation into, passes an
online Walsh-Hadamard transform (``golden.ssm.hadamard``, blocks of
``golden.ssm.hadamard_block(d_inner)``) whose transpose is folded into the out-projection.

W4A4 (``wbits=4, abits=4``): every linear's weights are int4 codes with group scales
(``golden.int4``, groups of 32 along the input); the activations the big linears read, the
in-projection's (the block's RMSNorm) and the out-projection's (after the Hadamard), are 4-bit
(-8..7), their static scales chosen to minimize the calibration sample's mean squared error over
clipping ratios (:func:`_scale4`): a 4-bit absmax/7 would spend most of the 16 levels on a few
outliers. The small x and dt projections read ``u`` at 8 bits (the scan needs it at 8 bits
anyway), the LM head the final norm at 8 bits. The SSM itself stays as in W8A8.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from hwflow.golden import int8 as g8
from hwflow.golden import llm as gl
from hwflow.golden import ssm as gs

from .decoder import QLinear
from .llm_quant import _norm_params, _qlinear, _silu_params
from .ssm import FloatMamba, SsmShape
from .ssm_interpret import mamba_record

__all__ = ["QMambaLayer", "QMamba2Layer", "QMamba", "QMambaState", "quantize_mamba",
           "qmamba_logits", "qmamba_run", "qmamba_step", "rotation", "rotate_residual",
           "CALIB_SEQUENCES", "CALIB_TOKENS"]

#: Calibration: random token sequences of this many tokens.
CALIB_SEQUENCES = 4
CALIB_TOKENS = 32
#: The scan state's int32 code for its calibrated absmax.
_H_CODE = float(1 << 23)


@dataclass
class QMambaLayer:
    """One Mamba block in integers (``golden.ssm`` for the formats)."""

    norm: tuple                 # rmsnorm (eps, mult, shift); gamma folded into in_x, in_z
    in_x: QLinear               # n -> the conv's input
    in_z: QLinear               # n -> the gate z, at 1/16
    conv: np.ndarray            # int8 [d_inner, d_conv]
    conv_bias: np.ndarray       # int32 [d_inner]
    conv_mult: np.ndarray       # u16 [d_inner]
    conv_shift: int
    silu: tuple                 # u = gate_mul(c, 1, mult, shift)
    x_dt: QLinear               # u -> dt_in
    x_b: QLinear                # u -> B
    x_c: QLinear                # u -> C
    dt_proj: QLinear            # dt_in -> softplus input, at 1/16
    a_codes: np.ndarray         # [d_inner, d_state] golden.ssm.decay_rate_codes
    bu: tuple                   # (mult, shift): dt * B * u into the state's scale
    y: tuple                    # (mult, shift): h @ C into y's scale
    d_mult: np.ndarray          # signed [d_inner]: D * u into y's scale
    d_shift: int
    gate: tuple                 # silu_mul(z, y) (mult, shift)
    #: the out-projection's input: None, ``g`` itself (W8A8 without rotation); else ``(block,
    #: mult, shift)``: ``requantize(hadamard(g, block), 0, mult, shift, bits=abits)``
    #: (block 1 without rotation: ``g`` narrowed to 4 bits)
    out_in: tuple | None
    out_proj: QLinear           # with the residual stream


@dataclass
class QMamba2Layer:
    """One Mamba-2 block in integers (``compiler/ssm.py``; the scan is ``golden.ssm.scan_step``
    per group, its per-head ``dt`` and decay rate repeated over the head's channels)."""

    norm: tuple                 # rmsnorm; gamma folded into in_z, in_xbc, in_dt
    in_z: QLinear               # n -> the gate z, at 1/16
    in_xbc: QLinear             # n -> the conv's input (x, B, C)
    in_dt: QLinear              # n -> softplus input at 1/16, dt_bias in its bias
    conv: np.ndarray            # int8 [conv_dim, d_conv]
    conv_bias: np.ndarray       # int32 [conv_dim]
    conv_mult: np.ndarray       # u16 [conv_dim]
    conv_shift: int
    silu: tuple                 # (x, B, C): gate_mul(c, 1, mult, shift) into each one's scale
    dt_limit: tuple             # the clamp of dt in golden.ssm's dt codes
    a_codes: np.ndarray         # [H] golden.ssm.decay_rate_codes of A
    bu: tuple
    y: tuple
    d_mult: np.ndarray          # signed [d_inner]: D of each channel's head
    d_shift: int
    gate: tuple                 # silu_mul(z, y) (mult, shift)
    gnorm: tuple                # rmsnorm of each group of silu_mul's output, gamma folded
    out_in: tuple | None        # as QMambaLayer's
    out_proj: QLinear


@dataclass
class QMamba:
    """The quantized model: what the golden run computes and the mapper is to lower."""

    name: str
    shape: SsmShape
    embed: np.ndarray           # int8 [vocab, hidden] at scales["x0"]
    layers: list
    final_norm: tuple
    lm_head: QLinear
    scales: dict = field(default_factory=dict)
    wbits: int = 8              # every linear's weights: 8, or 4 (golden.int4)
    abits: int = 8              # the in- and out-projections' activations: 8 or 4


@dataclass(frozen=True)
class QMambaState:
    """The integer recurrent state per layer: the conv's last ``d_conv - 1`` int8 inputs and
    the int32 scan state."""

    conv: list
    ssm: list

    @classmethod
    def empty(cls, qm: QMamba) -> QMambaState:
        s = qm.shape
        return cls([np.zeros((s.d_conv - 1, s.conv_dim), np.int8) for _ in range(s.layers)],
                   [np.zeros((s.d_inner, s.d_state), np.int64) for _ in range(s.layers)])


def rotation(n: int, seed: int = 0) -> np.ndarray:
    """An ``n x n`` orthogonal matrix: the normalized Sylvester Hadamard matrix when ``n`` is
    a power of two, else the Q of a seeded Gaussian matrix's QR (signs fixed)."""
    if n & (n - 1) == 0:
        h = np.ones((1, 1))
        while h.shape[0] < n:
            h = np.block([[h, h], [h, -h]])
        return h / np.sqrt(n)
    q, r = np.linalg.qr(np.random.default_rng([seed, 1]).standard_normal((n, n)))
    return q * np.sign(np.diag(r))[None, :]


def rotate_residual(fm: FloatMamba, seed: int = 0) -> FloatMamba:
    """The same model with its residual stream rotated by an orthogonal ``R``
    (:func:`rotation`; LightMamba's rotation-assisted quantization, the QuaRot idea): the
    stream ``x' = R x`` spreads a few large channels over all of them, so its per-tensor int8
    scale is not set by one outlier. Exact in real arithmetic: the RMSNorm gammas are folded
    into the linears that read the norms (an RMSNorm commutes with ``R``, a gamma does not),
    ``R`` into the embedding and the out-projections, ``R^T`` into the in-projections and the
    LM head."""
    R = rotation(fm.shape.hidden, seed)
    layers = []
    for ly in fm.layers:
        g = np.asarray(ly.norm, np.float64)
        layers.append(replace(
            ly, norm=np.ones_like(g), in_proj=(np.asarray(ly.in_proj, np.float64) * g) @ R.T,
            out_proj=R @ np.asarray(ly.out_proj, np.float64),
            out_bias=None if ly.out_bias is None else R @ np.asarray(ly.out_bias, np.float64)))
    gf = np.asarray(fm.final_norm, np.float64)
    return replace(fm, embed=np.asarray(fm.embed, np.float64) @ R.T, layers=layers,
                   final_norm=np.ones_like(gf), lm_head=(np.asarray(fm.lm_head) * gf) @ R.T)


def _calibrate(fm: FloatMamba, seed: int, keep=()) -> tuple[list[dict], list[dict]]:
    """Per layer (and one more for the head) the absmax of every recorded tensor, and the
    rows of the blocks' tensors named in ``keep`` (float32, for :func:`_scale4`)."""
    amax: list[dict] = [{} for _ in range(len(fm.layers) + 1)]
    rows: list[dict] = [{} for _ in range(len(fm.layers))]

    def record(layer, **tensors):
        for k, v in tensors.items():
            amax[layer][k] = max(amax[layer].get(k, 0.0), float(np.max(np.abs(v))))
            if k in keep and layer < len(fm.layers):
                rows[layer].setdefault(k, []).append(np.asarray(v, np.float32))

    rng = np.random.default_rng([seed, 0])
    for _ in range(CALIB_SEQUENCES):
        mamba_record(fm, rng.integers(0, fm.shape.vocab, CALIB_TOKENS), record)
    return amax, [{k: np.concatenate(v) for k, v in r.items()} for r in rows]


#: Clipping ratios :func:`_scale4` tries: absmax times 0.20, 0.25, ..., 1.00.
_CLIP_RATIOS = np.linspace(0.2, 1.0, 17)


def _scale4(x: np.ndarray) -> float:
    """The static 4-bit scale of a calibration sample ``x``: ``r * absmax / 7`` at the ratio
    ``r`` (:data:`_CLIP_RATIOS`) whose round-to-nearest codes (-8..7) reconstruct ``x`` with
    the least mean squared error."""
    x = np.asarray(x, np.float64).ravel()
    m = float(np.max(np.abs(x))) if x.size else 0.0
    if m == 0:
        return 1.0
    errs = [np.mean((np.clip(np.rint(x / s), -8, 7) * s - x) ** 2)
            for s in _CLIP_RATIOS * m / 7]
    return float(_CLIP_RATIOS[int(np.argmin(errs))] * m / 7)


def _hadamard_matrix(n: int) -> np.ndarray:
    """The orthogonal matrix of ``golden.ssm.hadamard`` over ``n`` channels (symmetric):
    ``hadamard(x, block) / sqrt(block) == x @ _hadamard_matrix(n)``."""
    b = gs.hadamard_block(n)
    return gs.hadamard(np.eye(n, dtype=np.int64), b) / np.sqrt(b)


def _s8(m: float) -> float:
    return m / 127.0 if m > 0 else 1.0


def _signed_mults(reals: np.ndarray) -> tuple[np.ndarray, int]:
    """Signed multipliers at one shift (magnitudes in the u16 field)."""
    shift = g8.choose_shift(np.abs(reals))
    return np.rint(reals * 2.0**shift).astype(np.int64), shift


def quantize_mamba(fm: FloatMamba, seed: int = 0, rotate: bool = True, wbits: int = 8,
                   abits: int = 8) -> QMamba:
    """The integers of ``fm`` (module docstring), calibrated on random tokens (``seed``): W8A8,
    or 4-bit weights (``wbits=4``, ``golden.int4``) and 4-bit activations into the in- and
    out-projections (``abits=4``); with the residual stream rotated offline
    (:func:`rotate_residual`) and the out-projection's input rotated online
    (``golden.ssm.hadamard``) unless ``rotate`` is False."""
    if wbits not in (4, 8) or abits not in (4, 8):
        raise ValueError(f"W{wbits}A{abits}: weights and activations are 8 or 4 bits")
    if rotate:
        fm = rotate_residual(fm, seed)
    s = fm.shape
    C = s.d_inner
    block = gs.hadamard_block(C) if rotate else 1
    hmat = _hadamard_matrix(C) if rotate else np.eye(C)
    amax, rows = _calibrate(fm, seed, keep=("n0", "g") if abits == 4 else ("g",) if rotate else ())
    sx = [_s8(amax[i]["x"]) for i in range(len(fm.layers) + 1)]
    layers = []
    for i, ly in enumerate(fm.layers):
        a = amax[i]
        # the in- and out-projections' inputs (the out-projection's after the Hadamard)
        if abits == 4:
            s_n, s_go = _scale4(rows[i]["n0"]), _scale4(rows[i]["g"] @ hmat)
        else:
            s_n = _s8(a["n0"])
            s_go = _s8(float(np.max(np.abs(rows[i]["g"] @ hmat)))) if rotate else _s8(a["g"])
        out_in = None if abits == 8 and not rotate else \
            (block, *g8.multiplier(_s8(a["g"]) / (np.sqrt(block) * s_go)))
        io = dict(norm=_norm_params(sx[i], s_n, s.rms_eps, s.hidden), out_in=out_in)
        quantize_layer = _quantize2_layer if s.heads else _quantize1_layer
        layers.append(quantize_layer(s, ly, a, io, s_n, s_go, sx[i], sx[i + 1], hmat, wbits))
    head = amax[len(fm.layers)]
    s_fn, s_logits = _s8(head["n0"]), _s8(head["logits"])
    lm = np.asarray(fm.lm_head, np.float64) * np.asarray(fm.final_norm, np.float64)[None, :]
    return QMamba(name=fm.name, shape=s, embed=g8.quantize(fm.embed, sx[0]), layers=layers,
                  final_norm=_norm_params(sx[-1], s_fn, s.rms_eps, s.hidden),
                  lm_head=_qlinear(lm, None, s_fn, s_logits, wbits=wbits),
                  scales={"x0": sx[0], "logits": s_logits}, wbits=wbits, abits=abits)


def _conv_params(ly, s_xin: float) -> dict:
    """The causal conv's int8 taps, int32 biases and multipliers into the SiLU ROM's 1/16."""
    wc, swc = g8.quantize_weight(ly.conv)
    reals = s_xin * swc / gl.SILU_SCALE
    shift = g8.choose_shift(reals)
    bias = np.zeros(len(wc)) if ly.conv_bias is None else np.asarray(ly.conv_bias, np.float64)
    return dict(conv=wc, conv_bias=np.rint(bias / (s_xin * swc)).astype(np.int32),
                conv_mult=g8.quantize_multiplier(reals, shift), conv_shift=shift)


def _scan_params(a: dict, D, s_u: float) -> dict:
    """The scan's multipliers from the calibrated absmax (``a``): the state at 2**23 codes."""
    s_b, s_c, s_y = _s8(a["B"]), _s8(a["C"]), _s8(a["y"])
    s_h = a["h"] / _H_CODE if a["h"] > 0 else 1.0
    d_mult, d_shift = _signed_mults(np.asarray(D, np.float64) * s_u / s_y)
    return dict(bu=g8.multiplier(2.0**-gs.DT_FRAC * s_b * s_u / s_h),
                y=g8.multiplier(s_h * s_c / s_y), d_mult=d_mult, d_shift=d_shift)


def _quantize1_layer(s: SsmShape, ly, a: dict, io: dict, s_n: float, s_go: float, s_x: float,
                     s_next: float, hmat, wbits: int) -> QMambaLayer:
    """A Mamba-1 block's integers (``io``: its norm and out-projection input fields)."""
    C = s.d_inner
    s_xin, s_u, s_dti = _s8(a["xin"]), _s8(a["u"]), _s8(a["dt_in"])
    w_in = np.asarray(ly.in_proj, np.float64) * np.asarray(ly.norm, np.float64)[None, :]
    b_in = (None, None) if ly.in_bias is None else (ly.in_bias[:C], ly.in_bias[C:])
    xp = np.asarray(ly.x_proj)
    return QMambaLayer(
        **io, **_conv_params(ly, s_xin), **_scan_params(a, ly.D, s_u),
        in_x=_qlinear(w_in[:C], b_in[0], s_n, s_xin, wbits=wbits),
        in_z=_qlinear(w_in[C:], b_in[1], s_n, gl.SILU_SCALE, wbits=wbits),
        silu=g8.multiplier(1.0 / (256.0 * s_u)),
        x_dt=_qlinear(xp[:s.dt_rank], None, s_u, s_dti, wbits=wbits),
        x_b=_qlinear(xp[s.dt_rank:s.dt_rank + s.d_state], None, s_u, _s8(a["B"]), wbits=wbits),
        x_c=_qlinear(xp[s.dt_rank + s.d_state:], None, s_u, _s8(a["C"]), wbits=wbits),
        dt_proj=_qlinear(ly.dt_proj, ly.dt_bias, s_dti, gs.SOFTPLUS_SCALE, wbits=wbits),
        a_codes=gs.decay_rate_codes(ly.A), gate=_silu_params(_s8(a["y"]), _s8(a["g"])),
        out_proj=_qlinear(np.asarray(ly.out_proj, np.float64) @ hmat, ly.out_bias, s_go,
                          s_next, s_res=s_x, wbits=wbits))


def _quantize2_layer(s: SsmShape, ly, a: dict, io: dict, s_n: float, s_go: float, s_x: float,
                     s_next: float, hmat, wbits: int) -> QMamba2Layer:
    """A Mamba-2 block's integers: ``x``, ``B`` and ``C`` each at its own scale after the
    conv's SiLU; ``dt_bias`` in the dt rows' bias; the group RMSNorm's gamma in the
    out-projection."""
    C, P = s.d_inner, s.head_dim
    s_xin, s_u, s_v = _s8(a["xin"]), _s8(a["u"]), _s8(a["v"])
    w_in = np.asarray(ly.in_proj, np.float64) * np.asarray(ly.norm, np.float64)[None, :]
    b_in = np.zeros(len(w_in)) if ly.in_bias is None else np.asarray(ly.in_bias, np.float64)
    b_in[C + s.conv_dim:] += np.asarray(ly.dt_bias, np.float64)
    z, xbc, dt = np.split(np.arange(len(w_in)), [C, C + s.conv_dim])
    lo, hi = (np.rint(np.asarray(ly.dt_limit, np.float64).clip(0, 16) * (1 << gs.DT_FRAC))
              .clip(0, (1 << 16) - 1).astype(np.int64))
    w_out = np.asarray(ly.out_proj, np.float64) * np.asarray(ly.gate_norm, np.float64)[None, :]
    return QMamba2Layer(
        **io, **_conv_params(ly, s_xin),
        **_scan_params(a, np.repeat(np.asarray(ly.D, np.float64), P), s_u),
        in_z=_qlinear(w_in[z], b_in[z], s_n, gl.SILU_SCALE, wbits=wbits),
        in_xbc=_qlinear(w_in[xbc], b_in[xbc], s_n, s_xin, wbits=wbits),
        in_dt=_qlinear(w_in[dt], b_in[dt], s_n, gs.SOFTPLUS_SCALE, wbits=wbits),
        silu=tuple(g8.multiplier(1.0 / (256.0 * sc)) for sc in (s_u, _s8(a["B"]),
                                                                   _s8(a["C"]))),
        dt_limit=(int(lo), int(hi)), a_codes=gs.decay_rate_codes(ly.A),
        gate=_silu_params(_s8(a["y"]), s_v),
        gnorm=_norm_params(s_v, _s8(a["g"]), s.rms_eps, C // s.groups),
        out_proj=_qlinear(w_out @ hmat, ly.out_bias, s_go, s_next, s_res=s_x, wbits=wbits))


def _linear(ql: QLinear, x, res=None) -> np.ndarray:
    return g8.requantize(g8.matmul(x, ql.weight), ql.bias, ql.mult, ql.shift, res=res,
                         res_mult=ql.res_mult)


def _block(ly: QMambaLayer, x, hist, h, abits: int):
    """One block on int8 rows ``x [T, hidden]``; returns ``(x', hist', h')``."""
    n = gl.rmsnorm(x, *ly.norm, bits=abits)
    c, hist = gs.causal_conv(_linear(ly.in_x, n), hist, ly.conv, ly.conv_bias, ly.conv_mult,
                             ly.conv_shift)
    u = gl.gate_mul(c, 1, *ly.silu)
    dt = gs.softplus_dt(_linear(ly.dt_proj, _linear(ly.x_dt, u)))
    b, cc = _linear(ly.x_b, u), _linear(ly.x_c, u)
    y = np.empty_like(u)
    for t in range(u.shape[0]):     # the recurrence, one token after the other
        h, y[t] = gs.scan_step(h, dt[t], ly.a_codes, b[t], cc[t], u[t], *ly.bu, *ly.y,
                               ly.d_mult, ly.d_shift)
    g = gl.silu_mul(_linear(ly.in_z, n), y, *ly.gate)
    return _out(ly, g, x, abits), hist, h


def _out(ly, g, x, abits: int) -> np.ndarray:
    """The out-projection of ``g`` (through the online Hadamard if any) with the residual."""
    if ly.out_in is not None:
        block, mult, shift = ly.out_in
        g = g8.requantize(gs.hadamard(g, block), 0, mult, shift, bits=abits)
    return _linear(ly.out_proj, g, res=x)


def _block2(s: SsmShape, ly: QMamba2Layer, x, hist, h, abits: int):
    """One Mamba-2 block on int8 rows ``x [T, hidden]``; returns ``(x', hist', h')``."""
    C, N, P = s.d_inner, s.d_state, s.head_dim
    per = s.heads // s.groups * P                   # channels of a group's heads
    n = gl.rmsnorm(x, *ly.norm, bits=abits)
    c, hist = gs.causal_conv(_linear(ly.in_xbc, n), hist, ly.conv, ly.conv_bias, ly.conv_mult,
                             ly.conv_shift)
    u, b, cc = (gl.gate_mul(part, 1, *m) for part, m in
                zip(np.split(c, [C, C + s.groups * N], axis=-1), ly.silu, strict=True))
    dt = np.repeat(np.clip(gs.softplus_dt(_linear(ly.in_dt, n)), *ly.dt_limit), P, axis=-1)
    a = np.repeat(ly.a_codes, P)[:, None].repeat(N, axis=1)
    y = np.empty_like(u)
    h = h.copy()
    for t in range(u.shape[0]):     # the recurrence, one token after the other
        for g in range(s.groups):
            k = slice(g * per, (g + 1) * per)
            h[k], y[t, k] = gs.scan_step(h[k], dt[t, k], a[k], b[t, g * N:(g + 1) * N],
                                         cc[t, g * N:(g + 1) * N], u[t, k], *ly.bu, *ly.y,
                                         ly.d_mult[k], ly.d_shift)
    v = gl.silu_mul(_linear(ly.in_z, n), y, *ly.gate)
    gn = gl.rmsnorm(v.reshape(-1, C // s.groups), *ly.gnorm).reshape(v.shape)
    return _out(ly, gn, x, abits), hist, h


def qmamba_run(qm: QMamba, ids, state: QMambaState):
    """``(int8 logits [len(ids), vocab], the state after them)`` of the tokens ``ids`` run from
    ``state`` (not modified)."""
    x = qm.embed[np.asarray(ids, dtype=np.int64).reshape(-1)]
    conv, ssm = [], []
    for i, ly in enumerate(qm.layers):
        if isinstance(ly, QMamba2Layer):
            x, c, h = _block2(qm.shape, ly, x, state.conv[i], state.ssm[i], qm.abits)
        else:
            x, c, h = _block(ly, x, state.conv[i], state.ssm[i], qm.abits)
        conv.append(c)
        ssm.append(h)
    logits = _linear(qm.lm_head, gl.rmsnorm(x, *qm.final_norm))
    return logits, QMambaState(conv, ssm)


def qmamba_logits(qm: QMamba, ids) -> np.ndarray:
    """int8 logits ``[len(ids), vocab]`` of the tokens ``ids`` from the empty state."""
    return qmamba_run(qm, ids, QMambaState.empty(qm))[0]


def qmamba_step(qm: QMamba, state: QMambaState, token_id: int):
    """One token of integer decode: ``(int8 logits [vocab], the state after it)``."""
    logits, new = qmamba_run(qm, [int(token_id)], state)
    return logits[0], new
