"""The Verilator build cache: each entry's marker records the sha256 of the executable a run
needs; a damaged entry (truncated binary, broken marker, missing file) is rebuilt, said in one
line on stderr, also when two runs share the cache.

Most tests stand a fake compiler in for Verilator (a build in milliseconds); one slow test
truncates a real build and simulates on it."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest

from hwflow.hw.config import AccelConfig
from hwflow.sim import runner
from hwflow.sim.top import TOP_NAME

from .standin import standin_verilog

CFG = AccelConfig(chains=4, chain_len=4, mem_ports=2, port_bytes=8, act_depth=512,
                  weight_depth=64, addr_bits=16)
EXE = b"\x7fELF fake simulator " * 1000


class FakeVerilator:
    """Stands in for cocotb's Verilator runner: writes the executable, counts the builds."""

    def __init__(self, delay_s: float = 0.0):
        self.builds = 0
        self.delay_s = delay_s

    def __call__(self, make_vars, public):
        return self

    def build(self, build_dir, **_):
        self.builds += 1
        time.sleep(self.delay_s)
        (build_dir / TOP_NAME).write_bytes(EXE)


@pytest.fixture
def fake(monkeypatch):
    f = FakeVerilator()
    monkeypatch.setattr(runner, "_runner", f)
    return f


def _build(cache):
    return runner.build(CFG, standin_verilog(CFG), cache_dir=cache)


def test_marker_records_the_executable_digest(tmp_path, fake, capfd):
    b = _build(tmp_path)
    record = json.loads((b.path / runner.BUILD_MARKER).read_text())
    assert record["files"] == {TOP_NAME: hashlib.sha256(EXE).hexdigest()}
    again = _build(tmp_path)
    assert again.path == b.path and again.build_s == 0.0 and fake.builds == 1
    assert capfd.readouterr().err == ""


def _truncate(path):
    exe = path / TOP_NAME
    exe.write_bytes(exe.read_bytes()[:100])


def _flip(path):
    exe = path / TOP_NAME
    data = bytearray(exe.read_bytes())
    data[-1] ^= 0xFF
    exe.write_bytes(bytes(data))


DAMAGE = {
    "truncated executable": (_truncate, "sha256 mismatch"),
    "changed byte": (_flip, "sha256 mismatch"),
    "missing executable": (lambda p: (p / TOP_NAME).unlink(), TOP_NAME),
    "marker not JSON": (lambda p: (p / runner.BUILD_MARKER).write_text('{"conf'), "unreadable"),
    "marker a JSON list": (lambda p: (p / runner.BUILD_MARKER).write_text("[]"), "unreadable"),
    "marker without digests": (lambda p: (p / runner.BUILD_MARKER).write_text('{"waves": 0}'),
                               "no digests"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_entry_is_rebuilt_and_said_in_one_line(tmp_path, fake, capfd, kind):
    damage, why = DAMAGE[kind]
    b = _build(tmp_path)
    damage(b.path)
    capfd.readouterr()
    again = _build(tmp_path)
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"hwflow: cache entry {b.path} was damaged (")
    assert why in lines[0] and lines[0].endswith("; rebuilding it")
    assert fake.builds == 2 and again.path == b.path and again.build_s > 0
    assert (b.path / TOP_NAME).read_bytes() == EXE
    assert _build(tmp_path).build_s == 0.0 and fake.builds == 2
    assert capfd.readouterr().err == ""


def test_two_runs_on_a_damaged_entry_rebuild_it_once(tmp_path, monkeypatch, capfd):
    """The check and the rebuild happen under the key's lock: the second run waits for the
    first one's rebuild and takes it."""
    f = FakeVerilator(delay_s=0.3)
    monkeypatch.setattr(runner, "_runner", f)
    b = _build(tmp_path)
    _truncate(b.path)
    capfd.readouterr()
    out = []
    threads = [threading.Thread(target=lambda: out.append(_build(tmp_path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert f.builds == 2 and sorted(x.build_s > 0 for x in out) == [False, True]
    assert len(capfd.readouterr().err.strip().splitlines()) == 1
    assert (b.path / TOP_NAME).read_bytes() == EXE


def test_executable_is_hashed_once_per_process(tmp_path, fake, monkeypatch):
    """A calibration runs hundreds of simulations on one build: its executable is hashed when
    first used in a process, then only stat()ed."""
    b = _build(tmp_path)
    calls = []
    real = runner.hashlib.sha256
    monkeypatch.setattr(runner.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))

    def hashes() -> int:
        calls.clear()
        assert _build(tmp_path).path == b.path
        return len(calls)

    runner._DIGESTS.clear()                                # a new process
    first = hashes()
    assert [hashes() for _ in range(3)] == [first - 1] * 3


@pytest.mark.slow
def test_truncated_real_build_is_rebuilt_and_simulates(tmp_path, capfd):
    """A truncated Verilator binary used to kill every later run with return code -11."""
    from .test_ext_memory import SB, _image

    b = _build(tmp_path)                                   # ~25 s
    exe = b.path / TOP_NAME
    exe.write_bytes(exe.read_bytes()[: exe.stat().st_size // 2])
    capfd.readouterr()
    img = _image([(64, 1024, 4, {"burst": 2})])
    r = runner.simulate(CFG, standin_verilog(CFG), img, 0, [(1024, 4 * SB)], tmp_path / "run",
                        cache_dir=tmp_path)               # rebuilds (~25 s), then runs
    err = capfd.readouterr().err
    assert f"hwflow: cache entry {b.path} was damaged ({TOP_NAME}: sha256 mismatch)" in err
    assert r.passed and r.done and r.build_s > 0
    assert r.regions[0] == img[64 * SB: 68 * SB]
