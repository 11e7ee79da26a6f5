"""Environment failures on the command line: a full disk, a read-only output folder or cache, a
cache path that is a file, a name too long, no memory, Ctrl-C at start-up. Each gives one line
on stderr and a non-zero exit, never a traceback, and leaves no build folder behind.

Tests may run as root, for whom chmod 0o555 does not stop a write: there the read-only folder is
played by failing every write under it with EACCES, as the kernel would for anyone else."""

from __future__ import annotations

import builtins
import errno
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._cli import assert_no_build_left, assert_one_line_error, run_cli, snapshot

COMPILE = ("compile", "--example", "mlp-tiny", "--board", "icebreaker")   # ~1.5 s in-process


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """A cache holding the icebreaker Verilog, shared by the tests that do not test the cache."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cache(warm_cache, monkeypatch):
    monkeypatch.setenv("HWFLOW_CACHE", str(warm_cache))
    return warm_cache


def _under(path, folder: Path) -> bool:
    try:
        return Path(os.fsdecode(path)).absolute().is_relative_to(folder)
    except TypeError:                      # a file descriptor
        return False


def _deny_writes(monkeypatch, folder: Path, code: int = errno.EACCES) -> None:
    """Make every create, write, rename and removal under ``folder`` fail with ``code``."""
    folder = folder.absolute()

    def fail(path):
        raise OSError(code, os.strerror(code), os.fsdecode(path))

    real_open, real_os_open = builtins.open, os.open
    real = {name: getattr(os, name) for name in ("mkdir", "replace", "rename", "unlink", "rmdir")}

    def py_open(file, mode="r", *a, **kw):
        if any(c in mode for c in "wax+") and _under(file, folder):
            fail(file)
        return real_open(file, mode, *a, **kw)

    def os_open(path, flags, *a, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _under(path, folder):
            fail(path)
        return real_os_open(path, flags, *a, **kw)

    def guarded(name):
        def call(path, *a, **kw):
            if _under(path, folder):
                fail(path)
            return real[name](path, *a, **kw)
        return call

    monkeypatch.setattr(builtins, "open", py_open)
    monkeypatch.setattr(io, "open", py_open)
    monkeypatch.setattr(os, "open", os_open)
    for name in real:
        monkeypatch.setattr(os, name, guarded(name))


def _read_only(monkeypatch, folder: Path) -> None:
    """``folder`` becomes read-only for this process (chmod, or for root, failing writes)."""
    if os.geteuid() == 0:
        _deny_writes(monkeypatch, folder)
    else:
        folder.chmod(0o555)


# -- the output folder ----------------------------------------------------------------------------

def test_disk_full_while_writing_the_build(cache, tmp_path, monkeypatch, capfd):
    parent = tmp_path / "builds"
    parent.mkdir()
    real = Path.write_bytes

    def write_bytes(self, data):
        if _under(self, parent):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    code, out, err = run_cli(capfd, *COMPILE, "-o", parent / "b")
    line = assert_one_line_error(code, err, str(parent))
    assert "no space left" in line.lower() and "free some space" in line, line
    assert snapshot(parent) == {}
    assert_no_build_left(parent)


def test_read_only_output_folder(cache, tmp_path, monkeypatch, capfd):
    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only(monkeypatch, ro)
    try:
        code, out, err = run_cli(capfd, *COMPILE, "-o", ro / "b")
    finally:
        ro.chmod(0o755)
    assert_one_line_error(code, err, str(ro))
    assert snapshot(ro) == {}


def test_output_name_too_long(cache, tmp_path, capfd):
    code, out, err = run_cli(capfd, *COMPILE, "-o", tmp_path / ("b" * 300))
    assert_one_line_error(code, err, "long", "shorter")
    assert_no_build_left(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == []


# -- the cache ------------------------------------------------------------------------------------

def test_cache_path_that_is_a_file(tmp_path, monkeypatch, capfd):
    f = tmp_path / "cache"
    f.write_text("mine\n")
    monkeypatch.setenv("HWFLOW_CACHE", str(f))
    code, out, err = run_cli(capfd, *COMPILE, "-o", tmp_path / "b")
    assert_one_line_error(code, err, str(f), "HWFLOW_CACHE")
    assert f.read_text() == "mine\n"
    assert_no_build_left(tmp_path)


def test_read_only_cache(tmp_path, monkeypatch, capfd):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("HWFLOW_CACHE", str(cache))
    _read_only(monkeypatch, cache)
    try:
        code, out, err = run_cli(capfd, *COMPILE, "-o", tmp_path / "b")
    finally:
        cache.chmod(0o755)
    assert_one_line_error(code, err, str(cache), "HWFLOW_CACHE")
    assert_no_build_left(tmp_path)
    assert not (tmp_path / "b").exists()


def test_damaged_cached_verilog_is_made_again(cache, tmp_path, capfd):
    """A truncated cached Verilog file used to be copied into the next build, exit 0."""
    code, _, err = run_cli(capfd, *COMPILE, "-o", tmp_path / "first")
    assert code == 0, err
    [entry] = (cache / "verilog").glob("*.v")
    entry.write_bytes(entry.read_bytes()[:1000])
    code, _, err = run_cli(capfd, *COMPILE, "-o", tmp_path / "second")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"cache entry {entry} was damaged" in lines[0], err
    rtl = Path("rtl") / "hwflow_accel.v"
    assert (tmp_path / "second" / rtl).read_bytes() == (tmp_path / "first" / rtl).read_bytes()


# -- errors by errno, memory ---------------------------------------------------------------------

ERRNOS = [
    (errno.ENOSPC, "no space left"), (errno.EDQUOT, "quota"), (errno.EACCES, "permission"),
    (errno.EPERM, "not permitted"), (errno.EROFS, "read-only"), (errno.ENAMETOOLONG, "too long"),
    (errno.ENOTDIR, "not a folder"), (errno.EISDIR, "is a folder"), (errno.ENOENT, "no such"),
    (errno.ELOOP, "symbolic links"), (errno.EMFILE, "open files"), (errno.EIO, "input/output"),
    (errno.EXDEV, os.strerror(errno.EXDEV)),
]


@pytest.mark.parametrize("code_, cause", ERRNOS, ids=[errno.errorcode[c] for c, _ in ERRNOS])
def test_os_error_is_one_line_naming_path_and_cause(monkeypatch, capfd, code_, cause):
    def fail(*_):
        raise OSError(code_, os.strerror(code_), "/some/where/file.bin")

    monkeypatch.setattr("hwflow.boards.list_boards", fail)
    code, out, err = run_cli(capfd, "boards")
    line = assert_one_line_error(code, err, "'/some/where/file.bin'", cause)
    assert "; " in line                                   # and what to do


def test_os_error_in_the_cache_says_hwflow_cache(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("HWFLOW_CACHE", str(tmp_path))
    where = tmp_path / "verilator" / "k.lock"

    def fail(*_):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(where))

    monkeypatch.setattr("hwflow.boards.list_boards", fail)
    code, out, err = run_cli(capfd, "boards")
    assert_one_line_error(code, err, str(where), "read-only", "HWFLOW_CACHE")


def test_os_error_without_a_path(monkeypatch, capfd):
    def fail(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("hwflow.boards.list_boards", fail)
    code, out, err = run_cli(capfd, "boards")
    assert_one_line_error(code, err, "no space left", "ENOSPC")


def test_missing_program(monkeypatch, capfd):
    def fail(*_):
        subprocess.run(["hwflow-no-such-tool-here"], check=False)

    monkeypatch.setattr("hwflow.boards.list_boards", fail)
    code, out, err = run_cli(capfd, "boards")
    assert_one_line_error(code, err, "cannot run 'hwflow-no-such-tool-here'", "PATH")


def test_memory_error(monkeypatch, capfd):
    def fail(*_):
        raise MemoryError

    monkeypatch.setattr("hwflow.boards.list_boards", fail)
    code, out, err = run_cli(capfd, "boards")
    assert_one_line_error(code, err, "out of memory")


# -- Ctrl-C ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("delay_s", [0.3, 1.5, 3.0])
def test_ctrl_c_during_start_up(tmp_path, delay_s):
    """0.3 s: the interpreter is importing hwflow; 1.5 s: torch; 3 s: main() has begun."""
    out = tmp_path / "b"
    env = dict(os.environ, HWFLOW_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hwflow.cli", "compile", "--example", "mlp", "--board", "u280",
         "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(delay_s)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, err
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 1, err
    assert_no_build_left(tmp_path)
    assert not out.exists()
