"""Multi-step jobs on Verilator (``simulate_steps``): one simulator process, memory persisting
between runs, host writes (poke) before a run, POS-relative STORE/LOAD, traffic counters by
category, and the argmax of a read-back row fed back as the next run's token id (GATHER)."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import FLAG_POS, Instr, Opcode
from hwflow.hw.top import generate_verilog
from hwflow.sim.runner import simulate_steps

# The configuration of tests/sim/test_rtl_vs_isa.py with the transformer units.
SMALL = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, act_depth=512,
                    weight_depth=64, addr_bits=16, transformer=True, attn_heads=4)
SB = SMALL.beat_bytes                   # 16 B: an instruction is 2 super-beats, 4 act words 1
P1, P2, P3 = 0, 6, 16                   # program super-beats (3, 5 and 3 instructions)
IN, KV, OUT, OUT2, IDS, TABLE = 300, 400, 500, 520, 600, 700
V = 20                                  # vocabulary (table rows)
TRAFFIC = [(0, 22, "program"), (300, 302, "io"), (400, 420, "kv"), (500, 530, "io"),
           (600, 601, "io"), (700, 700 + V, "weights")]


def _image(rng) -> bytes:
    img = bytearray(rng.integers(0, 256, 1024 * SB, dtype=np.uint8).tobytes())
    progs = {
        P1: [Instr(Opcode.LOAD, ext=IN, a=0, b=8),
             Instr(Opcode.STORE, flags=FLAG_POS, ext=KV, a=0, b=8, pos_stride=2),
             Instr(Opcode.END)],
        P2: [Instr(Opcode.LOAD, ext=IN, a=0, b=8),
             Instr(Opcode.STORE, flags=FLAG_POS, ext=KV, a=0, b=8, pos_stride=2),
             Instr(Opcode.LOAD, flags=FLAG_POS, ext=KV - 6, a=8, b=8, pos_stride=2),
             Instr(Opcode.STORE, ext=OUT, a=8, b=8),
             Instr(Opcode.END)],
        P3: [Instr(Opcode.GATHER, ext=TABLE, a=0, n=4, rows=1, ids=IDS, stride=1,
                   table_rows=V),
             Instr(Opcode.STORE, ext=OUT2, a=0, b=4),
             Instr(Opcode.END)],
    }
    for base, prog in progs.items():
        code = b"".join(i.encode() for i in prog)
        img[base * SB:base * SB + len(code)] = code
    return bytes(img)


@pytest.fixture(scope="module")
def verilog():
    return generate_verilog(SMALL)


def test_steps_persist_poke_pos_traffic_argmax(verilog, tmp_path):
    rng = np.random.default_rng(1)
    image = _image(rng)
    d1 = rng.integers(-100, 100, 2 * SB).astype(np.int8)
    d1[13] = 120                                       # the argmax over the first V bytes
    d2 = rng.integers(-128, 128, 2 * SB).astype(np.int8).tobytes()
    steps = [
        # step 0, POS 0: d1 (host write) -> KV rows 0..1
        {"prog_base": P1, "pos": 0, "writes": [(IN, d1.tobytes())],
         "readback": [(KV, 2 * SB)]},
        # step 1, POS 3: d2 (poke) -> KV + 6; KV + 0 (step 0's rows, via LOAD ext - 6 + 3 * 2)
        # -> OUT; its argmax is the next step's token id
        {"prog_base": P2, "pos": 3, "writes": [(IN, d2), (IDS, b"\xff" * 7)],
         "readback": [(OUT, 2 * SB), (KV + 6, 2 * SB), (IDS, SB)],
         "argmax": {"region": 0, "row_bytes": 2 * SB, "row": 0, "vocab": V, "ids_addr": IDS}},
        # step 2: GATHER the table row of that token
        {"prog_base": P3, "pos": 4, "readback": [(OUT2, SB), (IDS, SB)]},
    ]
    res = simulate_steps(SMALL, verilog, image, steps, tmp_path, traffic=TRAFFIC,
                         timeout_cycles=100_000)
    assert res.passed and not res.mem_oob and len(res.steps) == 3
    s0, s1, s2 = res.steps
    for s, n in zip(res.steps, (3, 5, 3), strict=True):
        assert s.done and s.error == 0 and s.retired == n
    assert s0.regions[0] == d1.tobytes()
    assert s1.regions[0] == d1.tobytes()               # KV rows written by step 0 persisted
    assert s1.regions[1] == d2                         # POS 3 * stride 2
    # the partial host write (7 bytes) kept the rest of its super-beat
    assert s1.regions[2][:7] == b"\xff" * 7 and s1.regions[2][7:] == image[IDS * SB + 7:
                                                                           (IDS + 1) * SB]
    assert s1.token == 13 and s0.token is None and res.tokens == [13]
    assert s2.regions[1][:4] == (13).to_bytes(4, "little")
    assert s2.regions[1][4:7] == b"\xff" * 3
    assert s2.regions[0] == image[(TABLE + 13) * SB:(TABLE + 14) * SB]

    # traffic, hand-counted as the ISA model counts it (whole super-beats x 16 B): every
    # instruction is 2 program super-beats
    zero = dict.fromkeys(("weights_read", "kv_read", "kv_written", "activations_read",
                          "activations_written", "io_read", "io_written", "other_read",
                          "other_written"), 0)
    assert s0.traffic == {**s0.traffic, **zero, "program_read": 6 * SB, "io_read": 2 * SB,
                          "kv_written": 2 * SB}
    assert s1.traffic == {**s1.traffic, **zero, "program_read": 10 * SB, "io_read": 2 * SB,
                          "kv_written": 2 * SB, "kv_read": 2 * SB, "io_written": 2 * SB}
    assert s2.traffic == {**s2.traffic, **zero, "program_read": 6 * SB, "io_read": SB,
                          "weights_read": SB, "io_written": SB}
    assert all(v == 0 for k, v in s0.traffic.items() if k.endswith("written")
               and k != "kv_written")
