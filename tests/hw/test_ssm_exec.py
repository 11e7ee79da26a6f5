"""HADAMARD through the whole accelerator in the Amaranth simulator (``hw/ssm_exec.py``): rows
of the activation buffer transformed, requantized to 8 or 4 bits and written back (in place,
and to another area), equal to the ISA model's result, with memory stalls; CONV and SCAN, whose
executors are not built yet, stop the run with ERROR 1."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import ERROR_ILLEGAL_OPCODE, Instr, Opcode
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


@pytest.mark.parametrize("op,cfg", [(Opcode.CONV, CFG), (Opcode.SCAN, CFG),
                                    (Opcode.HADAMARD, replace(CFG, ssm_states=0))])
def test_illegal_without_an_executor(op, cfg):
    """CONV and SCAN (executors not built yet), HADAMARD on an engine without the units."""
    img = _image([Instr(Opcode.LOAD, ext=40, a=0, b=2), Instr(op), Instr(Opcode.END)])
    regs = run(cfg, img)
    assert regs["ERROR"] == ERROR_ILLEGAL_OPCODE and regs["RETIRED"] == 1
