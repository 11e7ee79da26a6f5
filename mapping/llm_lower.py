"""Lower a quantized decoder (:class:`~hwflow.compiler.decoder.QDecoder`) to one decode program,
the prefill programs and the memory image (docs/architecture.md, "Transformer path").

Length-adaptive compilation: nothing in a program depends on the sequence position except
through the POS register (LOAD/STORE with FLAG_POS, ATTN), so **one** decode program (rows = 1)
serves every position and one prefill program per *bucket* of ``B`` rows serves every prompt
chunk of up to ``B`` tokens at any start position. A program is, per run of ``rows`` rows::

    GATHER ids -> x                         embedding rows of the token ids
    LOAD(POS) rope table rows -> cs         cos/sin of positions POS .. POS+rows-1
    per layer:
      RMSNORM x -> h
      MATMUL q, k, v (h)                    heads padded to hd_words*L channels (zero weights)
      ROPE q, ROPE k                        in place
      STORE(POS) k -> K cache, v -> V cache rows POS .. POS+rows-1
      ATTN q, K, V -> att
      MATMUL o (att) + x -> x               RESIDUAL: the new residual stream
      RMSNORM x -> h
      MATMUL gate (h) -> g, MATMUL up (h) -> u
      SILUMUL g, u -> g                     in place
      MATMUL down (g) + x -> x              RESIDUAL
    RMSNORM x -> h; per part of the vocabulary: MATMUL lm_head part (h) -> logits, STORE
    logits -> io at the part's offset (the last row only); END

Family variants: Qwen3 adds an RMSNORM with gamma codes per q and k head before ROPE; Gemma 2
runs o (down) into ``h``, an RMSNORM of ``h`` with its post-norm's gamma codes and a VADD
``h + x -> x`` instead of the fused residual, SILUMUL flag GELU, ATTN with its score ``cap``
and a SILUMUL flag TANH on each LM head part before its STORE; BitNet's ternary layers are
:func:`_ternary_layer`.

Only the last row's logits are computed: they predict the token after the run, the only one the
host needs (a prompt's earlier rows are known tokens). The host therefore runs a prompt so that
its last token is a program's last row (:func:`prompt_runs`); the logits area is one row
whatever the bucket, so prefill buckets are not sized by the vocabulary. A vocabulary past one
MATMUL's 65,535 outputs runs as parts (:func:`lm_head_part_channels`), each stored to the
logits row in external memory before the next: the area holds one part, so a 128k
vocabulary's 8016-word row (L = 16) takes 4095 words of the activation buffer.

Row strides (act words of L bytes): the residual stream ``x`` and ``h`` use ``ew`` =
the embedding row padded to whole super-beats (GATHER writes rows ``n`` words apart and moves
whole super-beats), so every linear that reads ``h`` has ``k_words = ew`` (zero weight columns
past ``hidden``). ``q``/``att`` rows are ``heads * hd_words`` words, ``k``/``v`` rows
``kv_stride * SB / L`` words (one cache row, so a STORE of ``rows`` rows fills ``rows``
consecutive cache rows), ``g``/``u`` rows ``ceil(intermediate / L)``, ``cs`` rows one RoPE table
row padded to whole super-beats; the one ``logits`` area is the vocab padded to whole
super-beats, or one LM head part of a longer vocabulary.

Slack rows: a prefill bucket of ``B`` rows started at a position ``p`` near ``max_context``
runs ``B`` rows (the rows past the prompt run on token 0), so it reads RoPE rows and writes
cache rows up to ``p + B - 1``. The RoPE table (zero rows) and every K/V cache therefore have
``B_max - 1`` rows past ``max_context``, so those writes never reach another layer's cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from hwflow.compiler.decoder import QDecoder, QLinear
from hwflow.compiler.passes import first_fit
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import (
    FLAG_GAMMA,
    FLAG_GELU,
    FLAG_POS,
    FLAG_RELU2,
    FLAG_TANH,
    INSTR_BYTES,
    Instr,
    Opcode,
    field_max,
)

from .errors import MappingError
from .linear import (
    TmatmulPlan,
    WeightPlan,
    absquant,
    matmul,
    matmul_layout,
    matmul_nbytes,
    matmul_report,
    pack_matmul,
    pack_tmatmul,
    plan_matmul,
    plan_tmatmul,
    tmatmul,
    tmatmul_layout,
    tmatmul_nbytes,
    tmatmul_report,
)
from .lower import encode_program
from .memory_image import DECODER_IMAGE_VERSION, ImageBuilder, MemoryMap, Region
from .ternary_format import row_read_words
from .weight_format import channels_per_tile

__all__ = ["ActPlan", "ProgramInfo", "IoLayout", "KvLayout", "LoweredDecoder", "HostStep",
           "lower_decoder", "act_row_words", "decode_memory_writes", "read_logits", "prompt_runs",
           "program_instructions", "naive_program_bytes", "AttnPass", "attention_passes",
           "attention_instructions", "kv_cache_bytes", "tlmm_outputs"]

#: Smallest default prefill bucket (rows); smaller buckets only when 8 rows do not fit.
MIN_BUCKET = 8
#: Field limits of the instruction set the plan must respect (hw/isa.py LAYOUT).
_U16 = (1 << 16) - 1
_U8 = (1 << 8) - 1


#: Gamma codes a ternary layer may carry (compiler.decoder.QLayer), in slot order.
GAMMAS = ("attn_gamma", "attn_sub_gamma", "mlp_gamma", "mlp_sub_gamma")
#: Gamma codes of the per-head q/k RMSNORMs (Qwen3), for int8 and ternary layers alike.
HEAD_NORM_GAMMAS = ("q_norm_gamma", "k_norm_gamma")
#: Gemma 2's post-norms of o's and down's outputs (RMSNORM flag GAMMA).
POST_NORM_GAMMAS = ("post_attn_gamma", "post_mlp_gamma")
#: Every slot of the ``gamma`` area, in slot order.
GAMMA_SLOTS = GAMMAS + HEAD_NORM_GAMMAS + POST_NORM_GAMMAS
#: SILUMUL's flag for each MLP activation (``golden.llm.GATE_LUTS``).
ACT_FLAGS = {"silu": 0, "relu2": FLAG_RELU2, "gelu_tanh": FLAG_GELU}
_LINEARS = ("q", "k", "v", "o", "gate", "up", "down")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _layer_ternary(ly, i: int) -> bool:
    """Whether layer ``i``'s linears are ternary (all seven, or none)."""
    flags = {nm: bool(getattr(getattr(ly, nm), "ternary", False)) for nm in _LINEARS}
    if len(set(flags.values())) > 1:
        tern = [nm for nm, t in flags.items() if t]
        raise MappingError(f"layer {i}: linears {tern} are ternary and the others int8; the "
                           "mapper needs all seven linears of a layer in one format")
    return flags["q"]


def tlmm_outputs(qd: QDecoder, chain_len: int) -> int:
    """Output channels the TLMM accumulator must hold for ``qd`` (``tlmm_acc_depth``): the
    widest ternary linear, or a row of q heads padded to whole act words of ``chain_len``
    bytes; 0 without ternary linears."""
    tern = [ql for ly in qd.layers for ql in (ly.q, ly.k, ly.v, ly.o, ly.gate, ly.up, ly.down)
            if getattr(ql, "ternary", False)]
    if not tern:
        return 0
    s = qd.shape
    return max(max(ql.weight.shape[0] for ql in tern),
               s.heads * _cdiv(s.head_dim, chain_len) * chain_len)


def _is_ternary(qd: QDecoder) -> bool:
    """Whether any layer of ``qd`` is ternary (BitNet b1.58: TMATMUL on the TLMM engine)."""
    return any(_layer_ternary(ly, i) for i, ly in enumerate(qd.layers))


# ----------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class AttnPass:
    """One ATTN instruction of a layer: query heads ``q0 .. q0 + slots * grp - 1`` (lanes of
    the attention unit) over kv heads ``kv0 .. kv0 + slots - 1``, whose cache region holds
    position blocks of ``pos_sb`` super-beats (docs/architecture.md, "Attention over a
    head-major KV cache")."""

    kv0: int
    slots: int
    q0: int
    grp: int
    pos_sb: int

    @property
    def lanes(self) -> int:
        return self.slots * self.grp


def attention_passes(heads: int, kv_heads: int, hd_words: int, cfg: AccelConfig) -> tuple:
    """The ATTN passes of a layer on ``cfg``'s attention unit (``attn_heads`` lanes).

    A pass takes ``slots`` kv heads with all their query heads (``grp = heads // kv_heads``
    each, ``slots * grp <= attn_heads``); ``slots`` divides the words of a super-beat (a slot
    of the cache never straddles a beat), as large as the lanes allow, so each cache byte is
    read once per step. A group wider than the unit (``grp > attn_heads``) is split into
    passes of ``attn_heads`` query heads over the same kv head, which re-read its cache.
    """
    if kv_heads < 1 or heads % kv_heads:
        raise MappingError(f"heads={heads}, kv_heads={kv_heads}: need heads a multiple of "
                           "kv_heads")
    wpb = cfg.beat_bytes // cfg.chain_len
    grp, H = heads // kv_heads, cfg.attn_heads
    divisors = [d for d in range(1, wpb + 1) if wpb % d == 0]

    def pos_sb(slots):
        return _cdiv(slots * hd_words, wpb)

    passes = []
    if grp <= H:
        widest = max(d for d in divisors if d * grp <= H and d <= kv_heads)
        k = 0
        while k < kv_heads:
            n = max(d for d in divisors if d <= min(widest, kv_heads - k))
            passes.append(AttnPass(k, n, k * grp, grp, pos_sb(n)))
            k += n
    else:
        for k in range(kv_heads):
            for s0 in range(0, grp, H):
                passes.append(AttnPass(k, 1, k * grp + s0, min(H, grp - s0), pos_sb(1)))
    return tuple(passes)


@dataclass(frozen=True)
class _Geometry:
    """Row widths in act words and padded sizes, fixed by the model and the configuration."""

    L: int
    SB: int
    ew: int          # residual stream / embedding row (whole super-beats)
    hd_words: int    # one padded head
    q_words: int     # q and att rows: heads * hd_words
    kv_words: int    # k and v rows: kv_heads * hd_words
    iw: int          # gate/up rows
    lw: int          # the logits row (whole super-beats), as the host reads it
    la: int          # the logits area: the row, or one LM head part of a longer one
    cs_words: int    # one RoPE table row (whole super-beats)
    #: Ternary decoders only (0 otherwise): ``mw`` act words per row of the ``m`` area
    #: (ABSQUANT's u16 absmax per row, 2 bytes). Decoders with gamma codes (ternary ones,
    #: Qwen3's head norms; 0 / empty otherwise, so a LLaMA's plan is unchanged): ``gw`` words
    #: of the one ``gamma`` area (not per row) and its slots ``(name, word offset, words)``.
    mw: int = 0
    gw: int = 0
    gslots: tuple = ()
    #: The attention passes (:func:`attention_passes`): ATTN instructions of a layer.
    passes: tuple = ()
    #: Ternary decoders: ``(area, words)`` left free after a TMATMUL input area (h, att,
    #: gate): the engine reads whole chunks of ``T*G`` bytes from a row's start
    #: (``mapping.lower``'s ``read``), up to ``words`` past the area's last row, which must not
    #: reach the output area (T = 12, G = 3: 36-byte chunks of a 1536-byte row read 12 bytes
    #: past it).
    tails: tuple = ()

    @property
    def regions(self) -> tuple:
        """The distinct cache regions of a layer's K (and of its V), in pass order:
        ``(kv0, slots, pos_sb)`` each."""
        return tuple(dict.fromkeys((p.kv0, p.slots, p.pos_sb) for p in self.passes))

    def region_offset(self, kv_rows: int, kv0: int) -> int:
        """Super-beats from the layer's K (or V) base to the region of kv head ``kv0``."""
        off = 0
        for k0, _slots, pos_sb in self.regions:
            if k0 == kv0:
                return off
            off += kv_rows * pos_sb
        raise KeyError(kv0)

    def kv_region_sb(self, kv_rows: int) -> int:
        """Super-beats of one layer's K (or V) cache: every region of ``kv_rows`` positions."""
        return kv_rows * sum(pos_sb for _k0, _s, pos_sb in self.regions)

    @classmethod
    def of(cls, qd: QDecoder, cfg: AccelConfig) -> _Geometry:
        s = qd.shape
        L, SB = cfg.chain_len, cfg.beat_bytes
        hd_words = _cdiv(s.head_dim, L)
        geo = cls(L=L, SB=SB, ew=_cdiv(s.hidden, SB) * SB // L, hd_words=hd_words,
                  q_words=s.heads * hd_words, kv_words=s.kv_heads * hd_words,
                  passes=attention_passes(s.heads, s.kv_heads, hd_words, cfg),
                  iw=_cdiv(s.intermediate, L),
                  lw=_cdiv(s.vocab, SB) * SB // L,
                  la=min(_cdiv(s.vocab, SB) * SB, lm_head_part_channels(cfg)) // L,
                  cs_words=_cdiv(2 * s.head_dim, SB) * SB // L)     # head_dim int16 values
        width = {"attn_gamma": geo.ew, "attn_sub_gamma": geo.q_words, "mlp_gamma": geo.ew,
                 "mlp_sub_gamma": geo.iw, "q_norm_gamma": hd_words, "k_norm_gamma": hd_words,
                 "post_attn_gamma": geo.ew, "post_mlp_gamma": geo.ew}
        slots, off = [], 0
        for nm in GAMMA_SLOTS:  # a slot for every gamma that some layer has
            if any(getattr(ly, nm, None) is not None for ly in qd.layers):
                slots.append((nm, off, width[nm]))
                off += width[nm]
        gw = _cdiv(off, SB // L) * (SB // L)    # one LOAD moves whole super-beats
        tails = ()
        if _is_ternary(qd):
            def past(k: int, words: int) -> int:     # words read past a row of k inputs
                return max(0, row_read_words(k, cfg.tlmm_g, cfg.tlmm_t, L) - words)

            tails = tuple((nm, t) for nm, t in (
                ("h", past(s.hidden, geo.ew)), ("att", past(geo.q_words * L, geo.q_words)),
                ("gate", past(s.intermediate, geo.iw))) if t)
        return replace(geo, mw=_cdiv(2, L) if _is_ternary(qd) else 0, gw=gw,
                       gslots=tuple(slots), tails=tails)

    @property
    def row_words(self) -> dict:
        """Act words per row of every area of the static plan, in allocation order."""
        words = {"x": self.ew, "h": self.ew, "q": self.q_words, "k": self.kv_words,
                 "v": self.kv_words, "att": self.q_words, "gate": self.iw, "up": self.iw,
                 "cs": self.cs_words}
        if self.mw:
            words["m"] = self.mw
        return words

    @property
    def fixed_words(self) -> dict:
        """Areas of a fixed size (not per row), allocated after the row areas: the one
        ``logits`` row (the last row's), and a ternary decoder's ``gamma`` codes."""
        return {"logits": self.la} | ({"gamma": self.gw} if self.gw else {})

    @property
    def words_per_row(self) -> int:
        return sum(self.row_words.values())

    @property
    def extra_words(self) -> int:
        """Act words besides the rows: the fixed areas and the tails."""
        return sum(self.fixed_words.values()) + sum(t for _, t in self.tails)


@dataclass(frozen=True)
class ActPlan:
    """Static activation-buffer plan of one program: named areas, each ``rows`` rows.

    Attributes
    ----------
    rows : int
        Activation rows of the program (1 for decode, ``B`` for a prefill bucket).
    areas : dict
        ``name -> (act word address, act words per row)``; the areas are disjoint and laid out
        back to back from word 0 in the order x, h, q, k, v, att, gate, up, cs (then, for a
        ternary decoder, ``m``; a row area is followed by its tail, ``_Geometry.tails``), then
        the fixed-size areas, whose second number is their size
        in words: the one ``logits`` row and, for a ternary decoder, ``gamma``.
    words : int
        Act words used (``rows`` times the sum of the row widths, plus the tails and the fixed
        areas).
    fixed : tuple
        Names of the areas whose size does not scale with ``rows`` (``logits``, ``gamma``).
    """

    rows: int
    areas: dict
    words: int
    fixed: tuple = ()

    @classmethod
    def build(cls, geo: _Geometry, rows: int) -> ActPlan:
        # The activation buffer's one allocator (compiler.passes.first_fit, the MLP's too).
        # Every area is live for the whole program (each layer reuses them all), so they lie
        # back to back in the order listed.
        tails = dict(geo.tails)
        spans = {name: rows * w + tails.get(name, 0) for name, w in geo.row_words.items()}
        spans.update(geo.fixed_words)
        at = first_fit(spans, dict.fromkeys(spans, (0, 0)))
        areas = {name: (at[name], w) for name, w in {**geo.row_words, **geo.fixed_words}.items()}
        return cls(rows, areas, max((at[n] + spans[n] for n in spans), default=0),
                   tuple(geo.fixed_words))

    def addr(self, name: str) -> int:
        return self.areas[name][0]

    def span(self, name: str) -> tuple[int, int]:
        """``(first word, end word)`` of area ``name``."""
        a, w = self.areas[name]
        return a, a + (w if name in self.fixed else self.rows * w)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "words": self.words,
                "areas": {k: ({"addr": a, "words": w} if k in self.fixed else
                              {"addr": a, "words_per_row": w})
                          for k, (a, w) in self.areas.items()}}


@dataclass(frozen=True)
class ProgramInfo:
    """One program in the image."""

    name: str            # "decode" or "prefill<B>"
    rows: int            # activation rows it runs
    prog_base: int       # super-beat address of its first instruction (PROG_BASE)
    program: list        # the Instr list, END last
    plan: ActPlan

    @property
    def nbytes(self) -> int:
        return len(self.program) * INSTR_BYTES


@dataclass(frozen=True)
class IoLayout:
    """Host-visible I/O regions (addresses in super-beats).

    ``ids``: a u32 LE token id per row at byte ``4b`` (the GATHER ids); ``logits``: the run's
    last row's ``vocab`` int8 logits (``logits_words * L`` bytes, padding bytes 0).
    """

    ids_addr: int
    ids_bytes: int
    logits_addr: int
    logits_words: int
    logits_row_bytes: int
    vocab: int
    max_rows: int


@dataclass(frozen=True)
class KvLayout:
    """KV cache, head-major: per layer a K and a V area, each the cache regions of the
    attention passes (``regions``: ``(kv0, slots, pos_sb)``, back to back, ``rows`` position
    blocks of ``pos_sb`` super-beats each); in a region's block of position j, word
    ``d * slots + k`` is word ``d`` of kv head ``kv0 + k``."""

    k_bases: list
    v_bases: list
    regions: tuple
    hd_words: int
    rows: int            # max_context + slack rows
    max_context: int


@dataclass
class LoweredDecoder:
    """Result of :func:`lower_decoder`.

    Attributes
    ----------
    cfg : AccelConfig
    image : bytes
        The memory image (header, program, weights, kv, io; super-beat aligned).
    memory_map : MemoryMap
        Every region by name with kind ``program``, ``weights``, ``kv`` or ``io`` (no
        ``activations`` region: nothing spills, in decode or prefill).
    decode : ProgramInfo
        The one decode program (rows = 1).
    prefill : dict
        ``bucket rows -> ProgramInfo``, ascending.
    io : IoLayout
    kv : KvLayout
    max_context : int
    reports : dict
        ``programs`` (``{"decode": {"count", "bytes"}, "prefill": {"buckets", "count",
        "bytes"}}``), ``naive_program_bytes``, ``program_reduction``, ``act_plans``,
        ``layers`` (per linear: format, k_words, n_tiles, bytes).
    """

    cfg: AccelConfig
    image: bytes
    memory_map: MemoryMap
    decode: ProgramInfo
    prefill: dict
    io: IoLayout
    kv: KvLayout
    max_context: int
    reports: dict = field(default_factory=dict)
    #: Built from shapes alone (``lower_decoder(..., shape_only=True)``): ``image`` is empty,
    #: the programs, memory map and reports are those of the full lowering.
    shape_only: bool = False

    @property
    def decode_prog_base(self) -> int:
        return self.decode.prog_base

    @property
    def prefill_prog_bases(self) -> dict:
        """``{bucket_rows: prog_base}``."""
        return {b: p.prog_base for b, p in self.prefill.items()}

    @property
    def buckets(self) -> list:
        return sorted(self.prefill)

    @property
    def naive_program_bytes(self) -> int:
        return self.reports["naive_program_bytes"]

    @property
    def program_reduction(self) -> float:
        return self.reports["program_reduction"]


# ------------------------------------------------------------------------------ weights

@dataclass(frozen=True)
class _Packed:
    """A linear planned for MATMUL (:func:`mapping.linear.plan_matmul`) and its block."""

    name: str
    plan: WeightPlan
    ql: QLinear
    data: bytes | None      # None when lowered from shapes alone (or packed by ``make``)
    nbytes: int
    make: object = None     # () -> the block's bytes, packed when the image is written

    @property
    def n_out(self) -> int:
        return self.plan.n_out


def _pad_heads_rows(ql: QLinear, heads: int, hd: int, hdp: int) -> tuple:
    """Output channels of ``heads`` heads of ``hd`` rows each spread to ``hdp`` rows per head
    (the extra rows zero weight, zero bias, zero multiplier: they compute exactly 0); int4
    codes and group scales likewise (padding rows: codes 0, scale 1)."""
    idx = (np.arange(heads)[:, None] * hdp + np.arange(hd)[None, :]).ravel()
    w = np.zeros((heads * hdp, ql.weight.shape[1]), dtype=np.int8)
    w[idx] = ql.weight
    bias = np.zeros(heads * hdp, dtype=np.int64)
    bias[idx] = ql.bias
    mult = np.zeros(heads * hdp, dtype=np.int64)
    mult[idx] = ql.mult
    w4 = s4 = None
    if ql.w4 is not None:
        w4 = np.zeros((heads * hdp, ql.w4.shape[1]), dtype=np.int8)
        w4[idx] = ql.w4
        s4 = np.ones((heads * hdp, ql.w4_scale.shape[1]), dtype=np.uint8)
        s4[idx] = ql.w4_scale
    return w, bias, mult, w4, s4


def _pad_head_cols(w: np.ndarray, heads: int, hd: int, hdp: int) -> np.ndarray:
    idx = (np.arange(heads)[:, None] * hdp + np.arange(hd)[None, :]).ravel()
    out = np.zeros((w.shape[0], heads * hdp), dtype=np.int8)
    out[:, idx] = w
    return out


def _pack(name: str, cfg: AccelConfig, ql: QLinear, k_words: int, weight=None, bias=None,
          mult=None, size_only: bool = False, int4=None) -> _Packed:
    """A MATMUL weight block of ``ql`` (``weight``, ``bias``, ``mult``: its head-padded
    arrays where given); ``int4``: the padded ``(codes, group scales)``, or False when the
    padding moved the int4 groups (the layer then runs int8 on its effective weight)."""
    weight = np.asarray(ql.weight if weight is None else weight, dtype=np.int8)
    bias = ql.bias if bias is None else bias
    mult = ql.mult if mult is None else mult
    if int4 is None and ql.w4 is not None:
        int4 = (ql.w4, ql.w4_scale)
    # The decoder's linears carry no N:M request, so the plan is dense int8 (or int4) without
    # scanning the weight: a zero-stride shape-only weight gets the plan a real one gets.
    plan = plan_matmul(name, cfg, weight, k_words, wbits=4 if int4 else 8)
    if size_only:
        return _Packed(name, plan, ql, None, matmul_nbytes(cfg, plan))
    w4, s4 = int4 if int4 else (None, None)
    data = pack_matmul(name, cfg, plan, weight, bias, mult, w4=w4, w4_scale=s4)
    return _Packed(name, plan, ql, data, len(data))


@dataclass(frozen=True)
class _TPacked:
    """A ternary linear planned for TMATMUL (:func:`mapping.linear.plan_tmatmul`) and its
    block (``mapping/ternary_format.py``)."""

    name: str
    ql: QLinear
    plan: TmatmulPlan
    data: bytes | None   # None when lowered from shapes alone (or packed by ``make``)
    nbytes: int = 0
    make: object = None  # () -> the block's bytes, packed when the image is written


def _pack_ternary(name: str, cfg: AccelConfig, ql: QLinear, weight=None, bias=None,
                  mult=None, size_only: bool = False) -> _TPacked:
    weight = ql.weight if weight is None else weight
    plan = plan_tmatmul(name, cfg, *weight.shape)
    if size_only:
        return _TPacked(name, ql, plan, None, tmatmul_nbytes(cfg, plan))
    data = pack_tmatmul(name, cfg, plan, weight, ql.bias if bias is None else bias,
                        ql.mult if mult is None else mult)
    return _TPacked(name, ql, plan, data, len(data))


def _zero_view(shape, dtype=np.int8) -> np.ndarray:
    """A read-only zero array of ``shape`` that holds one element (shape-only lowering)."""
    return np.broadcast_to(np.zeros((), dtype=dtype), tuple(shape))


def _pack_all(qd: QDecoder, cfg: AccelConfig, geo: _Geometry, size_only: bool = False) -> list:
    """Every linear planned in program order; if some do not fit the weight ring, the error
    names the one that needs the most (so one rebuild with its weight_depth fits them all).
    Ternary layers' linears become TMATMUL blocks (:class:`_TPacked`), the others MATMUL
    weight tiles. The plans and sizes come from the shapes (the head-padded weights as
    zero-stride views: the plan a real weight gets); a block's bytes are packed by its
    ``make`` when the image is written (:class:`ImageBuilder`), one block at a time.
    ``size_only``: plans and sizes only."""
    s = qd.shape
    hd, hdp = s.head_dim, geo.hd_words * cfg.chain_len
    jobs = []
    for i, ly in enumerate(qd.layers):
        p = f"L{i}."
        tern = _layer_ternary(ly, i)
        for nm, heads in (("q", s.heads), ("k", s.kv_heads), ("v", s.kv_heads)):
            ql = getattr(ly, nm)
            jobs.append((p + nm, tern, ql, geo.ew, partial(_head_rows, ql, heads, hd, hdp)))
        jobs.append((p + "o", tern, ly.o, geo.q_words,
                     partial(_head_cols, ly.o, s.heads, hd, hdp)))
        jobs.append((p + "gate", tern, ly.gate, geo.ew, _as_is))
        jobs.append((p + "up", tern, ly.up, geo.ew, _as_is))
        jobs.append((p + "down", tern, ly.down, geo.iw, _as_is))
    if getattr(qd.lm_head, "ternary", False):
        raise MappingError("lm_head is marked ternary; the mapper runs the LM head as an int8 "
                           "MATMUL (BitNet keeps it in high precision): quantize it to int8")
    jobs.append(("lm_head", False, qd.lm_head, geo.ew, _as_is))
    out, errors = [], []
    for name, tern, ql, k_words, arrays in jobs:
        try:
            pk = _pack_job(name, tern, cfg, ql, k_words, arrays, True)
        except MappingError as e:
            if tern:
                raise
            errors.append((k_words, str(e)))
            continue
        out.append(pk if size_only else replace(
            pk, make=partial(_packed_bytes, name, tern, cfg, ql, k_words, arrays, pk.nbytes)))
    if errors:
        worst = max(errors, key=lambda e: e[0])[1]
        more = f" ({len(errors)} linears do not fit)" if len(errors) > 1 else ""
        raise MappingError(worst + more)
    assert all(pk.plan.k_words * cfg.chain_len >= pk.ql.weight.shape[1] for pk in out
               if isinstance(pk, _Packed))
    return out


def _pack_job(name: str, tern: bool, cfg: AccelConfig, ql: QLinear, k_words: int, arrays,
              size_only: bool):
    """:func:`_pack_ternary` or :func:`_pack` of a linear whose (head-padded) arrays
    ``arrays(size_only)`` gives: zero-stride views of their shapes, or the real ones."""
    w, b, m, i4 = arrays(size_only)
    if tern:
        return _pack_ternary(name, cfg, ql, w, b, m, size_only=size_only)
    return _pack(name, cfg, ql, k_words, w, b, m, size_only=size_only, int4=i4)


def _packed_bytes(name: str, tern: bool, cfg: AccelConfig, ql: QLinear, k_words: int, arrays,
                  nbytes: int) -> bytes:
    """A linear's weight block (:func:`_pack_all`'s ``make``), as large as it was planned."""
    data = _pack_job(name, tern, cfg, ql, k_words, arrays, False).data
    assert len(data) == nbytes, (name, len(data), nbytes)
    return data


def _head_rows(ql: QLinear, heads: int, hd: int, hdp: int, shapes: bool) -> tuple:
    """``(weight, bias, mult, int4)`` of q, k or v with its heads' rows padded to ``hdp``
    (:func:`_pad_heads_rows`); ``shapes``: zero-stride views of them."""
    if not shapes:
        w, b, m, w4, s4 = _pad_heads_rows(ql, heads, hd, hdp)
        return w, b, m, (None if w4 is None else (w4, s4))
    n = heads * hdp
    i4 = None
    if ql.w4 is not None:
        i4 = (_zero_view((n, ql.w4.shape[1])),
              np.broadcast_to(np.uint8(1), (n, ql.w4_scale.shape[1])))
    return (_zero_view((n, ql.weight.shape[1])), _zero_view((n,), np.int64),
            _zero_view((n,), np.int64), i4)


def _head_cols(ql: QLinear, heads: int, hd: int, hdp: int, shapes: bool) -> tuple:
    """``(weight, None, None, int4)`` of o with its heads' columns padded to ``hdp``; padding
    would move o's int4 groups of 32 along K, so it then runs int8 (``int4`` False)."""
    w = (_zero_view((ql.weight.shape[0], heads * hdp)) if shapes else
         _pad_head_cols(ql.weight, heads, hd, hdp))
    return w, None, None, (False if hdp != hd else None)


def _as_is(shapes: bool) -> tuple:
    """A linear packed from its own arrays."""
    return None, None, None, None


def _gamma_block(ly, geo: _Geometry, s) -> np.ndarray | None:
    """Layer ``ly``'s gamma codes as the ``gamma`` act area holds them (int8, ``gw * L``
    bytes): slot by slot, element i at byte i of the slot (the o input's gammas spread to the
    padded heads, zero in the padding); None when the layer has none."""
    if not _has_gammas(ly):
        return None
    L, hdp = geo.L, geo.hd_words * geo.L
    blk = np.zeros(geo.gw * L, dtype=np.int8)
    for nm, off, words in geo.gslots:
        g = getattr(ly, nm)
        if g is None:
            continue
        g = np.asarray(g).astype(np.int8).ravel()
        if nm == "attn_sub_gamma":
            want = s.heads * s.head_dim
            idx = (np.arange(s.heads)[:, None] * hdp + np.arange(s.head_dim)[None, :]).ravel()
        elif nm in HEAD_NORM_GAMMAS:        # one head's codes, every head's RMSNORM row
            want = s.head_dim
            idx = np.arange(want)
        else:
            want = s.intermediate if nm == "mlp_sub_gamma" else s.hidden
            idx = np.arange(want)
        if g.size != want:
            raise MappingError(f"{nm}: {g.size} gamma codes, the layer needs {want}")
        slot = np.zeros(words * L, dtype=np.int8)
        slot[idx] = g
        blk[off * L:(off + words) * L] = slot
    return blk


# ------------------------------------------------------------------------------ programs

@dataclass(frozen=True)
class _Addrs:
    """External addresses the programs name (super-beats)."""

    embed: int
    rope: int
    ids: int
    logits: int
    weights: dict
    k: tuple
    v: tuple
    gammas: dict = field(default_factory=dict)   # ternary: layer -> its gamma block
    kv_rows: int = 0                             # positions of every cache region


#: Largest output count of one MATMUL: its ``n`` field (``hw.isa.LAYOUT``).
LM_HEAD_CHANNELS = field_max(Opcode.MATMUL, "n")


def lm_head_part_channels(cfg: AccelConfig) -> int:
    """Channels of each LM head part but the last: the most of :data:`LM_HEAD_CHANNELS` that
    is a whole number of dense weight tiles (``C = chains``), act words and super-beats (a part
    is stored at a super-beat of the logits row), ``lcm(chains, L, SB)``."""
    unit = math.lcm(cfg.chains, cfg.chain_len, cfg.beat_bytes)
    if unit > LM_HEAD_CHANNELS:
        raise MappingError(f"an LM head part must be a multiple of lcm(chains, L, super-beat) = "
                           f"{unit} channels, more than one MATMUL's {LM_HEAD_CHANNELS}")
    return LM_HEAD_CHANNELS // unit * unit


def _lm_head_parts(pk: _Packed, cfg: AccelConfig) -> list[tuple[int, int]]:
    """``[(first channel, channels)]`` of the LM head's MATMULs (:func:`lm_head_part_channels`
    each, the last the rest)."""
    per = lm_head_part_channels(cfg)
    assert per % channels_per_tile(cfg, pk.plan.fmt) == 0   # the LM head is dense
    return [(c0, min(per, pk.n_out - c0)) for c0 in range(0, pk.n_out, per)]


def _matmul(pk: _Packed, wgt: int, x: int, out: int, rows: int, out_words: int,
            res: int | None = None) -> Instr:
    return matmul(pk.plan, pk.ql.shift, wgt, x, out, rows, out_words, res, pk.ql.res_mult)


def _rmsnorm(norm, a: int, out: int, rows: int, n: int, words: int,
             g: int | None = None) -> Instr:
    """RMSNORM ``norm = (eps, mult, shift)``; with ``g`` (act word of gamma codes) flag
    GAMMA."""
    eps, mult, shift = (int(v) for v in norm)
    return Instr(Opcode.RMSNORM, FLAG_GAMMA if g is not None else 0, shift=shift, a=a, out=out,
                 g=g or 0, rows=rows, eps=eps, n=n, words=words, mult_b=mult)


def _has_gammas(ly) -> bool:
    """Whether layer ``ly`` carries gamma codes (a LOAD of its ``gamma`` block)."""
    return any(getattr(ly, nm, None) is not None for nm in GAMMA_SLOTS)


def _head_norms(ly, s, geo: _Geometry, A, rows: int, slot: dict) -> list:
    """Qwen3's per-head q and k RMSNORMs with their gamma codes, in place: each (padded) head
    of the q (k) rows is one RMSNORM row (``q_words = heads * hd_words``, so the heads of
    consecutive rows are evenly spaced), its padding written back as zeros."""
    if ly.q_norm is None:
        return []
    return [_rmsnorm(ly.q_norm, A("q"), A("q"), rows * s.heads, s.head_dim, geo.hd_words,
                     g=slot["q_norm_gamma"]),
            _rmsnorm(ly.k_norm, A("k"), A("k"), rows * s.kv_heads, s.head_dim, geo.hd_words,
                     g=slot["k_norm_gamma"])]


def _tmatmul(pk: _TPacked, wgt: int, x: int, x_words: int, out: int, rows: int,
             out_words: int, m_addr: int, res: int | None = None) -> Instr:
    return tmatmul(pk.plan, pk.ql.shift, wgt, x, x_words, out, rows, out_words, m_addr, res,
                   pk.ql.res_mult)


def _absquant(a: int, rows: int, n: int, words: int, m_addr: int,
              gamma: int | None) -> Instr:
    """ABSQUANT in place (``out = a``): the ternary linear's per-token int8 input and ``m``."""
    return absquant(a, a, rows, n, words, m_addr, gamma)


def _ternary_layer(qd: QDecoder, i: int, geo: _Geometry, pk: dict, w: dict, plan: ActPlan,
                   ad: _Addrs) -> list:
    """One BitNet block (docs/architecture.md, "Ternary path"), the order of the golden
    step: every ternary linear's input is quantized per token by ABSQUANT (in place, with the
    layer's gamma codes where it has them), then TMATMUL."""
    s, L, rows, A = qd.shape, geo.L, plan.rows, plan.addr
    ly = qd.layers[i]
    hdp = geo.hd_words * L
    m = A("m")
    slot = {nm: A("gamma") + off for nm, off, _ in geo.gslots}

    def gam(nm):
        return slot[nm] if getattr(ly, nm) is not None else None

    act_mult, act_shift = (int(v) for v in ly.silu)
    prog = [_rmsnorm(ly.attn_norm, A("x"), A("h"), rows, s.hidden, geo.ew)]
    if i in ad.gammas:
        prog.append(Instr(Opcode.LOAD, ext=ad.gammas[i], a=A("gamma"), b=geo.gw))
    prog += [
        _absquant(A("h"), rows, s.hidden, geo.ew, m, gam("attn_gamma")),
        _tmatmul(pk["q"], w["q"], A("h"), geo.ew, A("q"), rows, geo.q_words, m),
        _tmatmul(pk["k"], w["k"], A("h"), geo.ew, A("k"), rows, geo.kv_words, m),
        _tmatmul(pk["v"], w["v"], A("h"), geo.ew, A("v"), rows, geo.kv_words, m),
        *_head_norms(ly, s, geo, A, rows, slot),
        Instr(Opcode.ROPE, a=A("q"), cs=A("cs"), cs_words=geo.cs_words, rows=rows,
              heads=s.heads, hd=s.head_dim, head_stride=hdp, words=geo.q_words),
        Instr(Opcode.ROPE, a=A("k"), cs=A("cs"), cs_words=geo.cs_words, rows=rows,
              heads=s.kv_heads, hd=s.head_dim, head_stride=hdp, words=geo.kv_words),
        *_attention(ly, geo, plan, ad.k[i], ad.v[i], ad.kv_rows, attn_window(qd, i)),
    ]
    # the attention output's padded head bytes are 0, so a norm over the padded row (sum of
    # squares, golden.llm.rmsnorm) and the absmax see the heads' values only
    att_n = s.heads * hdp
    if ly.attn_sub_norm is not None:
        prog.append(_rmsnorm(ly.attn_sub_norm, A("att"), A("att"), rows, att_n, geo.q_words))
    prog += [
        _absquant(A("att"), rows, att_n, geo.q_words, m, gam("attn_sub_gamma")),
        *_tresidual(pk["o"], w["o"], A("att"), geo.q_words, rows, m, ly.attn_add, A, s, geo),
        _rmsnorm(ly.mlp_norm, A("x"), A("h"), rows, s.hidden, geo.ew),
        _absquant(A("h"), rows, s.hidden, geo.ew, m, gam("mlp_gamma")),
        _tmatmul(pk["gate"], w["gate"], A("h"), geo.ew, A("gate"), rows, geo.iw, m),
        _tmatmul(pk["up"], w["up"], A("h"), geo.ew, A("up"), rows, geo.iw, m),
        Instr(Opcode.SILUMUL, ACT_FLAGS[ly.act], act_shift,
              a=A("gate"), out=A("gate"), b=A("up"), rows=rows, n=s.intermediate,
              words=geo.iw, mult_b=act_mult),
    ]
    if ly.mlp_sub_norm is not None:
        prog.append(_rmsnorm(ly.mlp_sub_norm, A("gate"), A("gate"), rows, s.intermediate,
                             geo.iw))
    prog += [
        _absquant(A("gate"), rows, s.intermediate, geo.iw, m, gam("mlp_sub_gamma")),
        *_tresidual(pk["down"], w["down"], A("gate"), geo.iw, rows, m, ly.mlp_add, A, s, geo),
    ]
    return prog


def attn_window(qd: QDecoder, layer: int) -> int:
    """The ATTN ``window`` field of a layer: its sliding window, 0 (full causal attention)
    where there is none or it spans the whole context (the same keys, one field value)."""
    w = qd.shape.window(layer)
    return w if 0 < w < qd.max_context else 0


def _attention(ly, geo: _Geometry, plan: ActPlan, k_base: int, v_base: int,
               kv_rows: int, window: int) -> list:
    """A layer's KV appends and attention: per cache region a KVSTORE of k and one of v (the
    rows' kv heads into their position blocks, at POS), then one ATTN per pass (``window``:
    its sliding window, :func:`attn_window`)."""
    A, rows, hdw = plan.addr, plan.rows, geo.hd_words
    smul, sshift, omul, oshift = (int(v) for v in ly.attn)
    prog = []
    for area, base in (("k", k_base), ("v", v_base)):
        for k0, slots, pos_sb in geo.regions:
            prog.append(Instr(Opcode.KVSTORE, FLAG_POS,
                              ext=base + geo.region_offset(kv_rows, k0), a=A(area) + k0 * hdw,
                              words=geo.kv_words, rows=rows, pos_stride=pos_sb, slots=slots,
                              hd_words=hdw))
    for p in geo.passes:
        off = geo.region_offset(kv_rows, p.kv0)
        prog.append(Instr(Opcode.ATTN, shift=oshift, ext=k_base + off, v_ext=v_base + off,
                          a=A("q") + p.q0 * hdw, out=A("att") + p.q0 * hdw,
                          q_words=geo.q_words, rows=rows, lanes=p.lanes, grp=p.grp,
                          slots=p.slots, hd_words=hdw, pos_sb=p.pos_sb, smul=smul, omul=omul,
                          sshift=sshift, window=window, cap=int(ly.attn_cap)))
    return prog


def _tresidual(pk, wgt: int, x: int, x_words: int, rows: int, m: int, add, A, s, geo) -> list:
    """The residual stream after a ternary o or down: fused into the TMATMUL epilogue, or, with
    ``add`` (``QLayer.attn_add`` / ``mlp_add``; docs/architecture.md, "Residuals of ternary
    layers"), the linear into ``h`` (free by then) and a VADD ``x = residual_add(h, x, *add)``."""
    if add is None:
        return [_tmatmul(pk, wgt, x, x_words, A("x"), rows, geo.ew, m, res=A("x"))]
    return [_tmatmul(pk, wgt, x, x_words, A("h"), rows, geo.ew, m),
            _residual_add(add, A, rows, s, geo)]


def _residual_add(add, A, rows: int, s, geo: _Geometry) -> Instr:
    """VADD ``x = residual_add(h, x, *add)``: an unfused residual add of the block output in
    ``h`` (a ternary linear's, or a post-norm's)."""
    a_mult, b_mult, shift = (int(v) for v in add)
    return Instr(Opcode.VADD, shift=shift, a=A("h"), out=A("x"), b=A("x"), rows=rows,
                 n=s.hidden, words=geo.ew, mult_a=a_mult, mult_b=b_mult)


def _block_output(pk, wgt: int, x: int, rows: int, norm, gamma_slot, add, A, s,
                  geo: _Geometry) -> list:
    """An int8 o (down) and the residual stream after it: fused into the MATMUL epilogue, or
    (Gemma 2's post-norm ``norm`` with its gamma codes at ``gamma_slot``) the MATMUL into
    ``h``, the RMSNORM of ``h`` in place and the VADD ``add``."""
    if norm is None:
        return [_matmul(pk, wgt, x, A("x"), rows, geo.ew, res=A("x"))]
    return [_matmul(pk, wgt, x, A("h"), rows, geo.ew),
            _rmsnorm(norm, A("h"), A("h"), rows, s.hidden, geo.ew, g=gamma_slot),
            _residual_add(add, A, rows, s, geo)]


def _layer_instructions(ly, has_gamma: bool, attn: int) -> int:
    """Instructions of one layer: 12 (int8); ternary: 16, plus 1 per unfused residual add;
    plus 1 per sub-norm, 2 for per-head q/k norms, 1 for the gamma LOAD and ``attn``, the
    KVSTOREs and ATTNs of the attention passes (:func:`attention_instructions`)."""
    extra = ((ly.attn_sub_norm is not None) + (ly.mlp_sub_norm is not None)
             + 2 * (getattr(ly, "q_norm", None) is not None) + bool(has_gamma) + attn)
    if not _layer_ternary(ly, 0):     # + RMSNORM and VADD per post-norm (Gemma 2)
        return 12 + extra + 2 * ((ly.post_attn_norm is not None)
                                 + (ly.post_mlp_norm is not None))
    return 16 + (ly.attn_add is not None) + (ly.mlp_add is not None) + extra


def attention_instructions(passes) -> int:
    """KVSTOREs (K and V per cache region) and ATTNs (one per pass) of one layer."""
    return 2 * len({(p.kv0, p.slots) for p in passes}) + len(passes)


def _check_layer(ly, i: int) -> None:
    if ly.act not in ACT_FLAGS:
        raise MappingError(f"layer {i}: activation '{ly.act}' is not one the vector unit has "
                           f"({', '.join(ACT_FLAGS)})")
    if not _layer_ternary(ly, i):
        has = [nm for nm in GAMMAS if getattr(ly, nm) is not None]
        if has:
            raise MappingError(f"layer {i}: int8 linears with gamma codes {has}; gammas are "
                               "applied by ABSQUANT before ternary linears only (fold them "
                               "into int8 weights)")


def _emit(qd: QDecoder, cfg: AccelConfig, geo: _Geometry, packed: dict, plan: ActPlan,
          ad: _Addrs) -> list:
    """The program of ``plan.rows`` rows (see the module docstring for its shape)."""
    s, L, SB, rows = qd.shape, geo.L, geo.SB, plan.rows
    A = plan.addr
    W, K, V = ad.weights, ad.k, ad.v
    prog = [
        Instr(Opcode.GATHER, ext=ad.embed, a=A("x"), n=geo.ew, rows=rows, ids=ad.ids,
              stride=geo.ew * L // SB, table_rows=s.vocab),
        Instr(Opcode.LOAD, FLAG_POS, ext=ad.rope, a=A("cs"), b=rows * geo.cs_words,
              pos_stride=geo.cs_words * L // SB),
    ]
    hdp = geo.hd_words * L
    for i, ly in enumerate(qd.layers):
        pk = {nm: packed[f"L{i}.{nm}"] for nm in ("q", "k", "v", "o", "gate", "up", "down")}
        w = {nm: W[f"L{i}.{nm}"] for nm in pk}
        if isinstance(pk["q"], _TPacked):
            prog += _ternary_layer(qd, i, geo, pk, w, plan, ad)
            continue
        silu_mult, silu_shift = (int(v) for v in ly.silu)
        if i in ad.gammas:      # the layer's gamma codes (Qwen3's head norms)
            prog.append(Instr(Opcode.LOAD, ext=ad.gammas[i], a=A("gamma"), b=geo.gw))
        slot = {nm: A("gamma") + off for nm, off, _ in geo.gslots}
        prog += [
            _rmsnorm(ly.attn_norm, A("x"), A("h"), rows, s.hidden, geo.ew),
            _matmul(pk["q"], w["q"], A("h"), A("q"), rows, geo.q_words),
            _matmul(pk["k"], w["k"], A("h"), A("k"), rows, geo.kv_words),
            _matmul(pk["v"], w["v"], A("h"), A("v"), rows, geo.kv_words),
            *_head_norms(ly, s, geo, A, rows, slot),
            Instr(Opcode.ROPE, a=A("q"), cs=A("cs"), cs_words=geo.cs_words, rows=rows,
                  heads=s.heads, hd=s.head_dim, head_stride=hdp, words=geo.q_words),
            Instr(Opcode.ROPE, a=A("k"), cs=A("cs"), cs_words=geo.cs_words, rows=rows,
                  heads=s.kv_heads, hd=s.head_dim, head_stride=hdp, words=geo.kv_words),
            *_attention(ly, geo, plan, K[i], V[i], ad.kv_rows, attn_window(qd, i)),
        ]
        if ly.attn_sub_norm is not None:    # BitNet block with int8 weights
            prog.append(_rmsnorm(ly.attn_sub_norm, A("att"), A("att"), rows, s.heads * hdp,
                                 geo.q_words))
        prog += [
            *_block_output(pk["o"], w["o"], A("att"), rows, ly.post_attn_norm,
                           slot.get("post_attn_gamma"), ly.attn_add, A, s, geo),
            _rmsnorm(ly.mlp_norm, A("x"), A("h"), rows, s.hidden, geo.ew),
            _matmul(pk["gate"], w["gate"], A("h"), A("gate"), rows, geo.iw),
            _matmul(pk["up"], w["up"], A("h"), A("up"), rows, geo.iw),
            Instr(Opcode.SILUMUL, ACT_FLAGS[ly.act], silu_shift,
                  a=A("gate"), out=A("gate"), b=A("up"), rows=rows, n=s.intermediate,
                  words=geo.iw, mult_b=silu_mult),
        ]
        if ly.mlp_sub_norm is not None:
            prog.append(_rmsnorm(ly.mlp_sub_norm, A("gate"), A("gate"), rows, s.intermediate,
                                 geo.iw))
        prog += _block_output(pk["down"], w["down"], A("gate"), rows, ly.post_mlp_norm,
                              slot.get("post_mlp_gamma"), ly.mlp_add, A, s, geo)
    last = (rows - 1) * geo.ew      # the last row: the one whose logits the host reads
    prog += [_rmsnorm(qd.final_norm, A("x") + last, A("h") + last, 1, s.hidden, geo.ew)]
    prog += _lm_head(packed["lm_head"], W["lm_head"], A("h") + last, A("logits"), ad.logits,
                     geo, cfg, qd.final_cap)
    prog += [Instr(Opcode.END)]
    return prog


def _lm_head(pk: _Packed, wgt: int, x: int, out: int, ext: int, geo: _Geometry,
             cfg: AccelConfig, cap=None) -> list:
    """The LM head on one row and its STOREs to the logits row at ``ext``: MATMULs of at most
    :data:`LM_HEAD_CHANNELS` outputs, as a vocabulary past the 16-bit ``n`` field (every
    Llama 3 and Qwen: 128k-152k) is split at tile boundaries (:func:`_lm_head_parts`). Part
    ``c`` reads the weight tiles from its first one (tiles are stored one after another,
    ``tile_mem_rows`` memory rows each), writes its outputs into the logits area (the last
    part zero-padded to the row's super-beat), and a STORE moves them to super-beat
    ``first channel / SB`` of the row before the next part overwrites the area. With a final
    logit ``cap`` (``QDecoder.final_cap``) a SILUMUL flag TANH caps each part in place before
    its STORE."""
    C, L, SB = channels_per_tile(cfg, pk.plan.fmt), cfg.chain_len, cfg.beat_bytes
    tile_sb = pk.plan.tile_mem_rows * cfg.beats_per_row
    out_instr = []
    for c0, n in _lm_head_parts(pk, cfg):
        t0, nt = c0 // C, _cdiv(n, C)
        part = replace(pk, plan=replace(pk.plan, n_tiles=nt, n_out=n))
        words = geo.lw - c0 // L if c0 + n == pk.n_out else n // L
        out_instr.append(_matmul(part, wgt + t0 * tile_sb, x, out, 1, words))
        if cap is not None:
            mult, shift = (int(v) for v in cap)
            out_instr.append(Instr(Opcode.SILUMUL, FLAG_TANH, shift, a=out, out=out, rows=1,
                                   n=n, words=words, mult_b=mult))
        out_instr.append(Instr(Opcode.STORE, ext=ext + c0 // SB, a=out, b=words))
    return out_instr


def program_instructions(layers, attn: int = 3) -> int:
    """Instructions of every program (decode or any bucket): ``(12 + attn) * layers + 6`` for
    an int8 LLaMA decoder (``layers`` a count; ``attn`` the attention instructions of a layer,
    :func:`attention_instructions`: 3 for one cache region and one pass); given a
    :class:`QDecoder`, its count (ternary layers: 16 + attn each, plus one per sub-norm and
    one gamma LOAD per layer that has gammas) with the LM head as one MATMUL and its STORE: a
    vocabulary past 65,535 adds two per further part (:func:`_lm_head_parts`)."""
    if isinstance(layers, QDecoder):    # + the final cap's SILUMUL (Gemma 2)
        return 6 + (layers.final_cap is not None) + sum(
            _layer_instructions(ly, _has_gammas(ly), attn) for ly in layers.layers)
    return (12 + attn) * layers + 6


def naive_program_bytes(layers: int, max_context: int, max_rows: int,
                        instructions: int | None = None) -> dict:
    """Program bytes without length-adaptive compilation (the position and the prompt length
    compile-time constants).

    Counted: one decode program per position ``p < max_context`` (the same instructions as the
    shared decode program: the position only changes constant addresses and lengths), plus one
    prefill program per prompt length ``T = 1 .. max_context``: a bucket-shaped program with
    ``rows = T`` when ``T <= max_rows`` (the largest row count the activation buffer holds),
    otherwise ``ceil(T / max_rows)`` such bodies in sequence (chunks of at most ``max_rows``
    rows, the last one shorter) and one END. Instructions are 32 bytes.

    Returns
    -------
    dict
        ``decode_bytes``, ``prefill_bytes``, ``total_bytes``.

    ``instructions`` overrides ``program_instructions(layers)`` (a ternary decoder's count).
    """
    n = program_instructions(layers) if instructions is None else instructions
    body = n - 1
    decode = max_context * n * INSTR_BYTES
    chunks = sum(_cdiv(t, max_rows) for t in range(1, max_context + 1))
    prefill = (chunks * body + max_context) * INSTR_BYTES
    return {"decode_bytes": decode, "prefill_bytes": prefill, "total_bytes": decode + prefill}


# ------------------------------------------------------------------------------- buckets

def kv_cache_bytes(shape, max_context: int) -> int:
    """Bytes of a decoder's int8 KV cache for ``max_context`` positions, before padding:
    every layer's K and V, ``kv_heads * head_dim`` bytes per position. A lower bound of the
    cache region :func:`lower_decoder` reserves (which pads heads to words and rows to
    super-beats)."""
    return 2 * shape.layers * int(max_context) * shape.kv_heads * shape.head_dim


def act_row_words(qd: QDecoder, cfg: AccelConfig) -> tuple[int, int]:
    """``(words per activation row, fixed words)`` of ``qd``'s programs on ``cfg``: a program
    of ``B`` rows needs ``act_depth >= B * words + fixed`` (the ternary gamma area is the fixed
    part; 0 for int8)."""
    geo = _Geometry.of(qd, cfg)
    return geo.words_per_row, geo.extra_words


def _buckets(geo: _Geometry, cfg: AccelConfig, max_context: int, prompt_buckets) -> list:
    wpr = geo.words_per_row
    fixed = geo.extra_words     # the logits row, a ternary decoder's gamma codes and tails
    if wpr + fixed > cfg.act_depth:
        more = " plus " + ", ".join(f"{w} words of {nm}" for nm, w in
                                    [*geo.fixed_words.items(), *geo.tails])
        raise MappingError(f"one activation row of the decoder needs {wpr} act words "
                           f"({geo.row_words}){more}, the activation buffer holds act_depth="
                           f"{cfg.act_depth}; build the accelerator with act_depth >= "
                           f"{wpr + fixed}")
    fits = min((cfg.act_depth - fixed) // wpr, _U16)
    if prompt_buckets is not None:
        buckets = sorted({int(b) for b in prompt_buckets})
        if not buckets or buckets[0] < 1:
            raise MappingError(f"prompt buckets {list(prompt_buckets)}: need at least one "
                               "bucket, every bucket >= 1 row")
        if buckets[-1] > fits:
            raise MappingError(f"prefill bucket of {buckets[-1]} rows needs "
                               f"{buckets[-1] * wpr + fixed} act words ({wpr} per row, "
                               f"{fixed} for the logits row and fixed areas), the "
                               f"activation buffer holds act_depth={cfg.act_depth}")
        return buckets
    cap = min(fits, max(1, max_context))
    start = MIN_BUCKET if cap >= MIN_BUCKET else 1
    buckets, b = [], start
    while b <= cap:
        buckets.append(b)
        b *= 2
    return buckets


# -------------------------------------------------------------------------------- lower

def _check_fields(qd: QDecoder, geo: _Geometry) -> None:
    s = qd.shape
    if s.heads % s.kv_heads or s.head_dim % 2:
        raise MappingError(f"heads={s.heads}, kv_heads={s.kv_heads}, head_dim={s.head_dim}: "
                           "need heads a multiple of kv_heads and an even head_dim")
    pos_sb = max((p.pos_sb for p in geo.passes), default=0)
    for nm, v, hi in (("heads", s.heads, _U8), ("kv_heads", s.kv_heads, _U8),
                      ("hd_words", geo.hd_words, _U8), ("pos_sb", pos_sb, _U8),
                      ("head_dim", s.head_dim, _U16), ("vocab", s.vocab, (1 << 32) - 1),
                      ("sliding window", max(attn_window(qd, i) for i in range(s.layers)),
                       _U16)):
        if v > hi:
            raise MappingError(f"{nm}={v} exceeds the ATTN/ROPE/GATHER field limit {hi}")


class _LayoutBuilder(ImageBuilder):
    """:class:`ImageBuilder`'s layout (same regions, addresses and padding) without the bytes:
    nothing is made or kept."""

    def append_made(self, name: str, kind: str, nbytes: int, make, **meta) -> Region:
        return self._place(name, kind, nbytes, **meta)

    def fill(self, region: Region, data: bytes) -> None:
        pass

    def finish(self, sections=None, version: int = DECODER_IMAGE_VERSION
               ) -> tuple[bytes, MemoryMap]:
        return b"", MemoryMap(self.sb, self.cfg.chain_len, self.size, self.regions)


def lower_decoder(qd: QDecoder, cfg: AccelConfig, prompt_buckets=None,
                  shape_only: bool = False) -> LoweredDecoder:
    """Lower a quantized decoder to the decode program, the prefill programs and the image.

    Parameters
    ----------
    qd : QDecoder
        The quantized decoder (``compiler.llm_quant``), ``qd.rope`` a table of at least
        ``max_context`` rows (``golden.llm.rope_table``).
    cfg : AccelConfig
        The accelerator.
    prompt_buckets : iterable of int, optional
        Prefill bucket sizes (rows). Default: powers of two from 8 up to the largest that
        fits the activation buffer and ``max_context`` (from 1 if 8 rows do not fit).
    shape_only : bool
        Build the programs, the memory map and the reports from ``qd``'s shapes and epilogue
        constants alone: no weight is packed and no image is built (``image`` is empty), so a
        full-size decoder whose arrays are zero-stride views
        (``compiler.llm_config.shape_decoder``) lowers without weight-sized memory. Given a
        real decoder, the programs and the memory map equal the full lowering's.

    Returns
    -------
    LoweredDecoder

    Raises
    ------
    MappingError
        The accelerator has no transformer units, one row does not fit the activation buffer
        (needs ``act_depth >= words per row``), a bucket does not fit, a linear's two tiles do
        not fit the weight ring, a field overflows, or the image exceeds the port address
        space.
    """
    if not cfg.transformer:
        raise MappingError("this accelerator has no transformer units (vector and attention "
                           "units: AccelConfig.transformer); a decoder needs them")
    for i, ly in enumerate(qd.layers):
        _check_layer(ly, i)
    ternary = _is_ternary(qd)
    if ternary and not cfg.tlmm:
        tl = [f"L{i}" for i, ly in enumerate(qd.layers) if _layer_ternary(ly, i)]
        raise MappingError(f"decoder '{qd.name}' has ternary linears (layers "
                           f"{', '.join(tl)}: TMATMUL) and this accelerator has no TLMM engine "
                           "(AccelConfig.tlmm); build it with tlmm (board YAML `engine: tlmm: "
                           "true`) or quantize the weights to int8")
    s = qd.shape
    T = int(qd.max_context)
    geo = _Geometry.of(qd, cfg)
    _check_fields(qd, geo)
    if qd.rope.shape[0] < T or qd.rope.shape[1] != s.head_dim:
        raise MappingError(f"RoPE table {list(qd.rope.shape)} does not cover max_context={T} "
                           f"positions of head_dim={s.head_dim}")
    buckets = _buckets(geo, cfg, T, prompt_buckets)
    max_rows = max(buckets)
    slack = max_rows - 1
    L, SB = cfg.chain_len, cfg.beat_bytes

    packed = {pk.name: pk for pk in _pack_all(qd, cfg, geo, size_only=shape_only)}
    plans = {1: ActPlan.build(geo, 1)} | {b: ActPlan.build(geo, b) for b in buckets}
    parts = len(_lm_head_parts(packed["lm_head"], cfg))
    n_instr = (program_instructions(qd, attention_instructions(geo.passes))
               + (2 + (qd.final_cap is not None)) * (parts - 1))

    ib = _LayoutBuilder(cfg) if shape_only else ImageBuilder(cfg)
    prog_regions = {"decode": ib.reserve("program:decode", "program", n_instr * INSTR_BYTES,
                                         rows=1)}
    for b in buckets:
        prog_regions[b] = ib.reserve(f"program:prefill{b}", "program", n_instr * INSTR_BYTES,
                                     rows=b)
    # weights: the gather table, the RoPE table, then the linears in program order
    def emb_table() -> np.ndarray:     # written as it is: no bytes copy of a 0.26 GB table
        emb = np.zeros((s.vocab, geo.ew * L), dtype=np.int8)
        emb[:, :s.hidden] = qd.embed
        return emb

    def rope_bytes() -> bytes:
        cs = np.zeros((T + slack, geo.cs_words * L), dtype=np.uint8)
        tab = np.ascontiguousarray(qd.rope[:T].astype("<i2"))
        cs[:T, :2 * s.head_dim] = tab.view(np.uint8).reshape(T, 2 * s.head_dim)
        return cs.tobytes()

    r_emb = ib.append_made("weights:embed", "weights", s.vocab * geo.ew * L, emb_table,
                           shape=[s.vocab, s.hidden],
                           rows=s.vocab, words=geo.ew, features=s.hidden,
                           layout=f"GATHER table: row id at super-beat id*{geo.ew * L // SB}, "
                                  "int8, zero padded")
    r_rope = ib.append_made("weights:rope", "weights", (T + slack) * geo.cs_words * L,
                            rope_bytes, shape=[T, s.head_dim],
                            rows=T + slack, words=geo.cs_words, features=2 * s.head_dim,
                            layout=f"per position: {s.head_dim // 2} int16 cos then "
                                   f"{s.head_dim // 2} int16 sin (Q1.14, LE), zero padded; "
                                   f"{slack} zero slack rows")
    wregion, layers_report = {}, []
    for name, pk in packed.items():
        tern = isinstance(pk, _TPacked)
        wregion[name] = ib.append_made(
            f"weights:{name}", "weights", pk.nbytes, pk.make, shape=list(pk.ql.weight.shape),
            layout=tmatmul_layout(pk.plan) if tern else matmul_layout(cfg, pk.plan))
        report = tmatmul_report if tern else matmul_report
        layers_report.append(report(name, pk.plan, pk.ql.weight.shape, pk.nbytes))
    gregion = {}
    for i, ly in enumerate(qd.layers):
        blk = _gamma_block(ly, geo, s) if geo.gw else None
        if blk is not None:
            gregion[i] = ib.append_made(
                f"weights:L{i}.gamma", "weights", blk.nbytes, blk.tobytes,
                shape=[geo.gw * L],
                words=geo.gw,
                layout="int8 gamma codes of ABSQUANT and RMSNORM, slots (name, word, words) "
                       f"{[list(x) for x in geo.gslots]}; element i at byte i of its slot")
    kv_rows = T + slack
    kv_bytes = geo.kv_region_sb(kv_rows) * SB
    regions = ", ".join(f"kv heads {k0}..{k0 + n - 1} at +{geo.region_offset(kv_rows, k0)} "
                        f"({pb} per position)" for k0, n, pb in geo.regions)
    k_regions, v_regions = [], []
    for i in range(len(qd.layers)):
        for nm, lst in (("k", k_regions), ("v", v_regions)):
            lst.append(ib.reserve(f"kv:L{i}.{nm}", "kv", kv_bytes,
                                  shape=[kv_rows, s.kv_heads, s.head_dim], rows=kv_rows,
                                  words=geo.kv_words, features=s.kv_heads * geo.hd_words * L,
                                  layout=f"head-major regions (super-beats): {regions}; "
                                         f"position j's block at region + j * pos_sb, word "
                                         f"d*slots+k = word d of the region's kv head k; "
                                         f"{s.head_dim} valid per head; {slack} slack rows"))
    r_ids = ib.reserve("io:ids", "io", _cdiv(4 * max_rows, SB) * SB, shape=[max_rows],
                       rows=max_rows, layout="u32 LE token id per row at byte 4b")
    r_logits = ib.reserve("io:logits", "io", geo.lw * L,
                          shape=[1, s.vocab], rows=1, words=geo.lw,
                          features=s.vocab, scale=float(qd.scales.get("logits", 0.0)),
                          layout="the run's last row, int8, zero padded")
    if ib.size // SB > (1 << cfg.addr_bits):
        raise MappingError(f"memory image of {ib.size // SB} super-beats exceeds the "
                           f"{cfg.addr_bits}-bit port address space ({1 << cfg.addr_bits})")

    ad = _Addrs(embed=r_emb.addr, rope=r_rope.addr, ids=r_ids.addr, logits=r_logits.addr,
                weights={k: r.addr for k, r in wregion.items()},
                k=tuple(r.addr for r in k_regions), v=tuple(r.addr for r in v_regions),
                gammas={i: r.addr for i, r in gregion.items()}, kv_rows=kv_rows)
    infos = {}
    for key, region in prog_regions.items():
        rows = 1 if key == "decode" else key
        prog = _emit(qd, cfg, geo, packed, plans[rows], ad)
        name = "decode" if key == "decode" else f"prefill{key}"
        code = encode_program(prog, f"the {name} program")
        ib.fill(region, code)
        infos[key] = ProgramInfo(name, rows, region.addr, prog, plans[rows])
    # the weight blocks are packed now, one at a time, into the one image buffer
    image, mm = ib.finish(sections=[("program",), ("weights",), ("kv",), ("io",)],
                          version=DECODER_IMAGE_VERSION)

    decode = infos.pop("decode")
    naive = naive_program_bytes(len(qd.layers), T, max_rows, instructions=n_instr)
    shared = decode.nbytes + sum(p.nbytes for p in infos.values())
    reports = {
        "programs": {"decode": {"count": 1, "bytes": decode.nbytes},
                     "prefill": {"buckets": list(buckets), "count": len(buckets),
                                 "bytes": sum(p.nbytes for p in infos.values())}},
        "naive_program_bytes": naive["total_bytes"],
        "naive_programs": naive,
        "program_reduction": naive["total_bytes"] / shared,
        "act_plans": {"decode": decode.plan.to_dict()}
        | {f"prefill{b}": p.plan.to_dict() for b, p in infos.items()},
        "act_words_per_row": geo.words_per_row,
        "layers": layers_report,
    }
    if ternary:
        reports["tlmm"] = {"G": cfg.tlmm_g, "T": cfg.tlmm_t, "Q": cfg.tlmm_q,
                           "acc_depth": cfg.tlmm_acc_depth,
                           "lookups_per_cycle": cfg.tlmm_t * cfg.tlmm_q,
                           "ternary_macs_per_cycle": cfg.tlmm_t * cfg.tlmm_q * cfg.tlmm_g,
                           "gamma_bytes": sum(r.nbytes for r in gregion.values())}
    io = IoLayout(ids_addr=r_ids.addr, ids_bytes=r_ids.nbytes, logits_addr=r_logits.addr,
                  logits_words=geo.lw, logits_row_bytes=geo.lw * L, vocab=s.vocab,
                  max_rows=max_rows)
    kv = KvLayout(k_bases=[r.addr for r in k_regions], v_bases=[r.addr for r in v_regions],
                  regions=geo.regions, hd_words=geo.hd_words, rows=kv_rows, max_context=T)
    return LoweredDecoder(cfg, image, mm, decode, dict(sorted(infos.items())), io, kv,
                          T, reports, shape_only=shape_only)


# ----------------------------------------------------------------------------- host side

@dataclass(frozen=True)
class HostStep:
    """What the host does for one run: write ``writes``, set POS and PROG_BASE, start, then
    read the logits of the run's last row (those of token ``pos + rows - 1``; real only when
    ``tokens == rows``, see :attr:`has_logits`).

    Attributes
    ----------
    prog_base : int
        Super-beat address of the program to run (decode, or the smallest bucket that holds
        the chunk).
    pos : int
        The POS register (position of the first token).
    rows : int
        Rows the program runs (1 or the bucket size).
    tokens : int
        Real tokens of the chunk (rows past it run on token 0).
    writes : list of (int, bytes)
        ``(byte address, data)`` to write into external memory before the start.
    logits_addr : int
        Byte address of the logits row.
    logits_row_bytes : int
    vocab : int
    """

    prog_base: int
    pos: int
    rows: int
    tokens: int
    writes: list
    logits_addr: int
    logits_row_bytes: int
    vocab: int

    @property
    def has_logits(self) -> bool:
        """Whether the run's last row is a real token (its logits predict token ``pos +
        tokens``); a padded run's last row runs on token 0."""
        return self.tokens == self.rows


def prompt_runs(n: int, buckets) -> list[tuple[int, int]]:
    """``[(pos, tokens)]``: the runs the host makes for an ``n``-token prompt, so that the last
    prompt token is the last row of a run (the only row whose logits a program computes).

    Whole runs of the largest bucket while more than it is left; then, of the rest ``r``: one
    run of ``r`` tokens when ``r`` is 1 (the decode program) or a bucket; else the smallest
    bucket ``b > r`` ending at the prompt's end when ``b <= n`` (it recomputes ``b - r``
    tokens, whose cache rows it rewrites with the same values: a token's keys and values
    depend only on the tokens before it); else a run of the largest bucket below ``r`` and the
    same choice for what is left; with no bucket below ``r``, one-token runs of the decode
    program. No run is padded, so every run's logits are real and checked.
    """
    buckets = sorted(buckets)
    runs, p = [], 0
    while n - p > buckets[-1]:
        runs.append((p, buckets[-1]))
        p += buckets[-1]
    while n - p > 1 and n - p not in buckets:
        r = n - p
        b = min(x for x in buckets if x >= r)
        if b <= n:
            return runs + [(n - b, b)]
        below = [x for x in buckets if x < r]
        if not below:
            return runs + [(p + k, 1) for k in range(r)]
        runs.append((p, below[-1]))
        p += below[-1]
    return runs + ([(p, n - p)] if n > p else [])


def decode_memory_writes(lowered: LoweredDecoder, ids, pos: int) -> HostStep:
    """The host's side of one run: ``ids`` (one token: the decode program; more: a prefill
    chunk, run by the smallest bucket that holds it) at position ``pos``.

    Raises
    ------
    ValueError
        No tokens, an id outside the vocabulary, a chunk larger than the largest bucket (split
        the prompt into chunks of at most that many tokens), or ``pos + len(ids)`` past
        ``max_context``.
    """
    ids = [int(t) for t in np.asarray(ids).ravel()]
    n, vocab = len(ids), lowered.io.vocab
    if n == 0:
        raise ValueError("no token ids to run")
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"token id {bad[0]} outside the vocabulary of {vocab}")
    if pos < 0 or pos + n > lowered.max_context:
        raise ValueError(f"positions {pos}..{pos + n - 1} exceed max_context="
                         f"{lowered.max_context}")
    if n == 1:
        prog = lowered.decode
    else:
        fit = [b for b in lowered.buckets if b >= n]
        if not fit:
            raise ValueError(f"a chunk of {n} tokens exceeds the largest prefill bucket "
                             f"({lowered.buckets[-1]} rows); split the prompt with "
                             "mapping.llm_lower.prompt_runs")
        prog = lowered.prefill[fit[0]]
    SB = lowered.cfg.beat_bytes
    data = np.zeros(_cdiv(4 * prog.rows, SB) * SB // 4, dtype="<u4")
    data[:n] = ids
    return HostStep(prog.prog_base, int(pos), prog.rows, n,
                    [(lowered.io.ids_addr * SB, data.tobytes())],
                    lowered.io.logits_addr * SB, lowered.io.logits_row_bytes, vocab)


def read_logits(step: HostStep, memory) -> np.ndarray:
    """int8 logits ``[vocab]`` of the run's last row from the image after the run (``memory``:
    bytes, or anything with ``read(byte_addr, nbytes)`` such as ``sim.isa_model.IsaModel``).

    Raises
    ------
    ValueError
        The run was padded (``not step.has_logits``): its last row ran on token 0.
    """
    if not step.has_logits:
        raise ValueError(f"the run of {step.tokens} tokens at POS {step.pos} was padded to "
                         f"{step.rows} rows: its last row, whose logits a program computes, is "
                         "padding; run the prompt as mapping.llm_lower.prompt_runs splits it")
    nbytes = step.logits_row_bytes
    if hasattr(memory, "read"):
        raw = memory.read(step.logits_addr, nbytes)
    else:
        raw = bytes(memory[step.logits_addr: step.logits_addr + nbytes])
    return np.frombuffer(raw, dtype=np.int8)[:step.vocab].copy()
