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


@contextlib.contextmanager
def atomic_build_dir(out: Path):
    """Yield a temporary folder that becomes ``out`` when the block finishes without error."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and (is_build(out) or not any(out.iterdir()))):
        raise HwflowError(f"'{out}' exists and is not an hwflow build folder; "
                          "choose another output folder with -o")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


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
