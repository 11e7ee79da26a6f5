"""The accelerator's external memory served from on-chip block RAM (open-toolchain boards).

Small boards (ULX3S, iCEBreaker) have no DDR interface hwflow drives, so the memory image is
kept in block RAM initialised by the bitstream. Striping follows docs/architecture.md: port ``j``
holds bytes ``[s*SB + j*W, s*SB + (j+1)*W)`` of the image at its beat address ``s``.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .mem_port import LEN_BITS, mem_port_signature, read_req_layout, write_layout

__all__ = ["OnChipMemory", "OnChipPort", "split_image"]


def split_image(cfg: AccelConfig, image: bytes, depth: int) -> list[list[int]]:
    """Per port ``j``, ``depth`` little-endian ``W``-byte beats of ``image`` (zero padded)."""
    sb, w = cfg.beat_bytes, cfg.port_bytes
    if len(image) > depth * sb:
        raise ValueError(f"memory image of {len(image)} B does not fit {depth} super-beats "
                         f"of {sb} B")
    padded = bytes(image) + bytes(depth * sb - len(image))
    return [[int.from_bytes(padded[s * sb + j * w: s * sb + (j + 1) * w], "little")
             for s in range(depth)] for j in range(cfg.mem_ports)]


class OnChipPort(wiring.Component):
    """One memory port (``rd_req``/``rd_data``/``wr``, flipped) backed by a block RAM.

    Reads stream one beat per cycle: the RAM's synchronous read port is clocked only when the
    output register is empty or being taken (``en`` low holds the data), so backpressure on
    ``rd_data`` stalls the burst without losing a beat and without a FIFO. A one-entry request
    register lets the next burst be accepted while the current one streams, so back-to-back
    bursts have no bubble and every ``ready`` is a register (no combinational path from
    ``rd_data.ready`` to ``rd_req.ready``). Writes are always accepted and applied in the cycle
    they are taken. Addresses wrap at ``depth`` (only the low address bits are decoded).

    Parameters
    ----------
    cfg : AccelConfig
    init : list of int
        Initial beats (``depth`` of them).
    """

    def __init__(self, cfg: AccelConfig, init: list[int]):
        self.cfg = cfg
        self.depth = len(init)
        self.init = init
        super().__init__({
            "rd_req": In(stream.Signature(read_req_layout(cfg.addr_bits))),
            "rd_data": Out(stream.Signature(8 * cfg.port_bytes)),
            "wr": In(stream.Signature(write_layout(cfg.addr_bits, cfg.port_bytes))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        aw = max(1, (self.depth - 1).bit_length())
        m.submodules.ram = ram = memory.Memory(shape=8 * cfg.port_bytes, depth=self.depth,
                                               init=self.init)
        rp = ram.read_port()                  # synchronous, non-transparent
        wp = ram.write_port()

        # --- writes ---------------------------------------------------------------------------
        m.d.comb += [
            self.wr.ready.eq(1),
            wp.addr.eq(self.wr.payload.addr[:aw]),
            wp.data.eq(self.wr.payload.data),
            wp.en.eq(self.wr.valid),
        ]

        # --- read requests: a one-entry queue in front of the burst counter -------------------
        nxt = Signal(read_req_layout(cfg.addr_bits))
        nxt_valid = Signal()
        addr = Signal(aw)
        remaining = Signal(LEN_BITS)
        out_valid = Signal()
        advance = Signal()                    # the output register may load this cycle
        issue = Signal()                      # a beat's address goes to the RAM this cycle
        m.d.comb += [
            self.rd_req.ready.eq(~nxt_valid),
            advance.eq(~out_valid | self.rd_data.ready),
            issue.eq(advance & (remaining != 0)),
            rp.addr.eq(addr),
            rp.en.eq(advance),
            self.rd_data.valid.eq(out_valid),
            self.rd_data.payload.eq(rp.data),
        ]
        with m.If(advance):
            m.d.sync += out_valid.eq(issue)
        with m.If(issue):
            m.d.sync += [addr.eq(addr + 1), remaining.eq(remaining - 1)]
        last = (remaining == 0) | ((remaining == 1) & issue)
        with m.If(self.rd_req.valid & self.rd_req.ready):
            m.d.sync += [nxt.eq(self.rd_req.payload), nxt_valid.eq(1)]
        with m.Elif(nxt_valid & last):
            m.d.sync += [addr.eq(nxt.addr[:aw]), remaining.eq(nxt.len), nxt_valid.eq(0)]
        return m


class OnChipMemory(wiring.Component):
    """Serves the accelerator's ``NP`` memory ports from block RAM holding the memory image.

    Connect ``mem[j]`` to ``Accelerator.mem[j]`` with :func:`amaranth.lib.wiring.connect`.

    Parameters
    ----------
    cfg : AccelConfig
    init : bytes
        The memory image (``memory_image.bin``); the rest of the RAM starts zeroed.
    depth : int, optional
        Beats per port (super-beats). Default: just enough for ``init``.

    Attributes
    ----------
    mem : array of ``NP`` flipped :func:`~.mem_port.mem_port_signature`
    """

    def __init__(self, cfg: AccelConfig, init: bytes, depth: int | None = None):
        self.cfg = cfg
        self.depth = depth if depth is not None else max(1, -(-len(init) // cfg.beat_bytes))
        self.beats = split_image(cfg, init, self.depth)
        super().__init__({
            "mem": In(mem_port_signature(cfg)).array(cfg.mem_ports),
        })

    @property
    def nbytes(self) -> int:
        """Bytes of block RAM the memory holds (all ports)."""
        return self.depth * self.cfg.beat_bytes

    def elaborate(self, platform):
        m = Module()
        for j in range(self.cfg.mem_ports):
            port = OnChipPort(self.cfg, self.beats[j])
            m.submodules[f"port{j}"] = port
            wiring.connect(m, wiring.flipped(self.mem[j]), port)
        return m
