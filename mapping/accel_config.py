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
  vector and attention units and the POS address multiplier add ``H (3 L + 5) + 2 L + 9``
  (``H = attn_heads``): per attention lane L q.k / p.v products (8 x 17 bits: one slice
  each), L two-slice rescales of the 40-bit accumulators, the two-slice ``s * smul`` and
  ``l * alpha``, and the score soft-cap's ``y * cap`` (13 x 10 bits: one); shared by the
  lanes, L two-slice output products (``* omul``) and the burst length (one), the sliding
  window's first key times ``pos_sb`` (33 x 8 bits: two); the vector
  unit 5 (``5 V`` with ``V = vec_lanes`` lanes, one ``x * r * mult`` path and one ``x * gamma``
  product each); the controller's POS x pos_stride 1. Equal to Yosys on the attention unit
  alone (``H (3 L + 5) + 2 L + 3`` at eight (L, H) points: ``benchmarks/fit_attention_lanes.py``,
  ``tests/hwflow/export/test_fit.py``), on the whole accelerator at L = 4, H = 2 (66 at V = 1,
  81 at V = 4), and, at H = 1, to the ``5 L + 14`` of the fit points of
  ``mapping/fits/resources.json``.
- Block RAM: the buffers are byte-lane memories (hw/buffers.py). The activation buffer is L
  lanes of 8 bits x ``act_depth`` with three read ports (engine rows b and b+1, residual), so
  stored three times (block RAMs have one read port next to the write port); the weight ring
  is L lanes of 8P bits x ``weight_depth``, read by the engine (all lanes) and by the parameter
  reader, which only uses the lanes holding bias and multiplier bytes (6 of each 8-byte record,
  :func:`param_lanes`; the other lanes of its copy are trimmed), plus, with ``sparse``, L
  index lanes of 4P bits read by the engine only. Each lane memory takes the cheapest aspect
  ratio of the family's block (:data:`BRAM_SHAPES`: Xilinx RAMB36E2 / RAMB18E2, ECP5 DP16KD,
  iCE40 SB_RAM40_4K); memories go to distributed RAM as Yosys maps them: on Xilinx when
  their LUT-RAM cost is below their block RAM cost (:func:`lutram_cells`: Yosys
  ``memory_libmap`` costs, e.g. a 256 x 8 index lane goes to LUT-RAM, 256 x 16 to a RAMB18E2),
  on ECP5 up to ``LUTRAM_DEPTH`` words, on iCE40 never. With ``transformer``, the attention
  unit's score soft-cap ROMs (1024 x 14 bits, :data:`ATTN_SOFTCAP_ROM`): one per two lanes,
  read on both ports of its block (a RAMB18E2 on Xilinx; one per lane on iCE40, whose blocks
  have one read port); with the vector unit, one gate ROM (1024 x 16 bits,
  :data:`VECTOR_GATE_ROM`) per lane.
- UltraRAM (:func:`place_memories`): with ``ring_uram`` the ring's lane memories (the
  engine's and the parameter reader's copies, and the index lanes), with ``act_uram`` the
  activation buffer (three ``8L``-bit copies with byte enables), with ``tlmm_uram`` the TLMM's
  accumulator and record buffer are marked ``ram_style = "ultra"`` and each memory takes
  ``ceil(width / 72) * ceil(depth / 4096)`` URAM288 (:func:`uram_blocks`; Yosys
  ``synth_xilinx -family xcup`` maps a marked memory to URAM288 whatever its size) instead of
  block RAM. Yosys joins URAM288 deeper than one with LUT multiplexers: 424 LUTs for the
  activation buffer at L = 16, 8192 words (12 URAM288), about 1.1 per bit, copy and block
  past the first (:data:`URAM_CASCADE_LUT`), counted in the LUT estimate.
- State-space units (``cfg.ssm``, :func:`ssm_resources`): each unit's LUT, FF and DSP from
  Yosys runs of the unit alone at several sizes (:data:`SSM_STATE`, :data:`CONV_LANE`), the scan
  state and conv history memories as above, the executors around them (per lane, from the whole
  accelerator with and without the units).
- LUT and FF (Xilinx UltraScale+ fabric, 36 Kb block families): linear in
  :func:`resource_features` with coefficients fitted by least squares on Yosys
  ``synth_xilinx -family xcup`` runs of the whole accelerator (``hwflow.resource_fit``, data
  in ``mapping/fits/resources.json``, refreshed by ``benchmarks/fit_resources.py``,
  which also reports the error on held-out parameter sets); see :func:`estimate_resources`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from hwflow.boards import FABRIC_PROXIES, Board
from hwflow.hw.config import TLMM_GROUP_BITS, AccelConfig
from hwflow.hw.contract import epilogue_lanes, int4_capable, tlmm_epilogue_lanes

from .errors import MappingError

EPILOGUE_DSP = 3               # per epilogue lane
CONTROL_DSP = 1
#: Transformer units' DSP48E2 (module docstring): per attention lane ``3 L + 5`` (the score
#: soft-cap's ``y * cap``, 13 x 10 bits, is the 5th), shared ``2 L + 9`` (the lanes' output
#: products and burst length, the vector unit's first lane, the POS multiplier, and the
#: sliding window's first key times ``pos_sb``, 33 x 8 bits: 2).
ATTN_LANE_DSP_PER_BYTE, ATTN_LANE_DSP_FIXED = 3, 5
#: The attention unit's score soft-cap ROM, ``(width, depth)`` (hw.attention.SOFTCAP_ROM),
#: and the lanes one ROM serves (its block's two read ports).
ATTN_SOFTCAP_ROM, ATTN_SOFTCAP_ROM_LANES = (14, 1024), 2
TRANSFORMER_DSP_PER_BYTE, TRANSFORMER_DSP_FIXED = 2, 9
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
#: Xilinx LUT-RAM cells of one read and one write port (Yosys share/xilinx/lutrams_xcu.txt):
#: (depth, width) of RAM32M16 (SDP 32 x 14), RAM64M8 (SDP 64 x 7), RAM128X1D (DP 128 x 1 x
#: 2: 128 x 2 in the libmap's terms) and RAM256X1D (256 x 1).
XILINX_LUTRAM_CELLS = ((32, 14), (64, 7), (128, 2), (256, 1))
#: Yosys memory_libmap costs: a LUT-RAM cell 16 (scaled by the share of its width used), a
#: RAMB18E2 129 and a RAMB36E2 257 (share/xilinx/brams_xc4v.txt): 258 per 36 Kb block.
LUTRAM_CELL_COST = 16
BRAM36_COST = 258


def default_attn_heads(beat_bytes: int, chain_len: int) -> int:
    """Attention lanes when the board does not name them: a whole super-beat of K per cycle
    for models without GQA (``SB / L`` kv heads of one query head each), and at least 4, so
    that GQA groups of up to 4 query heads need no second read of their kv head."""
    return max(4, beat_bytes // chain_len)


def default_mem_ports(board: Board, chains: int, chain_len: int) -> int:
    """Memory ports of an engine that names none: what one weight row per cycle needs
    (``chains * chain_len / port_bytes``), at most the board's ``memory.ports``."""
    want = max(1, chains * chain_len // int(board.memory["port_bytes"]))
    return min(want, board.max_mem_ports)


#: What a board's ``engine:`` leaves out is AccelConfig's default (one place for them), but for
#: the values chosen from the board: the memory ports, the attention lanes, the vector lanes
#: and the small-FPGA flags (:func:`choose_config`).
ENGINE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(AccelConfig)}


def engine_value(engine: dict, key: str):
    """``engine[key]``, or AccelConfig's default for it (:data:`ENGINE_DEFAULTS`)."""
    return engine.get(key, ENGINE_DEFAULTS[key])


def choose_config(board: Board, **overrides) -> AccelConfig:
    """The board's default engine (``engine:`` in its YAML) with optional overrides.

    The number of memory ports defaults to what one weight row per cycle needs
    (``chains * chain_len / port_bytes``), capped by the board's ``memory.ports``. ``sparse`` and
    ``int4`` (build the sparse selectors and index ring / the int4 dequantizer) and
    ``transformer`` (the vector and attention units, GATHER, POS) default to true, except on
    boards with fewer than :data:`SMALL_FPGA_LUTS` LUTs (the iCE40 UP5K's 5280 cells hold only
    a dense int8 1 x 2 engine). ``tlmm`` (the ternary table-lookup engine) defaults to false;
    every size the YAML leaves out (``chains``, ``chain_len``, ``act_depth``, ``weight_depth``,
    ``tlmm_g``, ``tlmm_t``, ``tlmm_q``, ``tlmm_acc_depth``) to AccelConfig's
    (:data:`ENGINE_DEFAULTS`); ``attn_heads`` to
    :func:`default_attn_heads`; ``vec_lanes`` to the board's (1 if it names none), within one
    activation word of the chosen ``chain_len`` (their gcd) unless an override names it.
    """
    eng = dict(board.engine)
    eng.update({k: v for k, v in overrides.items() if v is not None})
    chains, chain_len = engine_value(eng, "chains"), engine_value(eng, "chain_len")
    port_bytes = int(board.memory["port_bytes"])
    small = board.resources["lut"] < SMALL_FPGA_LUTS
    ports = eng.get("mem_ports", default_mem_ports(board, chains, chain_len))
    if ports > board.max_mem_ports:
        raise MappingError(f"board {board.name}: {ports} memory ports requested, it has "
                           f"{board.max_mem_ports} (memory.ports)")
    try:
        return AccelConfig(chains=chains, chain_len=chain_len, mem_ports=ports,
                           port_bytes=port_bytes, act_depth=engine_value(eng, "act_depth"),
                           weight_depth=engine_value(eng, "weight_depth"),
                           sparse=bool(eng.get("sparse", not small)),
                           int4=bool(eng.get("int4", not small)),
                           transformer=bool(eng.get("transformer", not small)),
                           tlmm=bool(eng.get("tlmm", False)),
                           tlmm_g=engine_value(eng, "tlmm_g"),
                           tlmm_t=engine_value(eng, "tlmm_t"),
                           tlmm_q=engine_value(eng, "tlmm_q"),
                           tlmm_acc_depth=engine_value(eng, "tlmm_acc_depth"),
                           tlmm_rows=engine_value(eng, "tlmm_rows"),
                           tlmm_passes=engine_value(eng, "tlmm_passes"),
                           attn_heads=eng.get("attn_heads", default_attn_heads(
                               ports * port_bytes, chain_len)),
                           ring_uram=bool(eng.get("ring_uram", False)),
                           # the board's lanes, within one activation word of an overridden
                           # chain_len; an explicit value is taken as given (and checked)
                           vec_lanes=(overrides["vec_lanes"] if overrides.get("vec_lanes")
                                      else math.gcd(engine_value(eng, "vec_lanes"), chain_len)))
    except ValueError as e:
        raise MappingError(f"board {board.name}: invalid engine configuration: {e}") from None


def _shapes(kbits: int) -> list:
    if kbits in BRAM_SHAPES:
        return BRAM_SHAPES[kbits]
    bits = kbits * 1024           # another block size: power-of-two widths up to 64 bits
    return [(bits // w, w, 1) for w in (1, 2, 4, 8, 16, 32, 64) if bits // w >= 1]


def lutram_cells(width: int, depth: int) -> float:
    """Xilinx LUT-RAM cells (:data:`XILINX_LUTRAM_CELLS`, width used as a fraction) of the
    cheapest mapping of one ``width`` x ``depth`` memory with one read port."""
    return min(-(-depth // d) * width / w for d, w in XILINX_LUTRAM_CELLS)


def memory_blocks(width: int, depth: int, kbits: int = 36) -> float:
    """Blocks (of ``kbits`` Kb) for one ``width`` x ``depth`` memory with one read port; 0 when
    it goes to distributed RAM (module docstring)."""
    blocks = min(-(-width // w) * -(-depth // d) * cost for d, w, cost in _shapes(kbits))
    if kbits == 36:
        return 0 if LUTRAM_CELL_COST * lutram_cells(width, depth) < BRAM36_COST * blocks \
            else blocks
    return 0 if depth <= LUTRAM_DEPTH.get(kbits, 0) else blocks


#: URAM288 aspect ratio in simple dual port (Yosys share/xilinx/urams.txt: 12 address bits,
#: 72 data bits); the 144-bit mode is single port, which the ring's separate write and read
#: ports cannot use.
URAM_DEPTH, URAM_WIDTH = 4096, 72


def uram_blocks(width: int, depth: int) -> int:
    """URAM288 for one ``width`` x ``depth`` memory with one read port."""
    return -(-width // URAM_WIDTH) * -(-depth // URAM_DEPTH)


def param_lanes(cfg: AccelConfig) -> int:
    """Ring lanes the parameter reader uses: lane ``j mod L`` of every record byte ``j`` (bias
    and multiplier of segment ``j // 8``) of a chain's parameter rows; segments ``< G``, or only
    segment 0 on a dense-only engine (``sparse`` off)."""
    segments = cfg.groups if cfg.sparse else 1
    return len({j % cfg.chain_len for j in range(RECORD_BYTES * segments)
                if j % RECORD_BYTES < PARAM_BYTES})


#: Resource kinds of the estimate (the keys of a board's ``resources:``).
RESOURCE_KINDS = ("lut", "ff", "dsp", "bram", "uram")
#: The fitted LUT / FF model (``hwflow.resource_fit``, ``benchmarks/fit_resources.py``).
RESOURCES_JSON = Path(__file__).resolve().parent / "fits" / "resources.json"
#: Features of each fitted kind (:func:`resource_features`); ``dsp``, ``bram`` and ``uram`` are
#: the analytic counts (module docstring), named here by their formula.
RESOURCE_FEATURES = {
    # the subsets of resource_features() with the smallest leave-one-out error (max abs %)
    # on the fit points, among those keeping 1, PL, tf and tf_L (hwflow.resource_fit)
    "lut": ("1", "PL", "PL_sparse", "PL_int4", "SB", "E", "lutram", "tf", "tf_L"),
    "ff": ("1", "PL", "PL_sparse", "PL_int4", "E", "lutram", "tf", "tf_L"),
    "dsp": "P*L + 3*E + 1 + transformer*(attn_heads*(3*L + 5) + 2*L + 9)"
           " + vector_unit*5*(vec_lanes - 1)",
    "bram": "(1 - act_uram)*3*L*blocks(8, act_depth) + (1 - ring_uram)*((L + param_lanes)"
            "*blocks(8*P, weight_depth) + sparse*L*blocks(4*P, weight_depth))"
            " + transformer*ceil(attn_heads/2)*blocks(14, 1024)"
            " + vector_unit*vec_lanes*blocks(16, 1024)",
    "uram": "ring_uram*((L + param_lanes)*urams(8*P, weight_depth)"
            " + sparse*L*urams(4*P, weight_depth)) + act_uram*3*urams(8*L, act_depth)",
}
#: The kinds counted from the configuration, not fitted.
ANALYTIC_KINDS = ("dsp", "bram", "uram")


def resource_features(cfg: AccelConfig) -> dict:
    """Features of the fitted LUT / FF model (Xilinx UltraScale+ fabric).

    ``1`` (controller, memory ports, control registers), ``PL`` (MAC slices: Yosys maps each
    slice's A/B/M/P registers and its cascade adder to fabric), ``PL_sparse`` (the N:M
    selectors, one per slice, with ``sparse``), ``P`` (per chain: result FIFO, group
    reduction), ``L`` (per activation lane: buffer ports, gearboxes, output sequencer),
    ``SB`` (super-beat bytes: memory-port and beat-to-row gearboxes), ``PL_int4`` (the int4
    dequantizer and scale latch of the weight fill, per weight-row byte, when the int4 path
    is built: :func:`hwflow.hw.weight_fill.int4_capable`), ``E`` (epilogue lanes),
    ``lutram`` (:func:`lutram_cells` of the buffer lanes that go to distributed RAM, per read
    copy: activation lanes, ring lanes and index lanes), ``tf`` and ``tf_L`` (the vector and
    attention units, GATHER and POS with ``transformer``: fixed and per lane).
    """
    L, P, D = cfg.chain_len, cfg.chains, cfg.weight_depth

    def lutram(width, depth, copies):
        return copies * lutram_cells(width, depth) if memory_blocks(width, depth) == 0 else 0.0

    ring = 0.0 if cfg.ring_uram else (lutram(8 * P, D, L + param_lanes(cfg))
                                      + (lutram(4 * P, D, L) if cfg.sparse else 0.0))
    lr = lutram(8, cfg.act_depth, ACT_READ_PORTS * L) + ring
    tf = 1.0 if cfg.transformer else 0.0
    return {"1": 1.0, "PL": float(P * L), "PL_sparse": float(P * L) * cfg.sparse,
            "P": float(P), "L": float(L), "SB": float(cfg.beat_bytes),
            "PL_int4": float(P * L) * int4_capable(cfg), "E": float(epilogue_lanes(cfg)),
            "lutram": lr, "tf": tf, "tf_L": tf * L}


@lru_cache(maxsize=1)
def resource_fit() -> dict:
    """The fitted model (:data:`RESOURCES_JSON`): ``{"model": {kind: {...}}, "points": ...}``.

    Raises
    ------
    MappingError
        The file is missing or damaged (refresh it with ``benchmarks/fit_resources.py``).
    """
    try:
        return json.loads(RESOURCES_JSON.read_text())
    except (OSError, ValueError) as e:
        raise MappingError(f"resource model {RESOURCES_JSON} unreadable ({e}); regenerate it "
                           "with `python benchmarks/fit_resources.py`") from None


#: LUT and FF of one attention lane, ``a + b * L`` (Yosys ``synth_xilinx -family xcup`` of
#: ``hw.attention.AttentionUnit`` alone at (L, H) = (4, 1), (4, 2), (4, 4), (8, 1), (8, 2),
#: (8, 3), (16, 1), (16, 2), ``benchmarks/fit_attention_lanes.py``; with a fixed ``c + d * L``
#: the fit is within 0.25% (LUT) and 0.02% (FF) of every point). The whole-accelerator fit
#: (``tf``, ``tf_L``) was made with a one-lane unit, so the estimate adds the lanes past the
#: first.
ATTN_LANE_LUT = (1271.7, 228.2)
ATTN_LANE_FF = (1597.9, 83.1)
#: The unit's shared part in the same fit (request side with the sliding window's start,
#: control, the shared output stage).
ATTN_SHARED_LUT = (932.0, 443.9)
ATTN_SHARED_FF = (533.4, 57.4)


#: DSP48E2, LUT and FF of each vector-unit lane past the first (``hw.sfu.VectorUnit`` alone,
#: Yosys ``synth_xilinx -family xcup`` at L = 16: DSP 4, 16, 64 at V = 1, 4, 16 (4 per lane:
#: the lane's ``x * r * mult`` path; 5 since RMSNORM's flag GAMMA added the 8 x 8 ``x * g``
#: product, measured at V = 1 and 4 in tests/hwflow/export/test_fit.py); LUT 2109 and 12764,
#: FF 1418 and 6327 at V = 1 and 16 since the gate ROM holds four tables (SiLU, ReLU², GELU,
#: tanh: 1024 x 16, one RAMB18E2 per lane, :data:`VECTOR_GATE_ROM`; the 512-entry ROM before
#: was built from LUTs): 710 LUT and 327 FF per lane.
VECTOR_LANE_DSP = 5
VECTOR_LANE_LUT = 710.0
VECTOR_LANE_FF = 327.0
#: A vector lane's gate ROM ``(width, depth)`` (hw.sfu: SiLU, ReLU², GELU, tanh tables).
VECTOR_GATE_ROM = (16, 1024)


def vector_lane_resources(cfg: AccelConfig) -> dict:
    """DSP, LUT and FF of the vector unit's lanes past the first (0 without the unit)."""
    extra = cfg.vec_lanes - 1 if cfg.vector_unit else 0
    return {"dsp": extra * VECTOR_LANE_DSP, "lut": extra * VECTOR_LANE_LUT,
            "ff": extra * VECTOR_LANE_FF}


def attention_lane_resources(cfg: AccelConfig) -> dict:
    """LUT and FF of the attention lanes past the first (0 without ``transformer``)."""
    extra = cfg.attn_heads - 1 if cfg.transformer else 0
    L = cfg.chain_len
    return {"lut": extra * (ATTN_LANE_LUT[0] + ATTN_LANE_LUT[1] * L),
            "ff": extra * (ATTN_LANE_FF[0] + ATTN_LANE_FF[1] * L)}


def transformer_dsp(cfg: AccelConfig) -> int:
    """DSP48E2 of the vector and attention units (0 without ``transformer``)."""
    if not cfg.transformer:
        return 0
    L = cfg.chain_len
    lane = ATTN_LANE_DSP_PER_BYTE * L + ATTN_LANE_DSP_FIXED
    return cfg.attn_heads * lane + TRANSFORMER_DSP_PER_BYTE * L + TRANSFORMER_DSP_FIXED


def attention_rom_blocks(cfg: AccelConfig, bram_kbits: int = 36) -> float:
    """Block RAM of the attention unit's score soft-cap ROMs (0 without ``transformer``): one
    per :data:`ATTN_SOFTCAP_ROM_LANES` lanes, or per lane on iCE40 (one read port a block)."""
    if not cfg.transformer:
        return 0
    per = 1 if bram_kbits == 4 else ATTN_SOFTCAP_ROM_LANES
    return -(-cfg.attn_heads // per) * memory_blocks(*ATTN_SOFTCAP_ROM, bram_kbits)


def vector_rom_blocks(cfg: AccelConfig, bram_kbits: int = 36) -> float:
    """Block RAM of the vector unit's gate ROMs (0 without the unit): one per lane."""
    return cfg.vec_lanes * memory_blocks(*VECTOR_GATE_ROM, bram_kbits) if cfg.vector_unit \
        else 0


#: The state-space units (``hw/ssm.py``, ``hw/conv.py``, ``hw/hadamard.py``), Yosys 0.70
#: ``synth_xilinx -family xcup`` of each unit alone (``hwflow.export.fit.xilinx_utilization``)
#: at S = 8, 16, 32 states (1024 channels; and 16 at 5120), conv W = 8, 16 lanes with K = 2, 3,
#: 4 taps, Hadamard W = 8, 16 lanes with blocks to 64, 256, 1024. Scan: per state ``SSM_STATE``
#: (LUT, FF, DSP: the decay, ``decay * h``, ``dt * u * b``, ``h' * c`` paths), plus
#: ``SSM_FIXED`` (the y and D-skip products): DSP exact at two points, one off at the third;
#: LUT within 0.2 %, FF within 0.1 %. Conv: ``W (K + 2)`` DSP (exact: K taps, the bias-add
#: and multiplier of the requantization), LUT ``W (409 + 33 K)`` and FF ``W (274 + 16 K)``
#: within 1 % where its history is block RAM (4.5 % over where Yosys puts it in LUT-RAM).
#: Hadamard: no DSP; LUT ``1.005 W lg W (8 + lg B) + 4.751 W (lg B - lg W)(8 + lg B)`` (the
#: in-beat butterflies and the delay-feedback stages, ``8 + lg B`` bits wide), within 60;
#: FF ``21.3 W + 0.067 W lg B (8 + lg B)``, within 14.
#: The executors around the units (``hw/ssm_exec.py``: FSMs, record buffers, the conv's SiLU
#: ROMs, the requantization epilogues, one DSP a lane each for CONV and HADAMARD), per lane: the
#: whole accelerator with and without the units at L = 8 (S = 6, K = 4, blocks to 16; +18,587
#: LUT, +12,256 FF, +117 DSP, +3 BRAM measured) less the units' formulas, one point.
SSM_STATE = {"lut": 740, "ff": 337, "dsp": 8}
SSM_FIXED = {"lut": 490, "ff": 320, "dsp": 5}
CONV_LANE = {"lut": (409, 33), "ff": (274, 16)}
SSM_EXEC_LANE = {"lut": 1070, "ff": 880, "dsp": 2}


def ssm_resources(cfg: AccelConfig, bram_kbits: int = 36) -> dict:
    """LUT, FF, DSP, block RAM and URAM of the state-space units (all 0 without ``cfg.ssm``):
    the units (:data:`SSM_STATE` for each of the ``ssm_lanes`` scan units, :data:`CONV_LANE`,
    the Hadamard formula), their memories (the scan state, ``ssm_channels`` words of ``32 S``
    bits split over the scan units; the conv history,
    ``conv_words`` of ``8 L (K - 1)`` bits) as :func:`memory_blocks` maps them (with
    ``ssm_uram``: URAM288, :func:`uram_blocks`), and the executors around them
    (:data:`SSM_EXEC_LANE` a lane)."""
    if not cfg.ssm:
        return {"lut": 0.0, "ff": 0.0, "dsp": 0, "bram": 0.0, "uram": 0}
    S, L, K, W = cfg.ssm_states, cfg.chain_len, cfg.conv_taps, cfg.ssm_lanes
    lg_w, lg_b = math.log2(L), math.log2(cfg.hadamard_block)
    width = 8 + lg_b
    had_lut = 1.005 * L * lg_w * width + 4.751 * L * (lg_b - lg_w) * width
    had_ff = 21.3 * L + 0.067 * L * lg_b * width
    lut = W * (SSM_STATE["lut"] * S + SSM_FIXED["lut"]) + L * sum(
        c * k for c, k in zip(CONV_LANE["lut"], (1, K), strict=True)) + had_lut
    ff = W * (SSM_STATE["ff"] * S + SSM_FIXED["ff"]) + L * sum(
        c * k for c, k in zip(CONV_LANE["ff"], (1, K), strict=True)) + had_ff
    lut += SSM_EXEC_LANE["lut"] * L
    ff += SSM_EXEC_LANE["ff"] * L
    dsp = W * (SSM_STATE["dsp"] * S + SSM_FIXED["dsp"]) + L * (K + 2) + SSM_EXEC_LANE["dsp"] * L
    # W scan units, each holding every W-th channel
    mems = ((32 * S, -(-cfg.ssm_channels // W)),) * W + ((8 * L * (K - 1), cfg.conv_words),)
    if cfg.ssm_uram:
        return {"lut": lut, "ff": ff, "dsp": dsp, "bram": 0.0,
                "uram": sum(uram_blocks(w, d) for w, d in mems)}
    bram = sum(memory_blocks(w, d, bram_kbits) for w, d in mems)
    return {"lut": lut, "ff": ff, "dsp": dsp, "bram": bram, "uram": 0}


def estimate_analytic(cfg: AccelConfig, bram_kbits: int = 36) -> dict:
    """The analytic DSP, block RAM and URAM counts (module docstring), ``bram`` not rounded
    up."""
    L, P, D = cfg.chain_len, cfg.chains, cfg.weight_depth

    def ring(blocks):
        n = (L + param_lanes(cfg)) * blocks(8 * P, D)
        return n + (L * blocks(4 * P, D) if cfg.sparse else 0)

    act = 0 if cfg.act_uram else ACT_READ_PORTS * L * memory_blocks(8, cfg.act_depth,
                                                                      bram_kbits)
    ssm = ssm_resources(cfg, bram_kbits)
    units = transformer_dsp(cfg) + vector_lane_resources(cfg)["dsp"] + ssm["dsp"]
    return {"dsp": cfg.dsp_slices + EPILOGUE_DSP * epilogue_lanes(cfg) + CONTROL_DSP + units,
            "bram": act + ssm["bram"] + attention_rom_blocks(cfg, bram_kbits) + vector_rom_blocks(
                cfg, bram_kbits) + (
                0 if cfg.ring_uram else ring(lambda w, d: memory_blocks(w, d, bram_kbits))),
            "uram": ssm["uram"] + (ring(uram_blocks) if cfg.ring_uram else 0)
            + (ACT_READ_PORTS * uram_blocks(8 * L, cfg.act_depth) if cfg.act_uram else 0)}


#: LUTs per bit, copy and URAM288 past the first of a memory deeper than one (Yosys's read
#: multiplexer): 424 / (3 copies x 128 bits x 1) for the activation buffer at L = 16, 8192 words.
URAM_CASCADE_LUT = 424 / (3 * 128)


def act_uram_luts(cfg: AccelConfig) -> float:
    """LUTs of the URAM-placed activation buffer's read multiplexers (:data:`URAM_CASCADE_LUT`;
    0 without ``act_uram``)."""
    if not cfg.act_uram:
        return 0.0
    extra = -(-cfg.act_depth // URAM_DEPTH) - 1
    return URAM_CASCADE_LUT * ACT_READ_PORTS * 8 * cfg.chain_len * extra


def estimate_resources(cfg: AccelConfig, bram_kbits: int = 36) -> dict:
    """Resource estimate ``{kind: used}`` for lut, ff, dsp, bram, uram.

    ``dsp``, ``bram`` and ``uram`` are the analytic counts of the module docstring (equal to
    Yosys on every synthesized point of the fit); ``lut`` (CLB LUTs: logic + distributed RAM +
    shift registers) and ``ff`` are linear in :func:`resource_features`, over the features
    :data:`RESOURCE_FEATURES` names per kind (chosen by leave-one-out error on the fit points)::

        LUT  = c1 + cPL*P*L + cPLs*sparse*P*L + cPLi*int4*P*L + cSB*SB + cE*E + cR*lutram
               + cT*transformer + cTL*transformer*L
        FF   = c1 + cPL*P*L + cPLs*sparse*P*L + cPLi*int4*P*L + cE*E + cR*lutram
               + cT*transformer + cTL*transformer*L

    with the coefficients of :data:`RESOURCES_JSON`, fitted by least squares on Yosys 0.70
    ``synth_xilinx -family xcup -flatten`` runs of the whole accelerator
    (``hwflow.resource_fit.POINTS``: P = 2..16, L = 4..16, SB = 8..256 B, dense / sparse,
    int4 on / off, LUT-RAM and block-RAM buffers, transformer units at L = 4, 8, 16); the
    file also holds every point's figures and the error on the held-out points
    (``benchmarks/fit_resources.py`` prints it). With ``cfg.tlmm`` the ternary engine's share
    (:func:`tlmm_resources`: its LUT, block RAM, DSP, URAM; its FFs are not modelled) is
    added.

    Parameters
    ----------
    cfg : AccelConfig
    bram_kbits : int
        Block RAM size of the target family (``Board.bram_kbits``): 36 (Xilinx), 18 (ECP5),
        4 (iCE40). ``bram`` is counted in blocks of that size. The LUT / FF fit is of the
        UltraScale+ fabric (LUT6): for the other families (LUT4) ``lut`` and ``ff`` are left
        out.

    Returns
    -------
    dict
        ``{kind: int}``.
    """
    out = estimate_analytic(cfg, bram_kbits)
    model = resource_fit()["model"]
    feats = resource_features(cfg)

    def fitted(kind):
        return max(0.0, sum(c * feats[n] for n, c in model[kind]["coefficients"].items()))

    if bram_kbits == 36:
        lanes, vec = attention_lane_resources(cfg), vector_lane_resources(cfg)
        ssm = ssm_resources(cfg, bram_kbits)
        out["lut"] = fitted("lut") + lanes["lut"] + vec["lut"] + act_uram_luts(cfg) + ssm["lut"]
        out["ff"] = fitted("ff") + lanes["ff"] + vec["ff"] + ssm["ff"]
    if cfg.tlmm:
        t = cfg_tlmm_resources(cfg, bram_kbits)
        for kind in ("dsp", "bram", "uram") + (("lut",) if "lut" in out else ()):
            out[kind] += t[kind]
    out["bram"] = -(-out["bram"] // 1)
    return {k: int(round(out[k])) for k in RESOURCE_KINDS if k in out}


#: The memories the placement may move to UltraRAM: (AccelConfig flag, what it moves).
URAM_PLACEMENTS = (("ring_uram", "weight ring"),
                   ("tlmm_uram", "TLMM accumulator and record buffer"),
                   ("act_uram", "activation buffer"),
                   ("ssm_uram", "scan state and conv history"))


def place_memories(cfg: AccelConfig, board: Board) -> tuple[AccelConfig, list[str]]:
    """``(cfg, notes)``: while the estimate's block RAM exceeds the board's, the memory whose
    move frees the most block RAM (:data:`URAM_PLACEMENTS`: the weight ring, the TLMM's
    accumulator and record buffer, the activation buffer) goes to UltraRAM, if the board's
    URAM holds it; one note per move. Boards without URAM (or not UltraScale+) are left
    alone. The multi-MiB rings of full-size engines are what overflows block RAM on the U280
    (LLaMA-2-7B int4: a 4 MiB ring of 2048 rows of 2 KiB), prefill buckets of many rows on
    the KV260; a URAM288 holds 8x a RAMB36E2."""
    kb = getattr(board, "bram_kbits", 36)
    have_bram, have_uram = board.resources["bram"], board.resources.get("uram", 0)
    notes = []
    if not have_uram or kb != 36:
        return cfg, notes
    while (bram := estimate_resources(cfg, kb)["bram"]) > have_bram:
        best = None
        for flag, what in URAM_PLACEMENTS:
            if getattr(cfg, flag) or (flag == "tlmm_uram" and not cfg.tlmm) or (
                    flag == "ssm_uram" and not cfg.ssm):
                continue
            moved = replace(cfg, **{flag: True})
            est = estimate_resources(moved, kb)
            if est["uram"] <= have_uram and est["bram"] < bram and (
                    best is None or est["bram"] < best[3]["bram"]):
                best = (flag, what, moved, est)
        if best is None:
            break
        flag, what, cfg, est = best
        notes.append(f"{what} placed in URAM ({flag}): block RAM {bram} > {have_bram} without; "
                     f"{est['bram']} block RAM + {est['uram']} URAM288 of {have_uram} with it")
    return cfg, notes


#: How a Versal board's DSP58 are counted: one per DSP48E2-mode slice of the RTL.
VERSAL_DSP_NOTE = ("DSP58, one per DSP48E2-mode slice of the RTL (the DSP58 is a superset of "
                   "the DSP48E2); its INT8 dot-product mode, three 9x8 products a DSP58, is "
                   "not used")


def check_fit(cfg: AccelConfig, board: Board) -> dict:
    """Compare the estimate with every resource the board lists; raise :class:`MappingError`
    naming each kind over budget with its numbers (``LUT 140000 > 117120``).

    Returns
    -------
    dict
        ``{kind: {"used": n, "available": m}}`` for every kind both the board and the estimate
        have (lut and ff only on 36 Kb block RAM families, see :func:`estimate_resources`);
        ``dsp`` also names the board's DSP block (``primitive``), and on Versal boards the
        DSP, LUT and FF entries say how they are counted (``note``).
    """
    used = estimate_resources(cfg, getattr(board, "bram_kbits", 36))
    report = {k: {"used": used[k], "available": board.resources[k]}
              for k in RESOURCE_KINDS if k in used and k in board.resources}
    if "dsp" in report:
        report["dsp"]["primitive"] = board.dsp_primitive
        if board.dsp_primitive == "DSP58":
            report["dsp"]["note"] = VERSAL_DSP_NOTE
    for k in ("lut", "ff"):
        if k in report and board.family in FABRIC_PROXIES:
            report[k]["note"] = FABRIC_PROXIES[board.family]
    over = [f"{k.upper()} {r['used']} > {r['available']}" for k, r in report.items()
            if r["used"] > r["available"]]
    if over:
        what, fix = "design", "use a smaller engine"
        if cfg.tlmm:
            what = (f"design with the TLMM engine (G={cfg.tlmm_g}, T={cfg.tlmm_t}, "
                    f"Q={cfg.tlmm_q})")
            fix += " or smaller tlmm_t/tlmm_q"
        raise MappingError(f"{what} does not fit {board.name}: " + ", ".join(over)
                           + f" (needed > available); {fix}")
    return report


# ------------------------------------------------------------------------- TLMM sizing

#: Share of the board's LUTs and block RAM the TLMM engine may take when the mapper sizes it
#: (the rest: matrix engine, vector and attention units, controller, memory ports, shell).
TLMM_LUT_SHARE = 0.25
TLMM_BRAM_SHARE = 0.25
#: Largest T and Q the sizing search tries (powers of two).
TLMM_MAX_TQ = 64
#: Reference layer of the cycle objective (a square GEMV of a 2k-wide model).
TLMM_REF_LAYER = (2048, 2048)
#: LUT model constants of :func:`tlmm_resources` (LUT6 + LUT-RAM cells): per lookup (``lookup``:
#: the LUT-RAM read port, its adder-tree node and its share of the accumulate lane), per table
#: (``table``: its build adder and step select), per counted select LUT (``select``: the
#: record and parameter selects, see :func:`tlmm_resources`), per epilogue lane past the first
#: (``epilogue``: its round, saturate and 60-bit window logic) and the rest (``fixed``: control
#: and counters, setup, request side, the first epilogue lane, the activation byte reader).
TLMM_LUT = {"lookup": 34.81, "table": 36.38, "select": 2.089, "epilogue": 521.6,
            "fixed": 1097.1}
#: How the constants were obtained (reported with the sizing).
TLMM_LUT_SOURCE = ("fitted (least squares): Yosys synth_xilinx -family xcup "
                   "(hwflow.export.fit) of hw/tlmm.py TernaryLookupMatmul (two table banks, "
                   "E epilogue lanes) in flat ports (benchmarks/tlmm_synth.py), G=3, acc_depth "
                   "1024, L = 16, at (T, Q, SB) = (2, 2, 16), (4, 4, 16), (8, 4, 16), (4, 8, 16), "
                   "(8, 8, 16), (16, 8, 16) with E = 2, (16, 8, 128), (16, 8, 256) with E = 4: "
                   "LUT + LUTRAM 2156, 2378, 3108, 2922, 4228, 6781, 8307, 10233; model 2056, "
                   "2421, 3124, 2978, 4237, 6756, 8301, 10239 (within 1.9% from 16 lookups up, "
                   "4.6% at T = Q = 2); held out: the KV260's (12, 8, 64), E = 4: 6680, model "
                   "6741 (+0.9%); G = 2, 4 at T = Q = 4 (not fitted): 2258, 3075; model 2277, "
                   "2783 (+0.8%, -9.5%: G = 4's mirrored half-table reads grow more with the "
                   "second bank than its LUT-RAM depth)")
#: DSP48E2 of one TLMM epilogue lane (acc*m, (acc*m + bias)*mult: 2, res*res_mult): 4 in every
#: synthesized point (all at one lane); the engine has ``E = tlmm_epilogue_lanes(L, Q, SB)``
#: lanes (hw/contract.py, as the RTL: 4 on the KV260, 16 DSP).
TLMM_DSP = 4
#: Accumulator bits (hw/tlmm.py ACC_BITS: |acc| < 2**25) and the used bits of a parameter
#: record (bias 32 + mult 16) in the engine's memories.
TLMM_ACC_BITS = 26
TLMM_PARAM_BITS = 48


def _tlmm_dims(G: int, T: int, Q: int, acc_depth: int, SB: int) -> dict:
    """The engine's sizes the resource model reads (hw/tlmm.py: ``TernaryLookupMatmul``)."""
    rb = T * Q * TLMM_GROUP_BITS[G]
    sbb = 8 * SB
    return {"NE": 3 ** G if 3 ** G <= 32 else (3 ** G + 1) // 2,
            "TW": (128 * G).bit_length() + 1, "record_bits": rb,
            "records_per_beat": max(1, sbb // rb), "params_per_beat": SB // 8,
            "acc_entries": -(-acc_depth // Q), "param_entries": -(-8 * acc_depth // SB)}


def tlmm_resources(G: int, T: int, Q: int, acc_depth: int, SB: int,
                   bram_kbits: int = 36, L: int = 16, R: int = 1, uram: bool = False,
                   S: int = 1) -> dict:
    """Resource model of the TLMM engine (``hw/tlmm.py``) with ``T`` tables of ``Q`` read ports,
    ``R`` rows a pass, ``S`` passes a fetch of the records.

    The engine stores ``NE`` entries per table (all ``3**G`` for G = 2, 3; the half of 41 for
    G = 4, whose other half is read negated), ``TW = bits(128 G) + 1`` bits each, in two banks
    (a chunk's table is built into one while the previous chunk's lookups read the other), with
    ``Q`` asynchronous read ports (``ceil(2*NE/32)`` 32-deep LUT-RAM units per bit: the second
    bank doubles the depth, 1, 2, 3 units for G = 2, 3, 4); every cycle it does ``T*Q``
    lookups, sums ``T`` of them per output lane in an adder tree and read-modify-writes ``Q``
    accumulator lanes of 26 bits; a table is built by one adder.
    Index records (``RB = T*Q*bits``) never straddle a super-beat: ``KR = 8*SB // RB`` per beat
    are taken with a ``KR``-way select (a tree of 2:1 muxes, ``ceil((KR - 1) / 2)`` LUT6 per
    bit), and the epilogue selects one of the ``RPB = SB/8`` parameter records (48 bits) of a
    parameter-memory word in two levels (4:1 in ``ng = ceil(RPB/4)`` groups, then ``ng:1``)::

        LUT  = a * R*T*Q * (TW * ceil(2*NE/32) / 20) lookups (size ratio 1 at G = 3)
             + b * R*T                                table builds
             + c * (RB * ceil((KR - 1) / 2)           record select
                    + 48 * (ng + ceil((ng - 1) / 2)))  parameter select (0 if RPB = 1)
             + e * (E - 1)                            epilogue lanes past the first
             + (S > 1) * RB                           record source: memory or buffer
             + d                                      the rest
        BRAM = blocks(26*Q*R, S*ceil(acc_depth / Q))  accumulators (R*Q lanes per entry)
             + (S > 1) * blocks(RB, ceil(acc_depth / Q))   record buffer (one chunk)
             + blocks(48*RPB, ceil(8*acc_depth/SB))   parameter memory (block RAM)
        DSP  = 4 * E                                  epilogue multipliers, E lanes
        URAM = 0, or with ``uram`` the accumulators' and the record buffer's URAM288
               (``urams`` of the same shapes) instead of their block RAM

    ``blocks(width, depth)`` is :func:`memory_blocks` without distributed RAM; ``a, b, c, e,
    d`` = :data:`TLMM_LUT` (``lookup``, ``table``, ``select``, ``epilogue``, ``fixed``), fitted
    at G = 3 and SB = 16, 128, 256 B (:data:`TLMM_LUT_SOURCE`: within 1.9% from 16 lookups per
    cycle up, +0.9% at the held-out KV260 point; ``c`` ~2: the selects cost about twice the
    counted LUTs in the engine); the lookup size ratio carries the fit to G = 2, 4 (+0.8 %,
    −9.5 % at T = Q = 4: G = 4 undercounts its mirror logic). ``E = tlmm_epilogue_lanes(L, Q,
    SB)`` (``L``: the activation word's bytes, ``chain_len``) as the RTL. BRAM,
    rounded up to whole 36 Kb blocks as Yosys counts a lone 18 Kb one, equals Yosys at every
    synthesized point (3 to 25 blocks).

    Returns
    -------
    dict
        ``lut``, ``bram``, ``dsp``, ``uram`` and ``terms`` (the LUT terms by name).
    """
    d = _tlmm_dims(G, T, Q, acc_depth, SB)
    c = TLMM_LUT
    size = d["TW"] * -(-2 * d["NE"] // 32) / 20     # 20 = TW * 2 units at G = 3 (a's fit)
    rpb = d["params_per_beat"]
    ng = -(-rpb // 4)
    select = (d["record_bits"] * -(-(d["records_per_beat"] - 1) // 2)
              + TLMM_PARAM_BITS * ((ng if rpb > 1 else 0) + -(-(ng - 1) // 2)))
    lanes = tlmm_epilogue_lanes(L, Q, SB)
    terms = {"lookup": c["lookup"] * size * R * T * Q,
             "table": c["table"] * R * T,
             "select": c["select"] * select,
             "epilogue": c["epilogue"] * (lanes - 1),
             "buffer": d["record_bits"] if S > 1 else 0,
             "fixed": c["fixed"]}
    # (width, depth) of the accumulator and, with S > 1, the record buffer
    mems = [(TLMM_ACC_BITS * Q * R, S * d["acc_entries"])] + (
        [(d["record_bits"], d["acc_entries"])] if S > 1 else [])
    bram = ((0 if uram else sum(_blocks(w, n, bram_kbits) for w, n in mems))
            + _blocks(TLMM_PARAM_BITS * d["params_per_beat"], d["param_entries"], bram_kbits))
    dsp = TLMM_DSP * lanes
    return {"lut": int(round(sum(terms.values()))), "bram": float(bram), "dsp": dsp,
            "uram": sum(uram_blocks(w, n) for w, n in mems) if uram else 0,
            "terms": {k: round(v, 1) for k, v in terms.items()}}


def cfg_tlmm_resources(cfg: AccelConfig, bram_kbits: int = 36) -> dict:
    """:func:`tlmm_resources` of ``cfg``'s TLMM engine."""
    return tlmm_resources(cfg.tlmm_g, cfg.tlmm_t, cfg.tlmm_q, cfg.tlmm_acc_depth, cfg.beat_bytes,
                          bram_kbits, cfg.chain_len, cfg.tlmm_rows, cfg.tlmm_uram,
                          cfg.tlmm_passes)


def _blocks(width: int, depth: int, kbits: int) -> float:
    """Block RAM of one memory, never distributed RAM (as Yosys maps the TLMM's memories)."""
    return min(-(-width // w) * -(-depth // dd) * cost for dd, w, cost in _shapes(kbits))


def tlmm_row_cycles(G: int, T: int, Q: int, k: int, n: int) -> int:
    """Cycles of one activation row of a ``k -> n`` ternary linear (hw/tlmm.py, memory keeping
    up, a record per super-beat or less, output bytes excluded): ``build + 1 + blocks +
    (chunks - 1) * max(build, blocks)`` with ``chunks = ceil(k_groups/T)``, ``blocks =
    ceil(n/Q)`` and ``build = T*G + NE + 2`` cycles to load a chunk's bytes and build its
    ``NE`` table entries (9, 27, 41 for G = 2, 3, 4), which overlap the previous chunk's
    lookups (two table banks); 0 without chunks or blocks."""
    kg = -(-k // G)
    ne = 3 ** G if 3 ** G <= 32 else (3 ** G + 1) // 2
    chunks, blocks, build = -(-kg // T), -(-n // Q), T * G + ne + 2
    if not chunks or not blocks:
        return 0
    return build + 1 + blocks + (chunks - 1) * max(build, blocks)


def size_tlmm(board: Board, G: int = 3, acc_depth: int = 1024, SB: int | None = None,
              lut_share: float = TLMM_LUT_SHARE, bram_share: float = TLMM_BRAM_SHARE,
              ref_layer: tuple = TLMM_REF_LAYER, R: int = 1, S: int = 1) -> dict:
    """Choose the TLMM's ``T`` and ``Q`` for ``board`` (an engine of ``R`` rows a pass, ``S``
    passes a fetch).

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
    R, S : int
        Rows a pass (``tlmm_rows``) and passes a fetch (``tlmm_passes``): the resources of
        ``R`` sets of tables, ``S`` passes' accumulators and the record buffer.

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
        SB = int(board.memory["port_bytes"]) * eng.get("mem_ports", default_mem_ports(
            board, engine_value(eng, "chains"), engine_value(eng, "chain_len")))
    kb = getattr(board, "bram_kbits", 36)
    lut_budget = lut_share * board.resources["lut"]
    bram_budget = bram_share * board.resources["bram"]
    # the accumulator and record buffer may go to URAM where the board has it (place_memories)
    uram_budget = bram_share * board.resources.get("uram", 0) if kb == 36 else 0
    max_lookups = 8 * SB // TLMM_GROUP_BITS[G]

    def resources(T, Q):
        r = tlmm_resources(G, T, Q, acc_depth, SB, kb, R=R, S=S)
        if r["bram"] > bram_budget and uram_budget:
            r = tlmm_resources(G, T, Q, acc_depth, SB, kb, R=R, S=S, uram=True)
        return r

    pows = [1 << i for i in range(TLMM_MAX_TQ.bit_length()) if 1 << i <= TLMM_MAX_TQ]
    feasible = []
    for T in pows:
        for Q in pows:
            if T * Q > max(1, max_lookups):
                continue
            r = resources(T, Q)
            if r["lut"] <= lut_budget and r["bram"] <= bram_budget and (
                    r["uram"] <= uram_budget):
                cyc = tlmm_row_cycles(G, T, Q, *ref_layer)
                feasible.append((-(T * Q), r["lut"] * cyc, T, Q, r, cyc))
    if not feasible:
        r = resources(1, 1)
        raise MappingError(f"board {board.name}: the smallest TLMM engine (T = Q = 1) needs "
                           f"LUT {r['lut']}, BRAM {r['bram']:g}, URAM {r['uram']}; its budget "
                           f"is LUT {lut_budget:.0f}, BRAM {bram_budget:.0f}, URAM "
                           f"{uram_budget:.0f} ({lut_share:.0%} / {bram_share:.0%} of the board; "
                           "needed > available)")
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
    R = int(eng.get("tlmm_rows", cfg.tlmm_rows))
    S = int(eng.get("tlmm_passes", cfg.tlmm_passes))
    depth = max(int(eng.get("tlmm_acc_depth", cfg.tlmm_acc_depth)), int(acc_depth or 0))
    if "tlmm_t" in eng and "tlmm_q" in eng:
        T, Q = int(eng["tlmm_t"]), int(eng["tlmm_q"])
        rep = {"source": "board", "G": G, "T": T, "Q": Q, "R": R, "acc_depth": depth,
               "resources": tlmm_resources(G, T, Q, depth, cfg.beat_bytes,
                                           getattr(board, "bram_kbits", 36), cfg.chain_len, R,
                                           S=S)}
    else:
        rep = {"source": "sized", **size_tlmm(board, G, depth, cfg.beat_bytes, R=R, S=S)}
        T = int(eng.get("tlmm_t", rep["T"]))
        Q = int(eng.get("tlmm_q", rep["Q"]))
        rep["T"], rep["Q"] = T, Q
    try:
        out = replace(cfg, tlmm=True, tlmm_g=G, tlmm_t=T, tlmm_q=Q, tlmm_acc_depth=depth,
                      tlmm_rows=R, tlmm_passes=S)
    except ValueError as e:
        raise MappingError(f"board {board.name}: invalid TLMM configuration: {e}") from None
    return out, rep


def check_fit_tlmm(cfg: AccelConfig, board: Board) -> dict:
    """:func:`check_fit` (whose estimate includes the TLMM engine when ``cfg.tlmm``) with the
    engine's own share under ``tlmm`` (:func:`tlmm_resources`: lut, bram, dsp). Raises
    :class:`MappingError` with the numbers if anything does not fit."""
    report = check_fit(cfg, board)
    if cfg.tlmm:
        report["tlmm"] = cfg_tlmm_resources(cfg, getattr(board, "bram_kbits", 36))
    return report
