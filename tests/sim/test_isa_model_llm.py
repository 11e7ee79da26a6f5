"""ISA model, transformer instructions (docs/architecture.md, "Transformer path"): encoding
round trips, and hand-assembled programs checked against the kernels of golden/llm.py."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.golden import llm as gl
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import (
    ERROR_GATHER_RANGE,
    FLAG_GELU,
    FLAG_POS,
    FLAG_RELU,
    FLAG_RELU2,
    FLAG_RESIDUAL,
    FLAG_TANH,
    LAYOUT,
    Instr,
    Opcode,
    decode,
)
from hwflow.sim.isa_model import GatherRangeError, IsaError, IsaModel, run_program

from ._asm import SpanImage, act_bytes

#: L = 4, SB = 16 B (four words), act_depth 512.
CFG = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, act_depth=512,
                  weight_depth=64, addr_bits=16, transformer=True, attn_heads=4)
L, SB = CFG.chain_len, CFG.beat_bytes


# ---------------------------------------------------------------------------- encoding

def _max_fields(op: Opcode) -> dict:
    out = {}
    for name, _w, _lo, bits in LAYOUT[op]:
        hi = (1 << bits) - 1
        out[name] = {"lgm": 4, "lgr": 2}.get(name, hi)
    return out


@pytest.mark.parametrize("op", list(LAYOUT))
def test_round_trip_every_field_at_its_limit_and_random(op):
    rng = np.random.default_rng(int(op))
    ins = Instr(op, flags=0xFF if op != Opcode.MATMUL else FLAG_RELU, shift=47,
                **_max_fields(op))
    assert decode(ins.encode()) == ins
    for _ in range(20):
        f = {n: int(rng.integers(0, {"lgm": 5, "lgr": 3}.get(n, 1 << min(bits, 31))))
             for n, _w, _lo, bits in LAYOUT[op]}
        ins = Instr(op, flags=int(rng.integers(0, 16)), shift=int(rng.integers(0, 48)), **f)
        assert decode(ins.encode()) == ins


def test_transformer_field_positions_match_the_doc():
    w = np.frombuffer(Instr(Opcode.ATTN, shift=9, ext=1, v_ext=2, a=3, out=4, q_words=5,
                            rows=6, lanes=7, grp=8, hd_words=9, pos_sb=10, smul=11,
                            omul=12, sshift=13, slots=14).encode(), dtype="<u4")
    assert list(w) == [0x09 | 9 << 16, 1, 3 | 4 << 16, 5 | 6 << 16, 2,
                       7 | 8 << 8 | 9 << 16 | 10 << 24, 11 | 12 << 16, 13 | 14 << 8]
    w = np.frombuffer(Instr(Opcode.KVSTORE, FLAG_POS, ext=1, a=2, words=3, rows=4,
                            pos_stride=5, slots=6, hd_words=7).encode(), dtype="<u4")
    assert list(w) == [0x0C | FLAG_POS << 8, 1, 2, 3 | 4 << 16, 5, 6 | 7 << 8, 0, 0]
    w = np.frombuffer(Instr(Opcode.GATHER, ext=1, a=2, n=3, rows=4, ids=5, stride=6,
                            table_rows=7).encode(), dtype="<u4")
    assert list(w) == [0x05, 1, 2, 3 | 4 << 16, 5, 6, 7, 0]
    w = np.frombuffer(Instr(Opcode.STORE, FLAG_POS, ext=1, a=2, b=3, pos_stride=4).encode(),
                      dtype="<u4")
    assert list(w) == [0x02 | FLAG_POS << 8, 1, 2, 3, 4, 0, 0, 0]
    w = np.frombuffer(Instr(Opcode.ROPE, a=1, cs=2, cs_words=3, rows=4, heads=5, hd=6,
                            head_stride=7, words=8).encode(), dtype="<u4")
    assert list(w) == [0x07, 0, 1 | 2 << 16, 3 | 4 << 16, 5 | 6 << 16, 7 | 8 << 16, 0, 0]
    w = np.frombuffer(Instr(Opcode.RMSNORM, shift=40, a=1, out=2, rows=3, eps=0xFFFFFFFF, n=4,
                            words=5, mult_b=6).encode(), dtype="<u4")
    assert list(w) == [0x06 | 40 << 16, 0, 1 | 2 << 16, 3 << 16, 0xFFFFFFFF, 4 | 5 << 16, 6, 0]
    w = np.frombuffer(Instr(Opcode.SILUMUL, shift=3, a=1, out=2, b=3, rows=4, n=5, words=6,
                            mult_b=7).encode(), dtype="<u4")
    assert list(w) == [0x08 | 3 << 16, 0, 1 | 2 << 16, 3 | 4 << 16, 0, 5 | 6 << 16, 7, 0]


@pytest.mark.parametrize("ins,msg", [
    (Instr(Opcode.ATTN, lanes=256), "lanes=256 does not fit 8 bits"),
    (Instr(Opcode.ATTN, heads=2), "heads=2 is not a field of ATTN"),
    (Instr(Opcode.KVSTORE, slots=256), "slots=256 does not fit 8 bits"),
    (Instr(Opcode.ATTN, sshift=64), "sshift=64 does not fit 6 bits"),
    (Instr(Opcode.MATMUL, pos_stride=1), "pos_stride=1 is not a field of MATMUL"),
    (Instr(Opcode.LOAD, pos_stride=1 << 16), "pos_stride=65536 does not fit 16 bits"),
    (Instr(Opcode.ROPE, lgm=1), "lgm is a MATMUL field"),
    (Instr(Opcode.GATHER, rows=1 << 16), "rows=65536 does not fit 16 bits"),
    (Instr(Opcode.RMSNORM, eps=1 << 32), "eps=4294967296 does not fit 32 bits"),
])
def test_out_of_range_fields_are_refused(ins, msg):
    with pytest.raises(ValueError, match=msg):
        ins.encode()


# ------------------------------------------------------------------------ hand assembly

def _act(model: IsaModel, base: int, rows: int, words: int) -> np.ndarray:
    return model.act[base: base + rows * words].reshape(rows, words * L)


def _rand(rng, *shape, lo=-100, hi=100):
    return rng.integers(lo, hi, size=shape).astype(np.int8)


def test_gather_load_pos_and_store_pos_and_traffic():
    rng = np.random.default_rng(0)
    im = SpanImage(SB)
    table = _rand(rng, 9, 13)                               # 9 rows of 13 B -> 16 B (1 SB)
    t_addr = im.add(act_bytes(table, 4, L), "weights")
    ids = np.array([3, 8, 0, 5], dtype="<u4")
    ids_addr = im.add(ids.tobytes(), "io")
    kv_addr = im.add(bytes(40 * SB), "kv")
    prog = im.program([
        Instr(Opcode.GATHER, ext=t_addr, a=10, n=4, rows=4, ids=ids_addr, stride=1,
              table_rows=9),
        Instr(Opcode.STORE, FLAG_POS, ext=kv_addr, a=10, b=8, pos_stride=2),   # rows 0, 1
        Instr(Opcode.LOAD, FLAG_POS, ext=kv_addr + 1, a=100, b=4, pos_stride=2),
    ])
    model = IsaModel(CFG, bytes(im.buf), pos=7, regions=im.spans)
    st = model.run(prog)
    np.testing.assert_array_equal(_act(model, 10, 4, 4)[:, :13], table[ids])
    assert not _act(model, 10, 4, 4)[:, 13:].any()
    mem = np.frombuffer(model.image(), dtype=np.int8)
    got = mem[(kv_addr + 14) * SB:(kv_addr + 16) * SB].reshape(2, SB)
    np.testing.assert_array_equal(got[:, :13], table[ids[:2]])
    np.testing.assert_array_equal(model.act[100:104].reshape(-1)[:13], table[ids[1]])
    t = st.to_dict()["traffic"]
    assert t["weights_read"] == 4 * SB and t["io_read"] == SB
    assert t["kv_written"] == 2 * SB and t["kv_read"] == SB
    assert t["program_read"] == 4 * 32 and t["other_read"] == t["other_written"] == 0
    assert t["activations_read"] == t["activations_written"] == 0

    # POS moves the same program: run again at position 3
    model.reset_stats()
    model.run(prog, pos=3)
    mem = np.frombuffer(model.image(), dtype=np.int8)
    np.testing.assert_array_equal(mem[(kv_addr + 6) * SB:(kv_addr + 7) * SB][:13], table[3])


def test_gather_id_out_of_range_stops_with_error_3():
    im = SpanImage(SB)
    t_addr = im.add(bytes(9 * SB), "weights")
    ids_addr = im.add(np.array([2, 9], dtype="<u4").tobytes(), "io")
    prog = im.program([Instr(Opcode.GATHER, ext=t_addr, a=0, n=4, rows=2, ids=ids_addr,
                             stride=1, table_rows=9)])
    with pytest.raises(GatherRangeError, match="row 1 has token id 9 >= table_rows=9") as e:
        run_program(CFG, bytes(im.buf), prog)
    assert e.value.error == ERROR_GATHER_RANGE == 3 and e.value.index == 0


@pytest.mark.parametrize("in_place", [False, True])
def test_rmsnorm_and_silumul_match_golden(in_place):
    rng = np.random.default_rng(1)
    rows, n, words = 3, 21, 8                                  # 21 valid of 32 bytes
    x = _rand(rng, rows, n)
    g, u = _rand(rng, rows, n), _rand(rng, rows, n)
    im = SpanImage(SB)
    src = im.add(act_bytes(x, words, L) + act_bytes(g, words, L) + act_bytes(u, words, L),
                 "activations")
    out_n = 0 if in_place else 80
    out_s = 24 if in_place else 110
    prog = im.program([
        Instr(Opcode.LOAD, ext=src, a=0, b=3 * rows * words),
        Instr(Opcode.RMSNORM, shift=38, a=0, out=out_n, rows=rows, eps=77, n=n, words=words,
              mult_b=40000),
        Instr(Opcode.SILUMUL, shift=18, a=24, out=out_s, b=48, rows=rows, n=n, words=words,
              mult_b=3000),
    ])
    # junk in the padding bytes of the outputs must come out zero
    model = IsaModel(CFG, bytes(im.buf), regions=im.spans)
    model.act[80:140] = 55
    st = model.run(prog)
    y = _act(model, out_n, rows, words)
    np.testing.assert_array_equal(y[:, :n], gl.rmsnorm(x, 77, 40000, 38))
    assert not y[:, n:].any()
    z = _act(model, out_s, rows, words)
    np.testing.assert_array_equal(z[:, :n], gl.silu_mul(g, u, 3000, 18))
    assert not z[:, n:].any()
    assert st.traffic["activations_read"] == 3 * rows * words * L


def test_rmsnorm_partial_overlap_is_an_error():
    prog_im = SpanImage(SB)
    prog = prog_im.program([Instr(Opcode.RMSNORM, a=0, out=2, rows=2, n=4, words=4)])
    with pytest.raises(IsaError, match="out overlaps a"):
        run_program(CFG, bytes(prog_im.buf), prog)


def test_silumul_gelu_and_tanh_match_golden():
    """Flag GELU: ``golden.llm.gate_mul(..., "gelu_tanh")``; flag TANH: ``golden.llm.tanh_cap``
    of a, b not read (past the buffer, or partly under out: neither matters)."""
    rng = np.random.default_rng(4)
    rows, n, words = 3, 21, 8
    g, u = _rand(rng, rows, n, lo=-128, hi=128), _rand(rng, rows, n, lo=-128, hi=128)
    im = SpanImage(SB)
    src = im.add(act_bytes(g, words, L) + act_bytes(u, words, L), "activations")
    prog = im.program([
        Instr(Opcode.LOAD, ext=src, a=0, b=2 * rows * words),
        Instr(Opcode.SILUMUL, FLAG_GELU, 18, a=0, out=60, b=24, rows=rows, n=n, words=words,
              mult_b=3000),
        Instr(Opcode.SILUMUL, 0, 18, a=0, out=90, b=24, rows=rows, n=n, words=words,
              mult_b=3000),
        Instr(Opcode.SILUMUL, FLAG_TANH, 14, a=0, out=120, b=0xFFFF, rows=rows, n=n,
              words=words, mult_b=127),
        Instr(Opcode.SILUMUL, FLAG_TANH, 16, a=24, out=24, b=25, rows=rows, n=n, words=words,
              mult_b=65535),                                   # in place, saturating
    ])
    model = IsaModel(CFG, bytes(im.buf), regions=im.spans)
    model.act[60:150] = 55
    model.run(prog)
    y = _act(model, 60, rows, words)
    np.testing.assert_array_equal(y[:, :n], gl.gate_mul(g, u, 3000, 18, "gelu_tanh"))
    assert not y[:, n:].any()
    assert not np.array_equal(y, _act(model, 90, rows, words))     # GELU is not SiLU
    t = _act(model, 120, rows, words)
    np.testing.assert_array_equal(t[:, :n], gl.tanh_cap(g, 127, 14))
    assert not t[:, n:].any()
    np.testing.assert_array_equal(_act(model, 24, rows, words)[:, :n],
                                  gl.tanh_cap(u, 65535, 16))


@pytest.mark.parametrize("flags", [FLAG_RELU2 | FLAG_GELU, FLAG_GELU | FLAG_TANH,
                                   FLAG_RELU2 | FLAG_TANH, FLAG_RELU2 | FLAG_GELU | FLAG_TANH])
def test_silumul_two_table_flags_are_an_error(flags):
    im = SpanImage(SB)
    prog = im.program([Instr(Opcode.SILUMUL, flags, a=0, out=8, b=4, rows=1, n=4, words=1)])
    with pytest.raises(IsaError, match="SILUMUL: flags .* together") as e:
        run_program(CFG, bytes(im.buf), prog)
    assert e.value.index == 0


def test_rope_on_padded_heads_matches_golden():
    rng = np.random.default_rng(2)
    rows, heads, hd, hdw = 3, 3, 6, 2                         # heads padded to 8 bytes
    words = heads * hdw + 1
    pos = 5
    table = gl.rope_table(16, gl.default_inv_freq(hd, 10000.0))
    cs_words = 4                                              # 12 B of table -> one SB
    x = np.zeros((rows, words * L), dtype=np.int8)
    xv = _rand(rng, rows, heads, hd)
    for h in range(heads):
        x[:, h * hdw * L:h * hdw * L + hd] = xv[:, h]
    cs = np.zeros((16, cs_words * L), dtype=np.uint8)
    cs[:, :2 * hd] = np.ascontiguousarray(table.astype("<i2")).view(np.uint8)
    im = SpanImage(SB)
    t_addr = im.add(cs.tobytes(), "weights")
    x_addr = im.add(x.tobytes() + bytes(-x.nbytes % SB), "activations")
    n_x = (x.nbytes + SB - 1) // SB * SB // L
    prog = im.program([
        Instr(Opcode.LOAD, ext=x_addr, a=0, b=n_x),
        Instr(Opcode.LOAD, FLAG_POS, ext=t_addr, a=200, b=rows * cs_words, pos_stride=1),
        Instr(Opcode.ROPE, a=0, cs=200, cs_words=cs_words, rows=rows, heads=heads, hd=hd,
              head_stride=hdw * L, words=words),
    ])
    model = IsaModel(CFG, bytes(im.buf), pos=pos)
    model.run(prog)
    got = _act(model, 0, rows, words)
    want = gl.rope(xv.reshape(rows, heads * hd), table[pos:pos + rows], heads, hd)
    for h in range(heads):
        np.testing.assert_array_equal(got[:, h * hdw * L:h * hdw * L + hd],
                                      want[:, h * hd:(h + 1) * hd])
        assert not got[:, h * hdw * L + hd:(h + 1) * hdw * L].any()     # padding untouched
    assert not got[:, heads * hdw * L:].any()


def _blocks(x: np.ndarray, slots: int, hdw: int, pos_sb: int) -> np.ndarray:
    """Rows ``[n, slots*hdw*L]`` (kv heads contiguous) as position blocks of ``pos_sb``
    super-beats: word ``d * slots + k`` = word ``d`` of head ``k``, zero padding."""
    n = x.shape[0]
    out = np.zeros((n, pos_sb * SB), dtype=np.int8)
    out[:, :slots * hdw * L] = x.reshape(n, slots, hdw, L).transpose(0, 2, 1, 3).reshape(n, -1)
    return out


@pytest.mark.parametrize("pos,rows", [(0, 1), (20, 1), (4, 3)])
def test_kvstore_then_attn_match_golden_attention(pos, rows):
    """KVSTORE writes k and v rows into head-major position blocks at POS; one ATTN pass of
    2 kv heads x 2 query heads reads them back (with the older positions already there)."""
    rng = np.random.default_rng(3 + pos)
    slots, grp, hdw = 2, 2, 3                # a position block: 6 words = 1.5 super-beats
    lanes, hd = slots * grp, hdw * L
    pos_sb = -(-(slots * hdw) // (SB // L))
    n_keys = pos + rows
    kc = _rand(rng, 40, slots * hd)
    vc = _rand(rng, 40, slots * hd)
    q = _rand(rng, rows, lanes * hd)
    im = SpanImage(SB)
    # the cache before this run: positions 0..pos-1 written, the rest garbage
    k_addr = im.add(_blocks(kc, slots, hdw, pos_sb).tobytes(), "kv")
    v_addr = im.add(_blocks(vc, slots, hdw, pos_sb).tobytes(), "kv")
    new = np.concatenate([q, kc[pos:n_keys], vc[pos:n_keys]], axis=1)
    act_addr = im.add(new.tobytes() + bytes(-new.nbytes % SB), "activations")
    rw = new.shape[1] // L                   # act words per row: q | k | v
    kw, vw = lanes * hdw, lanes * hdw + slots * hdw
    prog = im.program([
        Instr(Opcode.LOAD, ext=act_addr, a=0, b=-(-new.nbytes // SB) * SB // L),
        Instr(Opcode.KVSTORE, FLAG_POS, ext=k_addr, a=kw, words=rw, rows=rows,
              pos_stride=pos_sb, slots=slots, hd_words=hdw),
        Instr(Opcode.KVSTORE, FLAG_POS, ext=v_addr, a=vw, words=rw, rows=rows,
              pos_stride=pos_sb, slots=slots, hd_words=hdw),
        Instr(Opcode.ATTN, shift=20, ext=k_addr, v_ext=v_addr, a=0, out=300, q_words=rw,
              rows=rows, lanes=lanes, grp=grp, slots=slots, hd_words=hdw, pos_sb=pos_sb,
              smul=300, omul=900, sshift=10),
    ])
    garbage = _rand(rng, 40, slots * hd)             # what the new positions held before
    buf = bytearray(im.buf)
    for addr in (k_addr, v_addr):
        for j in range(pos, n_keys):
            a = (addr + j * pos_sb) * SB
            buf[a:a + pos_sb * SB] = _blocks(garbage[j:j + 1], slots, hdw, pos_sb).tobytes()
    model = IsaModel(CFG, bytes(buf), pos=pos, regions=im.spans)
    st = model.run(prog)
    want = gl.attention(q, kc[:n_keys], vc[:n_keys], pos, lanes, slots, hd, 300, 10, 900, 20)
    got = model.act[300:300 + rows * rw].reshape(rows, rw * L)[:, :lanes * hd]
    np.testing.assert_array_equal(got, want)
    # one read of every position block per query row for all the pass's query heads
    per_cache = sum(pos + b + 1 for b in range(rows)) * pos_sb * SB
    assert st.traffic["kv_read"] == 2 * per_cache
    assert st.traffic["kv_written"] == 2 * rows * pos_sb * SB
    k_mem = model.mem[k_addr * SB:(k_addr + n_keys * pos_sb) * SB].view(np.int8)
    np.testing.assert_array_equal(k_mem.reshape(n_keys, -1),
                                  _blocks(kc[:n_keys], slots, hdw, pos_sb))


def test_attn_with_score_cap_matches_golden_attention():
    """ATTN's cap field (w0[31:22]) reaches golden.llm.attention: scores soft-capped at
    cap = 160 (13.9 in score units), with |(q . k) * smul >> sshift| past 2**14 (the cap's
    saturated end) and inside it."""
    rng = np.random.default_rng(11)
    slots, grp, hdw, pos, rows, cap = 1, 2, 2, 18, 2, 160
    lanes, hd = slots * grp, hdw * L
    pos_sb = -(-(slots * hdw) // (SB // L))
    n_keys = pos + rows
    kc, vc = _rand(rng, n_keys, slots * hd, lo=-128, hi=128), _rand(rng, n_keys, slots * hd)
    q = _rand(rng, rows, lanes * hd, lo=-128, hi=128)
    smul, sshift = 1 << 14, 14                       # u = q . k
    u = np.abs((kc.astype(np.int64) @ q[0, :hd].astype(np.int64)) * smul >> sshift)
    assert (u >= 1 << 14).any() and ((u >= 4096) & (u < 1 << 14)).any()
    im = SpanImage(SB)
    k_addr = im.add(_blocks(kc, slots, hdw, pos_sb).tobytes(), "kv")
    v_addr = im.add(_blocks(vc, slots, hdw, pos_sb).tobytes(), "kv")
    act_addr = im.add(q.tobytes() + bytes(-q.nbytes % SB), "activations")
    qw = lanes * hdw
    prog = im.program([
        Instr(Opcode.LOAD, ext=act_addr, a=0, b=-(-q.nbytes // SB) * SB // L),
        Instr(Opcode.ATTN, shift=20, ext=k_addr, v_ext=v_addr, a=0, out=100, q_words=qw,
              rows=rows, lanes=lanes, grp=grp, slots=slots, hd_words=hdw, pos_sb=pos_sb,
              smul=smul, omul=900, sshift=sshift, cap=cap),
    ])
    model = IsaModel(CFG, bytes(im.buf), pos=pos, regions=im.spans)
    model.run(prog)
    want = gl.attention(q, kc, vc, pos, lanes, slots, hd, smul, sshift, 900, 20, cap=cap)
    got = model.act[100:100 + rows * qw].reshape(rows, qw * L)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(want, gl.attention(q, kc, vc, pos, lanes, slots, hd, smul,
                                                 sshift, 900, 20))


def test_attn_field_checks():
    for ins, msg in [
        (Instr(Opcode.ATTN, rows=1, lanes=3, grp=2, slots=2, hd_words=1, q_words=3,
               pos_sb=1), "need lanes = slots x grp"),
        (Instr(Opcode.ATTN, rows=1, lanes=3, grp=1, slots=3, hd_words=1, q_words=6,
               pos_sb=1), "slots=3 does not divide"),
        (Instr(Opcode.ATTN, rows=1, lanes=2, grp=1, slots=2, hd_words=4, q_words=8,
               pos_sb=1), "exceed a position block"),
        (Instr(Opcode.ATTN, rows=1, lanes=8, grp=4, slots=2, hd_words=1, q_words=8,
               pos_sb=1), "exceed the unit's attn_heads"),
        (Instr(Opcode.KVSTORE, rows=1, slots=2, hd_words=4, pos_stride=1),
         "do not fit a position block"),
    ]:
        im = SpanImage(SB)
        prog = im.program([ins])
        with pytest.raises(IsaError, match=msg):
            run_program(CFG, bytes(im.buf), prog)


def test_base_flags_still_decode_and_mlp_fields_unchanged():
    ins = Instr(Opcode.MATMUL, FLAG_RELU | FLAG_RESIDUAL, 12, ext=7, a=1, out=2, b=3, rows=4,
                k_words=5, n_tiles=6, n=7, words=8, mult_b=9, tile_mem_rows=10, lgm=2, lgr=1)
    assert decode(ins.encode()) == ins
    w = np.frombuffer(ins.encode(), dtype="<u4")
    assert w[7] == 10 | 2 << 16 | 1 << 19
