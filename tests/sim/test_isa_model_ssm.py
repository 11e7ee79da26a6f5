"""ISA model, state-space instructions (docs/architecture.md, "State-space path"): a tiny
Mamba (sizes not powers of two) lowered by the decoder's back half runs a prompt and 8 decode
steps in the ISA model, every run's logits equal to the golden run's (``compiler.ssm_quant``),
with its state in the units (no activation or state byte crosses the memory interface) and the
traffic the predictions count (``mapping.traffic``)."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.compiler.ssm_quant import QMambaState, qmamba_step, quantize_mamba
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import Instr, Opcode
from hwflow.mapping.errors import MappingError
from hwflow.mapping.llm_lower import (
    decode_memory_writes,
    lower_decoder,
    prompt_runs,
    read_logits,
)
from hwflow.mapping.traffic import program_traffic
from hwflow.sim.isa_model import IllegalInstruction, IsaError, IsaModel

from ..compiler.test_ssm_interpret import _float_mamba, _tiny_mamba

L = 8


def _cfg(s, **kw) -> AccelConfig:
    base = dict(chains=4, chain_len=L, mem_ports=2, port_bytes=16, act_depth=2048,
                weight_depth=64, transformer=True, ssm_states=s.d_state,
                ssm_channels=s.layers * s.d_inner, conv_taps=s.d_conv,
                conv_words=s.layers * -(-s.conv_dim // L), hadamard_block=16)
    return AccelConfig(**(base | kw))


@pytest.fixture(scope="module")
def fm():
    return _float_mamba(_tiny_mamba(0))     # hidden 40, d_inner 80, state 6, vocab 97


def _run(model: IsaModel, low, ids, pos: int) -> tuple:
    st = decode_memory_writes(low, ids, pos)
    for addr, data in st.writes:
        model.write(addr, data)
    model.reset_stats()
    model.run(st.prog_base, pos=pos)
    return read_logits(st, model), dict(model.stats.traffic), st


@pytest.mark.parametrize("wbits,rotate", [(8, False), (4, True)])
def test_prompt_and_decode_equal_golden(fm, wbits, rotate):
    qm = quantize_mamba(fm, rotate=rotate, wbits=wbits)
    cfg = _cfg(qm.shape)
    low = lower_decoder(qm, cfg, prompt_buckets=[4, 8])
    assert low.recurrent
    ops = {i.op for i in low.decode.program}
    assert {Opcode.CONV, Opcode.SCAN} <= ops and (Opcode.HADAMARD in ops) == rotate
    prompt = [int(t) for t in np.arange(11) * 7 % qm.shape.vocab]
    model = IsaModel(cfg, low.image, regions=low.memory_map)
    state = QMambaState.empty(qm)
    runs = prompt_runs(len(prompt), low.buckets, recurrent=True)
    assert runs == [(0, 8), (8, 1), (9, 1), (10, 1)]        # no token runs twice
    for pos, n in runs:
        got, _, _ = _run(model, low, prompt[pos:pos + n], pos)
        for t in prompt[pos:pos + n]:
            want, state = qmamba_step(qm, state, t)
        np.testing.assert_array_equal(got, want)
    tok, pos = int(np.argmax(want)), len(prompt)
    for _ in range(8):
        got, traffic, st = _run(model, low, [tok], pos)
        want, state = qmamba_step(qm, state, tok)
        np.testing.assert_array_equal(got, want)
        # activations and state stay on chip: weights, program, the id and logits move
        assert {k for k, v in traffic.items() if v} == {"weights_read", "io_read",
                                                        "io_written", "program_read"}
        predicted = program_traffic(low.decode, cfg, pos, low.memory_map)
        assert {k: v for k, v in traffic.items() if v} == {
            k: v for k, v in predicted.items() if v and k != "total"}
        tok, pos = int(np.argmax(want)), pos + 1


def test_a_new_sequence_starts_from_zero_state(fm):
    """POS = 0 reads the held conv inputs and scan state as zeros: a second sequence needs no
    reset and gives the first's logits."""
    qm = quantize_mamba(fm, rotate=False)
    cfg = _cfg(qm.shape)
    low = lower_decoder(qm, cfg, prompt_buckets=[4])
    model = IsaModel(cfg, low.image)
    first = [_run(model, low, [t], p)[0] for p, t in enumerate([3, 5, 7])]
    again = [_run(model, low, [t], p)[0] for p, t in enumerate([3, 5, 7])]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[2])


def test_engine_without_the_units(fm):
    qm = quantize_mamba(fm, rotate=False)
    s = qm.shape
    with pytest.raises(MappingError, match="no state-space units"):
        lower_decoder(qm, _cfg(s, ssm_states=0))
    with pytest.raises(MappingError, match="ssm_states = 6"):
        lower_decoder(qm, _cfg(s, ssm_states=8))
    with pytest.raises(MappingError, match="ssm_channels >= 160"):
        lower_decoder(qm, _cfg(s, ssm_channels=100))
    with pytest.raises(MappingError, match="conv_words >= 20"):
        lower_decoder(qm, _cfg(s, conv_words=19))
    plain = AccelConfig(chains=4, chain_len=L, mem_ports=2, port_bytes=16, transformer=True)
    model = IsaModel(plain, Instr(Opcode.SCAN).encode() + bytes(32))
    with pytest.raises(IllegalInstruction, match="SCAN needs the state-space units"):
        model.run(0)


def test_state_out_of_the_unit_memory(fm):
    qm = quantize_mamba(fm, rotate=False)
    cfg = _cfg(qm.shape)
    bad = Instr(Opcode.SCAN, n=80, rows=1, words=10, state=100, bc_words=1)
    with pytest.raises(IsaError, match="exceed ssm_channels=160"):
        IsaModel(cfg, bad.encode() + bytes(64 * 1024)).run(0)
