"""Helpers of the hostile-input tests: run the CLI, check the one-line error rule, snapshot
folders so that a test can prove nothing the user had was changed.

The rule (docs/design.md, "Errors and safety"; issue "Untrusted model files and faults"): every
bad input exits non-zero with exactly one line on stderr, ``hwflow: error: ...``, no
traceback, and leaves no folder that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hwflow.cli import main


def run_cli(capfd, *argv) -> tuple[int, str, str]:
    """``hwflow ARGV`` in this process; ``(exit code, stdout, stderr)`` captured at the file
    descriptors (so C++ and logging output count too)."""
    capfd.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:          # argparse's own exits
        code = e.code
    out, err = capfd.readouterr()
    return code, out, err


def run_cli_process(*argv, env=None, timeout=600) -> subprocess.CompletedProcess:
    """``hwflow ARGV`` in a fresh Python process (what a user's shell sees)."""
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "hwflow.cli", *map(str, argv)],
                          capture_output=True, text=True, env=e, timeout=timeout, check=False)


def assert_one_line_error(code, err: str, *needles: str, exit_code: int | None = 2) -> str:
    """Exit non-zero (``exit_code`` if given), exactly one stderr line starting
    ``hwflow: error:`` and holding every needle, no traceback. Returns the line."""
    assert code != 0, f"exit 0 for a bad input; stderr: {err!r}"
    if exit_code is not None:
        assert code == exit_code, (code, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    assert lines[0].startswith("hwflow: error: "), lines[0]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (hidden ones included), plus
    ``path/`` entries for folders: equal snapshots mean nothing was added, removed or changed."""
    root = Path(root)
    out = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel + "/"] = ""
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_no_build_left(parent: Path, name: str | None = None) -> None:
    """No build folder that looks complete (no ``hwflow-build.json``) and no hidden temporary
    folder under ``parent`` (or only for ``name``)."""
    parent = Path(parent)
    if not parent.exists():
        return
    for p in parent.iterdir():
        if name is not None and name not in p.name:
            continue
        assert not (p / "hwflow-build.json").exists(), f"{p} looks like a complete build"
        assert not (p.name.startswith(".") and ".tmp-" in p.name), f"temporary {p} left"


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` made unwritable: mode 555, or for root (whom modes do not stop) immutable."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i: no read-only folder")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
