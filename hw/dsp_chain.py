"""The sparse DSP chain (docs/architecture.md, "Matrix engine"): the selectors that pack, skew
and pick the activations (:class:`SparseSelector`, shared by all chains) and one chain of G DSP
groups with its reduction nodes (:class:`DSPChain`)."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .dsp48e2 import A_BITS, DSP48E2Slice
from .matrix_engine_model import LO_BITS, legal_modes, selector_base

__all__ = ["DSPChain", "SparseSelector", "DSP_LATENCY", "segment_sums"]

#: AREG + MREG + PREG: cycles from a slice's operands to its P.
DSP_LATENCY = 3


def pos_bits(chain_len: int) -> int:
    """Width of a word position (0 .. L-1)."""
    return max(1, (chain_len - 1).bit_length())


def segment_sums(acc: list, lgr, G: int, rs: list[int]) -> list:
    """Combine G DSP-group values into segments: segment ``s`` of mode ``r`` = the sum of groups
    ``[s*G/r, (s+1)*G/r)``; segments ``>= r`` are don't-care (they carry a group's own value).

    Sums of aligned blocks are built as a tree and shared between modes (at G = 4: 3 adders per
    row for r in {1, 2, 4}); int32 wrap like the accumulators.
    """
    memo = {}

    def block(start, size):
        if size == 1:
            return acc[start]
        if (start, size) not in memo:
            h = size // 2
            memo[start, size] = (block(start, h) + block(start + h, h))[:32].as_signed()
        return memo[start, size]

    segs = []
    for s in range(G):
        cands = [(r, block(s * G // r, G // r)) for r in rs if s < r]
        if not cands:
            segs.append(acc[s])
            continue
        v = cands[-1][1]
        for r, blk in cands[:-1]:
            v = Mux(lgr == r.bit_length() - 1, blk, v)
        segs.append(v)
    return segs


class SparseSelector(wiring.Component):
    """Packs the activation word pair, delays it for the DG positions and picks, for every slice
    of every chain, the packed operand its index selects.

    **Packing**, once per lane for all chains (the word is broadcast): ``A[q] = x0[q] + x1[q] *
    2**18``, 27-bit signed (an adder of which only the 9 bits ``x1 - (x0 < 0)`` above the low
    field are not wiring). **Skew**: the packed word is written into ``S0`` register banks, bank
    ``d`` holding it ``d + 1`` cycles after it arrived; a slice at DG position ``d = i mod S0``
    reads bank ``d``. **Selection** (only with ``cfg.sparse``): slice ``i`` of chain ``p`` reads
    position ``base[i] | (idx[i][p] & mask[i])``, with ``base[i] = g * M`` and ``mask[i] = M - 1``
    from a case over the legal modes (Python constants from :mod:`.matrix_engine_model`, one case
    per mode, 12 at L = 16, shared by all chains). Without ``cfg.sparse`` slice ``i`` reads position
    ``i`` (dense) and ``idx`` is ignored.

    The banks are register arrays (Verilog ``reg [26:0] bank [L]``) read at a computed index
    rather than a case or a mux tree: Verilator makes each selection one array load. Measured on
    the U280 engine alone (16 x 16, Verilator -O3, 2:4 mode with random indices as real sparse
    weights give): 0.18 M cycles/s with a case (branch mispredictions), 0.21 M with a 2:1-mux
    tree, 0.65 M with array reads (0.76 M for the dense-only engine). Yosys maps each read to the
    same LUT mux tree as a case. The banks hold the word from one cycle after it arrived (a
    register array cannot hold the combinational input), so lane ``i``'s ``idx`` is registered
    on the way in too, which also takes the ring memory's output off the mux path.

    **Timing.** For the k-group whose lane 0 time is ``c`` (``x0``, ``x1``, ``lgm``, ``lgr`` at
    ``c``; ``idx[i]`` at ``c + i mod S0``), ``a[i][p]`` holds the operand of slice ``i`` of chain
    ``p`` during ``c + 1 + (i mod S0)``.

    Parameters
    ----------
    cfg : AccelConfig
        ``chains`` (P), ``chain_len`` (L), ``group_len`` (S0), ``sparse``.

    Attributes
    ----------
    x0, x1 : in, ``L`` signed bytes: the words of rows b and b+1 (unskewed)
    idx : in, ``[i][p]`` unsigned 4 (lane i ``i mod S0`` cycles late)
    lgm, lgr : in, the mode of the group whose lane 0 enters now
    a : out, ``[i][p]`` signed 27: the packed operand of slice i of chain p
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        P, L = cfg.chains, cfg.chain_len
        lanes = data.ArrayLayout(signed(8), L)
        super().__init__({
            "x0": In(lanes), "x1": In(lanes),
            "idx": In(data.ArrayLayout(data.ArrayLayout(unsigned(4), P), L)),
            "lgm": In(3), "lgr": In(2),
            "a": Out(data.ArrayLayout(data.ArrayLayout(signed(A_BITS), P), L)),
        })

    def _bases(self, m: Module, modes: list) -> tuple:
        """Per-lane ``g * M`` and ``M - 1`` of ``modes[i mod S0]`` (combinational)."""
        cfg = self.cfg
        L, S0 = cfg.chain_len, cfg.group_len
        pw = pos_bits(L)
        base = Signal(data.ArrayLayout(unsigned(pw), L))
        mask = Signal(data.ArrayLayout(unsigned(pw), L))
        legal = legal_modes(L, cfg.sparse)
        for d in range(S0):
            lanes = range(d, L, S0)
            lgm, lgr = modes[d]
            with m.Switch(Cat(lgr, lgm)):
                for lgm_v, lgr_v in legal[1:]:
                    with m.Case(lgr_v | lgm_v << len(lgr)):
                        m.d.comb += [mask[i].eq((1 << lgm_v) - 1) for i in lanes]
                        m.d.comb += [base[i].eq(selector_base(L, lgm_v, lgr_v, i))
                                     for i in lanes]
                with m.Default():       # dense (and illegal modes): pos = i
                    m.d.comb += [base[i].eq(i) for i in lanes]
        return base, mask

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        P, L, S0 = cfg.chains, cfg.chain_len, cfg.group_len
        banks = []
        for d in range(S0):
            bank = memory.Memory(shape=signed(A_BITS), depth=L, init=[])
            m.submodules[f"packed_d{d}"] = bank
            for q in range(L):
                wp = bank.write_port()
                if d == 0:
                    src = self.x0[q] + (self.x1[q] << LO_BITS)
                else:
                    rp = banks[-1].read_port(domain="comb")
                    m.d.comb += rp.addr.eq(q)
                    src = rp.data
                m.d.comb += [wp.addr.eq(q), wp.data.eq(src), wp.en.eq(1)]
            banks.append(bank)

        if cfg.sparse:
            # the mode travels with the groups: lane i reads it delayed 1 + i mod S0
            modes = [(self.lgm, self.lgr)]
            for d in range(1, S0 + 1):
                lgm_d = Signal.like(self.lgm, name=f"lgm_d{d}", reset_less=True)
                lgr_d = Signal.like(self.lgr, name=f"lgr_d{d}", reset_less=True)
                m.d.sync += [lgm_d.eq(modes[-1][0]), lgr_d.eq(modes[-1][1])]
                modes.append((lgm_d, lgr_d))
            base, mask = self._bases(m, modes[1:])
            idx = Signal.like(self.idx, reset_less=True)
            m.d.sync += idx.eq(self.idx)
        pw = pos_bits(L)
        for i in range(L):
            for p in range(P):
                rp = banks[i % S0].read_port(domain="comb")
                if cfg.sparse:
                    m.d.comb += rp.addr.eq(base[i] | (idx[i][p][:pw] & mask[i]))
                else:
                    m.d.comb += rp.addr.eq(i)
                m.d.comb += self.a[i][p].eq(rp.data)
        return m


class DSPChain(wiring.Component):
    """One chain: ``G`` DSP groups (DGs) of ``S0`` DSP48E2 slices and their reduction nodes.

    **Packed multiply.** Slice ``i`` multiplies its packed operand ``a[i] = x0 + x1 * 2**18``
    (rows b and b+1 at the word position its selector picked, see :class:`SparseSelector`) by
    its int8 weight ``w[i]``, so a DG's P holds ``sum x0*w + 2**18 * sum x1*w`` over its
    ``S0 <= 7`` slices. Slices cascade PCOUT -> PCIN inside a DG only; no slice accumulates
    over cycles.

    **Reduction node** (one per DG, in fabric): splits the DG's P into ``lo = sext(P[17:0])``
    and ``hi = P[47:18] + P[17]`` and adds them to two int32 accumulators (rows b, b+1) while
    ``en``; ``first`` loads instead of adding. ``o[row][s]`` combines the DG accumulators by
    ``lgr`` (segment s of r = 2**lgr is the sum of DGs ``[s*G/r, (s+1)*G/r)``).

    **Timing.** For the k-group whose lane 0 time is ``c``: ``a[i]`` and ``w[i]`` arrive at
    ``c + (i mod S0)`` (the slice's position in its DG), the DG's sum reaches the reduction
    node at ``c + latency`` (``S0 - 1 + DSP_LATENCY``), when ``en``/``first`` must describe the
    group. The accumulators (and ``o``) hold a finished dot product from the cycle after its
    last group's ``en`` until the next ``en``; ``lgr`` must be that dot product's then.

    No clock enable and no reset on the datapath: the engine never stalls mid-flight, and the
    accumulators are loaded by ``first`` before they are read.

    Parameters
    ----------
    cfg : AccelConfig
        ``chain_len`` (L), ``groups`` (G), ``group_len`` (S0), ``sparse`` (legal ``lgr``).

    Attributes
    ----------
    a : in, ``[i]`` signed 27, lane ``i`` ``i mod S0`` cycles late
    w : in, ``[i]`` signed 8, as ``a``
    en, first : in, the group reaching the reduction nodes is valid / first of a dot product
    lgr : in, segments per row ``r = 2**lgr``
    o : out, ``[row][seg]`` signed 32
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        L, G, S0 = cfg.chain_len, cfg.groups, cfg.group_len
        self.L, self.G, self.S0 = L, G, S0
        self.latency = S0 - 1 + DSP_LATENCY
        super().__init__({
            "a": In(data.ArrayLayout(signed(A_BITS), L)),
            "w": In(data.ArrayLayout(signed(8), L)),
            "en": In(1), "first": In(1),
            "lgr": In(2),
            "o": Out(data.ArrayLayout(data.ArrayLayout(signed(32), G), 2)),
        })

    def elaborate(self, platform):
        m = Module()
        L, G, S0 = self.L, self.G, self.S0
        acc = [[None] * G for _ in range(2)]
        for g in range(G):
            prev = None
            for d in range(S0):
                i = g * S0 + d
                s = DSP48E2Slice(cascade=d > 0, clock_enable=False, accumulator=False)
                m.submodules[f"dsp{i}"] = s
                m.d.comb += [s.a.eq(self.a[i]), s.b.eq(self.w[i])]
                if prev is not None:
                    m.d.comb += s.pcin.eq(prev.pcout)
                prev = s
            # reduction node of DG g: |sum x0*w| <= S0 * 2**14 <= 7 * 2**14 < 2**17 keeps lo
            # exact; hi takes back the borrow P[17] of a negative lo. int32 like golden's
            # accumulators (the compiler keeps every sum in range; the registers wrap).
            p = prev.p
            lo = p[:LO_BITS].as_signed()
            hi = p[LO_BITS:].as_signed() + p[LO_BITS - 1]
            for row, part in enumerate((lo, hi)):
                r = Signal(signed(32), name=f"acc{row}_{g}", reset_less=True)
                with m.If(self.en):
                    m.d.sync += r.eq(Mux(self.first, 0, r) + part)
                acc[row][g] = r
        rs = sorted({1 << lgr for _, lgr in legal_modes(L, self.cfg.sparse)})
        for row in range(2):
            for s, v in enumerate(segment_sums(acc[row], self.lgr, G, rs)):
                m.d.comb += self.o[row][s].eq(v)
        return m
