"""Reference runs of the decoder IR: the float model (:func:`float_forward`) and the integer
golden model (:func:`golden_step`), which is what the accelerator computes bit for bit.

The golden step runs in hardware order with only the kernels of ``golden/llm.py``,
``golden/int8.py`` and (ternary linears) ``golden/ternary.py``; prefill of ``T`` tokens is the
same step with ``T`` rows, so chunked prefill, one-shot prefill and decode give identical
integers for the same token at the same position.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwflow.golden import llm as gl
from hwflow.golden.int8 import matmul, requantize, residual_add
from hwflow.golden.ternary import absmax_quant

from .decoder import DecoderShape, FloatDecoder, FloatLayer, QDecoder, QLinear

__all__ = ["float_forward", "float_generate", "KVCache", "golden_step", "GoldenRun",
           "golden_generate", "top1_agreement", "rope_float", "embed_rows", "float_block",
           "float_head"]


# ------------------------------------------------------------------------------ float model

def rope_float(positions, inv_freq, scaling: float = 1.0):
    """(cos, sin) ``[len(positions), head_dim/2]`` of the rotary frequencies ``inv_freq``
    (``DecoderShape.inv_freq()``), times ``scaling``, float64."""
    inv = np.asarray(inv_freq, dtype=np.float64)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv[None, :]
    return np.cos(ang) * scaling, np.sin(ang) * scaling


def _rms(x: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def _head_rms(x: np.ndarray, heads: int, hd: int, eps: float, gamma) -> np.ndarray:
    """RMSNorm of every head of rows ``x[t, heads * hd]`` alone, times ``gamma[hd]``."""
    t = x.shape[0]
    return (_rms(x.reshape(t, heads, hd), eps) * np.asarray(gamma, np.float64)).reshape(t, -1)


def _rope_rows(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, heads: int, hd: int):
    t = x.shape[0]
    xh = x.reshape(t, heads, hd)
    half = hd // 2
    x1, x2 = xh[..., :half], xh[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).reshape(t, heads * hd)


#: Weights of more elements than this are multiplied in blocks of rows (:func:`_lin`): a
#: float64 copy of Llama-3's 128256 x 2048 LM head is 2.1 GB, more than the float32 model's
#: largest block; a block weight of a 7B model (11008 x 4096) stays whole.
_LIN_WHOLE = 2**26
#: Elements per block of rows of a larger weight: 64 MiB as float64.
_LIN_BLOCK = 2**23


def _lin(x, w, b=None):
    w = np.asarray(w)
    if w.size <= _LIN_WHOLE:
        y = x @ np.asarray(w, dtype=np.float64).T
    else:       # the same products, without the float64 copy of the whole weight
        step = max(1, _LIN_BLOCK // w.shape[1])
        y = np.concatenate([x @ np.asarray(w[a:a + step], dtype=np.float64).T
                            for a in range(0, w.shape[0], step)], axis=-1)
    return y if b is None else y + np.asarray(b, dtype=np.float64)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """``gelu(x, approximate="tanh")`` (Gemma's ``gelu_pytorch_tanh``), float64."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def _act(g: np.ndarray, act: str) -> np.ndarray:
    if act == "relu2":
        return np.maximum(g, 0.0) ** 2
    if act == "gelu_tanh":
        return gelu_tanh(g)
    return g / (1.0 + np.exp(-g))


def _softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """``cap * tanh(x / cap)`` (Gemma 2), ``x`` itself when ``cap`` is 0."""
    return cap * np.tanh(x / cap) if cap else x


def _post_norm(x: np.ndarray, gamma, eps: float) -> np.ndarray:
    """Gemma 2's post-norm of a linear's output (``gamma`` None: none)."""
    return x if gamma is None else _rms(x, eps) * np.asarray(gamma, dtype=np.float64)


def _gamma(x: np.ndarray, gamma) -> np.ndarray:
    """An unfolded RMSNorm gamma applied to the normalized rows (None: folded, no-op)."""
    return x if gamma is None else x * np.asarray(gamma, dtype=np.float64)


def _forward(fd: FloatDecoder, ids, record: dict | None = None) -> np.ndarray:
    """Float64 forward pass; ``record[name]`` collects every tensor the quantizer scales.

    Norm outputs are recorded gamma-free (what ``golden.llm.rmsnorm`` produces) but for
    the gamma-coded ones (Qwen3's head norms, Gemma 2's ``post_attn`` / ``post_mlp``); the
    ``silu_mul`` record is ``act(gate) * up`` for every activation; with a final soft-cap
    ``lm_head`` is the LM head's output and ``logits`` the capped one. The embedding, each
    block and the head are :func:`embed_rows`, :func:`float_block` and :func:`float_head`,
    which the streaming calibration (``compiler.llm_quant``) runs one block at a time.
    """
    s = fd.shape
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    rope = rope_float(np.arange(ids.shape[0]), s.inv_freq(), s.rope_scaling)
    x = embed_rows(s, fd.embed, ids, record)
    for i, ly in enumerate(fd.layers):
        x = float_block(s, i, ly, x, rope, record)
    return float_head(s, fd.lm_head, x, record)


def _recorder(record: dict | None):
    def rec(name, v):
        if record is not None:
            record.setdefault(name, []).append(np.asarray(v))
    return rec


def embed_rows(s: DecoderShape, embed, ids, record: dict | None = None) -> np.ndarray:
    """The residual stream ``[T, hidden]`` (float64) entering the first block: the embedding
    rows of ``ids`` times ``s.embed_scale`` (recorded as ``embed``)."""
    # the rows first: a float64 copy of the whole table is 2.1 GB at Llama-3's vocabulary
    x = np.asarray(np.asarray(embed)[np.asarray(ids, dtype=np.int64)], dtype=np.float64)
    x = x * s.embed_scale
    _recorder(record)("embed", x)
    return x


def float_block(s: DecoderShape, i: int, ly: FloatLayer, x: np.ndarray, rope,
                record: dict | None = None) -> np.ndarray:
    """Block ``i`` (``ly``) of the float model on the residual stream ``x [T, hidden]`` at
    positions ``0 .. T-1`` (``rope``: :func:`rope_float` of those positions); returns the
    stream after it, recording the block's tensors as :func:`_forward` says."""
    rec = _recorder(record)
    t = x.shape[0]
    heads, kvh, hd = s.heads, s.kv_heads, s.head_dim
    group = heads // kvh
    cos, sin = rope
    # masked[p, j]: query p does not attend key j (golden.llm.attended)
    pj = np.arange(t)[:, None] - np.arange(t)[None, :]
    masked = (pj < 0) | ((pj >= s.window(i)) if s.window(i) else False)
    n = _rms(x, s.rms_eps)
    rec(f"l{i}.attn_norm", n)
    n = _gamma(n, ly.attn_gamma)
    q = _lin(n, ly.q, ly.q_bias)
    k = _lin(n, ly.k, ly.k_bias)
    v = _lin(n, ly.v, ly.v_bias)
    if ly.q_norm is not None:       # Qwen3: every head normalized alone, before RoPE
        rec(f"l{i}.q_proj", q)
        rec(f"l{i}.k_proj", k)
        q = _head_rms(q, heads, hd, s.rms_eps, ly.q_norm)
        k = _head_rms(k, kvh, hd, s.rms_eps, ly.k_norm)
    rec(f"l{i}.q", q)
    rec(f"l{i}.k", k)
    q = _rope_rows(q, cos, sin, heads, hd)
    k = _rope_rows(k, cos, sin, kvh, hd)
    rec(f"l{i}.q", q)  # RoPE may grow an element by up to sqrt(2): both share one scale
    rec(f"l{i}.k", k)
    rec(f"l{i}.v", v)
    qh = q.reshape(t, heads, hd).transpose(1, 0, 2)
    kh = np.repeat(k.reshape(t, kvh, hd).transpose(1, 0, 2), group, axis=0)
    vh = np.repeat(v.reshape(t, kvh, hd).transpose(1, 0, 2), group, axis=0)
    sc = _softcap(qh @ kh.transpose(0, 2, 1) * s.score_scale(), s.attn_softcap)
    sc = np.where(masked[None], -np.inf, sc)
    sc = np.exp(sc - sc.max(axis=-1, keepdims=True))
    p = sc / sc.sum(axis=-1, keepdims=True)
    a = (p @ vh).transpose(1, 0, 2).reshape(t, heads * hd)
    rec(f"l{i}.attn", a)
    if ly.attn_sub_norm:
        a = _rms(a, s.rms_eps)
        rec(f"l{i}.attn_sub_norm", a)
        a = _gamma(a, ly.attn_sub_gamma)
    o = _lin(a, ly.o, ly.o_bias)
    rec(f"l{i}.o_out", o)
    if ly.post_attn_gamma is not None:
        o = _post_norm(o, ly.post_attn_gamma, s.rms_eps)
        rec(f"l{i}.post_attn", o)
    x = x + o
    rec(f"l{i}.attn_res", x)
    n = _rms(x, s.rms_eps)
    rec(f"l{i}.mlp_norm", n)
    n = _gamma(n, ly.mlp_gamma)
    g = _lin(n, ly.gate)
    u = _lin(n, ly.up)
    rec(f"l{i}.gate", g)
    rec(f"l{i}.up", u)
    h = _act(g, ly.act) * u
    rec(f"l{i}.silu_mul", h)
    if ly.mlp_sub_norm:
        h = _rms(h, s.rms_eps)
        rec(f"l{i}.mlp_sub_norm", h)
        h = _gamma(h, ly.mlp_sub_gamma)
    d = _lin(h, ly.down)
    rec(f"l{i}.down_out", d)
    if ly.post_mlp_gamma is not None:
        d = _post_norm(d, ly.post_mlp_gamma, s.rms_eps)
        rec(f"l{i}.post_mlp", d)
    x = x + d
    rec(f"l{i}.mlp_res", x)
    return x


def float_head(s: DecoderShape, lm_head, x: np.ndarray, record: dict | None = None):
    """The final norm and the LM head (soft-capped where ``s.final_softcap``) on the residual
    stream after the last block: float64 logits ``[T, vocab]``."""
    rec = _recorder(record)
    n = _rms(x, s.rms_eps)
    rec("final_norm", n)
    logits = _lin(n, lm_head)
    if s.final_softcap:
        rec("lm_head", logits)
        logits = _softcap(logits, s.final_softcap)
    rec("logits", logits)
    return logits


def float_forward(fd: FloatDecoder, ids) -> np.ndarray:
    """Float64 logits ``[T, vocab]`` of the token ids ``ids`` at positions ``0 .. T-1``.

    Parameters
    ----------
    fd : FloatDecoder
    ids : sequence of int

    Returns
    -------
    numpy.ndarray
        float64 ``[len(ids), vocab]``.
    """
    return _forward(fd, ids)


def float_generate(fd: FloatDecoder, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy generation with the float model (argmax, lowest index on ties).

    Returns the ``new_tokens`` generated ids (the prompt excluded). Recomputes the whole
    sequence per token (no cache): a reference, not a fast path.
    """
    seq = list(prompt)
    out = []
    for _ in range(int(new_tokens)):
        tok = int(np.argmax(float_forward(fd, seq)[-1]))
        out.append(tok)
        seq.append(tok)
    return out


# ----------------------------------------------------------------------------- golden model

@dataclass
class KVCache:
    """Per-layer int8 K (after RoPE) and V caches ``[max_context, kv_heads * head_dim]``."""

    k: list[np.ndarray]
    v: list[np.ndarray]

    @classmethod
    def empty(cls, qd: QDecoder) -> KVCache:
        """Zeroed caches for every layer of ``qd``."""
        s = qd.shape
        shape = (qd.max_context, s.kv_heads * s.head_dim)
        return cls(k=[np.zeros(shape, dtype=np.int8) for _ in range(s.layers)],
                   v=[np.zeros(shape, dtype=np.int8) for _ in range(s.layers)])


def _absq(x: np.ndarray, gamma, *readers: QLinear):
    """The input of ``readers`` (linears that read one tensor): ``x`` itself for int8 linears;
    for ternary ones the per-token quantized ``(xq, m) = golden.ternary.absmax_quant(x, gamma)``
    (ABSQUANT, computed once and shared by every reader)."""
    ternary = {ql.ternary for ql in readers}
    if len(ternary) != 1:
        raise ValueError("linears that read one tensor must be all ternary or all int8")
    if not ternary.pop():
        return x
    return absmax_quant(x, gamma)


def _qlin(x, ql: QLinear, res: np.ndarray | None = None) -> np.ndarray:
    """A QLinear as the matrix engine (or, ternary, the TLMM engine: ``x`` is then the
    ``(xq, m)`` of :func:`_absq`) and its epilogue run it."""
    res_mult = ql.res_mult if res is not None else 0
    if ql.ternary:
        xq, m = x
        # matmul == golden.ternary.lookup_matmul of the group indices (the TLMM engine's sums).
        acc = matmul(xq, ql.weight) * m[:, None]
        return requantize(acc, ql.bias, ql.mult, ql.shift, res=res, res_mult=res_mult)
    return requantize(matmul(x, ql.weight), ql.bias, ql.mult, ql.shift,
                      res=res, res_mult=res_mult)


def _residual(xin, ql: QLinear, x: np.ndarray, add, post=None, gamma=None) -> np.ndarray:
    """The residual stream after o or down: fused into the linear's epilogue (``add`` None),
    or a separate ``residual_add(linear, x, *add)`` (VADD): for ternary linears (whose
    ``acc * m`` is ~2**20 times an int8 accumulator, so one shared shift cannot also hold the
    residual's multiplier), and for Gemma 2's post-norms (``post``: ``rmsnorm`` (eps, mult,
    shift) of the linear's output with the gamma codes ``gamma``, before the add)."""
    if add is None:
        return _qlin(xin, ql, res=x)
    y = _qlin(xin, ql)
    if post is not None:
        y = gl.rmsnorm(y, *post, gamma=gamma)
    return residual_add(y, x, *add)


def golden_step(qd: QDecoder, ids: list[int], pos: int, cache: KVCache) -> np.ndarray:
    """Run ``len(ids)`` rows at positions ``pos .. pos+len-1`` through the integer decoder.

    Appends each row's K (after RoPE) and V to ``cache`` at its position, exactly in the
    hardware's order, and returns the int8 logits ``[len(ids), vocab]`` (at
    ``qd.scales['logits']``). Prefill is one call with the prompt (or several chunks at
    increasing ``pos``); decode is a call with one id.

    Per layer: ``h = rmsnorm(x, *attn_norm)``; q/k/v of ``h`` (ternary linears: of ``(hq, m) =
    absmax_quant(h, attn_gamma)``, then ``requantize((hq @ t.T) * m, ...)``); per-head
    ``rmsnorm`` of q and k with gamma codes if ``q_norm`` (Qwen3); RoPE; cache
    append; attention (with the score cap ``attn_cap``); ``rmsnorm`` with ``attn_sub_norm`` if
    set; o (ternary: absmax_quant with ``attn_sub_gamma``) with the residual ``x`` (with a
    post-norm: ``rmsnorm`` of o with its gamma codes, then the residual add);
    ``rmsnorm(x, *mlp_norm)``; gate/up (ternary: absmax_quant with ``mlp_gamma``);
    ``gate_mul`` of the layer's activation; ``rmsnorm`` with ``mlp_sub_norm`` if set; down
    (ternary: ``mlp_sub_gamma``) with the residual (and post-norm). Then the final norm, the
    int8 LM head and, with ``final_cap``, ``tanh_cap``.

    Raises
    ------
    ValueError
        Positions past ``qd.max_context`` or a token id outside the vocabulary.
    """
    s = qd.shape
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    rows = ids.shape[0]
    if rows < 1:
        raise ValueError("golden_step needs at least one token")
    if pos < 0 or pos + rows > qd.max_context:
        raise ValueError(f"positions {pos}..{pos + rows - 1} exceed max_context "
                         f"{qd.max_context}")
    if ids.min() < 0 or ids.max() >= s.vocab:
        raise ValueError(f"token id outside the vocabulary of {s.vocab}")
    heads, kvh, hd = s.heads, s.kv_heads, s.head_dim
    table = qd.rope[pos:pos + rows]
    x = qd.embed[ids]
    for i, ly in enumerate(qd.layers):
        xn = _absq(gl.rmsnorm(x, *ly.attn_norm), ly.attn_gamma, ly.q, ly.k, ly.v)
        q, k = _qlin(xn, ly.q), _qlin(xn, ly.k)
        if ly.q_norm is not None:       # per-head RMSNORMs with gamma codes (Qwen3)
            q = gl.rmsnorm(q.reshape(rows * heads, hd), *ly.q_norm,
                           gamma=ly.q_norm_gamma).reshape(rows, -1)
            k = gl.rmsnorm(k.reshape(rows * kvh, hd), *ly.k_norm,
                           gamma=ly.k_norm_gamma).reshape(rows, -1)
        q = gl.rope(q, table, heads, hd)
        k = gl.rope(k, table, kvh, hd)
        v = _qlin(xn, ly.v)
        cache.k[i][pos:pos + rows] = k
        cache.v[i][pos:pos + rows] = v
        a = gl.attention(q, cache.k[i], cache.v[i], pos, heads, kvh, hd, *ly.attn,
                         window=s.window(i), cap=ly.attn_cap)
        if ly.attn_sub_norm is not None:
            a = gl.rmsnorm(a, *ly.attn_sub_norm)
        x = _residual(_absq(a, ly.attn_sub_gamma, ly.o), ly.o, x, ly.attn_add,
                      ly.post_attn_norm, ly.post_attn_gamma)
        xn = _absq(gl.rmsnorm(x, *ly.mlp_norm), ly.mlp_gamma, ly.gate, ly.up)
        h = gl.gate_mul(_qlin(xn, ly.gate), _qlin(xn, ly.up), *ly.silu, act=ly.act)
        if ly.mlp_sub_norm is not None:
            h = gl.rmsnorm(h, *ly.mlp_sub_norm)
        x = _residual(_absq(h, ly.mlp_sub_gamma, ly.down), ly.down, x, ly.mlp_add,
                      ly.post_mlp_norm, ly.post_mlp_gamma)
    logits = _qlin(gl.rmsnorm(x, *qd.final_norm), qd.lm_head)
    return logits if qd.final_cap is None else gl.tanh_cap(logits, *qd.final_cap)


@dataclass
class GoldenRun:
    """Result of :func:`golden_generate`."""

    tokens: list[int]                                   # the new tokens only
    step_logits: list[np.ndarray] = field(default_factory=list)  # prefill [T, V], then [1, V]s


def golden_generate(qd: QDecoder, prompt: list[int], new_tokens: int) -> GoldenRun:
    """Greedy generation with the integer model: one prefill step, then decode steps.

    The first new token comes from the prefill's last row; each further token from one decode
    step, so ``step_logits`` holds the prefill's ``[len(prompt), vocab]`` logits and then
    ``new_tokens - 1`` decode logits ``[1, vocab]``. Ties pick the lowest token id.
    """
    prompt = [int(t) for t in prompt]
    new_tokens = int(new_tokens)
    if not prompt:
        raise ValueError("golden_generate needs a non-empty prompt")
    if len(prompt) + max(new_tokens - 1, 0) > qd.max_context:
        raise ValueError(f"prompt {len(prompt)} + {new_tokens} new tokens exceed max_context "
                         f"{qd.max_context}")
    run = GoldenRun(tokens=[])
    if new_tokens <= 0:
        return run
    cache = KVCache.empty(qd)
    logits = golden_step(qd, prompt, 0, cache)
    run.step_logits.append(logits)
    run.tokens.append(int(np.argmax(logits[-1])))
    pos = len(prompt)
    while len(run.tokens) < new_tokens:
        logits = golden_step(qd, [run.tokens[-1]], pos, cache)
        run.step_logits.append(logits)
        run.tokens.append(int(np.argmax(logits[-1])))
        pos += 1
    return run


def top1_agreement(fd: FloatDecoder, qd: QDecoder, prompt: list[int],
                   tokens: list[int], forward=None) -> float:
    """Fraction of golden tokens that the float model would also pick (teacher-forced).

    Runs :func:`float_forward` (or ``forward(fd, ids)``, another family's float logits) on
    ``prompt + tokens[:-1]``; position ``T-1+j`` (``T`` the prompt length) predicts
    ``tokens[j]``. ``qd`` is not run (``tokens`` are its output); it is taken for symmetry with
    the callers that have both.
    """
    tokens = [int(t) for t in tokens]
    if not tokens:
        return 1.0
    prompt = [int(t) for t in prompt]
    logits = (forward or float_forward)(fd, prompt + tokens[:-1])
    pred = np.argmax(logits[len(prompt) - 1:], axis=-1)
    return float(np.mean(pred == np.asarray(tokens)))
