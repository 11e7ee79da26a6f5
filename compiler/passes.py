"""Compiler passes: small named functions ``Graph -> Graph`` (the input graph is never modified).

In flow order (``compiler/flow.py``):

* :func:`quantize` -- float IR to W8A8 (int8 weights per output channel, static int8
  activation scales from a calibration sample);
* :func:`fuse` -- ReLU and residual adds into the matmul epilogue; leaves only
  ``input``/``qlinear``/``qadd``/``reshape``/``output``;
* :func:`tile` -- tile shapes for a matrix engine of P chains x L slices;
* :func:`schedule` -- a deterministic execution order;
* :func:`memory_plan` -- an address in the on-chip activation buffer for every int8 tensor.

Padding: layer sizes need not be multiples of the tile sizes. An activation row of F features
occupies ``ceil(F / L)`` words whose bytes past F are zero (MATMUL and VADD write those bytes as
0, inputs are packed with zeros), and weight tiles are zero past K and N. Zero activations times
zero weights add nothing to the int32 accumulators, so a padded layer computes exactly what the
unpadded one does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import networkx as nx
import numpy as np

from hwflow.golden import int8 as g8

from .errors import CompileError
from .interpret import evaluate
from .ir import Graph, copy_graph, op_of, replace_uses, set_op
from .ops import MemInfo, Op, TensorType, TileInfo, ceil_div, rows_features
from .spec import live_ranges


def _mark(graph: Graph, step: str) -> Graph:
    graph.graph["step"] = step
    return graph


# ------------------------------------------------------------------------------------ quantize

def _calib_inputs(graph: Graph, calib) -> dict[str, np.ndarray]:
    names = graph.graph["inputs"]
    if isinstance(calib, Mapping):
        return {n: np.asarray(calib[n], dtype=np.float64) for n in names}
    if len(names) != 1:
        raise CompileError(f"graph has {len(names)} inputs; pass calibration data as a dict "
                           f"{{name: array}} for {', '.join(names)}")
    return {names[0]: np.asarray(calib, dtype=np.float64)}


def _calib_batches(graph: Graph, calib) -> list[dict[str, np.ndarray]]:
    """Split a calibration sample with more (or fewer) rows than the graph's input into
    batches of the input's shape. The graph is compiled for a fixed row count; a calibration
    sample of any row count is covered by consecutive batches, the last one taking the final
    rows (overlapping the previous batch rather than padding, which would invent values)."""
    inputs = _calib_inputs(graph, calib)
    if len(inputs) != 1:
        return [inputs]
    (name, x), = inputs.items()
    shape = op_of(graph, name).out.shape
    if x.shape == shape or x.ndim != len(shape) or x.shape[1:] != shape[1:]:
        return [inputs]                  # the interpreter reports a real shape mismatch
    rows = shape[0]
    if x.shape[0] < rows:
        reps = -(-rows // x.shape[0])
        return [{name: np.concatenate([x] * reps)[:rows]}]
    starts = list(range(0, x.shape[0] - rows + 1, rows))
    if starts[-1] + rows < x.shape[0]:
        starts.append(x.shape[0] - rows)
    return [{name: x[s:s + rows]} for s in starts]


def _calib_absmax(graph: Graph, calib) -> dict[str, np.ndarray]:
    """Per node, the largest |value| over every calibration batch (what tensor_scale needs)."""
    peak: dict[str, np.ndarray] = {}
    for batch in _calib_batches(graph, calib):
        for name, v in evaluate(graph, batch).items():
            m = np.max(np.abs(v)) if np.size(v) else 0.0
            peak[name] = np.maximum(peak.get(name, 0.0), m)
    return {k: np.asarray([v]) for k, v in peak.items()}


def _requant_params(reals: np.ndarray, what: str) -> tuple[np.ndarray, int]:
    try:
        shift = g8.choose_shift(reals)
        return g8.quantize_multiplier(reals, shift), shift
    except ValueError as e:
        raise CompileError(f"{what}: {e}") from None


def quantize(graph: Graph, calib) -> Graph:
    """W8A8 quantization of a float graph.

    Weights: int8 with per-output-channel symmetric scales (``golden.quantize_weight``).
    Activations: int8 with one static scale per tensor, ``golden.tensor_scale`` of that tensor
    over a float run of ``calib``; ``relu`` and ``reshape`` keep their input's scale (``max(q, 0)``
    is exact on int8). ``linear`` becomes ``qlinear`` with ``bias_q = round(b / (s_x s_w[n]))``
    and multipliers ``real[n] = s_x s_w[n] / s_y`` at one shift (``golden.choose_shift``);
    ``add`` becomes ``qadd`` with ``s_a / s_y`` and ``s_b / s_y`` at one shift.

    Parameters
    ----------
    graph : networkx.DiGraph
        Float-level graph (frontend output).
    calib : ndarray or mapping of str to ndarray
        Calibration input: the graph input's shape, or any number of rows with the same
        trailing dims (evaluated in batches of the graph's rows); or one per input by name.
    """
    values = _calib_absmax(graph, calib)
    order = list(nx.lexicographical_topological_sort(graph, key=list(graph.nodes).index))
    scale: dict[str, float] = {}
    q = copy_graph(graph)
    for name in order:
        op = op_of(graph, name)
        shape = op.out.shape
        if op.kind in ("relu", "reshape", "output"):
            s = scale[op.inputs[0]]
        else:
            s = g8.tensor_scale(values[name])
        scale[name] = s
        out = TensorType(shape, "i8", s)
        if op.kind == "linear":
            s_x = scale[op.inputs[0]]
            w_q, s_w = g8.quantize_weight(np.asarray(op.attrs["weight"], dtype=np.float64))
            n = w_q.shape[0]
            b = op.attrs.get("bias")
            b = np.zeros(n) if b is None else np.asarray(b, dtype=np.float64)
            bias = np.rint(b / (s_x * s_w))
            if np.abs(bias).max(initial=0) >= g8.INT32_MAX:
                raise CompileError(f"node '{name}': quantized bias does not fit int32 "
                                   f"(input scale {s_x:.3g} is too small for bias "
                                   f"{np.abs(b).max():.3g})")
            mult, shift = _requant_params(s_x * s_w / s, f"node '{name}'")
            new = Op("qlinear", op.inputs, out,
                     {"weight": w_q, "bias": bias.astype(np.int32), "mult": mult,
                      "shift": shift, "relu": False, "res_mult": 0, "w_scale": s_w},
                     source=op.source)
        elif op.kind == "add":
            reals = np.array([scale[op.inputs[0]] / s, scale[op.inputs[1]] / s])
            mults, shift = _requant_params(reals, f"node '{name}'")
            new = Op("qadd", op.inputs, out,
                     {"a_mult": int(mults[0]), "b_mult": int(mults[1]), "shift": shift,
                      "relu": False}, source=op.source)
        elif op.kind == "output":
            new = replace(op, out=out, attrs={"scale": s})
        elif op.kind in ("input", "relu", "reshape"):
            new = replace(op, out=out)
        else:
            raise CompileError(f"node '{name}': quantize expects a float-level graph, "
                               f"found op '{op.kind}'")
        q.nodes[name]["op"] = new
    return _mark(q, "quantize")


# ---------------------------------------------------------------------------------------- fuse

def _single_user(graph: Graph, name: str) -> bool:
    # An edge per distinct consumer, and the consumer must read it once (qadd(x, x) reads twice).
    users = list(graph.successors(name))
    return len(users) == 1 and op_of(graph, users[0]).inputs.count(name) == 1


def _fuse_residual(g: Graph) -> None:
    """qadd(qlinear(x), r) -> qlinear(x, residual=r), requantizing straight to the add's scale."""
    for name in list(g.nodes):
        add = op_of(g, name)
        if add.kind != "qadd" or add.attrs["relu"]:
            continue
        for i in (0, 1):
            lin_name, res_name = add.inputs[i], add.inputs[1 - i]
            lin = op_of(g, lin_name)
            if (lin.kind != "qlinear" or len(lin.inputs) != 1 or lin.attrs["relu"]
                    or not _single_user(g, lin_name)):
                continue
            s_x, s_out = op_of(g, lin.inputs[0]).out.scale, add.out.scale
            s_r = op_of(g, res_name).out.scale
            reals = np.append(s_x * np.asarray(lin.attrs["w_scale"]) / s_out, s_r / s_out)
            mults, shift = _requant_params(reals, f"node '{lin_name}' (fused with '{name}')")
            fused = replace(lin, inputs=(lin.inputs[0], res_name), out=add.out)
            fused = fused.with_attrs(mult=mults[:-1], shift=shift, res_mult=int(mults[-1]))
            set_op(g, lin_name, fused)
            replace_uses(g, name, lin_name)
            g.remove_node(name)
            break


def _fuse_relu(g: Graph) -> None:
    """relu(qlinear|qadd) with the relu as the producer's only user -> relu=True in it."""
    for name in list(g.nodes):
        op = op_of(g, name)
        if op.kind != "relu":
            continue
        src = op.inputs[0]
        prod = op_of(g, src)
        if prod.kind in ("qlinear", "qadd") and _single_user(g, src):
            # requantize applies ReLU before saturation: clip(max(v,0)) == max(clip(v),0).
            set_op(g, src, prod.with_attrs(relu=True))
            replace_uses(g, name, src)
            g.remove_node(name)


def _relu_to_qadd(g: Graph) -> None:
    """Standalone relu -> qadd(x, x, a_mult=1, b_mult=0, shift=0, relu=True): exact on int8."""
    for name in list(g.nodes):
        op = op_of(g, name)
        if op.kind == "relu":
            x = op.inputs[0]
            set_op(g, name, Op("qadd", (x, x), op.out,
                               {"a_mult": 1, "b_mult": 0, "shift": 0, "relu": True},
                               source=op.source))


def fuse(graph: Graph) -> Graph:
    """Fold ReLUs and residual adds into the matmul epilogue.

    In order: ``qadd(qlinear(x), r)`` with the qlinear's only user being the add becomes
    ``qlinear(x, r)`` with ``mult = s_x s_w / s_out`` and ``res_mult = s_r / s_out`` at a joint
    shift (one rounding instead of two: not bit-identical to the unfused graph, within one
    output LSB plus the int8 rounding of the skipped intermediate); ``relu`` after a
    single-user ``qlinear``/``qadd`` sets its ``relu`` flag (exact); any other ``relu`` becomes
    an identity ``qadd`` with ``relu=True`` (exact). Afterwards only ``input``, ``qlinear``,
    ``qadd``, ``reshape`` and ``output`` remain.
    """
    g = copy_graph(graph)
    _fuse_residual(g)
    _fuse_relu(g)
    _relu_to_qadd(g)
    return _mark(g, "fuse")


# ---------------------------------------------------------------------------------------- tile

@dataclass(frozen=True)
class TileTarget:
    """What tiling and memory planning need to know of the accelerator (no hardware import).

    Parameters
    ----------
    chains : int
        P, output channels computed in parallel (one weight tile = P channels).
    chain_len : int
        L, MACs per chain per cycle; also the activation word width in bytes.
    beat_bytes : int
        SB, bytes of one external super-beat; LOAD/STORE move whole super-beats.
    act_depth : int
        Activation buffer depth in words of L bytes.
    weight_depth : int
        Weight ring depth in rows of P*L bytes.
    """

    chains: int
    chain_len: int
    beat_bytes: int
    act_depth: int
    weight_depth: int

    def __post_init__(self):
        for k, v in asdict(self).items():
            if int(v) < 1:
                raise CompileError(f"TileTarget.{k} must be >= 1, got {v}")

    @classmethod
    def from_config(cls, cfg) -> TileTarget:
        """From any object with these attribute names (e.g. ``hw.config.AccelConfig``)."""
        return cls(cfg.chains, cfg.chain_len, cfg.beat_bytes, cfg.act_depth, cfg.weight_depth)


def tile(graph: Graph, target: TileTarget) -> Graph:
    """Attach :class:`TileInfo` to every ``qlinear`` and record the target in ``graph.graph``.

    ``k_words = ceil(K / L)``, ``n_tiles = ceil(N / P)``, ``out_words = ceil(N / L)``; sizes that
    are not multiples of L or P are zero padded (see the module docstring). Every int8 tensor is
    viewed as 2-D: rows = product of the leading dims, features = last dim.
    """
    g = copy_graph(graph)
    P, L = target.chains, target.chain_len
    for name in g.nodes:
        op = op_of(g, name)
        if op.kind in ("relu", "linear", "add"):
            raise CompileError(f"node '{name}' ({op.kind}): tile expects a quantized, fused "
                               "graph; run quantize and fuse first")
        if op.kind == "qlinear":
            n, k = op.attrs["weight"].shape
            g.nodes[name]["op"] = replace(op, tile=TileInfo(ceil_div(k, L), ceil_div(n, P),
                                                           ceil_div(n, L)))
    g.graph["target"] = asdict(target)
    return _mark(g, "tile")


# ------------------------------------------------------------------------------------ schedule

def schedule(graph: Graph) -> Graph:
    """Deterministic topological order in ``graph.graph['schedule']``.

    Ties are broken by node creation order, so the schedule follows the model's source order
    and the same model always gives the same program.
    """
    g = copy_graph(graph)
    index = {n: i for i, n in enumerate(g.nodes)}
    g.graph["schedule"] = list(nx.lexicographical_topological_sort(g, key=index.__getitem__))
    return _mark(g, "schedule")


# --------------------------------------------------------------------------------- memory plan

def _alias_source(g: Graph, name: str, L: int) -> str | None:
    """The producer whose allocation ``name`` reuses, or None if it needs its own."""
    op = op_of(g, name)
    if op.kind == "output":
        return op.inputs[0]
    if op.kind != "reshape":
        return None
    src = op.inputs[0]
    f_in, f_out = op_of(g, src).out.shape[-1], op.out.shape[-1]
    # Row layout: row b at word b*words, feature i at byte i of the row, zero padded. The bytes
    # are the same before and after the reshape when the last dim is unchanged, or when every
    # row of both views is whole words (no padding in between to skip).
    if f_in == f_out or (f_in % L == 0 and f_out % L == 0):
        return src
    raise CompileError(f"node '{name}' (reshape): last dim {f_in} -> {f_out} changes the row "
                       f"layout; only reshapes that keep the last dim, or where both last dims "
                       f"are multiples of chain_len={L}, are supported")


def memory_plan(graph: Graph, target: TileTarget | None = None) -> Graph:
    """Place every int8 tensor in the activation buffer (liveness-based first fit).

    Each tensor gets ``MemInfo(addr, rows, words, span)`` with ``words = ceil(features / L)`` and
    ``span = rows * words`` rounded up to whole super-beats (``beat_bytes / L`` words) so LOAD and
    STORE move whole super-beats. ``output`` and layout-preserving ``reshape`` nodes share their
    input's allocation. Tensors live at the same schedule step never overlap; in particular an
    op's output never overlaps its inputs. Allocations are placed in order of first use at the
    lowest address that fits.

    Parameters
    ----------
    graph : networkx.DiGraph
        Tiled and scheduled graph.
    target : TileTarget, optional
        Defaults to the one recorded by :func:`tile`.

    Raises
    ------
    CompileError
        A reshape that changes the row layout, or a buffer too small (needed vs available words).
    """
    if graph.graph.get("schedule") is None:
        raise CompileError("memory_plan needs a scheduled graph; run schedule first")
    if target is None:
        if graph.graph.get("target") is None:
            raise CompileError("memory_plan needs a tiled graph or an explicit target")
        target = TileTarget(**graph.graph["target"])
    g = copy_graph(graph)
    g.graph["target"] = asdict(target)
    L = target.chain_len
    align = max(1, target.beat_bytes // L)
    sched = g.graph["schedule"]

    # Alias every node to the root that owns its allocation, then size the roots.
    root: dict[str, str] = {}
    for name in sched:
        op = op_of(g, name)
        if op.out.dtype != "i8":
            raise CompileError(f"node '{name}': memory_plan expects a quantized graph")
        src = _alias_source(g, name, L)
        root[name] = root[src] if src is not None else name
    span: dict[str, int] = {}
    for name in sched:
        rows, feats = rows_features(op_of(g, name).out.shape)
        need = ceil_div(rows * ceil_div(feats, L), align) * align
        span[root[name]] = max(span.get(root[name], 0), need)

    # Liveness per root: provisional MemInfo marks the aliases so spec.live_ranges sees them.
    for name in sched:
        op = op_of(g, name)
        rows, feats = rows_features(op.out.shape)
        g.nodes[name]["op"] = replace(op, mem=MemInfo(0, rows, ceil_div(feats, L),
                                                      span[root[name]]))
    ranges = live_ranges(g)

    addr: dict[str, int] = {}
    placed: list[tuple[int, int, int]] = []  # (addr, span, last step) of allocations so far
    for r in sorted(ranges, key=lambda r: (ranges[r][0], sched.index(r))):
        first, last = ranges[r]
        busy = sorted((a, a + s) for a, s, end in placed if end >= first)
        at = 0
        for lo, hi in busy:
            if at + span[r] <= lo:
                break
            at = max(at, hi)
        addr[r] = at
        placed.append((at, span[r], last))
    used = max((a + s for a, s, _ in placed), default=0)
    if used > target.act_depth:
        peak = max(sum(span[r] for r in ranges if ranges[r][0] <= t <= ranges[r][1])
                   for t in range(len(sched) + 1))
        raise CompileError(f"activation buffer too small: the plan needs {used} words "
                           f"(peak live {peak}), act_depth is {target.act_depth} words of "
                           f"{L} bytes; raise act_depth or use fewer rows")
    for name in sched:
        op = op_of(g, name)
        g.nodes[name]["op"] = replace(op, mem=replace(op.mem, addr=addr[root[name]]))
    g.graph["act_words_used"] = used
    return _mark(g, "memory_plan")
