"""External memory ports and their super-beat view (docs/architecture.md, "External memory").

Every access is a run of whole super-beats: the same (addr, len) goes to every port, and the
ports' beats are joined with port 0 in the low bytes (writes are split the same way).
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig

__all__ = ["LEN_BITS", "read_req_layout", "write_layout", "mem_port_signature", "SuperBeatPorts"]

LEN_BITS = 16


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
