"""One lowering of the graph IR to instructions, for every model family.

A program is the graph's ops in program order, each turned into its instructions by the rule
for its kind (:data:`RULES`): the MLP graph (``input``, ``qlinear``, ``qadd``, ``output``) and
the decoder graph (``compiler.decoder_graph``: ``embed``, ``rope_table``, ``gamma_codes``,
``rmsnorm``, ``absquant``, ``qlinear``, ``rope``, ``attention``, ``silu_mul``, ``qadd``,
``lm_head``) and the Mamba graph (``compiler.ssm_graph``: those and ``conv``, ``scan``,
``hadamard``) go through the same rules, so a new family adds rules for its new kinds, not a
new lowering. The linear rules emit through ``mapping.linear`` (the one MATMUL / TMATMUL /
ABSQUANT encoder).

Where things are is the family's placement (:class:`Placement`): its memory plan (MLP:
``memory_plan``'s allocations; decoder: the static areas of ``llm_lower.ActPlan`` for a run of
``rows`` rows) and its image's regions.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Protocol

from hwflow.compiler.ir import Graph, op_of
from hwflow.compiler.ops import Op
from hwflow.hw.config import AccelConfig
from hwflow.hw.isa import (
    FLAG_GAMMA,
    FLAG_GELU,
    FLAG_POS,
    FLAG_RELU,
    FLAG_RELU2,
    FLAG_TANH,
    Instr,
    Opcode,
    field_max,
)

from .errors import MappingError
from .linear import absquant, matmul, tmatmul
from .weight_format import channels_per_tile

__all__ = ["Placement", "RULES", "emit", "ACT_FLAGS", "LM_HEAD_CHANNELS",
           "lm_head_part_channels", "lm_head_parts"]

#: SILUMUL's flag for each MLP activation (``golden.llm.GATE_LUTS``).
ACT_FLAGS = {"silu": 0, "relu2": FLAG_RELU2, "gelu_tanh": FLAG_GELU}
#: Largest output count of one MATMUL: its ``n`` field (``hw.isa.LAYOUT``).
LM_HEAD_CHANNELS = field_max(Opcode.MATMUL, "n")


class Placement(Protocol):
    """Where a program's tensors and blocks are: what the rules read besides the op.

    ``addr``, ``rows``, ``words``: a tensor's first act word, rows and act words per row;
    ``span``: the act words a LOAD or STORE of a tensor moves (MLP inputs and outputs);
    ``features``: the elements per row a vector instruction covers (a decoder's head-padded
    rows count their zero padding); ``weights``: a linear's block (super-beat) and its plan
    (``mapping.linear``); ``ext``: the super-beat of a node's own region (an input, output,
    table or gamma block); ``gamma``: the act word of a gamma-code slot; ``m_addr``: where
    ABSQUANT puts each row's absmax; ``xq``: the scratch rows of an unquantized ternary
    linear's input (MLPs). A decoder's placement also has ``geo`` and ``ad`` (its geometry
    and external addresses, ``mapping.llm_lower``) for the attention and LM-head rules.
    """

    cfg: AccelConfig
    m_addr: int

    def addr(self, t: str) -> int: ...
    def rows(self, t: str) -> int: ...
    def words(self, t: str) -> int: ...
    def span(self, t: str) -> int: ...
    def features(self, t: str) -> int: ...
    def weights(self, name: str) -> tuple: ...
    def ext(self, name: str) -> int: ...
    def gamma(self, slot: str) -> int | None: ...


def _residual(op: Op, p: Placement) -> int | None:
    return p.addr(op.inputs[1]) if len(op.inputs) > 1 else None


def _input(name, op, g, p) -> list:
    """LOAD an MLP input's rows from its region."""
    return [Instr(Opcode.LOAD, ext=p.ext(name), a=p.addr(name), b=p.span(name))]


def _output(name, op, g, p) -> list:
    """STORE the rows of an MLP output's producer to the output's region."""
    return [Instr(Opcode.STORE, ext=p.ext(name), a=p.addr(op.inputs[0]),
                  b=p.span(op.inputs[0]))]


def _qlinear(name, op, g, p) -> list:
    """MATMUL, or (ternary) TMATMUL reading its ABSQUANT input; a ternary linear whose input
    is not quantized yet (MLPs) first quantizes it into the scratch rows ``p.xq``."""
    a, x = op.attrs, op.inputs[0]
    wgt, plan = p.weights(name)
    if a.get("ternary"):
        out = []
        xa = p.addr(x)
        if op_of(g, x).kind != "absquant":
            out.append(absquant(xa, p.xq, p.rows(x), plan.k, p.words(x), p.m_addr))
            xa = p.xq
        out.append(tmatmul(plan, a["shift"], wgt, xa, p.words(x), p.addr(name), p.rows(name),
                           p.words(name), p.m_addr, _residual(op, p), a["res_mult"],
                           bool(a["relu"])))
        return out
    if p.words(x) < plan.k_words:
        raise MappingError(f"layer '{name}': input rows of {p.words(x)} words are shorter "
                           f"than its {plan.k_words} k-words")
    return [matmul(plan, a["shift"], wgt, p.addr(x), p.addr(name), p.rows(name), p.words(name),
                   _residual(op, p), a["res_mult"], bool(a["relu"]), x_words=p.words(x))]


def _qadd(name, op, g, p) -> list:
    """VADD ``residual_add(a, b)``."""
    a, b = op.inputs
    at = op.attrs
    return [Instr(Opcode.VADD, FLAG_RELU if at["relu"] else 0, at["shift"], a=p.addr(a),
                  out=p.addr(name), b=p.addr(b), rows=p.rows(name), n=op.out.shape[-1],
                  words=p.words(name), mult_b=int(at["b_mult"]), mult_a=int(at["a_mult"]))]


def _rmsnorm(name, op, g, p) -> list:
    """RMSNORM of every row, of each head of every row (``heads``: the head's words apart),
    or of the run's last row only (``last_row``); FLAG_GAMMA with the op's gamma slot."""
    at, x = op.attrs, op.inputs[0]
    rows, n, words = p.rows(x), p.features(x), p.words(x)
    a, out = p.addr(x), p.addr(name)
    if at["heads"]:
        rows, n, words = rows * at["heads"], op.out.shape[-1] // at["heads"], words // at["heads"]
    if at["last_row"]:
        last = (rows - 1) * words
        a, out, rows = a + last, out + last, 1
    gam = p.gamma(at["gamma"]) if at["gamma"] else None
    return [Instr(Opcode.RMSNORM, FLAG_GAMMA if gam is not None else 0, shift=at["shift"], a=a,
                  out=out, g=gam or 0, rows=rows, eps=at["eps"], n=n, words=words,
                  mult_b=at["mult"])]


def _absquant(name, op, g, p) -> list:
    """ABSQUANT in place: the ternary linears' per-token int8 input and its absmax."""
    x, slot = op.inputs[0], op.attrs["gamma"]
    return [absquant(p.addr(x), p.addr(name), p.rows(x), p.features(x), p.words(x), p.m_addr,
                     p.gamma(slot) if slot else None)]


def _rope(name, op, g, p) -> list:
    """ROPE of each head in place, its cos/sin rows from the ``rope_table`` input."""
    x, cs = op.inputs
    heads = op.attrs["heads"]
    words = p.words(x)
    return [Instr(Opcode.ROPE, a=p.addr(x), cs=p.addr(cs), cs_words=p.words(cs),
                  rows=p.rows(x), heads=heads, hd=op.out.shape[-1] // heads,
                  head_stride=words // heads * p.cfg.chain_len, words=words)]


def _silu_mul(name, op, g, p) -> list:
    """SILUMUL (flag: the activation) of gate and up, into gate."""
    gate, up = op.inputs
    at = op.attrs
    if at["act"] not in ACT_FLAGS:
        raise MappingError(f"{name}: activation '{at['act']}' is not one the vector unit has "
                           f"({', '.join(ACT_FLAGS)})")
    return [Instr(Opcode.SILUMUL, ACT_FLAGS[at["act"]], at["shift"], a=p.addr(gate),
                  out=p.addr(name), b=p.addr(up), rows=p.rows(name), n=op.out.shape[-1],
                  words=p.words(name), mult_b=at["mult"])]


def _embed(name, op, g, p) -> list:
    """GATHER the token ids' embedding rows (whole super-beats of the table's padded rows)."""
    words, L, SB = p.words(name), p.cfg.chain_len, p.cfg.beat_bytes
    return [Instr(Opcode.GATHER, ext=p.ext(name), a=p.addr(name), n=words, rows=p.rows(name),
                  ids=p.ad.ids, stride=words * L // SB, table_rows=op.attrs["table"].shape[0])]


def _rope_table(name, op, g, p) -> list:
    """LOAD(POS) the run's positions' rows of the RoPE table."""
    words, L, SB = p.words(name), p.cfg.chain_len, p.cfg.beat_bytes
    return [Instr(Opcode.LOAD, FLAG_POS, ext=p.ext(name), a=p.addr(name),
                  b=p.rows(name) * words, pos_stride=words * L // SB)]


def _gamma_codes(name, op, g, p) -> list:
    """LOAD the layer's gamma block into the ``gamma`` area."""
    return [Instr(Opcode.LOAD, ext=p.ext(name), a=p.addr(name), b=p.words(name))]


def _attention(name, op, g, p) -> list:
    """Per cache region a KVSTORE of k and one of v (the rows' kv heads into their position
    blocks, at POS), then one ATTN per pass (``llm_lower.attention_passes``)."""
    q, k, v = op.inputs
    at, geo, ad = op.attrs, p.geo, p.ad
    layer, rows, hdw = at["layer"], p.rows(q), geo.hd_words
    k_base, v_base = ad.k[layer], ad.v[layer]
    prog = []
    for src, base in ((k, k_base), (v, v_base)):
        for k0, slots, pos_sb in geo.regions:
            prog.append(Instr(Opcode.KVSTORE, FLAG_POS,
                              ext=base + geo.region_offset(ad.kv_rows, k0),
                              a=p.addr(src) + k0 * hdw, words=p.words(src), rows=rows,
                              pos_stride=pos_sb, slots=slots, hd_words=hdw))
    for ps in geo.passes:
        off = geo.region_offset(ad.kv_rows, ps.kv0)
        prog.append(Instr(Opcode.ATTN, shift=at["oshift"], ext=k_base + off, v_ext=v_base + off,
                          a=p.addr(q) + ps.q0 * hdw, out=p.addr(name) + ps.q0 * hdw,
                          q_words=p.words(q), rows=rows, lanes=ps.lanes, grp=ps.grp,
                          slots=ps.slots, hd_words=hdw, pos_sb=ps.pos_sb, smul=at["smul"],
                          omul=at["omul"], sshift=at["sshift"], window=at["window"],
                          cap=at["cap"]))
    return prog


def lm_head_part_channels(cfg: AccelConfig) -> int:
    """Channels of each LM head part but the last: the most of :data:`LM_HEAD_CHANNELS` that
    is a whole number of dense weight tiles (``C = chains``), act words and super-beats (a part
    is stored at a super-beat of the logits row), ``lcm(chains, L, SB)``."""
    unit = math.lcm(cfg.chains, cfg.chain_len, cfg.beat_bytes)
    if unit > LM_HEAD_CHANNELS:
        raise MappingError(f"an LM head part must be a multiple of lcm(chains, L, super-beat) = "
                           f"{unit} channels, more than one MATMUL's {LM_HEAD_CHANNELS}")
    return LM_HEAD_CHANNELS // unit * unit


def lm_head_parts(n_out: int, cfg: AccelConfig) -> list[tuple[int, int]]:
    """``[(first channel, channels)]`` of the LM head's MATMULs (:func:`lm_head_part_channels`
    each, the last the rest)."""
    per = lm_head_part_channels(cfg)
    return [(c0, min(per, n_out - c0)) for c0 in range(0, n_out, per)]


def _lm_head(name, op, g, p) -> list:
    """The LM head on the run's last row and its STOREs to the host's logits row: MATMULs of
    at most :data:`LM_HEAD_CHANNELS` outputs, as a vocabulary past the 16-bit ``n`` field
    (every Llama 3 and Qwen: 128k-152k) is split at tile boundaries (:func:`lm_head_parts`).
    Part ``c`` reads the weight tiles from its first one (tiles are stored one after another,
    ``tile_mem_rows`` memory rows each), writes its outputs into the logits area (the last part
    zero-padded to the row's super-beat), and a STORE moves them to super-beat ``first
    channel / SB`` of the row before the next part overwrites the area. With a final logit
    ``cap`` a SILUMUL flag TANH caps each part in place before its STORE."""
    x, cfg, at = op.inputs[0], p.cfg, op.attrs
    wgt, plan = p.weights(name)
    xa = p.addr(x) + (p.rows(x) - 1) * p.words(x)       # the last row: its logits are read
    out, ext = p.addr(name), p.ad.logits
    L, SB = cfg.chain_len, cfg.beat_bytes
    C = channels_per_tile(cfg, plan.fmt)
    assert lm_head_part_channels(cfg) % C == 0      # the LM head is dense
    tile_sb = plan.tile_mem_rows * cfg.beats_per_row
    row_words = p.geo.lw
    prog = []
    for c0, n in lm_head_parts(plan.n_out, cfg):
        t0, nt = c0 // C, -(-n // C)
        part = replace(plan, n_tiles=nt, n_out=n)
        words = row_words - c0 // L if c0 + n == plan.n_out else n // L
        prog.append(matmul(part, at["shift"], wgt + t0 * tile_sb, xa, out, 1, words))
        if at["cap"]:
            mult, shift = at["cap"]
            prog.append(Instr(Opcode.SILUMUL, FLAG_TANH, shift, a=out, out=out, rows=1, n=n,
                              words=words, mult_b=mult))
        prog.append(Instr(Opcode.STORE, ext=ext + c0 // SB, a=out, b=words))
    return prog


def _conv(name, op, g, p) -> list:
    """CONV of the layer's rows in place, on history beats ``layer * beats ..`` of the conv
    unit (each layer its own part), its parameter block at ``p.ext``."""
    x, at, n = op.inputs[0], op.attrs, op.out.shape[-1]
    beats = -(-n // p.cfg.chain_len)
    return [Instr(Opcode.CONV, shift=at["shift"], ext=p.ext(name), a=p.addr(x), out=p.addr(name),
                  n=n, rows=p.rows(name), words=p.words(name), mult_b=at["silu_mult"],
                  state=at["layer"] * beats, silu_shift=at["silu_shift"])]


def _scan(name, op, g, p) -> list:
    """SCAN of the layer's rows on state channels ``layer * n ..`` of the scan unit."""
    u, dt, b, c = op.inputs
    at, n = op.attrs, op.out.shape[-1]
    if p.words(dt) != p.words(u) or p.words(name) != p.words(u) or p.words(c) != p.words(b):
        raise MappingError(f"{name}: u, dt and y rows must share a stride, B and C rows theirs")
    return [Instr(Opcode.SCAN, shift=at["y_shift"], ext=p.ext(name), a=p.addr(u),
                  out=p.addr(name), b=p.addr(b), rows=p.rows(name), c=p.addr(c), dt=p.addr(dt),
                  n=n, words=p.words(name), bu_mult=at["bu_mult"], y_mult=at["y_mult"],
                  state=at["layer"] * n, bu_shift=at["bu_shift"], d_shift=at["d_shift"],
                  bc_words=p.words(b))]


def _hadamard(name, op, g, p) -> list:
    """HADAMARD of every row in place, requantized to ``bits``."""
    x, at = op.inputs[0], op.attrs
    return [Instr(Opcode.HADAMARD, shift=at["shift"], a=p.addr(x), out=p.addr(name),
                  n=op.out.shape[-1], rows=p.rows(name), words=p.words(name), mult_b=at["mult"],
                  lgb=at["lgb"], obits=at["bits"])]


#: The rule of every op kind that becomes instructions (``reshape`` is layout only).
RULES = {
    "input": _input, "output": _output, "qlinear": _qlinear, "qadd": _qadd,
    "rmsnorm": _rmsnorm, "absquant": _absquant, "rope": _rope, "silu_mul": _silu_mul,
    "embed": _embed, "rope_table": _rope_table, "gamma_codes": _gamma_codes,
    "attention": _attention, "lm_head": _lm_head, "conv": _conv, "scan": _scan,
    "hadamard": _hadamard, "reshape": lambda *_: [],
}


def emit(graph: Graph, names, p: Placement) -> list:
    """The instructions of ``graph``'s ops ``names`` in that order (END not included).

    Raises
    ------
    MappingError
        An op kind without a hardware mapping, or a rule's operand out of range.
    """
    prog = []
    for name in names:
        op = op_of(graph, name)
        rule = RULES.get(op.kind)
        if rule is None:
            raise MappingError(f"node '{name}' ({op.kind}) has no hardware mapping; "
                               "run the fuse pass first")
        prog += rule(name, op, graph, p)
    return prog


def prefetch_weights(prog: list) -> list:
    """``prog`` with a PREFETCH for every MATMUL that has other instructions before it since
    the previous MATMUL (or the program's start): placed right after that MATMUL (or first),
    so the weight ring streams the MATMUL's weights while those instructions run
    (docs/architecture.md, "Weight prefetch"). Weights are read-only, so the only order to
    keep is the ring's: one PREFETCH pending at a time, each answered by its MATMUL next.
    """
    out, at = [], 0                 # at: where the next MATMUL's PREFETCH goes
    for ins in prog:
        if ins.op == Opcode.MATMUL:
            if at < len(out):
                out.insert(at, replace(ins, op=Opcode.PREFETCH))
            out.append(ins)
            at = len(out)
        else:
            out.append(ins)
    return out
