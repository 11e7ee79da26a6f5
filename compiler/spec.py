"""Spec check: the rules every IR graph obeys; the flow runs :func:`check` after every pass.

A broken rule raises :class:`~hwflow.compiler.errors.SpecError` naming the node and the rule.
Rules that only apply after a step are checked once the graph carries that step's marks:
``graph.graph['target']`` (after ``tile``), ``schedule`` and ``act_words_used``
(after ``memory_plan``).
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

from hwflow.golden import int4 as g4
from hwflow.golden import int8 as g8
from hwflow.golden import sparse as gs

from .errors import SpecError
from .ir import Graph
from .ops import FLOAT_KINDS, OP_KINDS, QUANT_KINDS, Op, TensorType, ceil_div, rows_features

ARITY = {"input": (0,), "output": (1,), "relu": (1,), "reshape": (1,), "linear": (1,),
         "add": (2,), "qlinear": (1, 2), "qadd": (2,)}

ACC_LIMIT = 2**31  # int32 accumulator: K*128*128 + max|bias| must stay below this


def _fail(name: str, op: Op | None, rule: str):
    kind = f" ({op.kind})" if op is not None else ""
    raise SpecError(f"node '{name}'{kind}: {rule}")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_array(name, op, key, dtype, shape):
    a = op.attrs.get(key)
    if not isinstance(a, np.ndarray):
        _fail(name, op, f"attribute '{key}' must be an array")
    if a.dtype != np.dtype(dtype):
        _fail(name, op, f"attribute '{key}' must be {np.dtype(dtype).name}, got {a.dtype.name}")
    if a.shape != tuple(shape):
        _fail(name, op, f"attribute '{key}' has shape {list(a.shape)}, expected {list(shape)}")
    if a.flags.writeable:
        _fail(name, op, f"attribute '{key}' is writeable; ops are immutable")
    return a


def _check_shift(name, op, shift):
    if not _is_int(shift) or not 0 <= shift <= g8.SHIFT_MAX:
        _fail(name, op, f"shift {shift!r} outside [0, {g8.SHIFT_MAX}]")


def _check_u16(name, op, key, v):
    if not _is_int(v) or not 0 <= v <= g8.MULT_MAX:
        _fail(name, op, f"{key} {v!r} outside the u16 range [0, {g8.MULT_MAX}]")


def _check_weight_format(name, op, w):
    """``sparsity`` (n, m) and ``wbits`` (8, 4 or 2), both optional (missing: dense int8): legal
    values, the weight satisfies the pattern, and at the quantized level an int4 layer's
    ``weight`` is exactly ``w4 * w4_scale`` (``golden.int4.dequantize_int4``); a ternary layer
    (``wbits`` 2, attribute ``ternary`` True, dense) has weights in {-1, 0, 1} and a positive
    ``w_scale`` per channel."""
    a = op.attrs
    nm = a.get("sparsity", (1, 1))
    if (not isinstance(nm, tuple) or len(nm) != 2 or not all(_is_int(v) for v in nm)):
        _fail(name, op, f"attribute 'sparsity' must be a pair of ints (n, m), got {nm!r}")
    n, m = nm
    if m < 1 or m > 16 or m & (m - 1) or not 1 <= n <= m:
        _fail(name, op, f"sparsity {n}:{m}: M must be a power of two up to 16 and 1 <= N <= M")
    if not gs.satisfies_nm(w, n, m):
        _fail(name, op, f"weight does not satisfy its recorded {n}:{m} sparsity (a group of "
                        f"{m} along K has more than {n} nonzeros)")
    bits = a.get("wbits", 8)
    if not _is_int(bits) or bits not in (2, 4, 8):
        _fail(name, op, f"attribute 'wbits' must be 8, 4 or 2, got {bits!r}")
    if bits == 2 and nm != (1, 1):
        _fail(name, op, f"a ternary layer (wbits 2) must be dense, got sparsity {n}:{m}")
    if op.kind != "qlinear":
        return
    ternary = a.get("ternary", False)
    if not isinstance(ternary, bool) or ternary != (bits == 2):
        _fail(name, op, f"attribute 'ternary' ({ternary!r}) must be True exactly when wbits is "
                        f"2 (wbits {bits})")
    if ternary:
        if w.size and (w.min() < -1 or w.max() > 1):
            _fail(name, op, "ternary weight values outside {-1, 0, 1}")
        ws = a.get("w_scale")
        if not isinstance(ws, np.ndarray) or ws.shape != (w.shape[0],) or not np.all(ws > 0):
            _fail(name, op, f"a ternary layer needs w_scale: {w.shape[0]} positive scales")
        for key in ("w4", "w4_scale"):
            if key in a:
                _fail(name, op, f"attribute '{key}' belongs to int4 layers only (wbits is 2)")
        return
    if bits == 8:
        for key in ("w4", "w4_scale"):
            if key in a:
                _fail(name, op, f"attribute '{key}' belongs to int4 layers only (wbits is 8)")
        return
    rows, k = w.shape
    q = _check_array(name, op, "w4", np.int8, (rows, k))
    s = _check_array(name, op, "w4_scale", np.uint8, (rows, ceil_div(k, g4.GROUP)))
    if q.size and (q.min() < g4.Q_MIN or q.max() > g4.Q_MAX):
        _fail(name, op, f"w4 codes outside [{g4.Q_MIN}, {g4.Q_MAX}]")
    if s.size and (s.min() < 1 or s.max() > g4.S_MAX):
        _fail(name, op, f"w4_scale outside [1, {g4.S_MAX}]")
    if not np.array_equal(w, g4.dequantize_int4(q, s)):
        _fail(name, op, "weight differs from dequantize_int4(w4, w4_scale)")


def _check_type(name: str, op: Op, level: str):
    t = op.out
    if not isinstance(t, TensorType):
        _fail(name, op, "out must be a TensorType")
    if any((not _is_int(d)) or d < 1 for d in t.shape):
        _fail(name, op, f"shape {list(t.shape)} must have positive dimensions")
    if level == "float":
        if t.dtype != "f32":
            _fail(name, op, f"float-level tensor has dtype {t.dtype}, expected f32")
    else:
        if t.dtype != "i8":
            _fail(name, op, f"quantized-level tensor has dtype {t.dtype}, expected i8")
        if t.scale is None or not (t.scale > 0 and math.isfinite(t.scale)):
            _fail(name, op, f"i8 tensor needs a positive finite scale, got {t.scale}")
        if len(t.shape) == 0:
            _fail(name, op, "i8 tensors need at least one dimension (rows x features view)")


def _check_node(graph: Graph, name: str, op: Op, level: str):
    ins = [graph.nodes[i]["op"].out for i in op.inputs]
    t = op.out
    a = op.attrs
    if op.kind == "input":
        if name not in graph.graph["inputs"]:
            _fail(name, op, "input node is not listed in graph.graph['inputs']")
    elif op.kind == "output":
        if name not in graph.graph["outputs"]:
            _fail(name, op, "output node is not listed in graph.graph['outputs']")
        if t != ins[0]:
            _fail(name, op, f"output type {t} differs from its input's {ins[0]}")
        if level == "quant" and a.get("scale") != ins[0].scale:
            _fail(name, op, f"attribute scale {a.get('scale')} differs from the input scale "
                            f"{ins[0].scale}")
    elif op.kind == "relu":
        if t != ins[0]:
            _fail(name, op, f"relu must keep its input type {ins[0]}, got {t}")
    elif op.kind == "reshape":
        if math.prod(t.shape) != math.prod(ins[0].shape):
            _fail(name, op, f"reshape {list(ins[0].shape)} -> {list(t.shape)} changes the "
                            "element count")
        if (t.dtype, t.scale) != (ins[0].dtype, ins[0].scale):
            _fail(name, op, "reshape must keep dtype and scale")
    elif op.kind == "linear":
        w = a.get("weight")
        if not isinstance(w, np.ndarray) or w.ndim != 2:
            _fail(name, op, "attribute 'weight' must be a 2-D array [N, K]")
        n, k = w.shape
        _check_array(name, op, "weight", np.float32, (n, k))
        _check_weight_format(name, op, w)
        if a.get("bias") is not None:
            _check_array(name, op, "bias", np.float32, (n,))
        if ins[0].shape[-1] != k:
            _fail(name, op, f"input features {ins[0].shape[-1]} != weight K {k}")
        if t.shape != ins[0].shape[:-1] + (n,):
            _fail(name, op, f"output shape {list(t.shape)} != {list(ins[0].shape[:-1] + (n,))}")
    elif op.kind in ("add", "qadd"):
        if not (ins[0].shape == ins[1].shape == t.shape):
            _fail(name, op, f"operand shapes {list(ins[0].shape)}, {list(ins[1].shape)} and "
                            f"output {list(t.shape)} must be equal")
        if op.kind == "qadd":
            _check_u16(name, op, "a_mult", a.get("a_mult"))
            _check_u16(name, op, "b_mult", a.get("b_mult"))
            _check_shift(name, op, a.get("shift"))
            if not isinstance(a.get("relu"), bool):
                _fail(name, op, "attribute 'relu' must be a bool")
    elif op.kind == "qlinear":
        w = a.get("weight")
        if not isinstance(w, np.ndarray) or w.ndim != 2:
            _fail(name, op, "attribute 'weight' must be a 2-D array [N, K]")
        n, k = w.shape
        _check_array(name, op, "weight", np.int8, (n, k))
        _check_weight_format(name, op, w)
        bias = _check_array(name, op, "bias", np.int32, (n,))
        mult = _check_array(name, op, "mult", np.int64, (n,))
        if mult.size and (mult.min() < 0 or mult.max() > g8.MULT_MAX):
            _fail(name, op, f"mult outside the u16 range [0, {g8.MULT_MAX}]")
        _check_shift(name, op, a.get("shift"))
        if not isinstance(a.get("relu"), bool):
            _fail(name, op, "attribute 'relu' must be a bool")
        _check_u16(name, op, "res_mult", a.get("res_mult"))
        if len(op.inputs) == 1 and a["res_mult"] != 0:
            _fail(name, op, "res_mult must be 0 without a residual input")
        if len(op.inputs) == 2 and ins[1].shape != t.shape:
            _fail(name, op, f"residual shape {list(ins[1].shape)} != output {list(t.shape)}")
        # Ternary: |acc| <= K * 128 (weights +-1), the int32 bound of the TLMM accumulator;
        # bias is added to acc * m in the epilogue, so it is not part of the accumulator.
        bound = k * 128 * (1 if a.get("ternary") else 128) + (
            0 if a.get("ternary") or not n else int(np.abs(bias.astype(np.int64)).max()))
        if bound >= ACC_LIMIT:
            _fail(name, op, f"int32 accumulator bound K*128*128 + max|bias| = {bound} "
                            f"reaches 2^31 (K={k})")
        if ins[0].shape[-1] != k:
            _fail(name, op, f"input features {ins[0].shape[-1]} != weight K {k}")
        if t.shape != ins[0].shape[:-1] + (n,):
            _fail(name, op, f"output shape {list(t.shape)} != {list(ins[0].shape[:-1] + (n,))}")


def _check_tiles(graph: Graph, target: dict):
    L, P = target["chain_len"], target["chains"]
    for name in graph.nodes:
        op = graph.nodes[name]["op"]
        if op.kind != "qlinear":
            continue
        if op.tile is None:
            _fail(name, op, "no tile info after tiling")
        n, k = op.attrs["weight"].shape
        want = (ceil_div(k, L), ceil_div(n, P), ceil_div(n, L))
        have = (op.tile.k_words, op.tile.n_tiles, op.tile.out_words)
        if have != want:
            _fail(name, op, f"tile (k_words, n_tiles, out_words) = {have}, expected {want} "
                            f"for K={k}, N={n}, P={P}, L={L}")


def _check_schedule(graph: Graph, sched):
    if sorted(sched) != sorted(graph.nodes) or len(set(sched)) != len(sched):
        raise SpecError("schedule must list every node exactly once")
    pos = {n: i for i, n in enumerate(sched)}
    for name in sched:
        op = graph.nodes[name]["op"]
        for i in op.inputs:
            if pos[i] > pos[name]:
                _fail(name, op, f"scheduled before its input '{i}'")


def alias_root(graph: Graph, name: str) -> str:
    """The node whose allocation ``name`` uses: outputs and reshapes share their input's."""
    op = graph.nodes[name]["op"]
    while op.kind in ("output", "reshape") and op.mem is not None:
        src = graph.nodes[op.inputs[0]]["op"]
        if src.mem is None or src.mem.addr != op.mem.addr or src.mem.span != op.mem.span:
            break
        name, op = op.inputs[0], src
    return name


def live_ranges(graph: Graph) -> dict[str, tuple[int, int]]:
    """Inclusive (first, last) schedule step during which each allocation root must be kept.

    Inputs are live from step 0 (the program LOADs them all first), outputs until the end (it
    STOREs them all last); an op's output and its inputs are live at the same step, so they
    never share space.
    """
    sched = graph.graph["schedule"]
    end = len(sched)
    pos = {n: i for i, n in enumerate(sched)}
    ranges: dict[str, list[int]] = {}
    for name in sched:
        op = graph.nodes[name]["op"]
        if op.out.dtype != "i8":
            continue
        root = alias_root(graph, name)
        first = 0 if op.kind == "input" else pos[name]
        last = end if op.kind == "output" else pos[name]
        for user in graph.successors(name):
            last = max(last, pos[user])
        r = ranges.setdefault(root, [first, last])
        r[0], r[1] = min(r[0], first), max(r[1], last)
    return {k: (v[0], v[1]) for k, v in ranges.items()}


def _check_memory(graph: Graph, target: dict):
    L, depth = target["chain_len"], target["act_depth"]
    align = max(1, target["beat_bytes"] // L)
    for name in graph.graph["schedule"]:
        op = graph.nodes[name]["op"]
        if op.out.dtype != "i8":
            continue
        m = op.mem
        if m is None:
            _fail(name, op, "i8 tensor has no activation-buffer allocation after memory_plan")
        rows, feats = rows_features(op.out.shape)
        if (m.rows, m.words) != (rows, ceil_div(feats, L)):
            _fail(name, op, f"mem rows/words ({m.rows}, {m.words}) do not match shape "
                            f"{list(op.out.shape)} (expected ({rows}, {ceil_div(feats, L)}))")
        if m.span < m.rows * m.words or m.span % align or m.addr % align:
            _fail(name, op, f"allocation [{m.addr}, +{m.span}) is not whole super-beats "
                            f"({align} words) holding {m.rows}x{m.words} words")
        if m.addr < 0 or m.addr + m.span > depth:
            _fail(name, op, f"allocation [{m.addr}, {m.addr + m.span}) is outside the "
                            f"activation buffer of {depth} words")
    ranges = live_ranges(graph)
    roots = sorted(ranges, key=lambda r: ranges[r])
    for i, r1 in enumerate(roots):
        m1 = graph.nodes[r1]["op"].mem
        for r2 in roots[i + 1:]:
            if ranges[r2][0] > ranges[r1][1]:
                break
            m2 = graph.nodes[r2]["op"].mem
            if m1.addr < m2.addr + m2.span and m2.addr < m1.addr + m1.span:
                raise SpecError(f"node '{r2}': allocation [{m2.addr}, {m2.addr + m2.span}) "
                                f"overlaps '{r1}' [{m1.addr}, {m1.addr + m1.span}) while both "
                                "are live")


def check(graph: Graph) -> Graph:
    """Check every rule of the IR spec; return the graph unchanged so calls can be chained.

    Raises
    ------
    SpecError
        With the node name and the broken rule.
    """
    meta = graph.graph
    for key in ("name", "inputs", "outputs"):
        if key not in meta:
            raise SpecError(f"graph has no '{key}' entry in graph.graph")
    for name in graph.nodes:
        op = graph.nodes[name].get("op")
        if not isinstance(op, Op):
            _fail(name, None, "node has no Op record in its 'op' attribute")
        if op.kind not in OP_KINDS:
            _fail(name, op, f"unknown op kind '{op.kind}' (known: {', '.join(OP_KINDS)})")
        if len(op.inputs) not in ARITY[op.kind]:
            _fail(name, op, f"takes {' or '.join(map(str, ARITY[op.kind]))} inputs, "
                            f"got {len(op.inputs)}")
        for i in op.inputs:
            if i not in graph:
                _fail(name, op, f"input '{i}' does not exist")
        if set(graph.predecessors(name)) != set(op.inputs):
            _fail(name, op, f"graph edges from {sorted(graph.predecessors(name))} do not match "
                            f"op inputs {list(op.inputs)}")
    for key in ("inputs", "outputs"):
        for n in meta[key]:
            if n not in graph:
                raise SpecError(f"graph {key} lists '{n}', which is not a node")
            want = key[:-1]
            if graph.nodes[n]["op"].kind != want:
                _fail(n, graph.nodes[n]["op"], f"listed in graph {key} but is not an {want} node")
    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        raise SpecError(f"node '{cycle[0][0]}': graph has a cycle {[e[0] for e in cycle]}")
    kinds = {graph.nodes[n]["op"].kind for n in graph.nodes}
    level = "quant" if kinds & {"qlinear", "qadd"} or any(
        graph.nodes[n]["op"].out.dtype == "i8" for n in graph.nodes) else "float"
    allowed = QUANT_KINDS if level == "quant" else FLOAT_KINDS
    for name in nx.lexicographical_topological_sort(graph, key=str):
        op = graph.nodes[name]["op"]
        if op.kind not in allowed:
            _fail(name, op, f"op kind '{op.kind}' does not belong in a {level}-level graph")
        _check_type(name, op, level)
        _check_node(graph, name, op, level)
        if op.kind != "qlinear" and op.tile is not None:
            _fail(name, op, "only qlinear carries tile info")
    target = meta.get("target")
    if target is not None:
        _check_tiles(graph, target)
    if meta.get("schedule") is not None:
        _check_schedule(graph, meta["schedule"])
    if meta.get("act_words_used") is not None:
        if target is None or meta.get("schedule") is None:
            raise SpecError("graph has a memory plan but no tile target or schedule")
        _check_memory(graph, target)
    return graph
