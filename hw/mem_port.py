"""External memory ports and their super-beat view (docs/architecture.md, "External memory").

Every access is a run of whole super-beats: the same (addr, len) goes to every port, and the
ports' beats are joined with port 0 in the low bytes (writes are split the same way).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .contract import BG_AHEAD_BEATS, READS_IN_FLIGHT

__all__ = ["LEN_BITS", "read_req_layout", "write_layout", "mem_port_signature", "SuperBeatPorts",
           "ReadArbiter", "READS_IN_FLIGHT", "BG_AHEAD_BEATS"]

LEN_BITS = 16
# READS_IN_FLIGHT and BG_AHEAD_BEATS (the arbiter's limits) are in the contract, hw/contract.py


def read_req_layout(addr_bits: int) -> data.StructLayout:
    """``{addr, len}``, addr in the low bits: read ``len`` beats starting at beat ``addr``."""
    return data.StructLayout({"addr": addr_bits, "len": LEN_BITS})


def write_layout(addr_bits: int, data_bytes: int) -> data.StructLayout:
    """``{addr, data}``, addr in the low bits: write one beat."""
    return data.StructLayout({"addr": addr_bits, "data": 8 * data_bytes})


def mem_port_signature(cfg: AccelConfig) -> wiring.Signature:
    """One external port as seen from the accelerator (requests out, read data in)."""
    return wiring.Signature({
        "rd_req": Out(stream.Signature(read_req_layout(cfg.addr_bits))),
        "rd_data": In(stream.Signature(8 * cfg.port_bytes)),
        "wr": Out(stream.Signature(write_layout(cfg.addr_bits, cfg.port_bytes))),
    })


class SuperBeatPorts(wiring.Component):
    """Join/split the ``NP`` external ports into super-beat streams.

    A read request or a write beat is offered to every port until each has taken it (ports may
    accept in different cycles); a read-data super-beat is complete when every port has its beat
    valid, and is taken from all of them in the same cycle.

    Parameters
    ----------
    cfg : AccelConfig

    Attributes
    ----------
    rd_req : stream in, :func:`read_req_layout` (len in super-beats)
    rd_data : stream out, ``8 * SB`` bits, port 0 in the low bytes
    wr : stream in, :func:`write_layout` with ``SB`` data bytes; a handshake here means every
        port accepted its part
    mem : array of ``NP`` :func:`mem_port_signature`
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        super().__init__({
            "rd_req": In(stream.Signature(read_req_layout(cfg.addr_bits))),
            "rd_data": Out(stream.Signature(8 * cfg.beat_bytes)),
            "wr": In(stream.Signature(write_layout(cfg.addr_bits, cfg.beat_bytes))),
            "mem": Out(mem_port_signature(cfg)).array(cfg.mem_ports),
        })

    def elaborate(self, platform):
        m = Module()
        n, w = self.cfg.mem_ports, self.cfg.port_bytes
        ports = list(self.mem)

        def fork(up, downs, payloads):
            # taken[j]: port j already accepted the current item
            taken = Signal(n)
            fin = Cat(taken[j] | downs[j].ready for j in range(n)).all()
            for j, d in enumerate(downs):
                m.d.comb += [d.valid.eq(up.valid & ~taken[j]), d.payload.eq(payloads[j])]
            m.d.comb += up.ready.eq(fin)
            with m.If(up.valid):
                with m.If(fin):
                    m.d.sync += taken.eq(0)
                with m.Else():
                    m.d.sync += taken.eq(
                        taken | Cat(downs[j].valid & downs[j].ready for j in range(n)))

        fork(self.rd_req, [p.rd_req for p in ports], [self.rd_req.payload] * n)
        fork(self.wr, [p.wr for p in ports],
             [Cat(self.wr.payload.addr, self.wr.payload.data[8 * w * j:8 * w * (j + 1)])
              for j in range(n)])

        all_valid = Cat(p.rd_data.valid for p in ports).all()
        m.d.comb += [
            self.rd_data.valid.eq(all_valid),
            self.rd_data.payload.eq(Cat(p.rd_data.payload for p in ports)),
        ]
        for p in ports:
            m.d.comb += p.rd_data.ready.eq(all_valid & self.rd_data.ready)
        return m


class ReadArbiter(wiring.Component):
    """Two requesters on one read stream, the data routed back in request order.

    The memory answers in request order (every port, :class:`SuperBeatPorts`), so a FIFO of
    (requester, beats) per accepted request names the owner of every beat that comes back:
    the requesters' bursts interleave on the memory and each sees only its own beats, in its
    own order. Requester 0 (the instruction's own stream) wins a cycle where both ask;
    requester 1 (the weight ring, streaming ahead of its MATMUL) takes the cycles it leaves,
    with at most :data:`BG_AHEAD_BEATS` beats in flight while ``bg_limit`` is high (so that a
    request of requester 0 waits behind few of its beats).
    A request once offered stays granted until taken (the ports may take it over several
    cycles), and no request is taken while :data:`READS_IN_FLIGHT` are outstanding. A
    requester must take its beats whenever it has asked for them, in time: the ring does (it
    reserves room for a request before making it), and so does every unit of the controller.
    No cycle is added: a request passes in the cycle it is made, a beat in the cycle it
    arrives.

    Without ``in_order`` the requesters take turns instead, never overlapping: ``owner``
    names the one whose requests go out and whose beats come back, as a mode multiplexer
    does; nothing is counted (an engine without PREFETCH: the small boards' engines; on the
    iCE40, which has no LUT-RAM, the arbiter with its FIFO is 1,225 SB_LUT4 and 1,142
    flip-flops, 46 LUTs without, Yosys ``synth_ice40`` of the iCEBreaker's arbiter alone).

    Parameters
    ----------
    cfg : AccelConfig
    in_order : bool
        Route by the FIFO (requests of both in flight at once); else by ``owner``.

    Attributes
    ----------
    req : array of 2 streams in, :func:`read_req_layout`
    data : array of 2 streams out, ``8 * SB`` bits
    out_req : stream out, to the memory
    out_data : stream in, from the memory
    bg_limit : in, cap requester 1's beats in flight
    owner : in, without ``in_order``: the requester served
    idle : out, no read outstanding (always, without ``in_order``)
    """

    def __init__(self, cfg: AccelConfig, in_order: bool = True):
        self.cfg, self.in_order = cfg, in_order
        req = stream.Signature(read_req_layout(cfg.addr_bits))
        beats = stream.Signature(8 * cfg.beat_bytes)
        super().__init__({
            "req": In(req).array(2),
            "data": Out(beats).array(2),
            "out_req": Out(req),
            "out_data": In(beats),
            "bg_limit": In(1), "owner": In(1),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        if not self.in_order:
            one = self.owner
            m.d.comb += [
                self.out_req.valid.eq(Mux(one, self.req[1].valid, self.req[0].valid)),
                self.out_req.payload.eq(Mux(one, self.req[1].payload, self.req[0].payload)),
                self.req[0].ready.eq(~one & self.out_req.ready),
                self.req[1].ready.eq(one & self.out_req.ready),
                self.out_data.ready.eq(Mux(one, self.data[1].ready, self.data[0].ready)),
                self.idle.eq(1),
            ]
            for j, d in enumerate(self.data):
                m.d.comb += [d.valid.eq(self.out_data.valid & (one == j)),
                             d.payload.eq(self.out_data.payload)]
            return m
        m.submodules.owners = owners = fifo.SyncFIFO(width=1 + LEN_BITS, depth=READS_IN_FLIGHT)
        # grant: requester 1 only when 0 does not ask, held while an offer is not yet taken
        held, held_bg = Signal(), Signal()
        bg = Signal()
        m.d.comb += bg.eq(Mux(held, held_bg, ~self.req[0].valid))
        src = [self.req[0], self.req[1]]
        # requester 1's beats in flight; its requests wait while they would pass the cap
        ahead = Signal(LEN_BITS + 1)
        bg_len = src[1].payload.len
        bg_ok = ~self.bg_limit | (ahead == 0) | (ahead + bg_len <= BG_AHEAD_BEATS)
        m.d.comb += [
            self.out_req.valid.eq(Mux(bg, src[1].valid & bg_ok, src[0].valid) & owners.w_rdy),
            self.out_req.payload.eq(Mux(bg, src[1].payload, src[0].payload)),
            src[0].ready.eq(~bg & self.out_req.ready & owners.w_rdy),
            src[1].ready.eq(bg & bg_ok & self.out_req.ready & owners.w_rdy),
            owners.w_en.eq(self.out_req.valid & self.out_req.ready),
            owners.w_data.eq(Cat(self.out_req.payload.len, bg)),
        ]
        m.d.sync += [held.eq(self.out_req.valid & ~self.out_req.ready), held_bg.eq(bg)]

        # route: the beats of the oldest outstanding request go to its requester
        owner = owners.r_data[LEN_BITS]
        length = owners.r_data[:LEN_BITS]
        got = Signal(LEN_BITS)
        for j, d in enumerate(self.data):
            mine = owners.r_rdy & (owner == j)
            m.d.comb += [d.valid.eq(self.out_data.valid & mine),
                         d.payload.eq(self.out_data.payload)]
        m.d.comb += self.out_data.ready.eq(owners.r_rdy & Mux(owner, self.data[1].ready,
                                                              self.data[0].ready))
        bg_in = owners.w_en & bg
        bg_out = self.data[1].valid & self.data[1].ready
        m.d.sync += ahead.eq(ahead + Mux(bg_in, bg_len, 0) - bg_out)
        with m.If(self.out_data.valid & self.out_data.ready):
            with m.If(got == length - 1):
                m.d.comb += owners.r_en.eq(1)
                m.d.sync += got.eq(0)
            with m.Else():
                m.d.sync += got.eq(got + 1)
        m.d.comb += self.idle.eq(~owners.r_rdy)
        return m
