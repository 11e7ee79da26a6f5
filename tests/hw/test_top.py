"""Whole accelerator in the Amaranth simulator: AXI-Lite control, emulated memory ports, a small
program (LOAD, MATMUL with residual + ReLU at odd sizes, a second MATMUL with row padding, VADD
in place, STORE, END), checked against golden; plus Verilog port names and a Verilator lint."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwflow.golden import int8 as golden
from hwflow.hw.axi_lite import REG
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import FLAG_RELU, FLAG_RESIDUAL, Instr, Opcode
from hwflow.hw.top import Accelerator, generate_verilog

from ._lint import assert_lints_clean
from ._memory import port_process
from ._program import act_rows, matmul_expect, pack_weights

CFG = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, act_depth=256,
                  weight_depth=32)


async def axi_write(ctx, c, addr, value):
    ctx.set(c.awaddr, addr)
    ctx.set(c.wdata, value)
    ctx.set(c.wstrb, 0xF)
    ctx.set(c.awvalid, 1)
    ctx.set(c.wvalid, 1)
    ctx.set(c.bready, 1)
    await ctx.tick().until(c.awready)
    ctx.set(c.awvalid, 0)
    ctx.set(c.wvalid, 0)
    await ctx.tick().until(c.bvalid)
    ctx.set(c.bready, 0)


async def axi_read(ctx, c, addr):
    ctx.set(c.araddr, addr)
    ctx.set(c.arvalid, 1)
    await ctx.tick().until(c.arready)
    ctx.set(c.arvalid, 0)
    ctx.set(c.rready, 1)
    (data,) = await ctx.tick().sample(c.rdata).until(c.rvalid)
    ctx.set(c.rready, 0)
    return data


def run_accel(cfg, image: bytearray, prog_base: int, latency=16, p_busy=0.0, max_cycles=50000,
              dut=None, extra=()):
    dut = dut or Accelerator(cfg)
    regs = {}

    async def host(ctx):
        c = dut.ctrl
        await axi_write(ctx, c, REG["PROG_BASE"], prog_base)
        assert await axi_read(ctx, c, REG["AP_CTRL"]) & 0b100       # idle
        await axi_write(ctx, c, REG["AP_CTRL"], 1)
        n = 0
        while not ctx.get(dut.irq):
            await ctx.tick()
            n += 1
            assert n < max_cycles, "accelerator did not finish"
        for name in ("AP_CTRL", "CYCLES_LO", "MPE_BUSY_LO", "RETIRED", "ERROR"):
            regs[name] = await axi_read(ctx, c, REG[name])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(host)
    rng = random.Random(7)
    for j in range(cfg.mem_ports):
        sim.add_process(port_process(dut.mem[j], image, cfg.beat_bytes, cfg.port_bytes, j,
                                     latency, rng, p_busy))
    for proc in extra:
        sim.add_process(proc)
    sim.run()
    return regs


def _program_case(cfg, seed=0, vadd=True):
    P, L, SB = cfg.chains, cfg.chain_len, cfg.beat_bytes
    rng = np.random.default_rng(seed)
    img = bytearray(256 * SB)

    def put(sb, data):
        img[sb * SB:sb * SB + len(data)] = data

    def i8(shape):
        v = rng.integers(-128, 128, size=shape)
        return np.where(rng.random(shape) < 0.1, rng.choice([-128, 127], size=shape), v
                        ).astype(np.int8)

    # MATMUL 1: K=37, N=23, rows=3, residual + ReLU
    K, N, rows = 37, 23, 3
    kw = -(-K // L)
    nt = -(-N // P)
    ow = -(-N // L)
    x, w = i8((rows, K)), i8((N, K))
    bias = rng.integers(-3000, 3000, size=N)
    mult = rng.integers(1, 65536, size=N)
    res = i8((rows, N))
    shift, res_mult = 22, 30000
    # MATMUL 2: K=12, N=5, rows=2, 3 tiles but out_words=3 words (tail zero fill; channels
    # 8..11 of tile 2 fall in the padding), no residual, shift 0 (saturates)
    K2, N2, rows2, nt2, ow2 = 12, 5, 2, 3, 3
    kw2 = -(-K2 // L)
    x2, w2 = i8((rows2, K2)), i8((N2, K2))
    bias2 = rng.integers(-50, 50, size=N2)
    mult2 = rng.integers(0, 3, size=N2)

    def sbs(nbytes):                  # whole super-beats covering nbytes
        return -(-nbytes // SB)

    def words(nbytes):                # act words moved by a LOAD/STORE of whole super-beats
        return sbs(nbytes) * SB // L

    wblk = pack_weights(cfg, w, bias, mult, kw, nt)
    wblk2 = pack_weights(cfg, w2, bias2, mult2, kw2, nt2)
    xb, rb, x2b = act_rows(x, kw, L), act_rows(res, ow, L), act_rows(x2, kw2, L)
    o1_bytes, o2_bytes = rows * ow * L, rows2 * ow2 * L
    garbage = rng.integers(0, 256, size=SB * sbs(max(o1_bytes, o2_bytes)),
                           dtype=np.uint8).tobytes()
    # external layout (super-beats), program first (11 instructions)
    regions, nxt = {}, sbs(11 * 32)
    for name, size in (("WGT", len(wblk)), ("WGT2", len(wblk2)), ("XS", len(xb)),
                       ("RES", len(rb)), ("GARB", len(garbage)), ("X2", len(x2b)),
                       ("OUT", o1_bytes), ("OUT2", o2_bytes)):
        regions[name] = nxt
        nxt += sbs(size) + 1
    assert nxt * SB <= len(img)
    PROG = 0
    put(regions["WGT"], wblk)
    put(regions["WGT2"], wblk2)
    put(regions["XS"], xb)
    put(regions["RES"], rb)
    put(regions["GARB"], garbage)
    put(regions["X2"], x2b)
    # activation buffer layout (words)
    A_X = 0
    A_RES = A_X + words(len(xb))
    A_OUT = A_RES + words(len(rb))
    A_X2 = A_OUT + words(len(garbage))
    A_OUT2 = A_X2 + words(len(x2b))
    assert A_OUT2 + words(len(garbage)) <= cfg.act_depth
    vadd_n, a_mult, b_mult, vshift = 21, 700, 900, 10
    prog = [
        Instr(Opcode.LOAD, ext=regions["XS"], a=A_X, b=words(len(xb))),
        Instr(Opcode.LOAD, ext=regions["RES"], a=A_RES, b=words(len(rb))),
        Instr(Opcode.LOAD, ext=regions["GARB"], a=A_OUT, b=words(len(garbage))),
        Instr(Opcode.LOAD, ext=regions["GARB"], a=A_OUT2, b=words(len(garbage))),
        Instr(Opcode.LOAD, ext=regions["X2"], a=A_X2, b=words(len(x2b))),
        Instr(Opcode.MATMUL, flags=FLAG_RELU | FLAG_RESIDUAL, shift=shift, ext=regions["WGT"],
              a=A_X, out=A_OUT, b=A_RES, rows=rows, k_words=kw, n_tiles=nt, n=N, words=ow,
              mult_b=res_mult),
        Instr(Opcode.MATMUL, shift=0, ext=regions["WGT2"], a=A_X2, out=A_OUT2, rows=rows2,
              k_words=kw2, n_tiles=nt2, n=N2, words=ow2),
    ] + [
        Instr(Opcode.VADD, shift=vshift, a=A_OUT, out=A_OUT, b=A_RES, rows=rows, n=vadd_n,
              words=ow, mult_b=b_mult, mult_a=a_mult),
    ][:int(vadd)] + [
        Instr(Opcode.STORE, ext=regions["OUT"], a=A_OUT, b=words(o1_bytes)),
        Instr(Opcode.STORE, ext=regions["OUT2"], a=A_OUT2, b=words(o2_bytes)),
        Instr(Opcode.END),
    ]
    code = b"".join(i.encode() for i in prog)
    put(PROG, code)

    y1 = matmul_expect(x, w, bias, mult, shift, True, res=res, res_mult=res_mult)
    o1 = np.zeros((rows, ow * L), dtype=np.int8)
    if vadd:
        o1[:, :vadd_n] = golden.residual_add(y1[:, :vadd_n], res[:, :vadd_n], a_mult, b_mult,
                                             vshift)
    else:
        o1[:, :N] = y1
    y2 = matmul_expect(x2, w2, bias2, mult2, 0, False)
    o2 = np.zeros((rows2, ow2 * L), dtype=np.int8)
    o2[:, :N2] = y2
    # STOREs move whole super-beats: the words after the rows still hold the garbage LOADed there
    expect = {
        regions["OUT"]: o1.tobytes() + garbage[o1.nbytes:SB * sbs(o1_bytes)],
        regions["OUT2"]: o2.tobytes() + garbage[o2.nbytes:SB * sbs(o2_bytes)],
    }
    mpe = nt * rows * kw + nt2 * rows2 * kw2
    return img, PROG, expect, len(prog), mpe


# SB = 64 B: two instructions per super-beat (instruction buffer), L = 16 > P, one param row
CFG_WIDE = AccelConfig(chains=4, chain_len=16, mem_ports=2, port_bytes=32, act_depth=128,
                       weight_depth=16)


@pytest.mark.parametrize("cfg,latency,p_busy", [(CFG, 16, 0.0), (CFG, 5, 0.3),
                                                (CFG_WIDE, 32, 0.1)])
def test_program_matches_golden(cfg, latency, p_busy):
    img, prog_base, expect, n_instr, mpe = _program_case(cfg)
    regs = run_accel(cfg, img, prog_base, latency, p_busy)
    SB = cfg.beat_bytes
    for sb, data in expect.items():
        got = np.frombuffer(bytes(img[sb * SB:sb * SB + len(data)]), dtype=np.int8)
        exp = np.frombuffer(data, dtype=np.int8)
        assert np.array_equal(got, exp), (sb, got, exp)
    assert regs["ERROR"] == 0
    assert regs["AP_CTRL"] & 0b110 == 0b110          # done and idle
    assert regs["RETIRED"] == n_instr
    assert regs["MPE_BUSY_LO"] == mpe
    assert 0 < regs["CYCLES_LO"] < 20000


def test_illegal_opcode_sets_error():
    cfg = CFG
    img = bytearray(64 * cfg.beat_bytes)
    prog = Instr(Opcode.LOAD, ext=8, a=0, b=4).encode() + bytes([0x7F]) + bytes(31)
    prog += Instr(Opcode.END).encode()
    img[:len(prog)] = prog
    regs = run_accel(cfg, img, 0)
    assert regs["ERROR"] == 1
    assert regs["RETIRED"] == 1
    assert regs["AP_CTRL"] & 0b110 == 0b110


def test_verilog_ports_and_lint(tmp_path):
    cfg = AccelConfig(chains=4, chain_len=8, mem_ports=2, port_bytes=16, act_depth=128,
                      weight_depth=32)
    v = generate_verilog(cfg)
    assert "module hwflow_accel(" in v
    head = v[v.index("module hwflow_accel("):]
    head = head[:head.index(");")]
    names = {s.strip().strip("\\").strip() for s in head[len("module hwflow_accel("):].split(",")}
    expect = {"clk", "rst", "irq"}
    expect |= {f"ctrl__{s}" for s in ("awvalid awready awaddr wvalid wready wdata wstrb bvalid "
                                       "bready bresp arvalid arready araddr rvalid rready rdata "
                                       "rresp").split()}
    for j in range(cfg.mem_ports):
        for s in ("rd_req", "rd_data", "wr"):
            for f in ("valid", "ready", "payload"):
                expect.add(f"mem__{j}__{s}__{f}")
    assert names == expect
    ab = cfg.addr_bits
    assert f"output [{ab + 16 - 1}:0] mem__0__rd_req__payload;" in v
    assert f"input [{8 * cfg.port_bytes - 1}:0] mem__1__rd_data__payload;" in v
    assert f"output [{ab + 8 * cfg.port_bytes - 1}:0] mem__1__wr__payload;" in v
    assert_lints_clean(tmp_path, v, "hwflow_accel")
