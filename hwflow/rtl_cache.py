"""Generated Verilog, made once per configuration and cached by content.

Amaranth takes ~6-10 s to elaborate and emit the U280 engine (accelerator or Vitis kernel);
the result depends only on the parameters, the hw/ sources and the Amaranth version, so those
are the cache key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from hwflow.sim.runner import cache_root


def cached_verilog(prefix: str, params, generate: Callable[[], str]) -> str:
    """Return ``generate()``'s Verilog, from ``<hwflow cache>/verilog`` when already made.

    ``params`` is any JSON-serialisable description of everything besides the hw/ sources that
    the Verilog depends on (configuration, clock, ...).
    """
    import amaranth

    import hwflow.hw

    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    h.update(amaranth.__version__.encode())
    for f in sorted(Path(hwflow.hw.__file__).parent.rglob("*")):
        if f.suffix in (".py", ".v") and f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    path = cache_root().parent / "verilog" / f"{prefix}{h.hexdigest()[:24]}.v"
    if path.is_file():
        return path.read_text()
    text = generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
    return text
