"""Weight-fill decoder: a MATMUL's weight tile memory rows -> weight-ring entries.

docs/architecture.md ("Weight ring", "Weight tile formats") is the contract. A tile is R
parameter rows followed by a body whose rows are value rows, index rows (sparse) and scale rows
(int4); a ring entry is one k-group for every chain: P·L int8 weights and P·L 4-bit indices.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .contract import INT4_GROUP, int4_capable

__all__ = ["WeightFill", "INT4_GROUP", "int4_capable"]

# INT4_GROUP and int4_capable (is the int4 path built) are in the contract, hw/contract.py


class WeightFill(wiring.Component):
    """Turns the memory rows of a MATMUL's weight tiles into ring entries, one per cycle at most.

    Rows arrive on ``i`` (memory order: chain p's bytes ``[p·L, (p+1)·L)``, byte i of them for
    slice i). Per tile:

    - the R parameter rows pass through as entries (the output sequencer reads them raw);
    - int8 dense: every value row passes through (indices 0);
    - int8 sparse: an index row is latched (no entry); value row 2h is written with the low
      nibbles of the latched row as indices, value row 2h+1 (if ``2h+1 < k_words``) with the
      high nibbles;
    - int4: a scale row is latched at the head of every block (no entry); every value row is
      held for two cycles and written as two entries (low nibbles, then high nibbles if
      ``2h+1 < k_words``), dequantized ``w = q·s`` (two's complement ``q``, unsigned ``s``); in
      int4 sparse an index row (latched) precedes every value row.

    The scale of slice i of chain p is nibble ``c = (γ − γ0)·r + i // S`` (``S = L/r``) of chain
    p's part of the block's scale row. The latched scales are shifted down by ``r`` nibbles at
    every new group γ (every ``16/L`` value rows), so slice i always reads nibble ``i // S``.

    Output: ``o_valid`` with ``o_values`` / ``o_idx`` (memory order, registered): an entry for
    the ring, two cycles after its row was taken from ``i`` (an input register, then the
    decode). Throughput: one row per cycle, except int4 value rows (two cycles, one entry
    each), during which an int4 sparse unit's next index row is taken as well; so the ring
    fills at one entry per cycle at most, and int4 layers reach it whenever rows arrive in
    time (int8 sparse: 2 entries per 3 rows, as the memory brings them).

    Parameters
    ----------
    cfg : AccelConfig
        Without ``cfg.sparse`` there is no index latch (indices are 0); without the int4 path
        (:func:`int4_capable`) there is no scale latch and no dequantizer.

    Attributes
    ----------
    start : in, pulse: a new weight block begins (latches the fields below)
    k_words, sparse, int4, lgr : in, the MATMUL's fields (``sparse``: ``lgm != 0``)
    i : stream of memory rows (``8·P·L`` bits)
    o_valid, o_values, o_idx : out, one entry
    busy : out, a row or an entry is inside
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        rb = cfg.row_bytes
        super().__init__({
            "start": In(1),
            "k_words": In(16), "sparse": In(1), "int4": In(1), "lgr": In(2),
            "i": In(stream.Signature(8 * rb)),
            "o_valid": Out(1),
            "o_values": Out(8 * rb),
            "o_idx": Out(4 * rb),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        P, L, R = cfg.chains, cfg.chain_len, cfg.param_rows
        rb = cfg.row_bytes
        has_sparse = cfg.sparse
        has_int4 = int4_capable(cfg)

        # --- fields, latched at start ----------------------------------------------------------
        k_last = Signal(16)
        sparse = Signal()
        int4 = Signal()
        lgr = Signal(2)
        with m.If(self.start):
            m.d.sync += [k_last.eq(self.k_words - 1),
                         sparse.eq(self.sparse if has_sparse else 0),
                         int4.eq(self.int4 if has_int4 else 0),
                         lgr.eq(self.lgr)]

        # --- state ---------------------------------------------------------------------------
        in_params = Signal(init=1)      # the next row is a parameter row
        pr = Signal(range(max(R, 2)))   # parameter rows seen in this tile
        kw = Signal(16)                 # entries of the body written in this tile
        hi = Signal()                   # the next value entry takes the high nibbles
        need_idx = Signal()             # the next body row is an index row
        need_scale = Signal()           # the next body row is a scale row
        idx_row = Signal(8 * rb, reset_less=True)
        scale = Signal(8 * rb, reset_less=True)

        # Input register: the rows come straight from block RAM (ECP5 DP16KD: 5.8 ns clock to
        # out) through the gearbox; with the int4 dequantizer behind them that was 15.3 ns, the
        # critical path of the 2 x 4 ULX3S build (65 MHz < 70).
        r_valid = Signal()
        row = Signal(8 * rb, reset_less=True)
        take = Signal()                 # the registered row is consumed this cycle
        load = Signal()                 # the register takes the next row
        lookahead = Signal()            # int4 sparse: the next index row is taken early
        m.d.comb += [load.eq(~r_valid | take), self.i.ready.eq(load | lookahead)]
        with m.If(load):
            m.d.sync += r_valid.eq(self.i.valid)
        with m.If(self.i.valid & load):
            m.d.sync += row.eq(self.i.payload)
        m.d.comb += self.busy.eq(r_valid | self.o_valid)

        # body row kinds: a scale row heads every int4 block, an index row precedes a sparse
        # value row (int8: a pair of value rows)
        is_scale = Signal()
        is_idx = Signal()
        is_value = Signal()
        if has_int4:
            m.d.comb += is_scale.eq(~in_params & need_scale)
        if has_sparse:
            m.d.comb += is_idx.eq(~in_params & ~is_scale & need_idx)
        m.d.comb += is_value.eq(~in_params & ~is_idx & ~is_scale)
        last_entry = kw == k_last

        # an int4 value row is held for its second entry
        hold = Signal()
        if has_int4:
            m.d.comb += hold.eq(is_value & int4 & ~hi & ~last_entry)
        m.d.comb += take.eq(r_valid & ~hold)
        # int4 sparse units are (index row, value row): while a value row is held for its
        # second entry, the next unit's index row is taken into ``idx_next`` (and moves to
        # ``idx_row`` with the value row's second entry), so the next value row follows without
        # a cycle for its index row: 1 entry per cycle instead of 2 per 3
        idx_ahead = Signal()            # idx_next holds the next unit's index row
        idx_next = Signal(8 * rb, reset_less=True)
        emit = Signal()
        m.d.comb += emit.eq(r_valid & (in_params | is_value))

        # --- entry data ------------------------------------------------------------------------
        values = Signal(8 * rb)
        if not has_int4:
            m.d.comb += values.eq(row)
        else:
            gper = INT4_GROUP // (2 * L)            # value rows per scale group (16/L)
            # the codes of this entry: low nibbles first, high nibbles on the held second cycle
            codes = Signal(4 * rb)
            m.d.comb += codes.eq(Mux(hi, Cat(row[8 * b + 4:8 * b + 8] for b in range(rb)),
                                     Cat(row[8 * b:8 * b + 4] for b in range(rb))))
            deq = Signal(8 * rb)
            for p in range(P):
                sc = scale[8 * p * L:8 * (p + 1) * L]
                for i in range(L):
                    b = p * L + i
                    q = codes[4 * b:4 * b + 4].as_signed()
                    # slice i's segment scale: nibble i // (L/r) for r = 1, 2, 4 (r <= min(L, 4))
                    c2 = 2 * i // L
                    c4 = 4 * i // L if L >= 4 else 0
                    s = Signal(4, name=f"scale_{p}_{i}")
                    m.d.comb += s.eq(Mux(lgr == 0, sc[0:4],
                                         Mux(lgr == 1, sc[4 * c2:4 * c2 + 4],
                                             sc[4 * c4:4 * c4 + 4])))
                    # q·s by shift-and-add: |partial sums| <= 8·15 = 120 fit int8. Written out
                    # so that synthesis keeps it in LUTs (a $mul of 4 x 4 bits could be mapped
                    # to a DSP slice).
                    prod = Signal(range(-128, 128), name=f"deq_{p}_{i}")
                    terms = [Mux(s[k], q << k, 0) for k in range(4)]
                    m.d.comb += prod.eq((terms[0] + terms[1]) + (terms[2] + terms[3]))
                    m.d.comb += deq[8 * b:8 * b + 8].eq(prod)
            m.d.comb += values.eq(Mux(is_value & int4, deq, row))

        m.d.sync += self.o_valid.eq(emit)
        with m.If(emit):
            m.d.sync += self.o_values.eq(values)
            if has_sparse:
                m.d.sync += self.o_idx.eq(Mux(hi, Cat(idx_row[8 * b + 4:8 * b + 8]
                                                      for b in range(rb)),
                                              Cat(idx_row[8 * b:8 * b + 4] for b in range(rb))))

        # --- row bookkeeping -------------------------------------------------------------------
        if has_int4:
            bper = Signal(range(INT4_GROUP + 1))    # value rows per block: 32 / r
            m.d.comb += bper.eq(Mux(lgr == 0, INT4_GROUP, Mux(lgr == 1, INT4_GROUP // 2,
                                                                INT4_GROUP // 4)))
            blk = Signal(range(INT4_GROUP + 1))     # value rows of this block so far
            grp = Signal(range(gper + 1))           # value rows of this scale group so far
            if has_sparse:
                # a held value row that is neither the tile's last (two more entries at
                # least) nor its block's last is followed by an index row
                m.d.comb += lookahead.eq(r_valid & is_value & int4 & sparse & ~hi & ~idx_ahead
                                         & (kw + 2 <= k_last) & (blk != bper - 1))
                with m.If(lookahead & self.i.valid):
                    m.d.sync += [idx_next.eq(self.i.payload), idx_ahead.eq(1)]

        with m.If(take):
            with m.If(in_params):
                with m.If(pr == R - 1):
                    # the body starts
                    m.d.sync += [pr.eq(0), in_params.eq(0), kw.eq(0), hi.eq(0),
                                 need_idx.eq(sparse), need_scale.eq(int4)]
                with m.Else():
                    m.d.sync += pr.eq(pr + 1)
            with m.Elif(is_scale):
                if has_int4:
                    m.d.sync += [scale.eq(row), need_scale.eq(0), blk.eq(0), grp.eq(0)]
            with m.Elif(is_idx):
                if has_sparse:
                    m.d.sync += [idx_row.eq(row), need_idx.eq(0)]
            with m.Elif(int4):
                if has_int4:
                    # a whole value row (one or two entries) is done
                    m.d.sync += [hi.eq(0), need_idx.eq(sparse)]
                    with m.If(idx_ahead):
                        m.d.sync += [idx_row.eq(idx_next), need_idx.eq(0), idx_ahead.eq(0)]
                    with m.If(grp == gper - 1):
                        # next scale group: the next r nibbles of each chain's scales come down
                        m.d.sync += grp.eq(0)
                        for p in range(P):
                            sc = scale[8 * p * L:8 * (p + 1) * L]
                            m.d.sync += sc.eq(Mux(lgr == 0, sc >> 4,
                                                  Mux(lgr == 1, sc >> 8, sc >> 16)))
                    with m.Else():
                        m.d.sync += grp.eq(grp + 1)
                    with m.If(blk == bper - 1):
                        m.d.sync += need_scale.eq(1)
                    with m.Else():
                        m.d.sync += blk.eq(blk + 1)
            with m.Elif(sparse):
                # int8 sparse value rows come in pairs sharing an index row (low, high nibbles)
                if has_sparse:
                    with m.If(~hi & ~last_entry):
                        m.d.sync += hi.eq(1)
                    with m.Else():
                        m.d.sync += [hi.eq(0), need_idx.eq(1)]
        if has_int4:
            with m.If(hold & r_valid):
                m.d.sync += hi.eq(1)
        with m.If(emit & is_value):
            m.d.sync += kw.eq(kw + 1)
            with m.If(last_entry):
                # the tile's last entry: the next row is the next tile's first parameter row
                m.d.sync += in_params.eq(1)

        with m.If(self.start):
            m.d.sync += [in_params.eq(1), pr.eq(0), hi.eq(0), self.o_valid.eq(0),
                         r_valid.eq(0), idx_ahead.eq(0)]
            if has_sparse:
                m.d.sync += idx_row.eq(0)        # dense layers then write indices 0
        return m
