"""Lower the scheduled, memory-planned IR to the instruction program and the memory image.

This is the only place that knows both the IR (``hwflow.compiler``) and the hardware
(``hwflow.hw``): one MATMUL per ``qlinear``, one VADD per ``qadd``, LOAD for every input,
STORE for every output, END.

A ternary ``qlinear`` (attribute ``ternary``, docs/architecture.md "Ternary path (v4)") runs on
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

from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import FLAG_INT4, FLAG_RELU, FLAG_RESIDUAL, INSTR_BYTES, Instr, Opcode

from .errors import MappingError
from .memory_image import ImageBuilder, MemoryMap, pack_rows
from .ternary_format import block_layout, pack_ternary_block, row_read_words
from .weight_format import (
    LayerFormat,
    channels_per_tile,
    choose_format,
    pack_weight_block,
    ring_reserve,
    tile_mem_rows,
)


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


def _requested_label(sparsity, wbits) -> str:
    n, m = sparsity
    return f"int{wbits} " + ("dense" if n >= m else f"{n}:{m}")


@dataclass(frozen=True)
class WeightPlan:
    """How one ``qlinear``'s weights are stored and run (the MATMUL's format fields)."""

    fmt: LayerFormat
    k_words: int
    n_tiles: int
    tile_mem_rows: int
    requested: str


def plan_weights(name: str, op, cfg: AccelConfig) -> WeightPlan:
    """Choose the format of a ``qlinear`` and check that two of its tiles fit the weight ring.

    Raises
    ------
    MappingError
        The ring (``weight_depth`` entries) cannot hold two tiles' reservation.
    """
    a = op.attrs
    n, k = a["weight"].shape
    sparsity, wbits = _requested(a)
    fmt = choose_format(cfg, a["weight"], sparsity, wbits)
    k_words = op.tile.k_words
    rows = tile_mem_rows(cfg, fmt, k_words)
    reserve = ring_reserve(cfg, fmt, k_words)
    if 2 * reserve > cfg.weight_depth:
        per_row = " (2 entries per memory row for int4)" if fmt.int4 else ""
        raise MappingError(
            f"layer '{name}' ({fmt.label}, K={k}) needs 2 x {reserve} weight-ring entries for two "
            f"tiles of {rows} memory rows{per_row}, the ring holds weight_depth="
            f"{cfg.weight_depth}; build the accelerator with weight_depth >= {2 * reserve}")
    n_tiles = -(-n // channels_per_tile(cfg, fmt))
    return WeightPlan(fmt, k_words, n_tiles, rows, _requested_label(sparsity, wbits))


def _pack_layer(name: str, op, cfg: AccelConfig, plan: WeightPlan) -> bytes:
    a = op.attrs
    try:
        return pack_weight_block(cfg, plan.fmt, a["weight"], a["bias"], a["mult"], plan.k_words,
                                 plan.n_tiles, w4=a.get("w4"), w4_scale=a.get("w4_scale"))
    except ValueError as e:
        raise MappingError(f"layer '{name}': cannot pack its weights as {plan.fmt.label}: {e}") \
            from None


def _layer_report(name: str, op, rows: int, plan: WeightPlan, nbytes: int) -> dict:
    a = op.attrs
    n, k = a["weight"].shape
    fmt = plan.fmt
    return {"name": name, "kind": "qlinear", "engine": "mpe", "rows": rows,
            "in_features": k, "out_features": n, "k_words": plan.k_words,
            "n_tiles": plan.n_tiles, "tile_mem_rows": plan.tile_mem_rows,
            "format": fmt.label, "sparsity": fmt.sparsity, "weights": f"int{fmt.wbits}",
            "requested_format": plan.requested,
            "relu": bool(a["relu"]), "residual": len(op.inputs) > 1,
            "macs": rows * n * k, "weight_bytes": nbytes}


def is_ternary(op) -> bool:
    """Whether a ``qlinear`` carries ternary weights (the TLMM engine's layers)."""
    return op.kind == "qlinear" and bool(op.attrs.get("ternary", False))


@dataclass(frozen=True)
class TernaryPlan:
    """How one ternary ``qlinear`` runs on the TLMM engine (the TMATMUL's fields).

    Attributes
    ----------
    G, T, Q : int
        Engine group size, tables and table replicas (``AccelConfig.tlmm_g/t/q``).
    k_groups : int
        ``ceil(K / G)``.
    layout : dict
        :func:`mapping.ternary_format.block_layout` of the weight block.
    x_words : int
        Act words between rows of the input (and of its quantized copy ``xq``).
    scratch_words : int
        Words of the ``xq`` area: the rows at ``x_words`` apart plus what the engine reads past
        the last row's K (whole chunks of ``T * G`` bytes).
    """

    G: int
    T: int
    Q: int
    k_groups: int
    layout: dict
    x_words: int
    scratch_words: int


def plan_ternary(name: str, op, x_mem, cfg: AccelConfig) -> TernaryPlan:
    """Check that the engine runs a ternary ``qlinear`` and size its TMATMUL.

    Raises
    ------
    MappingError
        The engine has no TLMM unit, or the layer has more output channels than its
        accumulator (``tlmm_acc_depth``).
    """
    n, k = op.attrs["weight"].shape
    if not cfg.tlmm:
        raise MappingError(
            f"layer '{name}' has ternary weights, but this board's accelerator has no TLMM "
            "engine; use a board whose YAML has `engine: tlmm: true`, or compile with "
            "--weights int8")
    if n > cfg.tlmm_acc_depth:
        raise MappingError(
            f"layer '{name}' has {n} output channels, the TLMM accumulator holds "
            f"tlmm_acc_depth={cfg.tlmm_acc_depth}; build the engine with tlmm_acc_depth >= {n}")
    G, T, Q, L = cfg.tlmm_g, cfg.tlmm_t, cfg.tlmm_q, cfg.chain_len
    lay = block_layout(n, k, G, T, Q, cfg.beat_bytes)
    read = row_read_words(k, G, T, L)
    scratch = (x_mem.rows - 1) * x_mem.words + max(x_mem.words, read) if x_mem.rows else 0
    return TernaryPlan(G, T, Q, lay["k_groups"], lay, x_mem.words, scratch)


def _alloc_top(graph) -> int:
    """First activation word above every allocation of the memory plan."""
    return max((op.mem.addr + op.mem.span for op in (graph.nodes[n]["op"] for n in graph.nodes)
                if op.mem is not None), default=0)


def _ternary_report(name: str, op, rows: int, tp: TernaryPlan, nbytes: int) -> dict:
    a = op.attrs
    n, k = a["weight"].shape
    return {"name": name, "kind": "qlinear", "engine": "tlmm", "rows": rows,
            "in_features": k, "out_features": n, "k_groups": tp.k_groups,
            "index_records": tp.layout["records"], "format": "ternary", "sparsity": "dense",
            "weights": "ternary", "requested_format": "ternary",
            "relu": bool(a["relu"]), "residual": len(op.inputs) > 1,
            "macs": rows * n * k, "weight_bytes": nbytes,
            "tlmm": {"G": tp.G, "T": tp.T, "Q": tp.Q,
                     "lookups": rows * tp.layout["records"]}}


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
               if _op(graph, n).kind not in ("input", "output", "qlinear", "qadd", "reshape")]
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
        if is_ternary(op):
            tplans[name] = tp = plan_ternary(name, op, _mem(graph, op.inputs[0]), cfg)
            a = op.attrs
            try:
                data = pack_ternary_block(a["weight"], a["bias"], a["mult"], tp.G, tp.T, tp.Q,
                                          cfg.beat_bytes)
            except ValueError as e:
                raise MappingError(f"layer '{name}': cannot pack its ternary weights: {e}") \
                    from None
            n_out = a["weight"].shape[0]
            layout = (f"TMATMUL block, G={tp.G} T={tp.T} Q={tp.Q}: {n_out} parameter records, "
                      f"then {tp.layout['records']} index records of {tp.T * tp.Q} "
                      "(docs/architecture.md, TMATMUL weight block)")
            wregion[name] = b.append(f"weights:{name}", "weights", data,
                                     shape=list(a["weight"].shape), layout=layout)
            continue
        plans[name] = plan_weights(name, op, cfg)
        data = _pack_layer(name, op, cfg, plans[name])
        plan = plans[name]
        layout = (f"{plan.fmt.label}: {plan.n_tiles} tiles x {plan.tile_mem_rows} rows of "
                  f"{cfg.row_bytes} B (docs/architecture.md, weight tile formats)")
        wregion[name] = b.append(f"weights:{name}", "weights", data,
                                 shape=list(op.attrs["weight"].shape), layout=layout)
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
    m_addr = xq_addr + max((tp.scratch_words for tp in tplans.values()), default=0)
    if tplans:
        m_words = max(-(-2 * _mem(graph, n).rows // cfg.chain_len) for n in tplans)
        if m_addr + m_words > cfg.act_depth:
            raise MappingError(
                f"the TLMM scratch area (quantized rows and absmax, {m_addr + m_words - xq_addr} "
                f"words) does not fit above the activations ({xq_addr} words): "
                f"{m_addr + m_words} words needed, act_depth={cfg.act_depth}")

    image, mm = b.finish()
    prog = []
    for name in in_names:
        mem = _mem(graph, name)
        prog.append(Instr(Opcode.LOAD, ext=mm.region(name).addr, a=mem.addr,
                          b=transfer_words(mem, cfg)))
    for name in compute:
        op = _op(graph, name)
        a = op.attrs
        mem = _mem(graph, name)
        flags = FLAG_RELU if a["relu"] else 0
        if is_ternary(op):
            x = _mem(graph, op.inputs[0])
            tp = tplans[name]
            n, k = a["weight"].shape
            res = _mem(graph, op.inputs[1]).addr if len(op.inputs) > 1 else 0
            if len(op.inputs) > 1:
                flags |= FLAG_RESIDUAL
            prog.append(Instr(Opcode.ABSQUANT, a=x.addr, out=xq_addr, rows=x.rows,
                              m_addr=m_addr, n=k, words=x.words))
            prog.append(Instr(Opcode.TMATMUL, flags, a["shift"], ext=wregion[name].addr,
                              a=xq_addr, out=mem.addr, b=res, rows=mem.rows,
                              k_groups=tp.k_groups, n_out=n, x_words=tp.x_words,
                              words=mem.words, mult_b=int(a["res_mult"]), m_addr=m_addr))
            layers.append(_ternary_report(name, op, mem.rows, tp, wregion[name].nbytes))
        elif op.kind == "qlinear":
            x = _mem(graph, op.inputs[0])
            n = a["weight"].shape[0]
            plan = plans[name]
            if x.words != plan.k_words:
                raise MappingError(f"layer '{name}': input row stride {x.words} words differs "
                                   f"from k_words {plan.k_words}")
            res = _mem(graph, op.inputs[1]).addr if len(op.inputs) > 1 else 0
            if len(op.inputs) > 1:
                flags |= FLAG_RESIDUAL
            if plan.fmt.int4:
                flags |= FLAG_INT4
            prog.append(Instr(Opcode.MATMUL, flags, a["shift"], ext=wregion[name].addr,
                              a=x.addr, out=mem.addr, b=res, rows=mem.rows, k_words=plan.k_words,
                              n_tiles=plan.n_tiles, n=n, words=mem.words,
                              mult_b=int(a["res_mult"]), tile_mem_rows=plan.tile_mem_rows,
                              lgm=plan.fmt.lgm, lgr=plan.fmt.lgr))
            layers.append(_layer_report(name, op, mem.rows, plan, wregion[name].nbytes))
        else:
            ma, mb = _mem(graph, op.inputs[0]), _mem(graph, op.inputs[1])
            feats = op.out.shape[-1]
            prog.append(Instr(Opcode.VADD, flags, a["shift"], a=ma.addr, out=mem.addr,
                              b=mb.addr, rows=mem.rows, n=feats, words=mem.words,
                              mult_b=int(a["b_mult"]), mult_a=int(a["a_mult"])))
            layers.append({"name": name, "kind": "qadd", "engine": "epilogue",
                           "rows": mem.rows, "features": feats, "relu": bool(a["relu"])})
    for name in out_names:
        mem = _mem(graph, _op(graph, name).inputs[0])
        prog.append(Instr(Opcode.STORE, ext=mm.region(name).addr, a=mem.addr,
                          b=transfer_words(mem, cfg)))
    prog.append(Instr(Opcode.END))
    code = encode_program(prog, "the program")
    image = bytearray(image)
    start = prog_region.addr * cfg.beat_bytes
    image[start: start + len(code)] = code
    return Lowered(prog, bytes(image), mm, prog_region.addr, layers)
