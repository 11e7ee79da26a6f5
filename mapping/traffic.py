"""External-memory traffic: the one count of the bytes a program run moves.

:func:`instr_accesses` lists the external accesses an instruction makes (the rule: what the
hardware moves, in whole super-beats), :class:`TrafficCount` classifies accesses by the
memory-map region holding their first super-beat (:data:`TRAFFIC_KEYS`), and both the ISA
functional model (``sim.isa_model``, as it runs a program) and the predictions
(:func:`program_traffic`, from the instructions alone) count with them. The RTL's own traffic
counters (``sim/top.py``) measure the same categories in hardware, and the simulation holds
them equal to the ISA model's, run by run (``hwflow sim``, ``tests/e2e``).
"""

from __future__ import annotations

import numpy as np

from hwflow.golden.llm import attended_total
from hwflow.hw.contract import conv_record_bytes, scan_record_bytes, tlmm_passes
from hwflow.hw.isa import FLAG_POS, INSTR_BYTES, Opcode

from .memory_image import TRAFFIC_CATEGORY
from .ssm_format import block_bytes
from .ternary_format import block_layout

__all__ = ["TRAFFIC_KEYS", "TrafficCount", "instr_accesses", "fetched_beats",
           "program_traffic"]

#: Traffic counters (bytes, whole super-beats), docs/architecture.md "Memory traffic"; accesses
#: that start outside every classified region (the header, or no map given) count as ``other``.
TRAFFIC_KEYS = ("weights_read", "kv_read", "kv_written", "activations_read",
                "activations_written", "io_read", "io_written", "program_read", "other_read",
                "other_written")


def instr_accesses(i, cfg, pos: int) -> list[tuple[int, int, bool]]:
    """The external accesses of instruction ``i`` run with POS = ``pos``, instruction fetch
    excluded (:func:`fetched_beats`): ``[(first super-beat, bytes, write)]``.

    LOAD/STORE move ``b`` words (at ``ext + POS * pos_stride`` with ``FLAG_POS``); MATMUL reads
    its weight block; GATHER the token ids (``ceil(4·rows/SB)`` super-beats) and one table row
    per row (listed at the table's first row: every row a run reads lies in the table, which
    is all that classifies it); ATTN, per query row b, the position blocks of its keys
    (``golden.llm.attended``: ``0..POS+b``, or the window's) of its K and V regions, once for
    all the pass's query heads; KVSTORE writes ``rows`` position blocks; TMATMUL reads its
    parameter super-beats once and its index stream once per group of ``tlmm_passes`` passes
    of up to ``tlmm_rows`` rows (:func:`tlmm_passes`; the engine looks each record up for every
    row of a pass, and keeps a chunk's records for the group's other passes); CONV reads its
    parameter block once, SCAN once per row (``mapping.ssm_format``).
    """
    L, SB = cfg.chain_len, cfg.beat_bytes
    op = i.op
    if op in (Opcode.LOAD, Opcode.STORE):
        ext = i.ext + (pos * i.pos_stride if i.flags & FLAG_POS else 0)
        return [(ext, i.b * L, op == Opcode.STORE)]
    if op == Opcode.MATMUL:
        return [(i.ext, i.n_tiles * i.tile_mem_rows * cfg.row_bytes, False)]
    if op == Opcode.GATHER:
        return [(i.ids, -(-4 * i.rows // SB) * SB, False)] + [(i.ext, i.n * L, False)] * i.rows
    if op == Opcode.ATTN and i.rows:
        per_cache = attended_total(pos, i.rows, i.window) * i.pos_sb * SB
        return [(i.ext, per_cache, False), (i.v_ext, per_cache, False)]
    if op == Opcode.KVSTORE and i.rows:
        ext = i.ext + (pos * i.pos_stride if i.flags & FLAG_POS else 0)
        return [(ext, i.rows * i.pos_stride * SB, True)]
    if op == Opcode.TMATMUL:
        lay = block_layout(i.n_out, i.k_groups * cfg.tlmm_g, cfg.tlmm_g, cfg.tlmm_t,
                           cfg.tlmm_q, SB)
        stream = (i.ext + lay["param_beats"], lay["stream_beats"] * SB, False)
        return [(i.ext, lay["param_beats"] * SB, False)] + [stream] * tlmm_passes(i.rows, cfg)[0]
    if op == Opcode.CONV:
        return [(i.ext, block_bytes(conv_record_bytes(L, cfg.conv_taps), i.n, L, SB), False)]
    if op == Opcode.SCAN:
        nbytes = block_bytes(scan_record_bytes(L, cfg.ssm_states), i.n, L, SB)
        return [(i.ext, nbytes, False)] * i.rows
    return []


def fetched_beats(pc: int, held: int | None, beat_bytes: int) -> list[int]:
    """The super-beats the controller fetches for the instruction at byte ``pc`` while it holds
    super-beat ``held`` (None after a STORE or KVSTORE, which may overwrite the program): those
    of the instruction's bytes it does not hold, in order."""
    first, last = pc // beat_bytes, (pc + INSTR_BYTES - 1) // beat_bytes
    return [sb for sb in range(first, last + 1) if sb != held]


class TrafficCount:
    """Traffic counters: bytes by category and direction (:data:`TRAFFIC_KEYS`), every access
    counted as the whole super-beats it moves and classified by the region holding its first
    super-beat.

    Parameters
    ----------
    cfg : AccelConfig
    regions : MemoryMap or iterable of (start_sb, end_sb, kind), optional
        Where the counters classify accesses (``MemoryMap.spans``); without it every access is
        ``other``.
    """

    def __init__(self, cfg, regions=None):
        self.cfg = cfg
        if regions is not None and hasattr(regions, "spans"):
            regions = regions.spans()
        spans = sorted((int(a), int(b), TRAFFIC_CATEGORY.get(k, "other"))
                       for a, b, k in (regions or ()) if b > a)
        self._starts = np.array([a for a, _, _ in spans], dtype=np.int64)
        self._spans = spans
        self.counts = dict.fromkeys(TRAFFIC_KEYS, 0)

    def category(self, sb: int) -> str:
        """The category of the region holding super-beat ``sb`` (``other`` outside them)."""
        k = int(np.searchsorted(self._starts, sb, side="right")) - 1
        if k >= 0:
            a, b, cat = self._spans[k]
            if a <= sb < b:
                return cat
        return "other"

    def add(self, sb: int, nbytes: int, write: bool) -> None:
        """Count an access of ``nbytes`` from super-beat ``sb`` as whole super-beats."""
        SB = self.cfg.beat_bytes
        key = f"{self.category(sb)}_{'written' if write else 'read'}"
        if key not in self.counts:      # e.g. a write into the program or weights
            key = f"other_{'written' if write else 'read'}"
        self.counts[key] += -(-nbytes // SB) * SB

    def add_instr(self, i, pos: int) -> None:
        """Count instruction ``i``'s accesses (:func:`instr_accesses`) at POS ``pos``."""
        for sb, nbytes, write in instr_accesses(i, self.cfg, pos):
            self.add(sb, nbytes, write)


#: The categories a decoder's run moves (the prediction's report lists these, and any other
#: that is not zero).
_REPORTED = ("weights_read", "kv_read", "kv_written", "io_read", "io_written", "program_read")


def program_traffic(prog, cfg, pos: int, memory_map) -> dict:
    """External-memory bytes of one run of program ``prog`` at position ``pos``, by category:
    what the ISA functional model counts running it (:class:`TrafficCount` over
    :func:`instr_accesses` and :func:`fetched_beats`), from the instructions alone.

    Parameters
    ----------
    prog : ProgramInfo
        A lowered program (``mapping.llm_lower``): its instructions and ``prog_base``.
    cfg : AccelConfig
    pos : int
        The POS register of the run.
    memory_map : MemoryMap
        The image's regions (a shape-only lowering has one too).

    Returns
    -------
    dict
        ``weights_read``, ``kv_read``, ``kv_written``, ``io_read``, ``io_written``,
        ``program_read``, any other category that is not zero, and ``total``.
    """
    count = TrafficCount(cfg, memory_map)
    SB, held = cfg.beat_bytes, None
    for idx, i in enumerate(prog.program):
        for sb in fetched_beats(prog.prog_base * SB + idx * INSTR_BYTES, held, SB):
            count.add(sb, SB, False)
            held = sb
        count.add_instr(i, pos)
        if i.op in (Opcode.STORE, Opcode.KVSTORE):
            held = None     # a STORE may overwrite the program: the super-beat is refetched
    t = {k: v for k, v in count.counts.items() if k in _REPORTED or v}
    t["total"] = sum(count.counts.values())
    return t
