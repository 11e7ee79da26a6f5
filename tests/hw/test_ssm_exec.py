"""The state-space executors through the whole accelerator in the Amaranth simulator
(``hw/ssm_exec.py``), each equal to the ISA model: HADAMARD (rows transformed, requantized to
8 or 4 bits, in place and to another area, n = 0 all padding), CONV and SCAN (POS 0 and POS >
0, the state carried from one instruction to the next, records spanning and sharing
super-beats), with memory stalls; on an engine without the units each is an illegal opcode."""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest

from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import ERROR_ILLEGAL_OPCODE, Instr, Opcode
from hwflow.mapping.ssm_format import pack_conv, pack_scan
from hwflow.sim.isa_model import IsaError, IsaModel

from .test_controller_llm import _image, run

# L = 8, SB = 16 B; blocks up to 32 channels (four beats)
CFG = AccelConfig(chains=2, chain_len=8, mem_ports=2, port_bytes=8, act_depth=128,
                  weight_depth=32, transformer=True, attn_heads=2, ssm_states=4, ssm_channels=64,
                  conv_taps=4, conv_words=16, hadamard_block=32)
SB, L = CFG.beat_bytes, CFG.chain_len


@pytest.mark.parametrize("n,lgb,obits,out", [(40, 3, 8, 0), (64, 5, 4, 0), (48, 4, 8, 60),
                                             (96, 5, 4, 60), (0, 3, 8, 60)])
def test_hadamard_matches_the_isa_model(n, lgb, obits, out):
    rows, words = 4, -(-n // L) + 1          # a padding word after each row
    prog = [Instr(Opcode.LOAD, ext=100, a=0, b=rows * words),
            Instr(Opcode.HADAMARD, shift=9, a=0, out=out, n=n, rows=rows, words=words,
                  mult_b=181 + n, lgb=lgb, obits=obits),
            Instr(Opcode.STORE, ext=200, a=out, b=rows * words),
            Instr(Opcode.END)]
    img = _image(prog, nbeats=300, seed=n + lgb)
    want = IsaModel(CFG, bytes(img))
    want.run(0)
    regs = run(CFG, img)
    assert regs["ERROR"] == 0 and regs["RETIRED"] == 4
    got = np.frombuffer(bytes(img[200 * SB:200 * SB + rows * words * L]), np.int8)
    ref = np.frombuffer(want.read(200 * SB, rows * words * L), np.int8)
    np.testing.assert_array_equal(got, ref)
    if n == 0:          # no channel: every word of the rows is padding
        assert not got.any()
    if obits == 4:
        assert got.min() >= -8 and got.max() <= 7 and len(set(got.tolist())) > 8


@pytest.mark.parametrize("n,rows,pos,out", [(24, 1, 0, 0), (24, 3, 0, 0), (20, 2, 5, 60),
                                            (40, 4, 2, 0)])
def test_conv_matches_the_isa_model(n, rows, pos, out):
    """Two CONVs of the same layer (at POS > 0 the second carries on from the first's history;
    at POS 0 each starts from zeros) and one of another layer; records of 80 B, five
    super-beats each, streamed with memory stalls (two records a super-beat:
    :func:`test_conv_records_share_super_beats`)."""
    beats = -(-n // L)
    words = beats + 1
    rng = np.random.default_rng(n + rows)
    par = pack_conv(rng.integers(-128, 128, (n, 4)), rng.integers(-3000, 3000, n),
                    rng.integers(1, 2**16, n), L, SB)
    conv = dict(n=n, rows=rows, words=words, shift=14, mult_b=300, silu_shift=8)
    prog = [Instr(Opcode.LOAD, ext=100, a=0, b=2 * rows * words),
            Instr(Opcode.CONV, ext=300, a=0, out=out, state=2, **conv),
            Instr(Opcode.CONV, ext=300, a=rows * words, out=out + rows * words, state=2, **conv),
            Instr(Opcode.CONV, ext=300, a=0, out=0, state=2 + beats, **conv),
            Instr(Opcode.STORE, ext=200, a=0, b=2 * rows * words),
            Instr(Opcode.STORE, ext=240, a=out, b=2 * rows * words),
            Instr(Opcode.END)]
    img = _image(prog, nbeats=400, seed=n)
    img[300 * SB:300 * SB + len(par)] = par
    want = IsaModel(CFG, bytes(img), pos=pos)
    want.run(0)
    regs = run(CFG, img, pos=pos)
    assert regs["ERROR"] == 0 and regs["RETIRED"] == 7
    for at in (200, 240):
        nbytes = 2 * rows * words * L
        np.testing.assert_array_equal(np.frombuffer(bytes(img[at * SB:at * SB + nbytes]), np.int8),
                                      np.frombuffer(want.read(at * SB, nbytes), np.int8))


#: L = 4, SB = 64 B: records of 32 B (conv, two taps; scan, two states), two to a super-beat
CFG_WIDE = AccelConfig(chains=16, chain_len=4, mem_ports=2, port_bytes=32, act_depth=256,
                       weight_depth=8, sparse=False, transformer=True, attn_heads=1,
                       ssm_states=2, ssm_channels=64, conv_taps=2, conv_words=16,
                       hadamard_block=4)


def _run_wide(img, **kw) -> dict:
    # CFG_WIDE's 16-chain engine is one Python expression too deep for the simulator's
    # compiler at the default limit (so is a bare LOAD on it: not these units')
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)
    try:
        return run(CFG_WIDE, img, **kw)
    finally:
        sys.setrecursionlimit(limit)


def test_conv_records_share_super_beats():
    """7 beats (an odd count) of records two to a super-beat."""
    cfg = CFG_WIDE
    sb, n, words = cfg.beat_bytes, 26, 8
    rng = np.random.default_rng(7)
    par = pack_conv(rng.integers(-128, 128, (n, 2)), rng.integers(-3000, 3000, n),
                    rng.integers(1, 2**16, n), 4, sb)
    assert len(par) == 4 * sb
    prog = [Instr(Opcode.LOAD, ext=20, a=0, b=2 * words),
            Instr(Opcode.CONV, ext=30, a=0, out=0, n=n, rows=2, words=words, state=1, shift=12,
                  mult_b=500, silu_shift=9),
            Instr(Opcode.STORE, ext=40, a=0, b=2 * words), Instr(Opcode.END)]
    img = _image(prog, nbeats=60, seed=3, sb=sb)
    img[30 * sb:30 * sb + len(par)] = par
    want = IsaModel(cfg, bytes(img))
    want.run(0)
    regs = _run_wide(img)
    assert regs["ERROR"] == 0 and regs["RETIRED"] == 4
    assert bytes(img[40 * sb:42 * sb]) == want.read(40 * sb, 2 * sb)


def _scan_case(cfg, n, rows, pos, seed, state=3):
    """LOAD u, dt and B/C rows; two SCANs of one layer (state channels from ``state``; at POS >
    0 the second carries on from the first's state; at POS 0 each starts from zeros) and one of
    another, in place; STORE it all; the ISA model's result."""
    L_, S, sb = cfg.chain_len, cfg.ssm_states, cfg.beat_bytes
    beats, sw = -(-n // L_), -(-S // L_)
    words, bcw = beats + 1, 2 * sw + 1
    rng = np.random.default_rng(seed)
    par = pack_scan(rng.integers(0, 40, (n, S)), rng.integers(-2000, 2000, n), L_, sb)
    area = rows * words
    u, dt, bc, y = 0, area, 2 * area, 2 * area + rows * bcw
    # h' about 2**16 codes, y within int8 mostly (dt up to 16, |u|, |B|, |C| up to 128)
    scan = dict(ext=300, dt=dt, n=n, rows=rows, words=words, bc_words=bcw, bu_mult=1000,
                bu_shift=24, y_mult=40000, shift=28, d_shift=16)
    total = y + 2 * area
    total += -total % (sb // L_)
    prog = [Instr(Opcode.LOAD, ext=100, a=0, b=total),
            Instr(Opcode.SCAN, a=u, out=y, b=bc, c=bc + sw, state=state, **scan),
            Instr(Opcode.SCAN, a=u, out=y + area, b=bc, c=bc + sw, state=state, **scan),
            Instr(Opcode.SCAN, a=u, out=u, b=bc, c=bc + sw, state=state + n, **scan),
            Instr(Opcode.STORE, ext=200, a=0, b=total), Instr(Opcode.END)]
    img = _image(prog, nbeats=420, seed=seed, sb=sb)
    img[300 * sb:300 * sb + len(par)] = par
    want = IsaModel(cfg, bytes(img), pos=pos)
    want.run(0)
    ys = np.frombuffer(want.read(200 * sb + y * L_, 2 * area * L_), np.int8)
    assert len(set(ys.tolist())) > 10 and (np.abs(ys) == 128).mean() < 0.2   # not saturated
    return img, want, total * L_


@pytest.mark.parametrize("n,rows,pos", [(12, 1, 0), (21, 2, 0), (16, 3, 4)])
def test_scan_matches_the_isa_model(n, rows, pos):
    """Records of 96 B (six super-beats), 4 states in one word of B (of C)."""
    img, want, nbytes = _scan_case(CFG, n, rows, pos, n + rows)
    regs = run(CFG, img, pos=pos, max_cycles=80000)
    assert regs["ERROR"] == 0 and regs["RETIRED"] == 6
    got = np.frombuffer(bytes(img[200 * SB:200 * SB + nbytes]), np.int8)
    np.testing.assert_array_equal(got, np.frombuffer(want.read(200 * SB, nbytes), np.int8))


@pytest.mark.parametrize("lanes,n,rows,pos", [(2, 22, 2, 0), (4, 20, 3, 2)])
def test_scan_on_several_units_matches_the_isa_model(lanes, n, rows, pos):
    """``ssm_lanes`` W = 2 and 4 scan units side by side (W channels a cycle, channel ``c`` in
    unit ``c mod W``): a partial last beat, state carried across instructions; and an
    instruction whose n is not a multiple of W is refused by the ISA model."""
    cfg = replace(CFG, ssm_lanes=lanes)
    img, want, nbytes = _scan_case(cfg, n, rows, pos, n + lanes, state=lanes * 2)
    regs = run(cfg, img, pos=pos, max_cycles=80000)
    assert regs["ERROR"] == 0 and regs["RETIRED"] == 6
    got = np.frombuffer(bytes(img[200 * SB:200 * SB + nbytes]), np.int8)
    np.testing.assert_array_equal(got, np.frombuffer(want.read(200 * SB, nbytes), np.int8))
    with pytest.raises(IsaError, match="multiples of ssm_lanes"):
        _scan_case(cfg, n + 1, rows, pos, 1, state=0)


def test_scan_records_share_super_beats():
    """7 beats of records two to a super-beat, the block streamed once per row."""
    img, want, nbytes = _scan_case(CFG_WIDE, 26, 2, 3, 5)
    regs = _run_wide(img, pos=3, max_cycles=80000)
    assert regs["ERROR"] == 0 and regs["RETIRED"] == 6
    sb = CFG_WIDE.beat_bytes
    assert bytes(img[200 * sb:200 * sb + nbytes]) == want.read(200 * sb, nbytes)


@pytest.mark.parametrize("op", [Opcode.HADAMARD, Opcode.CONV, Opcode.SCAN])
def test_illegal_without_the_units(op):
    cfg = replace(CFG, ssm_states=0)
    img = _image([Instr(Opcode.LOAD, ext=40, a=0, b=2), Instr(op), Instr(Opcode.END)])
    regs = run(cfg, img)
    assert regs["ERROR"] == ERROR_ILLEGAL_OPCODE and regs["RETIRED"] == 1
