"""mapping.llm_lower, ternary path (docs/architecture.md, "Ternary path"): a random BitNet
b1.58 decoder (ternary linears, squared-ReLU gate, RMSNorms inside attention and MLP, gamma codes
before every ternary linear) lowered with ABSQUANT + TMATMUL and run on the ISA functional
model gives exactly the logits of the golden composition and of
``compiler.llm_interpret.golden_step``, in prefill and in decode, for several TLMM shapes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hwflow.compiler.decoder import DecoderShape, QDecoder, QLayer, QLinear
from hwflow.compiler.llm_interpret import KVCache, golden_step
from hwflow.golden import int8 as g8
from hwflow.golden import llm as gl
from hwflow.golden.ternary import absmax_quant, encode_groups, lookup_matmul
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import FLAG_GAMMA, FLAG_RELU2, FLAG_RESIDUAL, Opcode
from hwflow.mapping.errors import MappingError
from hwflow.mapping.llm_lower import (
    lower_decoder,
    program_instructions,
    prompt_runs,
)
from hwflow.sim.isa_model import IsaModel

from .test_llm_lower import _run

#: L = 8, SB = 32 B, the TLMM engine with G = 3, 4 tables x 4 replicas; 6 attention lanes (one
#: pass of 2 kv heads x 3 query heads per layer).
CFG = AccelConfig(chains=4, chain_len=8, mem_ports=1, port_bytes=32, act_depth=4096,
                  weight_depth=64, transformer=True, tlmm=True, tlmm_g=3, tlmm_t=4, tlmm_q=4,
                  tlmm_acc_depth=256, attn_heads=6)
#: Same engine, other TLMM shapes: G = 2 and 4, T and Q that divide none of the widths; the
#: KV260's T = 12, Q = 8, whose 36-byte chunks read past the rows (tails after h, att, gate).
CFGS = {"G3T4Q4": CFG,
        "G2T3Q5": replace(CFG, tlmm_g=2, tlmm_t=3, tlmm_q=5),
        "G3T12Q8": replace(CFG, tlmm_t=12, tlmm_q=8),
        "G4T2Q8": replace(CFG, tlmm_g=4, tlmm_t=2, tlmm_q=8, chains=8,
                          mem_ports=2)}
#: hidden 120, heads of 20 (padded to 24 B), intermediate 200: no width is a multiple of G, T,
#: Q or L.
SHAPE = DecoderShape(vocab=320, hidden=120, layers=2, heads=6, kv_heads=2, head_dim=20,
                     intermediate=200, max_position=2048, rope_theta=10000.0, rms_eps=1e-5)


class Cache:
    def __init__(self, qd: QDecoder):
        width = qd.shape.kv_heads * qd.shape.head_dim
        self.k = [np.zeros((qd.max_context, width), dtype=np.int8) for _ in qd.layers]
        self.v = [np.zeros((qd.max_context, width), dtype=np.int8) for _ in qd.layers]


def _tlinear(ql: QLinear, x, gamma, res=None, G: int = 3):
    """A ternary linear composed of golden kernels: absmax_quant, the table-lookup sums,
    requantize of ``acc * m``."""
    xq, m = absmax_quant(x, gamma)
    acc = lookup_matmul(xq, encode_groups(ql.weight, G), G)
    return g8.requantize(acc * m[:, None], ql.bias, ql.mult, ql.shift, res=res,
                         res_mult=ql.res_mult if res is not None else 0)


def _linear(ql: QLinear, x):
    return g8.requantize(g8.matmul(x, ql.weight), ql.bias, ql.mult, ql.shift)


def reference_step(qd: QDecoder, ids, pos: int, cache: Cache, calibrate=None):
    """The BitNet decoder on ``len(ids)`` tokens at ``pos..`` (the golden order)."""
    s = qd.shape
    cal = calibrate or (lambda *a: None)
    ids = np.asarray(ids)
    rows = len(ids)
    x = qd.embed[ids]
    tab = qd.rope[pos:pos + rows]
    for i, ly in enumerate(qd.layers):
        cal("attn_norm", ly, x)
        h = gl.rmsnorm(x, *ly.attn_norm)
        for nm in ("q", "k", "v"):
            cal(nm, getattr(ly, nm), (h, ly.attn_gamma))
        q, k, v = (_tlinear(getattr(ly, nm), h, ly.attn_gamma) for nm in ("q", "k", "v"))
        q = gl.rope(q, tab, s.heads, s.head_dim)
        k = gl.rope(k, tab, s.kv_heads, s.head_dim)
        cache.k[i][pos:pos + rows] = k
        cache.v[i][pos:pos + rows] = v
        cal("attn", ly, (q, cache.k[i][:pos + rows]))
        a = gl.attention(q, cache.k[i], cache.v[i], pos, s.heads, s.kv_heads, s.head_dim,
                         *ly.attn)
        cal("attn_sub_norm", ly, a)
        a = gl.rmsnorm(a, *ly.attn_sub_norm)
        cal("o", ly.o, (a, ly.attn_sub_gamma))
        x = _tlinear(ly.o, a, ly.attn_sub_gamma, res=x)
        cal("mlp_norm", ly, x)
        h = gl.rmsnorm(x, *ly.mlp_norm)
        cal("gate", ly.gate, (h, ly.mlp_gamma))
        cal("up", ly.up, (h, ly.mlp_gamma))
        g, u = _tlinear(ly.gate, h, ly.mlp_gamma), _tlinear(ly.up, h, ly.mlp_gamma)
        cal("relu2", ly, (g, u))
        y = gl.relu2_mul(g, u, *ly.silu)
        cal("mlp_sub_norm", ly, y)
        y = gl.rmsnorm(y, *ly.mlp_sub_norm)
        cal("down", ly.down, (y, ly.mlp_sub_gamma))
        x = _tlinear(ly.down, y, ly.mlp_sub_gamma, res=x)
    cal("final_norm", qd, x)
    h = gl.rmsnorm(x, *qd.final_norm)
    cal("lm_head", qd.lm_head, (h, None))
    return _linear(qd.lm_head, h)


def _mult(real: float) -> tuple[int, int]:
    shift = g8.choose_shift(np.array([real]))
    return int(g8.quantize_multiplier(np.array([real]), shift)[0]), shift


def _calibrate(kind, obj, value):
    """Multipliers from the values flowing through, so activations spread over int8."""
    if kind in ("attn_norm", "mlp_norm", "final_norm", "attn_sub_norm", "mlp_sub_norm"):
        mult, shift = _mult(35 * np.sqrt(value.shape[-1]) / 2.0**32)
        if kind == "final_norm":
            obj.final_norm = (10, mult, shift)
        else:
            setattr(obj, kind, (10, mult, shift))
    elif kind == "attn":
        q, k = value
        hd = SHAPE.head_dim
        qk = q[:, :hd].astype(np.int64) @ k[:, :hd].astype(np.int64).T
        smul, sshift = _mult(600.0 / max(qk.std(), 1.0))
        omul, oshift = _mult(1.5 / 2**15)
        obj.attn = (smul, sshift, omul, oshift)
    elif kind == "relu2":
        g, u = value
        p = gl.RELU2_LUT[g.astype(np.int64) + 128] * u
        obj.silu = _mult(30.0 / max(p.std(), 1.0))
    elif kind == "lm_head":
        acc = g8.matmul(value[0], obj.weight) + obj.bias
        m1, obj.shift = _mult(30.0 / max(acc.std(), 1.0))
        obj.mult = np.full(len(obj.mult), m1, dtype=np.int64)
    else:                                   # a ternary linear, before it runs
        x, gamma = value
        xq, m = absmax_quant(x, gamma)
        acc = g8.matmul(xq, obj.weight) * m[:, None] + obj.bias
        if kind in ("o", "down"):           # residual: shift 16, res_mult 0.85
            obj.shift, obj.res_mult = 16, int(0.85 * 65536)
            m0 = np.full(len(obj.mult), round(16.0 / max(acc.std(), 1.0) * 65536))
        else:
            m1, obj.shift = _mult(30.0 / max(acc.std(), 1.0))
            m0 = np.full(len(obj.mult), m1)
        obj.mult = np.clip(m0 + np.arange(len(m0)) % 5 - 2, 1, 65535).astype(np.int64)


def random_bitnet(seed: int = 0, max_context: int = 64, layers: int = 2,
                  gammas: bool = True) -> QDecoder:
    """A random ternary QDecoder of :data:`SHAPE`, calibrated on a random prompt."""
    rng = np.random.default_rng(seed)
    s = SHAPE
    shape = DecoderShape(**{**s.to_dict(), "layers": layers})

    def tlin(n, k):
        return QLinear(rng.choice(np.array([-1, 0, 1], np.int8), (n, k), p=[.3, .4, .3]),
                       rng.integers(-20000, 20000, n).astype(np.int64),
                       np.ones(n, dtype=np.int64), 0, ternary=True)

    def gamma(n):
        return rng.integers(-40, 100, n).astype(np.int8) if gammas else None

    q_layers = []
    for _ in range(layers):
        q_layers.append(QLayer(
            attn_norm=(0, 1, 0), q=tlin(s.heads * s.head_dim, s.hidden),
            k=tlin(s.kv_heads * s.head_dim, s.hidden), v=tlin(s.kv_heads * s.head_dim, s.hidden),
            attn=(1, 0, 1, 0), o=tlin(s.hidden, s.heads * s.head_dim), mlp_norm=(0, 1, 0),
            gate=tlin(s.intermediate, s.hidden), up=tlin(s.intermediate, s.hidden),
            silu=(1, 0), down=tlin(s.hidden, s.intermediate), act="relu2",
            attn_sub_norm=(0, 1, 0), mlp_sub_norm=(0, 1, 0), attn_gamma=gamma(s.hidden),
            attn_sub_gamma=gamma(s.heads * s.head_dim), mlp_gamma=gamma(s.hidden),
            mlp_sub_gamma=gamma(s.intermediate)))
    lm = QLinear(rng.integers(-31, 32, (s.vocab, s.hidden)).astype(np.int8),
                 rng.integers(-2000, 2000, s.vocab).astype(np.int64),
                 np.ones(s.vocab, dtype=np.int64), 0)
    qd = QDecoder("random-bitnet", shape,
                  rng.integers(-60, 61, (s.vocab, s.hidden)).astype(np.int8),
                  gl.rope_table(max_context, s.inv_freq()), q_layers, (0, 1, 0),
                  lm, max_context, {"logits": 0.1})
    reference_step(qd, rng.integers(0, s.vocab, 24), 0, Cache(qd), calibrate=_calibrate)
    return qd


@pytest.fixture(scope="module")
def qd():
    return random_bitnet()


# ------------------------------------------------------------------------------- tests

def test_model_values_are_spread_not_saturated(qd):
    logits = reference_step(qd, [1, 2, 3, 4], 0, Cache(qd))
    assert logits.std() > 10 and np.mean(np.abs(logits.astype(int)) == 128) < 0.05
    # the reference composition is the compiler's golden step
    np.testing.assert_array_equal(logits, golden_step(qd, [1, 2, 3, 4], 0, KVCache.empty(qd)))


@pytest.mark.parametrize("name", list(CFGS))
def test_prefill_and_decode_match_golden(qd, name):
    """A 5-token chunk padded to the 8-row bucket (no logits: its last row is padding; its
    cache rows checked by the decode steps at 5 and 6); a 21-token prompt as the host runs it
    (16 rows, then 8 ending on the last token), decode at 21: ISA model == golden composition
    == golden_step, the last row's logits."""
    cfg = CFGS[name]
    low = lower_decoder(qd, cfg)
    assert low.buckets == [8, 16]
    rng = np.random.default_rng(5)
    model = IsaModel(cfg, low.image, regions=low.memory_map)
    ref, gold = Cache(qd), KVCache.empty(qd)
    prompt = rng.integers(0, qd.shape.vocab, 5)
    got, _, st = _run(model, low, prompt, 0)
    assert st.rows == 8 and not st.has_logits
    np.testing.assert_array_equal(reference_step(qd, prompt, 0, ref),
                                  golden_step(qd, prompt, 0, gold))
    for pos in (5, 6):
        tok = rng.integers(0, qd.shape.vocab, 1)
        got, stats, st = _run(model, low, tok, pos)
        assert st.prog_base == low.decode_prog_base
        np.testing.assert_array_equal(got, reference_step(qd, tok, pos, ref)[-1])
        np.testing.assert_array_equal(got, golden_step(qd, tok, pos, gold)[-1])
    # decode: 7 TMATMULs per layer, each ceil(k_groups/T) * ceil(n_out/Q) lookup records
    G, T, Q = cfg.tlmm_g, cfg.tlmm_t, cfg.tlmm_q
    def cdiv(a, b):
        return -(-a // b)

    want = 2 * sum(cdiv(cdiv(k, G), T) * cdiv(n, Q) for n, k in
                   [(144, 120), (48, 120), (48, 120), (120, 144), (200, 120), (200, 120),
                    (120, 200)])
    assert stats.tlmm_lookups == want

    model = IsaModel(cfg, low.image, regions=low.memory_map)
    ref = Cache(qd)
    prompt = rng.integers(0, qd.shape.vocab, 21)
    for lo, k in prompt_runs(21, low.buckets):
        got, _, st = _run(model, low, prompt[lo:lo + k], lo)
        assert st.has_logits
        np.testing.assert_array_equal(got, reference_step(qd, prompt[lo:lo + k], lo, ref)[-1])
    tok = rng.integers(0, qd.shape.vocab, 1)
    got, _, _ = _run(model, low, tok, 21)
    np.testing.assert_array_equal(got, reference_step(qd, tok, 21, ref)[-1])


def test_program_shape_and_reports(qd):
    low = lower_decoder(qd, CFG)
    prog = low.decode.program
    n = program_instructions(qd)
    assert len(prog) == n == 7 + 2 * (19 + 2 + 1)
    ops = [i.op for i in prog]
    assert ops.count(Opcode.TMATMUL) == 14 and ops.count(Opcode.ABSQUANT) == 8
    assert ops.count(Opcode.MATMUL) == 1                          # the int8 LM head
    assert ops.count(Opcode.RMSNORM) == 2 * 4 + 1
    first = ops.index(Opcode.RMSNORM)
    assert ops[first:first + 7] == [Opcode.RMSNORM, Opcode.LOAD, Opcode.ABSQUANT,
                                    Opcode.TMATMUL, Opcode.TMATMUL, Opcode.TMATMUL, Opcode.ROPE]
    sil = [i for i in prog if i.op == Opcode.SILUMUL]
    assert all(i.flags & FLAG_RELU2 for i in sil)
    assert all(i.flags & FLAG_GAMMA for i in prog if i.op == Opcode.ABSQUANT)
    res = [i for i in prog if i.op == Opcode.TMATMUL and i.flags & FLAG_RESIDUAL]
    assert len(res) == 4 and all(i.n_out == SHAPE.hidden for i in res)
    q = next(i for i in prog if i.op == Opcode.TMATMUL)
    assert (q.k_groups, q.n_out) == (40, 6 * 24)                  # heads padded to 24 channels
    lin = {r["name"]: r for r in low.reports["layers"]}
    assert lin["L0.q"]["engine"] == "tlmm" and lin["lm_head"]["engine"] == "mpe"
    assert lin["L1.down"]["tlmm"] == {"G": 3, "T": 4, "Q": 4}
    assert low.reports["tlmm"]["lookups_per_cycle"] == 16
    regions = {r.name for r in low.memory_map.regions}
    assert {"weights:L0.gamma", "weights:L1.gamma"} <= regions
    for p in [low.decode, *low.prefill.values()]:
        spans = sorted(p.plan.span(a) for a in p.plan.areas)
        assert all(e0 <= s1 for (_, e0), (s1, _) in zip(spans, spans[1:], strict=False))
        assert spans[-1][1] == p.plan.words <= CFG.act_depth


def test_without_gammas_no_load_and_no_gamma_flag():
    qd = random_bitnet(seed=2, layers=1, gammas=False)
    low = lower_decoder(qd, CFG)
    prog = low.decode.program
    assert len(prog) == program_instructions(qd) == 7 + 19 + 2
    assert [i.op for i in prog].count(Opcode.LOAD) == 1           # the RoPE rows only
    assert not any(i.flags & FLAG_GAMMA for i in prog if i.op == Opcode.ABSQUANT)
    model = IsaModel(CFG, low.image, regions=low.memory_map)
    got, _, _ = _run(model, low, [4, 9, 2, 7, 1, 0, 3, 5], 0)         # a whole 8-row bucket
    np.testing.assert_array_equal(got, golden_step(qd, [4, 9, 2, 7, 1, 0, 3, 5], 0,
                                                   KVCache.empty(qd))[-1])


def test_ternary_decoder_needs_the_tlmm_engine(qd):
    with pytest.raises(MappingError, match=r"random-bitnet.*ternary.*no TLMM engine"):
        lower_decoder(qd, replace(CFG, tlmm=False))
    with pytest.raises(MappingError, match=r"L0.gate.*tlmm_acc_depth >= 200"):
        lower_decoder(qd, replace(CFG, tlmm_acc_depth=160))


def test_mixed_formats_in_one_layer_are_refused(qd):
    bad = replace(qd, layers=[replace(qd.layers[0], up=replace(qd.layers[0].up,
                                                               ternary=False))])
    with pytest.raises(MappingError, match=r"layer 0: linears .* ternary and the others int8"):
        lower_decoder(bad, CFG)


@pytest.mark.parametrize("name", sorted(CFGS))
def test_shape_only_lowering_equals_the_full_one(qd, name):
    """Ternary decoders too: TMATMUL block sizes from the layout alone, the same programs,
    memory map and reports, no image."""
    cfg = CFGS[name]
    full = lower_decoder(qd, cfg)
    shape = lower_decoder(qd, cfg, shape_only=True)
    assert shape.image == b"" and shape.memory_map.total_bytes == len(full.image)
    for a, b in zip([full.decode, *full.prefill.values()],
                    [shape.decode, *shape.prefill.values()], strict=True):
        assert [i.encode() for i in a.program] == [i.encode() for i in b.program]
    assert shape.memory_map.to_json() == full.memory_map.to_json()
    assert shape.reports == full.reports


def test_int4_lm_head_beside_ternary_blocks(qd):
    """``--lm-head int4`` on a ternary decoder: the LM head a W4A8 MATMUL (FLAG_INT4, its
    codes and group scales in the image, half the int8 head's weight bytes), the blocks on the
    TLMM; prefill and decode on the ISA model equal golden_step."""
    from hwflow.golden import int4 as g4
    from hwflow.hw.isa import FLAG_INT4

    rng = np.random.default_rng(11)
    s = qd.shape
    w4, w4s, _ = g4.quantize_weight_int4(rng.normal(size=(s.vocab, s.hidden)))
    head = replace(qd.lm_head, weight=g4.dequantize_int4(w4, w4s), w4=w4, w4_scale=w4s)
    qd4 = replace(qd, lm_head=head)
    low8, low = lower_decoder(qd, CFG), lower_decoder(qd4, CFG)
    mm = [i for i in low.decode.program if i.op == Opcode.MATMUL]
    assert mm and all(i.flags & FLAG_INT4 for i in mm)    # the LM head is the only MATMUL
    assert low.memory_map.total_bytes < low8.memory_map.total_bytes
    model, gold = IsaModel(CFG, low.image, regions=low.memory_map), KVCache.empty(qd4)
    prompt = rng.integers(0, s.vocab, 8)
    got, _, st = _run(model, low, prompt, 0)
    assert st.has_logits
    np.testing.assert_array_equal(got, golden_step(qd4, prompt, 0, gold)[-1])
    for pos in (8, 9):
        tok = rng.integers(0, s.vocab, 1)
        got, _, _ = _run(model, low, tok, pos)
        np.testing.assert_array_equal(got, golden_step(qd4, tok, pos, gold)[-1])
