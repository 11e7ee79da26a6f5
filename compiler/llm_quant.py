"""Quantize a :class:`FloatDecoder` into the integer :class:`QDecoder` (W8A8, static scales).

* Weights: int8 per output channel (``golden.int8.quantize_weight``), gammas already folded.
* Activations: one static scale per tensor, ``absmax / 127`` over a calibration run of the
  float model (:func:`compiler.llm_interpret.float_forward`'s code) on seeded random token
  sequences; the SiLU gate is fixed at ``golden.llm.SILU_SCALE``; the embedding table's scale
  is its own absmax (every token can appear).
* Every multiplier/shift is derived from the float meanings in ``golden/llm.py`` and
  ``golden/int8.py``: one shift per kernel (``choose_shift`` over all of its multipliers,
  residual included), u16 multipliers (``quantize_multiplier``).

Scale names (``QDecoder.scales``): ``embed``; per layer ``l{i}.attn_norm``, ``l{i}.q``,
``l{i}.k`` (q and k after RoPE; the KV cache holds k and v at these scales), ``l{i}.v``,
``l{i}.attn``, ``l{i}.attn_res`` (residual stream after o), ``l{i}.mlp_norm``, ``l{i}.gate``,
``l{i}.up``, ``l{i}.silu_mul``, ``l{i}.mlp_res`` (residual stream after down);
``final_norm``, ``logits``, ``rope`` (2**-14). Qwen3's per-head q/k norms (``FloatLayer.q_norm``):
``l{i}.q_proj``, ``l{i}.k_proj`` (the linears' outputs, the norms' inputs; ``l{i}.q``/``k``
are the norms' outputs), their gamma codes (``gamma_codes``) at ``l{i}.q_norm_gamma``,
``l{i}.k_norm_gamma``. Gemma 2: ``l{i}.o_out`` / ``l{i}.down_out`` (o's and down's outputs,
the post-norms' inputs), ``l{i}.post_attn`` / ``l{i}.post_mlp`` (the post-norms' outputs, the
residual adds' inputs) with gamma codes at ``l{i}.post_attn_gamma`` / ``l{i}.post_mlp_gamma``;
``embed`` includes the embedding scale (the table's codes are at ``embed / embed_scale``);
with a final soft-cap ``lm_head`` (the LM head's output, fixed at cap/64) and ``logits`` (the
capped logits).

Ternary (``weights="ternary"``, the default for BitNet; docs/architecture.md, "Ternary path"):
q/k/v/o/gate/up/down become ternary :class:`QLinear` (``ternary=True``, ``weight`` = ``t``):
``t, gamma_w`` = the float weight's own ternary values when it is already ``0/+-s``
(``golden.ternary.detect_ternary``), else BitNet's absmean rule. Calibration runs on the float
model with those weights (``gamma_w * t``, :func:`ternarize_decoder`). Unfolded RMSNorm gammas
(:class:`FloatLayer` ``*_gamma``) become int8 codes ``round(gamma / s_g)``, ``s_g = max|gamma| /
127`` (``QLayer.attn_gamma`` ...), applied by ``absmax_quant``; a linear reading ``v = x *
codes`` (scale ``s_x = s_in * s_g``; ``s_g = 1`` without codes) gets ``bias = round(b * 127 /
(s_x * gamma_w))`` and ``mult / 2**shift = s_x * gamma_w / (127 * s_out)``. Sub-norms are
``(eps, mult, shift)`` like every RMSNorm. The LM head stays int8. Extra scale names:
``l{i}.attn_sub_norm``, ``l{i}.mlp_sub_norm`` (sub-norm outputs, gamma-free), and the gamma
code scales ``l{i}.attn_gamma``, ``l{i}.attn_sub_gamma``, ``l{i}.mlp_gamma``,
``l{i}.mlp_sub_gamma``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from hwflow.golden import int4 as g4
from hwflow.golden import llm as gl
from hwflow.golden import ternary as gt
from hwflow.golden.int8 import (
    INT32_MAX,
    INT32_MIN,
    choose_shift,
    multiplier,
    quantize,
    quantize_multiplier,
    quantize_weight,
    tensor_scale,
)

from .decoder import (
    DECODER_WEIGHTS,
    LM_HEAD_WEIGHTS,
    FloatDecoder,
    FloatLayer,
    QDecoder,
    QLayer,
    QLinear,
    freeze_decoder,
    lm_head_weights,
)
from .errors import CompileError
from .llm_interpret import (
    embed_rows,
    float_block,
    float_head,
    rope_float,
)
from .passes import INT4_MAX_ERROR, int4_error
from .spec import check_decoder

__all__ = ["quantize_decoder", "DecoderQuantizer", "ternarize_decoder",
           "gamma_codes", "DECODER_WEIGHTS", "LM_HEAD_WEIGHTS", "TERNARY_LINEARS",
           "CALIB_SEQUENCES", "CALIB_TOKENS"]


#: The linears of a block that become ternary (the LM head stays int8).
TERNARY_LINEARS = ("q", "k", "v", "o", "gate", "up", "down")

#: Default calibration: 4 random sequences of 32 tokens (positions 0..31).
CALIB_SEQUENCES = 4
CALIB_TOKENS = 32
_U32_MAX = 2**32 - 1


def _calib_sequences(fd: FloatDecoder, max_context: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, 0])
    t = min(CALIB_TOKENS, max_context)
    return [rng.integers(0, fd.shape.vocab, t) for _ in range(CALIB_SEQUENCES)]


def _norm_params(s_in: float, s_out: float, eps_f: float, hidden: int) -> tuple[int, int, int]:
    """rmsnorm (eps, mult, shift): ``eps = eps_f * H / s_in**2``,
    ``mult / 2**shift = sqrt(H) / (s_out * 2**32)`` (golden.llm.rmsnorm)."""
    # eps saturates at the u32 field: only a stream far below eps_f would notice.
    eps = int(min(round(eps_f * hidden / s_in**2), _U32_MAX))
    return (eps, *multiplier(math.sqrt(hidden) / (s_out * 2.0**32)))


#: Elements per call of :func:`_by_rows`: 64 MiB as float64 (4096 rows of a 2048-wide weight).
_ROWS_ELEMENTS = 2**23


def _by_rows(w: np.ndarray, f):
    """``f(w)`` computed on blocks of rows and joined: the same values, as ``f`` treats each
    row alone (``quantize_weight``: per-channel scales; ``quantize``: per element), without
    ``f``'s float64 temporaries of the whole tensor (two of 2.1 GB each at once for
    Llama-3's 128256 x 2048 embedding and LM head)."""
    w = np.asarray(w)
    step = max(1, _ROWS_ELEMENTS // max(1, int(np.prod(w.shape[1:], dtype=np.int64))))
    if w.ndim == 0 or w.shape[0] <= step:
        return f(w)
    parts = [f(w[a:a + step]) for a in range(0, w.shape[0], step)]
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))
    return np.concatenate(parts)


def _qlinear(w: np.ndarray, bias, s_in: float, s_out: float,
             s_res: float | None = None, wbits: int = 8) -> QLinear:
    """int8 linear whose epilogue maps ``acc * s_in * s_w + bias (+ res * s_res)`` to
    ``s_out`` (golden.int8.requantize); ``wbits = 4``: the weight is int4 codes with group
    scales (``golden.int4``), ``s_w`` its per-channel scale ``c``."""
    w4 = w4s = None
    if wbits == 4:
        w4, w4s, sw = g4.quantize_weight_int4(w)
        wq = g4.dequantize_int4(w4, w4s)
    else:
        wq, sw = _by_rows(w, quantize_weight)
    reals = s_in * sw / s_out
    res_real = None if s_res is None else s_res / s_out
    # One shift serves every channel and the residual: pick it for the largest multiplier.
    shift = choose_shift(reals if res_real is None else np.append(reals, res_real))
    mult = quantize_multiplier(reals, shift)
    res_mult = 0 if res_real is None else int(quantize_multiplier([res_real], shift)[0])
    if bias is None:
        b = np.zeros(w.shape[0], dtype=np.int32)
    else:
        b = np.clip(np.rint(np.asarray(bias, dtype=np.float64) / (s_in * sw)),
                    INT32_MIN, INT32_MAX).astype(np.int32)
    return QLinear(weight=wq, bias=b, mult=mult.astype(np.int64), shift=int(shift),
                   res_mult=res_mult, w4=w4, w4_scale=w4s)


def _attn_params(s_q: float, s_k: float, s_v: float, s_o: float, scale: float,
                 cap: float = 0.0):
    """attention (smul, sshift, omul, oshift): ``smul/2**sshift = s_q s_k log2(e) 2**8 *
    scale`` (``scale``: the scores', ``1/sqrt(hd)`` but for Gemma 2), or with a score ``cap``
    ``s_q s_k 2**12 * scale / cap`` (the scores over the cap, ``golden.llm.softcap_scores``);
    ``omul/2**oshift = s_v / (s_o 2**15)`` (golden.llm.attention_row)."""
    if cap:
        sreal = s_q * s_k * 2.0**gl.SOFTCAP_FRAC * scale / cap
    else:
        sreal = s_q * s_k * math.log2(math.e) * 2.0**gl.EXP2_FRAC * scale
    return (*multiplier(sreal), *multiplier(s_v / (s_o * 2.0**15)))


def calibrate(fd: FloatDecoder, sequences) -> dict[str, float]:
    """Static per-tensor scales (absmax / 127) of a float run over ``sequences``."""
    cal = _Calibration(fd.shape, fd.embed, sequences)
    for i, ly in enumerate(fd.layers):
        cal.block(i, ly)
    cal.head(fd.lm_head)
    return cal.scales


class _Calibration:
    """The calibration run of the float model, one block at a time: the residual streams of
    the sequences are carried from block to block, and a tensor's scale is ``absmax / 127``
    over its records in every sequence (``compiler.llm_interpret._forward``'s records, which
    the blocks of :func:`~compiler.llm_interpret.float_block` make). Only one block's
    records and the streams (``[T, hidden]`` float64 per sequence) are held."""

    def __init__(self, shape, embed, sequences):
        self.shape = shape
        seqs = [np.asarray(q, dtype=np.int64).reshape(-1) for q in sequences]
        self.rope = [rope_float(np.arange(q.shape[0]), shape.inv_freq(), shape.rope_scaling)
                     for q in seqs]
        #: scales in the order their tensors are first recorded (``QDecoder.scales``' order)
        self.scales: dict[str, float] = {}
        record: dict[str, list] = {}
        self.x = [embed_rows(shape, embed, q, record) for q in seqs]
        self._scale(record)

    def _scale(self, record: dict) -> None:
        self.scales.update({k: tensor_scale(np.concatenate([np.ravel(a) for a in v]))
                            for k, v in record.items()})

    def block(self, i: int, ly: FloatLayer) -> None:
        """Run block ``i`` on every sequence and add its tensors' scales."""
        record: dict[str, list] = {}
        self.x = [float_block(self.shape, i, ly, x, rope, record)
                  for x, rope in zip(self.x, self.rope, strict=True)]
        self._scale(record)

    def head(self, lm_head) -> None:
        """The final norm and the LM head: ``final_norm``, ``logits`` (and ``lm_head``)."""
        record: dict[str, list] = {}
        for x in self.x:
            float_head(self.shape, lm_head, x, record)
        self.x = []
        self._scale(record)


def gamma_codes(gamma) -> tuple[np.ndarray, float]:
    """int8 codes of an RMSNorm gamma: ``(round(gamma / s_g), s_g)``, ``s_g = max|gamma| / 127``
    (1.0 for an all-zero gamma)."""
    g = np.asarray(gamma, dtype=np.float64)
    s_g = tensor_scale(g)
    return quantize(g, s_g), s_g


def ternarize_decoder(fd: FloatDecoder) -> tuple[FloatDecoder, dict]:
    """The float decoder with every q/k/v/o/gate/up/down weight ternary (``gamma_w * t``).

    A weight already ternary with one scale (``golden.ternary.detect_ternary``) keeps its exact
    ``t`` and ``s`` (``ternary_from: detected``); any other is ternarized with BitNet's absmean
    rule (``golden.ternary.ternarize_absmean``, ``ternary_from: absmean``). The weights are the
    ones the layer multiplies with: raw where the layer's gammas are unfolded, gamma-folded
    where they are folded (then no gamma codes exist for that norm).

    Returns
    -------
    (FloatDecoder, dict)
        The ternarized copy (float32 weights ``gamma_w * t``) and ``{"l{i}.q": {"weights":
        "ternary", "ternary_from": ..., "scale": gamma_w, "t": int8 t}, ...}``.
    """
    layers, formats = [], {}
    for i, ly in enumerate(fd.layers):
        layers.append(_ternarize_layer(i, ly, formats))
    return replace(fd, layers=layers), formats


def _ternarize_layer(i: int, ly: FloatLayer, formats: dict) -> FloatLayer:
    """Layer ``i`` with ternary weights (:func:`ternarize_decoder`); their entries go into
    ``formats``."""
    new = {}
    for name in TERNARY_LINEARS:
        w = getattr(ly, name)
        det = gt.detect_ternary(w)
        if det is not None:
            (t, s), how = det, "detected"
            w_t = np.asarray(w, dtype=np.float32)   # already t * s: keep it bit for bit
        else:
            (t, s), how = gt.ternarize_absmean(w), "absmean"
            w_t = (t * s).astype(np.float32)
        new[name] = w_t
        formats[f"l{i}.{name}"] = {"weights": "ternary", "ternary_from": how,
                                   "scale": float(s), "t": t}
    return replace(ly, **new)


def _norm_gammas(ly: FloatLayer):
    """(attn, attn_sub, mlp, mlp_sub) unfolded gammas of a layer (None where folded)."""
    return ly.attn_gamma, ly.attn_sub_gamma, ly.mlp_gamma, ly.mlp_sub_gamma


def _fold(w, gamma):
    return w if gamma is None else (np.asarray(w, dtype=np.float64)
                                    * np.asarray(gamma, dtype=np.float64)[None, :])


def _tlinear(t: np.ndarray, gw: float, bias, s_x: float, s_out: float,
             s_res: float | None = None) -> QLinear:
    """Ternary linear whose epilogue maps ``acc * m`` (``acc = xq @ t.T``, ``xq, m`` of
    ``absmax_quant`` of a row at scale ``s_x``) plus bias (plus ``res * s_res``) to ``s_out``:
    ``mult / 2**shift = s_x * gw / (127 * s_out)``, ``bias = round(b * 127 / (s_x * gw))``."""
    n = t.shape[0]
    reals = np.full(n, s_x * gw / (127.0 * s_out))
    res_real = None if s_res is None else s_res / s_out
    shift = choose_shift(reals if res_real is None else np.append(reals, res_real))
    mult = quantize_multiplier(reals, shift)
    res_mult = 0 if res_real is None else int(quantize_multiplier([res_real], shift)[0])
    if bias is None:
        b = np.zeros(n, dtype=np.int32)
    else:
        b = np.clip(np.rint(np.asarray(bias, dtype=np.float64) * 127.0 / (s_x * gw)),
                    INT32_MIN, INT32_MAX).astype(np.int32)
    return QLinear(weight=np.asarray(t, dtype=np.int8), bias=b, mult=mult.astype(np.int64),
                   shift=int(shift), res_mult=res_mult, ternary=True)


def quantize_decoder(fd: FloatDecoder, max_context: int, calib_ids=None,
                     seed: int = 0, weights: str | None = None,
                     lm_head: str | None = None) -> QDecoder:
    """Quantize a float decoder to the integer IR the golden model and the mapper run.

    One pass over the blocks (:class:`DecoderQuantizer`): each is calibrated and quantized
    before the next is read, so a decoder whose ``layers`` recognises its blocks as they are
    read (``compiler.llm_frontend.open_decoder``) is never held whole in float.

    Parameters
    ----------
    fd : FloatDecoder
        Its ``layers`` are read once, in order.
    max_context : int
        Positions the KV cache and the RoPE table cover (<= ``fd.shape.max_position``).
    calib_ids : list of sequences of int, optional
        Calibration token sequences; default 4 seeded random sequences of 32 tokens.
    seed : int
        Seed of the default calibration sequences.
    weights : {"int8", "int4", "mixed", "ternary"}, optional
        Block linears int8 (per channel), int4 (W4A8: ``golden.int4`` codes with a scale per
        group of 32 along K, the LM head too), mixed (int4 where the layer's int4 error is at
        most ``compiler.passes.INT4_MAX_ERROR``, the LM head int8; :func:`_weight_bits`) or
        ternary (BitNet b1.58, see the module docstring).
        Default: ``"ternary"`` for a BitNet decoder (``fd.family == "bitnet"``), else
        ``"int8"``. int8 folds any unfolded gamma into its linears.
    lm_head : {"int8", "int4"}, optional
        The LM head's weights whatever ``weights`` says (e.g. int4 beside ternary block
        linears: the head is a sixth of BitNet 0.7B's weight bytes at int8); default: the
        ``weights`` rule above (int8 beside ternary).

    Returns
    -------
    QDecoder
        With ``scales`` holding the float scale of every activation tensor and
        ``weight_formats`` what each linear got.

    Raises
    ------
    CompileError
        ``max_context`` out of range, an unknown ``weights``, or a multiplier that does not fit
        its field.
    """
    quant = DecoderQuantizer(fd, max_context, calib_ids, seed, weights, lm_head)
    for i, ly in enumerate(fd.layers):
        quant.add(i, ly)
        del ly                  # the float layer goes before the next is read
    return quant.finish(fd.lm_head)


class DecoderQuantizer:
    """:func:`quantize_decoder` a block at a time: made from the decoder's shape and
    embedding (quantized here, and the calibration sequences' embedding rows taken: the float
    embedding is not kept), given each float layer in order (:meth:`add`: the layer is
    calibrated on the sequences' residual streams, :class:`_Calibration`, and quantized,
    :func:`_quantize_layer`; it is not kept), then the LM head (:meth:`finish`). The compile
    drives it so, writing each layer to the build as it goes (``hwflow.llm_flow``). Parameters
    and errors as :func:`quantize_decoder`'s."""

    def __init__(self, fd: FloatDecoder, max_context: int, calib_ids=None, seed: int = 0,
                 weights: str | None = None, lm_head: str | None = None):
        s = fd.shape
        if weights is None:
            weights = "ternary" if fd.family == "bitnet" else "int8"
        if weights not in DECODER_WEIGHTS:
            raise CompileError(f"weights '{weights}': use {', '.join(DECODER_WEIGHTS)} for a "
                               "decoder")
        if lm_head not in (None, *LM_HEAD_WEIGHTS):
            raise CompileError(f"LM head weights '{lm_head}': use "
                               f"{', '.join(LM_HEAD_WEIGHTS)}")
        self.lm_head = lm_head
        max_context = int(max_context)
        if not 1 <= max_context <= s.max_position:
            raise CompileError(f"max_context {max_context} outside 1..{s.max_position} (the "
                               "model's max_position_embeddings)")
        seqs = calib_ids if calib_ids is not None else _calib_sequences(fd, max_context, seed)
        seqs = [np.asarray(q, dtype=np.int64).reshape(-1) for q in seqs]
        if not seqs or any(q.size == 0 or q.min() < 0 or q.max() >= s.vocab for q in seqs):
            raise CompileError(f"calibration sequences must be non-empty token ids < {s.vocab}")
        self.cap_code = gl.softcap_code(s.attn_softcap) if s.attn_softcap else 0
        if s.attn_softcap and not 0 < self.cap_code < 1 << 10:
            raise CompileError(f"attention soft-cap {s.attn_softcap:g}: the ATTN cap field "
                               "holds caps of 0.05 to 88.6 (golden.llm.softcap_code, 10 bits)")
        self.name, self.shape, self.weights, self.max_context = fd.name, s, weights, max_context
        # the table's codes at its own absmax; Gemma's rows are scaled by embed_scale after it
        s_table = tensor_scale(_by_rows(fd.embed, lambda rows: np.max(np.abs(rows), axis=-1)))
        self.embed = _by_rows(fd.embed, lambda rows: quantize(rows, s_table))
        self.cal = _Calibration(s, fd.embed, seqs)
        self.sc = self.cal.scales   # the calibration's, then the epilogue's fixed ones
        self.sc["embed"] = s_table * s.embed_scale
        self.codes: dict = {}       # the gamma codes' scales, after the tensors' (as ever)
        self.formats: dict = {}
        self.layers: list = []
        self.s_x = self.sc["embed"]     # the residual stream's scale before the next block

    def add(self, i: int, ly: FloatLayer) -> None:
        """Calibrate and quantize block ``i`` (the next one)."""
        assert i == len(self.layers), f"block {i} after {len(self.layers)} blocks"
        if self.weights == "ternary":
            ly = _ternarize_layer(i, ly, self.formats)
        self.cal.block(i, ly)
        try:
            qly, self.s_x = _quantize_layer(i, ly, self.shape, self.sc, self.codes, self.s_x,
                                            self.weights, self.formats, self.cap_code)
        except ValueError as e:  # a multiplier outside its u16 field at every shift
            raise CompileError(f"cannot quantize decoder '{self.name}': {e}") from None
        self.layers.append(qly)

    def finish(self, lm_head: np.ndarray) -> QDecoder:
        """The final norm and the LM head (float, the final norm's gamma folded): the
        decoder."""
        s, sc = self.shape, self.sc
        self.cal.head(lm_head)
        try:
            final_norm = _norm_params(self.s_x, sc["final_norm"], s.rms_eps, s.hidden)
            head_bits = _head_bits(self.weights, self.lm_head, self.formats)
            final_cap = None
            if s.final_softcap:     # the LM head at golden.llm.tanh_cap's fixed input scale
                sc["lm_head"] = s.final_softcap / gl.TANH_STEPS
                final_cap = _tanh_params(s.final_softcap, sc["logits"])
            head = _qlinear(lm_head, None, sc["final_norm"], sc.get("lm_head", sc["logits"]),
                            wbits=head_bits)
        except ValueError as e:  # a multiplier outside its u16 field at every shift
            raise CompileError(f"cannot quantize decoder '{self.name}': {e}") from None
        sc["rope"] = 2.0**-gl.ROPE_FRAC
        sc.update(self.codes)
        report = {k: {kk: vv for kk, vv in f.items() if kk != "t"}
                  for k, f in self.formats.items()}
        return check_decoder(freeze_decoder(QDecoder(
            name=self.name, shape=s, embed=self.embed,
            rope=gl.rope_table(self.max_context, s.inv_freq(), s.rope_scaling),
            layers=self.layers, final_norm=final_norm, lm_head=head,
            max_context=self.max_context, scales=sc, weight_formats=report,
            final_cap=final_cap)))


def _quantize_layer(i: int, ly: FloatLayer, s, sc: dict, codes: dict, s_x: float,
                    weights: str, formats: dict, cap_code: int) -> tuple[QLayer, float]:
    """Block ``i`` as a :class:`QLayer` from its float layer (ternarized already for
    ``weights="ternary"``, its ``t`` in ``formats``), the calibration scales ``sc`` and the
    residual stream's scale ``s_x`` before it; returns it and the stream's scale after it.
    The gamma codes' scales go into ``codes``, ``sc[l{i}.gate]`` becomes the SiLU gate's
    fixed scale."""
    h, hd = s.hidden, s.head_dim
    p = f"l{i}."
    sc[p + "gate"] = gl.SILU_SCALE
    s_n, s_q, s_k, s_v = (sc[p + n] for n in ("attn_norm", "q", "k", "v"))
    # q and k linears' outputs: q/k themselves, or (Qwen3) the per-head norms' inputs
    s_qo, s_ko = (sc.get(p + n, d) for n, d in (("q_proj", s_q), ("k_proj", s_k)))
    s_a, s_r1, s_m = sc[p + "attn"], sc[p + "attn_res"], sc[p + "mlp_norm"]
    s_u, s_h, s_r2 = sc[p + "up"], sc[p + "silu_mul"], sc[p + "mlp_res"]
    # Inputs of o and down: the attention / act output, or its sub-norm's output.
    s_ao = sc[p + "attn_sub_norm"] if ly.attn_sub_norm else s_a
    s_ho = sc[p + "mlp_sub_norm"] if ly.mlp_sub_norm else s_h
    extra = dict(
        act=ly.act,
        attn_sub_norm=(_norm_params(s_a, s_ao, s.rms_eps, ly.o.shape[1])
                       if ly.attn_sub_norm else None),
        mlp_sub_norm=(_norm_params(s_h, s_ho, s.rms_eps, ly.down.shape[1])
                      if ly.mlp_sub_norm else None))
    if ly.q_norm is not None:
        for nm, g, s_in, s_out in (("q", ly.q_norm, s_qo, s_q), ("k", ly.k_norm, s_ko, s_k)):
            gc, sg = gamma_codes(g)
            codes[f"{p}{nm}_norm_gamma"] = sg
            extra[f"{nm}_norm"] = _norm_params(s_in, s_out / sg, s.rms_eps, hd)
            extra[f"{nm}_norm_gamma"] = gc
    # Gemma 2's post-norms: o's (down's) output normed with gamma codes, then an unfused
    # residual add of the norm's output (at post_attn / post_mlp)
    s_oa, s_da = sc[p + "o_out"], sc[p + "down_out"]
    for nm, g, s_in in (("post_attn", ly.post_attn_gamma, sc[p + "o_out"]),
                        ("post_mlp", ly.post_mlp_gamma, sc[p + "down_out"])):
        if g is None:
            continue
        gc, sg = gamma_codes(g)
        codes[f"{p}{nm}_gamma"] = sg
        extra[f"{nm}_norm"] = _norm_params(s_in, sc[p + nm] / sg, s.rms_eps, h)
        extra[f"{nm}_gamma"] = gc
        if nm == "post_attn":
            s_oa = sc[p + nm]
        else:
            s_da = sc[p + nm]
    if weights == "ternary":
        gscale = {}
        for key, g in zip(("attn_gamma", "attn_sub_gamma", "mlp_gamma", "mlp_sub_gamma"),
                          _norm_gammas(ly), strict=True):
            if g is None:
                extra[key], gscale[key] = None, 1.0
            else:
                extra[key], gscale[key] = gamma_codes(g)
                codes[p + key] = gscale[key]

        def tl(name, bias, s_in, s_out, g_key, s_res=None):
            f = formats[f"l{i}.{name}"]
            return _tlinear(f["t"], f["scale"], bias, s_in * gscale[g_key], s_out, s_res)

        lin = dict(
            q=tl("q", ly.q_bias, s_n, s_qo, "attn_gamma"),
            k=tl("k", ly.k_bias, s_n, s_ko, "attn_gamma"),
            v=tl("v", ly.v_bias, s_n, s_v, "attn_gamma"),
            o=tl("o", ly.o_bias, s_ao, sc[p + "o_out"], "attn_sub_gamma"),
            gate=tl("gate", None, s_m, gl.SILU_SCALE, "mlp_gamma"),
            up=tl("up", None, s_m, s_u, "mlp_gamma"),
            down=tl("down", None, s_ho, sc[p + "down_out"], "mlp_sub_gamma"))
        # unfused residual adds (see llm_interpret._residual)
        extra["attn_add"] = _add_params(s_oa, s_x, s_r1)
        extra["mlp_add"] = _add_params(s_da, s_r1, s_r2)
    else:
        g_a, g_as, g_m, g_ms = _norm_gammas(ly)
        folded = dict(q=_fold(ly.q, g_a), k=_fold(ly.k, g_a), v=_fold(ly.v, g_a),
                      o=_fold(ly.o, g_as), gate=_fold(ly.gate, g_m),
                      up=_fold(ly.up, g_m), down=_fold(ly.down, g_ms))
        bits = {nm: _weight_bits(weights, f"l{i}.{nm}", w, formats)
                for nm, w in folded.items()}

        def ql(nm, bias, s_in, s_out, s_res=None):
            return _qlinear(folded[nm], bias, s_in, s_out, s_res=s_res, wbits=bits[nm])

        # the residual add fused into o's (down's) epilogue, or after its post-norm
        post_a, post_m = ly.post_attn_gamma is not None, ly.post_mlp_gamma is not None
        lin = dict(
            q=ql("q", ly.q_bias, s_n, s_qo),
            k=ql("k", ly.k_bias, s_n, s_ko),
            v=ql("v", ly.v_bias, s_n, s_v),
            o=(ql("o", ly.o_bias, s_ao, sc[p + "o_out"]) if post_a else
               ql("o", ly.o_bias, s_ao, s_r1, s_res=s_x)),
            gate=ql("gate", None, s_m, gl.SILU_SCALE),
            up=ql("up", None, s_m, s_u),
            down=(ql("down", None, s_ho, sc[p + "down_out"]) if post_m else
                  ql("down", None, s_ho, s_r2, s_res=s_r1)))
        if post_a:
            extra["attn_add"] = _add_params(s_oa, s_x, s_r1)
        if post_m:
            extra["mlp_add"] = _add_params(s_da, s_r1, s_r2)
    return QLayer(attn_norm=_norm_params(s_x, s_n, s.rms_eps, h),
                  attn=_attn_params(s_q, s_k, s_v, s_a, s.score_scale(), s.attn_softcap),
                  attn_cap=cap_code,
                  mlp_norm=_norm_params(s_r1, s_m, s.rms_eps, h),
                  silu=_silu_params(s_u, s_h), **lin, **extra), s_r2


def _weight_bits(weights: str, name: str, w: np.ndarray, formats: dict) -> int:
    """4 or 8 for a block linear under ``weights`` (``int8``, ``int4``, ``mixed``), recorded
    in ``formats[name]``: ``int4`` makes every block linear W4A8; ``mixed`` every block linear
    whose int4 relative error (``compiler.passes.int4_error``) is at most ``INT4_MAX_ERROR``
    (the LM head: :func:`_head_bits`)."""
    if weights == "int8":
        return 8
    if weights == "int4":
        formats[name] = {"weights": "int4", "why": "int4: every linear"}
        return 4
    err = int4_error(w)
    ok = err <= INT4_MAX_ERROR
    formats[name] = {"weights": "int4" if ok else "int8", "int4_error": err,
                     "why": f"mixed: int4 error {err:.3f} {'<=' if ok else '>'} "
                            f"{INT4_MAX_ERROR}"}
    return 4 if ok else 8


def _head_bits(weights: str, lm_head: str | None, formats: dict) -> int:
    """4 or 8 for the LM head (``compiler.decoder.lm_head_weights``), recorded in
    ``formats["lm_head"]``."""
    got = lm_head_weights(weights, lm_head)
    why = (f"--lm-head {lm_head}" if lm_head else "int4: every linear" if got == "int4" else
           "the LM head stays int8")
    formats["lm_head"] = {"weights": got, "why": why}
    return 4 if got == "int4" else 8


def _add_params(s_a: float, s_b: float, s_out: float) -> tuple[int, int, int]:
    """residual_add (a_mult, b_mult, shift) of ``a`` at ``s_a`` plus ``b`` at ``s_b`` into
    ``s_out``: ``a_mult / 2**shift = s_a / s_out``, ``b_mult / 2**shift = s_b / s_out``."""
    reals = np.array([s_a / s_out, s_b / s_out])
    shift = choose_shift(reals)
    a_mult, b_mult = (int(v) for v in quantize_multiplier(reals, shift))
    return a_mult, b_mult, shift


def _tanh_params(cap: float, s_y: float) -> tuple[int, int]:
    """tanh_cap (mult, shift): ``mult / 2**shift = cap / (2**14 * s_y)``."""
    return multiplier(cap / (2.0**14 * s_y))


def _silu_params(s_u: float, s_h: float) -> tuple[int, int]:
    """silu_mul (mult, shift): ``mult / 2**shift = s_u / (256 * s_h)``."""
    return multiplier(s_u / (256.0 * s_h))


