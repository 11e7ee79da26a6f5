"""Lower the scheduled, memory-planned IR to the instruction program and the memory image.

This is where the MLP graph IR (``hwflow.compiler``) meets the hardware (``hwflow.hw``): one
MATMUL per ``qlinear``, one VADD per ``qadd``, LOAD for every input, STORE for every output,
END, emitted by the rules every model family shares (:mod:`mapping.emit`; the decoder's graph
too, :mod:`mapping.llm_lower`) with the MLP's placement (:class:`_Placement`). Linears are
planned and packed by :mod:`mapping.linear`, the one linear lowering.

A ternary ``qlinear`` (attribute ``ternary``, docs/architecture.md "Ternary path") runs on
the TLMM engine instead: ABSQUANT of its input into a scratch area above every allocation of
the memory plan (the quantized rows ``xq`` and the rows' absmax ``m``), then TMATMUL on them
with the weight block of ``mapping.ternary_format``. An engine without TLMM refuses it.

Every ``qlinear`` runs in the weight format :func:`weight_format.choose_format` picks for the
engine: the layer's own N:M sparsity and weight width when the engine runs them, otherwise the
fastest mode its effective int8 weight satisfies (always exact). The per-layer report says which
(``format``, ``sparsity``, ``weights``, and ``requested_format``: what the compiler asked
for).
"""

from __future__ import annotations

from dataclasses import dataclass

from hwflow.compiler.ops import FUSED_KINDS
from hwflow.hw.config import AccelConfig
from hwflow.hw.contract import tlmm_passes
from hwflow.hw.isa import INSTR_BYTES, Instr, Opcode

from .emit import emit
from .errors import MappingError
from .linear import (
    TmatmulPlan,
    matmul_layout,
    matmul_report,
    pack_matmul,
    pack_tmatmul,
    plan_matmul,
    plan_tmatmul,
    tmatmul_layout,
    tmatmul_report,
)
from .memory_image import ImageBuilder, MemoryMap, pack_rows
from .ternary_format import row_read_words


def encode_program(prog: list, what: str) -> bytes:
    """The instructions' bytes; an operand the ISA's field cannot hold (``hw.isa.LAYOUT``) is a
    :class:`MappingError` naming the program, the instruction and the field's limit, not an
    encoder traceback."""
    out = []
    for k, ins in enumerate(prog):
        try:
            out.append(ins.encode())
        except ValueError as e:
            raise MappingError(f"{what}, instruction {k} ({ins.op.name}): {e}; the model or "
                               "configuration exceeds what the instruction set can name"
                               ) from None
    return b"".join(out)


@dataclass
class Lowered:
    """Result of lowering: the program, the image and per-layer facts for the reports."""

    program: list
    image: bytes
    memory_map: MemoryMap
    prog_base: int
    layers: list


def _op(graph, name):
    return graph.nodes[name]["op"]


def _mem(graph, name):
    """Activation-buffer allocation of a tensor (reshapes share their producer's)."""
    op = _op(graph, name)
    while op.mem is None and op.kind == "reshape":
        op = _op(graph, op.inputs[0])
    if op.mem is None:
        raise MappingError(f"node '{name}' has no activation-buffer allocation; "
                           "run the memory_plan pass before lowering")
    return op.mem


def transfer_words(mem, cfg: AccelConfig) -> int:
    """Words moved by LOAD/STORE for an allocation: its span, whole super-beats by construction."""
    if (mem.span * cfg.chain_len) % cfg.beat_bytes or mem.span < mem.rows * mem.words:
        raise MappingError(f"allocation at word {mem.addr} spans {mem.span} words, not whole "
                           f"super-beats of {cfg.beat_bytes} B covering its rows")
    return mem.span


def _requested(attrs) -> tuple[tuple[int, int], int]:
    """The layer's own (sparsity, wbits); missing attributes (older graphs) mean dense int8.

    int4 needs its codes and scales: without them the layer runs int8 on the effective weight.
    """
    n, m = (int(v) for v in attrs.get("sparsity", (1, 1)))
    wbits = int(attrs.get("wbits", 8))
    if wbits == 4 and (attrs.get("w4") is None or attrs.get("w4_scale") is None):
        wbits = 8
    return (n, m), wbits


def is_ternary(op) -> bool:
    """Whether a ``qlinear`` carries ternary weights (the TLMM engine's layers)."""
    return op.kind == "qlinear" and bool(op.attrs.get("ternary", False))


def _scratch_words(tp: TmatmulPlan, x_mem, cfg: AccelConfig) -> int:
    """Words of a ternary layer's ``xq`` area: its input rows at ``x_mem.words`` apart plus what
    the engine reads past the last row's K (whole chunks of ``T * G`` bytes)."""
    read = row_read_words(tp.k, tp.G, tp.T, cfg.chain_len)
    return (x_mem.rows - 1) * x_mem.words + max(x_mem.words, read) if x_mem.rows else 0


def _alloc_top(graph) -> int:
    """First activation word above every allocation of the memory plan."""
    return max((op.mem.addr + op.mem.span for op in (graph.nodes[n]["op"] for n in graph.nodes)
                if op.mem is not None), default=0)


def _report(name: str, op, rows: int, base: dict, fmt: str, sparsity: str, weights: str,
            requested: str) -> dict:
    """The MLP's per-layer report: the shared linear report plus the graph's facts."""
    a = op.attrs
    n, k = a["weight"].shape
    return base | {"kind": "qlinear", "rows": rows, "format": fmt, "sparsity": sparsity,
                   "weights": weights, "requested_format": requested,
                   "relu": bool(a["relu"]), "residual": len(op.inputs) > 1,
                   "macs": rows * n * k}


@dataclass(frozen=True)
class _Placement:
    """The MLP's placement (:class:`mapping.emit.Placement`): every tensor where
    ``memory_plan`` put it, every input, output and weight block in its image region, a
    ternary layer's quantized input in the shared TLMM scratch (``xq``, then ``m_addr``)."""

    cfg: AccelConfig
    graph: object
    mm: MemoryMap
    wgt: dict           # layer -> super-beat of its weight block
    plans: dict         # layer -> its WeightPlan or TmatmulPlan
    xq: int
    m_addr: int

    def addr(self, t: str) -> int:
        return _mem(self.graph, t).addr

    def rows(self, t: str) -> int:
        return _mem(self.graph, t).rows

    def words(self, t: str) -> int:
        return _mem(self.graph, t).words

    def span(self, t: str) -> int:
        return transfer_words(_mem(self.graph, t), self.cfg)

    def features(self, t: str) -> int:
        return _op(self.graph, t).out.shape[-1]

    def weights(self, name: str) -> tuple:
        return self.wgt[name], self.plans[name]

    def ext(self, name: str) -> int:
        return self.mm.region(name).addr

    def gamma(self, slot: str) -> None:
        raise MappingError(f"an MLP has no gamma codes (slot '{slot}')")


def lower(graph, cfg: AccelConfig, inputs: dict) -> Lowered:
    """Lower a memory-planned graph; ``inputs`` maps input names to int8 arrays for the image.

    Parameters
    ----------
    graph : networkx.DiGraph
        Scheduled, memory-planned IR (``qlinear``, ``qadd``, ``reshape``, ``input``,
        ``output``).
    cfg : AccelConfig
        The accelerator the program is for.
    inputs : dict
        Input name -> int8 array written into the image's input region.

    Returns
    -------
    Lowered
        The program, the memory image and map, and one report per ``qlinear``/``qadd``
        (``engine``: ``"mpe"``, ``"tlmm"`` or ``"epilogue"``; TLMM layers also
        ``tlmm: {G, T, Q, lookups}``, ``lookups`` the layer's lookup records: cycles of ``T·Q``
        lookups).

    Raises
    ------
    MappingError
        A node without a hardware mapping, a missing allocation, a weight ring or TLMM
        accumulator too small, a ternary layer on an engine without TLMM, or an activation
        buffer without room for the TLMM scratch area.
    """
    schedule = graph.graph["schedule"]
    in_names = [n for n in schedule if _op(graph, n).kind == "input"]
    out_names = [n for n in schedule if _op(graph, n).kind == "output"]
    compute = [n for n in schedule if _op(graph, n).kind in ("qlinear", "qadd")]
    unknown = [n for n in schedule
               if _op(graph, n).kind not in FUSED_KINDS]
    if unknown:
        op = _op(graph, unknown[0])
        raise MappingError(f"node '{unknown[0]}' ({op.kind}) has no hardware mapping; "
                           "run the fuse pass first")
    ternary = [n for n in compute if is_ternary(_op(graph, n))]
    n_instr = len(in_names) + len(compute) + len(ternary) + len(out_names) + 1

    b = ImageBuilder(cfg)
    prog_region = b.reserve("program", "program", n_instr * INSTR_BYTES)
    layers, wregion, plans, tplans = [], {}, {}, {}
    for name in compute:
        op = _op(graph, name)
        if op.kind != "qlinear":
            continue
        a = op.attrs
        if is_ternary(op):
            tplans[name] = tp = plan_tmatmul(name, cfg, *a["weight"].shape)
            data = pack_tmatmul(name, cfg, tp, a["weight"], a["bias"], a["mult"])
            wregion[name] = b.append(f"weights:{name}", "weights", data,
                                     shape=list(a["weight"].shape), layout=tmatmul_layout(tp))
            continue
        plans[name] = plan = plan_matmul(name, cfg, a["weight"], op.tile.k_words,
                                         *_requested(a))
        data = pack_matmul(name, cfg, plan, a["weight"], a["bias"], a["mult"], w4=a.get("w4"),
                           w4_scale=a.get("w4_scale"))
        wregion[name] = b.append(f"weights:{name}", "weights", data,
                                 shape=list(a["weight"].shape), layout=matmul_layout(cfg, plan))
    for name in in_names + out_names:
        op = _op(graph, name)
        src = name if op.kind == "input" else op.inputs[0]
        mem = _mem(graph, src)
        shape = list(op.out.shape)
        features = shape[-1] if shape else 1
        scale = op.out.scale if op.kind == "input" else op.attrs["scale"]
        data = bytes(mem.rows * mem.words * cfg.chain_len)
        if op.kind == "input" and name in inputs:
            data = pack_rows(inputs[name], mem.words, cfg.chain_len)
        b.append(name, op.kind, data, shape=shape, rows=mem.rows, words=mem.words,
                 features=features, scale=float(scale))

    # TLMM scratch, shared by every ternary layer (one runs at a time): xq rows, then m
    xq_addr = _alloc_top(graph)
    m_addr = xq_addr + max((_scratch_words(tp, _mem(graph, _op(graph, n).inputs[0]), cfg)
                            for n, tp in tplans.items()), default=0)
    if tplans:
        m_words = max(-(-2 * _mem(graph, n).rows // cfg.chain_len) for n in tplans)
        if m_addr + m_words > cfg.act_depth:
            raise MappingError(
                f"the TLMM scratch area (quantized rows and absmax, {m_addr + m_words - xq_addr} "
                f"words) does not fit above the activations ({xq_addr} words): "
                f"{m_addr + m_words} words needed, act_depth={cfg.act_depth}")

    image, mm = b.finish()
    place = _Placement(cfg, graph, mm, {n: r.addr for n, r in wregion.items()},
                       plans | tplans, xq_addr, m_addr)
    prog = emit(graph, in_names + compute + out_names, place)
    for name in compute:
        op = _op(graph, name)
        a = op.attrs
        mem = _mem(graph, name)
        if is_ternary(op):
            tp = tplans[name]
            rep = tmatmul_report(name, tp, a["weight"].shape, wregion[name].nbytes)
            layers.append(_report(name, op, mem.rows, rep, "ternary", "dense", "ternary",
                                  "ternary"))
            # records looked up for every row; the engine's busy cycles, one a record of a pass
            layers[-1]["tlmm"]["lookups"] = mem.rows * tp.index_records
            layers[-1]["tlmm"]["busy_cycles"] = tlmm_passes(mem.rows, cfg)[1] * tp.index_records
        elif op.kind == "qlinear":
            plan = plans[name]
            fmt = plan.fmt
            rep = matmul_report(name, plan, a["weight"].shape, wregion[name].nbytes)
            layers.append(_report(name, op, mem.rows, rep, fmt.label, fmt.sparsity,
                                  f"int{fmt.wbits}", plan.requested))
        else:
            layers.append({"name": name, "kind": "qadd", "engine": "epilogue",
                           "rows": mem.rows, "features": op.out.shape[-1],
                           "relu": bool(a["relu"])})
    prog.append(Instr(Opcode.END))
    code = encode_program(prog, "the program")
    image = bytearray(image)
    start = prog_region.addr * cfg.beat_bytes
    image[start: start + len(code)] = code
    return Lowered(prog, bytes(image), mm, prog_region.addr, layers)
