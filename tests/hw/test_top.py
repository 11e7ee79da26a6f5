"""Whole accelerator in the Amaranth simulator: AXI-Lite control, emulated memory ports, a small
program (LOAD, MATMUL with residual + ReLU at odd sizes, a second MATMUL with row padding, VADD
in place, STORE, END), checked against golden; plus Verilog port names and a Verilator lint."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwflow.golden import int8 as golden
from hwflow.golden.sparse import parse_nm
from hwflow.hw.axi_lite import REG
from hwflow.hw.config import AccelConfig
from hwflow.hw.controller import mode_legal
from hwflow.hw.isa import (
    ERROR_ILLEGAL_MODE,
    FLAG_INT4,
    FLAG_RELU,
    FLAG_RESIDUAL,
    INSTR_BYTES,
    Instr,
    Opcode,
    decode,
)
from hwflow.hw.isa_layout import FLAGS_LAYOUT, LAYOUTS
from hwflow.hw.top import Accelerator, generate_verilog
from hwflow.mapping.emit import prefetch_weights
from hwflow.mapping.weight_format import DENSE_INT8, LayerFormat, is_legal

from ._lint import assert_lints_clean
from ._memory import port_process
from ._program import act_rows, matmul_expect, random_layer

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


@dataclass
class MM:
    """One MATMUL of a test program (random data drawn by :func:`build_program`)."""

    K: int
    N: int
    rows: int
    fmt: LayerFormat = DENSE_INT8
    relu: bool = False
    residual: bool = False
    shift: int = 22
    res_mult: int = 0
    n_tiles: int | None = None          # default: just enough tiles for N
    out_words: int | None = None        # default: just enough words for N
    bias_range: int = 3000
    mult_range: tuple = (1, 65536)


def build_program(cfg, mms, seed=0, vadd=False, prefetch=False):
    """LOADs, the MATMULs (each on its own x, residual and output rows; outputs pre-filled with
    garbage so that every byte the hardware must write is checked), a VADD in place on the first
    output (optional), STOREs, END. Returns ``(image, prog_base, {sb: bytes}, n_instr, mpe)``.
    With ``prefetch`` the VADD follows the first MATMUL and the compiler's PREFETCHes are in
    (``mapping.emit.prefetch_weights``: the first MATMUL's before the LOADs, the second's
    before the VADD)."""
    L, SB = cfg.chain_len, cfg.beat_bytes
    rng = np.random.default_rng(seed)
    img = bytearray(max(1024 * SB, 1 << 16))

    def i8(shape):
        v = rng.integers(-128, 128, size=shape)
        return np.where(rng.random(shape) < 0.1, rng.choice([-128, 127], size=shape), v
                        ).astype(np.int8)

    def sbs(nbytes):                  # whole super-beats covering nbytes
        return -(-nbytes // SB)

    def words(nbytes):                # act words moved by a LOAD/STORE of whole super-beats
        return sbs(nbytes) * SB // L

    n_instr_guess = (6 if prefetch else 5) * len(mms) + 2
    ext = sbs(32 * n_instr_guess)      # next free super-beat
    act = 0                            # next free act word
    loads, mm_ins, stores, expect = [], [], [], {}
    mpe = 0
    outs = []

    def place(data):
        nonlocal ext
        at = ext
        img[at * SB:at * SB + len(data)] = data
        ext += sbs(len(data)) + 1
        return at

    def alloc(nbytes):
        nonlocal act
        at = act
        act += words(nbytes)
        return at

    for mm in mms:
        lay = random_layer(cfg, rng, mm.K, mm.N, mm.fmt, mm.n_tiles, mm.bias_range,
                           mm.mult_range)
        kw, nt = lay.k_words, lay.n_tiles
        ow = mm.out_words or -(-mm.N // L)
        x = i8((mm.rows, mm.K))
        xb = act_rows(x, kw, L)
        res = i8((mm.rows, mm.N)) if mm.residual else None
        wsb = place(lay.block)
        a_x = alloc(len(xb))
        loads.append(Instr(Opcode.LOAD, ext=place(xb), a=a_x, b=words(len(xb))))
        a_res = 0
        if res is not None:
            rb = act_rows(res, ow, L)
            a_res = alloc(len(rb))
            loads.append(Instr(Opcode.LOAD, ext=place(rb), a=a_res, b=words(len(rb))))
        o_bytes = mm.rows * ow * L
        garbage = rng.integers(0, 256, size=SB * sbs(o_bytes), dtype=np.uint8).tobytes()
        a_out = alloc(len(garbage))
        loads.append(Instr(Opcode.LOAD, ext=place(garbage), a=a_out, b=words(len(garbage))))
        flags = lay.flags | (FLAG_RELU if mm.relu else 0) | (FLAG_RESIDUAL if mm.residual else 0)
        mm_ins.append(Instr(Opcode.MATMUL, flags=flags, shift=mm.shift, ext=wsb, a=a_x,
                            out=a_out, b=a_res, rows=mm.rows, k_words=kw, n_tiles=nt, n=mm.N,
                            words=ow, mult_b=mm.res_mult, **lay.mode))
        y = matmul_expect(x, lay.w, lay.bias, lay.mult, mm.shift, mm.relu, res=res,
                          res_mult=mm.res_mult)
        o = np.zeros((mm.rows, ow * L), dtype=np.int8)
        o[:, :mm.N] = y
        outs.append((o, garbage, a_out, ow, mm.rows, res))
        mpe += nt * -(-mm.rows // 2) * kw
    assert act <= cfg.act_depth, act
    vadd_ins = []
    if vadd:
        o, garbage, a_out, ow, rows, res = outs[0]
        assert res is not None
        vadd_n, a_mult, b_mult, vshift = min(21, res.shape[1]), 700, 900, 10
        vadd_ins.append(Instr(Opcode.VADD, shift=vshift, a=a_out, out=a_out, b=mm_ins[0].b,
                              rows=rows, n=vadd_n, words=ow, mult_b=b_mult, mult_a=a_mult))
        v = np.zeros_like(o)
        v[:, :vadd_n] = golden.residual_add(o[:, :vadd_n], res[:, :vadd_n], a_mult, b_mult,
                                            vshift)
        outs[0] = (v,) + outs[0][1:]
    for o, garbage, a_out, _ow, _rows, _ in outs:
        sb = place(bytes(len(garbage)))
        stores.append(Instr(Opcode.STORE, ext=sb, a=a_out, b=words(len(garbage))))
        # STOREs move whole super-beats: the words after the rows still hold the garbage
        expect[sb] = o.tobytes() + garbage[o.nbytes:]
    prog = loads + mm_ins + vadd_ins + stores + [Instr(Opcode.END)]
    if prefetch:
        prog = prefetch_weights(loads + mm_ins[:1] + vadd_ins + mm_ins[1:] + stores
                                + [Instr(Opcode.END)])
    assert len(prog) <= n_instr_guess and ext * SB <= len(img), (len(prog), ext)
    code = b"".join(i.encode() for i in prog)
    img[:len(code)] = code
    return img, 0, expect, len(prog), mpe


def _program_case(cfg, seed=0, vadd=True, prefetch=False):
    """A program of base instructions: a MATMUL with residual + ReLU at odd sizes (3 rows), a
    second one with row padding (a tile more than N needs, 3 words: tail zero fill, zeros for
    n >= n_out, channels beyond the row not written), VADD in place, STOREs."""
    mms = [MM(37, 23, 3, relu=True, residual=True, shift=22, res_mult=30000),
           MM(12, 5, 2, shift=0, n_tiles=-(-5 // cfg.chains) + 1, out_words=3, bias_range=50,
              mult_range=(0, 3))]
    return build_program(cfg, mms, seed, vadd, prefetch)


def check_program(cfg, img, prog_base, expect, n_instr, mpe, latency=16, p_busy=0.0,
                  max_cycles=50000, dut=None, extra=()):
    regs = run_accel(cfg, img, prog_base, latency, p_busy, max_cycles=max_cycles, dut=dut,
                     extra=extra)
    SB = cfg.beat_bytes
    for sb, data in expect.items():
        got = np.frombuffer(bytes(img[sb * SB:sb * SB + len(data)]), dtype=np.int8)
        exp = np.frombuffer(data, dtype=np.int8)
        assert np.array_equal(got, exp), (sb, got, exp)
    assert regs["ERROR"] == 0
    assert regs["AP_CTRL"] & 0b110 == 0b110          # done and idle
    assert regs["RETIRED"] == n_instr
    assert regs["MPE_BUSY_LO"] == mpe
    return regs


# SB = 64 B: two instructions per super-beat (instruction buffer), L = 16 > P, two param rows
CFG_WIDE = AccelConfig(chains=4, chain_len=16, mem_ports=2, port_bytes=32, act_depth=128,
                       weight_depth=64)


# a dense-only engine shaped like the iCEBreaker's: one chain of 2 slices (G = 2, R = 8), 2-byte
# super-beats (16 per instruction), one epilogue
CFG_TINY = AccelConfig(chains=1, chain_len=2, mem_ports=1, port_bytes=2, act_depth=256,
                       weight_depth=64, sparse=False, int4=False)


@pytest.mark.parametrize("cfg,latency,p_busy", [(CFG, 16, 0.0), (CFG, 5, 0.3),
                                                (CFG_WIDE, 32, 0.1), (CFG_TINY, 8, 0.1)])
def test_program_matches_golden(cfg, latency, p_busy):
    regs = check_program(cfg, *_program_case(cfg), latency=latency, p_busy=p_busy)
    assert 0 < regs["CYCLES_LO"] < 20000


def _fmt(text, wbits=8):
    n, m = parse_nm(text)
    return LayerFormat(n, m, wbits)


# Every weight format on a small engine, odd and even row counts; the L = 16 engine runs the
# modes with M = 8 and 16. Each case is one program (MATMUL with residual, then one without).
# int4 layers span two scale blocks (32/r value rows of two words each), hence the bigger
# buffers of their engines (the ring holds two tiles' reservation).
CFG_INT4 = replace(CFG, act_depth=1024, weight_depth=192)
CFG_WIDE_INT4 = replace(CFG_WIDE, act_depth=256, weight_depth=64)
FORMAT_CASES = [
    (CFG, "dense", 8), (CFG, "2:4", 8), (CFG, "1:4", 8), (CFG, "1:2", 8),
    (CFG_INT4, "dense", 4), (CFG_INT4, "2:4", 4),
    (CFG_WIDE, "2:8", 8), (CFG_WIDE, "4:16", 8), (CFG_WIDE_INT4, "1:4", 4),
]


@pytest.mark.parametrize("cfg,sparsity,wbits", FORMAT_CASES,
                         ids=[f"L{c.chain_len}-{s}-int{b}" for c, s, b in FORMAT_CASES])
def test_weight_formats_match_golden(cfg, sparsity, wbits):
    fmt = _fmt(sparsity, wbits)
    L, P, r = cfg.chain_len, cfg.chains, fmt.r
    K = (64 // r + 3) * L + 3 if wbits == 4 else 5 * L + 3
    mms = [MM(K, 2 * P * r + 3, 3, fmt, relu=True, residual=True, shift=20, res_mult=20000),
           MM(K - 5, P * r - 1, 2 if wbits == 4 else 4, fmt, shift=19)]
    check_program(cfg, *build_program(cfg, mms, seed=len(sparsity) + wbits),
                  max_cycles=100000)


@pytest.mark.parametrize("prefetch", [False, True])
def test_mixed_formats_in_one_program(prefetch):
    """Dense int8, 2:4 int8 and int4 dense MATMULs back to back (and a VADD); with the
    PREFETCHes (a transformer-path instruction), the weights of the first MATMUL stream during
    the LOADs, the second's during the VADD."""
    mms = [MM(29, 10, 3, DENSE_INT8, relu=True, residual=True, shift=22, res_mult=30000),
           MM(40, 13, 2, _fmt("2:4"), shift=20),
           MM(70, 9, 5, _fmt("dense", 4), residual=True, res_mult=5000, shift=18)]
    cfg = replace(CFG_INT4, transformer=prefetch)
    check_program(cfg, *build_program(cfg, mms, seed=3, vadd=True, prefetch=prefetch))


# PREFETCH is a transformer-path instruction (the in-order read arbiter is built with it)
CFG_TF = replace(CFG, transformer=True)


@pytest.mark.parametrize("cfg,latency,p_busy", [(CFG_TF, 5, 0.3),
                                                (replace(CFG_TINY, transformer=True), 8, 0.1)])
def test_prefetched_program_matches_golden(cfg, latency, p_busy):
    """The weights of the program's MATMULs stream beside its LOADs and its VADD (the
    arbiter routes the interleaved bursts), bit-exact: each MATMUL starts with ring entries
    already in."""
    dut = Accelerator(cfg)
    ctl = dut.controller
    at_start = []

    async def probe(ctx):
        async for _clk, _rst, start, arrived in ctx.tick().sample(ctl.kseq.start,
                                                                   ctl.ring.arrived):
            if start:
                at_start.append(arrived)

    check_program(cfg, *_program_case(cfg, prefetch=True), latency=latency, p_busy=p_busy,
                  dut=dut, extra=[probe])
    assert len(at_start) == 2 and min(at_start) > 0, at_start


# the prefetched program of _program_case: PREFETCH, 5 LOADs, MATMUL, PREFETCH (index 7),
# VADD (8), MATMUL (9), STOREs, END; each case patches it: (index, what, ERROR, RETIRED)
PREFETCH_CASES = [
    (7, "other weights", ERROR_ILLEGAL_MODE, 9),    # the MATMUL is not the PREFETCH's
    (8, "second prefetch", ERROR_ILLEGAL_MODE, 8),  # a PREFETCH while one is pending
    (8, "end", 0, 9),                               # END while one is pending: its reads end
]


@pytest.mark.parametrize("index,what,error,retired", PREFETCH_CASES)
def test_prefetch_errors_and_a_pending_end(index, what, error, retired):
    cfg = CFG_TF
    img, base, _expect, _n, _mpe = _program_case(cfg, prefetch=True)
    pf = decode(bytes(img[7 * INSTR_BYTES:8 * INSTR_BYTES]))
    assert pf.op == Opcode.PREFETCH
    patch = {"other weights": replace(pf, ext=pf.ext + 1), "second prefetch": pf,
             "end": Instr(Opcode.END)}[what]
    img[index * INSTR_BYTES:(index + 1) * INSTR_BYTES] = patch.encode()
    regs = run_accel(cfg, img, base, latency=5, p_busy=0.3)
    assert regs["ERROR"] == error
    assert regs["RETIRED"] == retired
    assert regs["AP_CTRL"] & 0b110 == 0b110


@pytest.mark.parametrize("opcode", [0x7F, Opcode.PREFETCH])
def test_illegal_opcode_sets_error(opcode):
    """An unknown opcode, and PREFETCH on an engine without the transformer path."""
    cfg = CFG
    img = bytearray(64 * cfg.beat_bytes)
    prog = Instr(Opcode.LOAD, ext=8, a=0, b=4).encode() + bytes([opcode]) + bytes(31)
    prog += Instr(Opcode.END).encode()
    img[:len(prog)] = prog
    regs = run_accel(cfg, img, 0)
    assert regs["ERROR"] == 1
    assert regs["RETIRED"] == 1
    assert regs["AP_CTRL"] & 0b110 == 0b110


CFG_MIN = replace(CFG, sparse=False, int4=False)
CFG_WIDE_NO4 = replace(CFG_WIDE, act_depth=128, chain_len=12, mem_ports=3, port_bytes=32,
                       chains=8, transformer=False)   # L = 12: 2L does not divide 32, no int4
#                                 (nor the vector unit, which needs a power-of-two L)


# (engine, (tile_mem_rows, lgm, lgr), flags, k_words): MATMULs this engine must refuse with
# ERROR = 2
ILLEGAL = [
    (CFG, (10, 3, 0), 0, 2),            # M = 8 > L = 4
    (CFG, (10, 1, 2), 0, 2),            # r = 4 > M = 2 (N < 1)
    (CFG, (10, 2, 3), 0, 2),            # r = 8 > G
    (CFG, (10, 0, 0), 0, 0),            # k_words = 0: nothing would ever be written
    (CFG, (33, 0, 0), 0, 2),            # a tile's reservation > the ring (32)
    (CFG, (17, 0, 0), FLAG_INT4, 2),    # int4 reserves 2 x 17 > 32
    (CFG_MIN, (10, 2, 1), 0, 2),        # 2:4 without the sparse selectors
    (CFG_MIN, (10, 0, 0), FLAG_INT4, 2),        # int4 without the int4 path
    (CFG_WIDE_NO4, (10, 0, 0), FLAG_INT4, 2),   # int4 needs 2L | 32
]


@pytest.mark.parametrize("cfg,mode,flags,k_words", ILLEGAL)
def test_illegal_mode_sets_error(cfg, mode, flags, k_words):
    img = bytearray(64 * cfg.beat_bytes)
    # through the hardware's layout, not the encoder: it refuses lgr = 3 (r = 8), which the
    # field holds and the engine must refuse too
    tile_mem_rows, lgm, lgr = mode
    mm = LAYOUTS[Opcode.MATMUL].const({
        "op": Opcode.MATMUL, "flags": FLAGS_LAYOUT.from_bits(flags), "ext": 40, "a": 0,
        "out": 8, "rows": 1, "k_words": k_words, "n_tiles": 1, "n": 1, "words": 1,
        "tile_mem_rows": tile_mem_rows, "lgm": lgm, "lgr": lgr})
    prog = (Instr(Opcode.LOAD, ext=8, a=0, b=cfg.beat_bytes // cfg.chain_len).encode()
            + mm.as_value().value.to_bytes(INSTR_BYTES, "little") + Instr(Opcode.END).encode())
    img[:len(prog)] = prog
    regs = run_accel(cfg, img, 0)
    assert regs["ERROR"] == ERROR_ILLEGAL_MODE
    assert regs["RETIRED"] == 1
    assert regs["AP_CTRL"] & 0b110 == 0b110
    assert regs["MPE_BUSY_LO"] == 0


@pytest.mark.parametrize("cfg", [CFG, CFG_WIDE, CFG_MIN, CFG_WIDE_NO4,
                                 AccelConfig(chains=1, chain_len=2, mem_ports=1, port_bytes=2)])
def test_hardware_mode_check_agrees_with_the_mapper(cfg):
    for m in (1, 2, 4, 8, 16):
        for r in (1, 2, 4):
            for wbits in (8, 4):
                if m % r:
                    continue
                fmt = LayerFormat(m // r, m, wbits)
                assert mode_legal(cfg, fmt.lgm, fmt.lgr, fmt.int4) == is_legal(cfg, fmt), fmt
    assert not mode_legal(cfg, 5, 0, False) and not mode_legal(cfg, 2, 3, False)


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
