"""One lowering of a quantized linear layer, for every model family.

The MLP lowering (:mod:`mapping.lower`) and the decoder lowering (:mod:`mapping.llm_lower`) plan,
pack and emit their linears here and nowhere else, so a new model family's lowering gets the
matrix engine and the table-lookup engine from one place:

* an int8/int4/N:M linear on the matrix engine: :func:`plan_matmul` (its weight format and
  tiling, checked against the weight ring), :func:`pack_matmul` (the weight block of
  docs/architecture.md, "Weight tile formats"), :func:`matmul` (its MATMUL instruction);
* a ternary linear on the TLMM engine: :func:`plan_tmatmul`, :func:`pack_tmatmul` (the block of
  "TMATMUL weight block"), :func:`absquant` (the per-token int8 input and its absmax ``m``) and
  :func:`tmatmul`.

Each block's memory-map layout line and the per-layer report's fields come from here too
(:func:`matmul_layout`, :func:`tmatmul_layout`, :func:`matmul_report`, :func:`tmatmul_report`).
Where a linear's input and output live (the activation plan) stays with each lowering.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import (
    FLAG_GAMMA,
    FLAG_INT4,
    FLAG_RELU,
    FLAG_RESIDUAL,
    Instr,
    Opcode,
    field_max,
)

from .errors import MappingError
from .ternary_format import block_layout, pack_ternary_block
from .weight_format import (
    LayerFormat,
    channels_per_tile,
    choose_format,
    pack_weight_block,
    ring_reserve,
    tile_mem_rows,
)


def _flags(res: int | None, relu: bool) -> int:
    return (FLAG_RESIDUAL if res is not None else 0) | (FLAG_RELU if relu else 0)


# ------------------------------------------------------------------- matrix engine (MATMUL)

@dataclass(frozen=True)
class WeightPlan:
    """How one linear's weights are stored and run on the matrix engine (MATMUL's fields).

    Attributes
    ----------
    fmt : LayerFormat
        The weight format (:func:`weight_format.choose_format`).
    k_words : int
        Act words of one input row the MATMUL reads (input features padded to ``L`` bytes).
    n_out : int
        Output channels.
    n_tiles : int
        Weight tiles: ``ceil(n_out / channels_per_tile)``.
    tile_mem_rows : int
        Memory rows of one tile.
    requested : str
        The format the compiler asked for (``"int8 dense"``, ``"int4 2:4"``, ...).
    """

    fmt: LayerFormat
    k_words: int
    n_out: int
    n_tiles: int
    tile_mem_rows: int
    requested: str


def plan_matmul(name: str, cfg: AccelConfig, weight, k_words: int, sparsity=(1, 1),
                wbits: int = 8) -> WeightPlan:
    """Choose the weight format of a linear and check that two of its tiles fit the weight ring.

    Parameters
    ----------
    name : str
        The linear's name, for errors.
    cfg : AccelConfig
        The accelerator.
    weight : np.ndarray
        ``[n_out, K]`` int8 effective weight; a request of N:M sparsity is checked against it
        (a dense request does not read it, so a zero-stride view plans like the real weight).
    k_words : int
        Act words of one input row.
    sparsity : (int, int)
        The requested N:M (``(1, 1)``: dense).
    wbits : int
        The requested weight width, 8 or 4.

    Raises
    ------
    MappingError
        The input row is narrower than ``K``, or the ring (``weight_depth`` entries) cannot
        hold two tiles' reservation.
    """
    n, k = weight.shape
    if k > k_words * cfg.chain_len:
        raise MappingError(f"layer '{name}': {k} input features exceed its input rows of "
                           f"{k_words} words x {cfg.chain_len} B")
    fmt = choose_format(cfg, weight, tuple(sparsity), wbits)
    rows = tile_mem_rows(cfg, fmt, k_words)
    reserve = ring_reserve(cfg, fmt, k_words)
    if 2 * reserve > cfg.weight_depth:
        per_row = " (2 entries per memory row for int4)" if fmt.int4 else ""
        raise MappingError(
            f"layer '{name}' ({fmt.label}, K={k}) needs 2 x {reserve} weight-ring entries for two "
            f"tiles of {rows} memory rows{per_row}, the ring holds weight_depth="
            f"{cfg.weight_depth}; build the accelerator with weight_depth >= {2 * reserve}")
    sn, sm = sparsity
    requested = f"int{wbits} " + ("dense" if sn >= sm else f"{sn}:{sm}")
    return WeightPlan(fmt, k_words, n, -(-n // channels_per_tile(cfg, fmt)), rows, requested)


def matmul_nbytes(cfg: AccelConfig, plan: WeightPlan) -> int:
    """Bytes of the weight block: ``n_tiles`` tiles of ``tile_mem_rows`` rows of ``P*L`` B."""
    return plan.n_tiles * plan.tile_mem_rows * cfg.row_bytes


def pack_matmul(name: str, cfg: AccelConfig, plan: WeightPlan, weight, bias, mult, w4=None,
                w4_scale=None) -> bytes:
    """The weight block of a planned linear (:func:`weight_format.pack_weight_block`).

    Raises
    ------
    MappingError
        The weights do not pack in the plan's format (values or shapes), naming the linear.
    """
    try:
        data = pack_weight_block(cfg, plan.fmt, weight, bias, mult, plan.k_words, plan.n_tiles,
                                 w4=w4, w4_scale=w4_scale)
    except ValueError as e:
        raise MappingError(f"layer '{name}': cannot pack its weights as {plan.fmt.label}: "
                           f"{e}") from None
    assert len(data) == matmul_nbytes(cfg, plan), (name, len(data))
    return data


def matmul_layout(cfg: AccelConfig, plan: WeightPlan) -> str:
    """The memory map's ``layout`` line of a MATMUL weight block."""
    return (f"{plan.fmt.label}: {plan.n_tiles} tiles x {plan.tile_mem_rows} rows of "
            f"{cfg.row_bytes} B (docs/architecture.md, weight tile formats)")


def matmul_report(name: str, plan: WeightPlan, shape, nbytes: int) -> dict:
    """The per-layer report fields of a MATMUL linear whose model weight is ``shape = (out,
    in)`` features (before any padding the lowering adds)."""
    return {"name": name, "engine": "mpe", "format": plan.fmt.label, "k_words": plan.k_words,
            "n_tiles": plan.n_tiles, "tile_mem_rows": plan.tile_mem_rows,
            "out_features": int(shape[0]), "in_features": int(shape[1]), "weight_bytes": nbytes}


def matmul(plan: WeightPlan, shift: int, wgt: int, x: int, out: int, rows: int, words: int,
           res: int | None = None, res_mult: int = 0, relu: bool = False,
           x_words: int | None = None) -> Instr:
    """The MATMUL of a planned linear: ``rows`` input rows at act word ``x`` (``x_words``
    apart, default ``k_words``; the words past ``k_words`` are padding the weights do not
    stream), the weight block at super-beat ``wgt``, ``rows`` output rows at ``out``
    (``words`` apart); ``res``: the residual rows' address (FLAG_RESIDUAL, scaled by
    ``res_mult``)."""
    x_pad = 0 if x_words is None else x_words - plan.k_words   # >= 0: the emitter checks
    flags = _flags(res, relu) | (FLAG_INT4 if plan.fmt.int4 else 0)
    return Instr(Opcode.MATMUL, flags, int(shift), ext=wgt, a=x, out=out,
                 b=0 if res is None else res, rows=rows, k_words=plan.k_words,
                 n_tiles=plan.n_tiles, n=plan.n_out, words=words,
                 mult_b=int(res_mult) if res is not None else 0,
                 tile_mem_rows=plan.tile_mem_rows, lgm=plan.fmt.lgm, lgr=plan.fmt.lgr,
                 x_pad=x_pad)


# ------------------------------------------------------------- table-lookup engine (TMATMUL)

@dataclass(frozen=True)
class TmatmulPlan:
    """How one ternary linear runs on the TLMM engine (TMATMUL's fields).

    Attributes
    ----------
    G, T, Q : int
        Engine group size, tables and table replicas (``AccelConfig.tlmm_g/t/q``).
    n_out, k : int
        Output channels and input features.
    k_groups : int
        ``ceil(k / G)``.
    layout : dict
        :func:`ternary_format.block_layout` of the weight block.
    """

    G: int
    T: int
    Q: int
    n_out: int
    k: int
    k_groups: int
    layout: dict

    @property
    def index_records(self) -> int:
        """Records of ``T * Q`` indices per input row: ``ceil(k_groups / T) * ceil(n_out /
        Q)``."""
        return self.layout["records"]


def plan_tmatmul(name: str, cfg: AccelConfig, n_out: int, k: int) -> TmatmulPlan:
    """Check that the engine runs a ternary linear of ``[n_out, k]`` and size its TMATMUL.

    Raises
    ------
    MappingError
        The engine has no TLMM unit, the linear has more output channels than its accumulator
        (``tlmm_acc_depth``), or more than a TMATMUL field can name.
    """
    if not cfg.tlmm:
        raise MappingError(
            f"layer '{name}' has ternary weights, but this board's accelerator has no TLMM "
            "engine; use a board whose YAML has `engine: tlmm: true`, or compile with "
            "--weights int8")
    if n_out > cfg.tlmm_acc_depth:
        raise MappingError(
            f"layer '{name}' has {n_out} output channels, the TLMM accumulator holds "
            f"tlmm_acc_depth={cfg.tlmm_acc_depth}; build the accelerator with tlmm_acc_depth >= "
            f"{n_out}")
    G, T, Q = cfg.tlmm_g, cfg.tlmm_t, cfg.tlmm_q
    lay = block_layout(n_out, k, G, T, Q, cfg.beat_bytes)
    for fld, v in (("n_out", n_out), ("k_groups", lay["k_groups"])):
        if v > field_max(Opcode.TMATMUL, fld):
            raise MappingError(f"layer '{name}': {fld}={v} exceeds the TMATMUL field limit "
                               f"{field_max(Opcode.TMATMUL, fld)}")
    return TmatmulPlan(G, T, Q, n_out, k, lay["k_groups"], lay)


def tmatmul_nbytes(cfg: AccelConfig, plan: TmatmulPlan) -> int:
    """Bytes of the TMATMUL weight block."""
    return plan.layout["total_beats"] * cfg.beat_bytes


def pack_tmatmul(name: str, cfg: AccelConfig, plan: TmatmulPlan, weight, bias, mult) -> bytes:
    """The TMATMUL weight block of a planned ternary linear
    (:func:`ternary_format.pack_ternary_block`).

    Raises
    ------
    MappingError
        A weight outside ``{-1, 0, 1}``, or parameters that do not pack (naming the linear).
    """
    weight = np.asarray(weight, dtype=np.int8)
    if np.any(np.abs(weight) > 1):
        raise MappingError(f"layer '{name}' is marked ternary but has weights outside "
                           "{-1, 0, 1}")
    try:
        data = pack_ternary_block(weight, np.asarray(bias, dtype=np.int64),
                                  np.asarray(mult, dtype=np.int64), plan.G, plan.T, plan.Q,
                                  cfg.beat_bytes)
    except ValueError as e:
        raise MappingError(f"layer '{name}': cannot pack its ternary weights: {e}") from None
    assert len(data) == tmatmul_nbytes(cfg, plan), (name, len(data))
    return bytes(data)


def tmatmul_layout(plan: TmatmulPlan) -> str:
    """The memory map's ``layout`` line of a TMATMUL weight block."""
    return (f"TMATMUL block, G={plan.G} T={plan.T} Q={plan.Q}: {plan.n_out} parameter "
            f"records, then {plan.index_records} index records of {plan.T * plan.Q} "
            "(docs/architecture.md, TMATMUL weight block)")


def tmatmul_report(name: str, plan: TmatmulPlan, shape, nbytes: int) -> dict:
    """The per-layer report fields of a TMATMUL linear (``shape`` as :func:`matmul_report`)."""
    return {"name": name, "engine": "tlmm", "format": "ternary", "k_groups": plan.k_groups,
            "n_out": plan.n_out, "index_records": plan.index_records,
            "tlmm": {"G": plan.G, "T": plan.T, "Q": plan.Q},
            "out_features": int(shape[0]), "in_features": int(shape[1]), "weight_bytes": nbytes}


def absquant(a: int, out: int, rows: int, n: int, words: int, m_addr: int,
             gamma: int | None = None) -> Instr:
    """ABSQUANT: the ternary linear's per-token int8 input (``rows`` rows of ``n`` features at
    ``a``, ``words`` apart, into ``out``; in place when ``out == a``) and each row's absmax at
    ``m_addr``; ``gamma``: the act word of gamma codes applied first (FLAG_GAMMA)."""
    return Instr(Opcode.ABSQUANT, FLAG_GAMMA if gamma is not None else 0, a=a, out=out,
                 g=0 if gamma is None else gamma, rows=rows, m_addr=m_addr, n=n, words=words)


def tmatmul(plan: TmatmulPlan, shift: int, wgt: int, x: int, x_words: int, out: int, rows: int,
            words: int, m_addr: int, res: int | None = None, res_mult: int = 0,
            relu: bool = False) -> Instr:
    """The TMATMUL of a planned ternary linear: quantized input rows at ``x`` (``x_words``
    apart) with their absmax at ``m_addr``, the block at super-beat ``wgt``, ``rows`` output
    rows at ``out`` (``words`` apart); ``res`` as :func:`matmul`."""
    return Instr(Opcode.TMATMUL, _flags(res, relu), int(shift), ext=wgt, a=x, out=out,
                 b=0 if res is None else res, rows=rows, k_groups=plan.k_groups,
                 n_out=plan.n_out, x_words=x_words, words=words,
                 mult_b=int(res_mult) if res is not None else 0, m_addr=m_addr)
