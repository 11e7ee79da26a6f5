"""ISA model, ternary instructions (docs/architecture.md, "Ternary path"): ABSQUANT and
TMATMUL encoding, hand-assembled programs checked against golden/ternary.py and golden/int8.py,
SILUMUL with flag RELU2 against golden.llm.relu2_mul, the TLMM counters and traffic, and
ERROR = 1 on an engine built without the unit.

The weight blocks are packed here from the doc's description (with the golden index helpers),
not with the mapper's packer, so the tests check the contract; one test checks that the two
agree byte for byte.
"""

from __future__ import annotations

import struct
from dataclasses import replace

import numpy as np
import pytest

from hwflow.golden import int8 as g8
from hwflow.golden import llm as gl
from hwflow.golden import ternary as gt
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import (
    ERROR_ILLEGAL_OPCODE,
    FLAG_GAMMA,
    FLAG_RELU,
    FLAG_RELU2,
    FLAG_RESIDUAL,
    LAYOUT,
    Instr,
    Opcode,
    decode,
)
from hwflow.mapping.ternary_format import pack_ternary_block
from hwflow.sim.isa_model import IllegalInstruction, IsaError, IsaModel, run_program

from ._asm import SpanImage, act_bytes

#: L = 4, SB = 16 B (four words), act_depth 512; TLMM G = 3, T = 2, Q = 3 (odd sizes on purpose:
#: partial chunks and channel blocks).
CFG = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, act_depth=512,
                  weight_depth=64, addr_bits=16, tlmm=True, tlmm_g=3, tlmm_t=2, tlmm_q=3,
                  tlmm_acc_depth=64)
L, SB = CFG.chain_len, CFG.beat_bytes


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------- encoding

def test_ternary_field_positions_match_the_doc():
    w = np.frombuffer(Instr(Opcode.ABSQUANT, FLAG_GAMMA, a=1, out=2, g=3, rows=4, m_addr=5,
                            n=6, words=7).encode(), dtype="<u4")
    assert list(w) == [0x0A | FLAG_GAMMA << 8, 0, 1 | 2 << 16, 3 | 4 << 16, 5, 6 | 7 << 16, 0, 0]
    w = np.frombuffer(Instr(Opcode.TMATMUL, FLAG_RELU | FLAG_RESIDUAL, 21, ext=0xABCDEF12, a=1,
                            out=2, b=3, rows=4, k_groups=5, n_out=6, x_words=7, words=8,
                            mult_b=9, m_addr=10).encode(), dtype="<u4")
    assert list(w) == [0x0B | 3 << 8 | 21 << 16, 0xABCDEF12, 1 | 2 << 16, 3 | 4 << 16,
                       5 | 6 << 16, 7 | 8 << 16, 9 | 10 << 16, 0]
    w = np.frombuffer(Instr(Opcode.SILUMUL, FLAG_RELU2, 3, a=1, out=2, b=3, rows=4, n=5, words=6,
                            mult_b=7).encode(), dtype="<u4")
    assert w[0] == 0x08 | 1 << 12 | 3 << 16
    assert Opcode.ABSQUANT == 0x0A and Opcode.TMATMUL == 0x0B
    assert FLAG_RELU2 == 1 << 4 and FLAG_GAMMA == 1 << 5


@pytest.mark.parametrize("op", [Opcode.ABSQUANT, Opcode.TMATMUL])
def test_round_trip_at_limits_and_random(op):
    rng = np.random.default_rng(int(op))
    top = {n: (1 << bits) - 1 for n, _w, _lo, bits in LAYOUT[op]}
    ins = Instr(op, flags=0xFF, shift=47, **top)
    assert decode(ins.encode()) == ins
    for _ in range(50):
        f = {n: int(rng.integers(0, 1 << min(bits, 31))) for n, _w, _lo, bits in LAYOUT[op]}
        ins = Instr(op, flags=int(rng.integers(0, 64)), shift=int(rng.integers(0, 48)), **f)
        assert decode(ins.encode()) == ins


@pytest.mark.parametrize("ins,msg", [
    (Instr(Opcode.MATMUL, m_addr=1), "m_addr=1 is not a field of MATMUL"),
    (Instr(Opcode.ABSQUANT, k_groups=1), "k_groups=1 is not a field of ABSQUANT"),
    (Instr(Opcode.TMATMUL, g=1), "g=1 is not a field of TMATMUL"),
    (Instr(Opcode.TMATMUL, n_out=1 << 16), "n_out=65536 does not fit 16 bits"),
])
def test_ternary_fields_are_checked(ins, msg):
    with pytest.raises(ValueError, match=msg):
        ins.encode()


# ------------------------------------------------------------------------ hand assembly

def _act(model: IsaModel, base: int, rows: int, words: int) -> np.ndarray:
    return model.act[base: base + rows * words].reshape(rows, words * L)


def _m(model: IsaModel, m_addr: int, rows: int) -> np.ndarray:
    flat = model.act.reshape(-1).view(np.uint8)
    return flat[m_addr * L: m_addr * L + 2 * rows].copy().view("<u2").astype(np.int64)


def _rand(rng, *shape, lo=-100, hi=100):
    return rng.integers(lo, hi, size=shape).astype(np.int8)


def _ternary(rng, n, k):
    return rng.integers(-1, 2, size=(n, k)).astype(np.int8)


def doc_block(t, bias, mult, cfg=CFG) -> bytes:
    """The TMATMUL weight block exactly as the doc words it ("TMATMUL weight block")."""
    G, T, Q = cfg.tlmm_g, cfg.tlmm_t, cfg.tlmm_q
    n_out, K = t.shape
    kg = cdiv(K, G)
    params = b"".join(struct.pack("<iHxx", int(b), int(m)) for b, m in zip(bias, mult,
                                                                           strict=True))
    params += bytes(-len(params) % SB)
    idx = gt.encode_groups(t, G)
    zero = (3 ** G - 1) // 2
    rb = T * Q * gt.GROUP_BITS[G]
    per_beat, beats = max(1, 8 * SB // rb), cdiv(rb, 8 * SB)   # records never straddle beats
    recs = []
    for c in range(cdiv(kg, T)):
        for j in range(cdiv(n_out, Q)):
            rec = []
            for qq in range(Q):
                for tt in range(T):
                    n, g = j * Q + qq, c * T + tt
                    rec.append(int(idx[n, g]) if n < n_out and g < kg else zero)
            recs.append(int.from_bytes(gt.pack_indices(np.array(rec), G), "little"))
    stream = b"".join(
        sum(r << (i * rb) for i, r in enumerate(recs[b:b + per_beat])).to_bytes(beats * SB,
                                                                                "little")
        for b in range(0, len(recs), per_beat))
    return params + stream


def test_doc_block_equals_the_mapper_packer():
    rng = np.random.default_rng(3)
    for n, k in ((7, 20), (3, 3), (12, 1), (1, 31)):
        t = _ternary(rng, n, k)
        bias = rng.integers(-2 ** 31, 2 ** 31, n)
        mult = rng.integers(0, 1 << 16, n)
        assert doc_block(t, bias, mult) == pack_ternary_block(t, bias, mult, CFG.tlmm_g,
                                                              CFG.tlmm_t, CFG.tlmm_q, SB)


# ------------------------------------------------------------------------- ABSQUANT

@pytest.mark.parametrize("gamma", [False, True])
@pytest.mark.parametrize("in_place", [False, True])
def test_absquant_matches_golden(gamma, in_place):
    rng = np.random.default_rng(4)
    rows, n, words = 5, 21, 8                              # 21 valid of 32 bytes
    x = _rand(rng, rows, n, lo=-128, hi=128)
    x[2] = 0                                               # m = 0: xq = 0
    x[3, 7] = -128
    gam = _rand(rng, 1, n, lo=-128, hi=128)
    im = SpanImage(SB)
    src = im.add(act_bytes(x, words, L) + act_bytes(gam, words, L), "activations")
    out = 0 if in_place else 100
    prog = im.program([
        Instr(Opcode.LOAD, ext=src, a=0, b=(rows + 1) * words),
        Instr(Opcode.ABSQUANT, FLAG_GAMMA if gamma else 0, a=0, out=out, g=rows * words,
              rows=rows, m_addr=60, n=n, words=words),
    ])
    model = IsaModel(CFG, bytes(im.buf), regions=im.spans)
    model.act[100:140] = 55                                # junk in the output padding
    model.act[62:64] = 77                                  # bytes past the 5 m values
    model.run(prog)
    want, m = gt.absmax_quant(x, gam[0] if gamma else None)
    y = _act(model, out, rows, words)
    np.testing.assert_array_equal(y[:, :n], want)
    assert not y[:, n:].any()
    np.testing.assert_array_equal(_m(model, 60, rows), m)
    assert m[2] == 0 and (not gamma or m.max() > 255)      # u16: gamma makes m exceed a byte
    assert (model.act[63] == 77).all() and (model.act[62, 2:] == 77).all()


def test_absquant_is_legal_with_tlmm_or_transformer_only():
    im = SpanImage(SB)
    prog = im.program([Instr(Opcode.ABSQUANT, a=0, out=8, rows=1, m_addr=16, n=4, words=1)])
    for tf, tl in ((True, False), (False, True)):
        cfg = AccelConfig(**{**CFG.to_dict(), "transformer": tf, "tlmm": tl})
        run_program(cfg, bytes(im.buf), prog)
    cfg = AccelConfig(**{**CFG.to_dict(), "tlmm": False})
    with pytest.raises(IllegalInstruction, match="ABSQUANT needs the vector unit") as e:
        run_program(cfg, bytes(im.buf), prog)
    assert e.value.error == ERROR_ILLEGAL_OPCODE == 1


def test_absquant_partial_overlap_is_an_error():
    im = SpanImage(SB)
    prog = im.program([Instr(Opcode.ABSQUANT, a=0, out=2, rows=2, m_addr=16, n=4, words=4)])
    with pytest.raises(IsaError, match="out overlaps a without being equal"):
        run_program(CFG, bytes(im.buf), prog)
    prog = im.program([Instr(Opcode.ABSQUANT, a=0, out=8, rows=2, m_addr=9, n=4, words=4)])
    with pytest.raises(IsaError, match="m area overlaps the output"):
        run_program(CFG, bytes(im.buf), prog)


# -------------------------------------------------------------------------- SILUMUL RELU2

def test_silumul_relu2_matches_golden():
    rng = np.random.default_rng(5)
    rows, n, words = 3, 13, 4
    g, u = _rand(rng, rows, n, lo=-128, hi=128), _rand(rng, rows, n, lo=-128, hi=128)
    im = SpanImage(SB)
    src = im.add(act_bytes(g, words, L) + act_bytes(u, words, L), "activations")
    prog = im.program([
        Instr(Opcode.LOAD, ext=src, a=0, b=2 * rows * words),
        Instr(Opcode.SILUMUL, FLAG_RELU2, 16, a=0, out=40, b=rows * words, rows=rows, n=n,
              words=words, mult_b=900),
        Instr(Opcode.SILUMUL, 0, 16, a=0, out=60, b=rows * words, rows=rows, n=n,
              words=words, mult_b=900),
    ])
    model = IsaModel(CFG, bytes(im.buf))
    model.run(prog)
    y = _act(model, 40, rows, words)
    np.testing.assert_array_equal(y[:, :n], gl.relu2_mul(g, u, 900, 16))
    assert not y[:, n:].any()
    np.testing.assert_array_equal(_act(model, 60, rows, words)[:, :n],
                                  gl.silu_mul(g, u, 900, 16))
    assert not np.array_equal(y, _act(model, 60, rows, words))


# -------------------------------------------------------------------------- TMATMUL

def _linear_case(rng, rows, n_out, K, residual, relu, words_out=None, x_words=None):
    """A ternary linear by hand: x, t, bias, mult, res and golden's output."""
    x = _rand(rng, rows, K, lo=-128, hi=128)
    t = _ternary(rng, n_out, K)
    bias = rng.integers(-3000, 3000, n_out)
    mult = rng.integers(1, 1 << 16, n_out)
    res = _rand(rng, rows, n_out)
    shift, res_mult = 22, 700
    xq, m = gt.absmax_quant(x)
    acc = gt.lookup_matmul(xq, gt.encode_groups(t, CFG.tlmm_g), CFG.tlmm_g)
    np.testing.assert_array_equal(acc, xq.astype(np.int64) @ t.T.astype(np.int64))
    want = g8.requantize(acc * m[:, None], bias, mult, shift, relu,
                         res if residual else None, res_mult)
    return dict(x=x, t=t, bias=bias, mult=mult, res=res, shift=shift, res_mult=res_mult,
                want=want, m=m)


@pytest.mark.parametrize("rows,n_out,K,residual,relu", [
    (1, 7, 20, False, False),        # K % G = 2, 7 groups: partial chunk; 7 = 2Q + 1
    (3, 12, 24, True, False),        # whole groups, chunks (8 groups, T = 2) and blocks
    (4, 5, 31, True, True),          # K past the row's last whole word, rows > 1
    (2, 1, 3, False, True),          # one group, one channel
])
def test_absquant_then_tmatmul_matches_golden(rows, n_out, K, residual, relu):
    _absquant_then_tmatmul(CFG, rows, n_out, K, residual, relu)


@pytest.mark.parametrize("R,S", [(2, 1), (2, 2), (1, 3), (4, 4)])
def test_tmatmul_fetches_the_records_once_a_group(R, S):
    """R rows a pass, S passes a fetch: every pass looks each record up once (TLMM_BUSY),
    every group of up to S*R rows reads the index stream once (7 rows: R = 2, S = 2 is two
    groups, 4 passes; R = S = 4 one group of 2 passes)."""
    st, records, stream_sb, param_sb = _absquant_then_tmatmul(
        replace(CFG, tlmm_rows=R, tlmm_passes=S), 7, 12, 24, True, False)
    groups, passes = -(-7 // (R * S)), 7 // (R * S) * S + -(-(7 % (R * S)) // R)
    assert st.tlmm_busy_cycles == passes * records and st.tlmm_lookups == 7 * records
    assert st.traffic["weights_read"] == (param_sb + groups * stream_sb) * SB


def _absquant_then_tmatmul(cfg, rows, n_out, K, residual, relu):
    rng = np.random.default_rng(rows * 100 + K)
    c = _linear_case(rng, rows, n_out, K, residual, relu)
    G, T, Q = cfg.tlmm_g, cfg.tlmm_t, cfg.tlmm_q
    xw = cdiv(K, L)
    ow = cdiv(n_out, L) + 1                                  # an extra, zero-filled word
    im = SpanImage(SB)
    x_addr = im.add(act_bytes(c["x"], xw, L) + act_bytes(c["res"], ow, L), "activations")
    blk = doc_block(c["t"], c["bias"], c["mult"])
    w_addr = im.add(blk, "weights")
    kg = cdiv(K, G)
    XQ, M, RES, OUT = 200, 300, rows * xw, 400
    prog = im.program([
        Instr(Opcode.LOAD, ext=x_addr, a=0, b=cdiv(rows * (xw + ow), SB // L) * SB // L),
        Instr(Opcode.ABSQUANT, a=0, out=XQ, rows=rows, m_addr=M, n=K, words=xw),
        Instr(Opcode.TMATMUL, (FLAG_RELU if relu else 0) | (FLAG_RESIDUAL if residual else 0),
              c["shift"], ext=w_addr, a=XQ, out=OUT, b=RES, rows=rows, k_groups=kg,
              n_out=n_out, x_words=xw, words=ow, mult_b=c["res_mult"], m_addr=M),
    ])
    model = IsaModel(cfg, bytes(im.buf), regions=im.spans)
    model.act[XQ:XQ + 64] = 99       # junk past each xq row's K (zero-padded by ABSQUANT)...
    model.act[OUT:OUT + 64] = 55     # ...and in the output padding
    st = model.run(prog)
    y = _act(model, OUT, rows, ow)
    np.testing.assert_array_equal(y[:, :n_out], c["want"])
    assert not y[:, n_out:].any()
    np.testing.assert_array_equal(_m(model, M, rows), c["m"])

    records = cdiv(kg, T) * cdiv(n_out, Q)
    assert st.tlmm_macs_valid == rows * n_out * kg * G
    param_sb = cdiv(8 * n_out, SB)
    stream_sb = len(blk) // SB - param_sb
    assert st.by_opcode == {"LOAD": 1, "ABSQUANT": 1, "TMATMUL": 1, "END": 1}
    if cfg.tlmm_rows == cfg.tlmm_passes == 1:      # rows one after another
        assert st.tlmm_lookups == st.tlmm_busy_cycles == rows * records
        assert st.traffic["weights_read"] == (param_sb + rows * stream_sb) * SB
    return st, records, stream_sb, param_sb


def test_tmatmul_ignores_activation_bytes_past_k():
    """Groups straddling K and whole chunks past it read bytes the row does not own (the next
    word, another row): the padding index makes them contribute nothing."""
    rng = np.random.default_rng(8)
    rows, n_out, K = 2, 4, 7                                  # 3 groups: 9 bytes, 2 chunks
    c = _linear_case(rng, rows, n_out, K, False, False)
    xq, m = gt.absmax_quant(c["x"])
    im = SpanImage(SB)
    w_addr = im.add(doc_block(c["t"], c["bias"], c["mult"]), "weights")
    prog = im.program([Instr(Opcode.TMATMUL, 0, c["shift"], ext=w_addr, a=0, out=40, rows=rows,
                             k_groups=3, n_out=n_out, x_words=2, words=1, m_addr=20)])
    model = IsaModel(CFG, bytes(im.buf))
    model.act[:8] = _rand(rng, 8, L, lo=-128, hi=128)       # junk everywhere around the rows
    for b in range(rows):
        model.act[2 * b: 2 * b + 2].reshape(-1)[:K] = xq[b]
    model.act.reshape(-1).view(np.uint8)[20 * L: 20 * L + 4] = m.astype("<u2").view(np.uint8)
    model.run(prog)
    np.testing.assert_array_equal(_act(model, 40, rows, 1)[:, :n_out], c["want"])


def test_tmatmul_needs_the_tlmm_engine():
    im = SpanImage(SB)
    w = im.add(doc_block(np.ones((1, 3), np.int8), [0], [1]), "weights")
    prog = im.program([Instr(Opcode.TMATMUL, ext=w, a=0, out=8, rows=1, k_groups=1, n_out=1,
                             x_words=1, words=1, m_addr=16)])
    run_program(CFG, bytes(im.buf), prog)
    for tf in (False, True):
        cfg = AccelConfig(**{**CFG.to_dict(), "tlmm": False, "transformer": tf})
        with pytest.raises(IllegalInstruction, match="TMATMUL needs the TLMM engine") as e:
            run_program(cfg, bytes(im.buf), prog)
        assert e.value.error == ERROR_ILLEGAL_OPCODE and e.value.index == 0


@pytest.mark.parametrize("fields,msg", [
    (dict(k_groups=0), "k_groups=0"),
    (dict(n_out=65), "n_out=65 > tlmm_acc_depth=64"),
    (dict(n_out=5, words=1), "n_out=5 > words\\*L = 4"),
    (dict(out=1), "output rows overlap the input rows x"),
    (dict(m_addr=8), "m area overlaps the output rows"),
])
def test_malformed_tmatmul_is_an_error(fields, msg):
    im = SpanImage(SB)
    w = im.add(doc_block(np.ones((4, 3), np.int8), [0] * 4, [1] * 4), "weights")
    f = dict(ext=w, a=0, out=8, rows=1, k_groups=1, n_out=4, x_words=1, words=1, m_addr=16)
    f.update(fields)
    prog = im.program([Instr(Opcode.TMATMUL, **f)])
    with pytest.raises(IsaError, match=msg):
        run_program(CFG, bytes(im.buf), prog)


def test_tmatmul_malformed_block_is_an_error():
    im = SpanImage(SB)
    blk = bytearray(doc_block(np.ones((1, 3), np.int8), [0], [1]))
    blk[SB] = 0xFF                                            # index 31 >= 27
    w = im.add(bytes(blk), "weights")
    prog = im.program([Instr(Opcode.TMATMUL, ext=w, a=0, out=8, rows=1, k_groups=1, n_out=1,
                             x_words=1, words=1, m_addr=16)])
    with pytest.raises(IsaError, match="malformed weight block"):
        run_program(CFG, bytes(im.buf), prog)


def test_tmatmul_1024_gemv():
    """A 1024 x 1024 decode layer (G = 3: 342 groups) in one TMATMUL, exact (its speed:
    benchmarks/bench_pack.py)."""
    cfg = AccelConfig(chains=16, chain_len=16, mem_ports=2, port_bytes=32, act_depth=4096,
                      tlmm=True, tlmm_acc_depth=1024)
    rng = np.random.default_rng(9)
    t = _ternary(rng, 1024, 1024)
    xq = _rand(rng, 1, 1024, lo=-127, hi=128)
    blk = pack_ternary_block(t, np.zeros(1024), np.ones(1024), cfg.tlmm_g, cfg.tlmm_t,
                             cfg.tlmm_q, cfg.beat_bytes)
    image = bytes(cfg.beat_bytes) + blk
    prog = Instr(Opcode.TMATMUL, 0, 0, ext=1, a=0, out=100, rows=1, k_groups=342, n_out=1024,
                 x_words=64, words=64, m_addr=200).encode() + Instr(Opcode.END).encode()
    image += prog
    model = IsaModel(cfg, image)
    model.act[:64] = xq.reshape(64, 16)
    model.act.reshape(-1).view(np.uint8)[200 * 16] = 1        # m = 1
    model.run(len(image) // cfg.beat_bytes - 1)
    want = np.clip(xq.astype(np.int64) @ t.T.astype(np.int64), -128, 127)
    np.testing.assert_array_equal(model.act[100:164].reshape(-1), want[0])
