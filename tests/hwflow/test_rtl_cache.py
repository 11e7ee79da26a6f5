"""The Verilog cache: every entry carries its sha256 and a damaged one is made again (saying so
in one line); the cache location is checked before the long work starts."""

from __future__ import annotations

import errno
import os
import tempfile

import pytest

from hwflow.errors import HwflowError
from hwflow.rtl_cache import (
    CACHE_FOLDERS,
    DIGEST_PREFIX,
    cached_verilog,
    check_cache_writable,
    entry_path,
)

TEXT = "module m(input a, output b);\n  assign b = a;\nendmodule\n"
PARAMS = {"chains": 4, "clock": 250}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class Generator:
    """Counts how often the (normally 6-10 s) Verilog generation ran."""

    def __init__(self):
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return TEXT


def test_entry_records_its_digest_and_is_reused(cache, capfd):
    gen = Generator()
    assert cached_verilog("t-", PARAMS, gen) == TEXT
    assert cached_verilog("t-", PARAMS, gen) == TEXT
    assert gen.calls == 1
    path = entry_path("t-", PARAMS)
    assert path.parent == cache / "verilog" and path.read_bytes().startswith(DIGEST_PREFIX)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]   # no temp left
    assert capfd.readouterr().err == ""


DAMAGE = {
    "truncated": lambda data: data[: len(data) - 20],
    "empty": lambda data: b"",
    "byte flipped": lambda data: data[:-5] + bytes([data[-5] ^ 1]) + data[-4:],
    "digest line cut": lambda data: data[:10],
    "no digest line": lambda data: data.split(b"\n", 1)[1],
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_entry_is_made_again_and_said_in_one_line(cache, capfd, kind):
    gen = Generator()
    cached_verilog("t-", PARAMS, gen)
    path = entry_path("t-", PARAMS)
    good = path.read_bytes()
    path.write_bytes(DAMAGE[kind](good))
    capfd.readouterr()
    assert cached_verilog("t-", PARAMS, gen) == TEXT
    assert gen.calls == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"hwflow: cache entry {path} was damaged (")
    assert lines[0].endswith("; rebuilding it")
    assert path.read_bytes() == good                       # repaired
    assert cached_verilog("t-", PARAMS, gen) == TEXT and gen.calls == 2
    assert capfd.readouterr().err == ""


def test_check_cache_writable_makes_the_folders(cache):
    assert check_cache_writable() == cache
    assert all((cache / name).is_dir() for name in CACHE_FOLDERS)
    assert not [p for name in CACHE_FOLDERS for p in (cache / name).iterdir()]  # probes gone


def test_cache_path_that_is_a_file(tmp_path, monkeypatch):
    f = tmp_path / "cache"
    f.write_text("not a folder\n")
    monkeypatch.setenv("HWFLOW_CACHE", str(f))
    with pytest.raises(HwflowError, match="is a file, not a folder") as e:
        check_cache_writable()
    assert str(f) in str(e.value) and "HWFLOW_CACHE" in str(e.value)
    assert f.read_text() == "not a folder\n"


def test_cache_subfolder_that_is_a_file(cache):
    cache.mkdir()
    (cache / "verilator").write_text("x")
    with pytest.raises(HwflowError, match="HWFLOW_CACHE") as e:
        check_cache_writable()
    assert str(cache / "verilator") in str(e.value)


def test_cache_that_is_a_dangling_link(tmp_path, monkeypatch):
    link = tmp_path / "cache"
    link.symlink_to(tmp_path / "gone")
    monkeypatch.setenv("HWFLOW_CACHE", str(link))
    with pytest.raises(HwflowError, match="HWFLOW_CACHE") as e:
        check_cache_writable()
    assert str(link) in str(e.value)


def _deny_probe(monkeypatch, folder):
    """What a read-only folder does to root, who writes through a chmod 0o555."""
    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **kw):
        if dir is not None and str(dir).startswith(str(folder)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_read_only_cache(cache, monkeypatch):
    for name in CACHE_FOLDERS:
        (cache / name).mkdir(parents=True)
    if os.geteuid() == 0:
        _deny_probe(monkeypatch, cache)
    else:
        cache.chmod(0o555)
        for name in CACHE_FOLDERS:
            (cache / name).chmod(0o555)
    try:
        with pytest.raises(HwflowError, match="is not writable") as e:
            check_cache_writable()
    finally:
        for p in (cache, *(cache / n for n in CACHE_FOLDERS)):
            p.chmod(0o755)
    assert str(cache) in str(e.value) and "HWFLOW_CACHE" in str(e.value)
