"""Generated Verilog, made once per configuration and cached by content.

Amaranth takes ~6-10 s to elaborate and emit the U280 engine (accelerator or Vitis kernel);
the result depends only on the parameters, the hw/ sources and the Amaranth version, so those
are the cache key.

An entry's first line records the sha256 of the Verilog that follows it. An entry that does not
match (truncated by a full disk or a kill, edited by hand) is generated again, and the run says
so in one line on stderr: a damaged entry must never reach a build folder.

The cache lives under ``$HWFLOW_CACHE`` (default ``~/.cache/hwflow``): ``verilog/`` here,
``verilator/`` (:mod:`hwflow.sim.runner`) and ``synth/`` (:mod:`hwflow.export.fit`).
:func:`check_cache_writable` checks all of it before a command starts its long work.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from hwflow.errors import HwflowError
from hwflow.sim.runner import cache_root, warn_damaged_entry

# Bumped when the entry layout changes; part of the key, so entries written before the digest
# line existed are never looked up (rather than reported as damaged once each).
CACHE_FORMAT = b"verilog cache 2"
DIGEST_PREFIX = b"// hwflow-cache sha256="
# The cache's folders, one per kind of entry.
CACHE_FOLDERS = ("verilog", "verilator", "synth")
FIX = "set HWFLOW_CACHE to a writable folder"


def cache_base() -> Path:
    """The hwflow cache folder: ``$HWFLOW_CACHE``, or ``~/.cache/hwflow``."""
    return cache_root().parent


def check_cache_writable() -> Path:
    """Check that the hwflow cache can take new entries; call it before any long work.

    Creates the cache's folders where missing and writes (and removes) a probe file in each,
    so that a read-only cache, one without write permission, or a cache path that is a file is
    refused at once instead of after the model was compiled (30 s and more).

    Returns
    -------
    Path
        The cache folder (:func:`cache_base`).

    Raises
    ------
    HwflowError
        A cache folder cannot be created or written; the message names it and says to set
        ``HWFLOW_CACHE`` to a writable folder.
    """
    base = cache_base()
    for folder in (base, *(base / name for name in CACHE_FOLDERS)):
        _check_folder(folder)
    return base


def _check_folder(folder: Path) -> None:
    blocker = _file_in_path(folder)
    if blocker == folder:
        raise HwflowError(f"the hwflow cache folder '{folder}' is a file, not a folder; "
                          f"move it away or {FIX}")
    if blocker is not None:
        raise HwflowError(f"the hwflow cache folder '{folder}' cannot be created: '{blocker}' "
                          f"is a file, not a folder; remove it or {FIX}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".hwflow-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise HwflowError(f"the hwflow cache folder '{folder}' is not writable "
                          f"({e.strerror or e}); {FIX}") from None


def _file_in_path(folder: Path) -> Path | None:
    """The first of ``folder`` and its parents that exists but is not a folder (a regular file
    or a dangling link), or None."""
    for p in (folder, *folder.parents):
        if p.is_symlink() and not p.exists():
            return p
        if p.exists():
            return None if p.is_dir() else p
    return None


@functools.lru_cache(maxsize=1)
def _sources_digest() -> bytes:
    """sha256 over the hw/ sources and the Amaranth version, once per process: the modules are
    already imported, so an edit made later would not change this process's Verilog anyway."""
    import hwflow.hw

    # amaranth.__version__ is this metadata ("unknown" without); read here without importing
    # Amaranth, which hwflow/ does not (the HDL is in hw/)
    try:
        version = importlib.metadata.version("amaranth")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    h = hashlib.sha256(version.encode())
    for f in sorted(Path(hwflow.hw.__file__).parent.rglob("*")):
        if f.suffix in (".py", ".v") and f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.digest()


def entry_path(prefix: str, params) -> Path:
    """Where the Verilog for ``prefix`` and ``params`` is cached (see :func:`cached_verilog`)."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    h.update(_sources_digest())
    h.update(CACHE_FORMAT)
    return cache_base() / "verilog" / f"{prefix}{h.hexdigest()[:24]}.v"


def cached_verilog(prefix: str, params, generate: Callable[[], str]) -> str:
    """Return ``generate()``'s Verilog, from ``<hwflow cache>/verilog`` when already made.

    Parameters
    ----------
    prefix : str
        Start of the entry's file name (``"kernel-"`` for Vitis kernels).
    params
        Any JSON-serialisable description of everything besides the hw/ sources that the
        Verilog depends on (configuration, clock, ...).
    generate : callable
        Makes the Verilog on a miss, or when the entry is damaged (then said on stderr).

    Returns
    -------
    str
        The Verilog, checked against the entry's recorded sha256.
    """
    path = entry_path(prefix, params)
    text = _read_entry(path)
    if text is None:
        text = generate()
        _write_entry(path, text)
    return text


def _read_entry(path: Path) -> str | None:
    """The Verilog of the entry at ``path``; None when there is none, or it is damaged."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):     # no entry (or no cache folder) yet
        return None
    except OSError as e:
        warn_damaged_entry(path, f"unreadable: {e.strerror or e}")
        return None
    header, newline, body = data.partition(b"\n")
    if not (header.startswith(DIGEST_PREFIX) and newline):
        why = "no sha256 line"
    elif header[len(DIGEST_PREFIX):] != hashlib.sha256(body).hexdigest().encode():
        why = "sha256 mismatch"
    else:
        return body.decode()
    warn_damaged_entry(path, why)
    return None


def _write_entry(path: Path, text: str) -> None:
    """Write an entry atomically (a unique temporary file renamed over it): concurrent
    processes and threads making the same entry each rename a complete file."""
    body = text.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        tmp.write_bytes(DIGEST_PREFIX + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
