"""Spec check: the rules every IR obeys. The graph IR (MLPs) is checked by :func:`check` after
every pass, the decoder IR by :func:`check_decoder` after quantization and when read back; both
hold their integer linears to one rule set (:func:`linear_rules`).

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
from hwflow.golden import llm as gl
from hwflow.golden import sparse as gs

from .decoder_graph import GAMMA_SLOTS
from .errors import SpecError
from .ir import Graph
from .ops import (
    DECODER_KINDS,
    FLOAT_KINDS,
    OP_KINDS,
    QUANT_KINDS,
    Op,
    TensorType,
    ceil_div,
    rows_features,
)

#: Inputs of every op kind (both levels of the MLP graph, and the decoder graph's kinds).
ARITY = {"input": (0,), "output": (1,), "relu": (1,), "reshape": (1,), "linear": (1,),
         "add": (2,), "qlinear": (1, 2), "qadd": (2,), "embed": (0,), "rope_table": (0,),
         "gamma_codes": (0,), "rmsnorm": (1,), "absquant": (1,), "rope": (2,),
         "attention": (3,), "silu_mul": (2,), "lm_head": (1,), "conv": (1,), "scan": (4,),
         "hadamard": (1,)}

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
        ws = a.get("w_scale")
        if not isinstance(ws, np.ndarray) or ws.shape != (w.shape[0],) or not np.all(ws > 0):
            _fail(name, op, f"a ternary layer needs w_scale: {w.shape[0]} positive scales")
    elif bits == 8:
        for key in ("w4", "w4_scale"):
            if key in a:
                _fail(name, op, f"attribute '{key}' belongs to int4 layers only (wbits is 8)")
    else:
        rows, k = w.shape
        _check_array(name, op, "w4", np.int8, (rows, k))
        _check_array(name, op, "w4_scale", np.uint8, (rows, ceil_div(k, g4.GROUP)))


def linear_rules(w, bias, mult, shift, res_mult, *, ternary: bool = False, w4=None,
                 w4_scale=None):
    """The broken rules of an integer linear, one message each: the arrays' dtypes and shapes
    (``w`` int8 ``[N, K]``, ``bias`` int32 and ``mult`` int64 ``[N]``), the epilogue's fields
    (``mult`` and ``res_mult`` u16, ``shift`` in ``[0, SHIFT_MAX]``), the weight format
    (ternary values in {-1, 0, 1}; int4: ``w4`` codes and ``w4_scale`` group scales of which
    ``w`` is exactly ``dequantize_int4``; not both) and the int32 accumulator bound.

    One definition for every model family: the graph IR's ``qlinear`` nodes and the decoder
    IR's ``QLinear`` (:func:`check_decoder`) are held to it.
    """
    if not isinstance(w, np.ndarray) or w.ndim != 2 or w.dtype != np.int8:
        yield f"weight must be a 2-D int8 array [N, K], got {_describe(w)}"
        return
    n, k = w.shape
    for key, v, dtype in (("bias", bias, np.int32), ("mult", mult, np.int64)):
        if not isinstance(v, np.ndarray) or v.dtype != dtype or v.shape != (n,):
            yield f"{key} must be {np.dtype(dtype).name} [{n}], got {_describe(v)}"
            return
    if mult.size and (mult.min() < 0 or mult.max() > g8.MULT_MAX):
        yield f"mult outside the u16 range [0, {g8.MULT_MAX}]"
    if not _is_int(shift) or not 0 <= shift <= g8.SHIFT_MAX:
        yield f"shift {shift!r} outside [0, {g8.SHIFT_MAX}]"
    if not _is_int(res_mult) or not 0 <= res_mult <= g8.MULT_MAX:
        yield f"res_mult {res_mult!r} outside the u16 range [0, {g8.MULT_MAX}]"
    if ternary:
        if w4 is not None or w4_scale is not None:
            yield "a ternary weight has no int4 codes (w4, w4_scale)"
        if w.size and (w.min() < -1 or w.max() > 1):
            yield "ternary weight values outside {-1, 0, 1}"
    elif (w4 is None) != (w4_scale is None):
        yield "an int4 weight needs both its codes (w4) and its group scales (w4_scale)"
    elif w4 is not None:
        groups = ceil_div(k, g4.GROUP)
        if not isinstance(w4, np.ndarray) or w4.dtype != np.int8 or w4.shape != (n, k):
            yield f"w4 must be int8 [{n}, {k}], got {_describe(w4)}"
        elif (not isinstance(w4_scale, np.ndarray) or w4_scale.dtype != np.uint8
              or w4_scale.shape != (n, groups)):
            yield f"w4_scale must be uint8 [{n}, {groups}], got {_describe(w4_scale)}"
        elif w4.size and (w4.min() < g4.Q_MIN or w4.max() > g4.Q_MAX):
            yield f"w4 codes outside [{g4.Q_MIN}, {g4.Q_MAX}]"
        elif w4_scale.size and (w4_scale.min() < 1 or w4_scale.max() > g4.S_MAX):
            yield f"w4_scale outside [1, {g4.S_MAX}]"
        elif not np.array_equal(w, g4.dequantize_int4(w4, w4_scale)):
            yield "weight differs from dequantize_int4(w4, w4_scale)"
    # Ternary: |acc| <= K * 128 (weights +-1), the int32 bound of the TLMM accumulator;
    # bias is added to acc * m in the epilogue, so it is not part of the accumulator.
    bound = k * 128 * (1 if ternary else 128) + (
        0 if ternary or not n else int(np.abs(bias.astype(np.int64)).max()))
    if bound >= ACC_LIMIT:
        yield (f"int32 accumulator bound K*128*128 + max|bias| = {bound} reaches 2^31 "
               f"(K={k})")


def _describe(a) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype.name} {list(a.shape)}"
    return type(a).__name__


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
        _check_array(name, op, "bias", np.int32, (n,))
        _check_array(name, op, "mult", np.int64, (n,))
        if not isinstance(a.get("relu"), bool):
            _fail(name, op, "attribute 'relu' must be a bool")
        for rule in linear_rules(w, a["bias"], a["mult"], a.get("shift"), a.get("res_mult"),
                                 ternary=a.get("ternary", False), w4=a.get("w4"),
                                 w4_scale=a.get("w4_scale")):
            _fail(name, op, rule)
        if len(op.inputs) == 1 and a["res_mult"] != 0:
            _fail(name, op, "res_mult must be 0 without a residual input")
        if len(op.inputs) == 2 and ins[1].shape != t.shape:
            _fail(name, op, f"residual shape {list(ins[1].shape)} != output {list(t.shape)}")
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


def _check_nodes(graph: Graph, kinds, refuse: str) -> None:
    """Every node holds an :class:`Op` of one of ``kinds`` (else ``refuse`` with the kind)
    with its number of inputs (:data:`ARITY`), each input exists and the edges match."""
    for name in graph.nodes:
        op = graph.nodes[name].get("op")
        if not isinstance(op, Op):
            _fail(name, None, "node has no Op record in its 'op' attribute")
        if op.kind not in kinds:
            _fail(name, op, refuse.format(op.kind))
        if len(op.inputs) not in ARITY[op.kind]:
            _fail(name, op, f"takes {' or '.join(map(str, ARITY[op.kind]))} inputs, "
                            f"got {len(op.inputs)}")
        for i in op.inputs:
            if i not in graph:
                _fail(name, op, f"input '{i}' does not exist")
        if set(graph.predecessors(name)) != set(op.inputs):
            _fail(name, op, f"graph edges from {sorted(graph.predecessors(name))} do not match "
                            f"op inputs {list(op.inputs)}")


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
    _check_nodes(graph, OP_KINDS, "unknown op kind '{}' (known: " + ", ".join(OP_KINDS) + ")")
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


# -- the decoder IR ----------------------------------------------------------------------------

#: Which linears read the activation a gamma's codes scale (ABSQUANT applies them before a
#: ternary linear, so the linears must be ternary).
_GAMMA_READERS = {"attn_gamma": ("q", "k", "v"), "attn_sub_gamma": ("o",),
                  "mlp_gamma": ("gate", "up"), "mlp_sub_gamma": ("down",)}


def _decoder_fail(where: str, rule: str):
    raise SpecError(f"{where}: {rule}")


def _check_params(where: str, key: str, v, fields: tuple):
    """A parameter tuple of ints, each in its field's range (``fields``: (name, max) pairs)."""
    if not isinstance(v, tuple) or len(v) != len(fields):
        _decoder_fail(where, f"'{key}' must be a tuple of {len(fields)} ints "
                             f"({', '.join(f for f, _ in fields)}), got {v!r}")
    for (field, top), x in zip(fields, v, strict=True):
        if not _is_int(x) or not 0 <= x <= top:
            _decoder_fail(where, f"'{key}' {field} {x!r} outside [0, {top}]")


_NORM = (("eps", 2**32 - 1), ("mult", g8.MULT_MAX), ("shift", g8.SHIFT_MAX))
_ATTN = (("smul", g8.MULT_MAX), ("sshift", g8.SHIFT_MAX), ("omul", g8.MULT_MAX),
         ("oshift", g8.SHIFT_MAX))
_GATE = (("mult", g8.MULT_MAX), ("shift", g8.SHIFT_MAX))
_ADD = (("a_mult", g8.MULT_MAX), ("b_mult", g8.MULT_MAX), ("shift", g8.SHIFT_MAX))


def _check_codes(where: str, key: str, v, n: int):
    if not isinstance(v, np.ndarray) or v.dtype != np.int8 or v.shape != (n,):
        _decoder_fail(where, f"'{key}' must be int8 gamma codes [{n}], got {_describe(v)}")


def _check_qlinear(where: str, lin, dims: tuple, fused_residual: bool):
    from .decoder import QLinear

    if not isinstance(lin, QLinear):
        _decoder_fail(where, f"must be a QLinear, got {type(lin).__name__}")
    if not isinstance(lin.ternary, bool):
        _decoder_fail(where, f"'ternary' must be a bool, got {lin.ternary!r}")
    for rule in linear_rules(lin.weight, lin.bias, lin.mult, lin.shift, lin.res_mult,
                             ternary=lin.ternary, w4=lin.w4, w4_scale=lin.w4_scale):
        _decoder_fail(where, rule)
    if lin.weight.shape != dims:
        _decoder_fail(where, f"weight [out, in] is {list(lin.weight.shape)}, the decoder's "
                             f"shape needs {list(dims)}")
    if not fused_residual and lin.res_mult != 0:
        _decoder_fail(where, "res_mult must be 0: the residual is added after it (its add's "
                             "parameters are set) or it has no residual")


def _check_layer(name: str, i: int, ly, s):
    from .decoder import QLayer

    where = f"decoder '{name}' layer {i}"
    if not isinstance(ly, QLayer):
        _decoder_fail(where, f"must be a QLayer, got {type(ly).__name__}")
    if ly.act not in gl.GATE_LUTS:
        _decoder_fail(where, f"gate activation '{ly.act}' is not one of "
                             f"{', '.join(gl.GATE_LUTS)}")
    dims = s.linear_dims()
    for key, lin in (("q", ly.q), ("k", ly.k), ("v", ly.v), ("gate", ly.gate), ("up", ly.up)):
        _check_qlinear(f"{where} linear '{key}'", lin, dims[key], False)
    _check_qlinear(f"{where} linear 'o'", ly.o, dims["o"], ly.attn_add is None)
    _check_qlinear(f"{where} linear 'down'", ly.down, dims["down"], ly.mlp_add is None)
    for key in ("attn_norm", "mlp_norm", "attn_sub_norm", "mlp_sub_norm", "q_norm", "k_norm",
                "post_attn_norm", "post_mlp_norm"):
        v = getattr(ly, key)
        if v is not None or key in ("attn_norm", "mlp_norm"):
            _check_params(where, key, v, _NORM)
    _check_params(where, "attn", ly.attn, _ATTN)
    _check_params(where, "silu", ly.silu, _GATE)
    for key in ("attn_add", "mlp_add"):
        if getattr(ly, key) is not None:
            _check_params(where, key, getattr(ly, key), _ADD)
    if not _is_int(ly.attn_cap) or not 0 <= ly.attn_cap < 1 << 10:
        _decoder_fail(where, f"attention cap code {ly.attn_cap!r} outside [0, 1023]")
    widths = {"attn_gamma": s.hidden, "attn_sub_gamma": dims["o"][1], "mlp_gamma": s.hidden,
              "mlp_sub_gamma": s.intermediate}
    for key, readers in _GAMMA_READERS.items():
        codes = getattr(ly, key)
        if codes is None:
            continue
        _check_codes(where, key, codes, widths[key])
        for r in readers:
            if not getattr(ly, r).ternary:
                _decoder_fail(where, f"'{key}' codes are applied by ABSQUANT before a ternary "
                                     f"linear, but linear '{r}' is not ternary")
    for norm, gamma, n in (("q_norm", "q_norm_gamma", s.head_dim),
                           ("k_norm", "k_norm_gamma", s.head_dim),
                           ("post_attn_norm", "post_attn_gamma", s.hidden),
                           ("post_mlp_norm", "post_mlp_gamma", s.hidden)):
        if (getattr(ly, norm) is None) != (getattr(ly, gamma) is None):
            _decoder_fail(where, f"'{norm}' and its gamma codes '{gamma}' go together")
        if getattr(ly, gamma) is not None:
            _check_codes(where, gamma, getattr(ly, gamma), n)


def check_decoder(qd):
    """Check every rule of the decoder IR (a :class:`~hwflow.compiler.decoder.QDecoder`);
    return it unchanged so calls can be chained. The quantize pass ends with it, and a saved
    quantized decoder is checked as it is read back.

    The rules: the architecture numbers are consistent (heads a multiple of the KV heads,
    ``max_context`` within the model's positions); the embedding (int8 ``[vocab, hidden]``),
    the RoPE table (int16 ``[max_context, head_dim]``) and every linear have the shapes the
    architecture gives, and every linear the rules of the graph IR's ``qlinear``
    (:func:`linear_rules`: dtypes, u16 multipliers, shifts, the weight format, the int32
    accumulator); the norm, attention, gate and add parameters fit their fields; a linear whose
    residual add is unfused has no residual multiplier; gamma codes have their norm's width
    and, applied by ABSQUANT, feed ternary linears only.

    Raises
    ------
    SpecError
        Naming the decoder, the layer and linear, and the broken rule.
    """
    from .decoder import DecoderShape, QDecoder

    if not isinstance(qd, QDecoder):
        raise SpecError(f"decoder IR must be a QDecoder, got {type(qd).__name__}")
    where = f"decoder '{qd.name}'"
    s = qd.shape
    if not isinstance(s, DecoderShape):
        _decoder_fail(where, f"shape must be a DecoderShape, got {type(s).__name__}")
    for key in ("vocab", "hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate",
                "max_position"):
        if not _is_int(getattr(s, key)) or getattr(s, key) < 1:
            _decoder_fail(where, f"shape {key} {getattr(s, key)!r} must be a positive int")
    if s.heads % s.kv_heads:
        _decoder_fail(where, f"{s.heads} query heads are not a multiple of {s.kv_heads} KV heads")
    if not _is_int(qd.max_context) or not 1 <= qd.max_context <= s.max_position:
        _decoder_fail(where, f"max_context {qd.max_context!r} outside 1..{s.max_position}")
    for key, a, dtype, shape in (("embed", qd.embed, np.int8, (s.vocab, s.hidden)),
                                 ("rope", qd.rope, np.int16, (qd.max_context, s.head_dim))):
        if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape:
            _decoder_fail(where, f"'{key}' must be {np.dtype(dtype).name} {list(shape)}, got "
                                 f"{_describe(a)}")
    if len(qd.layers) != s.layers:
        _decoder_fail(where, f"{len(qd.layers)} layers, the shape says {s.layers}")
    for i, ly in enumerate(qd.layers):
        _check_layer(qd.name, i, ly, s)
    _check_params(where, "final_norm", qd.final_norm, _NORM)
    _check_qlinear(f"{where} linear 'lm_head'", qd.lm_head, (s.vocab, s.hidden), False)
    if qd.lm_head.ternary:
        _decoder_fail(where, "the LM head runs on the matrix engine: int8 or int4, not ternary")
    if qd.final_cap is not None:
        _check_params(where, "final_cap", qd.final_cap, _GATE)
    return qd


# -- the decoder graph -------------------------------------------------------------------------

#: The decoder's activation areas (``mapping.llm_lower.ActPlan``): the ones a tensor may be in.
DECODER_AREAS = ("x", "h", "q", "k", "v", "att", "gate", "up", "cs", "gamma", "logits",
                 "xin", "z", "dtr", "b", "c", "dt", "y")
#: Kinds that work in place: the output is in the area of the first input.
_IN_PLACE = ("absquant", "rope", "silu_mul", "conv", "hadamard")
_SCAN = (("bu_mult", g8.MULT_MAX), ("bu_shift", 63), ("y_mult", g8.MULT_MAX),
         ("y_shift", 63), ("d_shift", 63))


def _check_decoder_op(g: Graph, name: str, op: Op, arrays: bool):
    a, ins = op.attrs, [g.nodes[i]["op"] for i in op.inputs]
    t = op.out
    if (not isinstance(t, TensorType) or t.dtype != "i8" or len(t.shape) != 2 or t.shape[0] != 1
            or not _is_int(t.shape[1]) or t.shape[1] < 1):
        _fail(name, op, f"a decoder tensor is one i8 row [1, features], got {t}")
    area = a.get("area")
    if area not in DECODER_AREAS:
        _fail(name, op, f"area {area!r} is not one of the decoder's ({', '.join(DECODER_AREAS)})")
    feats = t.shape[1]
    if op.kind in _IN_PLACE or (op.kind == "rmsnorm" and a.get("heads")):
        if area != ins[0].attrs.get("area") or feats != ins[0].out.shape[1]:
            _fail(name, op, f"works in place: area and features must be its input's "
                            f"({ins[0].attrs.get('area')!r}, {ins[0].out.shape[1]})")
    if op.kind in ("qlinear", "qadd") and len(ins) == 2 and area != ins[1].attrs.get("area"):
        _fail(name, op, f"writes the residual stream in place: area must be "
                        f"{ins[1].attrs.get('area')!r}")
    if op.kind in ("embed", "rope_table"):
        table = a.get("table")
        dtype = np.int8 if op.kind == "embed" else np.int16
        if not isinstance(table, np.ndarray) or table.ndim != 2 or table.dtype != dtype:
            _fail(name, op, f"attribute 'table' must be a 2-D {np.dtype(dtype).name} array, got "
                            f"{_describe(table)}")
        if table.shape[1] * (2 if op.kind == "rope_table" else 1) != feats:
            _fail(name, op, f"table rows of {table.shape[1]} do not give its {feats} features")
    elif op.kind == "gamma_codes":
        slots = [k for k in a if k != "area"]
        if not slots or any(k not in GAMMA_SLOTS for k in slots):
            _fail(name, op, f"gamma slots {slots} must be some of {', '.join(GAMMA_SLOTS)}")
        for k in slots:
            if not isinstance(a[k], np.ndarray) or a[k].dtype != np.int8 or a[k].ndim != 1:
                _fail(name, op, f"gamma codes '{k}' must be a 1-D int8 array, got "
                                f"{_describe(a[k])}")
    elif op.kind in ("rmsnorm", "absquant"):
        if op.kind == "rmsnorm":
            _check_params(f"node '{name}' (rmsnorm)", "norm", (a.get("eps"), a.get("mult"),
                                                               a.get("shift")), _NORM)
            heads = a.get("heads")
            if not _is_int(heads) or heads < 0 or (heads and feats % heads):
                _fail(name, op, f"heads {heads!r} must be 0 or divide its {feats} features")
            if not isinstance(a.get("last_row"), bool):
                _fail(name, op, "attribute 'last_row' must be a bool")
        if a.get("gamma") not in ("",) + GAMMA_SLOTS:
            _fail(name, op, f"gamma {a.get('gamma')!r} is not a gamma slot")
    elif op.kind == "rope":
        heads = a.get("heads")
        if not _is_int(heads) or heads < 1 or feats % heads or (feats // heads) % 2:
            _fail(name, op, f"heads {heads!r} must split its {feats} features into heads of an "
                            "even size")
    elif op.kind == "attention":
        _check_params(f"node '{name}' (attention)", "attn",
                      tuple(a.get(k) for k in ("smul", "sshift", "omul", "oshift")), _ATTN)
        if feats != ins[0].out.shape[1]:
            _fail(name, op, f"output features {feats} != the query's {ins[0].out.shape[1]}")
        for key, top in (("window", 2**16 - 1), ("cap", 2**10 - 1), ("layer", 2**16 - 1)):
            if not _is_int(a.get(key)) or not 0 <= a[key] <= top:
                _fail(name, op, f"attribute '{key}' {a.get(key)!r} outside [0, {top}]")
    elif op.kind == "silu_mul":
        if a.get("act") not in gl.GATE_LUTS:
            _fail(name, op, f"gate activation {a.get('act')!r} is not one of "
                            f"{', '.join(gl.GATE_LUTS)}")
        _check_params(f"node '{name}' (silu_mul)", "gate", (a.get("mult"), a.get("shift")),
                      _GATE)
    elif op.kind == "conv":
        _check_params(f"node '{name}' (conv)", "silu", (a.get("silu_mult"), a.get("silu_shift")),
                      _GATE)
        w = a.get("weight")
        if not isinstance(w, np.ndarray) or w.ndim != 2 or w.shape[0] != feats or w.shape[1] < 2:
            _fail(name, op, f"taps must be [{feats}, d_conv >= 2], got {_describe(w)}")
    elif op.kind == "scan":
        _check_params(f"node '{name}' (scan)", "scan",
                      tuple(a.get(k) for k, _ in _SCAN), _SCAN)
        if [i.out.shape[1] for i in ins[:2]] != [feats, feats] or ins[2].out.shape != \
                ins[3].out.shape or np.shape(a.get("a_codes")) != (feats, ins[2].out.shape[1]):
            _fail(name, op, "u, dt and the output must have its channels, B and C the "
                            "states of its a_codes [channels, states]")
    elif op.kind == "hadamard":
        lgb = a.get("lgb")
        if not _is_int(lgb) or not 0 <= lgb <= 15 or feats % (1 << lgb) or \
                a.get("bits") not in (4, 8):
            _fail(name, op, f"block 2**{lgb!r} must divide its {feats} channels, bits be 4 or 8")
        _check_params(f"node '{name}' (hadamard)", "requant", (a.get("mult"), a.get("shift")),
                      _GATE)
    elif op.kind == "qadd":
        _check_params(f"node '{name}' (qadd)", "add",
                      (a.get("a_mult"), a.get("b_mult"), a.get("shift")), _ADD)
    if op.kind in ("qlinear", "lm_head"):
        w = a.get("weight")
        if not isinstance(w, np.ndarray) or w.ndim != 2:
            _fail(name, op, "attribute 'weight' must be a 2-D array [N, K]")
        if w.shape != (feats, ins[0].out.shape[1]):
            _fail(name, op, f"weight [out, in] is {list(w.shape)}, its input and output need "
                            f"{[feats, ins[0].out.shape[1]]}")
        if not isinstance(a.get("ternary"), bool) or a.get("relu") is not False:
            _fail(name, op, "attribute 'ternary' must be a bool and 'relu' False")
        if a["ternary"] != (ins[0].kind == "absquant"):
            _fail(name, op, "a ternary linear reads an absquant's output, an int8 one does not")
        if arrays:
            for rule in linear_rules(w, a.get("bias"), a.get("mult"), a.get("shift"),
                                     a.get("res_mult"), ternary=a["ternary"], w4=a.get("w4"),
                                     w4_scale=a.get("w4_scale")):
                _fail(name, op, rule)
        if len(ins) == 1 and a.get("res_mult") != 0:
            _fail(name, op, "res_mult must be 0 without a residual input")


def check_decoder_graph(g: Graph, arrays: bool = True) -> Graph:
    """Check every rule of a decoder graph (``compiler.decoder_graph``); return it unchanged.

    The rules: every op is a decoder-level kind with its number of inputs, each input exists
    and the edges match; ``schedule`` lists every node once, after its inputs; every tensor is
    one i8 row in one of the decoder's areas; in-place kinds (absquant, rope, silu_mul, a
    per-head rmsnorm) keep their input's area, and a linear or add with a residual writes the
    residual's; each kind's parameters fit their fields; tables and gamma codes have their
    dtypes; a ``qlinear`` or ``lm_head`` has the weight its input and output need, reads an
    ``absquant`` exactly when ternary and (``arrays``) obeys :func:`linear_rules`, the graph
    IR's ``qlinear`` rules. ``arrays=False`` skips the rules that read array values (a
    shape-only decoder's arrays are zero-stride placeholders).

    Raises
    ------
    SpecError
        Naming the node and the broken rule.
    """
    meta = g.graph
    for key in ("name", "shape", "max_context", "schedule", "outputs", "scales"):
        if key not in meta:
            raise SpecError(f"decoder graph has no '{key}' entry in graph.graph")
    _check_nodes(g, DECODER_KINDS, "op kind '{}' does not belong in a decoder graph ("
                 + ", ".join(sorted(DECODER_KINDS)) + ")")
    _check_schedule(g, meta["schedule"])
    for name in meta["schedule"]:
        _check_decoder_op(g, name, g.nodes[name]["op"], arrays)
    if meta["outputs"] != ["lm_head"] or g.nodes["lm_head"]["op"].kind != "lm_head":
        raise SpecError("a decoder graph's one output is its 'lm_head' node")
    return g
