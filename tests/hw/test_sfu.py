"""VectorUnit (RMSNORM, ROPE, SILUMUL with and without RELU2, GELU, TANH, ABSQUANT) on a real
ActivationBuffer against golden.llm and golden.ternary."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth import Module, Mux
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hwflow.golden import llm as golden
from hwflow.golden import ternary
from hwflow.hw.buffers import ActivationBuffer
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import FLAG_GAMMA, FLAG_GELU, FLAG_RELU2, FLAG_TANH, Instr, Opcode
from hwflow.hw.sfu import GELU_ROM, RELU2_ROM, SILU_ROM, TANH_ROM, VectorUnit

from ._lint import assert_lints_clean


def _cfg(L: int, V: int = 1) -> AccelConfig:
    return AccelConfig(chains=2, chain_len=L, mem_ports=1, port_bytes=2 * L, act_depth=256,
                       vec_lanes=V)


class _Harness(wiring.Component):
    """The unit on an ActivationBuffer (read port a, the write port); the testbench loads words
    through the write port while the unit is idle and reads them back through port b."""

    def __init__(self, L: int, depth: int, V: int = 1):
        self.L, self.depth, self.V = L, depth, V
        super().__init__({
            "ins": In(256), "start": In(1), "busy": Out(1),
            "ld_addr": In(16), "ld_data": In(8 * L), "ld_en": In(L),
            "rb_addr": In(16), "rb_data": Out(8 * L),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.vu = vu = VectorUnit(_cfg(self.L, self.V))
        m.submodules.buf = buf = ActivationBuffer(self.L, self.depth)
        aw = buf.addr_width
        load = self.ld_en != 0
        m.d.comb += [
            vu.ins.eq(self.ins), vu.start.eq(self.start), self.busy.eq(vu.busy),
            buf.a_addr.eq(vu.rd_addr[:aw]), buf.a_en.eq(vu.rd_en), vu.rd_data.eq(buf.a_data),
            buf.w_addr.eq(Mux(load, self.ld_addr, vu.wr_addr)[:aw]),
            buf.w_data.eq(Mux(load, self.ld_data, vu.wr_data)),
            buf.w_en.eq(Mux(load, self.ld_en, vu.wr_en)),
            buf.b_addr.eq(self.rb_addr[:aw]), buf.b_en.eq(1), self.rb_data.eq(buf.b_data),
        ]
        return m


# ---- instructions (hw/isa.py encodes them; the unit gets the 256-bit word) -------------------

def rmsnorm_ins(a, out, rows, eps, n, words, mult, shift, g=None):
    """RMSNORM; with ``g`` (act word of int8 gamma codes) flag GAMMA."""
    flags = FLAG_GAMMA if g is not None else 0
    return Instr(Opcode.RMSNORM, flags, shift, a=a, out=out, g=g or 0, rows=rows, eps=eps, n=n,
                 words=words, mult_b=mult)


def silumul_ins(a, b, out, rows, n, words, mult, shift, relu2=False, flags=0):
    flags |= FLAG_RELU2 if relu2 else 0
    return Instr(Opcode.SILUMUL, flags, shift, a=a, out=out, b=b, rows=rows, n=n, words=words,
                 mult_b=mult)


def absquant_ins(a, out, g, rows, m_addr, n, words, gamma=False):
    flags = FLAG_GAMMA if gamma else 0
    return Instr(Opcode.ABSQUANT, flags, a=a, out=out, g=g, rows=rows, m_addr=m_addr, n=n,
                 words=words)


def rope_ins(a, cs, cs_words, rows, heads, hd, head_stride, words):
    return Instr(Opcode.ROPE, a=a, cs=cs, cs_words=cs_words, rows=rows, heads=heads, hd=hd,
                 head_stride=head_stride, words=words)


# ---- reference: golden.llm applied to a byte image of the buffer -----------------------------

def reference(mem: np.ndarray, ins: Instr, L: int) -> None:
    """Execute ``ins`` on ``mem`` (int8, depth*L bytes) in place, as the doc defines it."""
    op, flags, shift, rows = ins.op, ins.flags, ins.shift, ins.rows
    if op == Opcode.ABSQUANT:
        a, out, g, m_addr, n, words = ins.a, ins.out, ins.g, ins.m_addr, ins.n, ins.words
        gamma = mem[g * L:g * L + n].astype(np.int64) if flags & FLAG_GAMMA else None
        for r in range(rows):
            x = mem[(a + r * words) * L:][:n].astype(np.int64)
            xq, m = ternary.absmax_quant(x[None], None if gamma is None else gamma[None])
            mb = m_addr * L + 2 * r
            mem[mb:mb + 2] = np.array([m[0]], dtype="<u2").view(np.int8)
            o = (out + r * words) * L
            mem[o:o + words * L] = 0
            mem[o:o + n] = xq[0]
    elif op in (Opcode.RMSNORM, Opcode.SILUMUL):
        # RMSNORM's gamma codes (g) sit where SILUMUL's up (b) does
        a, out, b = ins.a, ins.out, ins.g if op == Opcode.RMSNORM else ins.b
        n, words, mult = ins.n, ins.words, ins.mult_b
        gamma = mem[b * L:b * L + n].astype(np.int64) if flags & FLAG_GAMMA else None
        for r in range(rows):
            x = mem[(a + r * words) * L:][:n].astype(np.int64)
            if op == Opcode.RMSNORM:
                y = golden.rmsnorm(x[None], ins.eps, mult, shift, gamma)[0]
            elif flags & FLAG_TANH:
                y = golden.tanh_cap(x, mult, shift)                 # b is not read
            else:
                u = mem[(b + r * words) * L:][:n].astype(np.int64)
                # the unit's priority with two table flags (the ISA leaves them undefined):
                # TANH over GELU over RELU2
                act = ("gelu_tanh" if flags & FLAG_GELU else
                       "relu2" if flags & FLAG_RELU2 else "silu")
                y = golden.gate_mul(x, u, mult, shift, act)
            o = (out + r * words) * L
            mem[o:o + words * L] = 0
            mem[o:o + n] = y
    elif op == Opcode.ROPE:
        a, cs, cs_words = ins.a, ins.cs, ins.cs_words
        heads, hd, head_stride, words = ins.heads, ins.hd, ins.head_stride, ins.words
        for r in range(rows):
            c0 = (cs + r * cs_words) * L
            table = mem[c0:c0 + 2 * hd].view(np.int16).astype(np.int64)  # little-endian host
            for h in range(heads):
                p = (a + r * words) * L + h * head_stride
                mem[p:p + hd] = golden.rope(mem[p:p + hd][None], table[None], 1, hd)[0]


# ---- simulation ------------------------------------------------------------------------------

def run(L: int, depth: int, mem: np.ndarray, program: list[Instr], V: int = 1
        ) -> tuple[list, list]:
    """Load ``mem``, run each instruction on a unit of ``V`` lanes, read the whole buffer back
    after each.

    Returns the images (int8 arrays) and the cycles from ``start`` until ``busy`` fell.
    """
    dut = _Harness(L, depth, V)
    images, cycles = [], []

    async def tb(ctx):
        words = mem.view(np.uint8).reshape(depth, L)
        for addr in range(depth):
            ctx.set(dut.ld_addr, addr)
            ctx.set(dut.ld_data, int.from_bytes(words[addr].tobytes(), "little"))
            ctx.set(dut.ld_en, (1 << L) - 1)
            await ctx.tick()
        ctx.set(dut.ld_en, 0)
        for ins in program:
            ctx.set(dut.ins, int.from_bytes(ins.encode(), "little"))
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            assert ctx.get(dut.busy), "busy must rise the cycle after start"
            t = 1
            while ctx.get(dut.busy):
                await ctx.tick()
                t += 1
                assert t < 100_000, "unit hangs"
            cycles.append(t)
            img = bytearray()
            for addr in range(depth):
                ctx.set(dut.rb_addr, addr)
                await ctx.tick()
                img += ctx.get(dut.rb_data).to_bytes(L, "little")
            images.append(np.frombuffer(bytes(img), dtype=np.int8).copy())

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return images, cycles


def check(L: int, depth: int, mem: np.ndarray, program: list[Instr], V: int = 1) -> list[int]:
    images, cycles = run(L, depth, mem, program, V)
    ref = mem.copy()
    for k, (ins, img) in enumerate(zip(program, images, strict=True)):
        reference(ref, ins, L)
        bad = np.flatnonzero(img != ref)
        assert bad.size == 0, (
            f"instruction {k} ({ins.op.name}): {bad.size} bytes differ, first at byte "
            f"{bad[0]}: got {img[bad[0]]}, expected {ref[bad[0]]}")
    return cycles


def _rand_mem(rng: np.random.Generator, depth: int, L: int) -> np.ndarray:
    return rng.integers(-128, 128, size=depth * L, dtype=np.int64).astype(np.int8)


def _put(mem: np.ndarray, byte: int, values) -> None:
    v = np.asarray(values, dtype=np.int64).astype(np.int8)
    mem[byte:byte + v.size] = v


def _put_table(mem: np.ndarray, byte: int, values) -> None:
    t = np.asarray(values, dtype=np.int64).astype("<i2")
    mem[byte:byte + 2 * t.size] = t.view(np.int8)


# ---- tests -----------------------------------------------------------------------------------

def test_silu_rom_equals_golden():
    assert SILU_ROM == [int(v) for v in golden.SILU_LUT]


def test_relu2_rom_equals_golden():
    assert RELU2_ROM == [int(v) for v in golden.RELU2_LUT]


def test_gelu_and_tanh_roms_equal_golden():
    assert GELU_ROM == [int(v) for v in golden.GELU_LUT]
    assert TANH_ROM == [int(v) for v in golden.TANH_LUT]
    # the ROM word is 16 signed bits; TANH's |ROM| < 2**14 (its up operand is 1)
    assert max(map(abs, GELU_ROM)) < 2**15 and max(map(abs, TANH_ROM)) < 2**14


@pytest.mark.parametrize("L", [4, 16])
def test_rmsnorm(L):
    rng = np.random.default_rng(L)
    depth = 128
    mem = _rand_mem(rng, depth, L)
    n = 22 if L == 4 else 120              # never a multiple of L
    nw = -(-n // L)
    words = nw + 2
    program = []
    # y ~ x / sqrt(S) * 2**32 * mult / 2**shift with |x / sqrt(S)| up to ~1.7 / sqrt(n): these
    # shifts land most outputs inside int8 with some saturating
    lg_n = int(np.log2(n)) // 2
    # 3 random rows, separate out
    program.append(rmsnorm_ins(0, 3 * words, 3, int(rng.integers(0, 5000)), n, words,
                               int(rng.integers(20000, 65536)), 40 - lg_n))
    # in place with a big eps (sqrt(S) ~ 55000), mult 65535
    program.append(rmsnorm_ins(0, 0, 2, 3_000_000_000, n, words, 65535, 33))
    # corner rows: all -128 (|x * r| = 2**32 exactly), all zeros (S = 0, r = 0), one spike
    base = 6 * words
    _put(mem, base * L, [-128] * n)
    _put(mem, (base + words) * L, [0] * n)
    spike = [0] * n
    spike[n - 1] = 127
    _put(mem, (base + 2 * words) * L, spike)
    program.append(rmsnorm_ins(base, base, 3, 0, n, words, 65535, 40))     # eps 0
    _put(mem, (base + words) * L, [0] * n)
    program.append(rmsnorm_ins(base + words, 0, 1, 12345, n, words, 30000, 44))  # S = eps
    # saturation: shift 0 and a large product; mult 1 (y = x * r rounded)
    program.append(rmsnorm_ins(3 * words, 3 * words, 2, 7, n, words, 65535, 0))
    program.append(rmsnorm_ins(0, 3 * words, 1, 1, n - 3, words, 1, 29 - lg_n))
    # n = 1, x = -128, eps 0: the largest |x * r| (2**32 exactly); -65535 / 2**15 rounds to -2
    _put(mem, base * L, [-128])
    program.append(rmsnorm_ins(base, base + words, 1, 0, 1, 1, 65535, 47))
    _put(mem, base * L, [-128])
    program.append(rmsnorm_ins(base, base + words, 1, 0, 1, 1, 65535, 0))
    # n = 0: only the zero fill
    program.append(rmsnorm_ins(0, 0, 1, 5, 0, 2, 100, 40))
    cycles = check(L, depth, mem, program)
    # documented cost (VectorUnit docstring)
    assert cycles[0] == 3 * (2 * nw * L + (words - nw) + 67) + 9, cycles


@pytest.mark.parametrize("L", [4, 16])
def test_silumul(L):
    rng = np.random.default_rng(100 + L)
    depth = 128
    mem = _rand_mem(rng, depth, L)
    n = 22 if L == 4 else 120              # never a multiple of L
    nw = -(-n // L)
    words = nw + 1
    gate, up, out = 0, 3 * words, 6 * words
    program = [
        # |LUT * u| < 2**18: these shifts keep most outputs inside int8
        silumul_ins(gate, up, out, 3, n, words, int(rng.integers(16384, 65536)), 26),
        silumul_ins(gate, up, up, 2, n, words, 40000, 27),       # out == up
        silumul_ins(gate, up, gate, 3, n, words, 255, 18),       # out == gate
        silumul_ins(up, out, out, 1, n, words, 65535, 0),        # saturation, shift 0
        silumul_ins(out, gate, up, 2, n - 1, words, 3, 11),
    ]
    # extremes: gate -128 / 127 (ROM ends), up -128 / 127
    _put(mem, (out + words) * L, ([-128, 127] * n)[:n])
    _put(mem, (gate + 2 * words) * L, ([127, -128, -128, 127] * n)[:n])
    program.append(silumul_ins(out + words, gate + 2 * words, out, 1, n, words, 65535, 20))
    cycles = check(L, depth, mem, program)
    assert cycles[0] == 3 * (nw * (L + 1) + (words - nw) + 2) + 9, cycles


@pytest.mark.parametrize("L", [4, 16])
def test_silumul_relu2(L):
    """SILUMUL with flag RELU2 (golden.llm.relu2_mul), mixed with plain SILUMUL."""
    rng = np.random.default_rng(150 + L)
    depth = 128
    mem = _rand_mem(rng, depth, L)
    n = 22 if L == 4 else 120
    words = -(-n // L) + 1
    gate, up, out = 0, 3 * words, 6 * words
    # ROM[127] * 127 * 65535 ~ 2**37: extremes of the ROM and of up, saturating both ways
    _put(mem, (gate + 2 * words) * L, ([127, -128, 1, 0, 127, 126] * n)[:n])
    _put(mem, (up + 2 * words) * L, ([-128, 127, 127, -128] * n)[:n])
    program = [
        silumul_ins(gate, up, out, 3, n, words, int(rng.integers(1, 65536)), 30, relu2=True),
        silumul_ins(gate, up, out, 3, n, words, 65535, 0, relu2=True),       # saturation
        silumul_ins(gate, up, gate, 2, n - 1, words, 300, 20, relu2=True),   # out == gate
        silumul_ins(up, gate, up, 2, n, words, 40000, 27),                   # SILU again
        silumul_ins(gate + 2 * words, up + 2 * words, out, 1, n, words, 65535, 37, relu2=True),
    ]
    cycles = check(L, depth, mem, program)
    nw = -(-n // L)
    assert cycles[0] == 3 * (nw * (L + 1) + (words - nw) + 2) + 9, cycles


@pytest.mark.parametrize("L", [4, 16])
def test_silumul_gelu_tanh(L):
    """SILUMUL with flag GELU (golden.llm.gate_mul "gelu_tanh") and flag TANH (golden.llm.tanh_cap:
    unary, b not read, no gate word latched), mixed with plain SILUMUL and RELU2."""
    rng = np.random.default_rng(170 + L)
    depth = 128
    mem = _rand_mem(rng, depth, L)
    n = 22 if L == 4 else 120
    nw = -(-n // L)
    words = nw + 1
    gate, up, out = 0, 3 * words, 6 * words
    # the ROMs' ends and up's extremes, saturating both ways
    _put(mem, (gate + 2 * words) * L, ([127, -128, 1, 0, -1, 126] * n)[:n])
    _put(mem, (up + 2 * words) * L, ([-128, 127, 127, -128] * n)[:n])
    Fg, Ft = FLAG_GELU, FLAG_TANH
    program = [
        silumul_ins(gate, up, out, 3, n, words, int(rng.integers(16384, 65536)), 26, flags=Fg),
        # TANH_ROM * 127 >> 14: the cap's range; b is anything (not read)
        silumul_ins(gate, 0xFFFF, out, 3, n, words, 127, 14, flags=Ft),
        silumul_ins(up, gate, up, 2, n, words, 40000, 27),                   # SILU again
        silumul_ins(gate, 0, gate, 2, n - 1, words, 150, 14, flags=Ft),      # out == a
        silumul_ins(gate, up, out, 2, n, words, 300, 20, relu2=True),        # RELU2 again
        silumul_ins(gate + 2 * words, up + 2 * words, out, 1, n, words, 65535, 37, flags=Fg),
        silumul_ins(gate + 2 * words, up, out, 1, n, words, 65535, 20, flags=Ft),  # saturation
        silumul_ins(gate + 2 * words, up, out, 1, n, words, 3, 0, flags=Ft),       # shift 0
        # two table flags: undefined in the ISA, the unit's priority TANH > GELU > RELU2
        silumul_ins(gate, up, out, 1, n, words, 9000, 20, relu2=True, flags=Fg),
        silumul_ins(gate, up, out, 1, n, words, 127, 14, flags=Fg | Ft),
    ]
    cycles = check(L, depth, mem, program)
    assert cycles[0] == 3 * (nw * (L + 1) + (words - nw) + 2) + 9, cycles
    assert cycles[1] == 3 * (nw * L + (words - nw) + 2) + 9, cycles


def _absquant_cycles(rows, n, words, L, gamma):
    nw = -(-n // L)
    return rows * (2 * nw * (L + int(gamma)) + (words - nw) + 42) + 9


@pytest.mark.parametrize("L", [4, 16])
def test_absquant(L):
    """ABSQUANT vs golden.ternary.absmax_quant: random rows with and without gamma (negative
    entries included), in place, m = 0 rows, the largest m (-128 * -128 = 16384), n not a
    multiple of L, n = 0, m written as u16 at byte 2b of the words from m_addr."""
    rng = np.random.default_rng(400 + L)
    depth = 128
    mem = _rand_mem(rng, depth, L)
    n = 22 if L == 4 else 120              # never a multiple of L
    nw = -(-n // L)
    words = nw + 1
    x, out, g, ma = 0, 4 * words, 8 * words, 9 * words
    # row 2 of x: small values (m small, R large); row 3: all zero (m = 0)
    _put(mem, (x + 2 * words) * L, rng.integers(-3, 4, size=n))
    _put(mem, (x + 3 * words) * L, [0] * n)
    gvec = rng.integers(-128, 128, size=n)
    gvec[:4] = [-128, 0, 127, -1]
    _put(mem, g * L, gvec)
    program = [
        absquant_ins(x, out, g, 4, ma, n, words),                   # no gamma, m = 0 row
        absquant_ins(x, out, g, 4, ma + 2, n, words, gamma=True),   # gamma, m at word ma + 2
        absquant_ins(x, x, g, 3, ma, n - 5, words, gamma=True),     # in place
        absquant_ins(out, out, g, 2, ma, n, words),                 # in place, no gamma
        absquant_ins(x, out, g, 1, ma, 0, words),                   # n = 0: m = 0, zero fill
    ]
    # the largest m: x = -128 and gamma = -128 in one element (16384 = 2**14); -128 with
    # gamma 127 elsewhere (-16256), and 1 * gamma (tiny values round to 0 or +-1)
    big = x + 2 * words
    row = rng.integers(-128, 128, size=n)
    row[[0, 1, 2]] = [-128, -128, 1]
    _put(mem, big * L, row)
    program.append(absquant_ins(big, out, g, 1, ma, n, words, gamma=True))
    # m = 0 with gamma (gamma 0 everywhere x is nonzero): a zero row out
    _put(mem, (g + 1) * L, [0] * n)
    program.append(absquant_ins(x, out, g + 1, 2, ma + 1, n, words, gamma=True))
    cycles = check(L, depth, mem, program)
    assert cycles[0] == _absquant_cycles(4, n, words, L, False), cycles
    assert cycles[1] == _absquant_cycles(4, n, words, L, True), cycles


def test_absquant_largest_m_and_m_zero():
    """Direct checks of the two ends of m: 16384 (-128 * -128, the largest) and 0 (R = 0)."""
    L, depth = 8, 16
    mem = np.zeros(depth * L, dtype=np.int8)
    _put(mem, 0, [-128, 5, -7, 100, 0, 0, 0, 0, 1])   # row 0 (words 0-1); row 1 is zero
    _put(mem, 8 * L, [-128] + [3] * 8)                 # gamma
    mem[4 * L:8 * L] = 99                              # out rows: overwritten
    images, _ = run(L, depth, mem, [absquant_ins(0, 4, 8, 2, 10, 9, 2, gamma=True)])
    img = images[0]
    assert list(img[10 * L:10 * L + 4].view("<u2")) == [16384, 0]
    xq, m = ternary.absmax_quant(mem[:9][None], mem[8 * L:8 * L + 9][None])
    assert m[0] == 16384 and xq[0][0] == 127
    np.testing.assert_array_equal(img[4 * L:4 * L + 9], xq[0])
    np.testing.assert_array_equal(img[4 * L + 9:8 * L], 0)     # padding and the m = 0 row


@pytest.mark.parametrize("L", [4, 16])
def test_rope(L):
    rng = np.random.default_rng(200 + L)
    depth = 128 if L == 16 else 256
    mem = _rand_mem(rng, depth, L)
    hd, heads, stride = 20, 3, 32
    words = heads * stride // L
    cs_words = -(-2 * hd // L) + 1          # a stride larger than the 2*hd bytes
    rows = 3 if L == 16 else 2
    cs = rows * words
    half = hd // 2
    for r in range(rows):
        t = rng.integers(-16384, 16385, size=hd)     # cos[0:half], sin[half:hd]
        # with x1 = x2 = -128: y2 = (2**22 + 2**13) >> 14 = 256 -> 127, y2 = -256 -> -128,
        # then the int16 extremes (beyond Q1.14's one)
        t[[0, half]] = [-16384, -16384]
        t[[1, half + 1]] = [16384, 16384]
        t[[2, half + 2]] = [32767, -32768]
        t[[3, half + 3]] = [-32768, 32767]
        _put_table(mem, (cs + r * cs_words) * L, t)
    _put(mem, 0, [-128] * hd)
    program = [rope_ins(0, cs, cs_words, rows, heads, hd, stride, words)]
    # heads packed at unaligned byte offsets (head_stride = hd), rows 1 apart from a word 3
    program.append(rope_ins(3, cs, cs_words, 2, 4, 8, 8, words))
    program.append(rope_ins(1, cs, cs_words, 1, 1, 2, 0, words))          # hd = 2: one pair
    program.append(rope_ins(0, cs, cs_words, 1, 2, hd, 21, words))   # odd byte offsets
    program.append(rope_ins(0, cs, cs_words, 0, heads, hd, stride, words))  # rows 0: no-op
    cycles = check(L, depth, mem, program)
    assert cycles[0] == 4 * rows * heads * hd // 2 + 13, cycles


@pytest.mark.parametrize("L", [2, 8])
def test_all_ops_other_widths(L):
    """The narrowest word and one more width: one instruction of each op, in place."""
    rng = np.random.default_rng(300 + L)
    n = 37                                  # odd: never a multiple of L
    words = -(-n // L) + 1
    hd, heads = 6, 5                        # heads at odd byte offsets, pairs straddle words
    cs = 8 * words
    cs_words = -(-2 * hd // L)
    depth = cs + cs_words
    mem = _rand_mem(rng, depth, L)
    _put_table(mem, cs * L, rng.integers(-16384, 16385, size=cs_words * L // 2))
    program = [
        rmsnorm_ins(0, 0, 2, 99, n, words, 50000, 36),
        silumul_ins(2 * words, 4 * words, 4 * words, 2, n, words, 30000, 26),
        rope_ins(6 * words, cs, cs_words, 1, heads, hd, 7, words),
        silumul_ins(0, 2 * words, 0, 2, n, words, 700, 20, relu2=True),
        absquant_ins(2 * words, 2 * words, 0, 2, 4 * words, n, words, gamma=True),
        absquant_ins(0, 4 * words, 0, 1, 7 * words, n - 1, words),
    ]
    check(L, depth, mem, program)


# ---- V lanes (AccelConfig.vec_lanes) ---------------------------------------------------------

#: (L, V): two lanes and a whole word of lanes, at two word widths
WIDE = [(4, 2), (4, 4), (16, 2), (16, 16)]


def _rope_head_steps(L, V, hd, offset):
    """The docstring's ROPE steps of one head at byte ``offset``: greedy, up to min(V, L/2)
    pairs, none of the four groups (x1, x2, int16 cos, int16 sin) crossing a word."""
    half, vr = hd // 2, min(V, L // 2)
    k = steps = 0
    while k < half:
        a = offset + k
        k += min(vr, half - k, L - a % L, L - (a + half) % L, (L - 2 * k % L) // 2,
                 (L - (hd + 2 * k) % L) // 2)
        steps += 1
    return steps


def documented_cycles(ins: Instr, L: int, V: int) -> int:
    """The VectorUnit docstring's cycles of ``ins`` (n > 0 and rows > 0) at V lanes."""
    op, flags, rows = ins.op, ins.flags, ins.rows
    G = L // V
    if op == Opcode.ROPE:
        heads, hd, stride, a = ins.heads, ins.hd, ins.head_stride, ins.a
        steps = sum(_rope_head_steps(L, V, hd, (a * L + h * stride) % L) for h in range(heads))
        return 4 * rows * steps + 13
    n, words = ins.n, ins.words
    nw = -(-n // L)
    if op == Opcode.RMSNORM:
        row = 2 * nw * G + nw * int(bool(flags & FLAG_GAMMA)) + (words - nw) + 67
    elif op == Opcode.SILUMUL:
        row = nw * (G + int(not flags & FLAG_TANH)) + (words - nw) + 2
    else:
        row = 2 * nw * (G + int(bool(flags & FLAG_GAMMA))) + (words - nw) + 42
    return rows * row + 9


def check_wide(L, V, depth, mem, program) -> list[int]:
    """Bit-exact against golden, and every live instruction (rows, n > 0) takes the documented
    cycles, which the cycle model's built-in terms reproduce (less the instruction issue)."""
    from hwflow.mapping import cycles as model

    got = check(L, depth, mem, program, V)
    cfg = _cfg(L, V)
    for k, (i, c) in enumerate(zip(program, got, strict=True)):
        if i.rows == 0 or (i.op != Opcode.ROPE and i.n == 0):
            continue
        assert c == documented_cycles(i, L, V), (k, c, documented_cycles(i, L, V))
        assert model.instr_cycles(i, cfg, fit=False) == model.ISSUE + c, k
    return got


@pytest.mark.parametrize("L,V", WIDE)
def test_rmsnorm_lanes(L, V):
    rng = np.random.default_rng(500 + 10 * L + V)
    depth = 80
    mem = _rand_mem(rng, depth, L)
    n = 21 if L == 4 else 93                # odd: a multiple of neither L nor V
    nw = -(-n // L)
    words = nw + 2                          # two zero-fill words per row
    lg_n = int(np.log2(n)) // 2
    base = 6 * words
    _put(mem, base * L, [-128] * n)         # |x * r| = 2**32
    _put(mem, (base + words) * L, [0] * n)  # S = eps = 0: r = 0
    program = [
        rmsnorm_ins(0, 3 * words, 3, int(rng.integers(0, 5000)), n, words,
                    int(rng.integers(20000, 65536)), 40 - lg_n),
        rmsnorm_ins(0, 0, 2, 3_000_000_000, n, words, 65535, 33),        # in place, big eps
        rmsnorm_ins(base, base, 2, 0, n, words, 65535, 40),
        rmsnorm_ins(3 * words, 3 * words, 2, 7, n, words, 65535, 0),     # saturation
        rmsnorm_ins(0, 3 * words, 1, 1, n - V - 1, words, 1, 29 - lg_n),
        rmsnorm_ins(base, base + words, 1, 0, 1, 1, 65535, 47),          # n = 1
        rmsnorm_ins(0, 0, 1, 5, 0, 2, 100, 40),                          # n = 0: zero fill
    ]
    # flag GAMMA (Qwen3's per-head norms): int8 codes per element, one vector for every row,
    # the extremes included; |x * g * r| up to 2**39 (x = g = -128 at r = 2**32 / 128)
    g = 9 * words
    gvec = rng.integers(-128, 128, size=n)
    gvec[:4] = [-128, 0, 127, -1]
    _put(mem, g * L, gvec)
    program += [
        rmsnorm_ins(0, 3 * words, 3, int(rng.integers(0, 5000)), n, words,
                    int(rng.integers(20000, 65536)), 47 - lg_n, g=g),
        rmsnorm_ins(base, base + 2 * words, 1, 0, n, words, 65535, 47, g=g),  # -128 * -128
        rmsnorm_ins(3 * words, 3 * words, 2, 7, n - V - 1, words, 65535, 20, g=g),  # in place
    ]
    cycles = check_wide(L, V, depth, mem, program)
    assert cycles[0] == 3 * (2 * nw * (L // V) + (words - nw) + 67) + 9
    assert cycles[7] == 3 * (2 * nw * (L // V) + nw + (words - nw) + 67) + 9


@pytest.mark.parametrize("L,V", WIDE)
def test_silumul_lanes(L, V):
    """SILUMUL with and without RELU2 (GELU, TANH), in place on either input, the ROM's ends."""
    rng = np.random.default_rng(600 + 10 * L + V)
    depth = 64
    mem = _rand_mem(rng, depth, L)
    n = 21 if L == 4 else 93
    nw = -(-n // L)
    words = nw + 1
    gate, up, out = 0, 3 * words, 6 * words
    _put(mem, (gate + 2 * words) * L, ([127, -128, 1, 0, 127, 126] * n)[:n])
    _put(mem, (up + 2 * words) * L, ([-128, 127, 127, -128] * n)[:n])
    program = [
        silumul_ins(gate, up, out, 3, n, words, int(rng.integers(16384, 65536)), 26),
        silumul_ins(gate, up, out, 3, n, words, int(rng.integers(1, 65536)), 30, relu2=True),
        silumul_ins(gate, up, up, 2, n, words, 40000, 27),                   # out == up
        silumul_ins(gate, up, gate, 2, n - V - 1, words, 300, 20, relu2=True),  # out == gate
        silumul_ins(up, out, out, 1, n, words, 65535, 0),                    # saturation
        silumul_ins(gate + 2 * words, up + 2 * words, out, 1, n, words, 65535, 37, relu2=True),
        silumul_ins(gate, up, out, 1, 0, words, 5, 3),                       # n = 0
        silumul_ins(gate + 2 * words, up + 2 * words, out, 2, n, words, 65535, 36,
                    flags=FLAG_GELU),
        silumul_ins(gate, 0, gate, 3, n, words, 127, 14, flags=FLAG_TANH),   # out == a
    ]
    cycles = check_wide(L, V, depth, mem, program)
    assert cycles[0] == 3 * (nw * (L // V + 1) + (words - nw) + 2) + 9
    assert cycles[8] == 3 * (nw * (L // V) + (words - nw) + 2) + 9                 # TANH


@pytest.mark.parametrize("L,V", WIDE)
def test_absquant_lanes(L, V):
    """ABSQUANT with and without GAMMA: m = 0 rows, the largest m, in place, n = 0."""
    rng = np.random.default_rng(700 + 10 * L + V)
    depth = 72
    mem = _rand_mem(rng, depth, L)
    n = 21 if L == 4 else 93
    nw = -(-n // L)
    words = nw + 1
    x, out, g, ma = 0, 4 * words, 8 * words, 9 * words
    _put(mem, (x + 2 * words) * L, rng.integers(-3, 4, size=n))
    _put(mem, (x + 3 * words) * L, [0] * n)
    gvec = rng.integers(-128, 128, size=n)
    gvec[:4] = [-128, 0, 127, -1]
    _put(mem, g * L, gvec)
    _put(mem, (g + 1) * L, [0] * n)          # gamma 0: m = 0 with GAMMA
    program = [
        absquant_ins(x, out, g, 4, ma, n, words),
        absquant_ins(x, out, g, 4, ma + 2, n, words, gamma=True),
        absquant_ins(x, x, g, 3, ma, n - V - 1, words, gamma=True),     # in place
        absquant_ins(x, out, g + 1, 2, ma + 1, n, words, gamma=True),   # m = 0
        absquant_ins(x, out, g, 1, ma, 0, words),                       # n = 0
    ]
    big = x + 2 * words
    row = rng.integers(-128, 128, size=n)
    row[[0, 1, 2]] = [-128, -128, 1]
    _put(mem, big * L, row)
    program.append(absquant_ins(big, out, g, 1, ma, n, words, gamma=True))  # m = 16384
    cycles = check_wide(L, V, depth, mem, program)
    G = L // V
    assert cycles[0] == 4 * (2 * nw * G + (words - nw) + 42) + 9
    assert cycles[1] == 4 * (2 * nw * (G + 1) + (words - nw) + 42) + 9


@pytest.mark.parametrize("L,V", WIDE + [(16, 4)])
def test_rope_lanes(L, V):
    """ROPE on V lanes: hd = 20 (half 10, a multiple of neither V nor L) at aligned and odd
    head offsets, packed heads, one pair, and hd = 128 heads (the LLaMA shape, half / Vr
    steps of Vr = min(V, L/2) pairs)."""
    rng = np.random.default_rng(800 + 10 * L + V)
    depth = 160 if L == 16 else 640
    mem = _rand_mem(rng, depth, L)
    hd, heads, stride = 20, 3, 32
    words = 256 // L                        # two heads of 128 fit a row
    cs_words = 2 * 128 // L + 1
    rows = 2
    cs = rows * words
    for r in range(rows):
        t = rng.integers(-16384, 16385, size=128)
        t[[0, 10, 64]] = -16384
        t[[1, 11, 65]] = [32767, -32768, 32767]
        _put_table(mem, (cs + r * cs_words) * L, t)
    _put(mem, 0, [-128] * hd)
    program = [
        rope_ins(0, cs, cs_words, rows, heads, hd, stride, words),
        rope_ins(1, cs, cs_words, rows, 4, hd, hd, words),         # packed: offsets 0, 20, 40
        rope_ins(0, cs, cs_words, 1, 3, hd, 21, words),            # odd byte offsets
        rope_ins(1, cs, cs_words, 1, 1, 2, 0, words),              # hd = 2: one pair
        rope_ins(0, cs, cs_words, rows, 2, 128, 128, words),       # LLaMA heads
        rope_ins(0, cs, cs_words, 0, heads, hd, stride, words),    # rows 0: no-op
    ]
    cycles = check_wide(L, V, depth, mem, program)
    vr = min(V, L // 2)
    assert cycles[4] == 4 * rows * 2 * (64 // vr) + 13
    # never slower than one pair per step (V = 1)
    assert cycles[0] <= 4 * rows * heads * hd // 2 + 13


@pytest.mark.parametrize("L,V", [(2, 2), (8, 4)])
def test_all_ops_lanes_other_widths(L, V):
    """The narrowest word (V = L = 2: ROPE one pair per step) and L = 8 on 4 lanes."""
    rng = np.random.default_rng(900 + L)
    n = 37
    words = -(-n // L) + 1
    hd, heads = 6, 5
    cs = 8 * words
    cs_words = -(-2 * hd // L)
    depth = cs + cs_words
    mem = _rand_mem(rng, depth, L)
    _put_table(mem, cs * L, rng.integers(-16384, 16385, size=cs_words * L // 2))
    program = [
        rmsnorm_ins(0, 0, 2, 99, n, words, 50000, 36),
        silumul_ins(2 * words, 4 * words, 4 * words, 2, n, words, 30000, 26),
        rope_ins(6 * words, cs, cs_words, 1, heads, hd, 7, words),
        rope_ins(6 * words, cs, cs_words, 1, 2, hd, 8, words),
        silumul_ins(0, 2 * words, 0, 2, n, words, 700, 20, relu2=True),
        absquant_ins(2 * words, 2 * words, 0, 2, 4 * words, n, words, gamma=True),
        absquant_ins(0, 4 * words, 0, 1, 7 * words, n - 1, words),
    ]
    check_wide(L, V, depth, mem, program)


def test_vec_lanes_must_divide_the_word():
    with pytest.raises(ValueError, match="vec_lanes .3. must divide chain_len .16."):
        AccelConfig(vec_lanes=3)
    with pytest.raises(ValueError, match="vec_lanes must be >= 1"):
        AccelConfig(vec_lanes=0)


def test_lints_clean(tmp_path):
    v = verilog.convert(VectorUnit(_cfg(8)), name="sfu")
    assert_lints_clean(tmp_path, v, "sfu")


def test_lints_clean_lanes(tmp_path):
    v = verilog.convert(VectorUnit(_cfg(8, 4)), name="sfu")
    assert_lints_clean(tmp_path, v, "sfu")
