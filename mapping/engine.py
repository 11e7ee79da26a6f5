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
    a dense int8 1 x 2 engine).
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
                           transformer=bool(eng.get("transformer", not small)))
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
