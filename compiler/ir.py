"""The IR: a ``networkx.DiGraph`` of :class:`~hwflow.compiler.ops.Op` records.

* node attribute ``op``: the immutable :class:`Op` (kind, inputs, out type, attrs, tile, mem);
* edges: producer -> consumer, one per distinct producer in ``op.inputs``;
* ``graph.graph``: ``name``, ``inputs`` and ``outputs`` (node names, in order), ``step`` (the last
  flow step that produced it, ``"float"`` after the frontend), after ``tile`` ``target`` (the
  :class:`~hwflow.compiler.passes.TileTarget` as a dict), after ``schedule`` ``schedule``
  (node names in execution order), after ``memory_plan`` ``act_words_used``; after
  ``sparsify``/``precision`` ``weight_formats`` (per linear layer: its sparsity, weight width
  and why, for reports; the ops' ``sparsity``/``wbits`` attributes are what passes read).

Saved form (:func:`save_graph`): a JSON file with every op, and next to it an ``.npz`` with the
arrays; no pickle anywhere, so loading a saved IR never executes code.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from .errors import CompileError
from .ops import MemInfo, Op, TensorType, TileInfo

Graph = nx.DiGraph

FORMAT = "hwflow-ir"
FORMAT_VERSION = 1


def new_graph(name: str) -> Graph:
    """An empty IR graph with the graph-level keys set."""
    g = nx.DiGraph()
    g.graph.update(name=name, inputs=[], outputs=[], step="float")
    return g


def add_op(graph: Graph, name: str, op: Op) -> str:
    """Add node ``name`` carrying ``op`` and its input edges; returns ``name``."""
    if name in graph:
        raise ValueError(f"node '{name}' already exists")
    graph.add_node(name, op=op)
    for src in dict.fromkeys(op.inputs):
        graph.add_edge(src, name)
    return name


def op_of(graph: Graph, name: str) -> Op:
    """The op record of node ``name``."""
    return graph.nodes[name]["op"]


def set_op(graph: Graph, name: str, op: Op) -> None:
    """Replace the op of an existing node, keeping the edges in step with ``op.inputs``."""
    old = op_of(graph, name)
    for src in set(old.inputs) - set(op.inputs):
        graph.remove_edge(src, name)
    for src in set(op.inputs) - set(old.inputs):
        graph.add_edge(src, name)
    graph.nodes[name]["op"] = op


def replace_uses(graph: Graph, old: str, new: str) -> None:
    """Make every consumer of ``old`` read ``new`` instead."""
    for user in list(graph.successors(old)):
        op = op_of(graph, user)
        set_op(graph, user, Op(op.kind, tuple(new if i == old else i for i in op.inputs),
                               op.out, op.attrs, op.tile, op.mem, op.source))


def copy_graph(graph: Graph) -> Graph:
    """Copy a graph for a pass to modify (ops are immutable, so sharing them is safe)."""
    g = graph.copy()
    g.graph = {k: (list(v) if isinstance(v, list) else v) for k, v in graph.graph.items()}
    if isinstance(g.graph.get("target"), dict):
        g.graph["target"] = dict(g.graph["target"])
    return g


def unique_name(graph: Graph, base: str) -> str:
    """``base``, or ``base_1``, ``base_2``, ... whichever is not yet a node."""
    name, i = base, 0
    while name in graph:
        i += 1
        name = f"{base}_{i}"
    return name


def ops_in_order(graph: Graph):
    """(name, op) pairs in schedule order if scheduled, else in insertion order."""
    names = graph.graph.get("schedule") or list(graph.nodes)
    return [(n, op_of(graph, n)) for n in names]


def format_graph(graph: Graph) -> str:
    """Readable one-line-per-node listing (for logs and debugging)."""
    lines = [f"graph {graph.graph.get('name')} (step {graph.graph.get('step')})"]
    for name, op in ops_in_order(graph):
        t = op.out
        scale = f" s={t.scale:.4g}" if t.scale is not None else ""
        small = {k: v for k, v in op.attrs.items() if not isinstance(v, np.ndarray)}
        extra = "".join(f" {k}={v}" for k, v in small.items())
        tile = f" tile={asdict(op.tile)}" if op.tile else ""
        mem = f" mem={asdict(op.mem)}" if op.mem else ""
        lines.append(f"  {name} = {op.kind}({', '.join(op.inputs)}) -> {t.dtype}{list(t.shape)}"
                     f"{scale}{extra}{tile}{mem}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- saving / loading

def _encode_attr(value: Any, key: str, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        arrays[key] = value
        return {"array": key}
    if isinstance(value, tuple):
        return {"tuple": [_encode_attr(v, f"{key}.{i}", arrays) for i, v in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"attribute {key} of type {type(value).__name__} cannot be saved")


def _decode_attr(value: Any, arrays) -> Any:
    if isinstance(value, dict) and "array" in value:
        return arrays[value["array"]]
    if isinstance(value, dict) and "tuple" in value:
        return tuple(_decode_attr(v, arrays) for v in value["tuple"])
    return value


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # np.savez stamps the current time into the zip; a fixed date keeps the file byte-identical
    # for identical graphs (the build folder must be reproducible).
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            data = io.BytesIO()
            np.lib.format.write_array(data, np.ascontiguousarray(arrays[key]),
                                      allow_pickle=False)
            zf.writestr(info, data.getvalue())
    _atomic_write(path, buf.getvalue())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_graph(graph: Graph, path: str | os.PathLike) -> Path:
    """Save an IR graph as ``path`` (JSON, ``.json`` added if missing) plus a sibling ``.npz``.

    Parameters
    ----------
    graph : networkx.DiGraph
        Any IR graph (any level, before or after any pass).
    path : path-like
        The JSON file to write; the arrays go to the same name with suffix ``.npz``.

    Returns
    -------
    pathlib.Path
        The JSON file written. Both files are written atomically (temporary file + rename).
    """
    path = Path(path)
    if path.suffix != ".json":
        path = path.with_name(path.name + ".json")
    npz = path.with_suffix(".npz")
    arrays: dict[str, np.ndarray] = {}
    nodes = []
    for i, name in enumerate(graph.nodes):
        op = op_of(graph, name)
        attrs = {k: _encode_attr(v, f"n{i}.{k}", arrays) for k, v in op.attrs.items()}
        nodes.append({
            "name": name, "kind": op.kind, "inputs": list(op.inputs),
            "out": {"shape": list(op.out.shape), "dtype": op.out.dtype, "scale": op.out.scale},
            "attrs": attrs,
            "tile": asdict(op.tile) if op.tile else None,
            "mem": asdict(op.mem) if op.mem else None,
            "source": op.source,
        })
    doc = {"format": FORMAT, "version": FORMAT_VERSION, "graph": dict(graph.graph),
           "arrays": npz.name, "nodes": nodes}
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_npz(npz, arrays)
    _atomic_write(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    return path


def load_graph(path: str | os.PathLike) -> Graph:
    """Load a graph written by :func:`save_graph` (no pickle: arrays load with allow_pickle=False).

    Raises
    ------
    CompileError
        The file is missing or is not a saved hwflow IR.
    """
    path = Path(path)
    if not path.exists() and path.suffix != ".json":
        path = path.with_name(path.name + ".json")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CompileError(f"cannot read IR file {path}: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CompileError(f"{path} is not a saved hwflow IR (no '{FORMAT}' header)")
    if doc.get("version") != FORMAT_VERSION:
        raise CompileError(f"{path}: IR format version {doc.get('version')} is not supported "
                           f"(this hwflow reads version {FORMAT_VERSION})")
    try:
        with np.load(path.parent / doc["arrays"], allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise CompileError(f"cannot read the arrays of IR file {path}: {e}") from None
    g = nx.DiGraph()
    g.graph.update(doc["graph"])
    for n in doc["nodes"]:
        o = n["out"]
        op = Op(n["kind"], tuple(n["inputs"]),
                TensorType(tuple(o["shape"]), o["dtype"], o["scale"]),
                {k: _decode_attr(v, arrays) for k, v in n["attrs"].items()},
                TileInfo(**n["tile"]) if n["tile"] else None,
                MemInfo(**n["mem"]) if n["mem"] else None,
                n["source"])
        g.add_node(n["name"], op=op)
    for name in g.nodes:
        for src in dict.fromkeys(op_of(g, name).inputs):
            if src in g:  # a dangling input is left for the spec check to report
                g.add_edge(src, name)
    return g
