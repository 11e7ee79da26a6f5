"""The memory image: one flat byte array the host copies to external memory before a run.

Layout (every section starts on a super-beat; addresses below are in super-beats of
``AccelConfig.beat_bytes`` bytes):

====================  ===================================================================
section               contents
====================  ===================================================================
header (64 B)         ``b"HWFL"``, u32 version, u32 super-beat bytes, then u32 (addr, bytes)
                      for program, weights and I/O
program               32-byte instructions (hw/isa.py), END last
weights               per MATMUL layer: ``n_tiles`` tiles of ``tile_mem_rows`` rows of
                      ``P*L`` bytes in the layer's format (int8/int4, dense/N:M; see
                      docs/architecture.md, "Weight tile formats", and
                      ``mapping/weight_format.py``)
I/O                   inputs, then outputs: activation row layout, row b at
                      ``b * words * L``, zero padding, each region a whole number of super-beats
====================  ===================================================================

The transformer path (``mapping/llm_lower.py``, header version :data:`DECODER_IMAGE_VERSION`)
uses the same builder with sections header, program (the decode program, then one per prefill
bucket), weights (linear weight blocks, the embedding table, the RoPE table), kv (per layer a K
and a V cache) and io (token ids in, logits out); its header's section table lists program,
weights, kv and io.

The host API, the simulator and the compiler all use this module, so the layout cannot drift.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import asdict, dataclass, field

import numpy as np

from hwflow.hw.config import AccelConfig

from .errors import MappingError

MAGIC = b"HWFL"
#: Header versions, stored in the image (u32 after the magic); their values never change.
MLP_IMAGE_VERSION = 2      # sections program, weights, I/O; weight tiles with per-segment records
DECODER_IMAGE_VERSION = 3  # transformer images: sections program, weights, kv, io
HEADER_BYTES = 64
#: Bytes of image one block RAM holds on the open-toolchain boards, where the image is kept in
#: block RAM (``hw.onchip_memory``): ECP5 DP16KD 18 Kb, iCE40 SB_RAM40_4K 4 Kb.
BRAM_BYTES = {"ecp5": 2304, "ice40": 512}


@dataclass
class Region:
    """A named byte range of the image (``addr`` in super-beats)."""

    name: str
    kind: str                 # header | program | weights | input | output (MLP path);
                              # program | weights | kv | io | activations (transformer path)
    addr: int
    nbytes: int
    shape: list = field(default_factory=list)   # logical tensor shape (I/O)
    rows: int = 0             # activation rows (I/O)
    words: int = 0            # act words per row (I/O)
    features: int = 0         # valid bytes per row (I/O)
    scale: float = 0.0        # quantization scale (I/O)
    layout: str = ""          # how the bytes are arranged (weights: format, tiles, rows)


#: Region kind -> traffic category (the MLP path's ``input``/``output`` regions are I/O): the
#: ISA model's counters and the RTL simulation's classify accesses by it.
TRAFFIC_CATEGORY = {"weights": "weights", "kv": "kv", "activations": "activations", "io": "io",
                    "input": "io", "output": "io", "program": "program"}


@dataclass
class MemoryMap:
    beat_bytes: int
    chain_len: int
    total_bytes: int
    regions: list

    def region(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(name)

    def of_kind(self, kind: str) -> list:
        return [r for r in self.regions if r.kind == kind]

    def spans(self) -> list:
        """``(start_sb, end_sb, kind)`` of every region: super-beat ranges, end exclusive (what
        the ISA model's traffic counters classify accesses by)."""
        return [(r.addr, r.addr + -(-r.nbytes // self.beat_bytes), r.kind) for r in self.regions]

    def traffic_ranges(self) -> list:
        """``[(start_sb, end_sb, category)]``: each traffic category's super-beat span, its
        regions (:data:`TRAFFIC_CATEGORY`) merged, in address order: the ranges the RTL
        simulation's traffic counters classify accesses by (at most 8)."""
        spans: dict = {}
        for r in self.regions:
            c = TRAFFIC_CATEGORY.get(r.kind)
            if c is None or r.nbytes == 0:
                continue
            end = r.addr + -(-r.nbytes // self.beat_bytes)
            lo, hi = spans.get(c, (r.addr, end))
            spans[c] = (min(lo, r.addr), max(hi, end))
        return [(lo, hi, c) for c, (lo, hi) in sorted(spans.items(), key=lambda kv: kv[1])]

    def to_json(self) -> str:
        return json.dumps({"beat_bytes": self.beat_bytes, "chain_len": self.chain_len,
                           "total_bytes": self.total_bytes,
                           "regions": [asdict(r) for r in self.regions]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> MemoryMap:
        d = json.loads(text)
        return cls(d["beat_bytes"], d["chain_len"], d["total_bytes"],
                   [Region(**r) for r in d["regions"]])


def _pad(nbytes: int, beat: int) -> int:
    return -(-nbytes // beat) * beat


class ImageBuilder:
    """Appends sections in layout order and returns the image and its map.

    A region's bytes are given when it is appended, or made when the image is written
    (:meth:`append_made`: a weight block packed only then), or written into a reserved region
    later (:meth:`fill`: programs, which need every region's address). :meth:`finish` writes
    each region into the one image buffer and drops its bytes, so that the image is held once
    (a 1.24 B-parameter decoder's is 1.5 GB), not also as its parts or a copy.
    """

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        self.sb = cfg.beat_bytes
        self.size = _pad(HEADER_BYTES, self.sb)      # bytes laid out so far
        self.regions = [Region("header", "header", 0, HEADER_BYTES)]
        self._data: dict = {}       # id(region) -> its bytes, or a callable making them

    def append(self, name: str, kind: str, data: bytes, **meta) -> Region:
        r = self._place(name, kind, len(data), **meta)
        self._data[id(r)] = data
        return r

    def append_made(self, name: str, kind: str, nbytes: int, make, **meta) -> Region:
        """A region of ``nbytes`` whose bytes ``make()`` returns when the image is written
        (``bytes`` or a C-contiguous buffer such as a numpy array)."""
        r = self._place(name, kind, nbytes, **meta)
        self._data[id(r)] = make
        return r

    def reserve(self, name: str, kind: str, nbytes: int, **meta) -> Region:
        """A region of ``nbytes`` zero bytes (or the bytes :meth:`fill` gives it)."""
        return self._place(name, kind, nbytes, **meta)

    def fill(self, region: Region, data: bytes) -> None:
        """The bytes of a reserved region (as many as it has)."""
        if len(data) != region.nbytes:
            raise ValueError(f"region {region.name} holds {region.nbytes} B, not {len(data)}")
        self._data[id(region)] = data

    def _place(self, name: str, kind: str, nbytes: int, **meta) -> Region:
        r = Region(name, kind, self.size // self.sb, nbytes, **meta)
        self.size += _pad(nbytes, self.sb)
        self.regions.append(r)
        return r

    def finish(self, sections=None, version: int = MLP_IMAGE_VERSION
               ) -> tuple[bytes, MemoryMap]:
        """Write the header and return ``(image, memory map)``.

        Parameters
        ----------
        sections : list of tuple of str, optional
            The header's section table: one (address, bytes) entry per tuple of region kinds,
            in order. Default: program, weights, I/O (the MLP path's header).
        version : int
            Header version (:data:`DECODER_IMAGE_VERSION`: the transformer path's program,
            weights, kv, io).
        """
        def span(kind):
            rs = [r for r in self.regions if r.kind in kind]
            if not rs:
                return 0, 0
            end = max(r.addr * self.sb + r.nbytes for r in rs)
            return rs[0].addr, end - rs[0].addr * self.sb
        if sections is None:
            sections = [("program",), ("weights",), ("input", "output")]
        if 12 + 8 * len(sections) > HEADER_BYTES:
            raise ValueError(f"{len(sections)} sections do not fit the {HEADER_BYTES}-byte header")
        sections = [span(tuple(kinds)) for kinds in sections]
        header = MAGIC + struct.pack("<II", version, self.sb)
        header += b"".join(struct.pack("<II", a, n) for a, n in sections)
        mm = MemoryMap(self.sb, self.cfg.chain_len, self.size, self.regions)
        # The image is written in place: io.BytesIO takes the zero bytes object (untouched
        # pages: no memory until written) as its buffer and getvalue() returns that buffer,
        # not a copy, when nothing else holds it.
        out = io.BytesIO(bytes(self.size))
        out.write(header)
        data, self._data = self._data, {}
        for r in self.regions[1:]:
            part = data.pop(id(r), None)
            if part is None:
                continue            # reserved: zeros
            if callable(part):
                part = part()       # bytes, or any C-contiguous buffer (an int8 table)
            nbytes = memoryview(part).nbytes
            if nbytes != r.nbytes:
                raise ValueError(f"region {r.name}: {nbytes} B made, {r.nbytes} B laid out")
            out.seek(r.addr * self.sb)
            out.write(part)
            del part
        image = out.getvalue()
        return image, mm


def pack_rows(q: np.ndarray, words: int, chain_len: int) -> bytes:
    """int8 tensor ``[..., features]`` to the activation row layout (zero padded rows)."""
    q = np.asarray(q, dtype=np.int8)
    rows = int(np.prod(q.shape[:-1], dtype=np.int64))
    out = np.zeros((rows, words * chain_len), dtype=np.int8)
    out[:, : q.shape[-1]] = q.reshape(rows, q.shape[-1])
    return out.tobytes()


def unpack_rows(data: bytes, region: Region, chain_len: int) -> np.ndarray:
    """Inverse of :func:`pack_rows` for an I/O region: int8 tensor of the region's shape."""
    row_bytes = region.words * chain_len
    arr = np.frombuffer(data, dtype=np.int8)[: region.rows * row_bytes]
    arr = arr.reshape(region.rows, row_bytes)[:, : region.features]
    return arr.reshape(region.shape).copy()


def write_tensor(image: bytearray, mm: MemoryMap, name: str, q: np.ndarray) -> None:
    """Overwrite an input region of ``image`` with int8 tensor ``q`` (same shape as compiled)."""
    r = mm.region(name)
    if list(q.shape) != list(r.shape):
        raise ValueError(f"input '{name}' has shape {list(q.shape)}, the program was compiled "
                         f"for {r.shape}")
    data = pack_rows(q, r.words, mm.chain_len)
    start = r.addr * mm.beat_bytes
    image[start: start + len(data)] = data


def read_tensor(image: bytes, mm: MemoryMap, name: str) -> np.ndarray:
    """Read an I/O region of ``image`` back as an int8 tensor of its logical shape."""
    r = mm.region(name)
    start = r.addr * mm.beat_bytes
    return unpack_rows(image[start: start + r.nbytes], r, mm.chain_len)


def check_image(image: bytes, board, cfg: AccelConfig) -> int:
    """The one memory rule, applied by ``hwflow compile`` and ``hwflow bitstream``: the image
    must fit the board's ``memory.capacity_gb`` and, on open-toolchain boards (image in block
    RAM), its block RAMs; refuse with numbers if over (:class:`MappingError`). Returns the block
    RAMs it needs (0 on boards with external memory)."""
    cap = board.capacity_bytes              # memory.capacity_gb: required and > 0 (boards/)
    if len(image) > cap:
        where = "on-chip memory reserved for it" if board.flow in BRAM_BYTES else "memory"
        raise MappingError(f"memory image does not fit {board.name}: {len(image)} B > {cap} B of "
                           f"{where} (memory.capacity_gb; needed > available); use a smaller "
                           f"model (e.g. --example mlp-tiny)")
    if board.flow not in BRAM_BYTES:
        return 0
    per = BRAM_BYTES[board.flow]
    # each port is its own RAM of 8*W bits: whole blocks per port (width is the limit when W is
    # wide, depth otherwise)
    beats = max(1, -(-len(image) // cfg.beat_bytes))
    blocks = cfg.mem_ports * max(-(-beats * cfg.port_bytes // per), -(-cfg.port_bytes * 8 // 36))
    if blocks > board.resources["bram"]:
        raise MappingError(f"memory image does not fit {board.name}: BRAM {blocks} > "
                           f"{board.resources['bram']} (needed > available) for "
                           f"{len(image)} B")
    return blocks


# -- striping over the memory ports ------------------------------------------------------------

def split_ports(image: bytes, mem_ports: int, port_bytes: int) -> np.ndarray:
    """Beats of every port: ``[mem_ports, n_superbeats, port_bytes]`` (uint8).

    The striping of the image over the memory ports, the one rule of the simulation's memory
    models and the host's per-port buffers: super-beat ``s`` is bytes ``[s*SB, (s+1)*SB)``;
    port ``j`` holds bytes ``[s*SB + j*W, s*SB + (j+1)*W)`` at beat ``s``. The image is
    zero-padded to whole super-beats.
    """
    sb = mem_ports * port_bytes
    buf = np.frombuffer(image, dtype=np.uint8)
    pad = (-buf.size) % sb
    if pad:
        buf = np.concatenate([buf, np.zeros(pad, dtype=np.uint8)])
    return buf.reshape(-1, mem_ports, port_bytes).transpose(1, 0, 2)


def join_ports(per_port: list[np.ndarray]) -> bytes:
    """Inverse of :func:`split_ports` for a run of super-beats: ``per_port[j]`` is port ``j``'s
    ``beats[n, W]``."""
    return np.stack([np.asarray(p, dtype=np.uint8) for p in per_port], axis=1).tobytes()
