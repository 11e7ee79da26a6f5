"""ISA functional model vs direct golden computations on hand-assembled programs."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hwflow.golden import int8 as golden
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import Instr, Opcode
from hwflow.sim.isa_model import AddressError, IllegalInstruction, IsaError, run_program

from ._asm import (
    END,
    Image,
    act_bytes,
    act_rows,
    cdiv,
    load,
    matmul_case,
    pack_weights,
    program,
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
    assert stats.mpe_kgroups == cdiv(23, 4) * 3 * d["kw"]
    assert stats.mac_slots == stats.mpe_kgroups * 16
    assert stats.macs_valid == 3 * 23 * d["kw"] * 4


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


def test_gemv_1024_is_fast():
    cfg = AccelConfig()                                # P = L = 16, SB = 256 B
    rng = np.random.default_rng(0)
    K = N = 1024
    x = rng.integers(-128, 128, (1, K), dtype=np.int8)
    w = rng.integers(-128, 128, (N, K), dtype=np.int8)
    bias, mult = rng.integers(-1000, 1000, N), rng.integers(1, 100, N)
    img = Image(cfg)
    prog = img.reserve(256)
    x_sb, w_sb = img.place(act_bytes(x, 64, 16)), img.place(pack_weights(cfg, w, bias, mult))
    out_sb = img.reserve(1024)
    image = bytearray(img.bytes())
    raw = program([load(x_sb, 0, 64),
                   Instr(Opcode.MATMUL, shift=20, ext=w_sb, a=0, out=64, rows=1, k_words=64,
                         n_tiles=64, n=N, words=64),
                   store(out_sb, 64, 64), END])
    image[prog * 256: prog * 256 + len(raw)] = raw
    t = time.perf_counter()
    new, stats = run_program(cfg, bytes(image), prog)
    dt = time.perf_counter() - t
    exp = golden.requantize(golden.matmul(x, w), bias, mult, 20)
    np.testing.assert_array_equal(act_rows(new[out_sb * 256:], 1, N, 64, 16), exp)
    assert stats.mpe_kgroups == 64 * 64
    assert dt < 0.5, f"1024x1024 GEMV took {dt:.3f} s in the ISA model"


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
    (Instr(Opcode.MATMUL, ext=14, a=0, out=100, rows=1, k_words=1, n_tiles=1, n=4, words=1),
     AddressError, "MATMUL weights"),
    (Instr(Opcode.MATMUL, ext=1, a=0, out=0, rows=1, k_words=1, n_tiles=1, n=4, words=1),
     IsaError, "overlap"),
    (Instr(Opcode.VADD, a=0, out=1, b=8, rows=2, n=4, words=2), IsaError, "overlaps a"),
])
def test_errors(instr, exc, msg):
    with pytest.raises(exc, match=msg):
        run_program(SMALL, _tiny([instr, END]), 0)


def test_runaway_program():
    with pytest.raises(AddressError, match="instruction fetch"):
        run_program(SMALL, _tiny([load(4, 0, 4)] * 8), 0)
