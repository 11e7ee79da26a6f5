"""Lower the scheduled, memory-planned IR to the instruction program and the memory image.

This is the only place that knows both the IR (``hwflow.compiler``) and the hardware
(``hwflow.hw``): one MATMUL per ``qlinear``, one VADD per ``qadd``, LOAD for every input,
STORE for every output, END.

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
from .weight_format import (
    LayerFormat,
    channels_per_tile,
    choose_format,
    pack_weight_block,
    ring_reserve,
    tile_mem_rows,
)


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


def lower(graph, cfg: AccelConfig, inputs: dict) -> Lowered:
    """Lower a memory-planned graph; ``inputs`` maps input names to int8 arrays for the image."""
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
    n_instr = len(in_names) + len(compute) + len(out_names) + 1

    b = ImageBuilder(cfg)
    prog_region = b.reserve("program", "program", n_instr * INSTR_BYTES)
    layers, wregion, plans = [], {}, {}
    for name in compute:
        op = _op(graph, name)
        if op.kind != "qlinear":
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
        if op.kind == "qlinear":
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
    code = b"".join(i.encode() for i in prog)
    image = bytearray(image)
    start = prog_region.addr * cfg.beat_bytes
    image[start: start + len(code)] = code
    return Lowered(prog, bytes(image), mm, prog_region.addr, layers)
