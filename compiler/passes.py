"""Compiler passes: small named functions ``Graph -> Graph`` (the input graph is never modified).

In flow order (``compiler/flow.py``):

* :func:`sparsify` -- the N:M sparsity of every linear layer: detected in the float weights
  (``auto``), imposed by magnitude pruning (``N:M``), or none (``dense``); recorded per layer;
* :func:`precision` -- int8, int4 or ternary weights per linear layer (``int8``, ``int4``,
  ``ternary`` or the ``mixed`` rule, see :data:`INT4_MAX_ERROR`); recorded per layer;
* :func:`quantize` -- float IR to W8A8 (int8 weights per output channel, or int4 codes with
  group-wise scales dequantized to int8; static int8 activation scales from a calibration
  sample);
* :func:`fuse` -- ReLU and residual adds into the matmul epilogue; leaves only
  ``input``/``qlinear``/``qadd``/``reshape``/``output``;
* :func:`tile` -- tile shapes for a matrix engine of P chains x L slices;
* :func:`schedule` -- a deterministic execution order;
* :func:`memory_plan` -- an address in the on-chip activation buffer for every int8 tensor.

The two weight-format passes write op attributes (``sparsity`` = (n, m), (1, 1) when dense;
``wbits`` = 8, 4 or 2 (ternary)) that :func:`quantize` turns into the quantized weight and
that the mapper reads to pick the engine mode, and a readable record per layer in
``graph.graph['weight_formats']`` (``{layer: {"sparsity": "2:4", "sparsity_from": ...,
"weights": "int4", "int4_error": ..., "why": ...}}``) that ``hwflow compile`` reports.

Padding: layer sizes need not be multiples of the tile sizes. An activation row of F features
occupies ``ceil(F / L)`` words whose bytes past F are zero (MATMUL and VADD write those bytes as
0, inputs are packed with zeros), and weight tiles are zero past K and N. Zero activations times
zero weights add nothing to the int32 accumulators, so a padded layer computes exactly what the
unpadded one does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import networkx as nx
import numpy as np

from hwflow.golden import int4 as g4
from hwflow.golden import int8 as g8
from hwflow.golden import sparse as gs
from hwflow.golden import ternary as gt

from .errors import CompileError
from .interpret import evaluate
from .ir import Graph, copy_graph, op_of, replace_uses, set_op
from .ops import MemInfo, Op, TensorType, TileInfo, ceil_div, rows_features
from .spec import live_ranges


def _mark(graph: Graph, step: str) -> Graph:
    graph.graph["step"] = step
    return graph


def _linears(graph: Graph) -> list[str]:
    """The ``linear`` nodes in execution order (ties: source order)."""
    order = nx.lexicographical_topological_sort(graph, key=list(graph.nodes).index)
    return [n for n in order if op_of(graph, n).kind == "linear"]


def _note(g: Graph, name: str, **fields) -> None:
    """Add ``fields`` to layer ``name``'s record in ``g.graph['weight_formats']`` (copied, so
    the input graph's record is never changed)."""
    notes = dict(g.graph.get("weight_formats") or {})
    notes[name] = {**notes.get(name, {}), **fields}
    g.graph["weight_formats"] = notes


def nm_text(nm) -> str:
    """``(2, 4)`` -> ``"2:4"``; ``(1, 1)`` (or any N = M) -> ``"dense"``."""
    n, m = (int(v) for v in nm)
    return "dense" if n >= m else f"{n}:{m}"


# ------------------------------------------------------------------------------------ sparsify

#: What ``sparsity`` accepts (``FlowOptions.sparsity``, ``hwflow compile --sparsity``).
SPARSITY_CHOICES = "auto, dense or N:M such as 2:4, 1:4, 2:8, 4:16"


def parse_sparsity(text) -> str | tuple[int, int]:
    """``"auto"`` -> ``"auto"``; ``"dense"`` -> ``(1, 1)``; ``"2:4"`` or ``(2, 4)`` -> ``(2, 4)``.

    N:M follows ``golden.sparse.parse_nm`` (M a power of two up to 16, 1 <= N <= M), and M/N
    must be a power of two: the DSP chain splits into r = M/N segments, one output channel
    each, so 3:4 could only run as dense and is refused rather than pruned for nothing.

    Raises
    ------
    CompileError
        With the broken rule only, e.g. ``"M must be a power of two up to 16"`` (callers add
        what they were parsing).
    """
    if isinstance(text, tuple):
        text = ":".join(str(v) for v in text)
    s = str(text).strip().lower()
    if s == "auto":
        return "auto"
    if s != "dense" and not re.fullmatch(r"\d+:\d+", s):
        raise CompileError("not auto, dense or of the form N:M")
    try:
        n, m = gs.parse_nm(s)
    except ValueError as e:
        raise CompileError(str(e).split(": ", 1)[-1]) from None
    r = m // n
    if m % n or r & (r - 1):
        raise CompileError("M/N must be a power of two (the DSP chain splits into M/N "
                           "segments, one output channel each)")
    return n, m


def sparsify(graph: Graph, mode="auto") -> Graph:
    """Record (and, on request, impose) the N:M sparsity of every ``linear``'s weight.

    ``mode``:

    * ``"auto"`` (default): detect the structure already in the float weight with
      ``golden.sparse.detect_nm`` (the strongest of its candidates the weight satisfies; a
      weight pruned N:M in torch has exact zeros and is found) -- the weight is not changed;
    * ``"N:M"`` or ``(n, m)``: magnitude pruning with ``golden.sparse.prune_nm`` (keep the N
      largest ``|w|`` of every group of M along K) and record (n, m);
    * ``"dense"``: record (1, 1) without looking at the weights.

    Writes attribute ``sparsity`` = (n, m) on every linear and ``sparsity``/``sparsity_from``
    (``detected``, ``imposed`` or ``dense``) in its ``weight_formats`` record. Imposed pruning
    changes what the layer computes: the float reference stays the model as given, so the
    golden-vs-float error reports the pruning too.

    Raises
    ------
    CompileError
        A mode that :func:`parse_sparsity` refuses.
    """
    try:
        want = parse_sparsity(mode)
    except CompileError as e:
        raise CompileError(f"sparsity '{mode}': {e}; use {SPARSITY_CHOICES}") from None
    g = copy_graph(graph)
    for name in _linears(g):
        op = op_of(g, name)
        w = np.asarray(op.attrs["weight"])
        if want == "auto":
            nm, source = gs.detect_nm(w), "detected"
        elif want == (1, 1):
            nm, source = (1, 1), "dense"
        else:
            nm, source = want, "imposed"
            w = gs.prune_nm(w, *nm)
        set_op(g, name, op.with_attrs(weight=w, sparsity=tuple(int(v) for v in nm)))
        _note(g, name, sparsity=nm_text(nm), sparsity_from=source)
    return _mark(g, "sparsify")


# ----------------------------------------------------------------------------------- precision

#: What ``weights`` accepts (``FlowOptions.weights``, ``hwflow compile --weights``).
WEIGHT_CHOICES = ("int8", "int4", "mixed", "ternary")

#: The ``mixed`` rule's limit on a layer's int4 relative reconstruction error
#: ``||w - c s q|| / ||w||``. Measured with ``golden.int4`` (groups of 32): 0.07 for uniform
#: weights (PyTorch's default init), 0.10 for Gaussian, 0.13 for Laplacian and about 0.15 for
#: Student-t with 3 degrees of freedom; a weight with heavier tails has a few outliers that set
#: its group scales and leave most weights on two or three of the 16 levels. 0.15 is where int4
#: stops looking like 4 bits, so those layers keep int8 (relative error ~0.005).
INT4_MAX_ERROR = 0.15


def int4_error(w: np.ndarray) -> float:
    """Relative reconstruction error ``||w - c s q|| / ||w||`` of ``golden.int4`` on ``w``
    (0 for an all-zero weight)."""
    w = np.asarray(w, dtype=np.float64)
    norm = float(np.linalg.norm(w))
    if norm == 0.0:
        return 0.0
    q, s, c = g4.quantize_weight_int4(w)
    return float(np.linalg.norm(w - c[:, None] * g4.dequantize_int4(q, s)) / norm)


def ternary_weight(w) -> tuple[np.ndarray, float, str]:
    """``(t, s, how)``: the weight's own ternary values if it is already ``0/+-s`` with one
    ``s`` (``golden.ternary.detect_ternary``, ``how = "detected"``), else BitNet's absmean rule
    (``golden.ternary.ternarize_absmean``, ``how = "absmean"``)."""
    det = gt.detect_ternary(w)
    if det is not None:
        return det[0], det[1], "detected"
    t, s = gt.ternarize_absmean(w)
    return t, s, "absmean"


def precision(graph: Graph, weights: str = "int8") -> Graph:
    """Choose int8, int4 or ternary weights for every ``linear`` (attribute ``wbits`` = 8, 4
    or 2).

    ``weights``: ``"int8"`` or ``"int4"`` for every layer, ``"ternary"`` (BitNet b1.58, every
    layer on the TLMM engine), or ``"mixed"``, whose rule is:

    1. the first and the last linear layer in execution order stay int8 -- they are the most
       sensitive (the input embedding/feature layer sees the raw input; the classifier/LM head
       produces the logits directly);
    2. every other linear layer is int4 unless its int4 relative reconstruction error
       (:func:`int4_error`, on the weight after :func:`sparsify`) exceeds
       :data:`INT4_MAX_ERROR` = 0.15; then it stays int8.

    ``ternary``: a weight that is already ternary (``0/+-s`` for one ``s``) keeps its exact
    ``t`` and ``s`` (``ternary_from: detected``); any other is replaced by its absmean
    ternarization ``s * t`` (``ternary_from: absmean``; like imposed pruning this changes what
    the layer computes: calibration then sees the ternary layer, the float reference stays the
    model as given). Ternary layers are dense (attribute ``sparsity`` (1, 1)): the TLMM engine
    has no N:M mode; an N:M pattern that :func:`sparsify` found or imposed stays in the weight
    as zeros.

    Every layer's ``weight_formats`` record gets ``weights`` and ``why``; under ``mixed`` the
    middle layers also get ``int4_error``; under ``ternary`` every layer gets
    ``ternary_from``, ``ternary_scale`` (s) and ``ternary_error`` (``||w - s t|| / ||w||``).

    Raises
    ------
    CompileError
        ``weights`` is not one of :data:`WEIGHT_CHOICES`.
    """
    if weights not in WEIGHT_CHOICES:
        raise CompileError(f"weights '{weights}': use {', '.join(WEIGHT_CHOICES)}")
    g = copy_graph(graph)
    layers = _linears(g)
    for i, name in enumerate(layers):
        op = op_of(g, name)
        extra = {}
        if weights == "ternary":
            w = np.asarray(op.attrs["weight"], dtype=np.float64)
            t, s, how = ternary_weight(w)
            norm = float(np.linalg.norm(w))
            err = float(np.linalg.norm(w - s * t) / norm) if norm else 0.0
            new_w = op.attrs["weight"] if how == "detected" else (s * t).astype(np.float32)
            nm = tuple(int(v) for v in op.attrs.get("sparsity", (1, 1)))
            set_op(g, name, op.with_attrs(weight=new_w, wbits=2, sparsity=(1, 1)))
            if nm != (1, 1):
                extra["note"] = (f"ternary runs dense on the TLMM engine: sparsity "
                                 f"{nm_text(nm)} not used (its zeros stay in the weight)")
            _note(g, name, weights="ternary", why="ternary: every layer", ternary_from=how,
                  ternary_scale=float(s), ternary_error=round(err, 6), sparsity="dense",
                  **extra)
            continue
        if weights != "mixed":
            bits, why = (4 if weights == "int4" else 8), f"{weights}: every layer"
        elif i == 0 or i == len(layers) - 1:
            bits, why = 8, "mixed: first layer" if i == 0 else "mixed: last layer"
        else:
            err = int4_error(op.attrs["weight"])
            ok = err <= INT4_MAX_ERROR
            bits = 4 if ok else 8
            why = f"mixed: int4 error {err:.3f} {'<=' if ok else '>'} {INT4_MAX_ERROR}"
            extra = {"int4_error": round(err, 6)}
        set_op(g, name, op.with_attrs(wbits=bits))
        _note(g, name, weights=f"int{bits}", why=why, **extra)
    return _mark(g, "precision")


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


def _quantize_weight(g: Graph, name: str, op: Op) -> dict:
    """The weight attributes of a ``qlinear`` (see ``ops.OP_KINDS``) for float ``linear`` op.

    ternary (``wbits`` 2): ``t`` int8 in {-1, 0, 1} as ``weight``, ``w_scale`` = ``s`` per
    channel, ``ternary=True`` (see :func:`ternary_weight`). int8: ``golden.quantize_weight``
    (per-channel scale ``w_scale``). int4:
    ``golden.int4.quantize_weight_int4`` -> codes ``w4``, group scales ``w4_scale`` and
    per-channel ``w_scale = c``; ``weight`` is the int8 the engine computes with,
    ``dequantize_int4(w4, w4_scale)``. Both map 0 to 0, so the recorded N:M pattern survives;
    it is checked anyway, and a weight that broke it would be recorded with the pattern it
    still has (``golden.sparse.detect_nm``).
    """
    w = np.asarray(op.attrs["weight"], dtype=np.float64)
    nm = tuple(int(v) for v in op.attrs.get("sparsity", (1, 1)))
    bits = int(op.attrs.get("wbits", 8))
    if bits == 2:
        t, s, _ = ternary_weight(w)
        return {"weight": t, "w_scale": np.full(w.shape[0], s), "ternary": True,
                "sparsity": (1, 1), "wbits": 2}
    if bits == 4:
        w4, w4_scale, c = g4.quantize_weight_int4(w)
        out = {"weight": g4.dequantize_int4(w4, w4_scale), "w_scale": c, "w4": w4,
               "w4_scale": w4_scale}
    else:
        w_q, s_w = g8.quantize_weight(w)
        out = {"weight": w_q, "w_scale": s_w}
    if not gs.satisfies_nm(out["weight"], *nm):      # unreachable: quantization keeps zeros
        nm = gs.detect_nm(out["weight"])
        _note(g, name, sparsity=nm_text(nm), note="quantization broke the pattern")
    return {**out, "sparsity": nm, "wbits": bits}


def quantize(graph: Graph, calib) -> Graph:
    """W8A8 quantization of a float graph.

    Weights: int8 with per-output-channel symmetric scales (``golden.quantize_weight``), or,
    for a linear that :func:`precision` marked ``wbits=4``, int4 codes with group-wise scales
    (``golden.int4``) whose dequantized int8 is the ``weight`` the engine multiplies with and
    whose per-channel scale ``c`` plays the part of ``s_w`` below. ``sparsity`` and ``wbits``
    carry over (dense int8 when :func:`sparsify` and :func:`precision` did not run).
    Activations: int8 with one static scale per tensor, ``golden.tensor_scale`` of that tensor
    over a float run of ``calib``; ``relu`` and ``reshape`` keep their input's scale (``max(q, 0)``
    is exact on int8). ``linear`` becomes ``qlinear`` with ``bias_q = round(b / (s_x s_w[n]))``
    and multipliers ``real[n] = s_x s_w[n] / s_y`` at one shift (``golden.choose_shift``);
    a ternary linear (``wbits`` 2) gets ``ternary=True``, ``weight`` = ``t``, and bias and
    multipliers in units of ``acc * m`` (``golden.ternary.absmax_quant`` of its input):
    ``bias_q = round(b * 127 / (s_x s_w))``, ``real = s_x s_w / (127 s_y)``;
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
            wattrs = _quantize_weight(q, name, op)
            w_q, s_w = wattrs["weight"], wattrs["w_scale"]
            n = w_q.shape[0]
            b = op.attrs.get("bias")
            b = np.zeros(n) if b is None else np.asarray(b, dtype=np.float64)
            # A ternary layer's epilogue sees acc * m with xq ~ x * 127 / m: units of
            # s_x * s_w / 127 (docs/architecture.md, "Ternary path").
            unit = s_x * s_w / (g8.INT8_MAX if wattrs.get("ternary") else 1)
            bias = np.rint(b / unit)
            if np.abs(bias).max(initial=0) >= g8.INT32_MAX:
                raise CompileError(f"node '{name}': quantized bias does not fit int32 "
                                   f"(input scale {s_x:.3g} is too small for bias "
                                   f"{np.abs(b).max():.3g})")
            mult, shift = _requant_params(unit / s, f"node '{name}'")
            new = Op("qlinear", op.inputs, out,
                     {**wattrs, "bias": bias.astype(np.int32), "mult": mult,
                      "shift": shift, "relu": False, "res_mult": 0}, source=op.source)
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
                    or lin.attrs.get("ternary") or not _single_user(g, lin_name)):
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

    In order: ``qadd(qlinear(x), r)`` with the qlinear's only user being the add (and the
    qlinear not ternary, see below) becomes
    ``qlinear(x, r)`` with ``mult = s_x s_w / s_out`` and ``res_mult = s_r / s_out`` at a joint
    shift (one rounding instead of two: not bit-identical to the unfused graph, within one
    output LSB plus the int8 rounding of the skipped intermediate); ``relu`` after a
    single-user ``qlinear``/``qadd`` sets its ``relu`` flag (exact); any other ``relu`` becomes
    an identity ``qadd`` with ``relu=True`` (exact). Afterwards only ``input``, ``qlinear``,
    ``qadd``, ``reshape`` and ``output`` remain.

    A ternary qlinear keeps its residual ``qadd``: its epilogue input ``acc * m`` is about
    ``127 * max|x|`` times larger than ``acc`` of an int8 layer, so its multipliers are that
    much smaller than the residual's (about 2**-10 .. 2**-14 of it), and one shift with u16
    multipliers would leave them only a few significant bits.
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
        P, DSP chains: output channels computed in parallel by a dense tile (an N:M tile of
        ratio r = M/N holds P·r; the mapper picks the format, see :class:`TileInfo`).
    chain_len : int
        L, slices per chain; also the activation word width in bytes.
    beat_bytes : int
        SB, bytes of one external super-beat; LOAD/STORE move whole super-beats.
    act_depth : int
        Activation buffer depth in words of L bytes.
    weight_depth : int
        Weight ring depth in entries (one k-group of every chain); the mapper checks that each
        layer's tiles fit it (it depends on the weight format).
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

    The pass is format-agnostic: ``n_tiles`` counts dense tiles of P channels. Which N:M mode and
    weight width a layer runs in depends on what the engine was built with, so the mapper
    chooses it (``mapping.weight_format.choose_format``) and issues ``ceil(N / (P·r))`` tiles.
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


def first_fit(spans: dict, ranges: dict, order=None) -> dict:
    """Place allocations in the activation buffer: the one allocator of every model family
    (the MLP's :func:`memory_plan`, the decoder's ``mapping.llm_lower.ActPlan``).

    Allocations are placed in order of first use (ties: their order in ``order``) at the
    lowest address that fits; two allocations live at a common step never overlap.

    Parameters
    ----------
    spans : dict
        Name -> words.
    ranges : dict
        Name -> ``(first step, last step)`` it is live (every name of ``spans``).
    order : sequence, optional
        The names in tie-break order; default the order of ``ranges``.

    Returns
    -------
    dict
        Name -> first word.
    """
    rank = {r: k for k, r in enumerate(ranges if order is None else order)}
    addr: dict = {}
    placed: list[tuple[int, int, int]] = []  # (addr, span, last step) of allocations so far
    for r in sorted(ranges, key=lambda r: (ranges[r][0], rank[r])):
        first, last = ranges[r]
        busy = sorted((a, a + s) for a, s, end in placed if end >= first)
        at = 0
        for lo, hi in busy:
            if at + spans[r] <= lo:
                break
            at = max(at, hi)
        addr[r] = at
        placed.append((at, spans[r], last))
    return addr


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

    addr = first_fit(span, ranges, sched)
    used = max((addr[r] + span[r] for r in addr), default=0)
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
