"""mapping.llm_lower: one decode program and the prefill buckets, run on the ISA functional model,
give exactly the logits of the golden composition of the decoder (golden/llm.py + golden/int8.py),
at any position, for prompts shorter than a bucket and for prompts in several chunks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hwflow.compiler.decoder import DecoderShape, QDecoder, QLayer, QLinear
from hwflow.golden import int8 as g8
from hwflow.golden import llm as gl
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import INSTR_BYTES, Opcode
from hwflow.mapping.errors import MappingError
from hwflow.mapping.llm_lower import (
    decode_memory_writes,
    lower_decoder,
    naive_program_bytes,
    program_instructions,
    prompt_runs,
    read_logits,
)
from hwflow.sim.isa_model import GatherRangeError, IsaModel

#: L = 8, SB = 32 B: hidden 120 -> residual rows of 16 words, heads of 20 -> 24 B; 6 attention
#: lanes: one pass takes both kv heads with their 3 query heads each, a position block of
#: 2 x 3 words -> 64 B (pos_sb 2).
CFG = AccelConfig(chains=4, chain_len=8, mem_ports=1, port_bytes=32, act_depth=4096,
                  weight_depth=64, transformer=True, attn_heads=6)
#: SB = 64 B: the embedding row (120 B) and the position block (48 B) pad differently.
CFG64 = AccelConfig(chains=8, chain_len=8, mem_ports=2, port_bytes=32, act_depth=4096,
                    weight_depth=64, transformer=True, attn_heads=6)
SHAPE = DecoderShape(vocab=320, hidden=120, layers=2, heads=6, kv_heads=2, head_dim=20,
                     intermediate=200, max_position=2048, rope_theta=10000.0, rms_eps=1e-5)


# ------------------------------------------------------------------- golden composition

class Cache:
    """Per layer K and V int8 ``[max_context, kv_heads * head_dim]``."""

    def __init__(self, qd: QDecoder):
        width = qd.shape.kv_heads * qd.shape.head_dim
        self.k = [np.zeros((qd.max_context, width), dtype=np.int8) for _ in qd.layers]
        self.v = [np.zeros((qd.max_context, width), dtype=np.int8) for _ in qd.layers]


def _linear(ql: QLinear, x, res=None):
    acc = g8.matmul(x, ql.weight)
    return g8.requantize(acc, ql.bias, ql.mult, ql.shift, res=res,
                         res_mult=ql.res_mult if res is not None else 0)


def reference_step(qd: QDecoder, ids, pos: int, cache: Cache, calibrate=None):
    """The decoder on ``rows`` tokens at positions ``pos..``, composed of golden kernels.

    ``calibrate(kind, layer, value)`` (building the test model only) may set parameters from the
    values flowing through before they are used.
    """
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
            cal(nm, getattr(ly, nm), h)
        q, k, v = (_linear(getattr(ly, nm), h) for nm in ("q", "k", "v"))
        q = gl.rope(q, tab, s.heads, s.head_dim)
        k = gl.rope(k, tab, s.kv_heads, s.head_dim)
        cache.k[i][pos:pos + rows] = k
        cache.v[i][pos:pos + rows] = v
        cal("attn", ly, (q, cache.k[i][:pos + rows], cache.v[i][:pos + rows], pos))
        smul, sshift, omul, oshift = ly.attn
        a = gl.attention(q, cache.k[i], cache.v[i], pos, s.heads, s.kv_heads, s.head_dim,
                         smul, sshift, omul, oshift)
        cal("o", ly.o, a)
        x = _linear(ly.o, a, res=x)
        cal("mlp_norm", ly, x)
        h = gl.rmsnorm(x, *ly.mlp_norm)
        cal("gate", ly.gate, h)
        cal("up", ly.up, h)
        g, u = _linear(ly.gate, h), _linear(ly.up, h)
        cal("silu", ly, (g, u))
        y = gl.silu_mul(g, u, *ly.silu)
        cal("down", ly.down, y)
        x = _linear(ly.down, y, res=x)
    cal("final_norm", qd, x)
    h = gl.rmsnorm(x, *qd.final_norm)
    cal("lm_head", qd.lm_head, h)
    return _linear(qd.lm_head, h)


# ------------------------------------------------------------------------ random model

def _mult(real: float) -> tuple[int, int]:
    shift = g8.choose_shift(np.array([real]))
    return int(g8.quantize_multiplier(np.array([real]), shift)[0]), shift


def _calibrate(kind, obj, value):
    """Choose multipliers from the values seen so that activations spread over int8 without
    saturating much (std about 25-35)."""
    if kind in ("attn_norm", "mlp_norm", "final_norm"):
        h = value.shape[-1]
        mult, shift = _mult(35 * np.sqrt(h) / 2.0**32)
        norm = (10, mult, shift)
        if kind == "final_norm":
            obj.final_norm = norm
        else:
            setattr(obj, kind, norm)
    elif kind == "attn":
        q, k, v, pos = value
        hd = k.shape[1] // SHAPE.kv_heads
        qk = q[:, :hd].astype(np.int64) @ k[:, :hd].astype(np.int64).T
        smul, sshift = _mult(600.0 / max(qk.std(), 1.0))
        omul, oshift = _mult(1.5 / 2**15)
        obj.attn = (smul, sshift, omul, oshift)
    elif kind == "silu":
        g, u = value
        p = gl.SILU_LUT[g.astype(np.int64) + 128] * u
        obj.silu = _mult(30.0 / max(p.std(), 1.0))
    else:                                   # a linear, before it runs on ``value``
        acc = g8.matmul(value, obj.weight) + obj.bias
        target = 16.0 if kind in ("o", "down") else 30.0
        if kind in ("o", "down"):           # residual: shift 16, res_mult 0.85
            obj.shift, obj.res_mult = 16, int(0.85 * 65536)
            m = np.full(len(obj.mult), round(target / max(acc.std(), 1.0) * 65536))
        else:
            m1, obj.shift = _mult(target / max(acc.std(), 1.0))
            m = np.full(len(obj.mult), m1)
        obj.mult = np.clip(m + np.arange(len(m)) % 7 - 3, 1, 65535).astype(np.int64)


def random_decoder(seed: int = 0, max_context: int = 64, layers: int = 2,
                   vocab: int = SHAPE.vocab) -> QDecoder:
    """A random QDecoder of :data:`SHAPE` (``layers``, ``vocab``) with multipliers calibrated on
    a random prompt."""
    rng = np.random.default_rng(seed)
    shape = DecoderShape(**{**SHAPE.to_dict(), "layers": layers, "vocab": vocab})
    s = shape

    def lin(n, k):
        return QLinear(rng.integers(-31, 32, (n, k)).astype(np.int8),
                       rng.integers(-2000, 2000, n).astype(np.int64),
                       np.ones(n, dtype=np.int64), 0)

    q_layers = []
    for _ in range(layers):
        q_layers.append(QLayer(
            attn_norm=(0, 1, 0), q=lin(s.heads * s.head_dim, s.hidden),
            k=lin(s.kv_heads * s.head_dim, s.hidden), v=lin(s.kv_heads * s.head_dim, s.hidden),
            attn=(1, 0, 1, 0), o=lin(s.hidden, s.heads * s.head_dim), mlp_norm=(0, 1, 0),
            gate=lin(s.intermediate, s.hidden), up=lin(s.intermediate, s.hidden),
            silu=(1, 0), down=lin(s.hidden, s.intermediate)))
    qd = QDecoder("random", shape, rng.integers(-60, 61, (s.vocab, s.hidden)).astype(np.int8),
                  gl.rope_table(max_context, s.inv_freq()), q_layers, (0, 1, 0),
                  lin(s.vocab, s.hidden), max_context, {"logits": 0.1})
    reference_step(qd, rng.integers(0, s.vocab, 24), 0, Cache(qd), calibrate=_calibrate)
    return qd


@pytest.fixture(scope="module")
def qd():
    return random_decoder()


@pytest.fixture(scope="module")
def lowered(qd):
    return lower_decoder(qd, CFG)


def _golden_steps():
    """The reference compositions to compare with: always this file's, and the compiler's
    golden interpreter once compiler/llm_interpret.py exists."""
    steps = [("composition", Cache, reference_step)]
    try:
        from hwflow.compiler.llm_interpret import KVCache, golden_step
    except ImportError:
        return steps
    steps.append(("llm_interpret", KVCache.empty, golden_step))
    return steps


def _run(model: IsaModel, low, ids, pos):
    step = decode_memory_writes(low, ids, pos)
    for addr, data in step.writes:
        model.write(addr, data)
    model.reset_stats()
    stats = model.run(step.prog_base, pos=step.pos)
    return (read_logits(step, model) if step.has_logits else None), stats, step


def _check(model, low, ids, pos, want_rows, err_msg=""):
    """Run ``ids`` at ``pos``; the logits (its last row's) equal the reference's last row when
    that row is a real token (a padded run's last row runs on token 0). Returns the step."""
    got, _, st = _run(model, low, ids, pos)
    assert st.has_logits == (len(ids) == st.rows)
    if st.has_logits:
        np.testing.assert_array_equal(got, want_rows[-1], err_msg=err_msg)
    else:
        with pytest.raises(ValueError, match=f"padded to {st.rows} rows"):
            read_logits(st, model)
    return st


# ------------------------------------------------------------------------------- tests

def test_model_values_are_spread_not_saturated(qd):
    logits = reference_step(qd, [1, 2, 3, 4], 0, Cache(qd))
    assert logits.std() > 10 and np.mean(np.abs(logits.astype(int)) == 128) < 0.05


@pytest.mark.parametrize("cfg", [CFG, CFG64], ids=["SB32", "SB64"])
def test_prefill_and_decode_match_golden(qd, cfg):
    """A 5-token chunk padded to the 8-row bucket (its cache rows checked by the decode steps
    at positions 5 and 6 that read them); a 21-token prompt as the host runs it (16 rows, then
    the 8-row bucket ending on the last token: rows 13..15 recomputed), then a decode step at 21
    (keys past one attention block of 16). The logits are the last row's."""
    low = lower_decoder(qd, cfg)
    assert low.buckets == [8, 16]
    rng = np.random.default_rng(5)
    for name, new_cache, step in _golden_steps():
        model = IsaModel(cfg, low.image, regions=low.memory_map)
        cache = new_cache(qd)
        prompt = rng.integers(0, qd.shape.vocab, 5)
        st = _check(model, low, prompt, 0, step(qd, prompt, 0, cache), name)
        assert st.rows == 8 and st.prog_base == low.prefill_prog_bases[8]
        assert not st.has_logits
        for pos in (5, 6):
            tok = rng.integers(0, qd.shape.vocab, 1)
            st = _check(model, low, tok, pos, step(qd, tok, pos, cache), name)
            assert st.prog_base == low.decode_prog_base and st.has_logits

        model = IsaModel(cfg, low.image, regions=low.memory_map)
        cache = new_cache(qd)
        prompt = rng.integers(0, qd.shape.vocab, 21)
        assert prompt_runs(21, low.buckets) == [(0, 16), (13, 8)]
        for lo, k in prompt_runs(21, low.buckets):
            st = _check(model, low, prompt[lo:lo + k], lo,
                        step(qd, prompt[lo:lo + k], lo, cache), name)
            assert st.has_logits
        tok = rng.integers(0, qd.shape.vocab, 1)
        _check(model, low, tok, 21, step(qd, tok, 21, cache), name)


def test_a_vocabulary_past_one_matmul_streams_its_logits_in_parts():
    """70,000 tokens: the LM head is two MATMULs (65,504 + 4,496 outputs at lcm(P, L, SB) = 32),
    each stored to its super-beats of the logits row before the next: the activation buffer
    holds one part (8,188 words), not the 8,752-word row (the last part padded to its
    super-beat: 564 words); prefill and decode logits equal golden."""
    big = random_decoder(seed=4, layers=1, vocab=70000)
    cfg = replace(CFG, act_depth=16384)
    low = lower_decoder(big, cfg)
    mm = [i for i in low.decode.program if i.op == Opcode.MATMUL][-2:]
    st = [i for i in low.decode.program if i.op == Opcode.STORE][-2:]
    assert [i.n for i in mm] == [65504, 4496] and [i.b for i in st] == [8188, 564]
    assert st[1].ext - st[0].ext == 65504 // cfg.beat_bytes
    span = low.decode.plan.span("logits")
    assert span[1] - span[0] == 8188 < low.io.logits_row_bytes // cfg.chain_len == 8752
    model = IsaModel(cfg, low.image, regions=low.memory_map)
    cache = Cache(big)
    rng = np.random.default_rng(11)
    prompt = rng.integers(0, 70000, 8)
    _check(model, low, prompt, 0, reference_step(big, prompt, 0, cache))
    tok = rng.integers(0, 70000, 1)
    _check(model, low, tok, 8, reference_step(big, tok, 8, cache))


def test_one_layer_at_the_end_of_the_context(qd):
    """One layer; a 3-token chunk in the 8-row bucket at the last positions: the bucket's five
    extra rows land in the slack rows of the RoPE table and the caches, not in the next
    cache."""
    one = random_decoder(seed=3, layers=1)
    low = lower_decoder(one, CFG)
    model = IsaModel(CFG, low.image, regions=low.memory_map)
    cache = Cache(one)
    rng = np.random.default_rng(9)
    prompt = rng.integers(0, one.shape.vocab, 61)
    for lo in range(0, 61, 16):
        hi = min(lo + 16, 61)
        _check(model, low, prompt[lo:hi], lo, reference_step(one, prompt[lo:hi], lo, cache))
    _check(model, low, prompt[:3], 61, reference_step(one, prompt[:3], 61, cache))
    assert low.kv.rows == 64 + 15 and low.kv.v_bases[0] - low.kv.k_bases[0] == 79 * 2
    assert low.kv.regions == ((0, 2, 2),)
    # every real cache row equals golden's: the bucket's extra rows went to the slack rows
    for base, want in ((low.kv.k_bases[0], cache.k[0]), (low.kv.v_bases[0], cache.v[0])):
        np.testing.assert_array_equal(_cache_rows(model, low, base, 64), want)


def _cache_rows(model, low, base, n):
    """Positions ``0..n-1`` of a layer's K/V cache as ``[n, kv_heads * head_dim]`` (heads
    unpadded), read back from its head-major regions (word ``d * slots + k`` of a position
    block is word ``d`` of the region's kv head ``k``)."""
    s, L, SB = SHAPE, CFG.chain_len, CFG.beat_bytes
    hdw = low.kv.hd_words
    heads, off = [], 0
    for _k0, slots, pos_sb in low.kv.regions:
        raw = np.frombuffer(model.read((base + off) * SB, n * pos_sb * SB), dtype=np.int8)
        blk = raw.reshape(n, pos_sb * SB)[:, :slots * hdw * L].reshape(n, hdw, slots, L)
        for k in range(slots):
            heads.append(blk[:, :, k, :].reshape(n, hdw * L)[:, :s.head_dim])
        off += low.kv.rows * pos_sb
    return np.concatenate(heads, axis=1)


def test_decode_program_is_one_program_for_every_position(lowered):
    low = lowered
    SB = CFG.beat_bytes
    n = program_instructions(2)
    assert len(low.decode.program) == n == 45        # 36 and a PREFETCH per MATMUL group
    start = low.decode_prog_base * SB
    code = low.image[start:start + n * INSTR_BYTES]
    assert code == b"".join(i.encode() for i in low.decode.program)
    bases = {decode_memory_writes(low, [7], p).prog_base for p in range(low.max_context)}
    assert bases == {low.decode_prog_base}
    # the host writes only the ids; the program bytes never change with the position
    for p in (0, 33, 63):
        st = decode_memory_writes(low, [7], p)
        assert [a for a, _ in st.writes] == [low.io.ids_addr * SB]
    ops = [i.op for i in low.decode.program]
    # the first MATMUL's weights stream from the start, beside the GATHER
    assert ops[:3] == [Opcode.PREFETCH, Opcode.GATHER, Opcode.LOAD]
    assert ops[-2:] == [Opcode.STORE, Opcode.END]
    assert ops.count(Opcode.ATTN) == 2 and ops.count(Opcode.MATMUL) == 2 * 7 + 1
    assert ops.count(Opcode.PREFETCH) == 2 * 4 + 1
    for b, prog in low.prefill.items():
        # every row through the blocks; the final norm and the LM head on the last row only
        assert [i.op for i in prog.program] == ops and all(
            i.rows in (0, b) for i in prog.program[:-5])
        # the final norm, the LM head's PREFETCH and MATMUL
        assert [i.rows for i in prog.program[-5:-2]] == [1, 1, 1]


def test_decode_traffic_keeps_activations_on_chip(qd, lowered):
    low = lowered
    SB = CFG.beat_bytes
    model = IsaModel(CFG, low.image, regions=low.memory_map)
    _run(model, low, [3, 4, 5], 0)
    _, stats, _ = _run(model, low, [6], 3)
    t = stats.to_dict()["traffic"]
    assert t["activations_read"] == t["activations_written"] == 0
    assert t["other_read"] == t["other_written"] == 0
    block = sum(pos_sb for *_, pos_sb in low.kv.regions) * SB
    assert t["kv_written"] == 2 * 2 * block                      # K and V, 2 layers, 1 row
    # K and V, 2 layers, 4 keys, read once for all 6 query heads (the useful 2 x 2 x 4 x
    # 2 kv heads x 20 B, up to the heads' padding to words and the block's to super-beats)
    assert t["kv_read"] == 2 * 2 * 4 * block
    assert t["io_read"] == SB and t["io_written"] == low.io.logits_row_bytes
    assert t["program_read"] == program_instructions(2) * INSTR_BYTES
    weights = sum(r.nbytes for r in low.memory_map.regions
                  if r.kind == "weights" and r.name not in ("weights:embed", "weights:rope"))
    emb_row = low.memory_map.region("weights:embed").words * CFG.chain_len
    cs_row = low.memory_map.region("weights:rope").words * CFG.chain_len
    assert t["weights_read"] == weights + emb_row + cs_row


def test_gather_out_of_range_id(lowered):
    low = lowered
    model = IsaModel(CFG, low.image, regions=low.memory_map)
    with pytest.raises(ValueError, match="token id 320 outside the vocabulary of 320"):
        decode_memory_writes(low, [320], 0)
    step = decode_memory_writes(low, [1], 0)
    model.write(low.io.ids_addr * CFG.beat_bytes, np.array([320], dtype="<u4").tobytes())
    with pytest.raises(GatherRangeError, match="token id 320 >= table_rows=320") as e:
        model.run(step.prog_base, pos=0)
    assert e.value.error == 3 and e.value.index == 1      # after the first PREFETCH


def test_host_step_checks(lowered):
    low = lowered
    with pytest.raises(ValueError, match="exceeds the largest prefill bucket .16 rows.; split"):
        decode_memory_writes(low, list(range(17)), 0)
    with pytest.raises(ValueError, match="exceed max_context=64"):
        decode_memory_writes(low, [1, 2], 63)
    st = decode_memory_writes(low, [5, 6, 7], 10)
    assert st.rows == 8 and st.tokens == 3 and st.pos == 10
    ids = np.frombuffer(st.writes[0][1], dtype="<u4")
    assert list(ids[:8]) == [5, 6, 7, 0, 0, 0, 0, 0]


def test_memory_map_and_header(lowered):
    low = lowered
    mm = low.memory_map
    assert {r.kind for r in mm.regions} == {"header", "program", "weights", "kv", "io"}
    kinds = [r.kind for r in mm.regions]
    order = ["header", "program", "weights", "kv", "io"]
    assert sorted(kinds, key=order.index) == kinds               # sections in layout order
    for r in mm.regions:
        assert (r.addr * CFG.beat_bytes) % CFG.beat_bytes == 0
    hdr = np.frombuffer(low.image[:44], dtype="<u4")
    assert low.image[:4] == b"HWFL" and hdr[1] == 3 and hdr[2] == CFG.beat_bytes
    assert hdr[3] == mm.region("program:decode").addr and hdr[7] == low.kv.k_bases[0]
    assert hdr[9] == low.io.ids_addr
    assert len(low.image) == mm.total_bytes
    assert low.reports["programs"]["prefill"] == {"buckets": [8, 16], "count": 2,
                                                  "bytes": 2 * 45 * INSTR_BYTES}


def test_act_plan_areas_are_disjoint(lowered):
    for prog in [lowered.decode, *lowered.prefill.values()]:
        spans = sorted(prog.plan.span(name) for name in prog.plan.areas)
        assert prog.plan.span("logits")[1] - prog.plan.span("logits")[0] == 40   # one row
        assert all(e0 <= s1 for (_, e0), (s1, _) in zip(spans, spans[1:], strict=False))
        assert spans[-1][1] == prog.plan.words <= CFG.act_depth


def test_mapping_errors_name_the_numbers(qd):
    from dataclasses import replace
    # 178 words: per row x 16, h 16, q 18, k 6, v 6 (kv heads x 3 words: KVSTORE reads any
    # word, so the k and v rows need not be whole super-beats), att 18, gate 25, up 25, cs 8;
    # and one logits row of 40 (the last row's, whatever the bucket)
    with pytest.raises(MappingError, match=r"138 act words .* plus 40 words of logits.*"
                                           r"act_depth >= 178"):
        lower_decoder(qd, replace(CFG, act_depth=150))
    with pytest.raises(MappingError, match=r"L0.down.*weight_depth >= 58"):
        lower_decoder(qd, replace(CFG, weight_depth=40))
    with pytest.raises(MappingError, match=r"bucket of 32 rows needs 4456 act words"):
        lower_decoder(qd, CFG, prompt_buckets=[8, 32])
    small = lower_decoder(qd, replace(CFG, act_depth=138 * 7 + 40))    # 7 rows: no 8-row bucket
    assert small.buckets == [1, 2, 4]


def test_naive_program_bytes_at_2048():
    qd = random_decoder(max_context=2048)
    low = lower_decoder(qd, CFG)
    rep = low.reports
    shared = rep["programs"]["decode"]["bytes"] + rep["programs"]["prefill"]["bytes"]
    n = program_instructions(2)
    assert rep["programs"]["decode"] == {"count": 1, "bytes": n * INSTR_BYTES}
    want = naive_program_bytes(2, 2048, max(low.buckets))
    assert rep["naive_program_bytes"] == want["total_bytes"]
    assert want["decode_bytes"] == 2048 * n * INSTR_BYTES
    assert rep["program_reduction"] == pytest.approx(want["total_bytes"] / shared)
    print(f"\nmax_context 2048, buckets {low.buckets}: shared programs {shared} B "
          f"(decode {rep['programs']['decode']['bytes']} B + {rep['programs']['prefill']['count']}"
          f" prefill {rep['programs']['prefill']['bytes']} B); naive {rep['naive_program_bytes']}"
          f" B (decode {want['decode_bytes']} B, prefill {want['prefill_bytes']} B); reduction "
          f"{rep['program_reduction']:.0f}x")
    assert rep["program_reduction"] > 1000


# ------------------------------------------------------------------------ shape-only path

def _program_bytes(low) -> dict:
    return {p.name: b"".join(i.encode() for i in p.program)
            for p in [low.decode, *low.prefill.values()]}


@pytest.mark.parametrize("cfg", [CFG, CFG64], ids=["SB32", "SB64"])
def test_shape_only_lowering_equals_the_full_one(qd, cfg):
    """From the decoder's shapes alone: the same instruction bytes, memory map and reports as
    the full lowering, and no image."""
    full = lower_decoder(qd, cfg)
    shape = lower_decoder(qd, cfg, shape_only=True)
    assert shape.shape_only and not full.shape_only and shape.image == b""
    assert _program_bytes(shape) == _program_bytes(full)
    assert shape.memory_map.to_json() == full.memory_map.to_json()
    assert shape.memory_map.total_bytes == len(full.image)
    assert shape.reports == full.reports
    assert (shape.io, shape.kv, shape.buckets) == (full.io, full.kv, full.buckets)


def test_weightless_decoder_gives_the_programs_up_to_epilogue_constants(qd):
    """compiler.llm_config.shape_decoder of the same shape: every instruction equal except the
    epilogue constants (calibrated on real weights), the same memory regions."""
    from dataclasses import replace

    from hwflow.compiler.llm_config import ConfigShape, shape_decoder

    cs = ConfigShape(qd.shape, "llama", "silu", False, False, 0, "")
    sk = shape_decoder(cs, qd.max_context, "int8")
    full = lower_decoder(qd, CFG)
    shape = lower_decoder(sk, CFG, shape_only=True)
    consts = dict(shift=0, mult_a=0, mult_b=0, eps=0, smul=0, omul=0, sshift=0)
    for a, b in zip([full.decode, *full.prefill.values()],
                    [shape.decode, *shape.prefill.values()], strict=True):
        assert [replace(i, **consts) for i in a.program] == \
            [replace(i, **consts) for i in b.program]
        assert a.program != b.program       # the constants themselves do differ
    # the same regions at the same addresses (the logits' float scale is not known)
    assert [(r.name, r.kind, r.addr, r.nbytes) for r in shape.memory_map.regions] == \
        [(r.name, r.kind, r.addr, r.nbytes) for r in full.memory_map.regions]


def test_gemma2_program_runs_golden_on_the_isa_model(tmp_path):
    """Gemma 2 lowered (o and down into ``h``, the post-norm's RMSNORM with gamma codes and a
    VADD into ``x``; SILUMUL flag GELU; ATTN with its score cap and a 6-key window on layer 0;
    SILUMUL flag TANH on the LM head before its STORE) gives golden_step's logits on the ISA
    model: an 8-token prompt (rows past the window) and decode steps at 8..10."""
    from hwflow.compiler.llm_frontend import load_decoder
    from hwflow.compiler.llm_interpret import KVCache, golden_step
    from hwflow.compiler.llm_quant import quantize_decoder
    from hwflow.hw.isa import FLAG_GELU, FLAG_TANH
    from hwflow.llm_examples import write_tiny_llama

    fd = load_decoder(write_tiny_llama(tmp_path / "g", family="gemma2"), max_context=32)
    qd = quantize_decoder(fd, 32)
    low = lower_decoder(qd, CFG)
    prog = low.decode.program
    assert len(prog) == program_instructions(qd, 3)
    assert [i.window for i in prog if i.op == Opcode.ATTN] == [6, 0]
    assert all(i.cap == qd.layers[0].attn_cap > 0 for i in prog if i.op == Opcode.ATTN)
    assert [i.flags for i in prog if i.op == Opcode.SILUMUL] == [FLAG_GELU] * 2 + [FLAG_TANH]
    assert sum(i.op == Opcode.VADD for i in prog) == 4
    model = IsaModel(CFG, low.image, regions=low.memory_map)
    cache = KVCache.empty(qd)
    rng = np.random.default_rng(3)
    prompt = rng.integers(0, qd.shape.vocab, 8)
    _check(model, low, prompt, 0, golden_step(qd, prompt, 0, cache))
    for pos in (8, 9, 10):
        tok = rng.integers(0, qd.shape.vocab, 1)
        _check(model, low, tok, pos, golden_step(qd, tok, pos, cache))


@pytest.mark.parametrize("n", [1, 3, 8, 11, 21, 40])
def test_recurrent_prompt_runs_partition_the_prompt(n):
    """A state-space model's runs advance its state: they cover every token exactly once, in
    order, the last ending at the prompt's end (a transformer's may overlap: 21 -> (13, 8))."""
    runs = prompt_runs(n, [4, 8, 16], recurrent=True)
    assert [p for p, _ in runs] == [sum(k for _, k in runs[:i]) for i in range(len(runs))]
    assert sum(k for _, k in runs) == n and all(k in (1, 4, 8, 16) for _, k in runs)
    if n == 21:
        assert runs == [(0, 16), (16, 4), (20, 1)]
