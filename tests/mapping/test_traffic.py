"""mapping.traffic: the one traffic count. The predictions' count of a run (program_traffic,
from the instructions alone) equals the ISA functional model's counters as it runs the program,
category by category: both count with instr_accesses and fetched_beats. The independent
measurement is the RTL's own counters, held equal to the ISA model's in tests/e2e."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.mapping.llm_lower import decode_memory_writes, lower_decoder
from hwflow.mapping.traffic import program_traffic
from hwflow.sim.isa_model import IsaModel

TRAFFIC_KEYS = ("weights_read", "kv_read", "kv_written", "io_read", "io_written",
                "program_read")


def _isa_traffic(low, ids, pos) -> dict:
    model = IsaModel(low.cfg, low.image, regions=low.memory_map)
    step = decode_memory_writes(low, ids, pos)
    for addr, data in step.writes:
        model.write(addr, data)
    model.reset_stats()
    model.pos = pos
    model.run(step.prog_base)
    return {k: model.stats.traffic.get(k, 0) for k in TRAFFIC_KEYS}


def _decoders():
    from tests.mapping.test_llm_lower import CFG, random_decoder
    from tests.mapping.test_llm_lower_ternary import CFG as TCFG
    from tests.mapping.test_llm_lower_ternary import random_bitnet

    return {"int8": (random_decoder(), CFG), "ternary": (random_bitnet(), TCFG)}


@pytest.mark.parametrize("kind", ["int8", "ternary"])
def test_program_traffic_equals_the_isa_model(kind):
    """Every category of external traffic, counted from the instructions alone, equals what
    the ISA functional model moves: decode at three positions, prefill chunks of 5 and 16
    tokens (a bucket of 8 with 3 idle rows, a full 16-row bucket) at positions past 0."""
    qd, cfg = _decoders()[kind]
    low = lower_decoder(qd, cfg)
    rng = np.random.default_rng(1)
    for n, pos in ((1, 0), (1, 17), (1, 63), (5, 3), (16, 40)):
        ids = rng.integers(0, qd.shape.vocab, n)
        prog = low.decode if n == 1 else low.prefill[min(b for b in low.buckets if b >= n)]
        got = program_traffic(prog, cfg, pos, low.memory_map)
        want = _isa_traffic(low, ids, pos)
        assert {k: got[k] for k in TRAFFIC_KEYS} == want, (n, pos)
        assert got["total"] == sum(want.values())
