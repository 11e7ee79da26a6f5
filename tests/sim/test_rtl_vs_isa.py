"""The RTL (hwflow.hw.top) against the ISA functional model, bit for bit, on Verilator."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from hwflow.golden import int8 as golden
from hwflow.hw.config import AccelConfig
from hwflow.hw.top import generate_verilog
from hwflow.sim.isa_model import run_program
from hwflow.sim.runner import simulate

from ._asm import (
    END,
    Image,
    act_bytes,
    act_rows,
    load,
    matmul_case,
    matmul_instr,
    pack_weights,
    program,
    store,
)

SMALL = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, act_depth=512,
                    weight_depth=64, addr_bits=16)


@pytest.fixture(scope="module")
def small_verilog():
    return generate_verilog(SMALL)


def _check(cfg, verilog, image, prog, tmp_path, **kw):
    """Run on both; the whole image after the run must match, and the counters must agree."""
    model_image, stats = run_program(cfg, image, prog)
    r = simulate(cfg, verilog, image, prog, [(0, len(image))], tmp_path, **kw)
    assert r.done, f"no irq within the timeout ({r.cycles} cycles counted)"
    assert r.error == 0 and not r.mem_oob
    if r.regions[0] != model_image:
        a = np.frombuffer(r.regions[0], np.uint8)
        b = np.frombuffer(model_image, np.uint8)
        bad = np.flatnonzero(a != b)
        pytest.fail(f"{bad.size} bytes differ, first at 0x{bad[0]:x} "
                    f"(super-beat {bad[0] // cfg.beat_bytes}): rtl {a[bad[:8]]} isa {b[bad[:8]]}")
    assert r.retired == stats.retired
    assert r.mpe_busy == stats.mpe_kgroups
    return r, stats


@pytest.mark.parametrize("relu,residual,vadd", [(True, True, True), (False, False, False)])
def test_matmul_residual_relu_vadd(small_verilog, tmp_path, relu, residual, vadd):
    """LOAD; MATMUL K=37 N=23 rows=3 (+residual, relu) over junk; VADD in place; STORE; END."""
    image, prog, out_sb, y, d = matmul_case(SMALL, np.random.default_rng(11), relu=relu,
                                            residual=residual, vadd=vadd)
    r, _ = _check(SMALL, small_verilog, image, prog, tmp_path)
    L, SB = SMALL.chain_len, SMALL.beat_bytes
    got = act_rows(r.regions[0][out_sb * SB:], d["rows"], d["ow"] * L, d["ow"], L)
    np.testing.assert_array_equal(got[:, :d["N"]], y)          # and against golden directly
    assert not got[:, d["N"]:].any()


def test_illegal_opcode_sets_error(small_verilog, tmp_path):
    img = bytearray(Image(SMALL).bytes() + bytes(16 * 16))
    raw = program([load(4, 0, 4), END])
    img[: len(raw)] = raw
    img[32] = 0x7F                                              # second instruction
    r = simulate(SMALL, small_verilog, bytes(img), 0, [], tmp_path, timeout_cycles=100_000)
    assert r.done and r.error == 1 and r.retired == 1


def gemv_image(cfg, K=1024, N=1024, seed=0):
    L = cfg.chain_len
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (1, K), dtype=np.int8)
    w = rng.integers(-128, 128, (N, K), dtype=np.int8)
    bias, mult = rng.integers(-1000, 1000, N), rng.integers(1, 100, N)
    kw, ow = K // L, N // L
    img = Image(cfg)
    prog = img.reserve(256)
    x_sb, w_sb = img.place(act_bytes(x, kw, L)), img.place(pack_weights(cfg, w, bias, mult))
    out_sb = img.reserve(N)
    image = bytearray(img.bytes())
    raw = program([load(x_sb, 0, kw),
                   matmul_instr(cfg, K, N, shift=20, ext=w_sb, a=0, out=kw, rows=1, words=ow),
                   store(out_sb, kw, ow), END])
    SB = cfg.beat_bytes
    image[prog * SB: prog * SB + len(raw)] = raw
    exp = golden.requantize(golden.matmul(x, w), bias, mult, 20)
    return bytes(image), prog, out_sb, exp


@pytest.mark.slow
def test_gemv_1024_default_config(tmp_path):
    """P = L = 16, NP = 8, W = 32: a 1024 x 1024 GEMV, bit-exact; reports build time and speed."""
    cfg = AccelConfig()
    t = time.perf_counter()
    verilog = generate_verilog(cfg)
    gen_s = time.perf_counter() - t
    image, prog, out_sb, exp = gemv_image(cfg)
    r, stats = _check(cfg, verilog, image, prog, tmp_path)
    got = act_rows(r.regions[0][out_sb * cfg.beat_bytes:], 1, 1024, 64, 16)
    np.testing.assert_array_equal(got, exp)
    report = {"verilog_gen_s": gen_s, "build_s": r.build_s, "cycles": r.cycles,
              "mpe_busy": r.mpe_busy, "run_wall_s": r.run_wall_s,
              "cycles_per_s": r.cycles_per_s, "total_wall_s": r.total_wall_s}
    (tmp_path / "gemv_report.json").write_text(json.dumps(report, indent=1))
    print("GEMV 1024x1024 on P=L=16 NP=8 W=32:", json.dumps(report))
