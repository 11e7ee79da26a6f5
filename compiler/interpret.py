"""Reference interpreter: executes any IR graph (float or quantized, before or after any pass).

The integer ops call the golden definitions (``hwflow.golden.int8``; a ternary
``qlinear`` also ``hwflow.golden.ternary``), so a quantized graph run
here gives exactly the int8 tensors the accelerator must produce. Tile and memory information is
layout only and does not change any value, which is what lets every pass be tested by running
the graph before and after it.
"""

from __future__ import annotations

from collections.abc import Mapping

import networkx as nx
import numpy as np

from hwflow.golden import int8 as g8
from hwflow.golden import ternary as gt

from .errors import CompileError
from .ir import Graph, op_of


def _order(graph: Graph) -> list[str]:
    sched = graph.graph.get("schedule")
    if sched:
        return list(sched)
    return list(nx.lexicographical_topological_sort(graph, key=list(graph.nodes).index))


def evaluate(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Value of every node: float64 at the float level, int8 at the quantized level.

    ``output`` nodes hold the host-side result (float64; dequantized at the quantized level).
    """
    values: dict[str, np.ndarray] = {}
    missing = [n for n in graph.graph["inputs"] if n not in inputs]
    if missing:
        raise CompileError(f"no value given for graph input(s) {', '.join(missing)}")
    for name in _order(graph):
        op = op_of(graph, name)
        a = op.attrs
        args = [values[i] for i in op.inputs]
        quant = op.out.dtype == "i8"
        if op.kind == "input":
            x = np.asarray(inputs[name], dtype=np.float64)
            if x.shape != op.out.shape:
                raise CompileError(f"input '{name}' has shape {list(x.shape)}, the graph expects "
                                   f"{list(op.out.shape)}")
            v = g8.quantize(x, op.out.scale) if quant else x
        elif op.kind == "output":
            v = g8.dequantize(args[0], a["scale"]) if args[0].dtype == np.int8 else args[0]
        elif op.kind == "relu":
            v = np.maximum(args[0], 0).astype(args[0].dtype)
        elif op.kind == "reshape":
            v = args[0].reshape(op.out.shape)
        elif op.kind == "linear":
            w = np.asarray(a["weight"], dtype=np.float64)
            v = args[0] @ w.T
            if a.get("bias") is not None:
                v = v + np.asarray(a["bias"], dtype=np.float64)
        elif op.kind == "add":
            v = args[0] + args[1]
        elif op.kind == "qlinear":
            if a.get("ternary"):
                # TLMM: per-token absmax quantization, ternary sums, epilogue on acc * m.
                xq, m = gt.absmax_quant(args[0])
                acc = g8.matmul(xq, a["weight"]) * m[..., None]
            else:
                acc = g8.matmul(args[0], a["weight"])
            res = args[1] if len(args) > 1 else None
            v = g8.requantize(acc, a["bias"], a["mult"], a["shift"], a["relu"], res,
                              a["res_mult"])
        elif op.kind == "qadd":
            v = g8.residual_add(args[0], args[1], a["a_mult"], a["b_mult"], a["shift"],
                                a["relu"])
        else:
            raise CompileError(f"node '{name}': the interpreter has no rule for op '{op.kind}'")
        values[name] = v
    return values


def run(graph: Graph, inputs: Mapping[str, np.ndarray], *, intermediates: bool = False):
    """Execute ``graph`` on float inputs and return its float outputs.

    Parameters
    ----------
    graph : networkx.DiGraph
        Any IR graph. At the quantized level each ``input`` quantizes with its scale
        (``golden.quantize``) and each ``output`` dequantizes with its ``scale`` attribute.
    inputs : mapping of str to ndarray
        Float value of every graph input, by input node name.
    intermediates : bool
        Also return the value of every node that produces an int8 tensor.

    Returns
    -------
    dict of str to ndarray
        Output node name -> float64 array (in ``graph.graph['outputs']`` order); with
        ``intermediates=True`` a pair ``(outputs, int8_tensors)`` where ``int8_tensors`` maps
        every i8 node name (inputs, qlinear, qadd, relu, reshape) to its int8 array.
    """
    values = evaluate(graph, inputs)
    outs = {n: values[n] for n in graph.graph["outputs"]}
    if not intermediates:
        return outs
    tensors = {n: v for n, v in values.items() if op_of(graph, n).out.dtype == "i8"
               and op_of(graph, n).kind != "output"}
    return outs, tensors
