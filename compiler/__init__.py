"""hwflow compiler: PyTorch model -> float IR -> quantized, fused, tiled, scheduled,
memory-planned IR for the mapper.

Typical use::

    from hwflow.compiler import load_model, run_flow, FlowOptions, TileTarget, run
    g = load_model("mlp.pt2")
    g = run_flow(g, FlowOptions(TileTarget(16, 16, 256, 4096, 256), calib=x))
    outs, int8 = run(g, {"x": x}, intermediates=True)
"""

from .errors import CompileError, FrontendError, SpecError, UnsupportedOpError
from .flow import STEPS, FlowOptions, intermediate_path, run_flow
from .frontend import from_exported_program, from_module, from_torchscript, load_model
from .interpret import evaluate, run
from .ir import load_graph, save_graph
from .ops import OP_KINDS, MemInfo, Op, TensorType, TileInfo
from .passes import TileTarget, fuse, memory_plan, quantize, schedule, tile
from .spec import check

__all__ = [
    "OP_KINDS", "STEPS", "CompileError", "FlowOptions", "FrontendError", "MemInfo", "Op",
    "SpecError", "TensorType", "TileInfo", "TileTarget", "UnsupportedOpError", "check",
    "evaluate", "from_exported_program", "from_module", "from_torchscript", "fuse",
    "intermediate_path", "load_graph", "load_model", "memory_plan", "quantize", "run",
    "run_flow", "save_graph", "schedule", "tile",
]
