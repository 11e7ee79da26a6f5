"""Lower the scheduled, memory-planned IR to the instruction program and the memory image.

This is the only place that knows both the IR (``hwflow.compiler``) and the hardware
(``hwflow.hw``): one MATMUL per ``qlinear``, one VADD per ``qadd``, LOAD for every input,
STORE for every output, END.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import FLAG_RELU, FLAG_RESIDUAL, INSTR_BYTES, Instr, Opcode

from .errors import MappingError
from .memory_image import ImageBuilder, MemoryMap, pack_rows


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


def pack_weight_block(weight, bias, mult, cfg: AccelConfig, k_words: int, n_tiles: int) -> bytes:
    """A MATMUL weight block: per tile, ``param_rows`` rows of (bias, mult) then ``k_words`` rows.

    Chain p owns bytes ``[p*L, (p+1)*L)`` of every row (docs/architecture.md).
    """
    P, L, pr = cfg.chains, cfg.chain_len, cfg.param_rows
    n, k = weight.shape
    if k > k_words * L or n > n_tiles * P:
        raise MappingError(f"weight {weight.shape} exceeds its tiling ({n_tiles} x {k_words})")
    params = np.zeros((n_tiles * P, pr * L), dtype=np.uint8)
    params[:n, 0:4] = np.asarray(bias, dtype="<i4").reshape(n, 1).view(np.uint8)
    params[:n, 4:6] = np.asarray(mult, dtype="<u2").reshape(n, 1).view(np.uint8)
    wpad = np.zeros((n_tiles * P, k_words * L), dtype=np.int8)
    wpad[:n, :k] = weight
    block = np.zeros((n_tiles, pr + k_words, P, L), dtype=np.uint8)
    block[:, :pr] = params.reshape(n_tiles, P, pr, L).transpose(0, 2, 1, 3)
    block[:, pr:] = wpad.view(np.uint8).reshape(n_tiles, P, k_words, L).transpose(0, 2, 1, 3)
    return block.tobytes()


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
    layers, wregion = [], {}
    for name in compute:
        op = _op(graph, name)
        if op.kind != "qlinear":
            continue
        t = op.tile
        rows_per_tile = cfg.param_rows + t.k_words
        if rows_per_tile > cfg.weight_depth:
            raise MappingError(
                f"layer '{name}' (K={op.attrs['weight'].shape[1]}) needs {rows_per_tile} weight "
                f"rows per tile, the weight ring holds {cfg.weight_depth}; raise weight_depth")
        data = pack_weight_block(op.attrs["weight"], op.attrs["bias"], op.attrs["mult"], cfg,
                                 t.k_words, t.n_tiles)
        wregion[name] = b.append(f"weights:{name}", "weights", data)
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
            n, k = a["weight"].shape
            t = op.tile
            if x.words != t.k_words:
                raise MappingError(f"layer '{name}': input row stride {x.words} words differs "
                                   f"from k_words {t.k_words}")
            res = _mem(graph, op.inputs[1]).addr if len(op.inputs) > 1 else 0
            if len(op.inputs) > 1:
                flags |= FLAG_RESIDUAL
            prog.append(Instr(Opcode.MATMUL, flags, a["shift"], ext=wregion[name].addr,
                              a=x.addr, out=mem.addr, b=res, rows=mem.rows, k_words=t.k_words,
                              n_tiles=t.n_tiles, n=n, words=mem.words,
                              mult_b=int(a["res_mult"])))
            layers.append({"name": name, "kind": "qlinear", "engine": "mpe", "rows": mem.rows,
                           "in_features": k, "out_features": n, "k_words": t.k_words,
                           "n_tiles": t.n_tiles, "relu": bool(a["relu"]),
                           "residual": len(op.inputs) > 1, "macs": mem.rows * n * k,
                           "weight_bytes": wregion[name].nbytes})
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
