"""The external memory model, the sim top, the runner and the testbench, driven by a stand-in
accelerator (a descriptor-driven copy engine, tests/sim/standin.py) with the real port names."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hwflow.hw.config import AccelConfig
from hwflow.mapping.memory_image import join_ports, split_ports
from hwflow.sim import runner
from hwflow.sim.testbench import read_port_hex, write_port_hex

from .standin import descriptor, standin_verilog

CFG = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, act_depth=512,
                  weight_depth=64, addr_bits=16)
SB = CFG.beat_bytes
LAT = 32


def _image(descs, nbeats=2000, seed=0):
    rng = np.random.default_rng(seed)
    img = bytearray(rng.integers(0, 256, SB * nbeats, dtype=np.uint8).tobytes())
    raw = b"".join(descriptor(CFG, *d[:3], **d[3]) for d in descs) + descriptor(CFG, 0, 0, 0)
    img[: len(raw)] = raw
    return bytes(img)


def _run(tmp_path, descs, readback, **kw):
    img = _image(descs)
    return img, runner.simulate(CFG, standin_verilog(CFG), img, 0, readback, tmp_path, **kw)


def test_hex_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, 10 * SB + 3, dtype=np.uint8).tobytes()
    ports = split_ports(img, 2, 8)
    assert ports.shape == (2, 11, 8)
    for j in range(2):
        write_port_hex(tmp_path / f"p{j}.hex", ports[j])
    back = join_ports([read_port_hex(tmp_path / f"p{j}.hex", 8) for j in range(2)])
    assert back[: len(img)] == img and not any(back[len(img):])
    # Port j, beat s holds bytes [s*SB + j*W, s*SB + (j+1)*W); byte 0 is the low hex digit pair.
    assert ports[1, 3].tobytes() == img[3 * SB + 8: 3 * SB + 16]
    line = (tmp_path / "p1.hex").read_text().split("\n")[3]
    assert bytes.fromhex(line)[::-1] == img[3 * SB + 8: 3 * SB + 16]


def test_copy_streams_and_reads_back(tmp_path):
    descs = [(100, 1000, 300, {"burst": 4}), (400, 1300, 50, {"burst": 1, "stall": True}),
             (500, 1350, 1, {"burst": 1})]
    img, r = _run(tmp_path, descs, [(1000, 351 * SB), (1700, 37), (0, SB)])
    assert r.done and r.error == 0 and r.retired == 4
    exp = img[100 * SB: 400 * SB] + img[400 * SB: 450 * SB] + img[500 * SB: 501 * SB]
    assert r.regions[0] == exp
    assert r.regions[1] == img[1700 * SB: 1700 * SB + 37]      # untouched, odd length
    assert r.regions[2] == img[:SB]
    assert r.mpe_busy == (0xABCD << 32) | 351                   # both halves of a 64-bit register
    assert r.mem_rd_beats == 4 + 351 and r.mem_wr_beats == 351
    # Four dependent descriptor fetches and three copies each pay the read latency once; the
    # unstalled 300 beats stream at one a cycle (4-beat bursts, several outstanding).
    assert r.cycles < 4 * (LAT + 4) + 3 * (LAT + 4) + 300 + 2 * 50 + 1


def test_single_beat_requests_stream(tmp_path):
    """256 one-beat requests: the request queue covers the latency, so ~1 beat a cycle."""
    _, one = _run(tmp_path / "a", [(64, 1024, 256, {"burst": 1})], [(1024, 256 * SB)])
    _, big = _run(tmp_path / "b", [(64, 1024, 256, {"burst": 64})], [(1024, 256 * SB)])
    assert one.regions == big.regions
    assert one.cycles <= big.cycles + 4
    assert one.cycles < 256 + 3 * (LAT + 8)


def test_latency(tmp_path):
    """One descriptor fetch, one beat copied: two full read latencies plus a little control."""
    _, r = _run(tmp_path, [(64, 1024, 1, {"burst": 1})], [(1024, SB)])
    assert 3 * LAT <= r.cycles <= 3 * LAT + 16


def test_error_register_and_cache_hit(tmp_path):
    _, r = _run(tmp_path, [(64, 1024, 1, {"illegal": True})], [])
    assert r.done and r.error == 1 and r.retired == 1
    assert r.build_s == 0.0                                     # built by an earlier test


def test_timeout_reported(tmp_path):
    _, r = _run(tmp_path, [(64, 1024, 1000, {"burst": 1})], [], timeout_cycles=50)
    assert not r.done and not r.passed


def test_out_of_range_access_reported(tmp_path):
    # mem_depth is 2**16 beats a port: reading 4 beats from 65534 crosses the end.
    _, r = _run(tmp_path, [(65534, 1024, 4, {"burst": 4})], [])
    assert r.done and r.mem_oob and not r.passed


def test_expect_mismatch_fails_the_cocotb_test(tmp_path):
    img, r = _run(tmp_path, [(64, 1024, 2, {"burst": 2})], [(1024, 2 * SB), (0, SB)],
                  expect={0: _image([])[64 * SB: 66 * SB], 1: b"\0" * SB})
    assert r.done and not r.passed
    assert r.mismatches == ["region 1: first difference at byte 0"]


@pytest.mark.slow
def test_concurrent_builds_share_one_cache_entry(tmp_path):
    out = []

    def go():
        out.append(runner.build(CFG, standin_verilog(CFG), cache_dir=tmp_path))

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 2 and out[0].path == out[1].path
    assert sorted(b.build_s > 0 for b in out) == [False, True]


@pytest.mark.slow
def test_waves(tmp_path):
    _, r = _run(tmp_path, [(64, 1024, 8, {"burst": 4})], [(1024, 8 * SB)], waves=True)
    assert r.done and r.waves is not None and r.waves.stat().st_size > 0
