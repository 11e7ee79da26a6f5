"""HADAMARD through the whole accelerator in the Amaranth simulator (``hw/ssm_exec.py``): rows
of the activation buffer transformed, requantized to 8 or 4 bits and written back (in place,
and to another area), equal to the ISA model's result, with memory stalls; CONV and SCAN, whose
executors are not built yet, stop the run with ERROR 1."""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest

from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import ERROR_ILLEGAL_OPCODE, Instr, Opcode
from hwflow.hw.ssm_exec import record_slots
from hwflow.mapping.ssm_format import pack_conv
from hwflow.mapping.ssm_format import record_slots as format_slots
from hwflow.sim.isa_model import IsaModel

from .test_controller_llm import _image, run

# L = 8, SB = 16 B; blocks up to 32 channels (four beats)
CFG = AccelConfig(chains=2, chain_len=8, mem_ports=2, port_bytes=8, act_depth=128,
                  weight_depth=32, transformer=True, attn_heads=2, ssm_states=4, ssm_channels=64,
                  conv_taps=4, conv_words=16, hadamard_block=32)
SB, L = CFG.beat_bytes, CFG.chain_len


@pytest.mark.parametrize("n,lgb,obits,out", [(40, 3, 8, 0), (64, 5, 4, 0), (48, 4, 8, 60),
                                             (96, 5, 4, 60)])
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
    if obits == 4:
        assert got.min() >= -8 and got.max() <= 7 and len(set(got.tolist())) > 8


@pytest.mark.parametrize("n,rows,pos,out", [(24, 1, 0, 0), (24, 3, 0, 0), (20, 2, 5, 60),
                                            (40, 4, 2, 0)])
def test_conv_matches_the_isa_model(n, rows, pos, out):
    """Two CONVs of the same layer (the history carried from the first's rows to the second's,
    zeros on the first row at POS 0) and one of another layer; records of 80 B, five
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


def test_conv_records_share_super_beats():
    """L = 4, two taps: records of 32 B, two to a 64-byte super-beat; 7 beats (an odd count)."""
    cfg = AccelConfig(chains=16, chain_len=4, mem_ports=2, port_bytes=32, act_depth=128,
                      weight_depth=8, sparse=False, transformer=True, attn_heads=1,
                      ssm_states=2, ssm_channels=8, conv_taps=2, conv_words=16, hadamard_block=4)
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
    # a 64-byte super-beat's 16-chain engine is one Python expression too deep for the
    # simulator's compiler at the default limit (so is a bare LOAD on it: not this unit's)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)
    try:
        regs = run(cfg, img)
    finally:
        sys.setrecursionlimit(limit)
    assert regs["ERROR"] == 0 and regs["RETIRED"] == 4
    assert bytes(img[40 * sb:42 * sb]) == want.read(40 * sb, 2 * sb)


def test_record_slots_are_the_formats():
    for rec, sb in ((80, 16), (80, 256), (160, 1024), (576, 1024), (1024, 1024)):
        assert record_slots(rec, sb) == format_slots(rec, sb)


@pytest.mark.parametrize("op,cfg", [(Opcode.SCAN, CFG),
                                    (Opcode.HADAMARD, replace(CFG, ssm_states=0)),
                                    (Opcode.CONV, replace(CFG, ssm_states=0))])
def test_illegal_without_an_executor(op, cfg):
    """SCAN (executor not built yet); HADAMARD and CONV on an engine without the units."""
    img = _image([Instr(Opcode.LOAD, ext=40, a=0, b=2), Instr(op), Instr(Opcode.END)])
    regs = run(cfg, img)
    assert regs["ERROR"] == ERROR_ILLEGAL_OPCODE and regs["RETIRED"] == 1
