"""Choose the accelerator configuration for a board and check that it fits.

The resource model here is deliberately simple and explicit, and was checked against Yosys
``synth_xilinx -family xcup`` (``hwflow.export.fit``) on the KV260 default and the test
configuration (DSP and BRAM counts equal):

- DSP48E2: one per MAC slot (P*L; each does the packed pair of int8 MACs), the epilogues'
  multipliers: each of the ``E`` epilogues (:func:`hwflow.hw.sequencer.epilogue_lanes`) has
  (acc+bias)*mult, a 33x17 signed product (2 slices: one covers 27 bits of one operand), and
  res*res_mult, an 8x17 one (1 slice); and one in the controller (``n_tiles *
  tile_mem_rows``, 16x16 bits, for the weight prefetch length): P*L + 3*E + 1. The int4
  dequantizer's 4x4-bit products are shift-and-add logic (no DSP). With ``transformer``, the
  vector and attention units and the POS address multiplier add ``5 L + 10`` (fitted on
  Yosys runs at L = 4, 8, 16 with two chains: 30, 50 and 90 more DSP48E2 than without; per
  lane the attention unit's q.k / p.v product and its two-slice rescale and output products).
- Block RAM: the buffers are byte-lane memories (hw/buffers.py). The activation buffer is L
  lanes of 8 bits x ``act_depth`` with three read ports (engine rows b and b+1, residual), so
  stored three times (block RAMs have one read port next to the write port); the weight ring
  is L lanes of 8P bits x ``weight_depth``, read by the engine (all lanes) and by the parameter
  reader, which only uses the lanes holding bias and multiplier bytes (6 of each 8-byte record,
  :func:`param_lanes`; the other lanes of its copy are trimmed), plus, with ``sparse``, L
  index lanes of 4P bits read by the engine only. Each lane memory takes the cheapest aspect
  ratio of the family's block (:data:`BRAM_SHAPES`: Xilinx RAMB36E2 / RAMB18E2, ECP5 DP16KD,
  iCE40 SB_RAM40_4K); memories of at most ``LUTRAM_DEPTH`` words go to distributed RAM, as
  Yosys maps them.
"""

from __future__ import annotations

from hwflow.boards import Board
from hwflow.hw.config import AccelConfig
from hwflow.hw.sequencer import epilogue_lanes

from .errors import MappingError

EPILOGUE_DSP = 3               # per epilogue lane
CONTROL_DSP = 1
TRANSFORMER_DSP_PER_LANE = 5    # vector + attention units, per activation lane (L)
TRANSFORMER_DSP_FIXED = 10
PARAM_BYTES = 6                 # bias (int32) + mult (u16) of a record; two zero bytes unread
RECORD_BYTES = 8
ACT_READ_PORTS = 3
#: Boards with fewer LUTs get a dense-int8 engine (no sparse selectors, index ring, int4 path).
SMALL_FPGA_LUTS = 20000

# Block RAM aspect ratios by block size (Kb): (depth, width, cost in blocks of that size).
# Xilinx: a RAMB18E2 is half a 36 Kb block (Vivado/Yosys report them apart; two pack into one
# RAMB36 site), widths include the parity bits (9, 18, 36, 72 in simple dual port).
BRAM_SHAPES = {
    36: [(512, 36, .5), (1024, 18, .5), (2048, 9, .5), (4096, 4, .5), (8192, 2, .5),
         (16384, 1, .5), (512, 72, 1), (1024, 36, 1), (2048, 18, 1), (4096, 9, 1),
         (8192, 4, 1), (16384, 2, 1), (32768, 1, 1)],
    18: [(512, 36, 1), (1024, 18, 1), (2048, 9, 1), (4096, 4, 1), (8192, 2, 1), (16384, 1, 1)],
    4: [(256, 16, 1), (512, 8, 1), (1024, 4, 1), (2048, 2, 1)],
}
# Largest depth kept in distributed RAM per block size: Xilinx LUTRAM (RAM64M8 and friends),
# ECP5 DPR16X4; iCE40 has none. The test configuration's 64-word buffers land in LUTRAM.
LUTRAM_DEPTH = {36: 64, 18: 16, 4: 0}


def choose_config(board: Board, **overrides) -> AccelConfig:
    """The board's default engine (``engine:`` in its YAML) with optional overrides.

    The number of memory ports defaults to what one weight row per cycle needs
    (``chains * chain_len / port_bytes``), capped by the board's channels. ``sparse`` and
    ``int4`` (build the sparse selectors and index ring / the int4 dequantizer) and
    ``transformer`` (the vector and attention units, GATHER, POS) default to true, except on
    boards with fewer than :data:`SMALL_FPGA_LUTS` LUTs (the iCE40 UP5K's 5280 cells hold only
    a dense int8 1 x 2 engine). ``tlmm`` (the ternary table-lookup engine) defaults to false;
    its sizes ``tlmm_g``, ``tlmm_t``, ``tlmm_q``, ``tlmm_acc_depth`` to AccelConfig's (3, 4, 4,
    1024) unless the board's YAML or an override names them.
    """
    eng = dict(board.engine)
    eng.update({k: v for k, v in overrides.items() if v is not None})
    chains = eng.get("chains", 8)
    chain_len = eng.get("chain_len", 16)
    port_bytes = int(board.memory["port_bytes"])
    small = board.resources["lut"] < SMALL_FPGA_LUTS
    want_ports = max(1, chains * chain_len // port_bytes)
    ports = eng.get("mem_ports", min(want_ports, int(board.memory["channels"])))
    if ports > board.memory["channels"]:
        raise MappingError(f"board {board.name}: {ports} memory ports requested, it has "
                           f"{board.memory['channels']} channels")
    try:
        return AccelConfig(chains=chains, chain_len=chain_len, mem_ports=ports,
                           port_bytes=port_bytes, act_depth=eng.get("act_depth", 2048),
                           weight_depth=eng.get("weight_depth", 256),
                           sparse=bool(eng.get("sparse", not small)),
                           int4=bool(eng.get("int4", not small)),
                           transformer=bool(eng.get("transformer", not small)),
                           tlmm=bool(eng.get("tlmm", False)),
                           tlmm_g=eng.get("tlmm_g", 3), tlmm_t=eng.get("tlmm_t", 4),
                           tlmm_q=eng.get("tlmm_q", 4),
                           tlmm_acc_depth=eng.get("tlmm_acc_depth", 1024))
    except ValueError as e:
        raise MappingError(f"board {board.name}: invalid engine configuration: {e}") from None


def _shapes(kbits: int) -> list:
    if kbits in BRAM_SHAPES:
        return BRAM_SHAPES[kbits]
    bits = kbits * 1024           # another block size: power-of-two widths up to 64 bits
    return [(bits // w, w, 1) for w in (1, 2, 4, 8, 16, 32, 64) if bits // w >= 1]


def memory_blocks(width: int, depth: int, kbits: int = 36) -> float:
    """Blocks (of ``kbits`` Kb) for one ``width`` x ``depth`` memory with one read port."""
    if depth <= LUTRAM_DEPTH.get(kbits, 0):
        return 0
    return min(-(-width // w) * -(-depth // d) * cost for d, w, cost in _shapes(kbits))


def param_lanes(cfg: AccelConfig) -> int:
    """Ring lanes the parameter reader uses: lane ``j mod L`` of every record byte ``j`` (bias
    and multiplier of segment ``j // 8``) of a chain's parameter rows; segments ``< G``, or only
    segment 0 on a dense-only engine (``sparse`` off)."""
    segments = cfg.groups if cfg.sparse else 1
    return len({j % cfg.chain_len for j in range(RECORD_BYTES * segments)
                if j % RECORD_BYTES < PARAM_BYTES})


def estimate_resources(cfg: AccelConfig, bram_kbits: int = 36) -> dict:
    """Analytic resource estimate: ``{kind: used}`` for dsp and bram (see module docstring).

    Parameters
    ----------
    cfg : AccelConfig
    bram_kbits : int
        Block RAM size of the target family (``Board.bram_kbits``): 36 (Xilinx), 18 (ECP5),
        4 (iCE40). ``bram`` is counted in blocks of that size.
    """
    L, P, D = cfg.chain_len, cfg.chains, cfg.weight_depth
    act = ACT_READ_PORTS * L * memory_blocks(8, cfg.act_depth, bram_kbits)
    ring = (L + param_lanes(cfg)) * memory_blocks(8 * P, D, bram_kbits)
    if cfg.sparse:
        ring += L * memory_blocks(4 * P, D, bram_kbits)
    units = (TRANSFORMER_DSP_PER_LANE * L + TRANSFORMER_DSP_FIXED) if cfg.transformer else 0
    return {"dsp": cfg.dsp_slices + EPILOGUE_DSP * epilogue_lanes(cfg) + CONTROL_DSP + units,
            "bram": int(-(-(act + ring) // 1))}


def check_fit(cfg: AccelConfig, board: Board) -> dict:
    """Compare the estimate with the board; raise :class:`MappingError` with the numbers if not."""
    used = estimate_resources(cfg, getattr(board, "bram_kbits", 36))
    report = {k: {"used": v, "available": board.resources[k]} for k, v in used.items()}
    over = [f"{k.upper()} {r['used']} > {r['available']}" for k, r in report.items()
            if r["used"] > r["available"]]
    if over:
        raise MappingError(f"design does not fit {board.name}: " + ", ".join(over)
                           + " (needed > available); use a smaller engine")
    return report


# ------------------------------------------------------------------------- TLMM sizing

#: Group index bits per G (golden.ternary.GROUP_BITS; the engine's record entries).
TLMM_GROUP_BITS = {2: 4, 3: 5, 4: 7}
#: Share of the board's LUTs and block RAM the TLMM engine may take when the mapper sizes it
#: (the rest: matrix engine, vector and attention units, controller, memory ports, shell).
TLMM_LUT_SHARE = 0.25
TLMM_BRAM_SHARE = 0.25
#: Largest T and Q the sizing search tries (powers of two).
TLMM_MAX_TQ = 64
#: Reference layer of the cycle objective (a square GEMV of a 2k-wide model).
TLMM_REF_LAYER = (2048, 2048)
#: LUT model constants of :func:`tlmm_resources` (LUT6 + LUT-RAM cells): per lookup (``lookup``:
#: the H-entry table read mux and its adder-tree node), per output lane (``lane``: the int32
#: accumulate, mirror negation and write-back), the index gearbox's barrel shifter
#: (``shifter``, times ``(T*Q)**2``: its record width and its window both grow with ``T*Q``),
#: and the rest (``fixed``: control, sequential dividers, epilogue, activation byte reader).
TLMM_LUT = {"lookup": 23.97, "lane": 183.92, "shifter": 1.791, "fixed": 2867.8}
#: How the constants were obtained (reported with the sizing).
TLMM_LUT_SOURCE = ("fitted (least squares): Yosys synth_xilinx -family xcup "
                   "(hwflow.export.fit) of hw/tlmm.py TernaryLookupMatmul in flat ports, G=3, "
                   "SB=16 B, acc_depth 1024, at (T, Q) = (2, 2), (4, 4), (8, 4), (4, 8), "
                   "(8, 8): LUT + LUTRAM 3402, 4354, 6233, 6970, 13199; model 3360, 4445, "
                   "6204, 6940, 13208 (within 2.1%); other G and SB extrapolated")
#: DSP48E2 of the TLMM epilogue (acc*m, (acc*m + bias)*mult, res*res_mult): 6 in every
#: synthesized point.
TLMM_DSP = 6


def _tlmm_dims(G: int, T: int, Q: int, acc_depth: int, SB: int) -> dict:
    """The engine's sizes the resource model reads (hw/tlmm.py: ``TernaryLookupMatmul``)."""
    bits = TLMM_GROUP_BITS[G]
    sbb = 8 * SB
    rb = T * Q * bits
    return {"H": (3 ** G + 1) // 2, "TW": (128 * G).bit_length() + 1, "record_bits": rb,
            "window_bits": max(2, -(-(sbb - 1 + rb) // sbb)) * sbb,
            "shift_levels": max(1, (sbb - 1).bit_length()),
            "acc_entries": -(-acc_depth // Q), "param_entries": -(-8 * acc_depth // SB)}


def tlmm_resources(G: int, T: int, Q: int, acc_depth: int, SB: int,
                   bram_kbits: int = 36) -> dict:
    """Resource model of the TLMM engine (``hw/tlmm.py``) with ``T`` tables of ``Q`` read ports.

    The engine stores ``H = (3**G + 1) / 2`` entries per table (the other half are the
    negated mirror), ``TW = bits(128 G) + 1`` bits each, with ``Q`` asynchronous read ports;
    every cycle it does ``T*Q`` lookups, sums ``T`` of them per output lane in an adder tree
    and read-modify-writes ``Q`` int32 accumulator lanes; the index records (``RB = T*Q*bits``
    bits) come out of a gearbox window of ``W = max(2, ceil((8*SB - 1 + RB) / (8*SB))) * 8*SB``
    bits through a barrel shifter of ``lv = bits(8*SB - 1)`` levels::

        LUT  = a * T*Q * (H*TW / 140)         lookups (table read mux + adder-tree node)
             + b * Q                          accumulator lanes
             + c * (T*Q)**2 * (lv / 7)        barrel shifter of the index gearbox
             + d                              control, dividers, epilogue, activation reader
        BRAM = blocks(32*Q, ceil(acc_depth / Q))      accumulators (Q lanes per entry)
             + blocks(8*SB, ceil(8*acc_depth / SB))   parameter memory (always block RAM)
        DSP  = 6                                      epilogue multipliers
        URAM = 0

    ``blocks(width, depth)`` is :func:`memory_blocks` without distributed RAM; ``a, b, c, d``
    = :data:`TLMM_LUT` (``lookup``, ``lane``, ``shifter``, ``fixed``), fitted at G = 3 and SB =
    16 B (:data:`TLMM_LUT_SOURCE`), where ``H*TW = 140`` and ``lv = 7``; the two ratios carry the
    fit to other G and SB as estimates (not synthesized). BRAM: 3, 4, 4 at (T, Q) = (2, 2),
    (4, 4), (8, 4) equal Yosys; at (4, 8) and (8, 8) the model says 6 and 6, Yosys 8 and 11
    (it spreads the 32*Q-bit accumulator entries over more blocks).

    Returns
    -------
    dict
        ``lut``, ``bram``, ``dsp``, ``uram`` and ``terms`` (the LUT terms by name).
    """
    d = _tlmm_dims(G, T, Q, acc_depth, SB)
    c = TLMM_LUT
    size = d["H"] * d["TW"] / 140           # 140 = H * TW at G = 3, where a was fitted
    terms = {"lookup": c["lookup"] * size * T * Q,
             "lane": c["lane"] * Q,
             "shifter": c["shifter"] * (T * Q) ** 2 * d["shift_levels"] / 7,
             "fixed": c["fixed"]}
    bram = (_blocks(32 * Q, d["acc_entries"], bram_kbits)
            + _blocks(8 * SB, d["param_entries"], bram_kbits))
    return {"lut": int(round(sum(terms.values()))), "bram": float(bram), "dsp": TLMM_DSP,
            "uram": 0, "terms": {k: round(v, 1) for k, v in terms.items()}}


def _blocks(width: int, depth: int, kbits: int) -> float:
    """Block RAM of one memory, never distributed RAM (as Yosys maps the TLMM's memories)."""
    return min(-(-width // w) * -(-depth // dd) * cost for dd, w, cost in _shapes(kbits))


def tlmm_row_cycles(G: int, T: int, Q: int, k: int, n: int) -> int:
    """Cycles of one activation row of a ``k -> n`` ternary linear (hw/tlmm.py, memory keeping
    up, output bytes excluded): ``ceil(k_groups/T) * (T*G + 1 + H + 1 + ceil(n/Q) + 1)``."""
    kg = -(-k // G)
    H = (3 ** G + 1) // 2
    return -(-kg // T) * (T * G + H + 3 + -(-n // Q))


def size_tlmm(board: Board, G: int = 3, acc_depth: int = 1024, SB: int | None = None,
              lut_share: float = TLMM_LUT_SHARE, bram_share: float = TLMM_BRAM_SHARE,
              ref_layer: tuple = TLMM_REF_LAYER) -> dict:
    """Choose the TLMM's ``T`` and ``Q`` for ``board``.

    Candidates are powers of two up to :data:`TLMM_MAX_TQ`. A candidate is feasible when its
    :func:`tlmm_resources` fit ``lut_share`` of the board's LUTs and ``bram_share`` of its block
    RAM, and its index record fits one super-beat (``T*Q*bits <= 8*SB``: a wider record streams
    slower than one per cycle, so more lookups would idle on the memory). Among the feasible
    candidates with the most lookups per cycle (``T*Q``), the one with the smallest
    ``LUT * cycles`` of the reference layer (:func:`tlmm_row_cycles` of ``ref_layer``) wins.

    Parameters
    ----------
    board : Board
    G : int
        Group size (2, 3, 4).
    acc_depth : int
        Accumulator depth (the largest ``n_out``).
    SB : int, optional
        Super-beat bytes (default: the board's one-port beat times its channels, as
        :func:`choose_config` sizes the ports).
    lut_share, bram_share : float
        The engine's share of the board.
    ref_layer : (int, int)
        ``(K, N)`` of the layer the cycle tie-break uses.

    Returns
    -------
    dict
        ``T``, ``Q``, ``lookups_per_cycle``, ``resources`` (of the choice), and the formula
        inputs: ``G``, ``acc_depth``, ``SB``, ``lut_budget``, ``bram_budget``,
        ``max_lookups`` (the super-beat limit), ``constants``, ``constants_source``.

    Raises
    ------
    MappingError
        Not even ``T = Q = 1`` fits the budget.
    """
    if G not in TLMM_GROUP_BITS:
        raise MappingError(f"TLMM group size G={G}: must be one of {sorted(TLMM_GROUP_BITS)}")
    if SB is None:
        eng = dict(board.engine)
        pb = int(board.memory["port_bytes"])
        want = max(1, eng.get("chains", 8) * eng.get("chain_len", 16) // pb)
        SB = pb * eng.get("mem_ports", min(want, int(board.memory["channels"])))
    kb = getattr(board, "bram_kbits", 36)
    lut_budget = lut_share * board.resources["lut"]
    bram_budget = bram_share * board.resources["bram"]
    max_lookups = 8 * SB // TLMM_GROUP_BITS[G]
    pows = [1 << i for i in range(TLMM_MAX_TQ.bit_length()) if 1 << i <= TLMM_MAX_TQ]
    feasible = []
    for T in pows:
        for Q in pows:
            if T * Q > max(1, max_lookups):
                continue
            r = tlmm_resources(G, T, Q, acc_depth, SB, kb)
            if r["lut"] <= lut_budget and r["bram"] <= bram_budget:
                cyc = tlmm_row_cycles(G, T, Q, *ref_layer)
                feasible.append((-(T * Q), r["lut"] * cyc, T, Q, r, cyc))
    if not feasible:
        r = tlmm_resources(G, 1, 1, acc_depth, SB, kb)
        raise MappingError(f"board {board.name}: the smallest TLMM engine (T = Q = 1) needs "
                           f"LUT {r['lut']}, BRAM {r['bram']:g}; its budget is LUT "
                           f"{lut_budget:.0f}, BRAM {bram_budget:.0f} ({lut_share:.0%} / "
                           f"{bram_share:.0%} of the board; needed > available)")
    _, _, T, Q, res, cyc = min(feasible)
    return {"T": T, "Q": Q, "G": G, "lookups_per_cycle": T * Q, "acc_depth": acc_depth,
            "SB": SB, "lut_budget": int(lut_budget), "bram_budget": bram_budget,
            "lut_share": lut_share, "bram_share": bram_share, "max_lookups": max_lookups,
            "ref_layer": list(ref_layer), "ref_layer_row_cycles": cyc, "resources": res,
            "constants": dict(TLMM_LUT), "constants_source": TLMM_LUT_SOURCE,
            "candidates": len(feasible)}


def tlmm_config(board: Board, cfg: AccelConfig, acc_depth: int | None = None) -> tuple:
    """``cfg`` with the TLMM engine on, and the sizing report.

    ``tlmm_g``, ``tlmm_t``, ``tlmm_q`` and ``tlmm_acc_depth`` come from the board YAML's
    ``engine:`` where it sets them; ``T`` and ``Q`` not set there are chosen by
    :func:`size_tlmm`. ``acc_depth`` (the largest ``n_out`` a model needs) raises the
    accumulator depth above the YAML's (or the default 1024).

    Returns
    -------
    (AccelConfig, dict)
        The configuration and ``{"source": "board" | "sized", ...}`` (with :func:`size_tlmm`'s
        formula inputs when sized).
    """
    from dataclasses import replace

    eng = board.engine
    G = int(eng.get("tlmm_g", cfg.tlmm_g))
    depth = max(int(eng.get("tlmm_acc_depth", cfg.tlmm_acc_depth)), int(acc_depth or 0))
    if "tlmm_t" in eng and "tlmm_q" in eng:
        T, Q = int(eng["tlmm_t"]), int(eng["tlmm_q"])
        rep = {"source": "board", "G": G, "T": T, "Q": Q, "acc_depth": depth,
               "resources": tlmm_resources(G, T, Q, depth, cfg.beat_bytes,
                                           getattr(board, "bram_kbits", 36))}
    else:
        rep = {"source": "sized", **size_tlmm(board, G, depth, cfg.beat_bytes)}
        T = int(eng.get("tlmm_t", rep["T"]))
        Q = int(eng.get("tlmm_q", rep["Q"]))
        rep["T"], rep["Q"] = T, Q
    try:
        out = replace(cfg, tlmm=True, tlmm_g=G, tlmm_t=T, tlmm_q=Q, tlmm_acc_depth=depth)
    except ValueError as e:
        raise MappingError(f"board {board.name}: invalid TLMM configuration: {e}") from None
    return out, rep


def check_fit_tlmm(cfg: AccelConfig, board: Board) -> dict:
    """:func:`check_fit` plus the TLMM engine of ``cfg`` (when ``cfg.tlmm``): its block RAM and
    DSPs are added to the accelerator's, and its LUTs (:func:`tlmm_resources`) are checked
    against the board's (the only LUT figure the model has: the other units' LUTs are not
    estimated). Raises :class:`MappingError` with the numbers if anything does not fit."""
    report = check_fit(cfg, board)
    if not cfg.tlmm:
        return report
    t = tlmm_resources(cfg.tlmm_g, cfg.tlmm_t, cfg.tlmm_q, cfg.tlmm_acc_depth, cfg.beat_bytes,
                       getattr(board, "bram_kbits", 36))
    out = {k: dict(v) for k, v in report.items()}
    out["dsp"]["used"] += t["dsp"]
    out["bram"]["used"] = int(-(-(out["bram"]["used"] + t["bram"]) // 1))
    out["lut_tlmm"] = {"used": t["lut"], "available": board.resources["lut"]}
    over = [f"{k.upper()} {out[k]['used']} > {out[k]['available']}" for k in out
            if out[k]["used"] > out[k]["available"]]
    if over:
        raise MappingError(f"design with the TLMM engine (G={cfg.tlmm_g}, T={cfg.tlmm_t}, "
                           f"Q={cfg.tlmm_q}) does not fit {board.name}: " + ", ".join(over)
                           + " (needed > available); use smaller tlmm_t/tlmm_q")
    out["tlmm"] = t
    return out
