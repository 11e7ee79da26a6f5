"""Atomic build folders: a run either leaves a complete folder or none at all.

Everything is written into a hidden sibling temporary folder which replaces the target only
when complete; a previous hwflow build at the target is replaced, anything else is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from hwflow.errors import HwflowError

MARKER = "hwflow-build.json"


def is_build(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished folder ``tmp`` to ``dest``, replacing a previous ``dest``."""
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: Path):
    """Yield a hidden sibling temporary folder that replaces ``target`` when the block ends
    without error (and is removed when it raises)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, target)


@contextlib.contextmanager
def atomic_build_dir(out: Path):
    """:func:`atomic_dir` for a build folder: refuses to replace anything but an hwflow build."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and (is_build(out) or not any(out.iterdir()))):
        raise HwflowError(f"'{out}' exists and is not an hwflow build folder; "
                          "choose another output folder with -o")
    with atomic_dir(out) as tmp:
        yield tmp


def write_json(path: Path, data) -> None:
    """Write JSON deterministically (sorted keys) and atomically (rename over the target)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=_plain) + "\n")
    tmp.replace(path)


def _plain(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
