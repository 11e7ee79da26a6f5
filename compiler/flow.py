"""The compiler flow: a visible, ordered list of named steps, each a pass ``Graph -> Graph``.

The spec check runs on the input and after every step. Each intermediate can be saved
(``<save_dir>/<nn>_<step>.json`` + ``.npz``), and a flow can start from any saved
intermediate: a graph remembers the last step that produced it (``graph.graph['step']``) and
:func:`run_flow` continues after it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import passes, spec
from .errors import CompileError
from .ir import Graph, save_graph
from .passes import TileTarget


@dataclass(frozen=True)
class FlowOptions:
    """What the steps need besides the graph.

    Parameters
    ----------
    target : TileTarget
        Accelerator sizes for ``tile`` and ``memory_plan``.
    calib : ndarray or mapping, optional
        Calibration input for ``quantize`` (needed only when that step runs).
    sparsity : str
        For ``sparsify``: ``"auto"`` (detect N:M already in the weights, the default),
        ``"dense"`` or ``"N:M"`` (magnitude-prune every linear to it), see
        :func:`passes.parse_sparsity`.
    weights : str
        For ``precision``: ``"int8"`` (default), ``"int4"``, ``"mixed"`` (the rule in
        :func:`passes.precision`) or ``"ternary"`` (BitNet b1.58 weights on the TLMM engine).

    Raises
    ------
    CompileError
        An unknown ``sparsity`` or ``weights`` value (checked here, before any step runs).
    """

    target: TileTarget
    calib: Any = None
    sparsity: str = "auto"
    weights: str = "int8"

    def __post_init__(self):
        try:
            passes.parse_sparsity(self.sparsity)
        except CompileError as e:
            raise CompileError(f"sparsity '{self.sparsity}': {e}; use "
                               f"{passes.SPARSITY_CHOICES}") from None
        if self.weights not in passes.WEIGHT_CHOICES:
            raise CompileError(f"weights '{self.weights}': use "
                               f"{', '.join(passes.WEIGHT_CHOICES)}")


def _quantize(graph: Graph, opts: FlowOptions) -> Graph:
    if opts.calib is None:
        raise CompileError("the quantize step needs calibration data (FlowOptions.calib)")
    return passes.quantize(graph, opts.calib)


#: The flow, in order. Each entry is (step name, function(graph, options) -> graph).
STEPS: list[tuple[str, Callable[[Graph, FlowOptions], Graph]]] = [
    ("sparsify", lambda g, o: passes.sparsify(g, o.sparsity)),
    ("precision", lambda g, o: passes.precision(g, o.weights)),
    ("quantize", _quantize),
    ("fuse", lambda g, o: passes.fuse(g)),
    ("tile", lambda g, o: passes.tile(g, o.target)),
    ("schedule", lambda g, o: passes.schedule(g)),
    ("memory_plan", lambda g, o: passes.memory_plan(g, o.target)),
]

STEP_NAMES = ["float"] + [name for name, _ in STEPS]


def intermediate_path(save_dir: str | os.PathLike, step: str) -> Path:
    """Where :func:`run_flow` saves the graph produced by ``step`` (``'float'`` = frontend)."""
    return Path(save_dir) / f"{STEP_NAMES.index(step):02d}_{step}.json"


def run_flow(graph: Graph, options: FlowOptions, *, save_dir: str | os.PathLike | None = None,
             start_after: str | None = None, stop_after: str | None = None,
             log: Callable[[str], None] | None = None) -> Graph:
    """Run the steps of :data:`STEPS` on ``graph``, checking the spec after each.

    Parameters
    ----------
    graph : networkx.DiGraph
        The float IR from the frontend, or a saved intermediate (see :func:`ir.load_graph`).
    options : FlowOptions
    save_dir : path-like, optional
        Save the input graph (when it is the float IR) and each step's output there.
    start_after : str, optional
        Name of the step that produced ``graph``; default ``graph.graph['step']``.
    stop_after : str, optional
        Last step to run; default the last of :data:`STEPS`.
    log : callable, optional
        Called with one line per finished step.

    Returns
    -------
    networkx.DiGraph
        The graph after ``stop_after`` (by default: sparsity and weight precision chosen,
        quantized, fused, tiled, scheduled and memory-planned, ready for the mapper).
    """
    start = start_after or graph.graph.get("step", "float")
    stop = stop_after or STEPS[-1][0]
    for which, s in (("start_after", start), ("stop_after", stop)):
        if s not in STEP_NAMES:
            raise CompileError(f"{which}: unknown step '{s}' (steps: {', '.join(STEP_NAMES)})")
    first, last = STEP_NAMES.index(start), STEP_NAMES.index(stop)
    spec.check(graph)
    if save_dir is not None and start == "float":
        save_graph(graph, intermediate_path(save_dir, "float"))
    for name, step in STEPS[first:last]:
        graph = step(graph, options)
        graph.graph["step"] = name
        spec.check(graph)
        if save_dir is not None:
            save_graph(graph, intermediate_path(save_dir, name))
        if log is not None:
            log(f"{name}: {graph.number_of_nodes()} nodes")
    return graph
