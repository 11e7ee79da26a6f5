"""Parameters of one accelerator configuration (see docs/architecture.md)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

#: Most DSP groups per chain: sparsity ratios M/N up to 4 (1:4, 2:8, 4:16).
MAX_GROUPS = 4
#: Most slices per group: 7 packed products of two int8 (7 * 128 * 128 < 2**17) keep the low
#: field of the packed multiply exact (docs/architecture.md, "Matrix engine").
MAX_GROUP_LEN = 7
#: Bits of one TLMM group index per group size G (ternary weights per table index): 3**G
#: combinations in 4, 5, 7 bits. The hardware's one copy (the RTL, the record layout, the
#: sizing and cycle models read it); golden.ternary.GROUP_BITS is the numerics' own, and a
#: test holds the two equal.
TLMM_GROUP_BITS = {2: 4, 3: 5, 4: 7}
#: Legal TLMM group sizes G.
TLMM_GROUPS = tuple(TLMM_GROUP_BITS)
#: The state-space units' fields (0: not built).
_SSM_FIELDS = ("ssm_states", "ssm_channels", "conv_taps", "conv_words", "hadamard_block",
               "ssm_uram", "ssm_lanes")


@dataclass(frozen=True)
class AccelConfig:
    """Sizes of the accelerator template; the RTL depends on these and nothing else.

    Parameters
    ----------
    chains : int
        P, DSP chains in the matrix engine (output channels computed in parallel).
    chain_len : int
        L, DSP48E2 slices per chain (cascaded); also the activation word width in bytes.
    mem_ports : int
        NP, external memory ports (HBM pseudo-channels or DDR ports).
    port_bytes : int
        W, data bytes per beat of one port.
    act_depth : int
        Activation buffer depth in words of L bytes.
    weight_depth : int
        Weight ring depth in rows of P*L bytes.
    addr_bits : int
        Width of a port's beat (super-beat) address.
    sparse : bool
        Build the N:M sparse selectors and the weight-index ring (dense-only engine if False).
    int4 : bool
        Build the int4 dequantizer in the weight-fill path (int4 layers then run as int8).
    transformer : bool
        Build the transformer path (docs/architecture.md, "Transformer path"): the
        :class:`~hwflow.hw.sfu.VectorUnit` (RMSNORM, ROPE, SILUMUL), the
        :class:`~hwflow.hw.attention.AttentionUnit` (ATTN), GATHER and POS-relative LOAD/STORE.
        Without it those instructions stop the run with ERROR = 1. Off by default (the units
        cost about 2x in Verilator build time); boards turn it on (``engine: transformer:``).
    tlmm : bool
        Build the ternary table-lookup matmul engine (docs/architecture.md, "Ternary
        path"): TMATMUL. The :class:`~hwflow.hw.sfu.VectorUnit` is built when ``transformer``
        or ``tlmm`` (:attr:`vector_unit`): ABSQUANT, RMSNORM and SILUMUL need only it; GATHER,
        ROPE, ATTN and POS need ``transformer``; TMATMUL needs ``tlmm``. Off by default.
    tlmm_g : int
        G, ternary weights per group index (2, 3 or 4: 9, 27 or 81 table entries).
    tlmm_t : int
        T, lookup tables (activation groups looked up per cycle).
    tlmm_q : int
        Q, replicas of each table (output channels looked up per cycle); ``T * Q`` lookups,
        ``T * Q * G`` ternary MACs per cycle.
    tlmm_acc_depth : int
        Depth of the int32 accumulator: the largest ``n_out`` of a TMATMUL.
    tlmm_rows : int
        R, activation rows of a TMATMUL looked up together (a pass): R sets of the ``T``
        tables, each record's indices looked up in all of them, so a prefill chunk streams its
        index records once per R rows and does ``R * T * Q`` lookups per record. 1: rows one
        after another (decode has one row).
    tlmm_passes : int
        S, passes of R rows that share one fetch of the index records: the first looks each
        chunk's records up as they stream in and keeps them in a record buffer (one chunk's
        records, ``ceil(tlmm_acc_depth / Q)`` of them), the others read them back, so a
        TMATMUL of up to ``S * R`` rows fetches its index records once; the accumulator holds
        ``S`` passes' entries. 1: no buffer.
    tlmm_uram : bool
        Place the TLMM accumulator (``R * Q`` lanes per entry) and record buffer in UltraRAM, as
        ``ring_uram`` does the ring. Placement only.
    attn_heads : int
        H, lanes of the :class:`~hwflow.hw.attention.AttentionUnit`: query heads computed at
        once from one read of their kv heads' cache (``L`` int8 MACs each per cycle). Its own
        parameter, independent of ``chain_len``; the mapper sizes the passes of every ATTN to
        it (docs/architecture.md, "Attention over a head-major KV cache").
    ring_uram : bool
        Place the weight ring and its index ring in UltraRAM (``ram_style = "ultra"`` on their
        lane memories, honoured by Vivado and by Yosys ``synth_xilinx -family xcup``) instead of
        block RAM. Placement only: the RTL behaves identically. A 72-bit x 4096 URAM288 holds
        8x a RAMB36E2, so the multi-MiB rings of the full-size engines fit the UltraScale+
        parts that have it (U280: 960 URAM288 beside 2016 RAMB36E2).
    act_uram : bool
        Place the activation buffer in UltraRAM (``ram_style = "ultra"``): three ``8 * L``-bit
        copies with byte-enable writes instead of ``3 * L`` byte-lane memories. Placement only:
        the RTL behaves identically. Prefill buckets of many rows need it on the KV260 (BitNet
        0.7B's 16 rows: 32768 words, 384 RAMB36E2 or 48 URAM288).
    vec_lanes : int
        V, elements per cycle of the :class:`~hwflow.hw.sfu.VectorUnit` (RMSNORM, SILUMUL,
        ABSQUANT; ROPE takes up to ``min(V, L/2)`` pairs per step): V copies of its
        multiplier path (5 DSP48E2 each) on V consecutive bytes of an activation word. Must
        divide ``chain_len``; 1 (the default) is the element-serial unit.
    ssm_states : int
        S, states of the state-space unit (``hw.ssm.ScanUnit``: one channel a cycle, all its
        states at once); 0 (the default) builds no state-space units, and CONV, SCAN and
        HADAMARD stop the run with ERROR = 1. Needs ``transformer`` (GATHER, the vector unit).
    ssm_channels : int
        Depth of the scan state memory: ``d_inner`` times the layers whose state it holds.
    conv_taps : int
        K of the causal conv unit (``hw.conv.CausalConvUnit``): ``d_conv``.
    conv_words : int
        Beats of conv history held: ``ceil(conv channels / L)`` times the layers.
    hadamard_block : int
        Largest block of the Hadamard transform unit (``hw.hadamard.HadamardUnit``; a power
        of two, at least ``chain_len``).
    ssm_lanes : int
        W, channels the scan takes a cycle (W scan units side by side, channel ``c`` in unit
        ``c mod W``; a power of two, at most ``chain_len / 2``): a SCAN beat of ``L`` channels
        takes ``L / W + 1`` cycles. Its channel counts and state offsets must be multiples of W.
    ssm_uram : bool
        Place the scan state and the conv history in UltraRAM (``ram_style = "ultra"``): a
        full-size Mamba's state (Mamba-2.8B: 20 MiB) is more than the block RAM. Placement
        only.
    """

    chains: int = 16
    chain_len: int = 16
    mem_ports: int = 8
    port_bytes: int = 32
    act_depth: int = 4096
    weight_depth: int = 256
    addr_bits: int = 24
    sparse: bool = True
    int4: bool = True
    transformer: bool = False
    tlmm: bool = False
    tlmm_g: int = 3
    tlmm_t: int = 4
    tlmm_q: int = 4
    tlmm_acc_depth: int = 1024
    tlmm_rows: int = 1
    tlmm_passes: int = 1
    tlmm_uram: bool = False
    attn_heads: int = 1
    ring_uram: bool = False
    act_uram: bool = False
    vec_lanes: int = 1
    ssm_states: int = 0
    ssm_channels: int = 0
    conv_taps: int = 0
    conv_words: int = 0
    hadamard_block: int = 0
    ssm_uram: bool = False
    ssm_lanes: int = 1

    def __post_init__(self):
        for name in ("chains", "chain_len", "mem_ports", "port_bytes", "act_depth",
                     "weight_depth", "addr_bits", "tlmm_t", "tlmm_q", "tlmm_acc_depth", "tlmm_rows",
                     "tlmm_passes",
                     "attn_heads", "vec_lanes"):
            if getattr(self, name) < 1:
                raise ValueError(f"AccelConfig.{name} must be >= 1")
        if self.tlmm_g not in TLMM_GROUPS:
            raise ValueError(f"AccelConfig.tlmm_g is {self.tlmm_g}, must be one of "
                             f"{', '.join(map(str, TLMM_GROUPS))}")
        if self.beat_bytes % self.chain_len:
            raise ValueError(
                f"super-beat ({self.beat_bytes} B) must be a multiple of chain_len "
                f"({self.chain_len} B)")
        if self.row_bytes % self.beat_bytes:
            raise ValueError(
                f"weight row ({self.row_bytes} B = chains x chain_len) must be a multiple of "
                f"the super-beat ({self.beat_bytes} B = mem_ports x port_bytes)")
        if self.beat_bytes % 32 and 32 % self.beat_bytes:
            raise ValueError("super-beat must divide or be a multiple of 32 B (one instruction)")
        if self.chain_len % self.vec_lanes:
            raise ValueError(
                f"AccelConfig.vec_lanes ({self.vec_lanes}) must divide chain_len "
                f"({self.chain_len}): the vector unit's lanes split an activation word evenly")
        if self.chain_len % self.groups or self.group_len > MAX_GROUP_LEN:
            raise ValueError(
                f"chain_len {self.chain_len} must split into {self.groups} DSP groups of at most "
                f"{MAX_GROUP_LEN} slices (the packed multiply's 18-bit low field)")
        if min(int(getattr(self, k)) for k in _SSM_FIELDS) < 0:
            raise ValueError(f"AccelConfig's {', '.join(_SSM_FIELDS)} must be >= 0")
        if self.ssm:
            hb = self.hadamard_block
            if not self.transformer:
                raise ValueError("the state-space units need the transformer path "
                                 "(AccelConfig.transformer: GATHER and the vector unit)")
            if self.ssm_channels < 1 or self.conv_words < 1 or self.conv_taps < 2:
                raise ValueError("AccelConfig.ssm_channels and conv_words must be >= 1, "
                                 "conv_taps >= 2, with ssm_states")
            if hb & (hb - 1) or hb < self.chain_len:
                raise ValueError(f"AccelConfig.hadamard_block {hb} must be a power of two "
                                 f">= chain_len ({self.chain_len})")
            w = self.ssm_lanes
            if w < 1 or w & (w - 1) or (w > 1 and 2 * w > self.chain_len):
                raise ValueError(f"AccelConfig.ssm_lanes {w} must be a power of two, at most "
                                 f"chain_len / 2 ({self.chain_len // 2})")

    @property
    def ssm(self) -> bool:
        """Whether the state-space units (scan, causal conv, Hadamard) are built."""
        return self.ssm_states > 0

    @property
    def vector_unit(self) -> bool:
        """Whether the :class:`~hwflow.hw.sfu.VectorUnit` is built (``transformer or tlmm``)."""
        return self.transformer or self.tlmm

    @property
    def beat_bytes(self) -> int:
        """SB: bytes in one super-beat (one beat of every port)."""
        return self.mem_ports * self.port_bytes

    @property
    def row_bytes(self) -> int:
        """Bytes in one weight row (one k-group for every chain)."""
        return self.chains * self.chain_len

    @property
    def beats_per_row(self) -> int:
        return self.row_bytes // self.beat_bytes

    @property
    def groups(self) -> int:
        """G, DSP groups per chain (reduction nodes; up to G output channels per chain)."""
        return min(MAX_GROUPS, self.chain_len)

    @property
    def group_len(self) -> int:
        """S0, slices per DSP group (cascaded PCOUT -> PCIN)."""
        return self.chain_len // self.groups

    @property
    def param_rows(self) -> int:
        """R, rows at the head of each weight tile: one 8-byte record per segment (G per chain)."""
        return -(-8 * self.groups // self.chain_len)

    @property
    def dsp_slices(self) -> int:
        """DSP48E2 slices of the matrix engine (two packed int8 MACs each per cycle)."""
        return self.chains * self.chain_len

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        """Short stable hash of the parameters (part of the Verilator build-cache key and of a
        cycle calibration's key). An engine without state-space units hashes without their
        fields, as before they existed, so its calibrations keep their key (and an engine with
        them, without the fields added since at their defaults)."""
        d = self.to_dict()
        for k in _SSM_FIELDS:
            if not self.ssm or (k, d[k]) in (("ssm_uram", False), ("ssm_lanes", 1)):
                d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
