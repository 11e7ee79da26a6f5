"""Lower a quantized decoder to one decode program, the prefill programs and the memory image
(docs/architecture.md, "Transformer path").

What is lowered is the decoder's graph IR (``compiler.decoder_graph``, from a
:class:`~hwflow.compiler.decoder.QDecoder`): its ops become instructions by the rules every
model family shares (``mapping.emit``), placed by :class:`_Run` in the areas of
:class:`ActPlan`; the weights, gamma codes and tables come from its nodes.

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
and a SILUMUL flag TANH on each LM head part before its STORE; BitNet's ternary layers run
an ABSQUANT (with the layer's gamma codes) before each group of ternary linears, TMATMUL for
MATMUL, and a VADD for each unfused residual add.

Only the last row's logits are computed: they predict the token after the run, the only one the
host needs (a prompt's earlier rows are known tokens). The host therefore runs a prompt so that
its last token is a program's last row (:func:`prompt_runs`); the logits area is one row
whatever the bucket, so prefill buckets are not sized by the vocabulary. A vocabulary past one
MATMUL's 65,535 outputs runs as parts (:func:`lm_head_part_channels`), each stored to the
logits row in external memory before the next: the area holds one part, so a 128k
vocabulary's 8016-word row (L = 16) takes 4095 words of the activation buffer.

Row strides (act words of L bytes): the residual stream ``x`` and ``h`` use ``ew`` =
the embedding row padded to whole super-beats (GATHER writes rows ``n`` words apart and moves
whole super-beats); a linear that reads ``h`` has ``k_words = ceil(hidden / L)`` and skips the
rest of each row (the MATMUL's ``x_pad``), so its weights stream no zero column. ``q``/``att``
rows are ``heads * hd_words`` words, ``k``/``v`` rows
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

from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from hwflow.compiler.decoder import DecoderShape, QDecoder, QLinear
from hwflow.compiler.decoder_graph import GAMMA_SLOTS, LINEARS, decoder_graph, linear_of
from hwflow.compiler.ir import Graph, op_of
from hwflow.compiler.passes import first_fit
from hwflow.compiler.spec import check_decoder_graph
from hwflow.compiler.ssm import SsmShape
from hwflow.compiler.ssm_graph import mamba_graph
from hwflow.compiler.ssm_quant import QMamba
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import INSTR_BYTES, Instr, Opcode

from .emit import emit, lm_head_part_channels, prefetch_weights
from .errors import MappingError
from .linear import (
    TmatmulPlan,
    WeightPlan,
    matmul_layout,
    matmul_nbytes,
    matmul_report,
    pack_matmul,
    pack_tmatmul,
    plan_matmul,
    plan_tmatmul,
    tmatmul_layout,
    tmatmul_nbytes,
    tmatmul_report,
)
from .lower import encode_program
from .memory_image import DECODER_IMAGE_VERSION, ImageBuilder, MemoryMap, Region
from .ssm_format import pack_conv, pack_scan
from .ternary_format import row_read_words

__all__ = ["ActPlan", "ProgramInfo", "IoLayout", "KvLayout", "LoweredDecoder", "HostStep",
           "lower_decoder", "act_row_words", "decode_memory_writes", "read_logits", "prompt_runs",
           "program_instructions", "naive_program_bytes", "AttnPass", "attention_passes",
           "attention_instructions", "kv_cache_bytes", "tlmm_outputs", "ssm_units", "SSM_EXACT"]

#: Smallest default prefill bucket (rows); smaller buckets only when 8 rows do not fit.
MIN_BUCKET = 8
#: Field limits of the instruction set the plan must respect (hw/isa.py LAYOUT).
_U16 = (1 << 16) - 1
_U8 = (1 << 8) - 1


#: Gamma codes a ternary layer may carry (compiler.decoder.QLayer), in slot order.
GAMMAS = ("attn_gamma", "attn_sub_gamma", "mlp_gamma", "mlp_sub_gamma")
#: Gamma codes of the per-head q/k RMSNORMs (Qwen3), for int8 and ternary layers alike.
HEAD_NORM_GAMMAS = ("q_norm_gamma", "k_norm_gamma")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _as_graph(qd) -> Graph:
    """The graph of a QDecoder (``compiler.decoder_graph``) or a QMamba
    (``compiler.ssm_graph``), or the graph itself."""
    if isinstance(qd, QDecoder):
        return decoder_graph(qd)
    if isinstance(qd, QMamba):
        return mamba_graph(qd)
    return qd


def _is_mamba(g: Graph) -> bool:
    return g.graph.get("family") == "mamba"


def _shape(g: Graph) -> DecoderShape | SsmShape:
    return (SsmShape if _is_mamba(g) else DecoderShape)(**g.graph["shape"])


def _linears(g: Graph) -> list:
    """``(name, op)`` of every linear (``qlinear`` and the ``lm_head``), in program order."""
    return [(n, op_of(g, n)) for n in g.graph["schedule"]
            if op_of(g, n).kind in ("qlinear", "lm_head")]


def _layer_ternary(ly, i: int) -> bool:
    """Whether layer ``i``'s linears are ternary (all seven, or none): ``ly`` a QLayer, or a
    ``{linear: ternary}`` dict of the layer's linears."""
    flags = ly if isinstance(ly, dict) else {
        nm: bool(getattr(getattr(ly, nm), "ternary", False)) for nm in LINEARS}
    if len(set(flags.values())) > 1:
        tern = [nm for nm, t in flags.items() if t]
        raise MappingError(f"layer {i}: linears {tern} are ternary and the others int8; the "
                           "mapper needs all linears of a layer in one format")
    return next(iter(flags.values()))


def _ternary_layers(g: Graph) -> list[int]:
    """The layers whose linears are ternary (BitNet b1.58: TMATMUL on the TLMM engine)."""
    flags: dict = {}
    for name, op in _linears(g):
        if op.kind == "qlinear":
            layer, lin = name.split(".")
            flags.setdefault(int(layer[1:]), {})[lin] = bool(op.attrs["ternary"])
    return [i for i, f in sorted(flags.items()) if _layer_ternary(f, i)]


def tlmm_outputs(qd, chain_len: int) -> int:
    """Output channels the TLMM accumulator must hold for decoder ``qd`` (a QDecoder or its
    graph; ``tlmm_acc_depth``): the widest ternary linear, or a row of q heads padded to whole
    act words of ``chain_len`` bytes; 0 without ternary linears."""
    g = _as_graph(qd)
    tern = [op.attrs["weight"].shape[0] for _, op in _linears(g) if op.attrs["ternary"]]
    if not tern:
        return 0
    s = _shape(g)
    return max(max(tern), s.heads * _cdiv(s.head_dim, chain_len) * chain_len)


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
    #: A Mamba's areas besides ``x`` and ``h``: ``(name, words)`` in allocation order (its
    #: graph's: ``xin``, ``z``, ``dtr``, ``b``, ``c``, ``dt``, ``y``); empty for a transformer.
    ssm_areas: tuple = ()

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
    def of(cls, g: Graph, cfg: AccelConfig) -> _Geometry:
        """The geometry of decoder graph ``g`` (``compiler.decoder_graph``, or a Mamba's,
        ``compiler.ssm_graph``) on ``cfg``."""
        if _is_mamba(g):
            return cls._of_mamba(g, cfg)
        s = _shape(g)
        ternary = bool(_ternary_layers(g))
        gammas = {nm for n in g.graph["schedule"] if op_of(g, n).kind == "gamma_codes"
                  for nm in op_of(g, n).attrs if nm in GAMMA_SLOTS}
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
            if nm in gammas:
                slots.append((nm, off, width[nm]))
                off += width[nm]
        gw = _cdiv(off, SB // L) * (SB // L)    # one LOAD moves whole super-beats
        tails = ()
        if ternary:
            def past(k: int, words: int) -> int:     # words read past a row of k inputs
                return max(0, row_read_words(k, cfg.tlmm_g, cfg.tlmm_t, L) - words)

            tails = tuple((nm, t) for nm, t in (
                ("h", past(s.hidden, geo.ew)), ("att", past(geo.q_words * L, geo.q_words)),
                ("gate", past(s.intermediate, geo.iw))) if t)
        return replace(geo, mw=_cdiv(2, L) if ternary else 0, gw=gw,
                       gslots=tuple(slots), tails=tails)

    @classmethod
    def _of_mamba(cls, g: Graph, cfg: AccelConfig) -> _Geometry:
        """A Mamba's geometry: the residual stream as a transformer's, every other area as
        wide as the widest tensor its ops put there (whole act words), no attention."""
        s = _shape(g)
        L, SB = cfg.chain_len, cfg.beat_bytes
        areas: dict = {}
        for n in g.graph["schedule"]:
            op = op_of(g, n)
            if op.attrs["area"] not in ("x", "h", "logits"):
                w = _cdiv(op.out.shape[-1], L)
                areas[op.attrs["area"]] = max(areas.get(op.attrs["area"], 0), w)
        return cls(L=L, SB=SB, ew=_cdiv(s.hidden, SB) * SB // L, hd_words=0, q_words=0,
                   kv_words=0, iw=0, lw=_cdiv(s.vocab, SB) * SB // L,
                   la=min(_cdiv(s.vocab, SB) * SB, lm_head_part_channels(cfg)) // L,
                   cs_words=0, ssm_areas=tuple(areas.items()))

    @property
    def row_words(self) -> dict:
        """Act words per row of every area of the static plan, in allocation order."""
        if self.ssm_areas:
            return {"x": self.ew, "h": self.ew, **dict(self.ssm_areas)}
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
        "bytes"}}``), ``naive_program_bytes``, ``program_reduction`` (None for a recurrent
        model: its programs never depend on the position), ``act_plans``,
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
    #: A state-space model: every run advances the state held in the units, so a prompt's
    #: runs must not overlap (:func:`prompt_runs`).
    recurrent: bool = False

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


def _pack_all(g: Graph, cfg: AccelConfig, geo: _Geometry, size_only: bool = False) -> list:
    """Every linear of decoder graph ``g`` planned in program order; if some do not fit the
    weight ring, the error names the one that needs the most (so one rebuild with its
    weight_depth fits them all). Ternary linears become TMATMUL blocks (:class:`_TPacked`),
    the others MATMUL weight tiles. A linear reads its input area's rows (``k_words``: their
    act words); q, k and v have their output heads, o its input heads padded to whole act
    words (``head_pad``). The plans and sizes come from the shapes (the head-padded weights as
    zero-stride views: the plan a real weight gets); a block's bytes are packed by its
    ``make`` when the image is written (:class:`ImageBuilder`), one block at a time.
    ``size_only``: plans and sizes only."""
    s = _shape(g)
    hd, hdp = s.head_dim, geo.hd_words * cfg.chain_len
    jobs = []
    for name, op in _linears(g):
        ql, tern = linear_of(op), bool(op.attrs["ternary"])
        if op.kind == "lm_head" and tern:
            raise MappingError("lm_head is marked ternary; the mapper runs the LM head as an "
                               "int8 MATMUL (BitNet keeps it in high precision): quantize it "
                               "to int8")
        k_words = geo.row_words[op_of(g, op.inputs[0]).attrs["area"]]
        pad = op.attrs.get("head_pad", "")
        if pad == "rows":
            arrays = partial(_head_rows, ql, op.out.shape[-1] // hd, hd, hdp)
        elif pad == "cols":
            arrays = partial(_head_cols, ql, s.heads, hd, hdp)
        else:
            arrays = _as_is
        jobs.append((name, tern, ql, k_words, arrays))
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
    # the weights cover the input's features, not the row's padding to whole super-beats
    # (the MATMUL's x_pad skips it): no zero column is streamed
    k = (ql.weight if w is None else w).shape[1]
    k_words = min(k_words, -(-k // cfg.chain_len))
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


def _gamma_block(op, geo: _Geometry, s) -> np.ndarray:
    """A ``gamma_codes`` op's codes as the ``gamma`` act area holds them (int8, ``gw * L``
    bytes): slot by slot, element i at byte i of the slot (the o input's gammas spread to the
    padded heads, zero in the padding)."""
    L, hdp = geo.L, geo.hd_words * geo.L
    blk = np.zeros(geo.gw * L, dtype=np.int8)
    for nm, off, words in geo.gslots:
        g = op.attrs.get(nm)
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
    gammas: dict = field(default_factory=dict)   # gamma_codes node -> its gamma block
    kv_rows: int = 0                             # positions of every cache region
    params: dict = field(default_factory=dict)   # conv and scan node -> its parameter block


@dataclass(frozen=True)
class _Run:
    """The decoder's placement (:class:`mapping.emit.Placement`) for one program: its graph's
    tensors in the areas of ``plan`` (every tensor ``plan.rows`` rows, in the area its op
    names), its blocks and tables at the addresses ``ad``."""

    cfg: AccelConfig
    graph: Graph
    geo: _Geometry
    plan: ActPlan
    ad: _Addrs
    packed: dict

    def _area(self, t: str) -> str:
        return op_of(self.graph, t).attrs["area"]

    def addr(self, t: str) -> int:
        return self.plan.addr(self._area(t))

    def rows(self, t: str) -> int:
        return self.plan.rows

    def words(self, t: str) -> int:
        return self.plan.areas[self._area(t)][1]

    def span(self, t: str) -> int:
        raise MappingError(f"'{t}': a decoder moves no tensor by LOAD/STORE of its span")

    def features(self, t: str) -> int:
        # q, k, v and att rows are heads padded to whole act words: a vector instruction
        # covers the zero padding too (golden.llm's norms and absmax see only the heads' values)
        if self._area(t) in ("q", "k", "v", "att"):
            return self.words(t) * self.geo.L
        return op_of(self.graph, t).out.shape[-1]

    def weights(self, name: str) -> tuple:
        return self.ad.weights[name], self.packed[name].plan

    def ext(self, name: str) -> int:
        kind = op_of(self.graph, name).kind
        if kind == "gamma_codes":
            return self.ad.gammas[name]
        if kind in ("conv", "scan"):
            return self.ad.params[name]
        return {"embed": self.ad.embed, "rope_table": self.ad.rope}[kind]

    def gamma(self, slot: str) -> int:
        return self.plan.addr("gamma") + {nm: off for nm, off, _ in self.geo.gslots}[slot]

    @property
    def m_addr(self) -> int:
        return self.plan.addr("m")


def _has_gammas(ly) -> bool:
    """Whether QLayer ``ly`` carries gamma codes (a LOAD of its ``gamma`` block)."""
    return any(getattr(ly, nm, None) is not None for nm in GAMMA_SLOTS)


def _layer_instructions(ly, has_gamma: bool, attn: int) -> int:
    """Instructions of one layer: 16 (int8: 12 and the PREFETCHes of its four MATMUL groups,
    q/k/v, o, gate/up and down); ternary: 16, plus 1 per unfused residual add; plus 1 per
    sub-norm, 2 for per-head q/k norms, 1 for the gamma LOAD and ``attn``, the KVSTOREs and
    ATTNs of the attention passes (:func:`attention_instructions`)."""
    extra = ((ly.attn_sub_norm is not None) + (ly.mlp_sub_norm is not None)
             + 2 * (getattr(ly, "q_norm", None) is not None) + bool(has_gamma) + attn)
    if not _layer_ternary(ly, 0):     # + RMSNORM and VADD per post-norm (Gemma 2)
        return 16 + extra + 2 * ((ly.post_attn_norm is not None)
                                 + (ly.post_mlp_norm is not None))
    return 16 + (ly.attn_add is not None) + (ly.mlp_add is not None) + extra


def attention_instructions(passes) -> int:
    """KVSTOREs (K and V per cache region) and ATTNs (one per pass) of one layer."""
    return 2 * len({(p.kv0, p.slots) for p in passes}) + len(passes)


def program_instructions(layers, attn: int = 3) -> int:
    """Instructions of every program (decode or any bucket): ``(16 + attn) * layers + 7`` for
    an int8 LLaMA decoder (``layers`` a count; ``attn`` the attention instructions of a layer,
    :func:`attention_instructions`: 3 for one cache region and one pass); given a
    :class:`QDecoder`, its count (ternary layers: 16 + attn each, plus one per sub-norm and
    one gamma LOAD per layer that has gammas) with the LM head as one MATMUL, its PREFETCH
    and its STORE: a vocabulary past 65,535 adds three (PREFETCH, MATMUL, STORE) per further
    part (:func:`_lm_head_parts`)."""
    if isinstance(layers, QDecoder):    # + the final cap's SILUMUL (Gemma 2)
        return 7 + (layers.final_cap is not None) + sum(
            _layer_instructions(ly, _has_gammas(ly), attn) for ly in layers.layers)
    return (16 + attn) * layers + 7


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
    # sum of ceil(t / max_rows) over t = 1 .. max_context, in closed form (a Mamba's context
    # is 2**31 positions): q whole blocks of max_rows lengths, then r lengths of q + 1 chunks
    q, r = divmod(max_context, max_rows)
    chunks = max_rows * q * (q + 1) // 2 + (q + 1) * r
    prefill = (chunks * body + max_context) * INSTR_BYTES
    return {"decode_bytes": decode, "prefill_bytes": prefill, "total_bytes": decode + prefill}


# ------------------------------------------------------------------------------- buckets

def kv_cache_bytes(shape, max_context: int) -> int:
    """Bytes of a decoder's int8 KV cache for ``max_context`` positions, before padding:
    every layer's K and V, ``kv_heads * head_dim`` bytes per position. A lower bound of the
    cache region :func:`lower_decoder` reserves (which pads heads to words and rows to
    super-beats)."""
    return 2 * shape.layers * int(max_context) * shape.kv_heads * shape.head_dim


def act_row_words(qd, cfg: AccelConfig) -> tuple[int, int]:
    """``(words per activation row, fixed words)`` of decoder ``qd``'s programs (a QDecoder or
    its graph) on ``cfg``: a program of ``B`` rows needs ``act_depth >= B * words + fixed``
    (the ternary gamma area is the fixed part; 0 for int8)."""
    geo = _Geometry.of(_as_graph(qd), cfg)
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

def ssm_units(qd, chain_len: int) -> dict:
    """The state-space units Mamba ``qd`` (a QMamba or its graph) needs on an engine of
    ``chain_len`` lanes, every layer's state on chip: ``{AccelConfig field: value}`` for
    ``ssm_states`` and ``conv_taps`` (exactly), ``ssm_channels``, ``conv_words`` and
    ``hadamard_block`` (at least: the largest Hadamard block, 0 without rotation)."""
    g = _as_graph(qd)
    s = _shape(g)
    blocks = [1 << op_of(g, n).attrs["lgb"] for n in g.graph["schedule"]
              if op_of(g, n).kind == "hadamard"]
    return {"ssm_states": s.d_state, "conv_taps": s.d_conv,
            "ssm_channels": s.layers * s.d_inner,
            "conv_words": s.layers * _cdiv(s.conv_dim, chain_len),
            "hadamard_block": max(blocks, default=0)}


#: The :func:`ssm_units` fields the units must equal (the rest: hold at least).
SSM_EXACT = ("ssm_states", "conv_taps")


def _check_ssm(g: Graph, cfg: AccelConfig) -> None:
    """A Mamba's state-space units must be built to its shape and hold every layer's
    state (:func:`ssm_units`)."""
    name = g.graph["name"]
    if not cfg.ssm:
        raise MappingError(f"'{name}' is a state-space model and this accelerator has no "
                           "state-space units (AccelConfig.ssm_states = 0)")
    s = _shape(g)
    if s.d_inner % cfg.ssm_lanes:
        raise MappingError(f"'{name}': {s.d_inner} inner channels do not split over "
                           f"ssm_lanes={cfg.ssm_lanes} scan units")
    for what, need in ssm_units(g, cfg.chain_len).items():
        have = getattr(cfg, what)
        if what in SSM_EXACT and need != have:
            raise MappingError(f"'{name}' needs {what} = {need}, the accelerator has {have}")
        if need > have:
            raise MappingError(f"'{name}' needs {what} >= {need} (every layer's state on "
                               f"chip), the accelerator has {have}")


def _check_fields(g: Graph, geo: _Geometry) -> None:
    s = _shape(g)
    if _is_mamba(g):
        if s.vocab > (1 << 32) - 1:
            raise MappingError(f"vocab={s.vocab} exceeds the GATHER field limit")
        return
    windows = [op_of(g, n).attrs["window"] for n in g.graph["schedule"]
               if op_of(g, n).kind == "attention"]
    if s.heads % s.kv_heads or s.head_dim % 2:
        raise MappingError(f"heads={s.heads}, kv_heads={s.kv_heads}, head_dim={s.head_dim}: "
                           "need heads a multiple of kv_heads and an even head_dim")
    pos_sb = max((p.pos_sb for p in geo.passes), default=0)
    for nm, v, hi in (("heads", s.heads, _U8), ("kv_heads", s.kv_heads, _U8),
                      ("hd_words", geo.hd_words, _U8), ("pos_sb", pos_sb, _U8),
                      ("head_dim", s.head_dim, _U16), ("vocab", s.vocab, (1 << 32) - 1),
                      ("sliding window", max(windows, default=0), _U16)):
        if v > hi:
            raise MappingError(f"{nm}={v} exceeds the ATTN/ROPE/GATHER field limit {hi}")


def _check_gammas(g: Graph, ternary_layers: list) -> None:
    """Gamma codes of ABSQUANT (``GAMMAS``) belong to ternary layers only."""
    for n in g.graph["schedule"]:
        op = op_of(g, n)
        if op.kind != "gamma_codes":
            continue
        i = int(n.split(".")[0][1:])
        has = [nm for nm in GAMMAS if nm in op.attrs]
        if has and i not in ternary_layers:
            raise MappingError(f"layer {i}: int8 linears with gamma codes {has}; gammas are "
                               "applied by ABSQUANT before ternary linears only (fold them "
                               "into int8 weights)")


def _program(g: Graph, cfg: AccelConfig, geo: _Geometry, packed: dict, plan: ActPlan,
             ad: _Addrs) -> list:
    """The program of ``plan.rows`` rows: the graph's ops in program order, each by its
    kind's rule (``mapping.emit``, the MLP's rules too), every MATMUL's weights prefetched
    beside the instructions before it (``prefetch_weights``), then END."""
    return prefetch_weights(emit(g, g.graph["schedule"], _Run(cfg, g, geo, plan, ad, packed))
                            ) + [Instr(Opcode.END)]


def _param_region(ib: ImageBuilder, op, node: str, cfg: AccelConfig) -> Region:
    """The parameter block of a ``conv`` or ``scan`` node (``mapping.ssm_format``)."""
    L, SB, a = cfg.chain_len, cfg.beat_bytes, op.attrs
    if op.kind == "conv":
        w = np.asarray(a["weight"])
        data = pack_conv(w, a["bias"], a["mult"], L, SB)
        layout = (f"per beat of {L} channels: {L}x{w.shape[1]} int8 taps (oldest first), "
                  f"{L} int32 biases, {L} u16 multipliers")
    else:
        data = pack_scan(a["a_codes"], a["d_mult"], L, SB)
        layout = (f"per beat of {L} channels: {L}x{a['a_codes'].shape[1]} u16 decay-rate "
                  f"codes, {L} int32 D multipliers")
    return ib.append_made(f"weights:{node}", "weights", len(data), lambda: data,
                          shape=list(np.shape(a["weight" if op.kind == "conv" else "a_codes"])),
                          layout=layout)


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


def lower_decoder(qd, cfg: AccelConfig, prompt_buckets=None,
                  shape_only: bool = False) -> LoweredDecoder:
    """Lower a quantized decoder to the decode program, the prefill programs and the image.

    Parameters
    ----------
    qd : QDecoder or networkx.DiGraph
        The quantized decoder (``compiler.llm_quant``), or its graph
        (``compiler.decoder_graph``, what is lowered), its RoPE table at least ``max_context``
        rows (``golden.llm.rope_table``).
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
    g = _as_graph(qd)
    tl = _ternary_layers(g)     # first: a layer of two formats is named as such
    # the array rules (linear_rules) held when the decoder was quantized (check_decoder)
    check_decoder_graph(g, arrays=False)
    _check_gammas(g, tl)
    ternary = bool(tl)
    if ternary and not cfg.tlmm:
        raise MappingError(f"decoder '{g.graph['name']}' has ternary linears (layers "
                           f"{', '.join(f'L{i}' for i in tl)}: TMATMUL) and this accelerator "
                           "has no TLMM engine (AccelConfig.tlmm); build it with tlmm (board "
                           "YAML `engine: tlmm: true`) or quantize the weights to int8")
    s = _shape(g)
    T = int(g.graph["max_context"])
    geo = _Geometry.of(g, cfg)
    _check_fields(g, geo)
    mamba = _is_mamba(g)
    if mamba:
        _check_ssm(g, cfg)
    else:
        rope_table = op_of(g, "rope_table").attrs["table"]
        if rope_table.shape[0] < T or rope_table.shape[1] != s.head_dim:
            raise MappingError(f"RoPE table {list(rope_table.shape)} does not cover "
                               f"max_context={T} positions of head_dim={s.head_dim}")
    buckets = _buckets(geo, cfg, T, prompt_buckets)
    max_rows = max(buckets)
    slack = max_rows - 1
    L, SB = cfg.chain_len, cfg.beat_bytes

    packed = {pk.name: pk for pk in _pack_all(g, cfg, geo, size_only=shape_only)}
    plans = {1: ActPlan.build(geo, 1)} | {b: ActPlan.build(geo, b) for b in buckets}
    layers = range(s.layers)
    gamma_nodes = [n for n in g.graph["schedule"] if op_of(g, n).kind == "gamma_codes"]
    param_nodes = [n for n in g.graph["schedule"] if op_of(g, n).kind in ("conv", "scan")]
    # every program has the decode program's instructions (addresses aside): count them once
    nowhere = _Addrs(0, 0, 0, 0, dict.fromkeys(packed, 0), (0,) * s.layers, (0,) * s.layers,
                     dict.fromkeys(gamma_nodes, 0), params=dict.fromkeys(param_nodes, 0))
    n_instr = len(_program(g, cfg, geo, packed, plans[1], nowhere))

    ib = _LayoutBuilder(cfg) if shape_only else ImageBuilder(cfg)
    prog_regions = {"decode": ib.reserve("program:decode", "program", n_instr * INSTR_BYTES,
                                         rows=1)}
    for b in buckets:
        prog_regions[b] = ib.reserve(f"program:prefill{b}", "program", n_instr * INSTR_BYTES,
                                     rows=b)
    # weights: the gather table, the RoPE table, then the linears in program order
    def emb_table() -> np.ndarray:     # written as it is: no bytes copy of a 0.26 GB table
        emb = np.zeros((s.vocab, geo.ew * L), dtype=np.int8)
        emb[:, :s.hidden] = op_of(g, "embed").attrs["table"]
        return emb

    def rope_bytes() -> bytes:
        cs = np.zeros((T + slack, geo.cs_words * L), dtype=np.uint8)
        tab = np.ascontiguousarray(rope_table[:T].astype("<i2"))
        cs[:T, :2 * s.head_dim] = tab.view(np.uint8).reshape(T, 2 * s.head_dim)
        return cs.tobytes()

    r_emb = ib.append_made("weights:embed", "weights", s.vocab * geo.ew * L, emb_table,
                           shape=[s.vocab, s.hidden],
                           rows=s.vocab, words=geo.ew, features=s.hidden,
                           layout=f"GATHER table: row id at super-beat id*{geo.ew * L // SB}, "
                                  "int8, zero padded")
    r_rope = None if mamba else ib.append_made(
        "weights:rope", "weights", (T + slack) * geo.cs_words * L, rope_bytes,
        shape=[T, s.head_dim], rows=T + slack, words=geo.cs_words, features=2 * s.head_dim,
        layout=f"per position: {s.head_dim // 2} int16 cos then {s.head_dim // 2} int16 sin "
               f"(Q1.14, LE), zero padded; {slack} zero slack rows")
    wregion, layers_report = {}, []
    for name, pk in packed.items():
        tern = isinstance(pk, _TPacked)
        wregion[name] = ib.append_made(
            f"weights:{name}", "weights", pk.nbytes, pk.make, shape=list(pk.ql.weight.shape),
            layout=tmatmul_layout(pk.plan) if tern else matmul_layout(cfg, pk.plan))
        report = tmatmul_report if tern else matmul_report
        layers_report.append(report(name, pk.plan, pk.ql.weight.shape, pk.nbytes))
    gregion = {}
    for node in gamma_nodes:
        blk = _gamma_block(op_of(g, node), geo, s)
        gregion[node] = ib.append_made(
            f"weights:{node}", "weights", blk.nbytes, blk.tobytes, shape=[geo.gw * L],
            words=geo.gw,
            layout="int8 gamma codes of ABSQUANT and RMSNORM, slots (name, word, words) "
                   f"{[list(x) for x in geo.gslots]}; element i at byte i of its slot")
    pregion = {node: _param_region(ib, op_of(g, node), node, cfg) for node in param_nodes}
    kv_rows = 0 if mamba else T + slack
    kv_bytes = geo.kv_region_sb(kv_rows) * SB
    regions = ", ".join(f"kv heads {k0}..{k0 + n - 1} at +{geo.region_offset(kv_rows, k0)} "
                        f"({pb} per position)" for k0, n, pb in geo.regions)
    k_regions, v_regions = [], []
    for i in ([] if mamba else layers):
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
                          features=s.vocab, scale=float(g.graph["scales"].get("logits", 0.0)),
                          layout="the run's last row, int8, zero padded")
    if ib.size // SB > (1 << cfg.addr_bits):
        raise MappingError(f"memory image of {ib.size // SB} super-beats exceeds the "
                           f"{cfg.addr_bits}-bit port address space ({1 << cfg.addr_bits})")

    ad = _Addrs(embed=r_emb.addr, rope=0 if r_rope is None else r_rope.addr, ids=r_ids.addr,
                logits=r_logits.addr, weights={k: r.addr for k, r in wregion.items()},
                k=tuple(r.addr for r in k_regions), v=tuple(r.addr for r in v_regions),
                gammas={n: r.addr for n, r in gregion.items()}, kv_rows=kv_rows,
                params={n: r.addr for n, r in pregion.items()})
    infos = {}
    for key, region in prog_regions.items():
        rows = 1 if key == "decode" else key
        prog = _program(g, cfg, geo, packed, plans[rows], ad)
        name = "decode" if key == "decode" else f"prefill{key}"
        code = encode_program(prog, f"the {name} program")
        ib.fill(region, code)
        infos[key] = ProgramInfo(name, rows, region.addr, prog, plans[rows])
    # the weight blocks are packed now, one at a time, into the one image buffer
    image, mm = ib.finish(sections=[("program",), ("weights",), ("kv",), ("io",)],
                          version=DECODER_IMAGE_VERSION)

    decode = infos.pop("decode")
    # a recurrent model's programs do not depend on the position at all: no program per
    # length to compare with
    naive = None if mamba else naive_program_bytes(s.layers, T, max_rows,
                                                   instructions=n_instr)
    shared = decode.nbytes + sum(p.nbytes for p in infos.values())
    reports = {
        "programs": {"decode": {"count": 1, "bytes": decode.nbytes},
                     "prefill": {"buckets": list(buckets), "count": len(buckets),
                                 "bytes": sum(p.nbytes for p in infos.values())}},
        "naive_program_bytes": naive and naive["total_bytes"],
        "naive_programs": naive,
        "program_reduction": naive and naive["total_bytes"] / shared,
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
                          T, reports, shape_only=shape_only, recurrent=mamba)


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


def prompt_runs(n: int, buckets, recurrent: bool = False) -> list[tuple[int, int]]:
    """``[(pos, tokens)]``: the runs the host makes for an ``n``-token prompt, so that the last
    prompt token is the last row of a run (the only row whose logits a program computes).

    ``recurrent`` (a state-space model, :attr:`LoweredDecoder.recurrent`): no token may run
    twice, since each run advances the state: runs of the largest bucket that fits what is
    left, down to one-token runs of the decode program, partitioning the prompt exactly.

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
    if recurrent:
        while p < n:
            k = max([b for b in buckets if b <= n - p], default=1)
            runs.append((p, k))
            p += k
        return runs
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
