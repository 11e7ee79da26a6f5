"""On-chip buffers: the activation buffer and the weight ring with its prefetcher."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .contract import RING_BURST_BEATS, int4_capable
from .gearbox import Gearbox
from .mem_port import read_req_layout
from .weight_fill import WeightFill

__all__ = ["ActivationBuffer", "WeightRing", "RING_BURST_BEATS", "skew_line"]

# RING_BURST_BEATS (read bursts of the weight prefetcher) is in the contract, hw/contract.py


def skew_line(m: Module, addr, lanes: int) -> list:
    """``[addr, addr delayed 1, ..., addr delayed lanes-1]`` (one shift register, no reset).

    Reading lane memory ``i`` at the ``(i mod S0)``-th entry skews an entry for the cascades of
    the DSP groups (``S0`` slices each): ``(S0 - 1) * len(addr)`` flops for the whole engine
    instead of one register per lane per stage per chain.
    """
    w = len(addr)
    if lanes == 1:
        return [addr]
    line = Signal(w * (lanes - 1), reset_less=True)
    m.d.sync += line.eq(Cat(addr, line[:w * (lanes - 2)]))
    return [addr] + [line[w * k:w * (k + 1)] for k in range(lanes - 1)]


class ActivationBuffer(wiring.Component):
    """``depth`` words of ``L`` bytes; three synchronous read ports, one byte-enable write port.

    Port ``a`` feeds the matrix engine's row ``b`` (``x0``), VADD ``a`` and STORE; port ``c``
    the engine's row ``b+1`` (``x1``); port ``b`` reads residuals (concurrently with the engine
    feed) and VADD ``b``. Reads are synchronous (data one cycle after the address while ``en``;
    it holds while ``en`` is low, which the sequencers use to stall). The write port takes one
    byte enable per lane, so the epilogue writes single int8 results in place without
    read-modify-write. The buffer starts zeroed.

    It is built as ``L`` byte-lane memories written at the same address (each read port is a
    copy of them in block RAM, whose simple-dual-port primitives read once per cycle), or, with
    ``uram``, as one ``8L``-bit memory per read port with a byte-enable write port, marked
    ``ram_style = "ultra"`` (a URAM288 is 72 bits wide: a byte lane alone would waste 64 of
    them). The two behave identically.

    Parameters
    ----------
    chain_len : int
        L, bytes per word.
    depth : int
        Words.
    uram : bool, optional
        Build for UltraRAM (``AccelConfig.act_uram``).
    """

    def __init__(self, chain_len: int, depth: int, uram: bool = False):
        self.L, self.depth, self.uram = chain_len, depth, uram
        aw = max(1, (depth - 1).bit_length())
        self.addr_width = aw
        super().__init__({
            "a_addr": In(aw), "a_en": In(1), "a_data": Out(8 * chain_len),
            "b_addr": In(aw), "b_en": In(1), "b_data": Out(8 * chain_len),
            "c_addr": In(aw), "c_en": In(1), "c_data": Out(8 * chain_len),
            "w_addr": In(aw), "w_data": In(8 * chain_len), "w_en": In(chain_len),
        })

    def elaborate(self, platform):
        m = Module()
        if self.uram:
            for name in "abc":
                mem = memory.Memory(shape=8 * self.L, depth=self.depth, init=[],
                                    attrs={"ram_style": "ultra"})
                m.submodules[f"copy_{name}"] = mem
                wp = mem.write_port(granularity=8)
                rp = mem.read_port()
                m.d.comb += [wp.addr.eq(self.w_addr), wp.data.eq(self.w_data),
                             wp.en.eq(self.w_en),
                             rp.addr.eq(getattr(self, f"{name}_addr")),
                             rp.en.eq(getattr(self, f"{name}_en")),
                             getattr(self, f"{name}_data").eq(rp.data)]
            return m
        for i in range(self.L):
            mem = memory.Memory(shape=8, depth=self.depth, init=[])
            m.submodules[f"lane{i}"] = mem
            wp = mem.write_port()
            sl = slice(8 * i, 8 * (i + 1))
            m.d.comb += [wp.addr.eq(self.w_addr), wp.data.eq(self.w_data[sl]),
                         wp.en.eq(self.w_en[i])]
            for name in "abc":
                rp = mem.read_port()
                m.d.comb += [rp.addr.eq(getattr(self, f"{name}_addr")),
                             rp.en.eq(getattr(self, f"{name}_en")),
                             getattr(self, f"{name}_data")[sl].eq(rp.data)]
        return m


class WeightRing(wiring.Component):
    """Weight ring buffer of ``D`` entries, filled ahead of compute through the fill decoder.

    An entry is one k-group for every chain: ``P*L`` int8 weights and (``cfg.sparse``) ``P*L``
    4-bit indices. After ``start`` the prefetcher reads ``total_rows`` consecutive memory rows
    (``row_bytes`` each) from super-beat ``base``; the :class:`~.weight_fill.WeightFill` decoder
    turns them into entries (parameter rows and value rows; index and scale rows are latched,
    int4 value rows give two entries), written to ring slots 0, 1, ... (mod D). ``arrived``
    counts entries written; a consumer may read entry ``e`` (absolute index since start) once
    ``arrived > e``. A tile's entries are its R parameter rows and one per k-group.

    Space is reserved per memory row when it is requested: 1 entry for int8 layers and 2 for
    int4 layers (``int4``), which is never less than the entries a row produces; each
    ``release`` pulse frees one tile's reservation, ``tile_mem_rows`` (times 2 for int4). So
    fetching runs ahead of the consumer by up to ``D`` reserved entries: while tile ``t`` is
    being computed, tiles ``t+1``, ... stream in (double buffering, with the ~32-cycle read
    latency hidden by having several bursts in flight); entries of unreleased tiles are never
    overwritten.

    Parameters
    ----------
    cfg : AccelConfig

    Attributes
    ----------
    start : in, pulse; latches the fields below
    base, total_rows, tile_mem_rows : in, weight block address (super-beats) and size in rows
    k_words, lgm, lgr, int4 : in, the MATMUL's fields (the fill decoder's format)
    release : in, pulse
    rd_req, rd_data : memory side (super-beat requests and data)
    arrived : out, entries written since ``start``
    idle : out, every requested row has been decoded and written
    starved : out, rows are left to request but the ring has no room for them (only a
        release, by the MATMUL that consumes the entries, makes room)
    eng_addr, eng_data, eng_idx : read port for the engine feed, always enabled, skewed per DSP
        group: lane ``i`` (``eng_data`` is lane-major: ``P`` bytes of lane ``i``, chain 0
        lowest; ``eng_idx`` the same with 4-bit indices) is read with ``eng_addr`` as it was
        ``i mod S0`` cycles ago, one cycle after that address. ``eng_idx`` is 0 without
        ``cfg.sparse``.
    prm_addr, prm_en, prm_data : synchronous read port for the epilogue parameters (a whole
        entry's weights, lane-major like ``eng_data``: the reader picks the few bytes it needs
        instead of the ring un-permuting all ``P*L`` bytes every cycle)

    The ring is built as ``L`` lane memories of ``P`` bytes (and ``L`` index lane memories of
    ``P`` nibbles), all written at the same slot, so that each lane can be read at its own
    (delayed) address: that is how the engine gets its per-group skew without registers.
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        D = cfg.weight_depth
        aw = max(1, (D - 1).bit_length())
        self.addr_width = aw
        super().__init__({
            "start": In(1),
            "base": In(cfg.addr_bits),
            "total_rows": In(32),
            "tile_mem_rows": In(16),
            "k_words": In(16), "lgm": In(3), "lgr": In(2), "int4": In(1),
            "release": In(1),
            "rd_req": Out(stream.Signature(read_req_layout(cfg.addr_bits))),
            "rd_data": In(stream.Signature(8 * cfg.beat_bytes)),
            "arrived": Out(32),
            "idle": Out(1), "starved": Out(1),
            "eng_addr": In(aw), "eng_data": Out(8 * cfg.row_bytes),
            "eng_idx": Out(4 * cfg.row_bytes),
            "prm_addr": In(aw), "prm_en": In(1), "prm_data": Out(8 * cfg.row_bytes),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        D, bpr = cfg.weight_depth, cfg.beats_per_row
        # Rows per read burst: never more than half the ring (an int4 row reserves two entries;
        # a tiny ring would otherwise wait forever).
        burst_rows = max(1, min(D // 2, RING_BURST_BEATS // bpr))

        P, L, S0 = cfg.chains, cfg.chain_len, cfg.group_len
        m.submodules.fill = fill = WeightFill(cfg)
        skewed = skew_line(m, self.eng_addr, S0)
        wptr = Signal(range(D))
        # the synthesis placement of the ring lanes (AccelConfig.ring_uram); no effect on
        # behaviour
        ram = {"ram_style": "ultra"} if cfg.ring_uram else None
        for i in range(L):
            mem = memory.Memory(shape=8 * P, depth=D, init=[], attrs=ram)
            m.submodules[f"lane{i}"] = mem
            wp = mem.write_port()
            re = mem.read_port()
            rp = mem.read_port()
            lane = slice(8 * P * i, 8 * P * (i + 1))
            m.d.comb += [
                wp.addr.eq(wptr), wp.en.eq(fill.o_valid),
                wp.data.eq(Cat(fill.o_values[8 * (p * L + i):8 * (p * L + i + 1)]
                               for p in range(P))),
                re.addr.eq(skewed[i % S0]), self.eng_data[lane].eq(re.data),
                rp.addr.eq(self.prm_addr), rp.en.eq(self.prm_en), self.prm_data[lane].eq(rp.data),
            ]
            if cfg.sparse:
                imem = memory.Memory(shape=4 * P, depth=D, init=[], attrs=ram)
                m.submodules[f"idx{i}"] = imem
                iwp = imem.write_port()
                ire = imem.read_port()
                m.d.comb += [
                    iwp.addr.eq(wptr), iwp.en.eq(fill.o_valid),
                    iwp.data.eq(Cat(fill.o_idx[4 * (p * L + i):4 * (p * L + i + 1)]
                                    for p in range(P))),
                    ire.addr.eq(skewed[i % S0]),
                    self.eng_idx[4 * P * i:4 * P * (i + 1)].eq(ire.data),
                ]

        # --- request side -------------------------------------------------------------------
        # Every decision below comes from registers: on ECP5 the combinational version
        # (remaining = total - issued, burst choice, occ + n <= D, rd_req.valid, handshake, occ
        # update: five 32-bit carry chains, ~18 ns) capped the design at 55 MHz. The flags are
        # recomputed each cycle from the state; after a request they are one cycle stale, so
        # requests are spaced by one idle cycle - free, since one request moves a whole burst
        # (RING_BURST_BEATS beats). A release only adds room, so stale flags are conservative.
        int4 = Signal()             # two entries reserved per row
        release_n = Signal(17)      # entries one tile's release frees
        remaining = Signal(32)      # rows not yet requested
        free = Signal(range(D + 1))  # ring entries not reserved
        addr = Signal(cfg.addr_bits)
        issued_all = Signal()       # every row requested (remaining == 0), registered
        full_burst = Signal()       # remaining >= burst_rows, registered
        room = Signal()             # free >= entries of the next request, registered
        cooldown = Signal()         # the cycle after a request: flags are stale
        n_rows = Mux(full_burst, burst_rows, 1)
        m.d.comb += [
            self.rd_req.valid.eq(~self.start & ~cooldown & ~issued_all & room),
            self.rd_req.payload.addr.eq(addr),
            self.rd_req.payload.len.eq(Mux(full_burst, burst_rows * bpr, bpr)),
        ]
        take = self.rd_req.valid & self.rd_req.ready
        free_after_take = Signal.like(free)
        m.d.comb += free_after_take.eq(Mux(take, free - (n_rows << int4), free))
        next_burst = Mux(remaining >= burst_rows, burst_rows, 1)
        m.d.sync += [
            cooldown.eq(take),
            free.eq(free_after_take + Mux(self.release, release_n, 0)),
            issued_all.eq(remaining == 0),
            full_burst.eq(remaining >= burst_rows),
            room.eq(free >= (next_burst << int4)),
        ]
        with m.If(take):
            m.d.sync += [remaining.eq(remaining - n_rows), addr.eq(addr + n_rows * bpr)]

        # --- data side: assemble rows, decode them, write entries round the ring -----------------
        left = Signal(32)           # rows not yet taken by the decoder
        m.submodules.rows = gb = Gearbox(cfg.beat_bytes, cfg.row_bytes)
        wiring.connect(m, wiring.flipped(self.rd_data), gb.i)
        wiring.connect(m, gb.o, fill.i)
        m.d.comb += [
            fill.k_words.eq(self.k_words), fill.sparse.eq(self.lgm != 0),
            fill.int4.eq(self.int4), fill.lgr.eq(self.lgr), fill.start.eq(self.start),
            self.idle.eq((left == 0) & ~fill.busy & issued_all & ~self.start),
            self.starved.eq(~issued_all & ~room & ~cooldown & ~self.start),
        ]
        with m.If(gb.o.valid & gb.o.ready):
            m.d.sync += left.eq(left - 1)
        with m.If(fill.o_valid):
            m.d.sync += [
                wptr.eq(Mux(wptr == D - 1, 0, wptr + 1)),
                self.arrived.eq(self.arrived + 1),
            ]

        with m.If(self.start):
            m.d.sync += [remaining.eq(self.total_rows), free.eq(D), addr.eq(self.base),
                         wptr.eq(0), self.arrived.eq(0), left.eq(self.total_rows),
                         int4.eq(self.int4 if int4_capable(cfg) else 0),
                         release_n.eq(Mux(self.int4 if int4_capable(cfg) else 0,
                                          self.tile_mem_rows << 1, self.tile_mem_rows)),
                         issued_all.eq(self.total_rows == 0),
                         full_burst.eq(self.total_rows >= burst_rows), room.eq(1),
                         cooldown.eq(0)]
        return m
