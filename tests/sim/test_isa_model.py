"""ISA functional model vs direct golden computations on hand-assembled programs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hwflow.golden import int8 as golden
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import FLAG_INT4, FLAG_RELU, FLAG_RESIDUAL, Instr, Opcode
from hwflow.mapping.weight_format import LayerFormat, pack_weight_block
from hwflow.sim.isa_model import (
    AddressError,
    IllegalInstruction,
    IllegalMode,
    IsaError,
    run_program,
)

from ._asm import (
    END,
    Image,
    act_bytes,
    act_rows,
    cdiv,
    load,
    matmul_case,
    matmul_instr,
    mode,
    n_tiles,
    pack_weights,
    program,
    random_weight,
    store,
)

SMALL = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, act_depth=512,
                    weight_depth=64, addr_bits=16)


@pytest.mark.parametrize("relu,residual,vadd", [(True, True, True), (False, False, False),
                                                (False, True, False), (True, False, True)])
def test_matmul_vadd_store_matches_golden(relu, residual, vadd):
    cfg, rng = SMALL, np.random.default_rng(1)
    image, prog, out_sb, y, d = matmul_case(cfg, rng, relu=relu, residual=residual, vadd=vadd)
    new, stats = run_program(cfg, image, prog)
    L, SB = cfg.chain_len, cfg.beat_bytes
    raw = new[out_sb * SB: out_sb * SB + d["rows"] * d["ow"] * L]
    got = np.frombuffer(raw, dtype=np.int8).reshape(d["rows"], d["ow"] * L)
    np.testing.assert_array_equal(got[:, :d["N"]], y)
    # Bytes n_out <= n < out_words*L were junk before the MATMUL and must come out as zero.
    assert not got[:, d["N"]:].any()
    assert len(new) == len(image)
    assert stats.retired == 6 + vadd
    assert stats.mpe_kgroups == cdiv(23, 4) * 2 * d["kw"]         # rows 3 -> 2 row pairs
    assert stats.mac_slots == stats.mpe_kgroups * 2 * 16
    assert stats.macs_valid == 3 * 23 * d["kw"] * 4
    assert stats.weight_read_bytes == cdiv(23, 4) * (8 + d["kw"]) * 16


@pytest.mark.parametrize("cfg", [
    AccelConfig(chains=8, chain_len=2, mem_ports=1, port_bytes=16, act_depth=1024),
    AccelConfig(chains=2, chain_len=16, mem_ports=1, port_bytes=32, act_depth=1024),
    AccelConfig(chains=16, chain_len=16, mem_ports=8, port_bytes=32, act_depth=1024),
])
def test_other_shapes(cfg):
    """param_rows = 4 (L=2), 1 (L=16); SB larger than a row's share; several rows."""
    rng = np.random.default_rng(7)
    image, prog, out_sb, y, d = matmul_case(cfg, rng, rows=5, K=45, N=19)
    new, _ = run_program(cfg, image, prog)
    L, SB = cfg.chain_len, cfg.beat_bytes
    got = act_rows(new[out_sb * SB:], 5, d["ow"] * L, d["ow"], L)
    np.testing.assert_array_equal(got[:, :19], y)
    assert not got[:, 19:].any()


def test_vadd_in_place_on_b_and_padding():
    cfg, L = SMALL, SMALL.chain_len
    rng = np.random.default_rng(3)
    rows, n, words = 4, 13, 5                          # 20 words a tensor, a multiple of SB/L = 4
    a = rng.integers(-128, 128, (rows, words * L), dtype=np.int8)
    b = rng.integers(-128, 128, (rows, words * L), dtype=np.int8)   # junk in the padding too
    img = Image(cfg)
    prog = img.reserve(5 * 32)
    a_sb, b_sb = img.place(a.tobytes()), img.place(b.tobytes())
    out_sb = img.reserve(rows * words * L)
    image = bytearray(img.bytes())
    raw = program([load(a_sb, 0, 20), load(b_sb, 40, 20),
                   Instr(Opcode.VADD, shift=14, a=0, out=40, b=40, rows=rows, n=n, words=words,
                         mult_a=9000, mult_b=20000),
                   store(out_sb, 40, 20), END])
    image[prog * 16: prog * 16 + len(raw)] = raw
    new, _ = run_program(cfg, bytes(image), prog)
    got = act_rows(new[out_sb * 16:], rows, words * L, words, L)
    exp = golden.residual_add(a[:, :n], b[:, :n], 9000, 20000, 14)
    np.testing.assert_array_equal(got[:, :n], exp)
    assert not got[:, n:].any()


def _gemv_1024(cfg, x, w, bias, mult, blk, sparsity=(1, 1), int4=False):
    """LOAD; a 1024 x 1024 GEMV MATMUL of weight block ``blk``; STORE; END. Checks the output
    against golden and returns the run's stats (P = L = 16, SB = 256 B)."""
    K, N = x.shape[1], w.shape[0]
    img = Image(cfg)
    prog = img.reserve(256)
    x_sb, w_sb = img.place(act_bytes(x, 64, 16)), img.place(blk)
    out_sb = img.reserve(1024)
    image = bytearray(img.bytes())
    raw = program([load(x_sb, 0, 64),
                   matmul_instr(cfg, K, N, sparsity, int4, shift=20, ext=w_sb, a=0, out=64,
                                rows=1, words=64),
                   store(out_sb, 64, 64), END])
    image[prog * 256: prog * 256 + len(raw)] = raw
    new, stats = run_program(cfg, bytes(image), prog)
    exp = golden.requantize(golden.matmul(x, w), bias, mult, 20)
    np.testing.assert_array_equal(act_rows(new[out_sb * 256:], 1, N, 64, 16), exp)
    return stats


def test_gemv_1024():
    """A 1024 x 1024 layer with whole-array execution (its speed is the benchmarks' business)."""
    cfg = AccelConfig()
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (1, 1024), dtype=np.int8)
    w = rng.integers(-128, 128, (1024, 1024), dtype=np.int8)
    bias, mult = rng.integers(-1000, 1000, 1024), rng.integers(1, 100, 1024)
    stats = _gemv_1024(cfg, x, w, bias, mult, pack_weights(cfg, w, bias, mult))
    assert stats.mpe_kgroups == 64 * 64


def _tiny(instrs, nbytes=256):
    img = bytearray(nbytes)
    raw = program(instrs)
    img[: len(raw)] = raw
    return bytes(img)


def test_illegal_opcode():
    image = bytearray(_tiny([load(4, 0, 4), END]))
    image[32] = 0x7F
    with pytest.raises(IllegalInstruction, match=r"illegal opcode 0x7f") as e:
        run_program(SMALL, bytes(image), 0)
    assert e.value.index == 1 and e.value.pc == 32


@pytest.mark.parametrize("instr,exc,msg", [
    (load(100, 0, 4), AddressError, "outside the 256-byte image"),
    (store(15, 0, 8), AddressError, "outside"),
    (load(4, 510, 4), AddressError, "act_depth"),
    (load(4, 0, 3), IsaError, "not a multiple"),
    (Instr(Opcode.MATMUL, ext=14, a=0, out=100, rows=1, k_words=1, n_tiles=1, n=4, words=1,
           tile_mem_rows=9), AddressError, "MATMUL weights"),
    (Instr(Opcode.MATMUL, ext=1, a=0, out=0, rows=1, k_words=1, n_tiles=1, n=4, words=1,
           tile_mem_rows=9), IsaError, "overlap"),
    (Instr(Opcode.MATMUL, ext=1, a=0, out=8, rows=1, k_words=1, n_tiles=1, n=4, words=1,
           tile_mem_rows=10), IsaError, "tile_mem_rows=10"),
    (Instr(Opcode.MATMUL, ext=1, a=0, out=8, rows=1, k_words=1, n_tiles=1, n=5, words=2,
           tile_mem_rows=9), IsaError, "n_tiles"),
    (Instr(Opcode.MATMUL, ext=1, a=0, out=40, rows=1, k_words=30, n_tiles=1, n=4, words=1,
           tile_mem_rows=38), IsaError, "weight_depth"),
    (Instr(Opcode.VADD, a=0, out=1, b=8, rows=2, n=4, words=2), IsaError, "overlaps a"),
])
def test_errors(instr, exc, msg):
    with pytest.raises(exc, match=msg):
        run_program(SMALL, _tiny([instr, END]), 0)


def test_runaway_program():
    with pytest.raises(AddressError, match="instruction fetch"):
        run_program(SMALL, _tiny([load(4, 0, 4)] * 8), 0)


# --------------------------------------------------------------------- N:M and int4 formats

#: Runs every mode of the issue: M = 16 <= L, r = 4 <= G = 4, 2L = 32 divides 32.
WIDE = AccelConfig(chains=2, chain_len=16, mem_ports=1, port_bytes=32, act_depth=1024,
                   weight_depth=128, addr_bits=16)
FORMATS = [((1, 1), False), ((2, 4), False), ((1, 4), False), ((2, 8), False),
           ((4, 16), False), ((1, 2), False), ((1, 1), True), ((2, 4), True), ((1, 4), True),
           ((4, 16), True)]


def _fmt_id(f):
    (n, m), int4 = f
    return f"int{4 if int4 else 8}-" + ("dense" if m == 1 else f"{n}of{m}")


@pytest.mark.parametrize("fmt", FORMATS, ids=_fmt_id)
@pytest.mark.parametrize("rows,K,N", [(3, 70, 23), (4, 160, 9), (1, 48, 40)])
def test_every_format_matches_golden(fmt, rows, K, N):
    """Random weights in each format (odd/even rows, odd k_words, N not a multiple of C)."""
    sparsity, int4 = fmt
    cfg = WIDE
    rng = np.random.default_rng([rows, K, N, sparsity[1], int4])
    image, prog, out_sb, y, d = matmul_case(cfg, rng, rows=rows, K=K, N=N, sparsity=sparsity,
                                            int4=int4)
    new, stats = run_program(cfg, image, prog)
    L, SB = cfg.chain_len, cfg.beat_bytes
    got = act_rows(new[out_sb * SB:], rows, d["ow"] * L, d["ow"], L)
    np.testing.assert_array_equal(got[:, :N], y)
    assert not got[:, N:].any()
    nt, md = n_tiles(cfg, N, sparsity), mode(cfg, K, sparsity, int4)
    assert stats.mpe_kgroups == nt * cdiv(rows, 2) * d["kw"]
    assert stats.mac_slots == stats.mpe_kgroups * 2 * cfg.dsp_slices
    assert stats.macs_valid == rows * N * d["kw"] * L
    assert stats.weight_read_bytes == nt * md["tile_mem_rows"] * cfg.row_bytes


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f[0][1] <= 4], ids=_fmt_id)
def test_formats_on_a_short_chain(fmt):
    """P = L = 4 (R = 8 parameter rows for 4 records of 8 bytes per chain)."""
    sparsity, int4 = fmt
    cfg = replace(SMALL, weight_depth=128)             # int4 2:4, K = 37: 2 x 2 x 19 entries
    rng = np.random.default_rng(sparsity[1] + int4)
    image, prog, out_sb, y, d = matmul_case(cfg, rng, rows=5, K=37, N=23, sparsity=sparsity,
                                            int4=int4)
    new, _ = run_program(cfg, image, prog)
    got = act_rows(new[out_sb * cfg.beat_bytes:], 5, d["ow"] * 4, d["ow"], 4)
    np.testing.assert_array_equal(got[:, :23], y)


def test_mixed_program():
    """x -> int8 2:4 -> int4 dense (relu) -> int8 1:4 (+residual) -> int4 2:4 -> VADD -> out."""
    cfg = WIDE
    L, SB = cfg.chain_len, cfg.beat_bytes
    rng = np.random.default_rng(42)
    rows, dims = 3, [70, 50, 50, 50, 50]
    fmts = [((2, 4), False), ((1, 1), True), ((1, 4), False), ((2, 4), True)]
    words = [cdiv(f, L) for f in dims]
    x = rng.integers(-128, 128, (rows, dims[0]), dtype=np.int8)
    img = Image(cfg)
    prog_sb = img.reserve(16 * 32)
    x_sb = img.place(act_bytes(x, words[0], L))
    addr = [0, 64, 128, 192, 256]                   # activation word of each tensor
    instrs = [load(x_sb, addr[0], cdiv(rows * words[0] * L, SB) * SB // L)]
    h, acts = x, [x]
    for i, (sparsity, int4) in enumerate(fmts):
        K, N = dims[i], dims[i + 1]
        w, kw_args = random_weight(rng, N, K, sparsity, int4)
        bias, mult = rng.integers(-3000, 3000, N), rng.integers(10, 40, N)
        w_sb = img.place(pack_weights(cfg, w, bias, mult, **kw_args))
        relu, residual = i == 1, i == 2
        flags = (FLAG_RELU if relu else 0) | (FLAG_RESIDUAL if residual else 0)
        res = acts[2] if residual else None         # layer 2 output (50 features) + layer 1's
        instrs.append(matmul_instr(cfg, K, N, sparsity, int4, flags=flags, shift=16, ext=w_sb,
                                   a=addr[i], out=addr[i + 1], b=addr[2] if residual else 0,
                                   rows=rows, words=words[i + 1], mult_b=20000))
        h = golden.requantize(golden.matmul(h, w), bias, mult, 16, relu, res=res,
                              res_mult=20000)
        acts.append(h)
    instrs.append(Instr(Opcode.VADD, shift=15, a=addr[4], out=addr[4], b=addr[2], rows=rows,
                        n=50, words=words[4], mult_a=30000, mult_b=12000))
    y = golden.residual_add(h, acts[2], 30000, 12000, 15)
    n_st = cdiv(rows * words[4] * L, SB) * SB // L
    out_sb = img.reserve(n_st * L)
    instrs += [store(out_sb, addr[4], n_st), END]
    image = bytearray(img.bytes())
    raw = program(instrs)
    image[prog_sb * SB: prog_sb * SB + len(raw)] = raw
    new, stats = run_program(cfg, bytes(image), prog_sb)
    np.testing.assert_array_equal(act_rows(new[out_sb * SB:], rows, 50, words[4], L), y)
    assert stats.by_opcode == {"LOAD": 1, "MATMUL": 4, "VADD": 1, "STORE": 1, "END": 1}


def test_gemv_1024_sparse_int4():
    """4:16 int4 on P = L = 16 (packed by the mapper's vectorized packer)."""
    # int4 reserves 2 ring entries per memory row: a K = 1024 tile of 70 rows needs 2 x 140
    cfg = AccelConfig(weight_depth=512)
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (1, 1024), dtype=np.int8)
    w, kw_args = random_weight(rng, 1024, 1024, (4, 16), True)
    bias, mult = rng.integers(-1000, 1000, 1024), rng.integers(1, 100, 1024)
    blk = pack_weight_block(cfg, LayerFormat(4, 16, 4), w, bias, mult, 64,
                            n_tiles(cfg, 1024, (4, 16)), w4=kw_args["w4"],
                            w4_scale=kw_args["s4"])
    stats = _gemv_1024(cfg, x, w, bias, mult, blk, (4, 16), True)
    assert stats.mpe_kgroups == 16 * 64                 # a quarter of the dense k-groups


@pytest.mark.parametrize("cfg,fields,msg", [
    (SMALL, dict(lgm=3, lgr=2), "lgm=3 lgr=2"),                    # M = 8 > L = 4
    (SMALL, dict(lgm=0, lgr=1), "lgm=0 lgr=1"),                    # r > M: N < 1
    (AccelConfig(chains=8, chain_len=2, mem_ports=1, port_bytes=16), dict(lgm=2, lgr=2),
     "lgm=2 lgr=2"),                                               # r = 4 > G = 2
    (AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, sparse=False),
     dict(lgm=1, lgr=1), "sparse=False"),
    (AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, int4=False),
     dict(flags=FLAG_INT4), "int4=False"),
])
def test_illegal_mode(cfg, fields, msg):
    ins = Instr(Opcode.MATMUL, ext=1, a=0, out=8, rows=1, k_words=1, n_tiles=1, n=4, words=1,
                tile_mem_rows=9, **fields)
    with pytest.raises(IllegalMode, match=msg) as e:
        run_program(cfg, _tiny([ins, END], 1024), 0)
    assert e.value.error == 2 and e.value.index == 0


def test_illegal_mode_bits_past_the_isa():
    """lgm = 5..7 can only come from raw bits; the model refuses them like the RTL."""
    image = bytearray(_tiny([Instr(Opcode.MATMUL, ext=1, a=0, out=8, rows=1, k_words=1,
                                   n_tiles=1, n=4, words=1, tile_mem_rows=9), END], 1024))
    image[30] = 5                                      # w7[23:16]: lgm = 5
    with pytest.raises(IllegalMode, match="lgm=5"):
        run_program(SMALL, bytes(image), 0)


def test_malformed_sparse_weights():
    cfg = SMALL
    w = np.zeros((4, 4), dtype=np.int8)
    blk = bytearray(pack_weights(cfg, w, np.zeros(4), np.zeros(4), sparsity=(2, 4)))
    blk[8 * 16] = 0x0F                                 # index row, chain 0 lane 0: index 15
    img = Image(cfg)
    prog = img.reserve(64)
    w_sb = img.place(bytes(blk))
    image = bytearray(img.bytes() + bytes(64))
    raw = program([matmul_instr(cfg, 4, 4, (2, 4), ext=w_sb, a=0, out=8, rows=1, words=1), END])
    image[: len(raw)] = raw
    with pytest.raises(IsaError, match="malformed int8 2:4 weight block"):
        run_program(cfg, bytes(image), prog)


_MM = Instr(Opcode.MATMUL, ext=1, a=0, out=8, rows=1, k_words=1, n_tiles=1, n=4, words=1,
            tile_mem_rows=9)
_PF = replace(_MM, op=Opcode.PREFETCH)


@pytest.mark.parametrize("instrs,index,msg", [
    ([_PF, replace(_MM, ext=2)], 1, "not those of the pending PREFETCH"),
    ([_PF, load(4, 0, 4), _PF], 2, "previous PREFETCH's MATMUL has not run"),
    ([replace(_PF, lgm=3, lgr=2)], 0, "lgm=3 lgr=2"),
    ([replace(_PF, k_words=0)], 0, "k_words=0"),
    ([replace(_PF, tile_mem_rows=65)], 0, "tile_mem_rows=65"),     # > weight_depth 64
])
def test_prefetch_rules(instrs, index, msg):
    """A PREFETCH's MATMUL must follow it before another PREFETCH, with the same ring fields,
    and its mode must be legal: else ERROR = 2 at the offending instruction, as in the RTL
    (tests/hw/test_top.py). A PREFETCH changes no state: one pending at END is no error."""
    cfg = replace(SMALL, transformer=True)
    with pytest.raises(IllegalMode, match=msg) as e:
        run_program(cfg, _tiny(instrs + [END], 1024), 0)
    assert e.value.error == 2 and e.value.index == index
    _, stats = run_program(cfg, _tiny([_PF, load(4, 0, 4), END], 1024), 0)
    assert stats.retired == 3 and stats.weight_read_bytes == 0
    with pytest.raises(IllegalInstruction, match="PREFETCH needs the transformer units"):
        run_program(SMALL, _tiny([_PF, END], 1024), 0)
